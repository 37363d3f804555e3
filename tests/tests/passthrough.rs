//! `<hostdev>` PCI passthrough, proved as far as a host without an IOMMU allows. The devices live
//! in the fake sysfs tree (svc-nodedev's root), so managed mode really unbinds and rebinds them;
//! then each engine goes as far as it can: QEMU opens the device's IOMMU group (/dev/vfio/N),
//! vireo-vmm creates KVM's VFIO device and opens the VFIO container (/dev/vfio/vfio). Both are
//! the first steps that need the host's VFIO, and the errors say so. Every failed start gives
//! the device back to its host driver and keeps the definition.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use vireo_tests::fake_sysfs::{FakePci, FakeSysfs};
use vireo_tests::{Server, fails, kit_files, kvm_usable, ok, qemu_installed, skip};

const NIC: &str = "0000:00:05.0";

/// vireod whose svc-nodedev reads the fake tree: a NIC alone in IOMMU group 7 on its host
/// driver, and a second function sharing group 8 with a device still on its driver.
fn server_with_fake_devices() -> (Server, FakeSysfs, tempfile::TempDir) {
    let sysfs = FakeSysfs::build(&[
        FakePci {
            address: NIC,
            vendor: 0x8086,
            device: 0x10d3,
            class: 0x020000,
            driver: Some("e1000e"),
            iommu_group: Some(7),
            ..FakePci::default()
        },
        FakePci {
            address: "0000:00:06.0",
            vendor: 0x8086,
            device: 0x10d3,
            class: 0x020000,
            driver: Some("e1000e"),
            iommu_group: Some(8),
            ..FakePci::default()
        },
        FakePci {
            address: "0000:00:06.1",
            vendor: 0x8086,
            device: 0x10d3,
            class: 0x020000,
            driver: Some("e1000e"),
            iommu_group: Some(8),
            ..FakePci::default()
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
    (server, sysfs, dir)
}

fn hostdev_xml(slot: u32, function: u32, managed: &str) -> String {
    format!(
        "<hostdev mode='subsystem' type='pci' managed='{managed}'>
      <source><address domain='0x0000' bus='0x00' slot='{slot:#04x}' function='{function:#x}'/></source>
    </hostdev>"
    )
}

/// A QEMU guest with no OS: the firmware finds nothing to boot and waits, which is all a
/// hotplug needs (with ACPI: QEMU's PCI hotplug goes through it).
fn firmware_xml(name: &str, devices: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <features><acpi/></features><devices>{devices}</devices></domain>"
    )
}

fn define(server: &Server, dir: &Path, name: &str, xml: &str) {
    let file = dir.join(format!("{name}.xml"));
    std::fs::write(&file, xml).unwrap();
    ok(server, &["define", file.to_str().unwrap()]);
}

#[test]
fn a_managed_hostdev_is_detached_for_qemu_which_stops_at_the_iommu_group_and_is_given_back() {
    if let Err(missing) = qemu_installed() {
        skip!("{missing}");
    }
    let (server, sysfs, dir) = server_with_fake_devices();
    define(
        &server,
        dir.path(),
        "pt",
        &firmware_xml("pt", &hostdev_xml(5, 0, "yes")),
    );
    let refused = fails(&server, &["start", "pt"]);
    // QEMU was given the device by its sysfs path, found its IOMMU group (7) and stopped at the
    // group's VFIO node, which this host lacks.
    assert!(
        refused.contains("vfio") && refused.contains("/dev/vfio/7"),
        "{refused}"
    );
    assert_eq!(
        sysfs.driver_of(NIC).as_deref(),
        Some("e1000e"),
        "managed mode gives the device back to its host driver after a failed start"
    );
    assert!(ok(&server, &["domstate", "pt"]).contains("shut off"));
    let xml = ok(&server, &["dumpxml", "pt"]);
    assert!(
        xml.contains("<hostdev mode='subsystem' type='pci' managed='yes'>")
            && xml.contains("slot='0x05'"),
        "{xml}"
    );
}

#[test]
fn an_unmanaged_hostdev_must_already_be_on_vfio_pci_and_a_shared_iommu_group_is_refused() {
    if let Err(missing) = qemu_installed() {
        skip!("{missing}");
    }
    let (server, sysfs, dir) = server_with_fake_devices();
    define(
        &server,
        dir.path(),
        "unmanaged",
        &firmware_xml("unmanaged", &hostdev_xml(5, 0, "no")),
    );
    let refused = fails(&server, &["start", "unmanaged"]);
    assert!(
        refused.contains("hostdev[0000:00:05.0]")
            && refused.contains("vfio-pci")
            && refused.contains("e1000e")
            && refused.contains("nodedev-detach"),
        "{refused}"
    );
    assert_eq!(sysfs.driver_of(NIC).as_deref(), Some("e1000e"));
    // After nodedev-detach it gets as far as a managed one, and stays detached afterwards.
    ok(&server, &["nodedev-detach", "pci_0000_00_05_0"]);
    let refused = fails(&server, &["start", "unmanaged"]);
    assert!(refused.contains("/dev/vfio/7"), "{refused}");
    assert_eq!(sysfs.driver_of(NIC).as_deref(), Some("vfio-pci"));
    ok(&server, &["nodedev-reattach", "pci_0000_00_05_0"]);

    // 06.0 shares its group with 06.1, which its host driver still holds: nothing is detached.
    define(
        &server,
        dir.path(),
        "shared",
        &firmware_xml("shared", &hostdev_xml(6, 0, "yes")),
    );
    let refused = fails(&server, &["start", "shared"]);
    assert!(
        refused.contains("hostdev[0000:00:06.0]") && refused.contains("0000:00:06.1"),
        "{refused}"
    );
    assert_eq!(sysfs.driver_of("0000:00:06.0").as_deref(), Some("e1000e"));
    assert_eq!(sysfs.driver_of("0000:00:06.1").as_deref(), Some("e1000e"));

    // A device that does not exist is named.
    define(
        &server,
        dir.path(),
        "missing",
        &firmware_xml("missing", &hostdev_xml(0x1f, 0, "yes")),
    );
    let refused = fails(&server, &["start", "missing"]);
    assert!(refused.contains("hostdev[0000:00:1f.0]"), "{refused}");
}

#[test]
fn hot_attaching_a_hostdev_to_a_running_qemu_guest_detaches_it_and_rolls_back_when_qemu_refuses() {
    if let Err(missing) = qemu_installed() {
        skip!("{missing}");
    }
    let (server, sysfs, dir) = server_with_fake_devices();
    define(&server, dir.path(), "hot", &firmware_xml("hot", ""));
    ok(&server, &["start", "hot"]);
    let device = dir.path().join("hostdev.xml");
    std::fs::write(&device, hostdev_xml(5, 0, "yes")).unwrap();
    let refused = fails(
        &server,
        &["attach-device", "hot", device.to_str().unwrap(), "--live"],
    );
    assert!(
        refused.contains("device_add") && refused.contains("/dev/vfio/7"),
        "{refused}"
    );
    assert_eq!(sysfs.driver_of(NIC).as_deref(), Some("e1000e"));
    let live = ok(&server, &["dumpxml", "hot"]);
    assert!(!live.contains("<hostdev"), "{live}");
    assert!(ok(&server, &["domstate", "hot"]).contains("running"));
    // Detaching what is not there is named as such.
    let missing = fails(
        &server,
        &["detach-device", "hot", device.to_str().unwrap(), "--live"],
    );
    assert!(missing.contains("no matching device"), "{missing}");
    ok(&server, &["destroy", "hot"]);
}

#[test]
fn vireo_vmm_sets_up_vfio_up_to_the_container_that_needs_dev_vfio() {
    if let Err(missing) = kvm_usable() {
        skip!("{missing}");
    }
    let kit = match kit_files(&["tiny.elf"]) {
        Ok(kit) => kit,
        Err(missing) => skip!("{missing}"),
    };
    let (server, sysfs, dir) = server_with_fake_devices();
    let xml = format!(
        "<domain type='kvm'><name>vmm-pt</name><memory unit='MiB'>32</memory>
  <os><type>hvm</type><kernel>{}</kernel></os>
  <devices><serial type='pty'/>{}</devices></domain>",
        kit.join("tiny.elf").display(),
        hostdev_xml(5, 0, "yes")
    );
    define(&server, dir.path(), "vmm-pt", &xml);
    let refused = fails(&server, &["start", "vmm-pt"]);
    // KVM's VFIO device was created (this kernel has CONFIG_KVM_VFIO); the container is the
    // first step that needs the host's VFIO.
    assert!(
        refused.contains("/dev/vfio/vfio")
            && refused.contains("0000:00:05.0")
            && refused.contains("IOMMU"),
        "{refused}"
    );
    assert_eq!(sysfs.driver_of(NIC).as_deref(), Some("e1000e"));
    assert!(ok(&server, &["domstate", "vmm-pt"]).contains("shut off"));
}
