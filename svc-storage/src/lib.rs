//! svc-storage owns storage pools (dir, fs, netfs, logical, disk, iscsi) and their volumes: definitions,
//! backends per pool type, image work through qemu-img, uploads and downloads. Its behaviour
//! arrives with issue #6; today it serves the v1 API, health and reflection.

use vireo_proto::storage::v1::storage_pool_service_server::{
    StoragePoolService, StoragePoolServiceServer,
};
use vireo_proto::storage::v1::storage_volume_service_server::{
    StorageVolumeService, StorageVolumeServiceServer,
};
use vireo_runtime::{BoxError, CancellationToken, ServerBuilder, ServiceContext};

/// Serves this service's API on `context.socket` until `shutdown` is cancelled.
pub async fn serve(context: ServiceContext, shutdown: CancellationToken) -> Result<(), BoxError> {
    context.prepare_state_dir()?;
    let server = ServerBuilder::new()
        .add_service(StoragePoolServiceServer::new(Pools))
        .add_service(StorageVolumeServiceServer::new(Volumes));
    tracing::info!(socket = %context.socket.display(), "Storage serving");
    server.serve(&context.socket, shutdown).await?;
    Ok(())
}

/// Every method answers UNIMPLEMENTED, named by vireo-runtime's pending layer, until built.
struct Pools;

#[tonic::async_trait]
impl StoragePoolService for Pools {}

/// Every method answers UNIMPLEMENTED, named by vireo-runtime's pending layer, until built.
struct Volumes;

#[tonic::async_trait]
impl StorageVolumeService for Volumes {}
