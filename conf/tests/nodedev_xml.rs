//! Node device XML is pinned by golden files: a PCI PF with VFs in an IOMMU group, a net
//! interface, a disk, an NPIV-capable Fibre Channel HBA, a vHBA and a USB device (VIREO_BLESS=1
//! rewrites them after a deliberate change); and the vHBA XML nodedev-create reads.

#![allow(clippy::unwrap_used)]

mod common;

use vireo_conf::nodedev;
use vireo_proto::nodedev::v1 as pb;

fn address(bus: u32, slot: u32, function: u32) -> pb::PciAddress {
    pb::PciAddress {
        domain: 0,
        bus,
        slot,
        function,
    }
}

#[test]
fn pci_and_net_devices_format_as_libvirt_does() {
    let pf = pb::NodeDevice {
        name: "pci_0000_03_00_0".into(),
        path: "/sys/devices/pci0000:00/0000:00:01.0/0000:03:00.0".into(),
        parent: "pci_0000_00_01_0".into(),
        driver: "igb".into(),
        caps: vec![pb::Capability {
            cap: Some(pb::capability::Cap::Pci(pb::PciCap {
                address: Some(address(3, 0, 0)),
                class_code: 0x020000,
                vendor_id: 0x8086,
                vendor_name: "Intel Corporation".into(),
                product_id: 0x10c9,
                product_name: "82576 Gigabit Network Connection".into(),
                iommu_group: Some(pb::IommuGroup {
                    number: 12,
                    members: vec![address(3, 0, 0), address(3, 0, 1)],
                }),
                numa_node: Some(0),
                virt_functions: vec![address(3, 16, 0), address(3, 16, 2)],
                virt_functions_max_count: 7,
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let mut net = pb::NetCap {
        interface: "eth0".into(),
        address: "52:54:00:12:34:56".into(),
        link_speed_mbit_s: 1000,
        ..Default::default()
    };
    net.set_link_state(pb::NetLinkState::Up);
    let nic = pb::NodeDevice {
        name: "net_eth0_52_54_00_12_34_56".into(),
        path: "/sys/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0".into(),
        parent: "pci_0000_00_03_0".into(),
        caps: vec![pb::Capability {
            cap: Some(pb::capability::Cap::Net(net)),
        }],
        ..Default::default()
    };
    let mut storage = pb::StorageCap {
        block: "/dev/vda".into(),
        bus: "virtio".into(),
        vendor: "0x1af4".into(),
        size_bytes: 274_877_906_944,
        logical_block_size_bytes: 512,
        num_blocks: 536_870_912,
        ..Default::default()
    };
    storage.set_drive_type(pb::DriveType::Disk);
    let disk = pb::NodeDevice {
        name: "block_vda".into(),
        path: "/sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda".into(),
        parent: "pci_0000_00_02_0".into(),
        devnodes: vec![pb::DevNode {
            r#type: pb::DevNodeType::Dev as i32,
            path: "/dev/vda".into(),
        }],
        caps: vec![pb::Capability {
            cap: Some(pb::capability::Cap::Storage(storage)),
        }],
        ..Default::default()
    };
    common::check_golden("nodedev", "disk.out.xml", &nodedev::format(&disk).unwrap());
    common::check_golden("nodedev", "pci-pf.out.xml", &nodedev::format(&pf).unwrap());
    common::check_golden("nodedev", "net.out.xml", &nodedev::format(&nic).unwrap());
}

#[test]
fn scsi_hosts_vhbas_and_usb_devices_format_as_libvirt_does() {
    let hba_path = "/sys/devices/pci0000:00/0000:00:04.0/0000:10:00.0/host5";
    let scsi_host =
        |name: &str, parent: &str, host: u32, wwpn: &str, vports: bool| pb::NodeDevice {
            name: name.into(),
            // A vport's host sits under its HBA's host.
            path: if vports {
                hba_path.to_string()
            } else {
                format!("{hba_path}/vport-5:0-0/host{host}")
            },
            parent: parent.into(),
            caps: vec![pb::Capability {
                cap: Some(pb::capability::Cap::ScsiHost(pb::ScsiHostCap {
                    host,
                    unique_id: Some(host + 1),
                    fc_host: Some(pb::FcHost {
                        wwnn: "2000001b32a9da4e".into(),
                        wwpn: wwpn.into(),
                        fabric_wwn: "2002000573de9a81".into(),
                    }),
                    vport_ops: vports.then_some(pb::VportOps {
                        max_vports: 127,
                        vports: 1,
                    }),
                })),
            }],
            ..Default::default()
        };
    let hba = scsi_host(
        "scsi_host5",
        "pci_0000_10_00_0",
        5,
        "2100001b32a9da4e",
        true,
    );
    let vhba = scsi_host("scsi_host6", "scsi_host5", 6, "2101001b32a9da4e", false);
    let usb = pb::NodeDevice {
        name: "usb_1_1".into(),
        path: "/sys/devices/pci0000:00/0000:00:1d.0/usb1/1-1".into(),
        parent: "usb_usb1".into(),
        driver: "usb".into(),
        devnodes: vec![pb::DevNode {
            r#type: pb::DevNodeType::Dev as i32,
            path: "/dev/bus/usb/001/002".into(),
        }],
        caps: vec![pb::Capability {
            cap: Some(pb::capability::Cap::UsbDevice(pb::UsbDeviceCap {
                bus: 1,
                device: 2,
                vendor_id: 0x0781,
                vendor_name: "SanDisk".into(),
                product_id: 0x5567,
                product_name: "Cruzer Blade".into(),
            })),
        }],
        ..Default::default()
    };
    common::check_golden("nodedev", "fc-hba.out.xml", &nodedev::format(&hba).unwrap());
    common::check_golden("nodedev", "vhba.out.xml", &nodedev::format(&vhba).unwrap());
    common::check_golden("nodedev", "usb.out.xml", &nodedev::format(&usb).unwrap());
}

#[test]
fn vhba_xml_names_its_parent_one_way_and_its_wwns_both_or_neither() {
    use pb::vhba_spec::ParentRef;
    let xml = |parent: &str, wwns: &str| {
        format!(
            "<device><name>new</name>{parent}<capability type='scsi_host'><capability type='fc_host'>{wwns}</capability></capability></device>"
        )
    };
    let spec = nodedev::parse_vhba(&xml(
        "<parent>scsi_host5</parent>",
        "<wwnn>0x2001001B32A9DA4E</wwnn><wwpn>2101001b32a9da4e</wwpn>",
    ))
    .unwrap();
    assert_eq!(
        spec.parent_ref,
        Some(ParentRef::Parent("scsi_host5".into()))
    );
    assert_eq!(
        (spec.wwnn.as_str(), spec.wwpn.as_str()),
        ("2001001b32a9da4e", "2101001b32a9da4e")
    );
    let spec = nodedev::parse_vhba(&xml("<parent fabric_wwn='2002000573de9a81'/>", "")).unwrap();
    assert_eq!(
        spec.parent_ref,
        Some(ParentRef::ParentFabricWwn("2002000573de9a81".into()))
    );
    let error = |parent: &str, wwns: &str| {
        nodedev::parse_vhba(&xml(parent, wwns))
            .unwrap_err()
            .to_string()
    };
    assert!(error("", "").contains("<parent>"));
    assert!(error("<parent wwnn='2000001b32a9da4e'/>", "").starts_with("device/parent:"));
    assert!(
        error(
            "<parent>scsi_host5</parent>",
            "<wwnn>2001001b32a9da4e</wwnn>"
        )
        .contains("both <wwnn> and <wwpn>")
    );
    assert!(
        error(
            "<parent>scsi_host5</parent>",
            "<wwnn>12</wwnn><wwpn>2101001b32a9da4e</wwpn>"
        )
        .starts_with("device/capability/capability/wwnn: '12' is not a WWN")
    );
    assert!(
        nodedev::parse_vhba("<device><parent>scsi_host5</parent><capability type='pci'/></device>")
            .unwrap_err()
            .to_string()
            .contains("vHBAs")
    );
}
