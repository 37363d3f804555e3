//! svc-nodedev owns host devices read from a configurable sysfs root: PCI (with IOMMU groups and
//! SR-IOV), net, block, SCSI/FC (NPIV) and USB, and binding them to vfio-pci for passthrough. Its
//! behaviour arrives with issue #8; today it serves the v1 API, health and reflection.

use vireo_proto::nodedev::v1::node_device_service_server::{
    NodeDeviceService, NodeDeviceServiceServer,
};
use vireo_runtime::{BoxError, CancellationToken, ServerBuilder, ServiceContext};

/// Serves this service's API on `context.socket` until `shutdown` is cancelled.
pub async fn serve(context: ServiceContext, shutdown: CancellationToken) -> Result<(), BoxError> {
    context.prepare_state_dir()?;
    let server = ServerBuilder::new().add_service(NodeDeviceServiceServer::new(Devices));
    tracing::info!(socket = %context.socket.display(), "Nodedev serving");
    server.serve(&context.socket, shutdown).await?;
    Ok(())
}

/// Every method answers UNIMPLEMENTED, named by vireo-runtime's pending layer, until built.
struct Devices;

#[tonic::async_trait]
impl NodeDeviceService for Devices {}
