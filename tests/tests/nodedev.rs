//! svc-nodedev against this machine's real sysfs, read-only: every PCI function listed with the
//! vendor, product and class sysfs gives, the host bridge among them, net interfaces under their
//! PCI parents, the tree rooted at `computer`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use vireo_tests::{Server, fails, ok};

fn sysfs_hex(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

#[test]
fn the_real_pci_functions_and_net_interfaces_are_listed_as_sysfs_has_them() {
    let server = Server::vireod();
    let listed = ok(&server, &["nodedev-list", "--cap", "pci"]);
    let mut bridges = 0;
    for entry in std::fs::read_dir("/sys/bus/pci/devices").unwrap().flatten() {
        let address = entry.file_name().to_string_lossy().into_owned();
        let name = format!("pci_{}", address.replace([':', '.'], "_"));
        assert!(
            listed.lines().any(|line| line == name),
            "{name} not in {listed}"
        );
        let xml = ok(&server, &["nodedev-dumpxml", &name]);
        let vendor = sysfs_hex(&entry.path().join("vendor"));
        let product = sysfs_hex(&entry.path().join("device"));
        let class = sysfs_hex(&entry.path().join("class"));
        assert!(
            xml.contains(&format!("<vendor id='{vendor}'")),
            "{name}: {xml}"
        );
        assert!(
            xml.contains(&format!("<product id='{product}'")),
            "{name}: {xml}"
        );
        assert!(
            xml.contains(&format!("<class>{class}</class>")),
            "{name}: {xml}"
        );
        if class.starts_with("0x0600") {
            bridges += 1;
            assert!(xml.contains("<parent>computer</parent>"), "{xml}");
        }
    }
    assert!(bridges >= 1, "no host bridge among {listed}");

    // Net interfaces sit under the PCI function they belong to.
    for entry in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
        let interface = entry.file_name().to_string_lossy().into_owned();
        let mac = sysfs_hex(&entry.path().join("address"));
        let name = format!("net_{interface}_{}", mac.replace(':', "_"));
        let info = ok(&server, &["nodedev-info", &name]);
        assert!(info.starts_with("Name:           net_"), "{info}");
        let Ok(device) = std::fs::canonicalize(entry.path().join("device")) else {
            assert!(info.contains("computer"), "{info}");
            continue;
        };
        let parent = device
            .ancestors()
            .filter_map(|dir| dir.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .find(|n| n.matches(':').count() == 2)
            .map(|address| format!("pci_{}", address.replace([':', '.'], "_")))
            .unwrap();
        assert!(
            info.contains(&parent),
            "{name} should sit under {parent}: {info}"
        );
    }

    // Whole disks backed by hardware, with the size sysfs gives.
    for entry in std::fs::read_dir("/sys/class/block").unwrap().flatten() {
        let real = std::fs::canonicalize(entry.path()).unwrap();
        if real.join("partition").exists() || !real.join("device").exists() {
            continue;
        }
        let dev = entry.file_name().to_string_lossy().into_owned();
        let storage = ok(&server, &["nodedev-list", "--cap", "storage"]);
        let name = storage
            .lines()
            .find(|line| {
                *line == format!("block_{dev}") || line.starts_with(&format!("block_{dev}_"))
            })
            .unwrap_or_else(|| panic!("no block_{dev} in {storage}"))
            .to_string();
        let xml = ok(&server, &["nodedev-dumpxml", &name]);
        let sectors: u64 = sysfs_hex(&real.join("size")).parse().unwrap();
        assert!(xml.contains(&format!("<block>/dev/{dev}</block>")), "{xml}");
        assert!(
            xml.contains(&format!("<size>{}</size>", sectors * 512)),
            "{xml}"
        );
    }

    let tree = ok(&server, &["nodedev-list", "--tree"]);
    assert!(tree.starts_with("computer\n"), "{tree}");
    assert!(tree.contains("+- pci_"), "{tree}");
    let root = ok(&server, &["nodedev-dumpxml", "computer"]);
    assert!(root.contains("<capability type='system'>"), "{root}");
    let missing = fails(&server, &["nodedev-dumpxml", "pci_9999_99_99_9"]);
    assert!(
        missing.contains("Could not find matching device"),
        "{missing}"
    );
    let refused = fails(&server, &["nodedev-list", "--cap", "floppy"]);
    assert!(refused.contains("floppy"), "{refused}");
}

#[test]
fn pci_functions_detach_to_vfio_and_reattach_in_a_fake_sysfs() {
    use vireo_tests::fake_sysfs::{FakePci, FakeSysfs};
    let sysfs = FakeSysfs::build(&[
        FakePci {
            address: "0000:00:00.0",
            vendor: 0x8086,
            device: 0x29c0,
            class: 0x060000,
            driver: None,
            iommu_group: Some(0),
            ..FakePci::default()
        },
        FakePci {
            address: "0000:00:19.0",
            vendor: 0x8086,
            device: 0x10ea,
            class: 0x020000,
            driver: Some("e1000e"),
            iommu_group: Some(5),
            ..FakePci::default()
        },
        FakePci {
            address: "0000:00:19.1",
            vendor: 0x8086,
            device: 0x10eb,
            class: 0x020000,
            driver: None,
            iommu_group: Some(5),
            ..FakePci::default()
        },
        FakePci {
            address: "0000:00:1b.0",
            vendor: 0x8086,
            device: 0x293e,
            class: 0x040300,
            driver: Some("snd_hda_intel"),
            iommu_group: Some(6),
            ..FakePci::default()
        },
        FakePci {
            address: "0000:00:1b.1",
            vendor: 0x8086,
            device: 0x10ea,
            class: 0x020000,
            driver: Some("e1000e"),
            iommu_group: Some(6),
            ..FakePci::default()
        },
        FakePci {
            address: "0000:00:1a.0",
            vendor: 0x8086,
            device: 0x3b3c,
            class: 0x0c0320,
            driver: Some("ehci-pci"),
            iommu_group: None,
            ..FakePci::default()
        },
        FakePci {
            address: "0000:03:00.0",
            vendor: 0x8086,
            device: 0x10c9,
            class: 0x020000,
            driver: Some("igb"),
            iommu_group: Some(7),
            total_vfs: 7,
            vf_driver: Some("igbvf"),
            net_interface: Some("enp3s0f0"),
        },
    ]);
    let (server, _config) = sysfs.vireod(&[]);
    let listed = ok(&server, &["nodedev-list", "--cap", "pci"]);
    assert_eq!(
        listed.lines().filter(|l| l.starts_with("pci_")).count(),
        7,
        "{listed}"
    );
    let xml = ok(&server, &["nodedev-dumpxml", "pci_0000_00_19_0"]);
    assert!(
        xml.contains("<iommuGroup number='5'>") && xml.contains("function='0x1'"),
        "{xml}"
    );

    // Another member of the group is still the host's: refused, naming it, nothing changed.
    let refused = fails(&server, &["nodedev-detach", "pci_0000_00_1b_0"]);
    assert!(refused.contains("0000:00:1b.1"), "{refused}");
    assert_eq!(
        sysfs.driver_of("0000:00:1b.0").as_deref(),
        Some("snd_hda_intel")
    );
    // No IOMMU group at all: refused, saying why.
    let refused = fails(&server, &["nodedev-detach", "pci_0000_00_1a_0"]);
    assert!(refused.contains("IOMMU"), "{refused}");
    // A function whose sibling no driver holds, then the sibling (the seed's spelling).
    ok(
        &server,
        &["nodedev-detach", "pci_0000_00_19_0", "--driver", "vfio"],
    );
    assert_eq!(sysfs.driver_of("0000:00:19.0").as_deref(), Some("vfio-pci"));
    assert!(ok(&server, &["nodedev-dettach", "pci_0000_00_19_1"]).contains("detached"));
    assert_eq!(sysfs.driver_of("0000:00:19.1").as_deref(), Some("vfio-pci"));
    let xml = ok(&server, &["nodedev-dumpxml", "pci_0000_00_19_0"]);
    assert!(xml.contains("<name>vfio-pci</name>"), "{xml}");
    ok(&server, &["nodedev-reset", "pci_0000_00_19_0"]);
    // Back to the host driver.
    assert!(ok(&server, &["nodedev-reattach", "pci_0000_00_19_0"]).contains("re-attached"));
    assert_eq!(sysfs.driver_of("0000:00:19.0").as_deref(), Some("e1000e"));
    let refused = fails(&server, &["nodedev-reset", "pci_0000_00_19_0"]);
    assert!(refused.contains("not detached"), "{refused}");
    let refused = fails(
        &server,
        &["nodedev-detach", "pci_0000_00_19_0", "--driver", "nouveau"],
    );
    assert!(refused.contains("nouveau"), "{refused}");

    // SR-IOV: three VFs on the PF, each its own device under the PF's driver for VFs.
    let set_vfs = |count: u32| {
        vireo_tests::block_on(async {
            let mut client =
                vireo_proto::nodedev::v1::node_device_service_client::NodeDeviceServiceClient::new(
                    server.connect().await,
                );
            client
                .set_sriov_vf_count(vireo_proto::nodedev::v1::SetSriovVfCountRequest {
                    device: Some(vireo_proto::common::v1::ObjectRef {
                        key: Some(vireo_proto::common::v1::object_ref::Key::Name(
                            "pci_0000_03_00_0".into(),
                        )),
                    }),
                    num_vfs: count,
                    ..Default::default()
                })
                .await
                .map(tonic::Response::into_inner)
        })
    };
    let info = set_vfs(3).unwrap();
    assert_eq!((info.num_vfs, info.total_vfs, info.vfs.len()), (3, 7, 3));
    assert_eq!(info.vfs[2].name, "pci_0000_03_10_2");
    assert_eq!(info.vfs[0].driver, "igbvf");
    let pf = ok(&server, &["nodedev-dumpxml", "pci_0000_03_00_0"]);
    assert!(
        pf.contains("<capability type='virt_functions' maxCount='7'>")
            && pf.contains("slot='0x10' function='0x2'"),
        "{pf}"
    );
    let vf = ok(&server, &["nodedev-dumpxml", "pci_0000_03_10_0"]);
    assert!(vf.contains("<capability type='phys_function'>"), "{vf}");
    // A VF held for a guest keeps the count; given back, the VFs can go.
    ok(&server, &["nodedev-detach", "pci_0000_03_10_0"]);
    let refused = set_vfs(0).unwrap_err();
    assert!(
        refused.message().contains("pci_0000_03_10_0"),
        "{refused:?}"
    );
    ok(&server, &["nodedev-reattach", "pci_0000_03_10_0"]);
    assert_eq!(set_vfs(0).unwrap().vfs.len(), 0);
    assert!(!ok(&server, &["nodedev-list"]).contains("pci_0000_03_10_0"));
    let refused = set_vfs(8).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
}

const HBA_WWNN: &str = "20000024ff0a1b2c";
const HBA_WWPN: &str = "21000024ff0a1b2c";
const FABRIC: &str = "100000051e02bc53";

fn vhba_xml(parent: &str, wwns: &str) -> String {
    format!(
        "<device>
  {parent}
  <capability type='scsi_host'>
    <capability type='fc_host'>{wwns}</capability>
  </capability>
</device>"
    )
}

#[test]
fn npiv_vhbas_scsi_hosts_and_usb_devices_in_a_fake_sysfs() {
    use vireo_tests::fake_sysfs::{FakeFcHost, FakePci, FakeSysfs, FakeUsb};
    let sysfs = FakeSysfs::build(&[
        FakePci {
            address: "0000:05:00.0",
            vendor: 0x1077,
            device: 0x2532,
            class: 0x0c0400,
            driver: Some("qla2xxx"),
            iommu_group: Some(20),
            ..FakePci::default()
        },
        FakePci {
            address: "0000:06:00.0",
            vendor: 0x1000,
            device: 0x0097,
            class: 0x010700,
            driver: Some("mpt3sas"),
            iommu_group: Some(21),
            ..FakePci::default()
        },
        FakePci {
            address: "0000:00:1d.0",
            vendor: 0x8086,
            device: 0x3a3a,
            class: 0x0c0320,
            driver: Some("ehci-pci"),
            iommu_group: Some(22),
            ..FakePci::default()
        },
    ]);
    // Hosts 0-2 on the SAS controller, 5 the FC port: a new vHBA takes the lowest free number.
    for host in 0..3 {
        sysfs.add_scsi_host("0000:06:00.0", host);
    }
    sysfs.add_fc_host(&FakeFcHost {
        pci: "0000:05:00.0",
        host: 5,
        wwnn: HBA_WWNN,
        wwpn: HBA_WWPN,
        fabric_wwn: FABRIC,
        max_vports: 2,
    });
    sysfs.add_usb(&FakeUsb {
        pci: "0000:00:1d.0",
        bus: 1,
        port: "1-1",
        device: 2,
        vendor: 0x0781,
        product: 0x5567,
        manufacturer: "SanDisk",
        product_name: "Cruzer Blade",
    });
    let (server, dir) = sysfs.vireod(&[]);
    let list = |cap: &str| ok(&server, &["nodedev-list", "--cap", cap]);
    assert_eq!(
        list("scsi_host").trim(),
        "scsi_host0\nscsi_host1\nscsi_host2\nscsi_host5"
    );
    assert_eq!(list("fc_host").trim(), "scsi_host5");
    assert_eq!(list("vports").trim(), "scsi_host5");
    assert_eq!(list("usb_device").trim(), "usb_1_1\nusb_usb1");

    let hba = ok(&server, &["nodedev-dumpxml", "scsi_host5"]);
    for expected in [
        "<parent>pci_0000_05_00_0</parent>",
        "<host>5</host>",
        "<unique_id>6</unique_id>",
        "<capability type='fc_host'>",
        &format!("<wwnn>{HBA_WWNN}</wwnn>"),
        &format!("<wwpn>{HBA_WWPN}</wwpn>"),
        &format!("<fabric_wwn>{FABRIC}</fabric_wwn>"),
        "<capability type='vport_ops'>",
        "<max_vports>2</max_vports>",
        "<vports>0</vports>",
    ] {
        assert!(hba.contains(expected), "{expected} in {hba}");
    }
    let sas = ok(&server, &["nodedev-dumpxml", "scsi_host2"]);
    assert!(
        sas.contains("<parent>pci_0000_06_00_0</parent>") && !sas.contains("fc_host"),
        "{sas}"
    );
    let usb = ok(&server, &["nodedev-dumpxml", "usb_1_1"]);
    for expected in [
        "<parent>usb_usb1</parent>",
        "<devnode type='dev'>/dev/bus/usb/001/002</devnode>",
        "<capability type='usb_device'>",
        "<bus>1</bus>",
        "<device>2</device>",
        "<product id='0x5567'>Cruzer Blade</product>",
        "<vendor id='0x0781'>SanDisk</vendor>",
    ] {
        assert!(usb.contains(expected), "{expected} in {usb}");
    }
    assert!(
        ok(&server, &["nodedev-dumpxml", "usb_usb1"]).contains("<parent>pci_0000_00_1d_0</parent>")
    );

    // nodedev-create: a vHBA on scsi_host5 with the WWNs given, as the seed's XML has it.
    let write = |name: &str, xml: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, xml).unwrap();
        file.to_str().unwrap().to_string()
    };
    let given = write(
        "vhba.xml",
        &vhba_xml(
            "<parent>scsi_host5</parent>",
            "<wwnn>2001001b32a9da4e</wwnn><wwpn>2101001b32a9da4e</wwpn>",
        ),
    );
    let created = ok(&server, &["nodedev-create", &given]);
    assert_eq!(
        created.trim(),
        format!("Node device scsi_host3 created from {given}")
    );
    let vhba = ok(&server, &["nodedev-dumpxml", "scsi_host3"]);
    assert!(
        vhba.contains("<parent>scsi_host5</parent>")
            && vhba.contains("<wwpn>2101001b32a9da4e</wwpn>")
            && vhba.contains(&format!("<fabric_wwn>{FABRIC}</fabric_wwn>"))
            && !vhba.contains("vport_ops"),
        "{vhba}"
    );
    assert_eq!(list("fc_host").trim(), "scsi_host3\nscsi_host5");
    assert!(ok(&server, &["nodedev-dumpxml", "scsi_host5"]).contains("<vports>1</vports>"));
    let info = ok(&server, &["nodedev-info", "scsi_host3"]);
    assert!(
        info.contains("Name:           scsi_host3") && info.contains("Parent:         scsi_host5"),
        "{info}"
    );
    let tree = ok(&server, &["nodedev-list", "--tree"]);
    let at = tree.find("scsi_host5").unwrap();
    assert!(tree[at..].contains("+- scsi_host3"), "{tree}");

    // The same port name twice, a host that makes no vports, one that is not there, a bad WWN.
    let refused = fails(&server, &["nodedev-create", &given]);
    assert!(
        refused.contains("wwpn") && refused.contains("scsi_host3"),
        "{refused}"
    );
    let no_vports = write("sas.xml", &vhba_xml("<parent>scsi_host2</parent>", ""));
    let refused = fails(&server, &["nodedev-create", &no_vports]);
    assert!(refused.contains("parent"), "{refused}");
    let missing = write("missing.xml", &vhba_xml("<parent>scsi_host99</parent>", ""));
    let refused = fails(&server, &["nodedev-create", &missing]);
    assert!(refused.contains("scsi_host99"), "{refused}");
    let bad = write(
        "bad.xml",
        &vhba_xml(
            "<parent>scsi_host5</parent>",
            "<wwnn>xyz</wwnn><wwpn>2101001b32a9da4f</wwpn>",
        ),
    );
    let refused = fails(&server, &["nodedev-create", &bad]);
    assert!(
        refused.contains("wwnn") && refused.contains("xyz"),
        "{refused}"
    );
    assert_eq!(list("fc_host").trim(), "scsi_host3\nscsi_host5");

    // Named by the HBA's own WWNs, with WWNs made up as libvirt makes them; then the HBA is
    // full (max_vports 2) and the fabric finds no other.
    let by_wwns = write(
        "by-wwns.xml",
        &vhba_xml(
            &format!("<parent wwnn='{HBA_WWNN}' wwpn='{HBA_WWPN}'/>"),
            "",
        ),
    );
    assert!(ok(&server, &["nodedev-create", &by_wwns]).contains("scsi_host4"));
    let made_up = ok(&server, &["nodedev-dumpxml", "scsi_host4"]);
    assert!(made_up.contains("<wwpn>5001a4a"), "{made_up}");
    let by_fabric = write(
        "by-fabric.xml",
        &vhba_xml(&format!("<parent fabric_wwn='{FABRIC}'/>"), ""),
    );
    let refused = fails(&server, &["nodedev-create", &by_fabric]);
    assert!(refused.contains("fabric"), "{refused}");

    // Only vHBAs are destroyed; they go, and the HBA counts them out.
    let refused = fails(&server, &["nodedev-destroy", "scsi_host5"]);
    assert!(refused.contains("not a vHBA"), "{refused}");
    let refused = fails(&server, &["nodedev-destroy", "scsi_host2"]);
    assert!(refused.contains("only vHBAs"), "{refused}");
    for vhba in ["scsi_host3", "scsi_host4"] {
        assert_eq!(
            ok(&server, &["nodedev-destroy", vhba]).trim(),
            format!("Destroyed node device '{vhba}'")
        );
    }
    assert_eq!(list("fc_host").trim(), "scsi_host5");
    assert!(ok(&server, &["nodedev-dumpxml", "scsi_host5"]).contains("<vports>0</vports>"));
    assert!(ok(&server, &["nodedev-create", &by_fabric]).contains("Node device scsi_host"));

    // Through the API, WWNs are taken in any case and with `0x`, and kept as sysfs shows them:
    // the same port name again, written differently, is the same port.
    let create = |wwpn: &str| {
        vireo_tests::block_on(async {
            let mut client =
                vireo_proto::nodedev::v1::node_device_service_client::NodeDeviceServiceClient::new(
                    server.connect().await,
                );
            client
                .create_node_device(vireo_proto::nodedev::v1::CreateNodeDeviceRequest {
                    source: Some(
                        vireo_proto::nodedev::v1::create_node_device_request::Source::Vhba(
                            vireo_proto::nodedev::v1::VhbaSpec {
                                parent_ref: Some(
                                    vireo_proto::nodedev::v1::vhba_spec::ParentRef::Parent(
                                        "scsi_host5".into(),
                                    ),
                                ),
                                wwnn: "0x2001001B32A9DA50".into(),
                                wwpn: wwpn.into(),
                            },
                        ),
                    ),
                    ..Default::default()
                })
                .await
                .map(tonic::Response::into_inner)
        })
    };
    let made = create("0X2101001B32A9DA50").unwrap();
    let xml = ok(&server, &["nodedev-dumpxml", &made.name]);
    assert!(xml.contains("<wwpn>2101001b32a9da50</wwpn>"), "{xml}");
    let again = create("2101001b32a9da50").unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
    let sas = fails(&server, &["nodedev-create", &no_vports]);
    assert!(
        sas.contains("scsi_host2 is not a Fibre Channel HBA"),
        "{sas}"
    );
}

