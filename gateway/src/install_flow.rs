//! The Install RPC as virt-install runs it: place the guest, check what it names on that host
//! (a free name, defined networks, running pools with room), create its volumes, then run the
//! install phase as a transient domain whose persistent definition is the installed guest (or
//! define and start a guest that boots one way throughout). With `wait_minutes` it follows the
//! install phase and starts the installed guest. A failure until the guest runs removes what
//! the call created. A --location tree at a URL (curl; nfs-cp for NFS) or in an ISO image
//! (xorriso) is read here and its installer put on the host as two volumes, removed once the
//! install phase has started (the engine has read them).

use std::os::unix::fs::DirBuilderExt;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use vireo_proto::cluster::v1 as pb;
use vireo_proto::common::v1::{ObjectRef, Progress, object_ref::Key};
use vireo_proto::compute::v1 as compute;
use vireo_proto::network::v1 as network;
use vireo_proto::storage::v1 as storage;
use vireo_runtime::Service;

use crate::cluster_views::ClusterViews;
use crate::provisioning::{
    HostFiles, Plan, TREE_LAYOUTS, host_path, is_iso_file, is_new_volume, is_url, no_installer,
    plan,
};

type Updates = mpsc::Sender<Result<pb::InstallUpdate, Status>>;

const GIB: f64 = (1u64 << 30) as f64;
/// The largest installer file fetched (curl's --max-filesize): a kernel or an initrd.
const MAX_INSTALLER_FILE: &str = "2G";
/// How long fetching one installer file may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// The size of the chunks a fetched installer is uploaded in.
const UPLOAD_CHUNK: usize = 1 << 20;
/// How often a followed install phase is looked at.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

fn by_name(name: &str) -> Option<ObjectRef> {
    Some(ObjectRef {
        key: Some(Key::Name(name.to_string())),
    })
}

async fn send(updates: &Updates, update: pb::install_update::Update) {
    // A client that went away does not stop the install: what was started is left consistent.
    let _ = updates
        .send(Ok(pb::InstallUpdate {
            update: Some(update),
        }))
        .await;
}

async fn progress(updates: &Updates, phase: &str, message: String) {
    send(
        updates,
        pb::install_update::Update::Progress(Progress {
            phase: phase.to_string(),
            message,
            ..Default::default()
        }),
    )
    .await;
}

#[tonic::async_trait]
impl pb::provisioning_service_server::ProvisioningService for ClusterViews {
    async fn install(
        &self,
        request: Request<pb::InstallRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::InstallUpdate>>, Status> {
        let request = request.into_inner();
        let (updates, receiver) = mpsc::channel(16);
        let views = self.clone();
        tokio::spawn(async move {
            let ended = match install(&views, &request, &updates).await {
                Ok(result) => Ok(pb::InstallUpdate {
                    update: Some(pb::install_update::Update::Done(result)),
                }),
                Err(status) => Err(status),
            };
            let _ = updates.send(ended).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

/// A volume the install creates for one of its disks.
struct NewVolume {
    /// The --disk it is for; None for a fetched tree's installer.
    disk: Option<usize>,
    pool: String,
    name: String,
    capacity_bytes: u64,
    format: storage::VolumeFormat,
    /// Where the pool will put it (the pool's directory or volume group, and the name).
    path: String,
}

/// What a failed install removes, newest first.
#[derive(Default)]
struct Created {
    volumes: Vec<pb::CreatedVolume>,
    /// The installer of a tree at a URL, on the host while the install phase starts.
    scratch: Vec<pb::CreatedVolume>,
    /// The domain's, once planned.
    uuid: String,
    defined: bool,
    running: bool,
}

/// The installer of a --location tree at a URL: fetched, and where it goes on the host.
struct FetchedTree {
    pool: String,
    /// (volume name, its path on the host, its bytes): the kernel, then the initrd.
    files: [(String, String, bytes::Bytes); 2],
    /// `inst.repo=URL` or `install=URL` for the installer's command line.
    source_arg: Option<String>,
}

impl FetchedTree {
    fn paths(&self) -> (&str, &str) {
        (&self.files[0].1, &self.files[1].1)
    }
}

/// `nfs://HOST/PATH[?OPTIONS]` of an NFS location (virt-install's `nfs:HOST:/PATH` too).
fn nfs_url(location: &str) -> Option<String> {
    if location.starts_with("nfs://") {
        return Some(location.to_string());
    }
    let (host, path) = location.strip_prefix("nfs:")?.split_once(':')?;
    Some(format!("nfs://{host}{path}"))
}

/// `file` of the tree at `url`, before the URL's options (libnfs' `?nfsport=...`).
fn file_url(url: &str, file: &str) -> String {
    let (base, options) = url
        .split_once('?')
        .map_or((url, None), |(b, o)| (b, Some(o)));
    let options = options.map(|o| format!("?{o}")).unwrap_or_default();
    format!("{}/{file}{options}", base.trim_end_matches('/'))
}

/// Runs `program ARGS PATH`, which writes one file at PATH in a fresh private directory: the
/// file's bytes (when it wrote one) and how the program ended. `source` and `package` name what
/// is read and what brings the program, for errors.
async fn run_into_private_file(
    program: &str,
    args: &[&str],
    source: &str,
    package: &str,
) -> Result<(Option<Vec<u8>>, std::process::Output), Status> {
    static FETCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vireo-install-{}-{}-{}",
        std::process::id(),
        FETCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        vireo_conf::domain::random_uuid()
    ));
    // Made here, not found: nothing else can have put a link in it.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|err| Status::internal(format!("location: {}: {err}", dir.display())))?;
    let local = dir.join("file");
    let ran = tokio::time::timeout(
        FETCH_TIMEOUT,
        tokio::process::Command::new(program)
            .args(args)
            .arg(&local)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer within 10 minutes",
        ))
    });
    let bytes = tokio::fs::read(&local).await.ok();
    let _ = std::fs::remove_dir_all(&dir);
    let ran = ran.map_err(|err| match err.kind() {
        std::io::ErrorKind::TimedOut => {
            Status::deadline_exceeded(format!("location: reading {source}: {err}"))
        }
        _ => Status::failed_precondition(format!(
            "location: reading {source} needs {program} (Debian package {package}): {err}"
        )),
    })?;
    Ok((bytes, ran))
}

