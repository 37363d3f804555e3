//! The host's devices read from a sysfs root (the real `/sys`, or a tree a test builds): the
//! `computer` root with its SMBIOS facts, PCI functions (class, vendor and product with names
//! from pci.ids, driver, NUMA node, IOMMU group, SR-IOV links), net interfaces and whole disks,
//! named as libvirt names them (`pci_0000_00_1f_2`, `net_eth0_52_54_00_12_34_56`).

use std::path::{Path, PathBuf};

use vireo_proto::nodedev::v1 as pb;

use super::pci_ids::PciIds;

pub const ROOT_NAME: &str = "computer";

/// Reads devices under one sysfs root.
pub struct Sysfs {
    root: PathBuf,
    names: PciIds,
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_string())
}

fn hex(path: &Path) -> Option<u32> {
    let text = read(path)?;
    u32::from_str_radix(text.trim_start_matches("0x"), 16).ok()
}

/// "0000:00:1f.2" as its parts.
pub fn parse_pci_address(text: &str) -> Option<pb::PciAddress> {
    let (domain, rest) = text.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (slot, function) = rest.split_once('.')?;
    Some(pb::PciAddress {
        domain: u32::from_str_radix(domain, 16).ok()?,
        bus: u32::from_str_radix(bus, 16).ok()?,
        slot: u32::from_str_radix(slot, 16).ok()?,
        function: u32::from_str_radix(function, 16).ok()?,
    })
}

/// libvirt's name of a PCI function: `pci_0000_00_1f_2`.
pub fn pci_name(address: &pb::PciAddress) -> String {
    format!(
        "pci_{:04x}_{:02x}_{:02x}_{:x}",
        address.domain, address.bus, address.slot, address.function
    )
}

/// The last part of where a symlink points (a driver's or a device's name).
pub(crate) fn link_name(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()?
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
}

impl Sysfs {
    pub fn new(root: &Path) -> Sysfs {
        Sysfs {
            root: root.to_path_buf(),
            names: PciIds::load(),
        }
    }

    /// A device's path as the kernel shows it (`/sys/devices/...`), also for a test tree.
    fn shown_path(&self, real: &Path) -> String {
        let root = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        match real.strip_prefix(&root) {
            Ok(inside) => Path::new("/sys").join(inside).display().to_string(),
            Err(_) => real.display().to_string(),
        }
    }

    /// The device name of the directory holding `dir` (a PCI parent), else the root.
    fn parent_of(dir: &Path) -> String {
        dir.parent()
            .and_then(|parent| parent.file_name())
            .and_then(|name| parse_pci_address(&name.to_string_lossy()))
            .map_or_else(|| ROOT_NAME.to_string(), |address| pci_name(&address))
    }

    /// Every device, the root first, then by name.
    pub fn devices(&self) -> Vec<pb::NodeDevice> {
        let mut devices = vec![self.computer()];
        let mut rest: Vec<pb::NodeDevice> = self
            .pci()
            .into_iter()
            .chain(self.net())
            .chain(self.storage())
            .chain(self.scsi_hosts())
            .chain(self.usb())
            .collect();
        rest.sort_by(|a, b| a.name.cmp(&b.name));
        devices.extend(rest);
        devices
    }

    fn computer(&self) -> pb::NodeDevice {
        let dmi = self.root.join("class/dmi/id");
        let field = |name: &str| read(&dmi.join(name)).unwrap_or_default();
        pb::NodeDevice {
            name: ROOT_NAME.to_string(),
            caps: vec![pb::Capability {
                cap: Some(pb::capability::Cap::System(pb::SystemCap {
                    product: field("product_name"),
                    hardware: Some(pb::SystemHardware {
                        vendor: field("sys_vendor"),
                        version: field("product_version"),
                        serial: field("product_serial"),
                        uuid: field("product_uuid"),
                    }),
                    firmware: Some(pb::SystemFirmware {
                        vendor: field("bios_vendor"),
                        version: field("bios_version"),
                        release_date: field("bios_date"),
                    }),
                })),
            }],
            ..Default::default()
        }
    }

