//! svc-storage owns storage pools (dir, fs, netfs, logical, disk, iscsi) and their volumes:
//! definitions and lifecycle, a backend per pool type (mount, lvm2, parted/partx, iscsiadm),
//! image work through qemu-img, wiping, uploads and downloads (gRPC streams, or a local
//! transfer socket that takes the client's open file). `core/` is the logic and knows
//! nothing of gRPC; `grpc.rs` converts between proto messages and core.

pub mod core;
mod error;
mod grpc;
mod transfer;

pub use error::Error;

use vireo_runtime::{BoxError, CancellationToken, ServerBuilder, ServiceContext};

/// Serves the storage API on `context.socket` until `shutdown` is cancelled.
pub async fn serve(context: ServiceContext, shutdown: CancellationToken) -> Result<(), BoxError> {
    context.prepare_state_dir()?;
    let settings: core::pools::Settings = context.section()?;
    let manager =
        core::pools::Manager::open(&context.state_dir, &context.run_dir, settings).await?;
    manager.autostart().await;
    let server = ServerBuilder::new()
        .add_service(grpc::pool_server(manager.clone()))
        .add_service(grpc::volume_server(manager.clone()));
    tracing::info!(socket = %context.socket.display(), "storage serving");
    let transfers = transfer::serve(
        manager,
        vireo_runtime::transfer::socket_beside(&context.socket),
        shutdown.clone(),
    );
    let (served, transferred) = tokio::join!(
        server.serve(&context, shutdown.clone()),
        vireo_runtime::transfer::stop_all_on_failure(transfers, &shutdown)
    );
    served?;
    transferred?;
    Ok(())
}
