//! `<hostdev>` PCI passthrough, proved as far as a host without an IOMMU allows. The devices live
//! in the fake sysfs tree (svc-nodedev's root), so managed mode really unbinds and rebinds them;
//! then each engine goes as far as it can: QEMU opens the device's IOMMU group (/dev/vfio/N),
//! vireo-vmm creates KVM's VFIO device and opens the VFIO container (/dev/vfio/vfio). Both are
//! the first steps that need the host's VFIO, and the errors say so. Every failed start gives
//! the device back to its host driver and keeps the definition. The last test has the IOMMU:
//! inside the nested host (QEMU's emulated Intel IOMMU), vireod gives a real device to a stock
//! Linux guest on vireo-vmm, then on QEMU, then hot-plugs it into a running QEMU guest, and
//! takes it back each time.

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
    let (server, dir) = sysfs.vireod(&[]);
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

/// In the nested host (scripts/nested-storage --vmm --qemu): the device at 00:05.0 is QEMU's
/// virtio-rng behind its emulated Intel IOMMU, on the host's virtio-pci driver. vireod's
/// svc-nodedev reads the real sysfs; a managed `<hostdev>` takes the device for a guest on each
/// engine in turn, whose own virtio_rng driver reads from it, and `destroy` gives it back; then it
/// is hot-plugged into a running QEMU guest and out again. Each step prints a line starting with
/// the engine's name (or `hot`).
const NESTED_PASSTHROUGH: &str = r#"echo 1 > /sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts
for i in $(seq 300); do [ -S /tmp/r/compute.sock ] && break; sleep 0.2; done
d=/sys/bus/pci/devices/0000:00:05.0
drv() { basename "$(readlink $d/driver)"; }
echo "node $(vireo nodedev-dumpxml pci_0000_00_05_0 | grep -E "iommuGroup|<driver>|<name>" | tr -d ' \n')"
run64=$(printf '%s' 'echo "VIREO-REPORT devices=$(cat /sys/bus/pci/devices/*/device | tr "\n" ,) rng=$(cat /sys/class/misc/hw_random/rng_current) bytes=$(head -c 64 /dev/hwrng | wc -c) irqs=$(awk "/virtio[0-9]*-input/ { n += \$2 } END { print n + 0 }" /proc/interrupts)"' | base64 | tr -d '\n')
for engine in vmm qemu; do
    echo "$engine before=$(drv)"
    cat > /tmp/$engine.xml <<XML
<domain type='kvm'><name>$engine</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
<os><type>hvm</type><kernel>/payload/guest/vmlinuz</kernel><initrd>/payload/guest/initramfs.cpio.gz</initrd>
<cmdline>console=ttyS0 quiet loglevel=1 panic=-1 vireo.hold=1 vireo.run64=$run64</cmdline></os>
<features><acpi/></features>
<devices><serial type='pty'/>
<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x00' slot='0x05' function='0x0'/></source></hostdev>
</devices><vireo:engine xmlns:vireo='urn:x-vireo:xmlns:1'>$engine</vireo:engine></domain>
XML
    vireo define /tmp/$engine.xml >/dev/null
    echo "$engine $(vireo start $engine 2>&1 | head -n 1)"
    echo "$engine during=$(drv)"
    for i in $(seq 300); do grep -q VIREO-REPORT /tmp/r/compute/*/console.log 2>/dev/null && break; sleep 0.2; done
    echo "$engine $(grep -ah VIREO-REPORT /tmp/r/compute/*/console.log | tr -d '\r')"
    vireo destroy $engine >/dev/null
    echo "$engine after=$(drv)"
done
hot64=$(printf '%s' 'for i in $(seq 150); do grep -q virtio_rng /sys/class/misc/hw_random/rng_current 2>/dev/null && break; sleep 0.2; done; echo "VIREO-REPORT hot rng=$(cat /sys/class/misc/hw_random/rng_current) bytes=$(head -c 64 /dev/hwrng | wc -c)"' | base64 | tr -d '\n')
sed -e "s/vireo.run64=[^<]*/vireo.run64=$hot64/" -e "s/<name>qemu</<name>hot</" -e "/<hostdev/d" /tmp/qemu.xml > /tmp/hot.xml
grep -h "<hostdev" /tmp/qemu.xml > /tmp/hostdev.xml
vireo define /tmp/hot.xml >/dev/null
vireo start hot >/dev/null
for i in $(seq 300); do grep -q VIREO-GUEST-READY /tmp/r/compute/*/console.log 2>/dev/null && break; sleep 0.2; done
echo "hot before=$(drv)"
echo "hot $(vireo attach-device hot /tmp/hostdev.xml --live 2>&1 | head -n 1)"
echo "hot during=$(drv) live_hostdevs=$(vireo dumpxml hot | grep -c '<hostdev')"
for i in $(seq 300); do grep -q "VIREO-REPORT hot" /tmp/r/compute/*/console.log 2>/dev/null && break; sleep 0.2; done
echo "hot $(grep -ah 'VIREO-REPORT hot' /tmp/r/compute/*/console.log | tr -d '\r')"
echo "hot $(vireo detach-device hot /tmp/hostdev.xml --live 2>&1 | head -n 1)"
echo "hot after=$(drv) live_hostdevs=$(vireo dumpxml hot | grep -c '<hostdev')"
vireo destroy hot >/dev/null"#;

