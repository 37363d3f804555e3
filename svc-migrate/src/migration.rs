//! Migration between hosts, run on the source host. The destination is reached through this
//! host's gateway, which routes by host name.
//! - Offline (`migrate --offline --persistent [--undefinesource]`): the inactive domain's
//!   definition is defined there; if undefining the source then fails, the copy is removed.
//! - Live, both engines (`migrate [--live] [--persistent] [--undefinesource] [--suspend]`): the
//!   destination's compute starts the domain waiting on a TCP port, the source's compute sends
//!   the state straight there (QEMU to QEMU, vireo-vmm to vireo-vmm), and the destination
//!   resumes. Progress is the job
//!   (`domjobinfo`); `domjobabort`, a failure or a dead destination cancel it, the incoming copy
//!   is destroyed and the guest goes on at the source.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tonic::codegen::BoxStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use vireo_proto::common::v1::{ObjectRef, Progress, object_ref::Key};
use vireo_proto::compute::v1 as compute;
use vireo_proto::compute::v1::domain_service_client::DomainServiceClient;
use vireo_proto::migrate::v1 as pb;
use vireo_proto::migrate::v1::migration_service_server::MigrationService;
use vireo_runtime::CancellationToken;

pub struct Migrations {
    /// This host's svc-compute: the source side.
    pub compute_socket: PathBuf,
    /// This host's gateway: the way to the destination host.
    pub gateway_socket: PathBuf,
    /// Each domain's current or last job, by UUID.
    pub jobs: Arc<Mutex<HashMap<String, Job>>>,
    /// migrate-setmaxdowntime and migrate-setspeed, by UUID: for this domain's migrations.
    pub limits: Arc<Mutex<HashMap<String, Limits>>>,
    /// The deployment serves TLS (`[tls.listen]`): its migration data goes over TLS too.
    pub tls_by_default: bool,
}

/// A domain's migration limits; None is the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub max_downtime_ms: Option<u64>,
    pub bandwidth_mib_s: Option<u64>,
}

/// QEMU's own downtime limit, what a migration gets unless told otherwise.
const DEFAULT_MAX_DOWNTIME_MS: u64 = 300;

/// A migration job as domjobinfo shows it, and how to abort it while it runs.
#[derive(Clone)]
pub struct Job {
    pub info: pb::JobInfo,
    cancel: Option<CancellationToken>,
}

