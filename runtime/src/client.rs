//! Connecting to a Vireo server over its unix socket.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// The metadata key that names the host of a call for the gateway (it wins over the request's
/// `host` field).
pub const HOST_METADATA: &str = "x-vireo-host";

/// The metadata key with which a TLS client asks for a read-only connection (`vireo -r`).
pub const READONLY_METADATA: &str = "x-vireo-readonly";

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {path}: {source}")]
    Unix {
        path: PathBuf,
        source: tonic::transport::Error,
    },
}

/// A channel to the gRPC server on `socket`. Connects eagerly, so a missing or dead socket is
/// reported here and not on the first call.
pub async fn connect_unix(socket: &Path) -> Result<Channel, ConnectError> {
    let endpoint = unix_endpoint();
    let path = socket.to_path_buf();
    let connector_path = path.clone();
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = connector_path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|source| ConnectError::Unix { path, source })
}

/// As `connect_unix`, retrying for up to `within` while the socket is absent or refuses: a
/// service asks a sibling that vireod may still be starting.
pub async fn connect_unix_within(
    socket: &Path,
    within: std::time::Duration,
) -> Result<Channel, ConnectError> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match connect_unix(socket).await {
            Ok(channel) => return Ok(channel),
            Err(err) if tokio::time::Instant::now() >= deadline => return Err(err),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

/// A channel to `socket` that connects on first use and reconnects after the server restarts.
pub fn lazy_unix(socket: &Path) -> Channel {
    let path = socket.to_path_buf();
    unix_endpoint().connect_with_connector_lazy(tower::service_fn(move |_| {
        let path = path.clone();
        async move { UnixStream::connect(path).await.map(TokioIo::new) }
    }))
}

fn unix_endpoint() -> Endpoint {
    // The authority is never resolved: the connector dials the socket.
    Endpoint::from_static("http://localhost")
        .initial_stream_window_size(crate::server::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(crate::server::CONNECTION_WINDOW_BYTES)
}
