//! libvirt's node device XML (`<device>`) from `NodeDevice`, as nodedev-dumpxml prints it: the
//! system, PCI, net and storage capabilities.

use vireo_proto::nodedev::v1 as pb;

use crate::xml::{XmlError, XmlWriter};

fn format_address(x: &mut XmlWriter, address: &pb::PciAddress) -> Result<(), XmlError> {
    x.empty(
        "address",
        &[
            ("domain", &format!("0x{:04x}", address.domain)),
            ("bus", &format!("0x{:02x}", address.bus)),
            ("slot", &format!("0x{:02x}", address.slot)),
            ("function", &format!("0x{:x}", address.function)),
        ],
    )
}

fn format_pci(x: &mut XmlWriter, pci: &pb::PciCap) -> Result<(), XmlError> {
    x.open("capability", &[("type", "pci")])?;
    x.text("class", &[], &format!("0x{:06x}", pci.class_code))?;
    let address = pci.address.unwrap_or_default();
    x.text("domain", &[], &address.domain.to_string())?;
    x.text("bus", &[], &address.bus.to_string())?;
    x.text("slot", &[], &address.slot.to_string())?;
    x.text("function", &[], &address.function.to_string())?;
    let id = |value: u32| format!("0x{value:04x}");
    for (name, value, label) in [
        ("product", pci.product_id, &pci.product_name),
        ("vendor", pci.vendor_id, &pci.vendor_name),
    ] {
        if label.is_empty() {
            x.empty(name, &[("id", &id(value))])?;
        } else {
            x.text(name, &[("id", &id(value))], label)?;
        }
    }
    if let Some(pf) = &pci.phys_function {
        x.open("capability", &[("type", "phys_function")])?;
        format_address(x, pf)?;
        x.close("capability")?;
    }
    if pci.virt_functions_max_count > 0 {
        let count = pci.virt_functions_max_count.to_string();
        if pci.virt_functions.is_empty() {
            x.empty(
                "capability",
                &[("type", "virt_functions"), ("maxCount", &count)],
            )?;
        } else {
            x.open(
                "capability",
                &[("type", "virt_functions"), ("maxCount", &count)],
            )?;
            for vf in &pci.virt_functions {
                format_address(x, vf)?;
            }
            x.close("capability")?;
        }
    }
    if pci.bridge {
        x.empty("capability", &[("type", "pci-bridge")])?;
    }
    if let Some(group) = &pci.iommu_group {
        x.open("iommuGroup", &[("number", &group.number.to_string())])?;
        for member in &group.members {
            format_address(x, member)?;
        }
        x.close("iommuGroup")?;
    }
    if let Some(node) = pci.numa_node {
        x.empty("numa", &[("node", &node.to_string())])?;
    }
    x.close("capability")
}

fn format_net(x: &mut XmlWriter, net: &pb::NetCap) -> Result<(), XmlError> {
    x.open("capability", &[("type", "net")])?;
    x.text("interface", &[], &net.interface)?;
    if !net.address.is_empty() {
        x.text("address", &[], &net.address)?;
    }
    let state = match net.link_state() {
        pb::NetLinkState::Up => "up",
        pb::NetLinkState::Down => "down",
        pb::NetLinkState::LowerLayerDown => "lowerlayerdown",
        pb::NetLinkState::Dormant => "dormant",
        pb::NetLinkState::Testing => "testing",
        pb::NetLinkState::NotPresent => "notpresent",
        _ => "unknown",
    };
    if net.link_speed_mbit_s > 0 {
        x.empty(
            "link",
            &[
                ("speed", &net.link_speed_mbit_s.to_string()),
                ("state", state),
            ],
        )?;
    } else {
        x.empty("link", &[("state", state)])?;
    }
    for feature in &net.features {
        x.empty("feature", &[("name", feature)])?;
    }
    let kind = match net.kind() {
        pb::NetKind::Wireless => "80211",
        _ => "80203",
    };
    x.empty("capability", &[("type", kind)])?;
    x.close("capability")
}

/// `<parent>` holding a text element per non-empty value.
fn texts_in(x: &mut XmlWriter, parent: &str, texts: &[(&str, &String)]) -> Result<(), XmlError> {
    x.open(parent, &[])?;
    for (name, value) in texts {
        if !value.is_empty() {
            x.text(name, &[], value)?;
        }
    }
    x.close(parent)
}

