//! One entry point per pool operation, dispatching on the pool type to its backend: files (dir,
//! fs, netfs), logical (LVM), disk (partitions) and iscsi. The manager above knows nothing of
//! how a type stores its volumes.

pub mod disk;
pub mod files;
pub mod iscsi;
pub mod logical;

use std::path::{Path, PathBuf};

use vireo_proto::storage::v1 as pb;
use vireo_proto::storage::v1::PoolType as T;

use super::image;
use super::lvm::Lvm;
use crate::error::{Error, Result};

/// Capacity, allocation and free space of a pool, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Space {
    pub capacity: u64,
    pub allocation: u64,
    pub available: u64,
}

/// A volume created but not yet complete: where to write its contents, and where it will live.
#[derive(Debug, Clone)]
pub struct Reserved {
    /// Where the contents go now (a hidden file, or the LV / partition itself).
    pub writing: PathBuf,
    /// The volume's final path.
    pub path: PathBuf,
    /// File pools: the volume is a file qemu-img may create itself (clones convert into it).
    pub is_file: bool,
}

pub struct Backends {
    pub lvm: Lvm,
}

fn source_device(def: &pb::PoolDefinition) -> String {
    def.source
        .as_ref()
        .and_then(|s| s.devices.first())
        .map(|d| d.path.clone())
        .unwrap_or_default()
}

fn fs_type(def: &pb::PoolDefinition) -> Option<&'static str> {
    use pb::PoolSourceFormat as F;
    match def.source.as_ref().map(|s| s.format())? {
        F::Ext2 => Some("ext2"),
        F::Ext3 => Some("ext3"),
        F::Ext4 => Some("ext4"),
        F::Xfs => Some("xfs"),
        F::Btrfs => Some("btrfs"),
        F::Vfat => Some("vfat"),
        F::Iso9660 => Some("iso9660"),
        F::Udf => Some("udf"),
        F::Gfs2 => Some("gfs2"),
        F::Ocfs2 => Some("ocfs2"),
        F::Nfs => Some("nfs"),
        F::Cifs => Some("cifs"),
        F::Glusterfs => Some("glusterfs"),
        _ => None,
    }
}

/// What netfs mounts: "host:/dir" (NFS, GlusterFS) or "//host/dir" (CIFS).
fn netfs_source(def: &pb::PoolDefinition) -> Result<(String, &'static str, Vec<String>)> {
    let source = def.source.clone().unwrap_or_default();
    let host = source
        .hosts
        .first()
        .ok_or_else(|| Error::field("pool/source/host", "a netfs pool needs a host"))?;
    let fstype = fs_type(def).unwrap_or("nfs");
    let mut options = vec!["nodev".to_string(), "nosuid".to_string()];
    let what = match fstype {
        "cifs" => format!(
            "//{}/{}",
            host.name,
            source.dir_path.trim_start_matches('/')
        ),
        _ => format!("{}:{}", host.name, source.dir_path),
    };
    if fstype == "nfs" {
        if source.protocol_version > 0 {
            options.push(format!("nfsvers={}", source.protocol_version));
        }
        if host.port > 0 {
            options.push(format!("port={}", host.port));
        }
    }
    Ok((what, fstype, options))
}

