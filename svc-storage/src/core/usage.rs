//! Which running domains use a volume, asked of svc-compute through its API: a volume in use
//! may not be deleted, wiped or shrunk. A host without svc-compute runs no guests.

use std::path::{Path, PathBuf};

use vireo_proto::common::v1::{ObjectRef, object_ref};
use vireo_proto::compute::v1 as compute;
use vireo_proto::compute::v1::domain_service_client::DomainServiceClient;

use crate::error::{Error, Result};

pub struct Usage {
    compute_socket: PathBuf,
}

/// How a domain's disk may name a volume.
pub struct VolumeNames<'a> {
    pub pool: &'a str,
    pub name: &'a str,
    pub path: &'a Path,
}

impl Usage {
    pub fn new(compute_socket: PathBuf) -> Usage {
        Usage { compute_socket }
    }

    /// The names of running domains with a disk on this volume (directly or as a backing file).
    pub async fn users(&self, volume: VolumeNames<'_>) -> Result<Vec<String>> {
        if !self.compute_socket.exists() {
            return Ok(Vec::new());
        }
        let unreachable = |err: String| {
            Error::Unavailable(format!(
                "cannot ask svc-compute ({}) which domains use this volume: {err}",
                self.compute_socket.display()
            ))
        };
        let channel = vireo_runtime::client::connect_unix(&self.compute_socket)
            .await
            .map_err(|err| unreachable(err.to_string()))?;
        let mut client = DomainServiceClient::new(channel);
        let running = client
            .list_domains(compute::ListDomainsRequest {
                include_active: true,
                ..Default::default()
            })
            .await
            .map_err(|status| unreachable(status.message().to_string()))?
            .into_inner()
            .domains;
        let mut users = Vec::new();
        for summary in running {
            let domain = match client
                .get_domain(compute::GetDomainRequest {
                    domain: Some(ObjectRef {
                        key: Some(object_ref::Key::Uuid(summary.uuid.clone())),
                    }),
                    ..Default::default()
                })
                .await
            {
                Ok(reply) => reply.into_inner(),
                // Stopped or undefined meanwhile: not a user.
                Err(status) if status.code() == tonic::Code::NotFound => continue,
                Err(status) => return Err(unreachable(status.message().to_string())),
            };
            let disks = domain
                .live
                .and_then(|def| def.devices)
                .map(|devices| devices.disks)
                .unwrap_or_default();
            if disks.iter().any(|disk| uses(disk, &volume)) {
                users.push(summary.name);
            }
        }
        Ok(users)
    }
}

fn uses(disk: &compute::Disk, volume: &VolumeNames<'_>) -> bool {
    let path = volume.path.to_string_lossy();
    let names = |source: &compute::DiskSource| {
        source.file == path
            || source.dev == path
            || (source.pool == volume.pool && source.volume == volume.name)
    };
    disk.source.as_ref().is_some_and(names)
        || disk
            .backing_store
            .iter()
            .filter_map(|level| level.source.as_ref())
            .any(names)
}