fn format_storage(x: &mut XmlWriter, storage: &pb::StorageCap) -> Result<(), XmlError> {
    x.open("capability", &[("type", "storage")])?;
    x.text("block", &[], &storage.block)?;
    if !storage.bus.is_empty() {
        x.text("bus", &[], &storage.bus)?;
    }
    let drive = match storage.drive_type() {
        pb::DriveType::Cdrom => "cdrom",
        pb::DriveType::Floppy => "floppy",
        pb::DriveType::Sd => "sd",
        _ => "disk",
    };
    x.text("drive_type", &[], drive)?;
    for (name, value) in [
        ("model", &storage.model),
        ("vendor", &storage.vendor),
        ("serial", &storage.serial),
    ] {
        if !value.is_empty() {
            x.text(name, &[], value)?;
        }
    }
    x.text("size", &[], &storage.size_bytes.to_string())?;
    x.text(
        "logical_block_size",
        &[],
        &storage.logical_block_size_bytes.to_string(),
    )?;
    x.text("num_blocks", &[], &storage.num_blocks.to_string())?;
    x.close("capability")
}

fn format_system(x: &mut XmlWriter, system: &pb::SystemCap) -> Result<(), XmlError> {
    x.open("capability", &[("type", "system")])?;
    if !system.product.is_empty() {
        x.text("product", &[], &system.product)?;
    }
    let hardware = system.hardware.clone().unwrap_or_default();
    texts_in(
        x,
        "hardware",
        &[
            ("vendor", &hardware.vendor),
            ("version", &hardware.version),
            ("serial", &hardware.serial),
            ("uuid", &hardware.uuid),
        ],
    )?;
    let firmware = system.firmware.clone().unwrap_or_default();
    texts_in(
        x,
        "firmware",
        &[
            ("vendor", &firmware.vendor),
            ("version", &firmware.version),
            ("release_date", &firmware.release_date),
        ],
    )?;
    x.close("capability")
}

/// The device as libvirt's node device XML.
pub fn format(device: &pb::NodeDevice) -> Result<String, XmlError> {
    let mut x = XmlWriter::new();
    x.open("device", &[])?;
    x.text("name", &[], &device.name)?;
    if !device.path.is_empty() {
        x.text("path", &[], &device.path)?;
    }
    for devnode in &device.devnodes {
        let kind = if devnode.r#type == pb::DevNodeType::Link as i32 {
            "link"
        } else {
            "dev"
        };
        x.text("devnode", &[("type", kind)], &devnode.path)?;
    }
    if !device.parent.is_empty() {
        x.text("parent", &[], &device.parent)?;
    }
    if !device.driver.is_empty() {
        x.open("driver", &[])?;
        x.text("name", &[], &device.driver)?;
        x.close("driver")?;
    }
    for cap in device.caps.iter().filter_map(|cap| cap.cap.as_ref()) {
        match cap {
            pb::capability::Cap::System(system) => format_system(&mut x, system)?,
            pb::capability::Cap::Pci(pci) => format_pci(&mut x, pci)?,
            pb::capability::Cap::Net(net) => format_net(&mut x, net)?,
            pb::capability::Cap::Storage(storage) => format_storage(&mut x, storage)?,
            _ => {}
        }
    }
    x.close("device")?;
    Ok(x.finish())
}

/// nodedev-list's word for a capability type (`--cap pci,net`).
pub const CAPABILITY_TYPES: crate::domain::Table<pb::CapabilityType> = &[
    ("system", pb::CapabilityType::System),
    ("pci", pb::CapabilityType::Pci),
    ("usb_device", pb::CapabilityType::UsbDevice),
    ("usb", pb::CapabilityType::Usb),
    ("net", pb::CapabilityType::Net),
    ("scsi_host", pb::CapabilityType::ScsiHost),
    ("scsi_target", pb::CapabilityType::ScsiTarget),
    ("scsi", pb::CapabilityType::Scsi),
    ("storage", pb::CapabilityType::Storage),
    ("fc_host", pb::CapabilityType::FcHost),
    ("vports", pb::CapabilityType::Vports),
    ("scsi_generic", pb::CapabilityType::ScsiGeneric),
    ("drm", pb::CapabilityType::Drm),
    ("mdev", pb::CapabilityType::Mdev),
    ("ccw", pb::CapabilityType::Ccw),
];
