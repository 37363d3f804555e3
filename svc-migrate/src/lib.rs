//! svc-migrate owns migration jobs between hosts (prepare, perform, finish, confirm, rollback) and
//! save/restore of domains; the engines move the bytes. Save, restore and managed save are built:
//! this service asks svc-compute (through its gRPC API on the same host) to write or resume a
//! guest's state (`vireo dominfo` shows a managed image). Offline and live migration on both
//! engines, with their jobs and limits and TLS data, are in `migration.rs`; copied storage and
//! the save-image XML calls are not built.

mod migration;

use std::path::PathBuf;

use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};
use vireo_proto::compute::v1 as compute;
use vireo_proto::compute::v1::domain_service_client::DomainServiceClient;
use vireo_proto::migrate::v1 as pb;
use vireo_proto::migrate::v1::migration_peer_service_server::{
    MigrationPeerService, MigrationPeerServiceServer,
};
use vireo_proto::migrate::v1::migration_service_server::MigrationServiceServer;
use vireo_proto::migrate::v1::save_restore_service_server::{
    SaveRestoreService, SaveRestoreServiceServer,
};
use vireo_runtime::{BoxError, CancellationToken, ServerBuilder, ServiceContext};

/// Serves this service's API on `context.socket` until `shutdown` is cancelled.
pub async fn serve(context: ServiceContext, shutdown: CancellationToken) -> Result<(), BoxError> {
    context.prepare_state_dir()?;
    let save_restore = SaveRestore {
        compute_socket: context.run_dir.join("compute.sock"),
    };
    let server = ServerBuilder::new()
        .add_service(MigrationServiceServer::new(migration::Migrations {
            compute_socket: context.run_dir.join("compute.sock"),
            gateway_socket: context.run_dir.join("gateway.sock"),
            jobs: Default::default(),
            limits: Default::default(),
            tls_by_default: !context.file.tls.listen.is_empty(),
        }))
        .add_service(MigrationPeerServiceServer::new(Peers))
        .add_service(SaveRestoreServiceServer::new(save_restore));
    tracing::info!(socket = %context.socket.display(), "Migrate serving");
    server.serve(&context, shutdown).await?;
    Ok(())
}

/// Every method answers UNIMPLEMENTED, named by vireo-runtime's pending layer, until built.
struct Peers;

#[tonic::async_trait]
impl MigrationPeerService for Peers {}

/// Save and restore through this host's svc-compute, which drives the engine.
struct SaveRestore {
    compute_socket: PathBuf,
}

fn one<T: Send + 'static>(value: T) -> Response<BoxStream<T>> {
    Response::new(Box::pin(tokio_stream::once(Ok(value))))
}

/// --running / --paused as a restore override (unset: as saved).
fn paused_of(state: pb::RestoreState) -> Option<bool> {
    match state {
        pb::RestoreState::Running => Some(false),
        pb::RestoreState::Paused => Some(true),
        pb::RestoreState::Unspecified => None,
    }
}

impl SaveRestore {
    async fn compute(&self) -> Result<DomainServiceClient<tonic::transport::Channel>, Status> {
        let channel = vireo_runtime::client::connect_unix(&self.compute_socket)
            .await
            .map_err(|err| {
                Status::unavailable(format!(
                    "svc-compute at {} is unreachable: {err}",
                    self.compute_socket.display()
                ))
            })?;
        Ok(DomainServiceClient::new(channel))
    }

    async fn save(
        &self,
        domain: Option<vireo_proto::common::v1::ObjectRef>,
        file: String,
        managed: bool,
        restore_state: pb::RestoreState,
    ) -> Result<Response<BoxStream<pb::SaveUpdate>>, Status> {
        let saved = self
            .compute()
            .await?
            .save_domain_state(compute::SaveDomainStateRequest {
                host: String::new(),
                domain,
                file,
                managed,
                restore_paused: paused_of(restore_state),
            })
            .await?
            .into_inner();
        Ok(one(pb::SaveUpdate {
            update: Some(pb::save_update::Update::Done(pb::SaveResult {
                job_id: String::new(),
                file: saved.file,
                size_bytes: saved.size_bytes,
                domain_name: saved.name,
                domain_uuid: saved.uuid,
            })),
        }))
    }
}

#[tonic::async_trait]
impl SaveRestoreService for SaveRestore {
    async fn save_domain(
        &self,
        request: Request<pb::SaveDomainRequest>,
    ) -> Result<Response<BoxStream<pb::SaveUpdate>>, Status> {
        let request = request.into_inner();
        if !request.xml.is_empty() {
            return Err(Status::failed_precondition(
                "xml: save --xml (an alternative definition in the image) is not built",
            ));
        }
        let state = request.restore_state();
        self.save(request.domain, request.file, false, state).await
    }

    async fn managed_save(
        &self,
        request: Request<pb::ManagedSaveRequest>,
    ) -> Result<Response<BoxStream<pb::SaveUpdate>>, Status> {
        let request = request.into_inner();
        let state = request.restore_state();
        self.save(request.domain, String::new(), true, state).await
    }

    async fn restore_domain(
        &self,
        request: Request<pb::RestoreDomainRequest>,
    ) -> Result<Response<BoxStream<pb::RestoreUpdate>>, Status> {
        let request = request.into_inner();
        if !request.xml.is_empty() {
            return Err(Status::failed_precondition(
                "xml: restore --xml (an alternative definition) is not built",
            ));
        }
        let state = request.restore_state();
        let domain = self
            .compute()
            .await?
            .restore_domain_state(compute::RestoreDomainStateRequest {
                host: String::new(),
                file: request.file,
                paused: paused_of(state),
            })
            .await?
            .into_inner();
        let summary = domain.summary.unwrap_or_default();
        Ok(one(pb::RestoreUpdate {
            update: Some(pb::restore_update::Update::Done(pb::RestoreResult {
                job_id: String::new(),
                domain: Some(pb::MigratedDomain {
                    name: summary.name,
                    uuid: summary.uuid,
                    id: u32::try_from(summary.id).unwrap_or(0),
                    paused: summary.state == compute::DomainState::Paused as i32,
                    persistent: summary.persistent,
                }),
            })),
        }))
    }
}
