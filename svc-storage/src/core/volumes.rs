//! Volumes of active pools: lookup by pool and name, key or path; create (from XML, from another
//! volume, as a clone or a linked overlay) hidden until complete; delete, wipe and shrink refused
//! while a running domain or another volume depends on it; resize; upload and download.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use vireo_proto::common::v1::Progress;
use vireo_proto::storage::v1 as pb;

use super::backend::{Reserved, image_format, volume_path};
use super::data;
use super::image;
use super::pools::{Manager, Marks, Table};
use super::usage::VolumeNames;
use crate::error::{Error, Result};

/// A volume found by reference: its pool's definition and its own.
#[derive(Clone)]
pub struct Found {
    pub pool: pb::PoolDefinition,
    pub volume: pb::VolumeDefinition,
}

/// Progress of a long volume operation, for its stream.
pub type ProgressSender = mpsc::Sender<Progress>;

fn update(phase: &str, total: u64, done: u64, message: String) -> Progress {
    Progress {
        phase: phase.to_string(),
        total_bytes: total,
        processed_bytes: done,
        remaining_bytes: total.saturating_sub(done),
        message,
    }
}

fn describe(reference: &pb::VolumeRef) -> String {
    if !reference.pool.is_empty() && !reference.name.is_empty() {
        format!("'{}' in pool '{}'", reference.name, reference.pool)
    } else if !reference.key.is_empty() {
        format!("with key or path '{}'", reference.key)
    } else {
        format!("with path '{}'", reference.path)
    }
}

impl Table {
    /// (pool index, volume name) of a volume, trying pool + name, then key, then path.
    fn locate(&self, reference: &pb::VolumeRef) -> Result<(usize, String)> {
        if !reference.pool.is_empty() && !reference.name.is_empty() {
            let index = self.find_name(&reference.pool)?;
            let entry = &self.pools[index];
            if !entry.active {
                return Err(Error::State(format!(
                    "pool '{}' is not active",
                    entry.def.name
                )));
            }
            if entry.volumes.contains_key(&reference.name) {
                return Ok((index, reference.name.clone()));
            }
        }
        let matches = |volume: &pb::VolumeDefinition| {
            let path = volume
                .target
                .as_ref()
                .map(|t| t.path.as_str())
                .unwrap_or("");
            (!reference.key.is_empty() && (volume.key == reference.key || path == reference.key))
                || (!reference.path.is_empty() && path == reference.path)
        };
        for (index, entry) in self.pools.iter().enumerate().filter(|(_, e)| e.active) {
            if let Some(volume) = entry.volumes.values().find(|v| matches(v)) {
                return Ok((index, volume.name.clone()));
            }
        }
        if reference.pool.is_empty()
            && reference.name.is_empty()
            && reference.key.is_empty()
            && reference.path.is_empty()
        {
            return Err(Error::field(
                "volume",
                "name a volume by pool and name, key or path",
            ));
        }
        Err(Error::NotFound(format!(
            "no storage volume {}",
            describe(reference)
        )))
    }

    fn active_pool(&self, pool: &vireo_proto::common::v1::ObjectRef) -> Result<usize> {
        let index = self.find(pool)?;
        let entry = &self.pools[index];
        if !entry.active {
            return Err(Error::State(format!(
                "pool '{}' is not active",
                entry.def.name
            )));
        }
        if let Some(what) = entry.transition {
            return Err(Error::State(format!(
                "pool '{}' is busy ({what})",
                entry.def.name
            )));
        }
        Ok(index)
    }
}

fn info_of(pool: &str, volume: &pb::VolumeDefinition) -> pb::VolumeInfo {
    let mut info = pb::VolumeInfo {
        pool: pool.to_string(),
        name: volume.name.clone(),
        key: volume.key.clone(),
        path: volume_path(volume).to_string_lossy().into_owned(),
        capacity_bytes: volume.capacity_bytes,
        allocation_bytes: volume.allocation_bytes.unwrap_or(volume.capacity_bytes),
        physical_bytes: volume.physical_bytes,
        ..Default::default()
    };
    info.set_type(volume.r#type());
    info
}

/// A volume's mark in the manager's marks, cleared when the operation ends, however it ends.
pub struct Mark {
    marks: Arc<std::sync::Mutex<Marks>>,
    key: (String, String),
}

impl Drop for Mark {
    fn drop(&mut self) {
        self.marks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.key);
    }
}

