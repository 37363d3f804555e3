//! Serving gRPC on unix sockets and TLS over TCP: health, reflection, the not-yet-built answer, socket modes, and a
//! graceful stop on a cancellation token that removes the sockets it created.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::ServerTlsConfig;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::access::{Audit, Authenticate, GuardLayer, UnixPeer};
use crate::pending::PendingLayer;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another server is already listening on {0}")]
    AlreadyServing(PathBuf),
    #[error("cannot bind {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("{0}")]
    Tls(String),
    #[error("serving {path}: {source}")]
    Serve {
        path: PathBuf,
        source: tonic::transport::Error,
    },
}

/// Who may connect to a socket, and with what rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketAccess {
    /// Mode 0600: root only, every call allowed.
    RootOnly,
    /// Mode 0666: anyone, Get/List/Watch only (like `virsh -r`).
    ReadOnly,
}

/// Collects a server's services, then serves them with health and reflection.
pub struct ServerBuilder {
    routes: RoutesBuilder,
    advertised: Vec<&'static str>,
    health: Option<HealthReporter>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder::new()
    }
}

impl ServerBuilder {
    /// A server with the standard health service, which reports every added service SERVING once
    /// the socket is bound.
    pub fn new() -> ServerBuilder {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        ServerBuilder {
            routes,
            advertised: Vec::new(),
            health: Some(reporter),
        }
    }

    /// A server whose health service is the caller's own (the gateway's, which asks its backends).
    pub fn with_health<S>(health_service: S) -> ServerBuilder
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        ServerBuilder {
            routes,
            advertised: Vec::new(),
            health: None,
        }
    }

    pub fn add_service<S>(mut self, service: S) -> ServerBuilder
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.advertised.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// The health reporter of a standard-health server.
    pub fn health(&self) -> Option<HealthReporter> {
        self.health.clone()
    }

    /// Adds reflection (advertising the added services and health) and returns the routes.
    pub fn into_routes(
        self,
    ) -> Result<(Routes, Vec<&'static str>, Option<HealthReporter>), ServerError> {
        self.into_routes_advertising(&[])
    }

    /// Like `into_routes`, also advertising services that another process answers (the gateway's
    /// proxied services).
    pub fn into_routes_advertising(
        mut self,
        extra: &[String],
    ) -> Result<(Routes, Vec<&'static str>, Option<HealthReporter>), ServerError> {
        let advertised = self.advertised.clone();
        let reflection = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(vireo_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.health.v1.Health");
            for name in advertised.iter().copied() {
                builder = builder.with_service_name(name);
            }
            for name in extra {
                builder = builder.with_service_name(name.clone());
            }
            builder
        };
        let v1 = reflection()
            .build_v1()
            .map_err(|err| ServerError::Reflection(err.to_string()))?;
        let v1alpha = reflection()
            .build_v1alpha()
            .map_err(|err| ServerError::Reflection(err.to_string()))?;
        self.routes.add_service(v1);
        self.routes.add_service(v1alpha);
        Ok((self.routes.routes(), self.advertised, self.health))
    }

    /// Serves on the context's socket (root only), and on TCP with TLS when `[tls.listen]`
    /// names this server, until `shutdown` is cancelled.
    pub async fn serve(
        self,
        context: &crate::ServiceContext,
        shutdown: CancellationToken,
    ) -> Result<(), ServerError> {
        let (routes, advertised, health) = self.into_routes()?;
        let mut listeners = vec![Listener::Unix(
            context.socket.clone(),
            SocketAccess::RootOnly,
        )];
        listeners.extend(
            crate::tls::listener(&context.file.tls, context.service.name())
                .map_err(ServerError::Tls)?,
        );
        serve_routes(routes, listeners, None, health, &advertised, shutdown).await
    }
}

/// The servers of this process by their root-only socket, so that a caller in the same process
/// (vireod's gateway) hands a call to the service without a socket hop.
static IN_PROCESS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<PathBuf, Routes>>,
> = std::sync::LazyLock::new(Default::default);

/// The routes served in this process on `socket`, if any.
pub fn in_process(socket: &Path) -> Option<Routes> {
    IN_PROCESS
        .lock()
        .ok()
        .and_then(|servers| servers.get(socket).cloned())
}

/// Keeps routes listed in `IN_PROCESS` while their server runs.
struct InProcess(PathBuf);

impl InProcess {
    fn register(socket: &Path, routes: &Routes) -> InProcess {
        if let Ok(mut servers) = IN_PROCESS.lock() {
            servers.insert(socket.to_path_buf(), routes.clone());
        }
        InProcess(socket.to_path_buf())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Ok(mut servers) = IN_PROCESS.lock() {
            servers.remove(&self.0);
        }
    }
}

/// Where a server listens, and how it tells who each caller is.
pub enum Listener {
    /// A unix socket whose file mode decides who may connect.
    Unix(PathBuf, SocketAccess),
    /// TCP with TLS; `authenticator` names each caller (client certificate or bearer token).
    Tls {
        address: std::net::SocketAddr,
        config: ServerTlsConfig,
        authenticator: Arc<dyn Authenticate>,
    },
}

