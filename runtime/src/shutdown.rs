//! Turning SIGTERM/SIGINT into the one cancellation token a process stops by.

use std::future::Future;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// How long in-flight work may take after a stop signal before the process exits anyway.
pub const DRAIN_DEADLINE: Duration = Duration::from_millis(1500);

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
            () = token.cancelled() => return,
        }
        token.cancel();
    });
    Ok(())
}

/// Runs `work` until it ends by itself, or, after `token` is cancelled, for at most `DRAIN_DEADLINE`.
/// Returns None when the deadline cut it short.
pub async fn drain<T>(token: &CancellationToken, work: impl Future<Output = T>) -> Option<T> {
    tokio::pin!(work);
    tokio::select! {
        result = &mut work => return Some(result),
        () = token.cancelled() => {}
    }
    tokio::time::timeout(DRAIN_DEADLINE, work).await.ok()
}
