//! The connection to a gateway, opened on first use as virsh does, from a URI.

use std::path::PathBuf;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::Failed;
use crate::output::print_error;

/// Where a URI points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
}

/// Parses `unix:///path/to/gateway.sock`; other schemes get a clear refusal.
pub fn parse_uri(uri: &str) -> Result<Target, String> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| format!("invalid URI `{uri}`: expected SCHEME://..."))?;
    match scheme {
        "unix" => {
            if !rest.starts_with('/') {
                return Err(format!(
                    "invalid URI `{uri}`: unix:// needs an absolute socket path, e.g. unix:///run/vireo/gateway.sock"
                ));
            }
            Ok(Target::Unix(PathBuf::from(rest)))
        }
        "https" | "tls" => Err(format!(
            "`{uri}`: TLS connections to a remote gateway arrive with issue #9; use a unix:// URI"
        )),
        _ => Err(format!(
            "unsupported URI scheme `{scheme}` in `{uri}`; use unix:///run/vireo/gateway.sock"
        )),
    }
}

/// The read-only twin of a socket: `gateway.sock` -> `gateway-ro.sock`.
pub fn readonly_socket(socket: &std::path::Path) -> PathBuf {
    let stem = socket
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    socket.with_file_name(format!("{stem}-ro.sock"))
}

use vireo_runtime::client::HOST_METADATA;

/// Names the host of every call (`--host`), so each command goes to that host's service.
#[derive(Debug, Clone)]
pub struct HostHeader(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for HostHeader {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(host) = &self.0 {
            request.metadata_mut().insert(HOST_METADATA, host.clone());
        }
        Ok(request)
    }
}

/// The channel every client of the CLI uses: the gateway's, with the host header.
pub type GatewayChannel = InterceptedService<Channel, HostHeader>;

pub struct Connection {
    pub uri: String,
    pub readonly: bool,
    /// The host every call is for (`--host`); the gateway's own when None.
    pub host: Option<String>,
    channel: Option<GatewayChannel>,
}

impl Connection {
    pub fn new(uri: &str, readonly: bool, host: Option<String>) -> Connection {
        Connection {
            uri: uri.to_string(),
            readonly,
            host,
            channel: None,
        }
    }

    /// Switches to another gateway (the shell's `connect`), keeping the host.
    pub fn reconnect(&mut self, uri: &str, readonly: bool) {
        *self = Connection::new(uri, readonly, self.host.take());
    }

    /// The gateway's local transfer socket, for a root client on the gateway's host (not
    /// read-only: the transfers that use it write volumes or files).
    pub fn transfer_socket(&self) -> Option<PathBuf> {
        match parse_uri(&self.uri) {
            Ok(Target::Unix(socket)) if !self.readonly => {
                Some(vireo_runtime::transfer::socket_beside(&socket))
            }
            _ => None,
        }
    }

    pub async fn channel(&mut self) -> Result<GatewayChannel, Failed> {
        if let Some(channel) = &self.channel {
            return Ok(channel.clone());
        }
        let target = parse_uri(&self.uri).map_err(|message| {
            print_error("failed to connect to the hypervisor");
            print_error(&message);
            Failed
        })?;
        let Target::Unix(mut socket) = target;
        if self.readonly {
            socket = readonly_socket(&socket);
        }
        let channel = vireo_runtime::client::connect_unix(&socket)
            .await
            .map_err(|err| {
                print_error("failed to connect to the hypervisor");
                print_error(&format!("{err}; is vireod running?"));
                Failed
            })?;
        let header = match &self.host {
            None => HostHeader(None),
            Some(host) => HostHeader(Some(host.parse().map_err(|_| {
                print_error(&format!("--host: `{host}` is not a valid host name"));
                Failed
            })?)),
        };
        let channel = InterceptedService::new(channel, header);
        self.channel = Some(channel.clone());
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(
            parse_uri("unix:///run/vireo/gateway.sock"),
            Ok(Target::Unix("/run/vireo/gateway.sock".into()))
        );
        assert!(
            parse_uri("unix://relative.sock")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(
            parse_uri("https://h:16514")
                .unwrap_err()
                .contains("issue #9")
        );
        assert!(
            parse_uri("qemu:///system")
                .unwrap_err()
                .contains("unsupported URI scheme `qemu`")
        );
        assert!(parse_uri("garbage").is_err());
        assert_eq!(
            readonly_socket(std::path::Path::new("/run/vireo/gateway.sock")),
            PathBuf::from("/run/vireo/gateway-ro.sock")
        );
    }
}