/// What a copying program's run gave: the file, None when the tree has no such file, or why
/// it failed.
fn copied(
    source: &str,
    (bytes, ran): (Option<Vec<u8>>, std::process::Output),
) -> Result<Option<Vec<u8>>, Status> {
    let stderr = String::from_utf8_lossy(&ran.stderr);
    match bytes {
        Some(bytes) if ran.status.success() => Ok(Some(bytes)),
        _ if stderr.contains("NOENT") || stderr.contains("No such file") => Ok(None),
        _ => Err(Status::unavailable(format!(
            "location: reading {source} failed: {}",
            stderr.trim()
        ))),
    }
}

/// One file of a tree on NFS (libnfs' nfs-cp, a userspace client); None when the tree has no
/// such file.
async fn fetch_nfs(url: &str, file: &str) -> Result<Option<Vec<u8>>, Status> {
    let source = file_url(url, file);
    copied(
        &source,
        run_into_private_file("nfs-cp", &[&source], &source, "libnfs-utils").await?,
    )
}

/// One file of the tree in an ISO image (xorriso reads it; no mount); None when the image has
/// no such file.
async fn extract_from_iso(iso: &str, file: &str) -> Result<Option<Vec<u8>>, Status> {
    let inside = format!("/{file}");
    let source = format!("{iso}:{inside}");
    copied(
        &source,
        run_into_private_file(
            "xorriso",
            &["-osirrox", "on", "-indev", iso, "-extract", &inside],
            &source,
            "xorriso",
        )
        .await?,
    )
}

/// One file of a tree at a URL (curl: http, https, ftp; nfs-cp: nfs); None when the tree has
/// no such file.
async fn fetch(url: &str, file: &str) -> Result<Option<Vec<u8>>, Status> {
    if is_iso_file(url) {
        return extract_from_iso(url, file).await;
    }
    if let Some(nfs) = nfs_url(url) {
        return fetch_nfs(&nfs, file).await;
    }
    let full = file_url(url, file);
    let fetched = tokio::process::Command::new("curl")
        .args([
            "-fsSL",
            "--max-time",
            "600",
            "--max-filesize",
            MAX_INSTALLER_FILE,
            "--proto",
            "=http,https,ftp",
            "--",
        ])
        .arg(&full)
        .output()
        .await
        .map_err(|err| {
            Status::failed_precondition(format!(
                "location: fetching an install tree needs curl (Debian package curl): {err}"
            ))
        })?;
    let stderr = String::from_utf8_lossy(&fetched.stderr);
    match fetched.status.code() {
        Some(0) => Ok(Some(fetched.stdout)),
        // Not there: HTTP 404 or 410, or a file an FTP server does not have.
        Some(22) if stderr.contains("error: 404") || stderr.contains("error: 410") => Ok(None),
        Some(78 | 9) => Ok(None),
        _ => Err(Status::unavailable(format!(
            "location: fetching {full} failed: {}",
            stderr.trim()
        ))),
    }
}

/// The host the guest was placed on, and its services.
struct Target<'a> {
    views: &'a ClusterViews,
    host: String,
    /// The host is the gateway's own machine.
    local: bool,
}