/// Where new volume contents come from.
enum Contents {
    /// An empty image (qemu-img create), or a directory.
    Empty,
    /// A copy of another volume, converted to the new volume's format.
    CopyOf(Found),
    /// A qcow2 overlay backed by another volume.
    OverlayOf(Found),
}

impl Manager {
    /// Marks a volume busy with `what`; refused if another operation holds it.
    pub(crate) fn mark(&self, pool_uuid: &str, name: &str, what: &'static str) -> Result<Mark> {
        let key = (pool_uuid.to_string(), name.to_string());
        let mut marks = self.marks();
        if let Some(other) = marks.get(&key) {
            return Err(Error::State(format!("volume '{name}' is busy ({other})")));
        }
        marks.insert(key.clone(), what);
        Ok(Mark {
            marks: self.marks.clone(),
            key,
        })
    }

    /// The volume a reference names, as last refreshed.
    pub async fn find_volume(&self, reference: &pb::VolumeRef) -> Result<Found> {
        let table = self.table.lock().await;
        let (index, name) = table.locate(reference)?;
        let entry = &table.pools[index];
        Ok(Found {
            pool: entry.def.clone(),
            volume: entry.volumes[&name].clone(),
        })
    }

    /// The volume probed now (sizes change as a guest or an upload writes).
    pub async fn volume(&self, reference: &pb::VolumeRef) -> Result<Found> {
        let mut found = self.find_volume(reference).await?;
        match self.backends.probe(&found.pool, &found.volume).await? {
            Some(fresh) => {
                self.remember(&found.pool, fresh.clone()).await;
                found.volume = fresh;
                Ok(found)
            }
            None => {
                self.forget(&found.pool, &found.volume.name).await;
                Err(Error::NotFound(format!(
                    "volume '{}' of pool '{}' is gone",
                    found.volume.name, found.pool.name
                )))
            }
        }
    }

    pub async fn volume_info(&self, reference: &pb::VolumeRef) -> Result<pb::VolumeInfo> {
        let found = self.volume(reference).await?;
        Ok(info_of(&found.pool.name, &found.volume))
    }

    async fn remember(&self, pool: &pb::PoolDefinition, volume: pb::VolumeDefinition) {
        let mut table = self.table.lock().await;
        if let Ok(index) = table.find_name(&pool.name) {
            table.pools[index]
                .volumes
                .insert(volume.name.clone(), volume);
        }
    }

    async fn forget(&self, pool: &pb::PoolDefinition, name: &str) {
        let mut table = self.table.lock().await;
        if let Ok(index) = table.find_name(&pool.name) {
            table.pools[index].volumes.remove(name);
        }
    }

    async fn refresh_space_of(&self, pool: &pb::PoolDefinition) {
        if let Ok(space) = self.backends.space(pool).await {
            let mut table = self.table.lock().await;
            if let Ok(index) = table.find_name(&pool.name) {
                table.pools[index].space = space;
            }
        }
    }

    pub async fn list_volumes(
        &self,
        pool: &vireo_proto::common::v1::ObjectRef,
    ) -> Result<Vec<pb::VolumeInfo>> {
        let table = self.table.lock().await;
        let index = table.active_pool(pool)?;
        let entry = &table.pools[index];
        Ok(entry
            .volumes
            .values()
            .map(|v| info_of(&entry.def.name, v))
            .collect())
    }

    /// The typed definition from a request, checked for the pool it goes into.
    pub fn volume_definition(
        pool_type: pb::PoolType,
        xml: Option<String>,
        definition: Option<pb::VolumeDefinition>,
        prealloc_metadata: bool,
    ) -> Result<pb::VolumeDefinition> {
        let mut def = match (xml, definition) {
            (Some(xml), _) => vireo_conf::volume::parse(&xml, pool_type)?,
            (None, Some(def)) => def,
            (None, None) => {
                return Err(Error::field(
                    "source",
                    "give the volume as XML or as a definition",
                ));
            }
        };
        if prealloc_metadata {
            def.target
                .get_or_insert_with(Default::default)
                .set_preallocation(pb::VolumePreallocation::Metadata);
        }
        vireo_conf::volume::fill_defaults(&mut def, pool_type);
        vireo_conf::volume::validate(&def, pool_type)?;
        Ok(def)
    }

