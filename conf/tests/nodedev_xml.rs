//! Node device XML is pinned by golden files: a PCI PF with VFs in an IOMMU group, a net
//! interface and a disk (VIREO_BLESS=1 rewrites them after a deliberate change).

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
