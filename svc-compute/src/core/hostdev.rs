//! Host side of `<hostdev>`: the host PCI devices a guest is given. svc-nodedev (over
//! `<run>/nodedev.sock`) owns the devices; a managed one is detached from its host driver (bound
//! to vfio-pci) before the guest starts and given back to its host driver when the guest stops,
//! as libvirt does. An unmanaged one must already be bound to vfio-pci.

use std::path::PathBuf;

use vireo_proto::compute::v1 as pb;
use vireo_proto::nodedev::v1 as nd;

use crate::Error;

/// How long a start waits for svc-nodedev to come up (vireod starts its services together).
const NODEDEV_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The driver a device must be bound to for VFIO assignment.
const VFIO_DRIVER: &str = "vfio-pci";

/// The PCI host address of a hostdev, as sysfs spells it (0000:03:10.1).
pub fn host_address(pci: &pb::PciAddress) -> String {
    format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        pci.domain, pci.bus, pci.slot, pci.function
    )
}

/// The node device name of a host PCI address (pci_0000_03_10_1).
fn node_name(pci: &pb::PciAddress) -> String {
    format!("pci_{}", host_address(pci).replace([':', '.'], "_"))
}

fn field(pci: &pb::PciAddress) -> String {
    format!(
        "domain/devices/hostdev[{}]/source/address",
        host_address(pci)
    )
}

/// The PCI hostdevs of a definition.
pub fn pci_hostdevs(
    def: &pb::DomainDefinition,
) -> impl Iterator<Item = (&pb::Hostdev, &pb::PciAddress)> {
    def.devices
        .iter()
        .flat_map(|d| &d.hostdevs)
        .filter_map(|h| match &h.source {
            Some(pb::hostdev::Source::Pci(pci)) => Some((h, pci)),
            _ => None,
        })
}

/// svc-nodedev, which detaches and reattaches host devices.
pub struct HostDevices {
    socket: PathBuf,
}

impl HostDevices {
    pub fn new(socket: PathBuf) -> HostDevices {
        HostDevices { socket }
    }

    async fn client(
        &self,
        what: &str,
    ) -> Result<
        nd::node_device_service_client::NodeDeviceServiceClient<tonic::transport::Channel>,
        Error,
    > {
        let channel = vireo_runtime::client::connect_unix_within(&self.socket, NODEDEV_WAIT)
            .await
            .map_err(|err| Error::State(format!("{what}: svc-nodedev is unreachable: {err}")))?;
        Ok(nd::node_device_service_client::NodeDeviceServiceClient::new(channel))
    }

    /// Makes every PCI hostdev of `def` ready for the guest: detaches the managed ones, checks
    /// the unmanaged ones are on vfio-pci. Answers each device's sysfs path, in order. On
    /// failure the devices detached so far are reattached.
    pub async fn prepare(&self, def: &pb::DomainDefinition) -> Result<Vec<PathBuf>, Error> {
        let mut paths = Vec::new();
        let mut detached = Vec::new();
        for (hostdev, pci) in pci_hostdevs(def) {
            match self.prepare_one(hostdev, pci).await {
                Ok(path) => {
                    paths.push(path);
                    if hostdev.managed {
                        detached.push(*pci);
                    }
                }
                Err(err) => {
                    for pci in &detached {
                        self.reattach(pci).await;
                    }
                    return Err(err);
                }
            }
        }
        Ok(paths)
    }

    async fn prepare_one(
        &self,
        hostdev: &pb::Hostdev,
        pci: &pb::PciAddress,
    ) -> Result<PathBuf, Error> {
        let field = field(pci);
        let mut client = self.client(&field).await?;
        let device = Some(object_ref(pci));
        let reply = if hostdev.managed {
            client
                .detach_node_device(nd::DetachNodeDeviceRequest {
                    device,
                    driver: VFIO_DRIVER.into(),
                    ..Default::default()
                })
                .await
        } else {
            client
                .get_node_device(nd::GetNodeDeviceRequest {
                    device,
                    ..Default::default()
                })
                .await
        };
        let node = reply
            .map_err(|status| {
                let message = format!("{field}: {}", status.message());
                match status.code() {
                    tonic::Code::NotFound => Error::NotFound(message),
                    tonic::Code::InvalidArgument => Error::Definition(vireo_conf::ConfError::new(
                        field.clone(),
                        status.message(),
                    )),
                    _ => Error::State(message),
                }
            })?
            .into_inner();
        if node.driver != VFIO_DRIVER {
            let now = if node.driver.is_empty() {
                "no driver".to_string()
            } else {
                format!("driver '{}'", node.driver)
            };
            return Err(Error::State(format!(
                "{field}: an unmanaged host device must be bound to {VFIO_DRIVER} (it has {now}); run nodedev-detach first or set managed='yes'"
            )));
        }
        Ok(PathBuf::from(node.sysfs_dir))
    }

    /// Gives the managed hostdevs of a guest that stopped back to their host drivers.
    pub async fn release(&self, def: &pb::DomainDefinition) {
        for (hostdev, pci) in pci_hostdevs(def) {
            if hostdev.managed {
                self.reattach(pci).await;
            }
        }
    }

    /// Reattaches one device, logging (not failing) when it cannot: the guest is already gone.
    pub async fn reattach(&self, pci: &pb::PciAddress) {
        let field = field(pci);
        let result = match self.client(&field).await {
            Ok(mut client) => client
                .reattach_node_device(nd::ReattachNodeDeviceRequest {
                    device: Some(object_ref(pci)),
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|status| status.message().to_string()),
            Err(err) => Err(err.to_string()),
        };
        if let Err(err) = result {
            tracing::warn!(device = %host_address(pci), %err, "reattaching a host device");
        }
    }
}

fn object_ref(pci: &pb::PciAddress) -> vireo_proto::common::v1::ObjectRef {
    vireo_proto::common::v1::ObjectRef {
        key: Some(vireo_proto::common::v1::object_ref::Key::Name(node_name(
            pci,
        ))),
    }
}

/// Refuses a definition whose PCI hostdev another running guest holds.
pub fn check_not_in_use<'a>(
    def: &pb::DomainDefinition,
    running: impl Iterator<Item = &'a pb::DomainDefinition>,
) -> Result<(), Error> {
    let running: Vec<&pb::DomainDefinition> = running.collect();
    for (_, pci) in pci_hostdevs(def) {
        if let Some(other) = running.iter().find(|other| {
            pci_hostdevs(other).any(|(_, theirs)| host_address(theirs) == host_address(pci))
        }) {
            return Err(Error::State(format!(
                "{}: the host device is in use by domain '{}'",
                field(pci),
                other.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_hostdev(name: &str, slot: u32) -> pb::DomainDefinition {
        pb::DomainDefinition {
            name: name.into(),
            devices: Some(pb::DomainDevices {
                hostdevs: vec![pb::Hostdev {
                    source: Some(pb::hostdev::Source::Pci(pb::PciAddress {
                        slot,
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_host_device_another_running_guest_holds_is_refused_by_field_and_holder() {
        let running = [with_hostdev("web", 5), with_hostdev("db", 6)];
        let err = check_not_in_use(&with_hostdev("new", 6), running.iter()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "domain/devices/hostdev[0000:00:06.0]/source/address: the host device is in use by domain 'db'"
        );
        assert!(check_not_in_use(&with_hostdev("new", 7), running.iter()).is_ok());
    }
}