/// VF settings go to the kernel through netlink on the PF's interface. No machine here has an
/// SR-IOV NIC, so the PF's interface is a veth in a namespace of the test's own: the request
/// reaches the real kernel, which answers that this driver has no VF settings; what is wrong
/// with a request is refused before that.
#[test]
fn vf_settings_are_checked_then_sent_to_the_pf_driver_through_netlink() {
    use vireo_tests::fake_sysfs::{FakePci, FakeSysfs};
    let netns = match vireo_tests::Netns::create("vf") {
        Ok(netns) => netns,
        Err(missing) => {
            eprintln!("SKIPPED: needs {missing}");
            return;
        }
    };
    netns.ok(
        "ip",
        &[
            "link", "add", "enp3s0f0", "type", "veth", "peer", "name", "peer0",
        ],
    );
    let sysfs = FakeSysfs::build(&[FakePci {
        address: "0000:03:00.0",
        vendor: 0x8086,
        device: 0x10c9,
        class: 0x020000,
        driver: Some("igb"),
        iommu_group: Some(7),
        total_vfs: 7,
        vf_driver: Some("igbvf"),
        net_interface: Some("enp3s0f0"),
    }]);
    let (server, _dir) = sysfs.vireod(&["ip", "netns", "exec", &netns.0]);
    let listed = ok(
        &server,
        &["nodedev-sriov", "pci_0000_03_00_0", "--count", "2"],
    );
    assert!(
        listed.starts_with("pci_0000_03_00_0: 2 of 7 VFs (interface enp3s0f0)")
            && listed.contains("pci_0000_03_10_1"),
        "{listed}"
    );
    let nets = ok(&server, &["nodedev-list", "--cap", "net"]);
    assert_eq!(nets.trim(), "net_enp3s0f0_52_54_00_00_00_01", "{nets}");
    let config = |extra: &[&str]| {
        let mut args = vec!["nodedev-vf-config", "pci_0000_03_00_0"];
        args.extend_from_slice(extra);
        fails(&server, &args)
    };
    let refused = config(&["1", "--mac", "52:54:00:aa:bb:01", "--vlan", "10"]);
    assert!(
        refused.contains("enp3s0f0: its driver does not support VF settings"),
        "{refused}"
    );
    let status_of = |mac: &str| {
        vireo_tests::block_on(async {
            let mut client =
                vireo_proto::nodedev::v1::node_device_service_client::NodeDeviceServiceClient::new(
                    server.connect().await,
                );
            client
                .set_vf_config(vireo_proto::nodedev::v1::SetVfConfigRequest {
                    device: Some(vireo_proto::common::v1::ObjectRef {
                        key: Some(vireo_proto::common::v1::object_ref::Key::Name(
                            "pci_0000_03_00_0".into(),
                        )),
                    }),
                    vf_index: 1,
                    mac: Some(mac.into()),
                    ..Default::default()
                })
                .await
                .unwrap_err()
                .code()
        })
    };
    assert_eq!(
        status_of("52:54:00:aa:bb:01"),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(status_of("01:00:5e:00:00:01"), tonic::Code::InvalidArgument);
    for (args, expected) in [
        (
            &["5", "--mac", "52:54:00:aa:bb:01"][..],
            "vf_index: pci_0000_03_00_0 has no VF 5",
        ),
        (
            &["1", "--mac", "01:00:5e:00:00:01"][..],
            "mac: '01:00:5e:00:00:01' is a multicast",
        ),
        (&["1", "--vlan", "5000"][..], "vlan_id"),
        (&["1", "--qos", "3"][..], "vlan_qos"),
        (&["1", "--state", "sideways"][..], "--state"),
        (&["1"][..], "give at least one setting"),
    ] {
        let refused = config(args);
        assert!(refused.contains(expected), "{args:?}: {refused}");
    }
}