    /// vol-create, vol-create-as.
    pub async fn create_volume(
        &self,
        pool: &vireo_proto::common::v1::ObjectRef,
        def: pb::VolumeDefinition,
        progress: ProgressSender,
    ) -> Result<pb::Volume> {
        let mut def = def;
        if let Some(backing) = def.backing_store.as_ref().filter(|b| !b.path.is_empty())
            && def.capacity_bytes == 0
        {
            def.capacity_bytes = image::info(std::path::Path::new(&backing.path))
                .await?
                .virtual_size;
        }
        self.make_volume(pool, def, Contents::Empty, progress).await
    }

    /// vol-create-from: a new volume holding a copy of `input`.
    pub async fn create_volume_from(
        &self,
        pool: &vireo_proto::common::v1::ObjectRef,
        def: pb::VolumeDefinition,
        input: &pb::VolumeRef,
        progress: ProgressSender,
    ) -> Result<pb::Volume> {
        let input = self.volume(input).await?;
        self.make_volume(pool, def, Contents::CopyOf(input), progress)
            .await
    }

    /// vol-clone: a full copy (or a linked qcow2 overlay) in the source's pool.
    pub async fn clone_volume(
        &self,
        source: &pb::VolumeRef,
        new_name: &str,
        linked: bool,
        prealloc_metadata: bool,
        progress: ProgressSender,
    ) -> Result<pb::Volume> {
        let source = self.volume(source).await?;
        let pool_type = source.pool.r#type();
        let mut def = pb::VolumeDefinition {
            name: new_name.to_string(),
            capacity_bytes: source.volume.capacity_bytes,
            ..Default::default()
        };
        let mut target = pb::VolumeTarget {
            format: source.volume.target.as_ref().and_then(|t| t.format),
            ..Default::default()
        };
        if let Some(source_target) = &source.volume.target {
            target.permissions = source_target.permissions.clone().map(|mut p| {
                p.label.clear();
                p
            });
            target.compat = source_target.compat;
            target.cluster_size_bytes = source_target.cluster_size_bytes;
        }
        if prealloc_metadata {
            target.set_preallocation(pb::VolumePreallocation::Metadata);
        }
        if linked {
            if !matches!(
                pool_type,
                pb::PoolType::Dir | pb::PoolType::Fs | pb::PoolType::Netfs
            ) {
                return Err(Error::Unsupported(format!(
                    "a linked clone is a qcow2 file: {} pools cannot hold one",
                    pool_type.as_str_name()
                )));
            }
            target.format = Some(pb::volume_target::Format::ImageFormat(
                pb::VolumeFormat::Qcow2 as i32,
            ));
            target.compat = pb::Qcow2Compat::V11 as i32;
            target.cluster_size_bytes = 0;
            def.allocation_bytes = Some(0);
            let mut backing = pb::VolumeBackingStore {
                path: volume_path(&source.volume).to_string_lossy().into_owned(),
                ..Default::default()
            };
            backing.set_format(image_format(&source.volume));
            def.backing_store = Some(backing);
        } else {
            def.allocation_bytes = Some(0);
        }
        def.target = Some(target);
        if pool_type == pb::PoolType::Disk {
            def.target.get_or_insert_with(Default::default).format = Some(
                pb::volume_target::Format::PartitionType(pb::PartitionType::None as i32),
            );
        }
        vireo_conf::volume::fill_defaults(&mut def, pool_type);
        vireo_conf::volume::validate(&def, pool_type)?;
        let pool = vireo_proto::common::v1::ObjectRef {
            key: Some(vireo_proto::common::v1::object_ref::Key::Uuid(
                source.pool.uuid.clone(),
            )),
        };
        let contents = if linked {
            Contents::OverlayOf(source)
        } else {
            Contents::CopyOf(source)
        };
        self.make_volume(&pool, def, contents, progress).await
    }

