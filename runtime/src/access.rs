//! Who a caller is and what they may call: the one role table (DESIGN.md: `readonly` may call
//! every Get/List/Watch, `operator` adds lifecycle, `admin` may call everything), and the guard
//! every listener runs, which authenticates each call, enforces the table and records mutating
//! calls in an audit log.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tonic::Status;

/// A caller's role, weakest first, so `a >= b` means `a` may do what `b` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    ReadOnly,
    Operator,
    Admin,
}

/// The metadata key carrying the caller's effective role to the services (set by the guard).
pub const ROLE_METADATA: &str = "x-vireo-role";

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::ReadOnly => "readonly",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "readonly" => Ok(Role::ReadOnly),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role `{text}`; expected readonly, operator or admin"
            )),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Role, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Method-name prefixes that only read.
const READ_PREFIXES: &[&str] = &[
    "Get",
    "List",
    "Watch",
    "Find",
    "Lookup",
    "Download",
    "Has",
    "Check",
    "WhoAmI",
    "ServerReflectionInfo",
];
/// Method-name prefixes that change a running object's state but not what is defined.
const LIFECYCLE_PREFIXES: &[&str] = &[
    "Start", "Shutdown", "Reboot", "Reset", "Destroy", "Suspend", "Resume", "Console", "Refresh",
    "AbortJob",
];

/// Methods whose name reads wrongly for the prefixes: they reveal data or act on the host more
/// than their verb says.
const OVERRIDES: &[(&str, Role)] = &[
    // Starts a domain from whatever XML the caller sends: as define.
    ("StartIncomingDomain", Role::Admin),
    // A volume's bytes are a guest's data (libvirt refuses vol-download read-only).
    ("DownloadVolume", Role::Admin),
    // Probes the network and the host's disks for storage.
    ("FindPoolSources", Role::Operator),
    // Act on host hardware.
    ("DestroyNodeDevice", Role::Admin),
    ("ResetNodeDevice", Role::Admin),
];

/// The weakest role allowed to call the gRPC method at `path` (`/package.Service/Method`);
/// anything not of that form needs admin.
pub fn required_role(path: &str) -> Role {
    let Some((_, method)) = path
        .strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .filter(|(service, method)| {
            !service.is_empty() && !method.is_empty() && !method.contains('/')
        })
    else {
        return Role::Admin;
    };
    if let Some((_, role)) = OVERRIDES.iter().find(|(name, _)| *name == method) {
        *role
    } else if READ_PREFIXES
        .iter()
        .any(|prefix| method.starts_with(prefix))
    {
        Role::ReadOnly
    } else if LIFECYCLE_PREFIXES
        .iter()
        .any(|prefix| method.starts_with(prefix))
    {
        Role::Operator
    } else {
        Role::Admin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lifecycle_and_the_rest() {
        assert_eq!(
            required_role("/vireo.compute.v1.DomainService/ListDomains"),
            Role::ReadOnly
        );
        assert_eq!(
            required_role("/grpc.health.v1.Health/Check"),
            Role::ReadOnly
        );
        assert_eq!(
            required_role("/vireo.compute.v1.DomainService/StartDomain"),
            Role::Operator
        );
        assert_eq!(
            required_role("/vireo.compute.v1.DomainService/DefineDomain"),
            Role::Admin
        );
        assert_eq!(
            required_role("/vireo.storage.v1.StorageVolumeService/DeleteVolume"),
            Role::Admin
        );
        assert_eq!(required_role("garbage"), Role::Admin);
    }
}

/// A new secret token: 32 random bytes, hex.
pub fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "no randomness from the system".to_string())?;
    Ok(hex(&bytes))
}

