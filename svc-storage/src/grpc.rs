//! The StoragePoolService and StorageVolumeService of vireo.storage.v1 over core's manager:
//! requests are checked and converted here, streams carry progress, uploads and downloads move
//! bytes in chunks on blocking threads.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};
use vireo_proto::common::v1::{DataChunk, Empty, ObjectRef, Progress};
use vireo_proto::storage::v1 as pb;
use vireo_proto::storage::v1::storage_pool_service_server::{
    StoragePoolService, StoragePoolServiceServer,
};
use vireo_proto::storage::v1::storage_volume_service_server::{
    StorageVolumeService, StorageVolumeServiceServer,
};

use vireo_runtime::fields::known;

use crate::core::backend::volume_path;
use crate::core::data::{self, Piece};
use crate::core::pools::Manager;
use crate::core::tool;
use crate::error::Error;

pub fn pool_server(manager: Arc<Manager>) -> StoragePoolServiceServer<Pools> {
    StoragePoolServiceServer::new(Pools(manager))
}

pub fn volume_server(manager: Arc<Manager>) -> StorageVolumeServiceServer<Volumes> {
    StorageVolumeServiceServer::new(Volumes(manager))
        .max_decoding_message_size(data::CHUNK_BYTES + 64 * 1024)
        .max_encoding_message_size(data::CHUNK_BYTES + 64 * 1024)
}

pub struct Pools(Arc<Manager>);
pub struct Volumes(Arc<Manager>);

fn pool_of(pool: Option<ObjectRef>) -> Result<ObjectRef, Status> {
    pool.filter(|p| p.key.is_some())
        .ok_or_else(|| Status::invalid_argument("pool: name the pool"))
}

pub(crate) fn volume_of(volume: Option<pb::VolumeRef>) -> Result<pb::VolumeRef, Status> {
    volume.ok_or_else(|| Status::invalid_argument("volume: name the volume"))
}

fn define_source(
    source: Option<pb::define_pool_request::Source>,
) -> Result<pb::define_pool_request::Source, Status> {
    source
        .ok_or_else(|| Status::invalid_argument("source: give the pool as XML or as a definition"))
}

/// Why a download could not start or go on: a bad offset is the caller's, the rest the volume's.
pub(crate) fn download_failed(path: &std::path::Path, err: std::io::Error) -> Status {
    match err.kind() {
        std::io::ErrorKind::InvalidInput => {
            Status::invalid_argument(format!("offset_bytes: {err}"))
        }
        _ => Status::from(Error::io(format!("reading {}", path.display()))(err)),
    }
}

/// Runs a long volume operation, streaming its progress and then its result.
fn progress_stream<T, F, Fut>(
    manager: Arc<Manager>,
    wrap_progress: fn(Progress) -> T,
    work: F,
) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(Arc<Manager>, mpsc::Sender<Progress>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, Error>> + Send,
{
    let (out_tx, out_rx) = mpsc::channel::<Result<T, Status>>(16);
    let (progress_tx, mut progress_rx) = mpsc::channel::<Progress>(16);
    let forward = out_tx.clone();
    tokio::spawn(async move {
        while let Some(update) = progress_rx.recv().await {
            let _ = forward.send(Ok(wrap_progress(update))).await;
        }
    });
    // The operation finishes even if the client goes away: it must complete or undo itself.
    tokio::spawn(async move {
        let result = work(manager, progress_tx).await;
        let _ = out_tx.send(result.map_err(Status::from)).await;
    });
    Box::pin(ReceiverStream::new(out_rx))
}

fn create_update(progress: Progress) -> pb::VolumeCreateUpdate {
    pb::VolumeCreateUpdate {
        update: Some(pb::volume_create_update::Update::Progress(progress)),
    }
}

fn created(volume: pb::Volume) -> pb::VolumeCreateUpdate {
    pb::VolumeCreateUpdate {
        update: Some(pb::volume_create_update::Update::Done(volume)),
    }
}

fn wipe_update(progress: Progress) -> pb::VolumeWipeUpdate {
    pb::VolumeWipeUpdate {
        update: Some(pb::volume_wipe_update::Update::Progress(progress)),
    }
}

/// The tools each supported pool type needs on this host.
fn tools_for(pool_type: pb::PoolType) -> &'static [&'static str] {
    use pb::PoolType as T;
    match pool_type {
        T::Dir => &["qemu-img"],
        T::Fs => &["qemu-img", "mount", "umount", "mkfs", "blkid"],
        T::Netfs => &["qemu-img", "mount", "umount", "showmount"],
        T::Logical => &["lvm"],
        T::Disk => &["parted", "partx", "wipefs"],
        T::Iscsi => &["iscsiadm", "iscsi-ls"],
        _ => &[],
    }
}

