//! svc-network owns virtual networks: bridges, taps and veths (rtnetlink), NAT and forwarding in
//! Vireo's own nftables tables, one dnsmasq per network, guest ports and their QoS. Its behaviour
//! arrives with issue #7; today it serves the v1 API, health and reflection, and `core/` holds
//! the nftables rulesets and dnsmasq configuration that the lifecycle will apply.

pub mod core;

use vireo_proto::network::v1::network_port_service_server::{
    NetworkPortService, NetworkPortServiceServer,
};
use vireo_proto::network::v1::network_service_server::{NetworkService, NetworkServiceServer};
use vireo_runtime::{BoxError, CancellationToken, ServerBuilder, ServiceContext};

/// Serves this service's API on `context.socket` until `shutdown` is cancelled.
pub async fn serve(context: ServiceContext, shutdown: CancellationToken) -> Result<(), BoxError> {
    context.prepare_state_dir()?;
    let server = ServerBuilder::new()
        .add_service(NetworkServiceServer::new(Networks))
        .add_service(NetworkPortServiceServer::new(Ports));
    tracing::info!(socket = %context.socket.display(), "Network serving");
    server.serve(&context.socket, shutdown).await?;
    Ok(())
}

/// Every method answers UNIMPLEMENTED, named by vireo-runtime's pending layer, until built.
struct Networks;

#[tonic::async_trait]
impl NetworkService for Networks {}

/// Every method answers UNIMPLEMENTED, named by vireo-runtime's pending layer, until built.
struct Ports;

#[tonic::async_trait]
impl NetworkPortService for Ports {}