    /// Creates a volume hidden, fills it, then makes it visible; on any failure nothing is left.
    async fn make_volume(
        &self,
        pool: &vireo_proto::common::v1::ObjectRef,
        def: pb::VolumeDefinition,
        contents: Contents,
        progress: ProgressSender,
    ) -> Result<pb::Volume> {
        let pool_def = {
            let table = self.table.lock().await;
            let index = table.active_pool(pool)?;
            let entry = &table.pools[index];
            if entry.volumes.contains_key(&def.name) {
                return Err(Error::AlreadyExists(format!(
                    "volume '{}' already exists in pool '{}'",
                    def.name, entry.def.name
                )));
            }
            entry.def.clone()
        };
        let _reservation = self.mark(&pool_def.uuid, &def.name, "creation")?;
        if files_pool(&pool_def) && volume_path_taken(&pool_def, &def.name) {
            return Err(Error::AlreadyExists(format!(
                "a file named '{}' already exists in pool '{}'; run pool-refresh to see it",
                def.name, pool_def.name
            )));
        }
        let _source_mark = match &contents {
            Contents::CopyOf(source) | Contents::OverlayOf(source) => {
                Some(self.mark(&source.pool.uuid, &source.volume.name, "copy source")?)
            }
            Contents::Empty => None,
        };
        let mut def = def;
        if let Contents::CopyOf(source) = &contents {
            def.capacity_bytes = def.capacity_bytes.max(source.volume.capacity_bytes);
        }
        let make_file = !matches!(contents, Contents::CopyOf(_)) || !files_pool(&pool_def);
        let mut reserved_def = def.clone();
        if let Contents::OverlayOf(source) = &contents {
            let mut backing = pb::VolumeBackingStore {
                path: volume_path(&source.volume).to_string_lossy().into_owned(),
                ..Default::default()
            };
            backing.set_format(image_format(&source.volume));
            reserved_def.backing_store = Some(backing);
        }
        let reserved = self
            .backends
            .reserve(&pool_def, &reserved_def, make_file)
            .await?;
        let filled = async {
            if let Contents::CopyOf(source) = &contents {
                self.copy_into(&source.volume, &def, &reserved, &progress)
                    .await?;
            }
            self.backends.finish(&pool_def, &def, &reserved).await
        }
        .await;
        if let Err(err) = filled {
            self.backends.abandon(&pool_def, &reserved).await;
            return Err(err);
        }
        let mut probe = def.clone();
        probe.target.get_or_insert_with(Default::default).path =
            reserved.path.to_string_lossy().into_owned();
        let created = match self.backends.probe(&pool_def, &probe).await? {
            Some(volume) => volume,
            None => {
                return Err(Error::State(format!(
                    "volume '{}' vanished right after its creation",
                    def.name
                )));
            }
        };
        self.remember(&pool_def, created.clone()).await;
        self.refresh_space_of(&pool_def).await;
        self.emit(
            pb::StorageObjectKind::Volume,
            &created.name,
            &pool_def,
            &created.key,
            pb::StorageEventType::Created,
        );
        Ok(pb::Volume {
            pool: pool_def.name.clone(),
            definition: Some(created),
        })
    }

    /// Copies `source` into a reserved volume with qemu-img, converting to its format.
    async fn copy_into(
        &self,
        source: &pb::VolumeDefinition,
        def: &pb::VolumeDefinition,
        reserved: &Reserved,
        progress: &ProgressSender,
    ) -> Result<()> {
        let source_path = volume_path(source);
        let info = image::info(&source_path).await?;
        let dest_format = if reserved.is_file {
            image::format_name(image_format(def))
        } else {
            "raw"
        };
        let mut options = image::copy_options(&info, dest_format);
        if dest_format == "qcow2" && options.iter().all(|o| !o.starts_with("compat=")) {
            options.push("compat=1.1".into());
        }
        let total = source.capacity_bytes;
        let sender = progress.clone();
        image::convert(
            image::Convert {
                source: &source_path,
                source_format: &info.format,
                dest: &reserved.writing,
                dest_format,
                existing_dest: !reserved.is_file,
                options,
            },
            move |percent| {
                // A percentage of a u64, clamped to it.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let done = (total as f64 * percent.clamp(0.0, 100.0) / 100.0) as u64;
                let _ = sender.try_send(update("copy", total, done, format!("{percent:.1}%")));
            },
        )
        .await?;
        if reserved.is_file && def.capacity_bytes > info.virtual_size {
            image::resize(
                &reserved.writing,
                dest_format,
                def.capacity_bytes,
                false,
                false,
            )
            .await?;
        }
        Ok(())
    }