/// vireo-conf's view of every pool type, less what this host lacks the tools for.
fn host_capabilities() -> Vec<pb::PoolTypeCapability> {
    let mut caps = vireo_conf::pool::capabilities();
    for cap in caps.iter_mut().filter(|c| c.supported) {
        let missing: Vec<&str> = tools_for(cap.r#type())
            .iter()
            .copied()
            .filter(|t| !tool::installed(t))
            .collect();
        if !missing.is_empty() {
            cap.supported = false;
            cap.unsupported_reason = format!("{} not installed", missing.join(", "));
        }
    }
    caps
}

#[tonic::async_trait]
impl StoragePoolService for Pools {
    async fn list_pools(
        &self,
        request: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::PoolList>, Status> {
        let pools = self.0.list(request.get_ref()).await;
        Ok(Response::new(pb::PoolList { pools }))
    }

    async fn define_pool(
        &self,
        request: Request<pb::DefinePoolRequest>,
    ) -> Result<Response<pb::Pool>, Status> {
        let source = define_source(request.into_inner().source)?;
        Ok(Response::new(self.0.define(source).await?))
    }

    async fn create_pool(
        &self,
        request: Request<pb::CreatePoolRequest>,
    ) -> Result<Response<pb::Pool>, Status> {
        let request = request.into_inner();
        let mode = known(request.build_mode, "build_mode")?;
        let source = define_source(request.source.map(|s| match s {
            pb::create_pool_request::Source::Xml(xml) => pb::define_pool_request::Source::Xml(xml),
            pb::create_pool_request::Source::Definition(d) => {
                pb::define_pool_request::Source::Definition(d)
            }
        }))?;
        Ok(Response::new(
            self.0.create(source, request.build, mode).await?,
        ))
    }

    async fn build_pool(
        &self,
        request: Request<pb::BuildPoolRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        let mode = known(request.mode, "mode")?;
        self.0.build(&pool_of(request.pool)?, mode).await?;
        Ok(Response::new(Empty {}))
    }

    async fn start_pool(
        &self,
        request: Request<pb::StartPoolRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        let mode = known(request.build_mode, "build_mode")?;
        self.0
            .start(&pool_of(request.pool)?, request.build, mode)
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn destroy_pool(
        &self,
        request: Request<pb::DestroyPoolRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.0.destroy(&pool_of(request.into_inner().pool)?).await?;
        Ok(Response::new(Empty {}))
    }

    async fn delete_pool(
        &self,
        request: Request<pb::DeletePoolRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.0.delete(&pool_of(request.into_inner().pool)?).await?;
        Ok(Response::new(Empty {}))
    }

    async fn undefine_pool(
        &self,
        request: Request<pb::UndefinePoolRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.0
            .undefine(&pool_of(request.into_inner().pool)?)
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn refresh_pool(
        &self,
        request: Request<pb::RefreshPoolRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.0.refresh(&pool_of(request.into_inner().pool)?).await?;
        Ok(Response::new(Empty {}))
    }

    async fn set_pool_autostart(
        &self,
        request: Request<pb::SetPoolAutostartRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        self.0
            .set_autostart(&pool_of(request.pool)?, request.autostart)
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn get_pool_info(
        &self,
        request: Request<pb::GetPoolInfoRequest>,
    ) -> Result<Response<pb::PoolInfo>, Status> {
        Ok(Response::new(
            self.0.info(&pool_of(request.into_inner().pool)?).await?,
        ))
    }

    async fn get_pool(
        &self,
        request: Request<pb::GetPoolRequest>,
    ) -> Result<Response<pb::Pool>, Status> {
        let request = request.into_inner();
        Ok(Response::new(
            self.0
                .get(&pool_of(request.pool)?, request.inactive)
                .await?,
        ))
    }

    async fn get_pool_xml(
        &self,
        request: Request<pb::GetPoolXmlRequest>,
    ) -> Result<Response<pb::PoolXml>, Status> {
        let request = request.into_inner();
        let pool = self
            .0
            .get(&pool_of(request.pool)?, request.inactive)
            .await?;
        let xml =
            vireo_conf::pool::format(&pool.definition.unwrap_or_default()).map_err(Error::from)?;
        Ok(Response::new(pb::PoolXml { xml }))
    }

    async fn format_pool_xml(
        &self,
        request: Request<pb::FormatPoolXmlRequest>,
    ) -> Result<Response<pb::PoolXml>, Status> {
        let mut def = request
            .into_inner()
            .definition
            .ok_or_else(|| Status::invalid_argument("definition: give the pool to format"))?;
        vireo_conf::pool::fill_defaults(&mut def);
        vireo_conf::pool::validate(&def).map_err(Error::from)?;
        let xml = vireo_conf::pool::format(&def).map_err(Error::from)?;
        Ok(Response::new(pb::PoolXml { xml }))
    }

    async fn find_pool_sources(
        &self,
        request: Request<pb::FindPoolSourcesRequest>,
    ) -> Result<Response<pb::PoolSourceList>, Status> {
        let request = request.into_inner();
        let pool_type = request.r#type();
        let spec = match request.spec {
            Some(pb::find_pool_sources_request::Spec::SpecXml(xml)) => {
                vireo_conf::pool::parse_source(&xml, pool_type).map_err(Error::from)?
            }
            Some(pb::find_pool_sources_request::Spec::SpecSource(source)) => source,
            None => pb::PoolSource::default(),
        };
        let sources = match pool_type {
            pb::PoolType::Logical => {
                let pvs = self
                    .0
                    .backends
                    .lvm
                    .physical_volumes()
                    .await
                    .map_err(Error::from)?;
                let mut groups: std::collections::BTreeMap<String, Vec<String>> =
                    Default::default();
                for pv in pvs.into_iter().filter(|pv| !pv.vg.is_empty()) {
                    groups.entry(pv.vg).or_default().push(pv.name);
                }
                groups
                    .into_iter()
                    .map(|(name, devices)| {
                        let mut source = pb::PoolSource {
                            name,
                            devices: devices
                                .into_iter()
                                .map(|path| pb::PoolSourceDevice {
                                    path,
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        };
                        source.set_format(pb::PoolSourceFormat::Lvm2);
                        source
                    })
                    .collect()
            }
            pb::PoolType::Iscsi => crate::core::backend::iscsi::discover(&spec).await?,
            pb::PoolType::Netfs => crate::core::backend::iscsi::nfs_exports(&spec).await?,
            other => {
                return Err(Status::invalid_argument(format!(
                    "type: sources of {} pools cannot be discovered (logical, netfs and iscsi can)",
                    other.as_str_name()
                )));
            }
        };
        let xml = vireo_conf::pool::format_sources(pool_type, &sources).map_err(Error::from)?;
        Ok(Response::new(pb::PoolSourceList { sources, xml }))
    }

    async fn get_pool_capabilities(
        &self,
        _request: Request<pb::GetPoolCapabilitiesRequest>,
    ) -> Result<Response<pb::PoolCapabilities>, Status> {
        let pools = host_capabilities();
        let xml = vireo_conf::pool::format_capabilities(&pools).map_err(Error::from)?;
        Ok(Response::new(pb::PoolCapabilities { pools, xml }))
    }

    async fn watch_storage_events(
        &self,
        request: Request<pb::WatchStorageEventsRequest>,
    ) -> Result<Response<BoxStream<pb::StorageEvent>>, Status> {
        let filter = request.into_inner().pool.and_then(|p| p.key);
        let filter = filter.map(|key| match key {
            vireo_proto::common::v1::object_ref::Key::Name(n)
            | vireo_proto::common::v1::object_ref::Key::Uuid(n)
            | vireo_proto::common::v1::object_ref::Key::Any(n) => n,
            vireo_proto::common::v1::object_ref::Key::Id(id) => id.to_string(),
        });
        let events = tokio_stream::wrappers::BroadcastStream::new(self.0.subscribe());
        let stream = events.filter_map(move |event| match event {
            Ok(event) => match &filter {
                Some(f) if *f != event.pool && !event.uuid.eq_ignore_ascii_case(f) => None,
                _ => Some(Ok(event)),
            },
            Err(_) => None,
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl StorageVolumeService for Volumes {
    async fn list_volumes(
        &self,
        request: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::VolumeList>, Status> {
        let volumes = self
            .0
            .list_volumes(&pool_of(request.into_inner().pool)?)
            .await?;
        Ok(Response::new(pb::VolumeList { volumes }))
    }

    async fn create_volume(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<BoxStream<pb::VolumeCreateUpdate>>, Status> {
        let request = request.into_inner();
        let pool = pool_of(request.pool)?;
        let pool_type = self.0.pool_type(&pool).await?;
        let (xml, definition) = match request.source {
            Some(pb::create_volume_request::Source::Xml(xml)) => (Some(xml), None),
            Some(pb::create_volume_request::Source::Definition(def)) => (None, Some(def)),
            None => (None, None),
        };
        let def =
            Manager::volume_definition(pool_type, xml, definition, request.prealloc_metadata)?;
        Ok(Response::new(progress_stream(
            self.0.clone(),
            create_update,
            move |manager, progress| async move {
                manager
                    .create_volume(&pool, def, progress)
                    .await
                    .map(created)
            },
        )))
    }

    async fn create_volume_from(
        &self,
        request: Request<pb::CreateVolumeFromRequest>,
    ) -> Result<Response<BoxStream<pb::VolumeCreateUpdate>>, Status> {
        let request = request.into_inner();
        if request.reflink {
            return Err(Status::failed_precondition(
                "reflink: Vireo copies with qemu-img and does not share blocks yet; omit --reflink",
            ));
        }
        let pool = pool_of(request.pool)?;
        let input = volume_of(request.input_volume)?;
        let pool_type = self.0.pool_type(&pool).await?;
        let (xml, definition) = match request.source {
            Some(pb::create_volume_from_request::Source::Xml(xml)) => (Some(xml), None),
            Some(pb::create_volume_from_request::Source::Definition(def)) => (None, Some(def)),
            None => (None, None),
        };
        let def =
            Manager::volume_definition(pool_type, xml, definition, request.prealloc_metadata)?;
        Ok(Response::new(progress_stream(
            self.0.clone(),
            create_update,
            move |manager, progress| async move {
                manager
                    .create_volume_from(&pool, def, &input, progress)
                    .await
                    .map(created)
            },
        )))
    }

    async fn clone_volume(
        &self,
        request: Request<pb::CloneVolumeRequest>,
    ) -> Result<Response<BoxStream<pb::VolumeCreateUpdate>>, Status> {
        let request = request.into_inner();
        if request.reflink {
            return Err(Status::failed_precondition(
                "reflink: Vireo copies with qemu-img and does not share blocks yet; omit --reflink",
            ));
        }
        let source = volume_of(request.source)?;
        let (new_name, linked, prealloc) =
            (request.new_name, request.linked, request.prealloc_metadata);
        Ok(Response::new(progress_stream(
            self.0.clone(),
            create_update,
            move |manager, progress| async move {
                manager
                    .clone_volume(&source, &new_name, linked, prealloc, progress)
                    .await
                    .map(created)
            },
        )))
    }

    async fn format_volume_xml(
        &self,
        request: Request<pb::FormatVolumeXmlRequest>,
    ) -> Result<Response<pb::VolumeXml>, Status> {
        let request = request.into_inner();
        let pool_type = self.0.pool_type(&pool_of(request.pool)?).await?;
        let def = Manager::volume_definition(pool_type, None, request.definition, false)?;
        let xml = vireo_conf::volume::format(&def, pool_type).map_err(Error::from)?;
        Ok(Response::new(pb::VolumeXml { xml }))
    }

    async fn delete_volume(
        &self,
        request: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.0
            .delete_volume(&volume_of(request.into_inner().volume)?)
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn wipe_volume(
        &self,
        request: Request<pb::WipeVolumeRequest>,
    ) -> Result<Response<BoxStream<pb::VolumeWipeUpdate>>, Status> {
        let request = request.into_inner();
        let algorithm = known(request.algorithm, "algorithm")?;
        let volume = volume_of(request.volume)?;
        Ok(Response::new(progress_stream(
            self.0.clone(),
            wipe_update,
            move |manager, progress| async move {
                manager
                    .wipe_volume(&volume, algorithm, progress)
                    .await
                    .map(|info| pb::VolumeWipeUpdate {
                        update: Some(pb::volume_wipe_update::Update::Done(info)),
                    })
            },
        )))
    }

    async fn resize_volume(
        &self,
        request: Request<pb::ResizeVolumeRequest>,
    ) -> Result<Response<pb::VolumeInfo>, Status> {
        Ok(Response::new(
            self.0.resize_volume(request.get_ref()).await?,
        ))
    }

    async fn get_volume_info(
        &self,
        request: Request<pb::GetVolumeInfoRequest>,
    ) -> Result<Response<pb::VolumeInfo>, Status> {
        Ok(Response::new(
            self.0
                .volume_info(&volume_of(request.into_inner().volume)?)
                .await?,
        ))
    }

    async fn get_volume(
        &self,
        request: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let found = self
            .0
            .volume(&volume_of(request.into_inner().volume)?)
            .await?;
        Ok(Response::new(pb::Volume {
            pool: found.pool.name,
            definition: Some(found.volume),
        }))
    }

    async fn get_volume_xml(
        &self,
        request: Request<pb::GetVolumeXmlRequest>,
    ) -> Result<Response<pb::VolumeXml>, Status> {
        let found = self
            .0
            .volume(&volume_of(request.into_inner().volume)?)
            .await?;
        let xml =
            vireo_conf::volume::format(&found.volume, found.pool.r#type()).map_err(Error::from)?;
        Ok(Response::new(pb::VolumeXml { xml }))
    }

    async fn get_volume_path(
        &self,
        request: Request<pb::GetVolumePathRequest>,
    ) -> Result<Response<pb::VolumePath>, Status> {
        let found = self
            .0
            .find_volume(&volume_of(request.into_inner().volume)?)
            .await?;
        Ok(Response::new(pb::VolumePath {
            path: volume_path(&found.volume).to_string_lossy().into_owned(),
        }))
    }

    async fn get_volume_key(
        &self,
        request: Request<pb::GetVolumeKeyRequest>,
    ) -> Result<Response<pb::VolumeKey>, Status> {
        let found = self
            .0
            .find_volume(&volume_of(request.into_inner().volume)?)
            .await?;
        Ok(Response::new(pb::VolumeKey {
            key: found.volume.key,
        }))
    }

    async fn lookup_volume(
        &self,
        request: Request<pb::LookupVolumeRequest>,
    ) -> Result<Response<pb::VolumeIdentity>, Status> {
        let found = self
            .0
            .find_volume(&volume_of(request.into_inner().volume)?)
            .await?;
        Ok(Response::new(pb::VolumeIdentity {
            pool: found.pool.name,
            pool_uuid: found.pool.uuid,
            name: found.volume.name.clone(),
            key: found.volume.key.clone(),
            path: volume_path(&found.volume).to_string_lossy().into_owned(),
        }))
    }

    async fn upload_volume(
        &self,
        request: Request<Streaming<pb::UploadVolumeRequest>>,
    ) -> Result<Response<pb::UploadVolumeResult>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(pb::UploadVolumeRequest {
                part: Some(pb::upload_volume_request::Part::Header(header)),
                ..
            }) => header,
            _ => {
                return Err(Status::invalid_argument(
                    "header: the first upload message must carry the header",
                ));
            }
        };
        let reference = volume_of(header.volume)?;
        let (found, _mark) = self.0.upload_target(&reference).await?;
        let path = volume_path(&found.volume);
        let offset = header.offset_bytes;
        let limit = header.length_bytes;
        // Writes run on one blocking thread fed by a small queue: memory stays bounded.
        let (tx, mut rx) = mpsc::channel::<pb::upload_volume_request::Part>(4);
        let writer_path = path.clone();
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let mut writer = data::UploadWriter::open(&writer_path, offset)?;
            while let Some(part) = rx.blocking_recv() {
                match part {
                    pb::upload_volume_request::Part::Chunk(chunk) => writer.write(&chunk.data)?,
                    pb::upload_volume_request::Part::Hole(hole) => {
                        writer.hole(hole.length_bytes)?
                    }
                    pb::upload_volume_request::Part::Header(_) => {}
                }
            }
            writer.finish()
        });
        let mut received = 0u64;
        let mut failure = None;
        while let Some(message) = stream.message().await.transpose() {
            let part = match message {
                Ok(pb::UploadVolumeRequest {
                    part: Some(part), ..
                }) => part,
                Ok(_) => continue,
                Err(status) => {
                    failure = Some(status);
                    break;
                }
            };
            let length = match &part {
                pb::upload_volume_request::Part::Chunk(chunk) => chunk.data.len() as u64,
                pb::upload_volume_request::Part::Hole(hole) if header.sparse => hole.length_bytes,
                pb::upload_volume_request::Part::Hole(_) => {
                    failure = Some(Status::invalid_argument(
                        "hole: holes need a sparse upload (--sparse)",
                    ));
                    break;
                }
                pb::upload_volume_request::Part::Header(_) => {
                    failure = Some(Status::invalid_argument(
                        "header: only the first message carries a header",
                    ));
                    break;
                }
            };
            received += length;
            if limit > 0 && received > limit {
                failure = Some(Status::invalid_argument(format!(
                    "length_bytes: the upload sent more than the {limit} bytes it announced"
                )));
                break;
            }
            if tx.send(part).await.is_err() {
                break;
            }
        }
        drop(tx);
        let written = writer
            .await
            .map_err(|err| Status::internal(format!("upload writer: {err}")))?
            .map_err(|err| Status::from(Error::io(format!("writing {}", path.display()))(err)));
        if failure.is_none() && limit > 0 && received < limit {
            failure = Some(Status::aborted(format!(
                "the upload ended after {received} of the {limit} bytes it announced"
            )));
        }
        if let Some(status) = failure {
            return Err(status);
        }
        let written = written?;
        drop(_mark);
        let volume = self.0.after_upload(&found).await?;
        Ok(Response::new(pb::UploadVolumeResult {
            bytes_written: written.saturating_sub(offset),
            volume: Some(volume),
        }))
    }

    async fn download_volume(
        &self,
        request: Request<pb::DownloadVolumeRequest>,
    ) -> Result<Response<BoxStream<pb::VolumeDownloadPart>>, Status> {
        let request = request.into_inner();
        let reference = volume_of(request.volume)?;
        let manager = self.0.clone();
        let (found, mark) = manager.download_source(&reference).await?;
        let path = volume_path(&found.volume);
        let (mut reader, total) = data::DownloadReader::open(
            &path,
            request.offset_bytes,
            request.length_bytes,
            request.sparse,
        )
        .map_err(|err| download_failed(&path, err))?;
        let info = Manager::info_of(&found.pool.name, &found.volume);
        let (tx, rx) = mpsc::channel::<Result<pb::VolumeDownloadPart, Status>>(4);
        tokio::task::spawn_blocking(move || {
            // The volume stays marked (not deletable) until the last byte is read.
            let _mark = mark;
            let header = pb::VolumeDownloadPart {
                part: Some(pb::volume_download_part::Part::Header(
                    pb::VolumeDownloadHeader {
                        total_bytes: total,
                        volume: Some(info),
                    },
                )),
            };
            if tx.blocking_send(Ok(header)).is_ok() {
                loop {
                    let part = match reader.next_piece() {
                        Ok(Some(Piece::Data(data))) => Ok(pb::VolumeDownloadPart {
                            part: Some(pb::volume_download_part::Part::Chunk(DataChunk {
                                data: data.into(),
                            })),
                        }),
                        Ok(Some(Piece::Hole(length))) => Ok(pb::VolumeDownloadPart {
                            part: Some(pb::volume_download_part::Part::Hole(pb::VolumeHole {
                                length_bytes: length,
                            })),
                        }),
                        Ok(None) => break,
                        Err(err) => Err(Status::internal(format!("reading the volume: {err}"))),
                    };
                    let failed = part.is_err();
                    if tx.blocking_send(part).is_err() || failed {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
