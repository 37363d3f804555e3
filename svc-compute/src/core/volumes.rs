//! Disks that name a storage volume (`<disk type='volume'><source pool= volume=/>`) are resolved
//! through svc-storage's API when a domain starts or a disk is hot-plugged: the engine gets the
//! volume's path (a file or a block device) and, where the definition left it open, its format.

use std::path::PathBuf;
use std::time::Duration;

use vireo_proto::compute::v1 as pb;
use vireo_proto::storage::v1 as storage;
use vireo_proto::storage::v1::storage_volume_service_client::StorageVolumeServiceClient;

use crate::Error;

pub struct Storage {
    socket: PathBuf,
}

/// How long a start waits for svc-storage to come up (vireod starts its services together).
const STORAGE_WAIT: Duration = Duration::from_secs(10);

impl Storage {
    pub fn new(socket: PathBuf) -> Storage {
        Storage { socket }
    }

    /// Resolves every volume disk of a definition that is about to run.
    pub async fn resolve(&self, def: &mut pb::DomainDefinition) -> Result<(), Error> {
        if let Some(devices) = def.devices.as_mut() {
            for disk in &mut devices.disks {
                self.resolve_disk(disk).await?;
            }
        }
        Ok(())
    }

    /// Fills a volume disk's path (file= or dev=) and format from svc-storage.
    pub async fn resolve_disk(&self, disk: &mut pb::Disk) -> Result<(), Error> {
        if disk.r#type() != pb::DiskType::Volume {
            return Ok(());
        }
        let target = disk
            .target
            .as_ref()
            .map(|t| t.dev.clone())
            .unwrap_or_default();
        let source = disk.source.get_or_insert_default();
        if source.pool.is_empty() || source.volume.is_empty() {
            return Err(Error::InvalidField {
                field: "disk/source",
                message: format!("disk {target}: a volume disk names both pool= and volume="),
            });
        }
        let unreachable = |why: String| {
            Error::State(format!(
                "disk {target}: volume '{}' of pool '{}' cannot be resolved: svc-storage ({}) {why}",
                source.volume,
                source.pool,
                self.socket.display()
            ))
        };
        let channel = vireo_runtime::client::connect_unix_within(&self.socket, STORAGE_WAIT)
            .await
            .map_err(|err| unreachable(format!("is unreachable: {err}")))?;
        let reply = StorageVolumeServiceClient::new(channel)
            .get_volume(storage::GetVolumeRequest {
                volume: Some(storage::VolumeRef {
                    pool: source.pool.clone(),
                    name: source.volume.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        let volume = match reply {
            Ok(reply) => reply.into_inner().definition.unwrap_or_default(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                return Err(unreachable(format!("did not answer: {}", status.message())));
            }
            Err(status) => {
                return Err(Error::State(format!(
                    "disk {target}: storage volume '{}' of pool '{}': {}",
                    source.volume,
                    source.pool,
                    status.message()
                )));
            }
        };
        let path = volume
            .target
            .as_ref()
            .map(|t| t.path.clone())
            .unwrap_or_default();
        if volume.r#type() == storage::VolumeType::Block {
            source.dev = path;
            source.file.clear();
        } else {
            source.file = path;
            source.dev.clear();
        }
        let format = match volume.target.as_ref().and_then(|t| t.format) {
            Some(storage::volume_target::Format::ImageFormat(f))
                if f == storage::VolumeFormat::Qcow2 as i32 =>
            {
                pb::DiskFormat::Qcow2
            }
            _ => pb::DiskFormat::Raw,
        };
        let driver = disk.driver.get_or_insert_default();
        if driver.r#type == pb::DiskFormat::Unspecified as i32 {
            driver.set_type(format);
        } else if driver.r#type() != format {
            return Err(Error::InvalidField {
                field: "disk/driver@type",
                message: format!(
                    "disk {target}: the driver says {} but volume '{}' holds {}",
                    driver.r#type().as_str_name(),
                    disk.source
                        .as_ref()
                        .map(|s| s.volume.as_str())
                        .unwrap_or(""),
                    format.as_str_name()
                ),
            });
        }
        Ok(())
    }
}
