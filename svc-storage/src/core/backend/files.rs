//! Pools whose volumes are files in a directory: dir, fs (a block device mounted on the target)
//! and netfs (an NFS/CIFS/GlusterFS export mounted there). Volumes are probed with qemu-img;
//! a volume being created lives under a hidden name until it is complete.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use vireo_proto::storage::v1 as pb;

use super::Space;
use crate::core::image;
use crate::core::tool::{ToolError, args, run};
use crate::error::{Error, Result};

/// Files named so are in-progress creations: never listed, removed when the pool starts.
pub const PARTIAL_PREFIX: &str = ".vireo-partial-";

pub fn target(def: &pb::PoolDefinition) -> PathBuf {
    PathBuf::from(def.target.as_ref().map(|t| t.path.as_str()).unwrap_or(""))
}

/// Creates the target directory with the definition's permissions (pool-build of dir, fs, netfs).
pub fn make_target(def: &pb::PoolDefinition) -> Result<()> {
    let path = target(def);
    std::fs::create_dir_all(&path).map_err(Error::io(format!("creating {}", path.display())))?;
    if let Some(perms) = def.target.as_ref().and_then(|t| t.permissions.as_ref()) {
        if let Some(mode) = perms.mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(Error::io(format!("setting the mode of {}", path.display())))?;
        }
        if perms.owner_uid.is_some() || perms.group_gid.is_some() {
            std::os::unix::fs::chown(&path, perms.owner_uid, perms.group_gid).map_err(
                Error::io(format!("setting the owner of {}", path.display())),
            )?;
        }
    }
    Ok(())
}

/// The target must be an existing directory (pool-start of a dir pool).
pub fn check_target(def: &pb::PoolDefinition) -> Result<()> {
    let path = target(def);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::State(format!(
            "the target {} is not a directory",
            path.display()
        ))),
        Err(_) => Err(Error::State(format!(
            "the target directory {} does not exist; run pool-build first",
            path.display()
        ))),
    }
}

/// Removes what a creation cut short left behind (at pool start, when none can be running).
pub fn remove_partials(def: &pb::PoolDefinition) {
    let Ok(entries) = std::fs::read_dir(target(def)) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(PARTIAL_PREFIX)
        {
            tracing::warn!(file = %entry.path().display(), "removing a volume whose creation was cut short");
            let path = entry.path();
            let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
        }
    }
}

/// The target directory without its volumes (pool-delete).
pub fn remove_target(def: &pb::PoolDefinition, pool: &str) -> Result<()> {
    let path = target(def);
    let held: Vec<String> = match std::fs::read_dir(&path) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && n != "lost+found")
            .collect(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(Error::io(format!("reading {}", path.display()))(err)),
    };
    if !held.is_empty() {
        return Err(Error::State(format!(
            "pool '{pool}' still holds {} volume(s) ({}); delete them first",
            held.len(),
            held.join(", ")
        )));
    }
    remove_partials(def);
    std::fs::remove_dir(&path).map_err(Error::io(format!("removing {}", path.display())))
}

/// Capacity, allocation and free space of the filesystem holding the target.
pub fn space(def: &pb::PoolDefinition) -> Result<Space> {
    let path = target(def);
    let stat = nix::sys::statvfs::statvfs(&path)
        .map_err(|errno| Error::io(format!("statvfs {}", path.display()))(errno.into()))?;
    let unit = stat.fragment_size();
    let capacity = stat.blocks() * unit;
    let free = stat.blocks_free() * unit;
    Ok(Space {
        capacity,
        allocation: capacity.saturating_sub(free),
        available: stat.blocks_available() * unit,
    })
}

