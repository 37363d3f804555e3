//! The record of what callers changed (the audit log), and WhoAmI. Who they are is decided by
//! `vireo_runtime::tls` (TCP) and the socket modes (unix).

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use tonic::{Request, Response, Status};
use vireo_proto::cluster::v1 as cluster;
use vireo_runtime::access::{Audit, AuditRecord, AuthMethod, Identity, Role};

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
