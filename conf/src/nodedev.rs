//! libvirt's node device XML (`<device>`) from `NodeDevice`, as nodedev-dumpxml prints it: the
//! system, PCI, net, storage, SCSI host (Fibre Channel, NPIV vport_ops) and USB device
//! capabilities; and the vHBA XML nodedev-create reads.

use vireo_proto::nodedev::v1 as pb;

use crate::dom::{self, ConfError};
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

fn format_scsi_host(x: &mut XmlWriter, host: &pb::ScsiHostCap) -> Result<(), XmlError> {
    x.open("capability", &[("type", "scsi_host")])?;
    x.text("host", &[], &host.host.to_string())?;
    if let Some(unique_id) = host.unique_id {
        x.text("unique_id", &[], &unique_id.to_string())?;
    }
    if let Some(fc) = &host.fc_host {
        texts_in_capability(
            x,
            "fc_host",
            &[
                ("wwnn", &fc.wwnn),
                ("wwpn", &fc.wwpn),
                ("fabric_wwn", &fc.fabric_wwn),
            ],
        )?;
    }
    if let Some(ops) = &host.vport_ops {
        x.open("capability", &[("type", "vport_ops")])?;
        x.text("max_vports", &[], &ops.max_vports.to_string())?;
        x.text("vports", &[], &ops.vports.to_string())?;
        x.close("capability")?;
    }
    x.close("capability")
}

/// `<capability type=KIND>` holding a text element per non-empty value.
fn texts_in_capability(
    x: &mut XmlWriter,
    kind: &str,
    texts: &[(&str, &String)],
) -> Result<(), XmlError> {
    x.open("capability", &[("type", kind)])?;
    for (name, value) in texts {
        if !value.is_empty() {
            x.text(name, &[], value)?;
        }
    }
    x.close("capability")
}

fn format_usb_device(x: &mut XmlWriter, usb: &pb::UsbDeviceCap) -> Result<(), XmlError> {
    x.open("capability", &[("type", "usb_device")])?;
    x.text("bus", &[], &usb.bus.to_string())?;
    x.text("device", &[], &usb.device.to_string())?;
    x.text(
        "product",
        &[("id", &format!("0x{:04x}", usb.product_id))],
        &usb.product_name,
    )?;
    x.text(
        "vendor",
        &[("id", &format!("0x{:04x}", usb.vendor_id))],
        &usb.vendor_name,
    )?;
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
            pb::capability::Cap::ScsiHost(host) => format_scsi_host(&mut x, host)?,
            pb::capability::Cap::UsbDevice(usb) => format_usb_device(&mut x, usb)?,
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

/// A World Wide Name as libvirt and the kernel write it: 16 hex digits (an `0x` prefix is
/// dropped), lower case.
pub fn check_wwn(text: &str, field: &str) -> Result<String, ConfError> {
    let lower = text.trim().to_ascii_lowercase();
    let digits = lower.trim_start_matches("0x");
    if digits.len() == 16 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(digits.to_string())
    } else {
        Err(ConfError::new(
            field,
            format!("'{}' is not a WWN (16 hex digits)", text.escape_debug()),
        ))
    }
}

/// The vHBA that nodedev-create's XML asks for: `<device>` with a `<parent>` (by name, or by
/// `wwnn=`/`wwpn=` or `fabric_wwn=` attributes) and `<capability type='scsi_host'>` holding
/// `<capability type='fc_host'>` with optional `<wwnn>`/`<wwpn>` (both or neither).
pub fn parse_vhba(xml: &str) -> Result<pb::VhbaSpec, ConfError> {
    let mut root = dom::parse(xml)?;
    if root.name != "device" {
        return Err(root.error(format!(
            "the root element must be <device>, not <{}>",
            root.name
        )));
    }
    let _ = root.child_text("name")?;
    let mut spec = pb::VhbaSpec::default();
    let mut parent = root
        .child("parent")
        .ok_or_else(|| root.error("a vHBA names its <parent> HBA"))?;
    let wwnn = parent.attr("wwnn");
    let wwpn = parent.attr("wwpn");
    let fabric = parent.attr("fabric_wwn");
    let name = parent.text();
    spec.parent_ref = Some(match (wwnn, wwpn, fabric) {
        (Some(wwnn), Some(wwpn), None) => pb::vhba_spec::ParentRef::ParentWwns(pb::ParentWwns {
            wwnn: check_wwn(&wwnn, &parent.field("wwnn"))?,
            wwpn: check_wwn(&wwpn, &parent.field("wwpn"))?,
        }),
        (None, None, Some(fabric)) => pb::vhba_spec::ParentRef::ParentFabricWwn(check_wwn(
            &fabric,
            &parent.field("fabric_wwn"),
        )?),
        (None, None, None) if !name.trim().is_empty() => {
            pb::vhba_spec::ParentRef::Parent(name.trim().to_string())
        }
        _ => {
            return Err(parent
                .error("name the parent HBA by its name, by wwnn= and wwpn=, or by fabric_wwn="));
        }
    });
    parent.finish()?;
    let mut scsi_host = root
        .children("capability")
        .into_iter()
        .find(|c| c.name == "capability")
        .ok_or_else(|| root.error("a vHBA has <capability type='scsi_host'>"))?;
    let kind = scsi_host.required_attr("type")?;
    if kind != "scsi_host" {
        return Err(scsi_host.attr_error(
            "type",
            format!("'{kind}': nodedev-create makes vHBAs (scsi_host)"),
        ));
    }
    let mut fc = scsi_host
        .child("capability")
        .ok_or_else(|| scsi_host.error("a vHBA has <capability type='fc_host'>"))?;
    let kind = fc.required_attr("type")?;
    if kind != "fc_host" {
        return Err(fc.attr_error("type", format!("'{kind}' is not fc_host")));
    }
    let wwnn_field = format!("{}/wwnn", fc.field("type").trim_end_matches("@type"));
    let wwpn_field = format!("{}/wwpn", fc.field("type").trim_end_matches("@type"));
    let wwnn = fc.child_text("wwnn")?;
    let wwpn = fc.child_text("wwpn")?;
    let _ = fc.child_text("fabric_wwn")?;
    match (wwnn, wwpn) {
        (Some(wwnn), Some(wwpn)) => {
            spec.wwnn = check_wwn(&wwnn, &wwnn_field)?;
            spec.wwpn = check_wwn(&wwpn, &wwpn_field)?;
        }
        (None, None) => {}
        _ => {
            return Err(fc.error("give both <wwnn> and <wwpn>, or neither to have them made"));
        }
    }
    fc.finish()?;
    let _ = scsi_host.child_text("host")?;
    let _ = scsi_host.child_text("unique_id")?;
    scsi_host.finish()?;
    root.finish()?;
    Ok(spec)
}