/// Every volume in the target directory.
pub async fn volumes(def: &pb::PoolDefinition) -> Result<Vec<pb::VolumeDefinition>> {
    let dir = target(def);
    let entries =
        std::fs::read_dir(&dir).map_err(Error::io(format!("reading {}", dir.display())))?;
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != "lost+found")
        .collect();
    names.sort();
    let mut volumes = Vec::new();
    for name in names {
        // A file removed between listing and probing is simply gone.
        if let Some(volume) = volume(&dir.join(&name), &name).await? {
            volumes.push(volume);
        }
    }
    Ok(volumes)
}

/// One volume, probed; None when the file is gone or is not a file or directory.
pub async fn volume(path: &Path, name: &str) -> Result<Option<pb::VolumeDefinition>> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(None);
    };
    let mut def = pb::VolumeDefinition {
        name: name.to_string(),
        key: path.to_string_lossy().into_owned(),
        ..Default::default()
    };
    let mut target = pb::VolumeTarget {
        path: def.key.clone(),
        permissions: Some(pb::StoragePermissions {
            mode: Some(meta.mode() & 0o7777),
            owner_uid: Some(meta.uid()),
            group_gid: Some(meta.gid()),
            label: String::new(),
        }),
        timestamps: Some(pb::VolumeTimestamps {
            atime_unix_ns: meta.atime() * 1_000_000_000 + meta.atime_nsec(),
            mtime_unix_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_unix_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            btime_unix_ns: 0,
        }),
        ..Default::default()
    };
    if meta.is_dir() {
        def.set_type(pb::VolumeType::Dir);
        target.format = Some(pb::volume_target::Format::ImageFormat(
            pb::VolumeFormat::Dir as i32,
        ));
        def.capacity_bytes = meta.size();
        def.allocation_bytes = Some(meta.blocks() * 512);
        def.physical_bytes = meta.size();
    } else if meta.is_file() {
        let info = match image::info(path).await {
            Ok(info) => info,
            Err(_) if !path.exists() => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        def.set_type(pb::VolumeType::File);
        target.format = Some(pb::volume_target::Format::ImageFormat(
            image::format_from_name(&info.format) as i32,
        ));
        if info.format == "qcow2" {
            target.set_compat(match info.compat.as_deref() {
                Some("0.10") => pb::Qcow2Compat::V010,
                _ => pb::Qcow2Compat::V11,
            });
            target.lazy_refcounts = info.lazy_refcounts;
            target.cluster_size_bytes = info.cluster_size.unwrap_or(0);
        }
        def.capacity_bytes = info.virtual_size;
        def.allocation_bytes = Some(meta.blocks() * 512);
        def.physical_bytes = meta.size();
        if let Some(backing) = info.backing_file {
            let mut store = pb::VolumeBackingStore {
                path: backing,
                ..Default::default()
            };
            if let Some(format) = info.backing_format {
                store.set_format(image::format_from_name(&format));
            }
            def.backing_store = Some(store);
        }
    } else {
        return Ok(None);
    }
    def.target = Some(target);
    Ok(Some(def))
}

/// Whether `target` is a mount point now (fs and netfs pools are active when mounted).
pub fn is_mounted(target: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = target.to_string_lossy();
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| unescape_mount(mount_point) == wanted.trim_end_matches('/'))
}

/// mountinfo escapes spaces and the like as \040.
fn unescape_mount(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match code {
            Some(byte) => {
                out.push(byte as char);
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

pub async fn mount(
    source: &str,
    fstype: Option<&str>,
    options: &[String],
    target: &Path,
) -> Result<()> {
    let mut argv = Vec::new();
    if let Some(fstype) = fstype {
        argv.extend(args(["-t", fstype]));
    }
    if !options.is_empty() {
        argv.push("-o".into());
        argv.push(options.join(","));
    }
    argv.push(source.to_string());
    argv.push(target.to_string_lossy().into_owned());
    run("mount", &argv).await?;
    Ok(())
}

pub async fn unmount(target: &Path) -> std::result::Result<(), ToolError> {
    if !is_mounted(target) {
        return Ok(());
    }
    run("umount", &args([target.to_string_lossy()]))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }
}
