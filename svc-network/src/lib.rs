//! svc-network owns virtual networks: their definitions and lifecycle, bridges and addresses
//! (rtnetlink), NAT and forwarding in Vireo's own nftables tables, one dnsmasq per network, and
//! reconciling all of it after a restart. `core/` is the logic and knows nothing of gRPC;
//! `grpc.rs` converts. Guest ports are taps on the network's bridge; their QoS is not built yet.

pub mod core;
mod error;
mod grpc;

pub use error::Error;

use vireo_runtime::{BoxError, CancellationToken, ServerBuilder, ServiceContext};

/// Serves this service's API on `context.socket` until `shutdown` is cancelled.
pub async fn serve(context: ServiceContext, shutdown: CancellationToken) -> Result<(), BoxError> {
    context.prepare_state_dir()?;
    let settings: core::networks::Settings = context.section()?;
    let manager =
        core::networks::Manager::open(&context.state_dir, &context.run_dir, &settings).await?;
    manager.autostart().await;
    let server = ServerBuilder::new()
        .add_service(grpc::network_server(manager.clone()))
        .add_service(grpc::port_server(manager));
    tracing::info!(socket = %context.socket.display(), "network serving");
    server.serve(&context, shutdown).await?;
    Ok(())
}