/// Hex SHA-256 of a token: all that is stored of it.
pub fn token_sha256(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Methods that carry their own credential, checked by their handler: JoinHost's join token
/// is all a joining host has.
const SELF_AUTHENTICATED: &[&str] = &["/vireo.cluster.v1.HostService/JoinHost"];

/// Whether the method at `path` authenticates its caller itself.
pub fn self_authenticated(path: &str) -> bool {
    SELF_AUTHENTICATED.contains(&path)
}

/// How a caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    UnixSocket,
    ClientCertificate,
    BearerToken,
    /// A method's own credential (a join token), checked by its handler.
    CallCredential,
}

/// An authenticated caller, put in every request's extensions for handlers (WhoAmI) to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// A certificate's subject CN, a token's name, or `uid:N` on a unix socket.
    pub subject: String,
    pub role: Role,
    pub method: AuthMethod,
    /// Connected to the read-only socket: at most `readonly`, whatever the role.
    pub readonly_connection: bool,
}

impl Identity {
    /// The role this connection may act with.
    pub fn effective_role(&self) -> Role {
        if self.readonly_connection {
            Role::ReadOnly
        } else {
            self.role
        }
    }
}

/// Tells who is calling from a request's headers and connection.
pub trait Authenticate: Send + Sync + 'static {
    /// The caller, or Unauthenticated saying what is missing or wrong.
    fn authenticate(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Identity, Status>;
}

/// A unix socket's caller, by the peer's uid: the socket's file mode already decided who may
/// connect, so the root-only socket grants `admin` and the read-only one `readonly`.
#[derive(Debug, Clone, Copy)]
pub struct UnixPeer {
    pub readonly: bool,
}

impl Authenticate for UnixPeer {
    fn authenticate(
        &self,
        _headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Identity, Status> {
        let uid = extensions
            .get::<tonic::transport::server::UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map_or_else(|| "unknown".to_string(), |cred| cred.uid().to_string());
        Ok(Identity {
            subject: format!("uid:{uid}"),
            role: if self.readonly {
                Role::ReadOnly
            } else {
                Role::Admin
            },
            method: AuthMethod::UnixSocket,
            readonly_connection: self.readonly,
        })
    }
}

/// One audited call: who, what, and how it ended.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub subject: String,
    pub auth: AuthMethod,
    /// `package.Service/Method`.
    pub method: String,
    /// The host the call named (`x-vireo-host`), when it did.
    pub host: Option<String>,
    pub code: tonic::Code,
    pub message: String,
}

/// Where audited calls go.
pub trait Audit: Send + Sync + 'static {
    fn record(&self, record: AuditRecord);
}

/// Authenticates every call, refuses what the caller's role does not allow (PermissionDenied
/// naming the method, the role it needs and the caller's), and audits every call that needs more
/// than `readonly`, refused or not.
#[derive(Clone)]
pub struct GuardLayer {
    authenticator: Arc<dyn Authenticate>,
    audit: Option<Arc<dyn Audit>>,
}