impl Target<'_> {
    fn files<'t>(&self, tree: Option<&'t FetchedTree>) -> HostFiles<'t> {
        HostFiles {
            local: self.local,
            tree: tree.map(FetchedTree::paths),
        }
    }

    fn channel(&self, service: Service) -> Result<Channel, Status> {
        self.views.backends().channel(&self.host, service)
    }

    fn down(&self, service: Service) -> impl Fn(Status) -> Status + '_ {
        move |status| {
            self.views
                .backends()
                .unavailable(&self.host, service, status)
        }
    }

    fn domains(
        &self,
    ) -> Result<compute::domain_service_client::DomainServiceClient<Channel>, Status> {
        Ok(compute::domain_service_client::DomainServiceClient::new(
            self.channel(Service::Compute)?,
        ))
    }

    fn pools(
        &self,
    ) -> Result<storage::storage_pool_service_client::StoragePoolServiceClient<Channel>, Status>
    {
        Ok(
            storage::storage_pool_service_client::StoragePoolServiceClient::new(
                self.channel(Service::Storage)?,
            ),
        )
    }

    fn volumes(
        &self,
    ) -> Result<storage::storage_volume_service_client::StorageVolumeServiceClient<Channel>, Status>
    {
        Ok(
            storage::storage_volume_service_client::StorageVolumeServiceClient::new(
                self.channel(Service::Storage)?,
            ),
        )
    }

    async fn name_is_free(&self, name: &str) -> Result<(), Status> {
        let found = self
            .domains()?
            .lookup_domain(compute::LookupDomainRequest {
                host: self.host.clone(),
                domain: by_name(name),
            })
            .await;
        match found {
            Ok(_) => Err(Status::already_exists(format!(
                "name: a domain `{name}` already exists on host `{}`",
                self.host
            ))),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(self.down(Service::Compute)(status)),
        }
    }

    /// Every network= the guest names is defined on the host.
    async fn networks_are_defined(&self, request: &pb::InstallRequest) -> Result<(), Status> {
        if request.no_networks {
            return Ok(());
        }
        let named: Vec<(usize, &str)> = if request.networks.is_empty() {
            vec![(0, "default")]
        } else {
            request
                .networks
                .iter()
                .enumerate()
                .filter_map(|(index, n)| match &n.source {
                    Some(pb::install_network::Source::Network(name)) => {
                        Some((index, name.as_str()))
                    }
                    _ => None,
                })
                .collect()
        };
        let mut client = network::network_service_client::NetworkServiceClient::new(
            self.channel(Service::Network)?,
        );
        for (index, name) in named {
            let found = client
                .get_network(network::GetNetworkRequest {
                    host: self.host.clone(),
                    network: by_name(name),
                    inactive: false,
                })
                .await;
            match found {
                Ok(_) => {}
                Err(status) if status.code() == tonic::Code::NotFound => {
                    return Err(Status::not_found(format!(
                        "networks[{index}]: network `{name}` is not defined on host `{}`",
                        self.host
                    )));
                }
                Err(status) => return Err(self.down(Service::Network)(status)),
            }
        }
        Ok(())
    }

    /// The request with the image format of each existing disk that does not say it: the
    /// format its pool knows (svc-storage probes it), else, on the gateway's own host, what the
    /// file's first bytes say; else the plan guesses from the name.
    async fn with_disk_formats(
        &self,
        request: &pb::InstallRequest,
    ) -> Result<pb::InstallRequest, Status> {
        let mut request = request.clone();
        for disk in &mut request.disks {
            if is_new_volume(disk)
                || disk.path.is_empty()
                || disk.format() != compute::DiskFormat::Unspecified
                || disk.device() == compute::DiskDevice::Cdrom
            {
                continue;
            }
            let found = self
                .volumes()?
                .get_volume(storage::GetVolumeRequest {
                    host: self.host.clone(),
                    volume: Some(storage::VolumeRef {
                        path: disk.path.clone(),
                        ..Default::default()
                    }),
                })
                .await;
            let format = match found {
                Ok(volume) => volume
                    .into_inner()
                    .definition
                    .and_then(|d| d.target)
                    .and_then(|t| t.format),
                Err(status) if status.code() == tonic::Code::NotFound => None,
                Err(status) => return Err(self.down(Service::Storage)(status)),
            };
            disk.format = match format {
                Some(storage::volume_target::Format::ImageFormat(f))
                    if f == storage::VolumeFormat::Qcow2 as i32 =>
                {
                    compute::DiskFormat::Qcow2
                }
                Some(storage::volume_target::Format::ImageFormat(f))
                    if f == storage::VolumeFormat::Raw as i32 =>
                {
                    compute::DiskFormat::Raw
                }
                _ if self.local && starts_as_qcow2(&disk.path) => compute::DiskFormat::Qcow2,
                _ => compute::DiskFormat::Unspecified,
            } as i32;
        }
        Ok(request)
    }

    /// The pool a new volume goes in: pool=, the pool whose directory holds path=, or (size=
    /// alone, as virt-install takes it) `default`.
    async fn pool_of(&self, field: &str, disk: &pb::InstallDisk) -> Result<storage::Pool, Status> {
        let mut pools = self.pools()?;
        if !disk.pool.is_empty() || disk.path.is_empty() {
            let name = if disk.pool.is_empty() {
                "default"
            } else {
                &disk.pool
            };
            return pools
                .get_pool(storage::GetPoolRequest {
                    host: self.host.clone(),
                    pool: by_name(name),
                    inactive: false,
                })
                .await
                .map(Response::into_inner)
                .map_err(|status| match status.code() {
                    tonic::Code::NotFound => Status::not_found(format!(
                        "{field}: pool `{name}` is not defined on host `{}`",
                        self.host
                    )),
                    _ => self.down(Service::Storage)(status),
                });
        }
        let directory = std::path::Path::new(&disk.path)
            .parent()
            .unwrap_or(std::path::Path::new("/"));
        let listed = pools
            .list_pools(storage::ListPoolsRequest {
                host: self.host.clone(),
                ..Default::default()
            })
            .await
            .map_err(self.down(Service::Storage))?
            .into_inner();
        for info in listed.pools {
            let pool = pools
                .get_pool(storage::GetPoolRequest {
                    host: self.host.clone(),
                    pool: by_name(&info.name),
                    inactive: false,
                })
                .await
                .map_err(self.down(Service::Storage))?
                .into_inner();
            let target = pool
                .definition
                .as_ref()
                .and_then(|d| d.target.as_ref())
                .map(|t| t.path.clone())
                .unwrap_or_default();
            if !target.is_empty() && std::path::Path::new(&target) == directory {
                return Ok(pool);
            }
        }
        Err(Status::invalid_argument(format!(
            "{field}: `{}` is not the directory of a storage pool on host `{}`; give pool= to create the disk in one",
            directory.display(),
            self.host
        )))
    }

    /// The volumes the request's new disks need, each checked against its pool: running, with
    /// room, and a free name (virt-install's NAME.qcow2, NAME-1.qcow2, ...).
    async fn new_volumes(&self, request: &pb::InstallRequest) -> Result<Vec<NewVolume>, Status> {
        let mut planned: Vec<NewVolume> = Vec::new();
        for (index, disk) in request.disks.iter().enumerate() {
            if !is_new_volume(disk) {
                continue;
            }
            let field = format!("disks[{index}]");
            if !disk.size_gib.is_finite() || disk.size_gib <= 0.0 {
                return Err(Status::invalid_argument(format!(
                    "{field}.size_gib: a new volume needs size= in GiB, more than 0"
                )));
            }
            if disk.size_gib * GIB >= u64::MAX as f64 {
                return Err(Status::invalid_argument(format!(
                    "{field}.size_gib: {:e} GiB is more than a volume can hold",
                    disk.size_gib
                )));
            }
            // Finite, positive and below u64::MAX: checked above.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let capacity_bytes = (disk.size_gib * GIB).ceil() as u64;
            let pool = self.pool_of(&field, disk).await?;
            let definition = pool.definition.clone().unwrap_or_default();
            if pool.state() != storage::PoolState::Running {
                return Err(Status::failed_precondition(format!(
                    "{field}: pool `{}` is not running on host `{}` (pool-start it)",
                    definition.name, self.host
                )));
            }
            let wanted: u64 = planned
                .iter()
                .filter(|v| v.pool == definition.name)
                .map(|v| v.capacity_bytes)
                .sum::<u64>()
                .saturating_add(capacity_bytes);
            if wanted > definition.available_bytes {
                return Err(Status::resource_exhausted(format!(
                    "{field}.size_gib: {} GiB is more than pool `{}` has free ({:.2} GiB)",
                    disk.size_gib,
                    definition.name,
                    definition.available_bytes as f64 / GIB
                )));
            }
            let format = match disk.format() {
                compute::DiskFormat::Raw => storage::VolumeFormat::Raw,
                compute::DiskFormat::Qcow2 => storage::VolumeFormat::Qcow2,
                _ if matches!(
                    definition.r#type(),
                    storage::PoolType::Dir | storage::PoolType::Fs | storage::PoolType::Netfs
                ) =>
                {
                    storage::VolumeFormat::Qcow2
                }
                _ => storage::VolumeFormat::Raw,
            };
            let existing: Vec<String> = self
                .volumes()?
                .list_volumes(storage::ListVolumesRequest {
                    host: self.host.clone(),
                    pool: by_name(&definition.name),
                    ..Default::default()
                })
                .await
                .map_err(self.down(Service::Storage))?
                .into_inner()
                .volumes
                .into_iter()
                .map(|v| v.name)
                .collect();
            let taken = |name: &str| {
                existing.iter().any(|v| v == name) || planned.iter().any(|v| v.name == name)
            };
            let name = if !disk.path.is_empty() {
                let name = std::path::Path::new(&disk.path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if taken(&name) {
                    return Err(Status::already_exists(format!(
                        "{field}: `{}` exists; leave out size= to use it as it is",
                        disk.path
                    )));
                }
                name
            } else {
                let extension = if format == storage::VolumeFormat::Qcow2 {
                    ".qcow2"
                } else {
                    ".img"
                };
                (0..)
                    .map(|n| match n {
                        0 => format!("{}{extension}", request.name),
                        n => format!("{}-{n}{extension}", request.name),
                    })
                    .find(|name| !taken(name))
                    .unwrap_or_default()
            };
            let directory = definition
                .target
                .as_ref()
                .map(|t| t.path.clone())
                .unwrap_or_default();
            planned.push(NewVolume {
                disk: Some(index),
                path: format!("{}/{name}", directory.trim_end_matches('/')),
                pool: definition.name,
                name,
                capacity_bytes,
                format,
            });
        }
        Ok(planned)
    }

    async fn create_volume(
        &self,
        volume: &NewVolume,
        sparse: bool,
    ) -> Result<pb::CreatedVolume, Status> {
        let mut stream = self
            .volumes()?
            .create_volume(storage::CreateVolumeRequest {
                host: self.host.clone(),
                pool: by_name(&volume.pool),
                source: Some(storage::create_volume_request::Source::Definition(
                    storage::VolumeDefinition {
                        name: volume.name.clone(),
                        capacity_bytes: volume.capacity_bytes,
                        allocation_bytes: Some(if sparse { 0 } else { volume.capacity_bytes }),
                        target: Some(storage::VolumeTarget {
                            format: Some(storage::volume_target::Format::ImageFormat(
                                volume.format as i32,
                            )),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )),
                prealloc_metadata: false,
            })
            .await
            .map_err(self.down(Service::Storage))?
            .into_inner();
        let mut path = volume.path.clone();
        while let Some(update) = stream
            .message()
            .await
            .map_err(self.down(Service::Storage))?
        {
            if let Some(storage::volume_create_update::Update::Done(done)) = update.update
                && let Some(target) = done.definition.and_then(|d| d.target)
                && !target.path.is_empty()
            {
                path = target.path;
            }
        }
        Ok(pb::CreatedVolume {
            pool: volume.pool.clone(),
            name: volume.name.clone(),
            path,
            capacity_bytes: volume.capacity_bytes,
        })
    }

    /// Creates `volume` and records it in `made`; also when the answer is lost (the service
    /// finishes a creation whose caller went away), so that a cleanup removes it by name.
    async fn create_recorded(
        &self,
        volume: &NewVolume,
        sparse: bool,
        made: &mut Vec<pb::CreatedVolume>,
    ) -> Result<pb::CreatedVolume, Status> {
        match self.create_volume(volume, sparse).await {
            Ok(volume) => {
                made.push(volume.clone());
                Ok(volume)
            }
            Err(status) => {
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown
                        | tonic::Code::DeadlineExceeded
                ) {
                    made.push(pb::CreatedVolume {
                        pool: volume.pool.clone(),
                        name: volume.name.clone(),
                        path: volume.path.clone(),
                        capacity_bytes: volume.capacity_bytes,
                    });
                }
                Err(status)
            }
        }
    }

    /// Puts a fetched tree's installer on the host: one raw volume per file, written through
    /// the storage service (so the host may be another machine). Their paths on the host.
    async fn upload_tree(
        &self,
        tree: &FetchedTree,
        created: &mut Created,
    ) -> Result<(String, String), Status> {
        let mut paths = Vec::new();
        for (name, path, bytes) in &tree.files {
            let volume = NewVolume {
                disk: None,
                pool: tree.pool.clone(),
                name: name.clone(),
                capacity_bytes: bytes.len() as u64,
                format: storage::VolumeFormat::Raw,
                path: path.clone(),
            };
            let made = self
                .create_recorded(&volume, false, &mut created.scratch)
                .await?;
            paths.push(made.path);
            let header = storage::UploadVolumeRequest {
                host: self.host.clone(),
                part: Some(storage::upload_volume_request::Part::Header(
                    storage::UploadVolumeHeader {
                        volume: Some(storage::VolumeRef {
                            pool: tree.pool.clone(),
                            name: name.clone(),
                            ..Default::default()
                        }),
                        offset_bytes: 0,
                        length_bytes: bytes.len() as u64,
                        sparse: false,
                    },
                )),
            };
            let chunks =
                (0..bytes.len())
                    .step_by(UPLOAD_CHUNK)
                    .map(|start| storage::UploadVolumeRequest {
                        host: String::new(),
                        part: Some(storage::upload_volume_request::Part::Chunk(
                            vireo_proto::common::v1::DataChunk {
                                data: bytes.slice(start..bytes.len().min(start + UPLOAD_CHUNK)),
                            },
                        )),
                    });
            let parts: Vec<_> = std::iter::once(header).chain(chunks).collect();
            self.volumes()?
                .upload_volume(tokio_stream::iter(parts))
                .await
                .map_err(self.down(Service::Storage))?;
        }
        let initrd = paths.pop().unwrap_or_default();
        Ok((paths.pop().unwrap_or_default(), initrd))
    }

    async fn start(&self, name: &str) -> Result<(), Status> {
        let mut stream = self
            .domains()?
            .start_domain(compute::StartDomainRequest {
                host: self.host.clone(),
                domain: by_name(name),
                ..Default::default()
            })
            .await
            .map_err(self.down(Service::Compute))?
            .into_inner();
        while stream
            .message()
            .await
            .map_err(self.down(Service::Compute))?
            .is_some()
        {}
        Ok(())
    }

    async fn define(&self, xml: &str) -> Result<(), Status> {
        self.domains()?
            .define_domain(compute::DefineDomainRequest {
                host: self.host.clone(),
                source: Some(compute::define_domain_request::Source::Xml(xml.to_string())),
                ..Default::default()
            })
            .await
            .map_err(self.down(Service::Compute))?;
        Ok(())
    }

    /// Creates the volumes and the domain; on failure removes what it made and says why.
    async fn create(
        &self,
        request: &pb::InstallRequest,
        volumes: &[NewVolume],
        tree: Option<&FetchedTree>,
        updates: &Updates,
        created: &mut Created,
    ) -> Result<Plan, Status> {
        let mut resolved = request.clone();
        for volume in volumes {
            let Some(index) = volume.disk else { continue };
            let disk = &request.disks[index];
            let made = self
                .create_recorded(volume, disk.sparse.unwrap_or(true), &mut created.volumes)
                .await?;
            progress(
                updates,
                "create-disks",
                format!(
                    "created volume `{}` ({:.2} GiB) in pool `{}`",
                    made.name,
                    made.capacity_bytes as f64 / GIB,
                    made.pool
                ),
            )
            .await;
            resolved.disks[index] = with_volume(disk, volume, &made.path);
        }
        let installer = match tree {
            Some(tree) => Some(self.upload_tree(tree, created).await?),
            None => None,
        };
        let plan = plan(
            &resolved,
            HostFiles {
                local: self.local,
                tree: installer.as_ref().map(|(k, i)| (k.as_str(), i.as_str())),
            },
        )?;
        // From here every step may have taken effect even if its answer is lost; the UUID is
        // this install's own, so removing by it is always safe.
        created.uuid.clone_from(&plan.uuid);
        match &plan.install {
            Some(install) => {
                // virt-install's way: the install phase runs as a transient domain, and
                // defining the installed guest makes it persistent; the next start boots that.
                created.running = true;
                let mut stream = self
                    .domains()?
                    .create_domain(compute::CreateDomainRequest {
                        host: self.host.clone(),
                        source: Some(compute::create_domain_request::Source::Xml(install.clone())),
                        ..Default::default()
                    })
                    .await
                    .map_err(self.down(Service::Compute))?
                    .into_inner();
                while stream
                    .message()
                    .await
                    .map_err(self.down(Service::Compute))?
                    .is_some()
                {}
                progress(
                    updates,
                    "start",
                    format!("install phase of `{}` started", request.name),
                )
                .await;
                created.defined = true;
                self.define(&plan.installed).await?;
            }
            None => {
                created.defined = true;
                self.define(&plan.installed).await?;
                progress(updates, "define", format!("`{}` defined", request.name)).await;
                created.running = true;
                self.start(&request.name).await?;
                progress(updates, "start", format!("`{}` started", request.name)).await;
            }
        }
        if request.autostart {
            self.domains()?
                .set_autostart(compute::SetAutostartRequest {
                    host: self.host.clone(),
                    domain: by_name(&request.name),
                    autostart: true,
                })
                .await
                .map_err(self.down(Service::Compute))?;
        }
        Ok(plan)
    }

    async fn delete_volumes(&self, volumes: &[pb::CreatedVolume]) {
        let Ok(mut client) = self.volumes() else {
            return;
        };
        for volume in volumes.iter().rev() {
            if let Err(status) = client
                .delete_volume(storage::DeleteVolumeRequest {
                    host: self.host.clone(),
                    volume: Some(storage::VolumeRef {
                        pool: volume.pool.clone(),
                        name: volume.name.clone(),
                        ..Default::default()
                    }),
                    delete_snapshots: false,
                })
                .await
            {
                tracing::warn!(volume = %volume.path, "an install left its volume: {}", status.message());
            }
        }
    }

    /// Removes what a failed install created: the guest, its definition (by UUID: never
    /// another domain that took the name meanwhile), its volumes.
    async fn remove(&self, created: Created) {
        let domain = Some(ObjectRef {
            key: Some(Key::Uuid(created.uuid.clone())),
        });
        if let Ok(mut domains) = self.domains() {
            if created.running {
                let _ = domains
                    .destroy_domain(compute::DestroyDomainRequest {
                        host: self.host.clone(),
                        domain: domain.clone(),
                        graceful: false,
                    })
                    .await;
            }
            if created.defined {
                let _ = domains
                    .undefine_domain(compute::UndefineDomainRequest {
                        host: self.host.clone(),
                        domain,
                        ..Default::default()
                    })
                    .await;
            }
        }
        self.delete_volumes(&created.scratch).await;
        self.delete_volumes(&created.volumes).await;
    }

    /// Fetches the installer of the tree at `url` and decides where it goes on the host: the
    /// pool of the first new disk, else `default`, as `NAME-install-kernel` and `-initrd`.
    async fn fetch_tree(
        &self,
        request: &pb::InstallRequest,
        url: &str,
        volumes: &[NewVolume],
        updates: &Updates,
    ) -> Result<FetchedTree, Status> {
        let mut found = None;
        for layout in TREE_LAYOUTS {
            let Some(kernel) = fetch(url, layout.kernel).await? else {
                continue;
            };
            if let Some(initrd) = fetch(url, layout.initrd).await? {
                found = Some((kernel, initrd, layout.source_arg));
                break;
            }
        }
        let (kernel, initrd, source_arg) = found.ok_or_else(|| no_installer(url))?;
        progress(
            updates,
            "fetch",
            format!(
                "fetched the installer from {url} ({:.1} MiB)",
                (kernel.len() + initrd.len()) as f64 / f64::from(1u32 << 20)
            ),
        )
        .await;
        let pool = volumes
            .iter()
            .find(|v| v.disk.is_some())
            .map_or("default", |v| v.pool.as_str());
        let pool = self
            .pool_of(
                "location",
                &pb::InstallDisk {
                    pool: pool.to_string(),
                    ..Default::default()
                },
            )
            .await?;
        let definition = pool.definition.unwrap_or_default();
        let needed = (kernel.len() + initrd.len()) as u64;
        if pool.state != storage::PoolState::Running as i32 || needed > definition.available_bytes {
            return Err(Status::failed_precondition(format!(
                "location: the fetched installer ({needed} bytes) is kept in pool `{}` while the install phase starts, and that pool is not running or has not the room",
                definition.name
            )));
        }
        let directory = definition.target.map(|t| t.path).unwrap_or_default();
        // Named for this install only: a leftover of an interrupted one cannot block the next.
        let install_id = vireo_conf::domain::random_uuid();
        let file = |suffix: &str, bytes: Vec<u8>| {
            let bytes = bytes::Bytes::from(bytes);
            let name = format!("{}-install-{}-{suffix}", request.name, &install_id[..8]);
            let path = format!("{}/{name}", directory.trim_end_matches('/'));
            (name, path, bytes)
        };
        // The installer is told where its tree is, unless the extra args say already.
        let source_arg = source_arg
            .filter(|arg| is_url(url) && !request.extra_args.contains(&format!("{arg}=")))
            .map(|arg| format!("{arg}={url}"));
        Ok(FetchedTree {
            pool: definition.name.clone(),
            files: [file("kernel", kernel), file("initrd", initrd)],
            source_arg,
        })
    }

    async fn state(&self, name: &str) -> Result<compute::DomainStateInfo, Status> {
        Ok(self
            .domains()?
            .get_domain_state(compute::GetDomainStateRequest {
                host: self.host.clone(),
                domain: by_name(name),
            })
            .await
            .map_err(self.down(Service::Compute))?
            .into_inner())
    }

    /// Waits until the install phase ends, then starts the installed guest: when the guest
    /// shut itself down (powered off, or rebooted), not when it was destroyed, saved or crashed
    /// (virt-install: "User stopped the VM. Not rebooting."). Whether it started it.
    async fn follow(&self, name: &str, minutes: i32, updates: &Updates) -> Result<bool, Status> {
        progress(
            updates,
            "install",
            format!("waiting for the install phase of `{name}` to end"),
        )
        .await;
        let deadline = u64::try_from(minutes)
            .ok()
            .map(|minutes| Instant::now() + Duration::from_secs(minutes * 60));
        let ended = loop {
            let state = self.state(name).await?;
            if state.state() == compute::DomainState::Shutoff {
                break state.reason();
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(Status::deadline_exceeded(format!(
                    "wait_minutes: the install phase of `{name}` has not ended after {minutes} minutes; the guest is left running"
                )));
            }
            tokio::time::sleep(FOLLOW_INTERVAL).await;
        };
        if ended != compute::DomainStateReason::ShutoffShutdown {
            progress(
                updates,
                "finish",
                format!(
                    "the install phase of `{name}` was stopped ({}); the installed guest is not started",
                    ended.as_str_name().trim_start_matches("DOMAIN_STATE_REASON_").to_lowercase()
                ),
            )
            .await;
            return Ok(false);
        }
        progress(
            updates,
            "finish",
            format!("the install phase of `{name}` ended; starting the installed guest"),
        )
        .await;
        self.start(name).await?;
        Ok(true)
    }
}

/// Whether the file at `path` begins with qcow2's magic ("QFI\xfb").
fn starts_as_qcow2(path: &str) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut magic))
        .is_ok_and(|()| magic == *b"QFI\xfb")
}

