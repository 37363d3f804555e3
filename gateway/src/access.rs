//! Who calls the gateway over TCP, and the record of what they changed: TLS settings, client
//! certificates (mutual TLS) and bearer tokens mapped to roles, the audit log, and WhoAmI.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Certificate, Identity as TlsIdentity, ServerTlsConfig};
use tonic::{Request, Response, Status};
use vireo_proto::cluster::v1 as cluster;
use vireo_runtime::access::{
    Audit, AuditRecord, AuthMethod, Authenticate, Identity, Role, token_sha256,
};
use vireo_runtime::client::READONLY_METADATA;

/// Where the PKI files live by default (as libvirt's /etc/pki/libvirt); `vireo pki` writes them.
pub const DEFAULT_PKI_DIR: &str = "/etc/pki/vireo";
pub const CA_CERT: &str = "cacert.pem";
pub const SERVER_CERT: &str = "servercert.pem";
pub const SERVER_KEY: &str = "serverkey.pem";
pub const CLIENT_CERT: &str = "clientcert.pem";
pub const CLIENT_KEY: &str = "clientkey.pem";

/// `[gateway.tls]`: the directory with the CA, and this gateway's server certificate and key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Holds cacert.pem, servercert.pem and serverkey.pem (and clientcert.pem/clientkey.pem,
    /// which the gateway presents to hosts it reaches over TLS); /etc/pki/vireo when unset.
    pub pki_dir: Option<PathBuf>,
}

impl TlsConfig {
    pub fn dir(&self) -> PathBuf {
        self.pki_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PKI_DIR))
    }
}

/// A bearer token of `[gateway.tokens.NAME]`: only its SHA-256 is stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Hex SHA-256 of the token (`vireo pki token NAME` prints it).
    pub sha256: String,
    pub role: Role,
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path)
        .map_err(|err| format!("[gateway.tls]: cannot read {}: {err}", path.display()))
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

/// Callers on the TLS port: a verified client certificate whose CN `[gateway.clients]` gives a
/// role, or `authorization: Bearer TOKEN` matching `[gateway.tokens]`.
pub struct TlsClients {
    /// Certificate CN -> role.
    certificates: BTreeMap<String, Role>,
    /// Token SHA-256 (hex) -> (token name, role).
    tokens: BTreeMap<String, (String, Role)>,
}

impl TlsClients {
    pub fn new(
        certificates: &BTreeMap<String, Role>,
        tokens: &BTreeMap<String, TokenConfig>,
    ) -> Result<TlsClients, String> {
        let mut by_hash = BTreeMap::new();
        for (name, token) in tokens {
            let hash = token.sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                return Err(format!(
                    "[gateway.tokens.{name}] sha256: expected 64 hex digits (`vireo pki token {name}` prints it)"
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
                "client certificate `{subject}` has no role in [gateway.clients]"
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

/// Mutating calls, one JSON line each, appended to `<state-dir>/audit.log`.
pub struct AuditLog {
    file: Mutex<std::fs::File>,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<AuditLog, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|err| format!("cannot open audit log {}: {err}", path.display()))?;
        Ok(AuditLog {
            file: Mutex::new(file),
        })
    }
}

fn auth_name(method: AuthMethod) -> &'static str {
    match method {
        AuthMethod::UnixSocket => "unix-socket",
        AuthMethod::ClientCertificate => "client-certificate",
        AuthMethod::BearerToken => "bearer-token",
        AuthMethod::CallCredential => "join-token",
    }
}

impl Audit for AuditLog {
    fn record(&self, record: AuditRecord) {
        let line = serde_json::json!({
            "time_unix_ms": crate::cluster_views::now_ms(),
            "subject": record.subject,
            "auth": auth_name(record.auth),
            "method": record.method,
            "host": record.host,
            "result": format!("{:?}", record.code),
            "message": record.message,
        });
        tracing::info!(target: "audit", "{line}");
        let Ok(mut file) = self.file.lock() else {
            return;
        };
        if let Err(err) = writeln!(file, "{line}") {
            tracing::warn!("audit log: {err}");
        }
    }
}

/// WhoAmI: the identity the guard put on the request.
#[derive(Debug, Clone)]
pub struct WhoAmI {
    pub gateway_host: String,
}

#[tonic::async_trait]
impl cluster::access_service_server::AccessService for WhoAmI {
    async fn who_am_i(
        &self,
        request: Request<cluster::WhoAmIRequest>,
    ) -> Result<Response<cluster::Identity>, Status> {
        let identity = request
            .extensions()
            .get::<Identity>()
            .ok_or_else(|| Status::internal("no identity on the request"))?;
        Ok(Response::new(cluster::Identity {
            subject: identity.subject.clone(),
            role: match identity.role {
                Role::ReadOnly => cluster::Role::Readonly,
                Role::Operator => cluster::Role::Operator,
                Role::Admin => cluster::Role::Admin,
            } as i32,
            auth_method: match identity.method {
                AuthMethod::UnixSocket => cluster::AuthMethod::UnixSocket,
                AuthMethod::ClientCertificate => cluster::AuthMethod::TlsClientCert,
                AuthMethod::BearerToken | AuthMethod::CallCredential => {
                    cluster::AuthMethod::BearerToken
                }
            } as i32,
            readonly_connection: identity.readonly_connection,
            gateway_host: self.gateway_host.clone(),
        }))
    }
}
