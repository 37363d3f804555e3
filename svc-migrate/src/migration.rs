//! Migration between hosts. Built: offline migration (`migrate --offline --persistent
//! [--undefinesource]`), which moves an inactive domain's persistent definition to another host
//! of the cluster. The destination is reached through this host's gateway, which routes by host
//! name; a failure after the destination has the definition removes it again, so the source is
//! never left without its domain. Live migration, jobs and their tuning are not built yet.

use std::path::PathBuf;

use tonic::codegen::BoxStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use vireo_proto::common::v1::{ObjectRef, Progress, object_ref::Key};
use vireo_proto::compute::v1 as compute;
use vireo_proto::compute::v1::domain_service_client::DomainServiceClient;
use vireo_proto::migrate::v1 as pb;
use vireo_proto::migrate::v1::migration_service_server::MigrationService;

pub struct Migrations {
    /// This host's svc-compute: the source side.
    pub compute_socket: PathBuf,
    /// This host's gateway: the way to the destination host.
    pub gateway_socket: PathBuf,
}

async fn client(
    socket: &std::path::Path,
    what: &str,
) -> Result<DomainServiceClient<Channel>, Status> {
    let channel = vireo_runtime::client::connect_unix(socket)
        .await
        .map_err(|err| {
            Status::unavailable(format!(
                "{what} at {} is unreachable: {err}",
                socket.display()
            ))
        })?;
    Ok(DomainServiceClient::new(channel))
}

fn progress(phase: &str, message: String) -> pb::MigrationUpdate {
    pb::MigrationUpdate {
        update: Some(pb::migration_update::Update::Progress(Progress {
            phase: phase.to_string(),
            message,
            ..Default::default()
        })),
    }
}

/// Why a request cannot be an offline migration, naming the field; None when it can.
fn unsupported(flags: &pb::MigrationFlags, options: &pb::MigrationOptions) -> Option<Status> {
    if !flags.offline {
        return Some(Status::unimplemented(
            "flags.live: live migration is not built yet (issue #10); `migrate --offline --persistent` moves an inactive domain's definition",
        ));
    }
    if !flags.persistent {
        return Some(Status::invalid_argument(
            "flags.persistent: --offline needs --persistent, as in virsh",
        ));
    }
    if flags.copy_storage_all || flags.copy_storage_inc {
        return Some(Status::unimplemented(
            "flags.copy_storage_all: copying disks arrives with live migration (issue #10); with --offline the disks must already be on the destination",
        ));
    }
    if flags.live || flags.suspend || flags.auto_converge || flags.tunnelled {
        return Some(Status::invalid_argument(
            "flags: --live, --suspend, --auto-converge and --tunnelled do not apply to --offline",
        ));
    }
    if !options.dest_name.is_empty() || !options.dest_xml.is_empty() {
        return Some(Status::invalid_argument(
            "options.dest_name: --dname and --xml are not supported with --offline; use --persistent-xml",
        ));
    }
    None
}

impl Migrations {
    async fn offline(
        &self,
        request: pb::MigrateRequest,
    ) -> Result<Vec<pb::MigrationUpdate>, Status> {
        let flags = request.flags.unwrap_or_default();
        let options = request.options.unwrap_or_default();
        let dest = match request.destination {
            Some(pb::migrate_request::Destination::DestHost(host)) if !host.is_empty() => host,
            Some(pb::migrate_request::Destination::DestUri(uri)) => {
                return Err(Status::invalid_argument(format!(
                    "dest_uri: `{uri}`: only hosts of this cluster (dest_host, as host-list names them) are supported"
                )));
            }
            _ => return Err(Status::invalid_argument("dest_host: required")),
        };
        if let Some(status) = unsupported(&flags, &options) {
            return Err(status);
        }
        let domain = request
            .domain
            .ok_or_else(|| Status::invalid_argument("domain: required"))?;
        let mut updates = Vec::new();

        let mut source = client(&self.compute_socket, "svc-compute").await?;
        let summary = source
            .get_domain(compute::GetDomainRequest {
                domain: Some(domain.clone()),
                ..Default::default()
            })
            .await?
            .into_inner()
            .summary
            .unwrap_or_default();
        if !summary.persistent {
            return Err(Status::failed_precondition(format!(
                "domain: `{}` is transient; offline migration moves a persistent definition",
                summary.name
            )));
        }
        if summary.id >= 0 {
            return Err(Status::failed_precondition(format!(
                "domain: `{}` is running; offline migration moves an inactive domain (shut it down, or migrate it live)",
                summary.name
            )));
        }
        updates.push(progress(
            "setup",
            format!("domain `{}` is inactive and persistent", summary.name),
        ));
        let xml = if options.persistent_xml.is_empty() {
            source
                .get_domain_xml(compute::GetDomainXmlRequest {
                    domain: Some(domain.clone()),
                    inactive: true,
                    security_info: true,
                    migratable: true,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .xml
        } else {
            options.persistent_xml
        };

        // The destination's compute, by host name through this host's gateway.
        let mut destination = client(&self.gateway_socket, "the gateway").await?;
        let on_dest = |status: Status| {
            Status::new(
                status.code(),
                format!("destination `{dest}`: {}", status.message()),
            )
        };
        let defined = destination
            .define_domain(compute::DefineDomainRequest {
                host: dest.clone(),
                source: Some(compute::define_domain_request::Source::Xml(xml)),
                validate: false,
            })
            .await
            .map_err(on_dest)?
            .into_inner()
            .summary
            .unwrap_or_default();
        updates.push(progress("finish", format!("defined on `{dest}`")));

        if flags.undefine_source {
            let undefined = source
                .undefine_domain(compute::UndefineDomainRequest {
                    domain: Some(domain),
                    ..Default::default()
                })
                .await;
            if let Err(status) = undefined {
                // The source keeps its domain; the copy goes, so there are not two.
                let rollback = destination
                    .undefine_domain(compute::UndefineDomainRequest {
                        host: dest.clone(),
                        domain: Some(ObjectRef {
                            key: Some(Key::Uuid(defined.uuid.clone())),
                        }),
                        ..Default::default()
                    })
                    .await;
                let undone = match rollback {
                    Ok(_) => "its copy on the destination was removed".to_string(),
                    Err(err) => format!(
                        "removing its copy on `{dest}` failed too: {}",
                        err.message()
                    ),
                };
                return Err(Status::new(
                    status.code(),
                    format!(
                        "undefining the source failed ({}); {undone}",
                        status.message()
                    ),
                ));
            }
            updates.push(progress("confirm", "source definition removed".to_string()));
        }
        updates.push(pb::MigrationUpdate {
            update: Some(pb::migration_update::Update::Done(pb::MigrationResult {
                dest_host: dest,
                domain: Some(pb::MigratedDomain {
                    name: defined.name,
                    uuid: defined.uuid,
                    id: 0,
                    paused: false,
                    persistent: true,
                }),
                source_undefined: flags.undefine_source,
                ..Default::default()
            })),
        });
        Ok(updates)
    }
}

#[tonic::async_trait]
impl MigrationService for Migrations {
    async fn migrate(
        &self,
        request: Request<pb::MigrateRequest>,
    ) -> Result<Response<BoxStream<pb::MigrationUpdate>>, Status> {
        let updates = self.offline(request.into_inner()).await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(
            updates.into_iter().map(Ok),
        ))))
    }
}
