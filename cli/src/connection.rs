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
    /// A gateway's TLS port: `https://HOST:PORT`, with the PKI directory `?pkipath=DIR` names.
    Tls {
        address: String,
        pkipath: Option<PathBuf>,
    },
}

/// Parses `unix:///path/to/gateway.sock` and `https://HOST[:PORT][/][?pkipath=DIR]` (port 16514
/// by default, as libvirt's TLS port); other schemes get a clear refusal.
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
        "https" => {
            let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
            let authority = authority.trim_end_matches('/');
            if authority.is_empty() || authority.contains('/') {
                return Err(format!(
                    "invalid URI `{uri}`: expected https://HOST[:PORT], e.g. https://node1:16514"
                ));
            }
            let mut pkipath = None;
            for pair in query.split('&').filter(|pair| !pair.is_empty()) {
                match pair.split_once('=') {
                    Some(("pkipath", dir)) if dir.starts_with('/') => {
                        pkipath = Some(PathBuf::from(dir));
                    }
                    _ => {
                        return Err(format!(
                            "invalid URI `{uri}`: unknown or malformed parameter `{pair}` (known: pkipath=/absolute/dir)"
                        ));
                    }
                }
            }
            let has_port = authority
                .rsplit_once(':')
                .is_some_and(|(_, port)| port.parse::<u16>().is_ok() && !authority.ends_with(']'));
            let address = if has_port {
                authority.to_string()
            } else {
                format!("{authority}:{DEFAULT_TLS_PORT}")
            };
            Ok(Target::Tls { address, pkipath })
        }
        _ => Err(format!(
            "unsupported URI scheme `{scheme}` in `{uri}`; use unix:///run/vireo/gateway.sock or https://HOST:16514"
        )),
    }
}

/// The gateway's TLS port when a URI names none (libvirt's).
pub const DEFAULT_TLS_PORT: u16 = 16514;

/// The bearer token the CLI sends over TLS, when set.
pub const TOKEN_ENV: &str = "VIREO_TOKEN";

/// Where the CA and the client certificate are found without `?pkipath=`: `~/.pki/vireo` when it
/// exists (as libvirt's `~/.pki/libvirt`), else `/etc/pki/vireo`.
fn default_pkipath() -> PathBuf {
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".pki/vireo"))
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(|| PathBuf::from("/etc/pki/vireo"))
}

/// The TLS client for `address`: the CA to trust the gateway, and the client certificate when
/// the directory has one (a token client needs none).
async fn connect_tls(address: &str, pkipath: Option<PathBuf>) -> Result<Channel, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let dir = pkipath.unwrap_or_else(default_pkipath);
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|err| format!("cannot read {}: {err}", path.display()))
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("cacert.pem")?));
    if dir.join("clientcert.pem").exists() {
        tls = tls.identity(Identity::from_pem(
            read("clientcert.pem")?,
            read("clientkey.pem")?,
        ));
    }
    let host = address
        .rsplit_once(':')
        .map_or(address, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    tonic::transport::Endpoint::from_shared(format!("https://{address}"))
        .map_err(|err| format!("invalid address {address}: {err}"))?
        .tls_config(tls.domain_name(host))
        .map_err(|err| format!("TLS: {err}"))?
        .initial_stream_window_size(vireo_runtime::server::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(vireo_runtime::server::CONNECTION_WINDOW_BYTES)
        .connect()
        .await
        .map_err(|err| {
            let mut message = format!("cannot connect to {address}: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            message
        })
}

/// The read-only twin of a socket: `gateway.sock` -> `gateway-ro.sock`.
pub fn readonly_socket(socket: &std::path::Path) -> PathBuf {
    let stem = socket
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    socket.with_file_name(format!("{stem}-ro.sock"))
}

use vireo_runtime::client::{HOST_METADATA, READONLY_METADATA};

type Ascii = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// What every call carries: the host it is for (`--host`), so each command goes to that host's
/// service, and over TLS the bearer token and the read-only wish (`-r`).
#[derive(Debug, Clone, Default)]
pub struct CallHeaders {
    host: Option<Ascii>,
    authorization: Option<Ascii>,
    readonly: bool,
}

impl tonic::service::Interceptor for CallHeaders {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        if let Some(host) = &self.host {
            metadata.insert(HOST_METADATA, host.clone());
        }
        if let Some(authorization) = &self.authorization {
            metadata.insert("authorization", authorization.clone());
        }
        if self.readonly {
            metadata.insert(READONLY_METADATA, Ascii::from_static("1"));
        }
        Ok(request)
    }
}

/// The channel every client of the CLI uses: the gateway's, with the call headers.
pub type GatewayChannel = InterceptedService<Channel, CallHeaders>;

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
        let connect_failed = |message: String| {
            print_error("failed to connect to the hypervisor");
            print_error(&message);
            Failed
        };
        let mut headers = CallHeaders::default();
        let channel = match target {
            Target::Unix(mut socket) => {
                if self.readonly {
                    socket = readonly_socket(&socket);
                }
                vireo_runtime::client::connect_unix(&socket)
                    .await
                    .map_err(|err| connect_failed(format!("{err}; is vireod running?")))?
            }
            Target::Tls { address, pkipath } => {
                headers.readonly = self.readonly;
                if let Ok(token) = std::env::var(TOKEN_ENV) {
                    headers.authorization =
                        Some(format!("Bearer {token}").parse().map_err(|_| {
                            connect_failed(format!("{TOKEN_ENV}: not a valid token"))
                        })?);
                }
                connect_tls(&address, pkipath)
                    .await
                    .map_err(connect_failed)?
            }
        };
        if let Some(host) = &self.host {
            headers.host = Some(host.parse().map_err(|_| {
                print_error(&format!("--host: `{host}` is not a valid host name"));
                Failed
            })?);
        }
        let channel = InterceptedService::new(channel, headers);
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
        assert_eq!(
            parse_uri("https://node1"),
            Ok(Target::Tls {
                address: "node1:16514".into(),
                pkipath: None
            })
        );
        assert_eq!(
            parse_uri("https://10.0.0.2:7000/?pkipath=/tmp/pki"),
            Ok(Target::Tls {
                address: "10.0.0.2:7000".into(),
                pkipath: Some("/tmp/pki".into())
            })
        );
        assert!(
            parse_uri("https://h/?no_verify=1")
                .unwrap_err()
                .contains("no_verify=1")
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
