//! The services behind the gateway, per host. Today one host: this one, reached over the unix
//! sockets of its services. The host registry and remote hosts arrive with issue #9.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tonic::Status;
use tonic::transport::Channel;
use vireo_runtime::Service;

use crate::GatewayConfig;

/// The metadata key a client may set to name the host of a call (it wins over the `host` field).
pub const HOST_METADATA: &str = "x-vireo-host";

pub struct Backends {
    host_name: String,
    channels: HashMap<Service, (PathBuf, Channel)>,
}

impl Backends {
    /// This host's services at `<run-dir>/<service>.sock`, or where `[gateway.backends]` says.
    pub fn local(run_dir: &Path, config: &GatewayConfig) -> Result<Backends, String> {
        let host_name = match &config.host_name {
            Some(name) => name.clone(),
            None => nix::unistd::gethostname()
                .map_err(|err| format!("gethostname: {err}"))?
                .to_string_lossy()
                .into_owned(),
        };
        for name in config.backends.keys() {
            if !Service::HOST_SERVICES
                .iter()
                .any(|service| service.name() == name)
            {
                return Err(format!("[gateway.backends]: unknown service `{name}`"));
            }
        }
        let channels = Service::HOST_SERVICES
            .into_iter()
            .map(|service| {
                let socket = config
                    .backends
                    .get(service.name())
                    .cloned()
                    .unwrap_or_else(|| service.socket_in(run_dir));
                let channel = vireo_runtime::client::lazy_unix(&socket);
                (service, (socket, channel))
            })
            .collect();
        Ok(Backends {
            host_name,
            channels,
        })
    }

    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// The channel to `service` on `host` (empty means this gateway's own host).
    pub fn channel(&self, host: &str, service: Service) -> Result<Channel, Status> {
        self.backend(host, service)
            .map(|(_, channel)| channel.clone())
    }

    /// The gRPC socket of `service` on `host`, which must be this gateway's own.
    pub fn socket(&self, host: &str, service: Service) -> Result<&Path, Status> {
        self.backend(host, service)
            .map(|(socket, _)| socket.as_path())
    }

    fn backend(&self, host: &str, service: Service) -> Result<&(PathBuf, Channel), Status> {
        if !host.is_empty() && host != self.host_name {
            return Err(Status::not_found(format!(
                "host `{host}` is not known to this gateway (it serves `{}`)",
                self.host_name
            )));
        }
        self.channels.get(&service).ok_or_else(|| {
            Status::unimplemented(format!(
                "the gateway does not route to the {} service",
                service.name()
            ))
        })
    }

    /// Adds which service and host failed to a transport error, so a client knows what is down.
    pub fn unavailable(&self, service: Service, status: Status) -> Status {
        if status.code() != tonic::Code::Unavailable {
            return status;
        }
        let socket = self
            .channels
            .get(&service)
            .map(|(socket, _)| socket.display().to_string())
            .unwrap_or_default();
        Status::unavailable(format!(
            "the {} service of host `{}` is unavailable ({socket}): {}",
            service.name(),
            self.host_name,
            status.message()
        ))
    }
}