/// A listener bound and ready to accept.
enum Bound {
    Unix(BoundSocket, SocketAccess),
    Tls(TcpListener, ServerTlsConfig, Arc<dyn Authenticate>),
}

/// Serves `routes` on every listener until `shutdown` is cancelled, marking `advertised` (and the
/// overall "" service) SERVING once every listener is bound, and NOT_SERVING when stopping. Each
/// call is authenticated and checked against the role table; calls that change anything go to
/// `audit` when given.
pub async fn serve_routes(
    routes: Routes,
    listeners: Vec<Listener>,
    audit: Option<Arc<dyn Audit>>,
    health: Option<HealthReporter>,
    advertised: &[&'static str],
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let mut bound = Vec::new();
    for listener in listeners {
        bound.push(match listener {
            Listener::Unix(path, access) => Bound::Unix(bind_socket(&path, access)?, access),
            Listener::Tls {
                address,
                config,
                authenticator,
            } => {
                let tcp = TcpListener::bind(address)
                    .await
                    .map_err(|source| ServerError::Bind {
                        path: PathBuf::from(address.to_string()),
                        source,
                    })?;
                Bound::Tls(tcp, config, authenticator)
            }
        });
    }
    if let Some(health) = &health {
        for name in advertised {
            health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        health.set_service_status("", ServingStatus::Serving).await;
    }
    let mut servers = tokio::task::JoinSet::new();
    for listener in bound {
        let routes = routes.clone();
        let shutdown = shutdown.clone();
        let audit = audit.clone();
        servers.spawn(async move {
            let stopped = shutdown.cancelled_owned();
            match listener {
                Bound::Unix(socket, access) => {
                    let BoundSocket { listener, file } = socket;
                    let _in_process = (access == SocketAccess::RootOnly)
                        .then(|| InProcess::register(&file.0, &routes));
                    let guard = GuardLayer::new(
                        Arc::new(UnixPeer {
                            readonly: access == SocketAccess::ReadOnly,
                        }),
                        audit,
                    );
                    server_builder()
                        .layer(guard)
                        .layer(PendingLayer)
                        .add_routes(routes)
                        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped)
                        .await
                        .map_err(|source| ServerError::Serve {
                            path: file.0.clone(),
                            source,
                        })
                }
                Bound::Tls(tcp, config, authenticator) => {
                    let address = tcp
                        .local_addr()
                        .map(|address| address.to_string())
                        .unwrap_or_default();
                    let serve_err = |source| ServerError::Serve {
                        path: PathBuf::from(&address),
                        source,
                    };
                    server_builder()
                        .tls_config(config)
                        .map_err(serve_err)?
                        .layer(GuardLayer::new(authenticator, audit))
                        .layer(PendingLayer)
                        .add_routes(routes)
                        .serve_with_incoming_shutdown(TcpListenerStream::new(tcp), stopped)
                        .await
                        .map_err(serve_err)
                }
            }
        });
    }
    let mut outcome = Ok(());
    while let Some(joined) = servers.join_next().await {
        if let Ok(Err(err)) = joined {
            // One listener failing stops the others: a half-served process is worse than none.
            shutdown.cancel();
            outcome = Err(err);
        }
    }
    if let Some(health) = &health {
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
    }
    outcome
}

/// A bound socket and the guard that removes its file.
pub struct BoundSocket {
    pub listener: UnixListener,
    file: SocketFile,
}

/// Removes the socket file when the server using it ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds a socket with its final mode already set: bind a private name, chmod, then rename, so no
/// client ever sees it with a wider mode. A stale socket (nobody listening) is replaced.
pub fn bind_socket(path: &Path, access: SocketAccess) -> Result<BoundSocket, ServerError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ServerError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServerError::AlreadyServing(path.to_path_buf()));
    }
    let private = path.with_extension(format!("sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&private);
    let bind_err = |source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(&private).map_err(bind_err)?;
    let mode = match access {
        SocketAccess::RootOnly => 0o600,
        SocketAccess::ReadOnly => 0o666,
    };
    let placed = std::fs::set_permissions(&private, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::rename(&private, path));
    if let Err(source) = placed {
        let _ = std::fs::remove_file(&private);
        return Err(bind_err(source));
    }
    Ok(BoundSocket {
        listener,
        file: SocketFile(path.to_path_buf()),
    })
}

/// HTTP/2 flow-control windows for bulk streams (volume uploads, downloads, migration): with
/// h2's 64 KiB default a 1 MiB chunk waits for several window updates on every hop.
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        // Large frames: a 1 MiB chunk crosses in a few frames rather than 64 of 16 KiB.
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// The largest HTTP/2 frame a Vireo server accepts (h2 allows up to 16 MiB - 1).
pub const MAX_FRAME_BYTES: u32 = 1 << 20;
