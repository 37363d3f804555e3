//! svc-migrate owns migration jobs between hosts (prepare, perform, finish, confirm, rollback) and
//! save/restore of domains; the engines move the bytes. Its behaviour arrives with issue #10;
//! today it serves the v1 API, health and reflection.

use vireo_proto::migrate::v1::migration_peer_service_server::{
    MigrationPeerService, MigrationPeerServiceServer,
};
use vireo_proto::migrate::v1::migration_service_server::{
    MigrationService, MigrationServiceServer,
};
use vireo_proto::migrate::v1::save_restore_service_server::{
    SaveRestoreService, SaveRestoreServiceServer,
};
use vireo_runtime::{BoxError, CancellationToken, ServerBuilder, ServiceContext};

/// Serves this service's API on `context.socket` until `shutdown` is cancelled.
pub async fn serve(context: ServiceContext, shutdown: CancellationToken) -> Result<(), BoxError> {
    context.prepare_state_dir()?;
    let server = ServerBuilder::new()
        .add_service(MigrationServiceServer::new(Migrations))
        .add_service(MigrationPeerServiceServer::new(Peers))
        .add_service(SaveRestoreServiceServer::new(SaveRestore));
    tracing::info!(socket = %context.socket.display(), "Migrate serving");
    server.serve(&context.socket, shutdown).await?;
    Ok(())
}

/// Every method answers UNIMPLEMENTED, named by vireo-runtime's pending layer, until built.
struct Migrations;

#[tonic::async_trait]
impl MigrationService for Migrations {}

/// Every method answers UNIMPLEMENTED, named by vireo-runtime's pending layer, until built.
struct Peers;

#[tonic::async_trait]
impl MigrationPeerService for Peers {}

/// Every method answers UNIMPLEMENTED, named by vireo-runtime's pending layer, until built.
struct SaveRestore;

#[tonic::async_trait]
impl SaveRestoreService for SaveRestore {}
