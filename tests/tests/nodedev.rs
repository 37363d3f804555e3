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
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vireo.toml");
    std::fs::write(
        &config,
        format!(
            "[network]\ndefault_network = false\n[nodedev]\nsysfs_root = \"{}\"\n",
            sysfs.root().display()
        ),
    )
    .unwrap();
    let server = Server::vireod_with(&[], &["--config", config.to_str().unwrap()]);
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
