//! TLS on TCP for every Vireo server: the config file's `[tls]`, the server and client sides
//! (rustls through tonic), and who a caller is there: a client certificate (mutual TLS) or a
//! bearer token, mapped to a role.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Certificate, Identity as TlsIdentity, ServerTlsConfig};

use crate::access::{AuthMethod, Authenticate, Identity, Role, token_sha256};
use crate::client::READONLY_METADATA;
use crate::server::Listener;

/// Where the PKI files live by default (as libvirt's /etc/pki/libvirt); `vireo pki` writes them.
pub const DEFAULT_PKI_DIR: &str = "/etc/pki/vireo";
pub const CA_CERT: &str = "cacert.pem";
pub const SERVER_CERT: &str = "servercert.pem";
pub const SERVER_KEY: &str = "serverkey.pem";
pub const CLIENT_CERT: &str = "clientcert.pem";
pub const CLIENT_KEY: &str = "clientkey.pem";

/// The config file's `[tls]`: where each server listens on TCP, its certificates, and who may
/// call it there.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Holds cacert.pem, servercert.pem and serverkey.pem (and clientcert.pem/clientkey.pem,
    /// which a gateway presents to the hosts and services it reaches over TLS); /etc/pki/vireo
    /// when unset.
    pub pki_dir: Option<PathBuf>,
    /// TCP addresses by server name (`gateway = "0.0.0.0:16514"`, `compute = ...`); a server
    /// not named serves only its unix socket.
    #[serde(default)]
    pub listen: BTreeMap<String, std::net::SocketAddr>,
    /// Roles of client certificates, by subject CN.
    #[serde(default)]
    pub clients: BTreeMap<String, Role>,
    /// Bearer tokens, by name.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenConfig>,
}

impl TlsConfig {
    pub fn dir(&self) -> PathBuf {
        self.pki_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PKI_DIR))
    }
}

/// A bearer token of `[tls.tokens.NAME]`: only its SHA-256 is stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Hex SHA-256 of the token (`vireo pki token NAME` prints it).
    pub sha256: String,
    pub role: Role,
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|err| format!("[tls]: cannot read {}: {err}", path.display()))
}

/// The server side of TLS: our certificate, and client certificates checked against our CA but
/// optional, so that token clients can connect too.
pub fn server_tls(config: &TlsConfig) -> Result<ServerTlsConfig, String> {
    let dir = config.dir();
    let identity = TlsIdentity::from_pem(
        read_pem(&dir.join(SERVER_CERT))?,
        read_pem(&dir.join(SERVER_KEY))?,
    );
    Ok(ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(Certificate::from_pem(read_pem(&dir.join(CA_CERT))?))
        .client_auth_optional(true))
}

/// The client side of TLS for reaching other hosts: our CA, and our client certificate; None
/// when the PKI directory has no client certificate.
pub fn client_tls(config: &TlsConfig) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
    let dir = config.dir();
    if !dir.join(CLIENT_CERT).exists() {
        return Ok(None);
    }
    Ok(Some(
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read_pem(&dir.join(CA_CERT))?))
            .identity(TlsIdentity::from_pem(
                read_pem(&dir.join(CLIENT_CERT))?,
                read_pem(&dir.join(CLIENT_KEY))?,
            )),
    ))
}

/// The subject CN of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = certificate
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(name)
}

/// Callers on a TLS port: a verified client certificate whose CN `[tls.clients]` gives a role,
/// or `authorization: Bearer TOKEN` matching `[tls.tokens]`.
pub struct TlsClients {
    /// Certificate CN -> role.
    certificates: BTreeMap<String, Role>,
    /// Token SHA-256 (hex) -> (token name, role).
    tokens: BTreeMap<String, (String, Role)>,
}

impl TlsClients {
    pub fn new(config: &TlsConfig) -> Result<TlsClients, String> {
        let (certificates, tokens) = (&config.clients, &config.tokens);
        let mut by_hash = BTreeMap::new();
        for (name, token) in tokens {
            let hash = token.sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                return Err(format!(
                    "[tls.tokens.{name}] sha256: expected 64 hex digits (`vireo pki token {name}` prints it)"
                ));
            }
            by_hash.insert(hash, (name.clone(), token.role));
        }
        Ok(TlsClients {
            certificates: certificates.clone(),
            tokens: by_hash,
        })
    }
}

impl Authenticate for TlsClients {
    fn authenticate(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Identity, Status> {
        let readonly_connection = headers.contains_key(READONLY_METADATA);
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .map(|value| {
                value
                    .to_str()
                    .ok()
                    .and_then(|text| text.strip_prefix("Bearer "))
                    .ok_or_else(|| {
                        Status::unauthenticated("authorization: expected `Bearer TOKEN`")
                    })
            })
            .transpose()?;
        if let Some(token) = bearer {
            let (name, role) = self
                .tokens
                .get(&token_sha256(token.trim()))
                .ok_or_else(|| Status::unauthenticated("authorization: unknown bearer token"))?;
            return Ok(Identity {
                subject: name.clone(),
                role: *role,
                method: AuthMethod::BearerToken,
                readonly_connection,
            });
        }
        let certificate = extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
            .and_then(|chain| chain.first().cloned());
        let Some(certificate) = certificate else {
            return Err(Status::unauthenticated(
                "no credentials: present a client certificate signed by the gateway's CA, or `authorization: Bearer TOKEN`",
            ));
        };
        let subject = common_name(&certificate)
            .ok_or_else(|| Status::unauthenticated("client certificate: no subject CN"))?;
        let role = self.certificates.get(&subject).copied().ok_or_else(|| {
            Status::permission_denied(format!(
                "client certificate `{subject}` has no role in [tls.clients]"
            ))
        })?;
        Ok(Identity {
            subject,
            role,
            method: AuthMethod::ClientCertificate,
            readonly_connection,
        })
    }
}

/// The TLS listener `[tls.listen]` gives the server `name`, if any.
pub fn listener(config: &TlsConfig, name: &str) -> Result<Option<Listener>, String> {
    for server in config.listen.keys() {
        if !SERVERS.contains(&server.as_str()) {
            return Err(format!(
                "[tls.listen]: unknown server `{server}` (known: {})",
                SERVERS.join(", ")
            ));
        }
    }
    let Some(address) = config.listen.get(name) else {
        return Ok(None);
    };
    Ok(Some(Listener::Tls {
        address: *address,
        config: server_tls(config)?,
        authenticator: Arc::new(TlsClients::new(config)?),
    }))
}

/// The servers `[tls.listen]` may name.
const SERVERS: [&str; 6] = [
    "gateway", "compute", "storage", "network", "nodedev", "migrate",
];