    /// Refuses to destroy or shrink a volume that a running domain or another volume uses.
    async fn check_unused(&self, found: &Found, action: &str) -> Result<()> {
        let path = volume_path(&found.volume);
        let users = self
            .usage
            .users(VolumeNames {
                pool: &found.pool.name,
                name: &found.volume.name,
                path: &path,
            })
            .await?;
        if !users.is_empty() {
            return Err(Error::State(format!(
                "cannot {action} volume '{}': it is in use by running domain(s) {}",
                found.volume.name,
                users.join(", ")
            )));
        }
        let path_text = path.to_string_lossy();
        let table = self.table.lock().await;
        for entry in table.pools.iter().filter(|e| e.active) {
            if let Some(overlay) = entry.volumes.values().find(|v| {
                v.backing_store
                    .as_ref()
                    .is_some_and(|b| b.path == path_text)
            }) {
                return Err(Error::State(format!(
                    "cannot {action} volume '{}': volume '{}' of pool '{}' is an overlay backed by it",
                    found.volume.name, overlay.name, entry.def.name
                )));
            }
        }
        Ok(())
    }

    /// vol-delete.
    pub async fn delete_volume(&self, reference: &pb::VolumeRef) -> Result<()> {
        let found = self.find_volume(reference).await?;
        let _mark = self.mark(&found.pool.uuid, &found.volume.name, "deletion")?;
        self.check_unused(&found, "delete").await?;
        self.backends
            .delete_volume(&found.pool, &found.volume)
            .await?;
        self.forget(&found.pool, &found.volume.name).await;
        self.refresh_space_of(&found.pool).await;
        self.emit(
            pb::StorageObjectKind::Volume,
            &found.volume.name,
            &found.pool,
            &found.volume.key,
            pb::StorageEventType::Deleted,
        );
        Ok(())
    }