#[test]
fn a_managed_hostdev_reaches_stock_linux_guests_on_both_engines_and_by_hotplug_on_real_kvm() {
    use vireo_tests::storage::{
        NESTED_STORAGE_TOOLS, nested_report, require_tools, run_nested_storage,
    };
    if let Err(missing) = qemu_installed() {
        skip!("needs {missing} for the nested test host");
    }
    if let Err(missing) = require_tools(NESTED_STORAGE_TOOLS) {
        skip!("needs {missing} for the nested host");
    }
    let kit = match kit_files(&[
        "nested-vmlinux",
        "nested-storage-base.cpio.gz",
        "vmlinuz",
        "initramfs.cpio.gz",
    ]) {
        Ok(kit) => kit,
        Err(missing) => skip!("needs {missing}"),
    };
    let (console, errors) = run_nested_storage(
        &kit,
        &[
            "--vmm",
            "--qemu",
            "--timeout",
            "150",
            "--qemu-args",
            "-M q35 -device intel-iommu -device virtio-rng-pci,disable-legacy=on,iommu_platform=on,addr=0x5",
            "--append",
            "intel_iommu=on",
            "--script",
            NESTED_PASSTHROUGH,
        ],
        || {},
    );
    let report = nested_report(&console);
    eprintln!("{}", report.join("\n"));
    let out = |prefix: &str| {
        report
            .iter()
            .filter_map(|line| line.strip_prefix("NESTED-OUT "))
            .find(|line| line.starts_with(prefix))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no `{prefix}` line:\n{console}\n{errors}"))
    };
    // svc-nodedev sees the device on its host driver, in a real IOMMU group.
    let node = out("node ");
    assert!(
        node.contains("<name>virtio-pci</name>") && node.contains("<iommuGroupnumber="),
        "{node}"
    );
    for engine in ["vmm", "qemu"] {
        let line = |what: &str| out(&format!("{engine} {what}"));
        assert_eq!(line("before="), format!("{engine} before=virtio-pci"));
        assert_eq!(
            line("Domain"),
            format!("{engine} Domain '{engine}' started")
        );
        assert_eq!(line("during="), format!("{engine} during=vfio-pci"));
        let guest = line("VIREO-REPORT");
        assert!(
            guest.contains("0x1044,") && guest.contains("rng=virtio_rng.0 bytes=64"),
            "{guest}"
        );
        let irqs: u64 = guest
            .split("irqs=")
            .nth(1)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            irqs > 0,
            "the device's completions came as MSI-X interrupts: {guest}"
        );
        assert_eq!(line("after="), format!("{engine} after=virtio-pci"));
    }
    // Hot: attach-device --live on a running QEMU guest detaches the device and plugs it in;
    // the guest's ACPI hotplug finds it and virtio_rng reads from it; detach-device --live
    // waits for the guest's eject and gives it back.
    assert_eq!(out("hot before="), "hot before=virtio-pci");
    assert_eq!(
        out("hot Device attached"),
        "hot Device attached successfully"
    );
    assert_eq!(out("hot during="), "hot during=vfio-pci live_hostdevs=1");
    assert_eq!(
        out("hot VIREO-REPORT"),
        "hot VIREO-REPORT hot rng=virtio_rng.0 bytes=64"
    );
    assert_eq!(
        out("hot Device detached"),
        "hot Device detached successfully"
    );
    assert_eq!(out("hot after="), "hot after=virtio-pci live_hostdevs=0");
    assert!(
        report
            .iter()
            .any(|line| line.starts_with("NESTED-SCRIPT-EXIT=0")),
        "{console}\n{errors}"
    );
}
