//! svc-compute owns domains and their lifecycle, the engines that run them (vireo-vmm, QEMU), the
//! guest processes it supervises, and the host facts virsh reports about the hypervisor node
//! (nodeinfo, capabilities, freecell, ...). `core/` is the logic and knows nothing of gRPC;
//! `grpc.rs` converts between proto messages and core.

pub mod core;
mod error;
mod grpc;
mod grpc_domains;

pub use error::Error;

use vireo_runtime::{BoxError, CancellationToken, ServerBuilder, ServiceContext};

/// Serves the compute API on `context.socket` until `shutdown` is cancelled.
pub async fn serve(context: ServiceContext, shutdown: CancellationToken) -> Result<(), BoxError> {
    context.prepare_state_dir()?;
    let host = std::sync::Arc::new(core::host::Host::new(core::host::HostRoot::system()));
    let engines = std::sync::Arc::new(core::engines::probe().await);
    let domains = core::domains::Manager::open(
        &context.state_dir,
        &context.run_dir,
        engines.clone(),
        context.file.tls.dir(),
    )
    .await?;
    let server = ServerBuilder::new()
        .add_service(grpc::node_server(host.clone(), engines))
        .add_service(grpc_domains::domain_server(domains.clone()));
    tracing::info!(socket = %context.socket.display(), "compute serving");
    server.serve(&context, shutdown).await?;
    // Guests keep running: they outlive the service, which finds them again when it restarts.
    domains.close().await;
    Ok(())
}