    /// vol-wipe: every byte overwritten. A qcow2 (or other image format) file is recreated empty
    /// with the same size and options, as its format would otherwise be destroyed.
    pub async fn wipe_volume(
        &self,
        reference: &pb::VolumeRef,
        algorithm: pb::VolumeWipeAlgorithm,
        progress: ProgressSender,
    ) -> Result<pb::VolumeInfo> {
        let found = self.volume(reference).await?;
        let _mark = self.mark(&found.pool.uuid, &found.volume.name, "wipe")?;
        self.check_unused(&found, "wipe").await?;
        let path = volume_path(&found.volume);
        let format = image_format(&found.volume);
        if found.volume.r#type() == pb::VolumeType::Dir {
            return Err(Error::Unsupported(
                "directory volumes cannot be wiped".into(),
            ));
        }
        let passes = data::pass_count(algorithm) as u64;
        if format != pb::VolumeFormat::Raw && found.volume.r#type() == pb::VolumeType::File {
            // Overwrite the file's bytes, then lay a fresh empty image of the same shape over them.
            let wipe_path = path.clone();
            let sender = progress.clone();
            tokio::task::spawn_blocking(move || {
                data::wipe(&wipe_path, algorithm, |done, total| {
                    let _ = sender.try_send(update("wipe", total, done, String::new()));
                })
            })
            .await
            .map_err(|err| Error::io("wiping")(std::io::Error::other(err)))?
            .map_err(Error::io(format!("wiping {}", path.display())))?;
            let mut fresh = found.volume.clone();
            fresh.allocation_bytes = Some(0);
            std::fs::remove_file(&path).map_err(Error::io("replacing the wiped image"))?;
            image::create(&path, &fresh, image::format_name(format)).await?;
        } else {
            let wipe_path = path.clone();
            let sender = progress.clone();
            tokio::task::spawn_blocking(move || {
                data::wipe(&wipe_path, algorithm, |done, total| {
                    let _ =
                        sender.try_send(update("wipe", total, done, format!("{passes} pass(es)")));
                })
            })
            .await
            .map_err(|err| Error::io("wiping")(std::io::Error::other(err)))?
            .map_err(Error::io(format!("wiping {}", path.display())))?;
        }
        drop(_mark);
        self.volume_info(reference).await
    }

    /// vol-resize.
    pub async fn resize_volume(&self, request: &pb::ResizeVolumeRequest) -> Result<pb::VolumeInfo> {
        let reference = request.volume.clone().unwrap_or_default();
        let found = self.volume(&reference).await?;
        let current = found.volume.capacity_bytes;
        let capacity = match (request.delta, request.shrink) {
            (true, true) => current.checked_sub(request.capacity_bytes).ok_or_else(|| {
                Error::field(
                    "capacity_bytes",
                    format!("cannot shrink by more than the volume's {current} bytes"),
                )
            })?,
            (true, false) => current
                .checked_add(request.capacity_bytes)
                .ok_or_else(|| Error::field("capacity_bytes", "the new capacity overflows"))?,
            (false, _) => request.capacity_bytes,
        };
        if capacity > vireo_conf::volume::MAX_VOLUME_BYTES {
            return Err(Error::field(
                "capacity_bytes",
                format!(
                    "{capacity} bytes is more than the largest volume Vireo makes ({} bytes)",
                    vireo_conf::volume::MAX_VOLUME_BYTES
                ),
            ));
        }
        if capacity == 0 {
            return Err(Error::field(
                "capacity_bytes",
                "a volume cannot shrink to nothing",
            ));
        }
        if capacity < current && !request.shrink {
            return Err(Error::field(
                "capacity_bytes",
                format!(
                    "{capacity} bytes is less than the volume's {current}; pass --shrink to lose the data past it"
                ),
            ));
        }
        let _mark = self.mark(&found.pool.uuid, &found.volume.name, "resize")?;
        if capacity < current {
            self.check_unused(&found, "shrink").await?;
        }
        if capacity != current {
            self.backends
                .resize_volume(
                    &found.pool,
                    &found.volume,
                    capacity,
                    capacity < current,
                    request.allocate,
                )
                .await?;
        }
        drop(_mark);
        let info = self.volume_info(&reference).await?;
        self.refresh_space_of(&found.pool).await;
        Ok(info)
    }

    /// vol-upload: opens the volume for writing; the caller feeds the writer.
    pub async fn upload_target(&self, reference: &pb::VolumeRef) -> Result<(Found, Mark)> {
        let found = self.volume(reference).await?;
        let mark = self.mark(&found.pool.uuid, &found.volume.name, "upload")?;
        Ok((found, mark))
    }

    /// vol-download: marks the volume so that it is not deleted while read.
    pub async fn download_source(&self, reference: &pb::VolumeRef) -> Result<(Found, Mark)> {
        let found = self.volume(reference).await?;
        let mark = self.mark(&found.pool.uuid, &found.volume.name, "download")?;
        Ok((found, mark))
    }

    /// After an upload: the volume's new sizes.
    pub async fn after_upload(&self, found: &Found) -> Result<pb::VolumeInfo> {
        let reference = pb::VolumeRef {
            pool: found.pool.name.clone(),
            name: found.volume.name.clone(),
            ..Default::default()
        };
        let info = self.volume_info(&reference).await?;
        self.refresh_space_of(&found.pool).await;
        Ok(info)
    }

    pub fn info_of(pool: &str, volume: &pb::VolumeDefinition) -> pb::VolumeInfo {
        info_of(pool, volume)
    }
}

fn files_pool(pool: &pb::PoolDefinition) -> bool {
    matches!(
        pool.r#type(),
        pb::PoolType::Dir | pb::PoolType::Fs | pb::PoolType::Netfs
    )
}

/// A file of that name exists in a file pool (created outside Vireo since the last refresh).
fn volume_path_taken(pool: &pb::PoolDefinition, name: &str) -> bool {
    let dir: PathBuf = PathBuf::from(pool.target.as_ref().map(|t| t.path.as_str()).unwrap_or(""));
    dir.join(name).symlink_metadata().is_ok()
}