    fn pci(&self) -> Vec<pb::NodeDevice> {
        let listing = self.root.join("bus/pci/devices");
        let mut devices = Vec::new();
        for entry in std::fs::read_dir(&listing).into_iter().flatten().flatten() {
            let link = entry.path();
            let Some(address) = parse_pci_address(&entry.file_name().to_string_lossy()) else {
                continue;
            };
            let Ok(real) = std::fs::canonicalize(&link) else {
                continue;
            };
            let vendor_id = hex(&real.join("vendor")).unwrap_or(0);
            let product_id = hex(&real.join("device")).unwrap_or(0);
            let class_code = hex(&real.join("class")).unwrap_or(0);
            let (vendor_name, product_name) = self.names.lookup(vendor_id, product_id);
            let numa_node = read(&real.join("numa_node"))
                .and_then(|node| node.parse::<i64>().ok())
                .and_then(|node| u32::try_from(node).ok());
            let iommu_group = link_name(&real.join("iommu_group"))
                .and_then(|group| group.parse::<u32>().ok())
                .map(|number| {
                    let members = std::fs::read_dir(
                        self.root
                            .join("kernel/iommu_groups")
                            .join(number.to_string())
                            .join("devices"),
                    )
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|member| parse_pci_address(&member.file_name().to_string_lossy()))
                    .collect();
                    pb::IommuGroup { number, members }
                });
            let mut virt_functions: Vec<pb::PciAddress> = std::fs::read_dir(&real)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("virtfn"))
                .filter_map(|e| link_name(&e.path()))
                .filter_map(|name| parse_pci_address(&name))
                .collect();
            virt_functions.sort_by_key(|a| (a.domain, a.bus, a.slot, a.function));
            let pci = pb::PciCap {
                address: Some(address),
                class_code,
                vendor_id,
                vendor_name,
                product_id,
                product_name,
                iommu_group,
                numa_node,
                phys_function: link_name(&real.join("physfn"))
                    .and_then(|name| parse_pci_address(&name)),
                virt_functions,
                virt_functions_max_count: read(&real.join("sriov_totalvfs"))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
                // A PCI-to-PCI bridge: base class 06, subclass 04.
                bridge: class_code >> 8 == 0x0604,
                ..Default::default()
            };
            devices.push(pb::NodeDevice {
                name: pci_name(&address),
                path: self.shown_path(&real),
                sysfs_dir: real.display().to_string(),
                parent: Self::parent_of(&real),
                driver: link_name(&real.join("driver")).unwrap_or_default(),
                caps: vec![pb::Capability {
                    cap: Some(pb::capability::Cap::Pci(pci)),
                }],
                ..Default::default()
            });
        }
        devices
    }

    fn net(&self) -> Vec<pb::NodeDevice> {
        let listing = self.root.join("class/net");
        let mut devices = Vec::new();
        for entry in std::fs::read_dir(&listing).into_iter().flatten().flatten() {
            let interface = entry.file_name().to_string_lossy().into_owned();
            let Ok(real) = std::fs::canonicalize(entry.path()) else {
                continue;
            };
            let address = read(&real.join("address"))
                .unwrap_or_default()
                .to_lowercase();
            let state = match read(&real.join("operstate")).as_deref() {
                Some("up") => pb::NetLinkState::Up,
                Some("down") => pb::NetLinkState::Down,
                Some("lowerlayerdown") => pb::NetLinkState::LowerLayerDown,
                Some("dormant") => pb::NetLinkState::Dormant,
                Some("testing") => pb::NetLinkState::Testing,
                Some("notpresent") => pb::NetLinkState::NotPresent,
                _ => pb::NetLinkState::Unknown,
            };
            let speed = read(&real.join("speed"))
                .and_then(|speed| speed.parse::<i64>().ok())
                .and_then(|speed| u32::try_from(speed).ok())
                .unwrap_or(0);
            // A net device sits under its hardware (`.../0000:00:03.0/virtio2/net/eth0`).
            let parent = std::fs::canonicalize(real.join("device")).map_or_else(
                |_| ROOT_NAME.to_string(),
                |device| Self::pci_ancestor(&device),
            );
            let mut net = pb::NetCap {
                interface: interface.clone(),
                address: address.clone(),
                link_speed_mbit_s: if state == pb::NetLinkState::Up {
                    speed
                } else {
                    0
                },
                ..Default::default()
            };
            net.set_link_state(state);
            net.set_kind(if real.join("wireless").exists() {
                pb::NetKind::Wireless
            } else {
                pb::NetKind::Ethernet
            });
            devices.push(pb::NodeDevice {
                name: format!("net_{interface}_{}", address.replace(':', "_")),
                path: self.shown_path(&real),
                parent,
                driver: link_name(&real.join("device/driver")).unwrap_or_default(),
                caps: vec![pb::Capability {
                    cap: Some(pb::capability::Cap::Net(net)),
                }],
                ..Default::default()
            });
        }
        devices
    }
}

impl Sysfs {
    /// The PCI function a device sits under (the nearest PCI address up its path), else the root.
    fn pci_ancestor(device: &Path) -> String {
        device
            .ancestors()
            .find_map(|dir| parse_pci_address(&dir.file_name()?.to_string_lossy()))
            .map_or_else(|| ROOT_NAME.to_string(), |address| pci_name(&address))
    }

