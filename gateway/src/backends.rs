//! The services behind the gateway, per host: this one, reached over the unix sockets of its
//! services, and the hosts `[gateway.hosts.NAME]` names (today: another vireod's run directory on
//! this machine; TCP with mutual TLS, and hosts that join, come with the rest of issue #9).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use tonic::Status;
use tonic::transport::Channel;
use vireo_runtime::Service;

use crate::GatewayConfig;

pub use vireo_runtime::client::HOST_METADATA;

/// One host's services: socket and channel of each.
type HostServices = HashMap<Service, (PathBuf, Channel)>;

pub struct Backends {
    host_name: String,
    /// Every host, this one included, by name.
    hosts: BTreeMap<String, HostServices>,
}

/// The services of a host whose sockets are `<run_dir>/<service>.sock`, but for `overrides`.
fn services_in(run_dir: &Path, overrides: &BTreeMap<String, PathBuf>) -> HostServices {
    Service::HOST_SERVICES
        .into_iter()
        .map(|service| {
            let socket = overrides
                .get(service.name())
                .cloned()
                .unwrap_or_else(|| service.socket_in(run_dir));
            let channel = vireo_runtime::client::lazy_unix(&socket);
            (service, (socket, channel))
        })
        .collect()
}

impl Backends {
    /// This host's services at `<run-dir>/<service>.sock`, or where `[gateway.backends]` says,
    /// and the other hosts of `[gateway.hosts]`.
    pub fn new(run_dir: &Path, config: &GatewayConfig) -> Result<Backends, String> {
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
        let mut hosts = BTreeMap::new();
        hosts.insert(host_name.clone(), services_in(run_dir, &config.backends));
        for (name, host) in &config.hosts {
            if *name == host_name {
                return Err(format!(
                    "[gateway.hosts.{name}]: that is this gateway's own host"
                ));
            }
            if !host.run_dir.is_absolute() {
                return Err(format!(
                    "[gateway.hosts.{name}] run_dir: `{}` is not an absolute path",
                    host.run_dir.display()
                ));
            }
            hosts.insert(name.clone(), services_in(&host.run_dir, &BTreeMap::new()));
        }
        Ok(Backends { host_name, hosts })
    }

    /// Every host's name, sorted.
    pub fn host_names(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    /// Where `service` of `host` listens.
    pub fn sockets_of(&self, host: &str) -> Vec<(Service, PathBuf)> {
        let mut sockets: Vec<(Service, PathBuf)> = self
            .hosts
            .get(host)
            .into_iter()
            .flatten()
            .map(|(service, (socket, _))| (*service, socket.clone()))
            .collect();
        sockets.sort_by_key(|(service, _)| service.name());
        sockets
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

    /// The name a call's `host` means: this host when empty.
    pub fn resolve<'a>(&'a self, host: &'a str) -> &'a str {
        if host.is_empty() {
            &self.host_name
        } else {
            host
        }
    }

    fn backend(&self, host: &str, service: Service) -> Result<&(PathBuf, Channel), Status> {
        let host = self.resolve(host);
        let services = self.hosts.get(host).ok_or_else(|| {
            Status::not_found(format!(
                "host `{host}` is not known to this gateway (it knows {})",
                self.host_names()
                    .map(|name| format!("`{name}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        services.get(&service).ok_or_else(|| {
            Status::unimplemented(format!(
                "the gateway does not route to the {} service",
                service.name()
            ))
        })
    }

    /// Adds which service and host failed to a transport error, so a client knows what is down.
    pub fn unavailable(&self, host: &str, service: Service, status: Status) -> Status {
        if status.code() != tonic::Code::Unavailable {
            return status;
        }
        let host = self.resolve(host);
        let socket = self
            .backend(host, service)
            .map(|(socket, _)| socket.display().to_string())
            .unwrap_or_default();
        Status::unavailable(format!(
            "the {} service of host `{host}` is unavailable ({socket}): {}",
            service.name(),
            status.message()
        ))
    }
}