impl GuardLayer {
    pub fn new(authenticator: Arc<dyn Authenticate>, audit: Option<Arc<dyn Audit>>) -> GuardLayer {
        GuardLayer {
            authenticator,
            audit,
        }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    layer: GuardLayer,
}

impl<S, ReqBody> tower::Service<http::Request<ReqBody>> for Guard<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let method = path.trim_start_matches('/').to_string();
        let identity = match self
            .layer
            .authenticator
            .authenticate(request.headers(), request.extensions())
        {
            Ok(identity) => identity,
            Err(_) if self_authenticated(&path) => Identity {
                subject: "join-token".to_string(),
                role: Role::Admin,
                method: AuthMethod::CallCredential,
                readonly_connection: false,
            },
            Err(status) => {
                // A refused caller of a mutating method is recorded too.
                if let Some(audit) = &self.layer.audit
                    && required_role(&path) > Role::ReadOnly
                {
                    audit.record(AuditRecord {
                        subject: "unauthenticated".to_string(),
                        auth: AuthMethod::CallCredential,
                        method: method.clone(),
                        host: None,
                        code: status.code(),
                        message: status.message().to_string(),
                    });
                }
                return Box::pin(async move { Ok(status.into_http()) });
            }
        };
        // A self-authenticated call is checked by its handler, not by role.
        let needed = if self_authenticated(&path) {
            Role::ReadOnly
        } else {
            required_role(&path)
        };
        let pending_audit = match &self.layer.audit {
            Some(audit) if needed > Role::ReadOnly || self_authenticated(&path) => {
                Some(PendingAudit {
                    audit: audit.clone(),
                    record: Some(AuditRecord {
                        subject: identity.subject.clone(),
                        auth: identity.method,
                        method: method.clone(),
                        host: request
                            .headers()
                            .get(crate::client::HOST_METADATA)
                            .and_then(|value| value.to_str().ok())
                            .map(str::to_string),
                        code: tonic::Code::Unknown,
                        message: String::new(),
                    }),
                })
            }
            _ => None,
        };
        // A caller may ask for less than its role (a gateway forwarding a read-only caller's
        // call does), never for more.
        let claimed = request
            .headers()
            .get(ROLE_METADATA)
            .and_then(|role| role.to_str().ok())
            .and_then(|role| role.parse::<Role>().ok());
        let allowed = claimed.map_or(identity.effective_role(), |claimed| {
            claimed.min(identity.effective_role())
        });
        if allowed < needed {
            let why = if identity.readonly_connection {
                "this connection is read-only".to_string()
            } else {
                format!("`{}` has role {allowed}", identity.subject)
            };
            let status = Status::permission_denied(format!("{method} needs role {needed}; {why}"));
            if let Some(mut pending) = pending_audit {
                pending.finish(status.code(), status.message());
            }
            return Box::pin(async move { Ok(status.into_http()) });
        }
        // Services behind the gateway learn the caller's effective role from this header, which
        // the guard always sets, so a client cannot claim one.
        request.headers_mut().insert(
            ROLE_METADATA,
            http::HeaderValue::from_static(allowed.name()),
        );
        request.extensions_mut().insert(identity);
        let reply = self.inner.call(request);
        Box::pin(async move {
            let response = reply.await?;
            let Some(mut pending) = pending_audit else {
                return Ok(response);
            };
            // A call that fails at once answers with its status in the headers; any other ends
            // with it in the trailers, seen as the body is sent.
            if let Some(status) = Status::from_header_map(response.headers()) {
                pending.finish(status.code(), status.message());
                return Ok(response);
            }
            Ok(response.map(|body| {
                tonic::body::Body::new(AuditedBody {
                    inner: body,
                    pending,
                })
            }))
        })
    }
}

/// An audit record waiting for its call's end.
struct PendingAudit {
    audit: Arc<dyn Audit>,
    record: Option<AuditRecord>,
}

impl PendingAudit {
    fn finish(&mut self, code: tonic::Code, message: &str) {
        if let Some(mut record) = self.record.take() {
            record.code = code;
            record.message = message.to_string();
            self.audit.record(record);
        }
    }
}

impl Drop for PendingAudit {
    fn drop(&mut self) {
        // The client went away before the call ended.
        self.finish(tonic::Code::Cancelled, "the client cancelled the call");
    }
}

/// A response body that records its call's status when the trailers pass.
struct AuditedBody {
    inner: tonic::body::Body,
    pending: PendingAudit,
}

impl http_body::Body for AuditedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(status) = frame.trailers_ref().and_then(Status::from_header_map) {
                    self.pending.finish(status.code(), status.message());
                } else if frame.is_trailers() {
                    self.pending.finish(tonic::Code::Ok, "");
                }
            }
            Poll::Ready(Some(Err(status))) => {
                self.pending.finish(status.code(), status.message());
            }
            Poll::Ready(None) => self.pending.finish(tonic::Code::Ok, ""),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a request arrived through the guard from a read-only caller.
pub fn readonly_caller(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata
        .get(ROLE_METADATA)
        .is_some_and(|role| role.as_bytes() == Role::ReadOnly.name().as_bytes())
}