    /// Whole disks backed by hardware (a `device` link; not partitions, loop or zram devices),
    /// named `block_<dev>` or `block_<dev>_<serial>` as libvirt does.
    fn storage(&self) -> Vec<pb::NodeDevice> {
        let listing = self.root.join("class/block");
        let mut devices = Vec::new();
        for entry in std::fs::read_dir(&listing).into_iter().flatten().flatten() {
            let dev = entry.file_name().to_string_lossy().into_owned();
            let Ok(real) = std::fs::canonicalize(entry.path()) else {
                continue;
            };
            if real.join("partition").exists() || !real.join("device").exists() {
                continue;
            }
            let serial = read(&real.join("serial"))
                .or_else(|| read(&real.join("device/serial")))
                .unwrap_or_default();
            let sectors: u64 = read(&real.join("size"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let logical: u64 = read(&real.join("queue/logical_block_size"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(512);
            // The kernel counts `size` in 512-byte sectors whatever the block size.
            let size_bytes = sectors.saturating_mul(512);
            let path = real.display().to_string();
            let bus = ["virtio", "usb", "ata", "nvme"]
                .into_iter()
                .find(|bus| path.contains(&format!("/{bus}")))
                .unwrap_or("scsi");
            let mut storage = pb::StorageCap {
                block: format!("/dev/{dev}"),
                bus: bus.to_string(),
                model: read(&real.join("device/model")).unwrap_or_default(),
                vendor: read(&real.join("device/vendor")).unwrap_or_default(),
                serial: serial.clone(),
                size_bytes,
                logical_block_size_bytes: logical,
                num_blocks: size_bytes / logical.max(1),
                ..Default::default()
            };
            storage.set_drive_type(if dev.starts_with("sr") {
                pb::DriveType::Cdrom
            } else {
                pb::DriveType::Disk
            });
            let name = if serial.is_empty() {
                format!("block_{dev}")
            } else {
                format!(
                    "block_{dev}_{}",
                    serial.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                )
            };
            devices.push(pb::NodeDevice {
                name,
                path: self.shown_path(&real),
                parent: Self::pci_ancestor(&real),
                devnodes: vec![pb::DevNode {
                    r#type: pb::DevNodeType::Dev as i32,
                    path: format!("/dev/{dev}"),
                }],
                caps: vec![pb::Capability {
                    cap: Some(pb::capability::Cap::Storage(storage)),
                }],
                ..Default::default()
            });
        }
        devices
    }
}

/// The number of a `hostN` name.
pub(crate) fn host_number(name: &str) -> Option<u32> {
    name.strip_prefix("host")?.parse().ok()
}

/// A WWN as sysfs shows it (`0x2000001b32a9da4e`), as libvirt does (no prefix).
pub(crate) fn wwn(path: &Path) -> String {
    read(path)
        .map(|text| text.trim_start_matches("0x").to_ascii_lowercase())
        .unwrap_or_default()
}

impl Sysfs {
    /// SCSI hosts (`class/scsi_host`), named `scsi_hostN`; a Fibre Channel one
    /// (`class/fc_host/hostN`) has its WWNs, and one that can make NPIV vports has vport_ops.
    /// A vport's host sits under `vport-*` of its HBA's host, whose scsi_host is its parent.
    fn scsi_hosts(&self) -> Vec<pb::NodeDevice> {
        let mut devices = Vec::new();
        let listing = self.root.join("class/scsi_host");
        for entry in std::fs::read_dir(&listing).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(number) = host_number(&name) else {
                continue;
            };
            let Ok(class_dir) = std::fs::canonicalize(entry.path()) else {
                continue;
            };
            // .../hostN/scsi_host/hostN: the device is two levels up.
            let Some(device) = class_dir.parent().and_then(Path::parent) else {
                continue;
            };
            let fc_dir = self.root.join("class/fc_host").join(&name);
            let fc_host = fc_dir.exists().then(|| pb::FcHost {
                wwnn: wwn(&fc_dir.join("node_name")),
                wwpn: wwn(&fc_dir.join("port_name")),
                fabric_wwn: wwn(&fc_dir.join("fabric_name")),
            });
            let vport_ops = fc_dir.join("vport_create").exists().then(|| pb::VportOps {
                max_vports: read(&fc_dir.join("max_npiv_vports"))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
                vports: read(&fc_dir.join("npiv_vports_inuse"))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
            });
            let parent = match device.parent() {
                Some(vport)
                    if vport
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("vport-")) =>
                {
                    vport
                        .parent()
                        .and_then(|hba| hba.file_name())
                        .and_then(|hba| host_number(&hba.to_string_lossy()))
                        .map_or_else(|| ROOT_NAME.to_string(), |n| format!("scsi_host{n}"))
                }
                _ => Self::pci_ancestor(device),
            };
            devices.push(pb::NodeDevice {
                name: format!("scsi_{name}"),
                path: self.shown_path(device),
                sysfs_dir: device.display().to_string(),
                parent,
                caps: vec![pb::Capability {
                    cap: Some(pb::capability::Cap::ScsiHost(pb::ScsiHostCap {
                        host: number,
                        unique_id: read(&class_dir.join("unique_id")).and_then(|n| n.parse().ok()),
                        fc_host,
                        vport_ops,
                    })),
                }],
                ..Default::default()
            });
        }
        devices
    }

    /// USB devices (`bus/usb/devices`, not their interfaces), named as libvirt names them:
    /// `usb_usb1` for a root hub, `usb_1_1` for the device on its port 1.
    fn usb(&self) -> Vec<pb::NodeDevice> {
        let mut devices = Vec::new();
        let listing = self.root.join("bus/usb/devices");
        let usb_name = |sysfs_name: &str| format!("usb_{}", sysfs_name.replace(['-', '.'], "_"));
        for entry in std::fs::read_dir(&listing).into_iter().flatten().flatten() {
            let sysfs_name = entry.file_name().to_string_lossy().into_owned();
            if sysfs_name.contains(':') {
                continue;
            }
            let Ok(real) = std::fs::canonicalize(entry.path()) else {
                continue;
            };
            let number = |file: &str| read(&real.join(file)).and_then(|n| n.parse().ok());
            let id =
                |file: &str| read(&real.join(file)).and_then(|n| u32::from_str_radix(&n, 16).ok());
            // A device's parent is the hub it is plugged into; a root hub's, its controller.
            let parent = match real.parent().and_then(Path::file_name) {
                Some(hub) if self.root.join("bus/usb/devices").join(hub).exists() => {
                    usb_name(&hub.to_string_lossy())
                }
                _ => Self::pci_ancestor(&real),
            };
            let (bus, device) = (number("busnum").unwrap_or(0), number("devnum").unwrap_or(0));
            devices.push(pb::NodeDevice {
                name: usb_name(&sysfs_name),
                path: self.shown_path(&real),
                sysfs_dir: real.display().to_string(),
                parent,
                driver: link_name(&real.join("driver")).unwrap_or_default(),
                devnodes: vec![pb::DevNode {
                    r#type: pb::DevNodeType::Dev as i32,
                    path: format!("/dev/bus/usb/{bus:03}/{device:03}"),
                }],
                caps: vec![pb::Capability {
                    cap: Some(pb::capability::Cap::UsbDevice(pb::UsbDeviceCap {
                        bus,
                        device,
                        vendor_id: id("idVendor").unwrap_or(0),
                        vendor_name: read(&real.join("manufacturer")).unwrap_or_default(),
                        product_id: id("idProduct").unwrap_or(0),
                        product_name: read(&real.join("product")).unwrap_or_default(),
                    })),
                }],
                ..Default::default()
            });
        }
        devices
    }
}

/// The capability types a device has, for listings: a SCSI host that is a Fibre Channel HBA is
/// also `fc_host`, and one that makes NPIV vports also `vports`.
pub fn cap_types(device: &pb::NodeDevice) -> Vec<pb::CapabilityType> {
    let nested: Vec<pb::CapabilityType> = device
        .caps
        .iter()
        .filter_map(|cap| match cap.cap.as_ref()? {
            pb::capability::Cap::ScsiHost(host) => Some(host),
            _ => None,
        })
        .flat_map(|host| {
            [
                host.fc_host.as_ref().map(|_| pb::CapabilityType::FcHost),
                host.vport_ops.as_ref().map(|_| pb::CapabilityType::Vports),
            ]
        })
        .flatten()
        .collect();
    let mut types: Vec<pb::CapabilityType> = device
        .caps
        .iter()
        .filter_map(|cap| {
            Some(match cap.cap.as_ref()? {
                pb::capability::Cap::System(_) => pb::CapabilityType::System,
                pb::capability::Cap::Pci(_) => pb::CapabilityType::Pci,
                pb::capability::Cap::Net(_) => pb::CapabilityType::Net,
                pb::capability::Cap::UsbDevice(_) => pb::CapabilityType::UsbDevice,
                pb::capability::Cap::Usb(_) => pb::CapabilityType::Usb,
                pb::capability::Cap::ScsiHost(_) => pb::CapabilityType::ScsiHost,
                pb::capability::Cap::ScsiTarget(_) => pb::CapabilityType::ScsiTarget,
                pb::capability::Cap::Scsi(_) => pb::CapabilityType::Scsi,
                pb::capability::Cap::Storage(_) => pb::CapabilityType::Storage,
                pb::capability::Cap::ScsiGeneric(_) => pb::CapabilityType::ScsiGeneric,
                pb::capability::Cap::Drm(_) => pb::CapabilityType::Drm,
                pb::capability::Cap::Mdev(_) => pb::CapabilityType::Mdev,
                pb::capability::Cap::Ccw(_) => pb::CapabilityType::Ccw,
            })
        })
        .collect();
    types.extend(nested);
    types
}