impl Backends {
    /// pool-build.
    pub async fn build(&self, def: &pb::PoolDefinition, mode: pb::PoolBuildMode) -> Result<()> {
        match def.r#type() {
            T::Dir | T::Netfs => files::make_target(def),
            T::Fs => {
                let device = source_device(def);
                if mode != pb::PoolBuildMode::Unspecified {
                    self.make_filesystem(def, &device, mode).await?;
                }
                files::make_target(def)
            }
            T::Logical => logical::build(&self.lvm, def, mode).await,
            T::Disk => disk::build(def, mode).await,
            other => Err(Error::Unsupported(format!(
                "{} pools have nothing to build",
                other.as_str_name()
            ))),
        }
    }

    /// fs pools with --overwrite / --no-overwrite: make the filesystem (libvirt's semantics).
    async fn make_filesystem(
        &self,
        def: &pb::PoolDefinition,
        device: &str,
        mode: pb::PoolBuildMode,
    ) -> Result<()> {
        let fstype = fs_type(def).unwrap_or("ext4");
        if mode == pb::PoolBuildMode::NoOverwrite
            && let Ok(found) = super::tool::run(
                "blkid",
                &super::tool::args(["-p", "-o", "value", "-s", "TYPE", device]),
            )
            .await
            && !found.trim().is_empty()
        {
            return Err(Error::State(format!(
                "{device} already holds a {} filesystem; pass --overwrite to replace it",
                found.trim()
            )));
        }
        let mut argv = super::tool::args(["-t", fstype]);
        match fstype {
            "ext2" | "ext3" | "ext4" => argv.extend(super::tool::args(["-F", "-q"])),
            "xfs" | "btrfs" => argv.push("-f".into()),
            _ => {}
        }
        argv.push(device.to_string());
        super::tool::run("mkfs", &argv).await?;
        Ok(())
    }

    /// pool-start.
    pub async fn start(&self, def: &pb::PoolDefinition) -> Result<()> {
        match def.r#type() {
            T::Dir => files::check_target(def)?,
            T::Fs => {
                let device = source_device(def);
                if !Path::new(&device).exists() {
                    return Err(Error::State(format!(
                        "the source device {device} does not exist"
                    )));
                }
                files::check_target(def)?;
                if !files::is_mounted(&files::target(def)) {
                    files::mount(&device, fs_type(def), &[], &files::target(def)).await?;
                }
            }
            T::Netfs => {
                files::check_target(def)?;
                if !files::is_mounted(&files::target(def)) {
                    let (what, fstype, options) = netfs_source(def)?;
                    files::mount(&what, Some(fstype), &options, &files::target(def)).await?;
                }
            }
            T::Logical => logical::start(&self.lvm, def).await?,
            T::Disk => disk::start(def).await?,
            T::Iscsi => iscsi::start(def).await?,
            other => {
                return Err(Error::Unsupported(format!(
                    "{} pools are not supported by Vireo",
                    other.as_str_name()
                )));
            }
        }
        self.remove_partials(def).await;
        Ok(())
    }

    /// Removes volumes whose creation was cut short (by a crash): at start, and when a restarted
    /// service finds the pool still active. Nothing of this service's can be writing them then.
    pub async fn remove_partials(&self, def: &pb::PoolDefinition) {
        match def.r#type() {
            T::Dir | T::Fs | T::Netfs => files::remove_partials(def),
            T::Logical => logical::remove_partials(&self.lvm, def).await,
            T::Disk => disk::remove_partials(def).await,
            _ => {}
        }
    }

    /// pool-destroy: deactivate; the data stays.
    pub async fn stop(&self, def: &pb::PoolDefinition) -> Result<()> {
        match def.r#type() {
            T::Fs | T::Netfs => files::unmount(&files::target(def)).await?,
            T::Logical => logical::stop(&self.lvm, def).await?,
            T::Iscsi => iscsi::stop(def).await?,
            _ => {}
        }
        Ok(())
    }

    /// Whether a pool recorded as active is still so (after the service restarted).
    pub async fn still_active(&self, def: &pb::PoolDefinition) -> bool {
        match def.r#type() {
            T::Dir => files::check_target(def).is_ok(),
            T::Fs | T::Netfs => files::is_mounted(&files::target(def)),
            T::Logical => matches!(
                self.lvm.volume_group(&logical::group(def)).await,
                Ok(Some(_))
            ),
            T::Disk => Path::new(&disk::device(def)).exists(),
            T::Iscsi => iscsi::is_active(def),
            _ => false,
        }
    }

    /// pool-delete: remove what pool-build made.
    pub async fn delete(&self, def: &pb::PoolDefinition) -> Result<()> {
        match def.r#type() {
            T::Dir | T::Fs | T::Netfs => files::remove_target(def, &def.name),
            T::Logical => logical::delete(&self.lvm, def, &def.name).await,
            T::Disk => disk::delete(def, &def.name).await,
            other => Err(Error::Unsupported(format!(
                "{} pools have no storage to delete",
                other.as_str_name()
            ))),
        }
    }

    /// pool-refresh: the pool's space and every volume in it.
    pub async fn refresh(
        &self,
        def: &pb::PoolDefinition,
    ) -> Result<(Space, Vec<pb::VolumeDefinition>)> {
        match def.r#type() {
            T::Dir | T::Fs | T::Netfs => Ok((files::space(def)?, files::volumes(def).await?)),
            T::Logical => logical::refresh(&self.lvm, def).await,
            T::Disk => disk::refresh(def).await,
            T::Iscsi => iscsi::refresh(def),
            _ => Ok((Space::default(), Vec::new())),
        }
    }

    /// The pool's space alone (cheap for file pools, a full refresh for the others).
    pub async fn space(&self, def: &pb::PoolDefinition) -> Result<Space> {
        match def.r#type() {
            T::Dir | T::Fs | T::Netfs => files::space(def),
            _ => Ok(self.refresh(def).await?.0),
        }
    }

    /// One volume as it is now; None when it is gone.
    pub async fn probe(
        &self,
        def: &pb::PoolDefinition,
        volume: &pb::VolumeDefinition,
    ) -> Result<Option<pb::VolumeDefinition>> {
        match def.r#type() {
            T::Dir | T::Fs | T::Netfs => {
                let path = PathBuf::from(
                    volume
                        .target
                        .as_ref()
                        .map(|t| t.path.as_str())
                        .unwrap_or(""),
                );
                files::volume(&path, &volume.name).await
            }
            _ => Ok(self
                .refresh(def)
                .await?
                .1
                .into_iter()
                .find(|v| v.name == volume.name)),
        }
    }

    /// Makes room for a new volume, hidden until `finish` (which `abandon` undoes on failure).
    /// `make_file` false: the caller fills a file pool's volume itself (qemu-img convert).
    pub async fn reserve(
        &self,
        def: &pb::PoolDefinition,
        volume: &pb::VolumeDefinition,
        make_file: bool,
    ) -> Result<Reserved> {
        match def.r#type() {
            T::Dir | T::Fs | T::Netfs => {
                let dir = files::target(def);
                let writing = dir.join(format!("{}{}", files::PARTIAL_PREFIX, volume.name));
                let reserved = Reserved {
                    writing,
                    path: dir.join(&volume.name),
                    is_file: true,
                };
                if make_file {
                    let is_dir = volume.r#type() == pb::VolumeType::Dir
                        || matches!(volume.target.as_ref().and_then(|t| t.format), Some(pb::volume_target::Format::ImageFormat(f)) if f == pb::VolumeFormat::Dir as i32);
                    let made = if is_dir {
                        std::fs::create_dir(&reserved.writing)
                            .map_err(Error::io("creating the volume directory"))
                    } else {
                        let format = image::format_name(image_format(volume));
                        image::create(&reserved.writing, volume, format)
                            .await
                            .map_err(Error::from)
                    };
                    if let Err(err) = made {
                        self.abandon(def, &reserved).await;
                        return Err(err);
                    }
                    apply_permissions(&reserved.writing, volume)?;
                }
                Ok(reserved)
            }
            T::Logical => {
                let path = PathBuf::from(logical::create(&self.lvm, def, volume).await?);
                Ok(Reserved {
                    writing: path.clone(),
                    path,
                    is_file: false,
                })
            }
            T::Disk => {
                let path = PathBuf::from(disk::create(def, volume).await?);
                Ok(Reserved {
                    writing: path.clone(),
                    path,
                    is_file: false,
                })
            }
            T::Iscsi => Err(Error::Unsupported(
                "iscsi pools cannot create volumes; their LUNs are the volumes".into(),
            )),
            other => Err(Error::Unsupported(format!(
                "{} pools are not supported by Vireo",
                other.as_str_name()
            ))),
        }
    }

    /// Makes a reserved volume visible under its name.
    pub async fn finish(
        &self,
        def: &pb::PoolDefinition,
        volume: &pb::VolumeDefinition,
        reserved: &Reserved,
    ) -> Result<()> {
        match def.r#type() {
            T::Dir | T::Fs | T::Netfs => {
                if reserved.path.exists() {
                    self.abandon(def, reserved).await;
                    return Err(Error::AlreadyExists(format!(
                        "a file named '{}' appeared in the pool meanwhile",
                        volume.name
                    )));
                }
                std::fs::rename(&reserved.writing, &reserved.path)
                    .map_err(Error::io("naming the new volume"))?;
                let dir = files::target(def);
                std::fs::File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .map_err(Error::io(format!("flushing {}", dir.display())))
            }
            T::Logical => Ok(self
                .lvm
                .finish_volume(&logical::group(def), &volume.name)
                .await?),
            T::Disk => disk::finish(def, &reserved.path.to_string_lossy(), &volume.name).await,
            _ => Ok(()),
        }
    }

    /// Removes a reserved volume whose creation failed.
    pub async fn abandon(&self, def: &pb::PoolDefinition, reserved: &Reserved) {
        let result = match def.r#type() {
            T::Dir | T::Fs | T::Netfs => std::fs::remove_file(&reserved.writing)
                .or_else(|_| std::fs::remove_dir_all(&reserved.writing))
                .map_err(Error::io("removing a failed volume")),
            T::Logical => {
                let name = reserved
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                self.lvm
                    .remove_volume(&logical::group(def), &name)
                    .await
                    .map_err(Error::from)
            }
            T::Disk => disk::delete_volume(def, &reserved.path.to_string_lossy()).await,
            _ => Ok(()),
        };
        if let Err(err) = result {
            tracing::warn!(path = %reserved.writing.display(), %err, "could not remove a failed volume");
        }
    }

    /// vol-delete.
    pub async fn delete_volume(
        &self,
        def: &pb::PoolDefinition,
        volume: &pb::VolumeDefinition,
    ) -> Result<()> {
        let path = volume_path(volume);
        match def.r#type() {
            T::Dir | T::Fs | T::Netfs => {
                let removed = if volume.r#type() == pb::VolumeType::Dir {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                match removed {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                        Err(Error::io(format!("removing {}", path.display()))(err))
                    }
                    _ => Ok(()),
                }
            }
            T::Logical => Ok(self
                .lvm
                .remove_volume(&logical::group(def), &volume.name)
                .await?),
            T::Disk => disk::delete_volume(def, &path.to_string_lossy()).await,
            other => Err(Error::Unsupported(format!(
                "volumes of {} pools cannot be deleted",
                other.as_str_name()
            ))),
        }
    }

    /// vol-resize to `capacity` bytes.
    pub async fn resize_volume(
        &self,
        def: &pb::PoolDefinition,
        volume: &pb::VolumeDefinition,
        capacity: u64,
        shrink: bool,
        allocate: bool,
    ) -> Result<()> {
        match def.r#type() {
            T::Dir | T::Fs | T::Netfs => {
                let format = image::format_name(image_format(volume));
                Ok(image::resize(&volume_path(volume), format, capacity, shrink, allocate).await?)
            }
            T::Logical => Ok(self
                .lvm
                .resize_volume(&logical::group(def), &volume.name, capacity)
                .await?),
            other => Err(Error::Unsupported(format!(
                "volumes of {} pools cannot be resized",
                other.as_str_name()
            ))),
        }
    }
}

pub fn volume_path(volume: &pb::VolumeDefinition) -> PathBuf {
    PathBuf::from(
        volume
            .target
            .as_ref()
            .map(|t| t.path.as_str())
            .unwrap_or(""),
    )
}

/// A volume's image format (raw where it has none, as block volumes).
pub fn image_format(volume: &pb::VolumeDefinition) -> pb::VolumeFormat {
    match volume.target.as_ref().and_then(|t| t.format) {
        Some(pb::volume_target::Format::ImageFormat(value)) => {
            pb::VolumeFormat::try_from(value).unwrap_or(pb::VolumeFormat::Raw)
        }
        _ => pb::VolumeFormat::Raw,
    }
}

fn apply_permissions(path: &Path, volume: &pb::VolumeDefinition) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(perms) = volume.target.as_ref().and_then(|t| t.permissions.as_ref()) else {
        return Ok(());
    };
    if let Some(mode) = perms.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(Error::io("setting the volume's mode"))?;
    }
    if perms.owner_uid.is_some() || perms.group_gid.is_some() {
        std::os::unix::fs::chown(path, perms.owner_uid, perms.group_gid)
            .map_err(Error::io("setting the volume's owner"))?;
    }
    Ok(())
}