/// The disk as the plan sees it once its volume exists (or will: for --print-xml).
fn with_volume(disk: &pb::InstallDisk, volume: &NewVolume, path: &str) -> pb::InstallDisk {
    pb::InstallDisk {
        path: path.to_string(),
        pool: String::new(),
        size_gib: 0.0,
        format: match volume.format {
            storage::VolumeFormat::Qcow2 => compute::DiskFormat::Qcow2,
            _ => compute::DiskFormat::Raw,
        } as i32,
        ..disk.clone()
    }
}

/// Places, checks, creates and starts; follows the install phase when asked to.
async fn install(
    views: &ClusterViews,
    request: &pb::InstallRequest,
    updates: &Updates,
) -> Result<pb::InstallResult, Status> {
    // Everything that can be checked without a host, first: new disks and a tree at a URL
    // stand in as paths.
    let mut stand_in = request.clone();
    for (index, disk) in stand_in.disks.iter_mut().enumerate() {
        if is_new_volume(disk) && disk.path.is_empty() {
            disk.path = format!("/new-volume-{index}");
        }
    }
    let needs = plan(
        &stand_in,
        HostFiles {
            local: false,
            tree: Some(("/installer/kernel", "/installer/initrd")),
        },
    )?
    .needs;
    let host = if request.print_xml {
        // Printing creates nothing, so the guest need not fit anywhere yet.
        views.backends().resolve(&request.host).to_string()
    } else {
        let placement = views.place(&needs, &request.host).await?;
        progress(
            updates,
            "place",
            format!("host `{}`: {}", placement.host, placement.reason),
        )
        .await;
        placement.host
    };
    send(updates, pb::install_update::Update::Host(host.clone())).await;
    let local = host == views.backends().host_name();
    let target = Target { views, host, local };
    // Printing creates nothing, so the name may be taken (virt-install prints it too).
    if !request.print_xml {
        target.name_is_free(&request.name).await?;
    }
    target.networks_are_defined(request).await?;
    let volumes = target.new_volumes(request).await?;
    let request = &target.with_disk_formats(request).await?;
    let tree = match &request.install_source {
        Some(pb::install_request::InstallSource::Location(url)) if is_url(url) => {
            Some(target.fetch_tree(request, url, &volumes, updates).await?)
        }
        Some(pb::install_request::InstallSource::Location(iso))
            if target.local && is_iso_file(iso) =>
        {
            host_path("location", iso)?;
            Some(target.fetch_tree(request, iso, &volumes, updates).await?)
        }
        _ => None,
    };
    let mut request = request.clone();
    if let Some(arg) = tree.as_ref().and_then(|tree| tree.source_arg.as_ref()) {
        request.extra_args = format!("{} {arg}", request.extra_args).trim().to_string();
    }
    let request = &request;
    let mut result = pb::InstallResult {
        host: target.host.clone(),
        ..Default::default()
    };
    // The definitions with the volumes where they will be: every path is checked before
    // anything is created.
    let mut resolved = request.clone();
    for volume in &volumes {
        if let Some(index) = volume.disk {
            resolved.disks[index] = with_volume(&resolved.disks[index], volume, &volume.path);
        }
    }
    let plan = plan(&resolved, target.files(tree.as_ref()))?;
    if request.print_xml || request.dry_run {
        if request.print_xml {
            for xml in plan.install.into_iter().chain([plan.installed]) {
                send(updates, pb::install_update::Update::Xml(xml)).await;
            }
        } else {
            progress(
                updates,
                "place",
                format!(
                    "`{}` checked on host `{}`; nothing created (--dry-run)",
                    request.name, target.host
                ),
            )
            .await;
        }
        return Ok(result);
    }
    let mut created = Created::default();
    let plan = match target
        .create(request, &volumes, tree.as_ref(), updates, &mut created)
        .await
    {
        Ok(plan) => plan,
        Err(status) => {
            target.remove(created).await;
            return Err(status);
        }
    };
    // Its bytes are on the host now; the install may be followed for a long time.
    drop(tree);
    // The engine has read the fetched installer: it is no longer needed on the host.
    target.delete_volumes(&created.scratch).await;
    result.created_volumes = created.volumes;
    result.installing = plan.install.is_some();
    if result.installing
        && let Some(minutes) = request.wait_minutes.filter(|minutes| *minutes != 0)
    {
        target.follow(&request.name, minutes, updates).await?;
        result.installing = false;
    }
    result.domain = target
        .domains()?
        .lookup_domain(compute::LookupDomainRequest {
            host: target.host.clone(),
            domain: by_name(&request.name),
        })
        .await
        .map_err(target.down(Service::Compute))?
        .into_inner()
        .into();
    // As the cluster views name it.
    if let Some(domain) = result.domain.as_mut() {
        domain.host.clone_from(&target.host);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_urls_name_their_files_before_their_options() {
        assert_eq!(
            nfs_url("nfs:server:/srv/trees/debian").as_deref(),
            Some("nfs://server/srv/trees/debian")
        );
        assert_eq!(nfs_url("http://h/tree"), None);
        assert_eq!(
            file_url(
                "nfs://h/export/tree?version=4&nfsport=2049",
                "install.amd/vmlinuz"
            ),
            "nfs://h/export/tree/install.amd/vmlinuz?version=4&nfsport=2049"
        );
        assert_eq!(
            file_url("http://h/debian/", "images/pxeboot/vmlinuz"),
            "http://h/debian/images/pxeboot/vmlinuz"
        );
    }
}