fn job_type(phase: pb::JobPhase) -> pb::JobType {
    match phase {
        pb::JobPhase::Completed => pb::JobType::Completed,
        pb::JobPhase::Failed => pb::JobType::Failed,
        pb::JobPhase::Cancelled => pb::JobType::Cancelled,
        _ => pb::JobType::Unbounded,
    }
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

/// What a migration cannot do yet, naming the field; None when it can.
fn not_built(flags: &pb::MigrationFlags, options: &pb::MigrationOptions) -> Option<Status> {
    if flags.copy_storage_all || flags.copy_storage_inc {
        return Some(Status::unimplemented(
            "flags.copy_storage_all: copying disks is not built; the disks must be on storage both hosts see",
        ));
    }
    if flags.tunnelled || options.parallel_connections.is_some_and(|n| n > 1) {
        return Some(Status::unimplemented(
            "flags.tunnelled: tunnelled and parallel data connections are not built; the data goes over one direct connection, TCP or TLS (--tls)",
        ));
    }
    if !options.dest_name.is_empty() || !options.dest_xml.is_empty() {
        return Some(Status::unimplemented(
            "options.dest_name: --dname and --xml are not built yet",
        ));
    }
    None
}

/// Why a request cannot be an offline migration, naming the field; None when it can.
fn unsupported(flags: &pb::MigrationFlags, options: &pb::MigrationOptions) -> Option<Status> {
    if !flags.persistent {
        return Some(Status::invalid_argument(
            "flags.persistent: --offline needs --persistent, as in virsh",
        ));
    }
    if flags.copy_storage_all || flags.copy_storage_inc {
        return Some(Status::unimplemented(
            "flags.copy_storage_all: copying disks is not built; with --offline the disks must already be on the destination",
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
        dest: String,
    ) -> Result<Vec<pb::MigrationUpdate>, Status> {
        let flags = request.flags.unwrap_or_default();
        let options = request.options.unwrap_or_default();
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
        // A destination that has this domain already (or is this host) would only have its
        // definition replaced, and --undefinesource would then delete the one copy.
        let existing = destination
            .get_domain(compute::GetDomainRequest {
                host: dest.clone(),
                domain: by_uuid(&summary.uuid),
                ..Default::default()
            })
            .await;
        match existing {
            Ok(_) => {
                return Err(Status::failed_precondition(format!(
                    "destination `{dest}`: it already has domain {} (this host, or an earlier copy); nothing was changed",
                    summary.uuid
                )));
            }
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => return Err(on_dest(status)),
        }
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

fn destination(request: &pb::MigrateRequest) -> Result<String, Status> {
    match &request.destination {
        Some(pb::migrate_request::Destination::DestHost(host)) if !host.is_empty() => {
            Ok(host.clone())
        }
        Some(pb::migrate_request::Destination::DestUri(uri)) => {
            Err(Status::invalid_argument(format!(
                "dest_uri: `{uri}`: only hosts of this cluster (dest_host, as host-list names them) are supported"
            )))
        }
        _ => Err(Status::invalid_argument("dest_host: required")),
    }
}

fn by_uuid(uuid: &str) -> Option<ObjectRef> {
    Some(ObjectRef {
        key: Some(Key::Uuid(uuid.to_string())),
    })
}

/// What a live migration knows once it has checked the request.
struct Live {
    dest: String,
    flags: pb::MigrationFlags,
    options: pb::MigrationOptions,
    summary: compute::DomainSummary,
    xml: String,
    persistent_xml: String,
}

impl Migrations {
    /// Checks a live migration and gathers what it moves.
    async fn prepare_live(
        &self,
        request: pb::MigrateRequest,
        dest: String,
    ) -> Result<Live, Status> {
        let flags = request.flags.unwrap_or_default();
        let mut options = request.options.unwrap_or_default();
        options.tls |= self.tls_by_default;
        if let Some(status) = not_built(&flags, &options) {
            return Err(status);
        }
        let domain = request
            .domain
            .ok_or_else(|| Status::invalid_argument("domain: required"))?;
        let mut source = client(&self.compute_socket, "svc-compute").await?;
        let summary = source
            .get_domain(compute::GetDomainRequest {
                domain: Some(domain),
                ..Default::default()
            })
            .await?
            .into_inner()
            .summary
            .unwrap_or_default();
        if summary.id < 0 {
            return Err(Status::failed_precondition(format!(
                "domain: `{}` is not running; migrate an inactive domain with --offline --persistent",
                summary.name
            )));
        }
        if self.running_job(&summary.uuid) {
            return Err(Status::failed_precondition(format!(
                "domain: `{}` already has a migration running (domjobinfo shows it)",
                summary.name
            )));
        }
        let xml_of = |inactive: bool| compute::GetDomainXmlRequest {
            domain: by_uuid(&summary.uuid),
            inactive,
            security_info: true,
            migratable: true,
            ..Default::default()
        };
        let xml = source.get_domain_xml(xml_of(false)).await?.into_inner().xml;
        let persistent_xml = if !options.persistent_xml.is_empty() {
            options.persistent_xml.clone()
        } else if summary.persistent {
            source.get_domain_xml(xml_of(true)).await?.into_inner().xml
        } else {
            xml.clone()
        };
        Ok(Live {
            dest,
            flags,
            options,
            summary,
            xml,
            persistent_xml,
        })
    }

    /// Tells the source's compute how the migration ended; a domain that was not waiting for
    /// it is left as it is.
    async fn confirm_source(&self, uuid: &str, succeeded: bool) {
        if let Ok(mut source) = client(&self.compute_socket, "svc-compute").await {
            let _ = source
                .confirm_domain_migration(compute::ConfirmDomainMigrationRequest {
                    domain: by_uuid(uuid),
                    succeeded,
                    ..Default::default()
                })
                .await;
        }
    }

    fn running_job(&self, uuid: &str) -> bool {
        self.jobs
            .lock()
            .is_ok_and(|jobs| jobs.get(uuid).is_some_and(|job| job.cancel.is_some()))
    }

    fn set_job(&self, uuid: &str, change: impl FnOnce(&mut Job)) {
        if let Ok(mut jobs) = self.jobs.lock() {
            let job = jobs.entry(uuid.to_string()).or_insert_with(|| Job {
                info: pb::JobInfo::default(),
                cancel: None,
            });
            change(job);
        }
    }

    /// The address the source sends to: `--migrateuri`'s host, else the destination host's
    /// address as the gateway knows it (its TLS host name; this machine for unix hosts).
    async fn data_host(
        &self,
        dest: &str,
        options: &pb::MigrationOptions,
    ) -> Result<String, Status> {
        if !options.migrate_uri.is_empty() {
            let rest = options
                .migrate_uri
                .strip_prefix("tcp://")
                .or_else(|| options.migrate_uri.strip_prefix("tcp:"))
                .unwrap_or(&options.migrate_uri);
            let host = rest.rsplit_once(':').map_or(rest, |(host, _)| host);
            return Ok(host.trim_matches(['[', ']']).to_string());
        }
        let channel = vireo_runtime::client::connect_unix(&self.gateway_socket)
            .await
            .map_err(|err| Status::unavailable(format!("the gateway is unreachable: {err}")))?;
        let host = vireo_proto::cluster::v1::host_service_client::HostServiceClient::new(channel)
            .get_host(vireo_proto::cluster::v1::GetHostRequest {
                name: dest.to_string(),
            })
            .await?
            .into_inner();
        Ok(host
            .address
            .strip_prefix("https://")
            .and_then(|rest| rest.rsplit_once(':').map(|(host, _)| host.to_string()))
            .unwrap_or_else(|| "127.0.0.1".to_string()))
    }

    /// Runs a live migration to its end, reporting on `out`.
    async fn run_live(
        &self,
        live: Live,
        cancel: CancellationToken,
        out: &mpsc::Sender<Result<pb::MigrationUpdate, Status>>,
    ) -> Result<pb::MigrationResult, Status> {
        let Live {
            dest,
            flags,
            options,
            summary,
            xml,
            persistent_xml,
        } = live;
        let uuid = summary.uuid.clone();
        let on_dest = |status: Status| {
            Status::new(
                status.code(),
                format!("destination `{dest}`: {}", status.message()),
            )
        };
        let phase = |phase: pb::JobPhase| {
            self.set_job(&uuid, |job| {
                job.info.phase = phase as i32;
                job.info.r#type = job_type(phase) as i32;
            });
        };
        let data_host = self.data_host(&dest, &options).await?;
        let mut destination = client(&self.gateway_socket, "the gateway").await?;
        phase(pb::JobPhase::Prepare);
        let _ = out
            .send(Ok(progress(
                "prepare",
                format!("starting `{}` on `{dest}`", summary.name),
            )))
            .await;
        let incoming = destination
            .start_incoming_domain(compute::StartIncomingDomainRequest {
                host: dest.clone(),
                xml,
                listen_address: options.listen_address.clone(),
                tls: options.tls,
            })
            .await
            .map_err(on_dest)?
            .into_inner();
        let address = format!("{data_host}:{}", incoming.port);
        let sent = self
            .send_live(&uuid, &address, &flags, &options, &cancel, out)
            .await;
        let incoming_host = destination.clone();
        let destroy_incoming = || {
            let mut destination = incoming_host.clone();
            let request = compute::DestroyDomainRequest {
                host: dest.clone(),
                domain: by_uuid(&uuid),
                ..Default::default()
            };
            async move {
                let _ = destination.destroy_domain(request).await;
            }
        };
        if let Err(status) = sent {
            // The incoming copy goes, and the guest goes on at the source (if its state was
            // delivered meanwhile, it waits there for this word).
            destroy_incoming().await;
            self.confirm_source(&uuid, false).await;
            return Err(status);
        }
        phase(pb::JobPhase::Finish);
        let _ = out
            .send(Ok(progress("finish", format!("resuming on `{dest}`"))))
            .await;
        let finished = destination
            .finish_incoming_domain(compute::FinishIncomingDomainRequest {
                host: dest.clone(),
                domain: by_uuid(&uuid),
                paused: flags.suspend,
            })
            .await;
        let arrived = match finished {
            Ok(arrived) => arrived.into_inner().summary.unwrap_or_default(),
            Err(status) => {
                destroy_incoming().await;
                self.confirm_source(&uuid, false).await;
                return Err(on_dest(status));
            }
        };
        // Only now does the source let go.
        let mut source = client(&self.compute_socket, "svc-compute").await?;
        source
            .confirm_domain_migration(compute::ConfirmDomainMigrationRequest {
                domain: by_uuid(&uuid),
                succeeded: true,
                ..Default::default()
            })
            .await
            .map_err(|status| {
                Status::internal(format!(
                    "the domain runs on `{dest}`, but stopping it here failed: {}",
                    status.message()
                ))
            })?;
        if flags.persistent {
            destination
                .define_domain(compute::DefineDomainRequest {
                    host: dest.clone(),
                    source: Some(compute::define_domain_request::Source::Xml(persistent_xml)),
                    validate: false,
                })
                .await
                .map_err(on_dest)?;
        }
        phase(pb::JobPhase::Confirm);
        let mut source_undefined = false;
        if flags.undefine_source && summary.persistent {
            let mut source = client(&self.compute_socket, "svc-compute").await?;
            source
                .undefine_domain(compute::UndefineDomainRequest {
                    domain: by_uuid(&uuid),
                    ..Default::default()
                })
                .await?;
            source_undefined = true;
        }
        let stats = self
            .jobs
            .lock()
            .ok()
            .and_then(|jobs| jobs.get(&uuid).map(|job| job.info.clone()));
        Ok(pb::MigrationResult {
            dest_host: dest,
            domain: Some(pb::MigratedDomain {
                name: arrived.name,
                uuid: arrived.uuid,
                id: u32::try_from(arrived.id).unwrap_or(0),
                paused: flags.suspend,
                persistent: flags.persistent,
            }),
            stats,
            source_undefined,
            ..Default::default()
        })
    }

    /// The source's side: its compute sends the state; each update becomes the job's figures.
    async fn send_live(
        &self,
        uuid: &str,
        address: &str,
        flags: &pb::MigrationFlags,
        options: &pb::MigrationOptions,
        cancel: &CancellationToken,
        out: &mpsc::Sender<Result<pb::MigrationUpdate, Status>>,
    ) -> Result<(), Status> {
        let mut source = client(&self.compute_socket, "svc-compute").await?;
        let limits = self.limits_of(uuid);
        let mut updates = source
            .send_domain_state(compute::SendDomainStateRequest {
                domain: by_uuid(uuid),
                address: address.to_string(),
                max_downtime_ms: options
                    .max_downtime_ms
                    .or(limits.max_downtime_ms)
                    .unwrap_or(0),
                bandwidth_mib_s: options
                    .bandwidth_mib_s
                    .or(limits.bandwidth_mib_s)
                    .unwrap_or(0),
                auto_converge: flags.auto_converge,
                tls: options.tls,
                verify_memory: options.verify_memory,
                ..Default::default()
            })
            .await?
            .into_inner();
        loop {
            let update = tokio::select! {
                // Dropping the stream makes the source's compute cancel and resume the guest.
                () = cancel.cancelled() => {
                    return Err(Status::cancelled("the migration was aborted (domjobabort); the domain goes on at the source"));
                }
                update = updates.message() => update?,
            };
            let Some(update) = update else { return Ok(()) };
            let phase = match update.status.as_str() {
                "device" => pb::JobPhase::StopAndCopy,
                "completed" => pb::JobPhase::Finish,
                "setup" => pb::JobPhase::Setup,
                _ => pb::JobPhase::Precopy,
            };
            let mut info = pb::JobInfo::default();
            self.set_job(uuid, |job| {
                let elapsed = update.elapsed_ms;
                job.info = pb::JobInfo {
                    job_id: job.info.job_id.clone(),
                    r#type: job_type(phase) as i32,
                    operation: pb::JobOperation::MigrationOut as i32,
                    phase: phase as i32,
                    time_elapsed_ms: elapsed,
                    data_total_bytes: update.total_bytes,
                    data_processed_bytes: update.transferred_bytes,
                    data_remaining_bytes: update.remaining_bytes,
                    memory_total_bytes: update.total_bytes,
                    memory_processed_bytes: update.transferred_bytes,
                    memory_remaining_bytes: update.remaining_bytes,
                    dirty_rate_pages_s: update.dirty_pages_rate,
                    memory_iteration: update.iteration,
                    memory_page_size_bytes: 4096,
                    memory_bandwidth_bytes_s: update.bandwidth_bytes_s,
                    expected_downtime_ms: update.expected_downtime_ms,
                    downtime_ms: update.downtime_ms,
                    memory_crc32: update.memory_crc32,
                    auto_converge_throttle_percent: update.throttle_percent,
                    ..Default::default()
                };
                info = job.info.clone();
            });
            let _ = out
                .send(Ok(pb::MigrationUpdate {
                    update: Some(pb::migration_update::Update::Job(info)),
                }))
                .await;
        }
    }
}

#[tonic::async_trait]
impl MigrationService for Migrations {
    async fn migrate(
        &self,
        request: Request<pb::MigrateRequest>,
    ) -> Result<Response<BoxStream<pb::MigrationUpdate>>, Status> {
        let request = request.into_inner();
        let dest = destination(&request)?;
        if request.flags.as_ref().is_some_and(|flags| flags.offline) {
            let updates = self.offline(request, dest).await?;
            return Ok(Response::new(Box::pin(tokio_stream::iter(
                updates.into_iter().map(Ok),
            ))));
        }
        let live = self.prepare_live(request, dest).await?;
        let uuid = live.summary.uuid.clone();
        let cancel = CancellationToken::new();
        let started = std::time::Instant::now();
        self.set_job(&uuid, |job| {
            job.info = pb::JobInfo {
                job_id: format!(
                    "migrate-{uuid}-{}",
                    vireo_runtime::access::random_token()
                        .unwrap_or_default()
                        .get(..8)
                        .unwrap_or_default()
                ),
                r#type: pb::JobType::Unbounded as i32,
                operation: pb::JobOperation::MigrationOut as i32,
                phase: pb::JobPhase::Setup as i32,
                ..Default::default()
            };
            job.cancel = Some(cancel.clone());
        });
        let (out, replies) = mpsc::channel(16);
        let this = Migrations {
            compute_socket: self.compute_socket.clone(),
            gateway_socket: self.gateway_socket.clone(),
            jobs: self.jobs.clone(),
            limits: self.limits.clone(),
            tls_by_default: self.tls_by_default,
        };
        // The migration runs to its end even if the client goes; domjobinfo follows it.
        tokio::spawn(async move {
            let result = this.run_live(live, cancel, &out).await;
            let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let (phase, message) = match &result {
                Ok(_) => (pb::JobPhase::Completed, String::new()),
                Err(status) if status.code() == tonic::Code::Cancelled => {
                    (pb::JobPhase::Cancelled, status.message().to_string())
                }
                Err(status) => (pb::JobPhase::Failed, status.message().to_string()),
            };
            this.set_job(&uuid, |job| {
                job.info.phase = phase as i32;
                job.info.r#type = job_type(phase) as i32;
                job.info.time_elapsed_ms = elapsed;
                job.info.error_message = message;
                job.cancel = None;
            });
            let last = result.map(|mut done| {
                done.stats = this
                    .jobs
                    .lock()
                    .ok()
                    .and_then(|jobs| jobs.get(&uuid).map(|job| job.info.clone()));
                pb::MigrationUpdate {
                    update: Some(pb::migration_update::Update::Done(done)),
                }
            });
            let _ = out.send(last).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(replies),
        )))
    }

    async fn get_job_info(
        &self,
        request: Request<pb::GetJobInfoRequest>,
    ) -> Result<Response<pb::JobInfo>, Status> {
        let request = request.into_inner();
        let uuid = self.uuid_of(request.domain).await?;
        let job = self
            .jobs
            .lock()
            .ok()
            .and_then(|jobs| jobs.get(&uuid).cloned());
        let info = match job {
            Some(job) if job.cancel.is_some() || request.completed => job.info,
            _ => pb::JobInfo {
                r#type: pb::JobType::None as i32,
                ..Default::default()
            },
        };
        Ok(Response::new(info))
    }

    async fn abort_job(
        &self,
        request: Request<pb::AbortJobRequest>,
    ) -> Result<Response<vireo_proto::common::v1::Empty>, Status> {
        let uuid = self.uuid_of(request.into_inner().domain).await?;
        let cancel = self
            .jobs
            .lock()
            .ok()
            .and_then(|jobs| jobs.get(&uuid).and_then(|job| job.cancel.clone()))
            .ok_or_else(|| Status::failed_precondition("domain: no job is running for it"))?;
        cancel.cancel();
        Ok(Response::new(vireo_proto::common::v1::Empty {}))
    }

    async fn set_max_downtime(
        &self,
        request: Request<pb::SetMaxDowntimeRequest>,
    ) -> Result<Response<vireo_proto::common::v1::Empty>, Status> {
        let request = request.into_inner();
        if request.max_downtime_ms == 0 {
            return Err(Status::invalid_argument(
                "max_downtime_ms: must be at least 1 ms",
            ));
        }
        self.set_limit(request.domain, |limits| {
            limits.max_downtime_ms = Some(request.max_downtime_ms);
        })
        .await?;
        Ok(Response::new(vireo_proto::common::v1::Empty {}))
    }

    async fn get_max_downtime(
        &self,
        request: Request<pb::GetMaxDowntimeRequest>,
    ) -> Result<Response<pb::MaxDowntime>, Status> {
        let uuid = self.uuid_of(request.into_inner().domain).await?;
        Ok(Response::new(pb::MaxDowntime {
            max_downtime_ms: self
                .limits_of(&uuid)
                .max_downtime_ms
                .unwrap_or(DEFAULT_MAX_DOWNTIME_MS),
        }))
    }

    async fn set_max_speed(
        &self,
        request: Request<pb::SetMaxSpeedRequest>,
    ) -> Result<Response<vireo_proto::common::v1::Empty>, Status> {
        let request = request.into_inner();
        self.set_limit(request.domain, |limits| {
            limits.bandwidth_mib_s = Some(request.bandwidth_mib_s);
        })
        .await?;
        Ok(Response::new(vireo_proto::common::v1::Empty {}))
    }

    async fn get_max_speed(
        &self,
        request: Request<pb::GetMaxSpeedRequest>,
    ) -> Result<Response<pb::MaxSpeed>, Status> {
        let uuid = self.uuid_of(request.into_inner().domain).await?;
        Ok(Response::new(pb::MaxSpeed {
            bandwidth_mib_s: self.limits_of(&uuid).bandwidth_mib_s.unwrap_or(0),
        }))
    }
}

impl Migrations {
    fn limits_of(&self, uuid: &str) -> Limits {
        self.limits
            .lock()
            .ok()
            .and_then(|limits| limits.get(uuid).copied())
            .unwrap_or_default()
    }

    /// Records a limit for the domain's migrations, and applies it to the one running.
    async fn set_limit(
        &self,
        domain: Option<ObjectRef>,
        change: impl FnOnce(&mut Limits),
    ) -> Result<(), Status> {
        let uuid = self.uuid_of(domain).await?;
        let limits = {
            let mut all = self
                .limits
                .lock()
                .map_err(|_| Status::internal("migration limits: lock poisoned"))?;
            let limits = all.entry(uuid.clone()).or_default();
            change(limits);
            *limits
        };
        if self.running_job(&uuid) {
            client(&self.compute_socket, "svc-compute")
                .await?
                .tune_domain_migration(compute::TuneDomainMigrationRequest {
                    domain: by_uuid(&uuid),
                    max_downtime_ms: limits.max_downtime_ms,
                    bandwidth_mib_s: limits.bandwidth_mib_s,
                    ..Default::default()
                })
                .await?;
        }
        Ok(())
    }

    /// The UUID of a domain of this host.
    async fn uuid_of(&self, domain: Option<ObjectRef>) -> Result<String, Status> {
        let domain = domain.ok_or_else(|| Status::invalid_argument("domain: required"))?;
        let mut source = client(&self.compute_socket, "svc-compute").await?;
        Ok(source
            .get_domain(compute::GetDomainRequest {
                domain: Some(domain),
                ..Default::default()
            })
            .await?
            .into_inner()
            .summary
            .unwrap_or_default()
            .uuid)
    }
}
