//! vireo-vmm boots the stock Debian kernel and the kit's initramfs on a real kvm_amd: inside the
//! nested test host (scripts/nested-host: the same kernel under QEMU TCG emulating AMD SVM), with
//! 1 and 2 vCPUs. Each guest reaches its marker, reports all its CPUs, drives vireo-vmm's PCI
//! virtio-blk, -rng, -net, -console and -balloon with its own drivers, and powers itself off
//! after a graceful shutdown request (ACPI power button) sent over the VMM's control socket. A
//! third boot assigns a PCI device of the nested host to the guest through VFIO.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

const VMM: &str = env!("CARGO_BIN_EXE_vireo-vmm");

/// In the nested host, before each boot: an 8 MiB raw disk that starts with a signature, and a
/// background job that brings up the tap vireo-vmm creates for the guest's network card.
const DISK_SETUP: &str = "dd if=/dev/zero of=/tmp/disk.img bs=1M count=8 2>/dev/null; \
    printf VIREO-SIGNATURE | dd of=/tmp/disk.img conv=notrunc 2>/dev/null; rm -f /tmp/hvc.log; \
    (for i in $(seq 300); do [ -e /sys/class/net/vtap0 ] && break; sleep 0.1; done; ip link set vtap0 up) &";

/// In the Linux guest: what its own virtio drivers make of vireo-vmm's devices. A write goes to
/// the disk, the page cache is dropped, and the sector is read back from the device; text goes
/// to /dev/hvc0; and the network card pings all IPv6 nodes on its link, where the host's tap
/// answers from its own link-local address (not the guest's, which is filtered out).
const GUEST_CHECKS: &str = r#"echo "VIREO-REPORT pci=$(ls /sys/bus/pci/devices | wc -l)";
echo "VIREO-REPORT vda=$(head -c 15 /dev/vda) serial=$(cat /sys/block/vda/serial) sectors=$(cat /sys/block/vda/size)";
echo "VIREO-REPORT rng=$(cat /sys/class/misc/hw_random/rng_current) bytes=$(head -c 16 /dev/hwrng | wc -c)";
printf written-by-linux | dd of=/dev/vda bs=512 seek=4 conv=fsync 2>/dev/null;
echo 3 > /proc/sys/vm/drop_caches;
echo "VIREO-REPORT readback=$(dd if=/dev/vda bs=512 skip=4 count=1 2>/dev/null | head -c 16)";
echo "VIREO-HVC hello from $(uname -n)" > /dev/hvc0;
ip link set eth0 up; sleep 2;
echo "VIREO-REPORT mac=$(cat /sys/class/net/eth0/address) ping_replies=$(ping -6 -c 2 -w 8 ff02::1%eth0 2>/dev/null | grep "bytes from fe80" | grep -vc fe80::5054:ff:fe12:3456)""#;

/// In the nested host while the guest runs: `setmem` 192 of the guest's 256 MiB, wait until its
/// balloon driver has given back the 64 MiB, then `dommemstat` (info asks for fresh figures, the
/// last info shows them).
const WHILE_RUNNING: &str = "c=\"$VMM control /tmp/control.sock\"; $c balloon 192 >/dev/null; \
    for i in $(seq 50); do $c info | grep -q '\"actual_pages\":16384,' && break; sleep 0.2; done; \
    sleep 1; $c info";

fn kit_dir() -> PathBuf {
    std::env::var_os("VIREO_GUEST_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/vireo/guests"), PathBuf::from)
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{key}=")))
}

/// Runs scripts/nested-host with `args` and answers its console, or None (after a SKIPPED line)
/// when this machine lacks QEMU or the kit's nested test host.
fn run_nested_host(args: &[&str]) -> Option<String> {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIPPED: needs qemu-system-x86_64 (Debian package qemu-system-x86) for the nested test host"
        );
        return None;
    }
    if !kit_dir().join("nested-vmlinux").is_file() {
        assert!(
            std::env::var_os("VIREO_GUEST_DIR").is_none(),
            "the kit lacks the nested test host"
        );
        eprintln!("SKIPPED: needs the kit's nested test host (run scripts/guest-kit)");
        return None;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/nested-host");
    let run = || {
        let output = Command::new(&script)
            .args(["--vmm", VMM, "--kit"])
            .arg(kit_dir())
            .args(args)
            .output()
            .expect("run scripts/nested-host");
        String::from_utf8_lossy(&output.stdout).replace('\r', "")
    };
    let console = run();
    if console.contains("NESTED-DONE") {
        return Some(console);
    }
    // The emulated outer host (QEMU TCG emulating SVM) has been seen to freeze whole, its clock
    // included, once in our runs, under load; it is not vireo-vmm that stops then. One more
    // complete run is allowed, and every assertion holds for that one run.
    eprintln!("RETRY: the nested test host stopped before NESTED-DONE; its console:\n{console}");
    Some(run())
}

/// The NESTED-* lines of a console.
fn nested_report(console: &str) -> Vec<&str> {
    let report: Vec<&str> = console
        .lines()
        .filter_map(|line| line.find("NESTED-").map(|at| &line[at..]))
        .collect();
    eprintln!("{}", report.join("\n"));
    report
}

#[test]
fn stock_linux_boots_and_shuts_down_gracefully_on_real_kvm() {
    let Some(console) = run_nested_host(&[
        "--vcpus",
        "1,2",
        "--timeout",
        "60",
        "--vmm-args",
        "--rng --disk /tmp/disk.img,serial=VIREODISK0 --net tap=vtap0,mac=52:54:00:12:34:56 --console file:/tmp/hvc.log --balloon",
        "--setup",
        DISK_SETUP,
        "--guest",
        GUEST_CHECKS,
        "--running",
        WHILE_RUNNING,
        "--post",
        "cat /tmp/hvc.log",
    ]) else {
        return;
    };
    let report = nested_report(&console);
    assert!(
        report.contains(&"NESTED-READY kvm=yes"),
        "no /dev/kvm in the nested host:\n{console}"
    );
    for vcpus in ["1", "2"] {
        let marker = report
            .iter()
            .find(|line| line.starts_with("NESTED-MARKER") && field(line, "vcpus") == Some(vcpus))
            .unwrap_or_else(|| panic!("no marker with {vcpus} vCPUs:\n{console}"));
        assert!(field(marker, "ms").is_some());
        let exit = report
            .iter()
            .find(|line| line.starts_with("NESTED-EXIT") && field(line, "vcpus") == Some(vcpus))
            .unwrap_or_else(|| panic!("no exit report with {vcpus} vCPUs:\n{console}"));
        assert_eq!(
            field(exit, "status"),
            Some("0"),
            "vireo-vmm exit status (0 = guest powered off): {exit}"
        );
        assert_eq!(
            field(exit, "guest_cpus"),
            Some(vcpus),
            "CPUs the guest brought up: {exit}"
        );
        assert_eq!(
            field(exit, "power_button"),
            Some("yes"),
            "the guest saw the power button: {exit}"
        );
    }
    assert!(report.contains(&"NESTED-DONE"), "{console}");
    // Each boot's guest saw the host bridge and four virtio devices, drove them, and the data
    // went through the disk image.
    for expected in [
        "NESTED-GUEST VIREO-REPORT pci=6",
        "NESTED-GUEST VIREO-REPORT vda=VIREO-SIGNATURE serial=VIREODISK0 sectors=16384",
        "NESTED-GUEST VIREO-REPORT rng=virtio_rng.0 bytes=16",
        "NESTED-GUEST VIREO-REPORT readback=written-by-linux",
        "NESTED-GUEST VIREO-REPORT mac=52:54:00:12:34:56 ping_replies=2",
    ] {
        assert_eq!(
            report.iter().filter(|line| **line == expected).count(),
            2,
            "`{expected}` once per boot:\n{console}"
        );
    }
    // What each guest wrote to /dev/hvc0 reached the virtio-console's file on the host.
    let hvc = report
        .iter()
        .filter(|line| line.starts_with("NESTED-POST VIREO-HVC hello from"))
        .count();
    assert_eq!(hvc, 2, "{console}");
    // Linux's balloon driver gave back what `setmem` asked for and reported its memory use.
    let balloons: Vec<serde_json::Value> = report
        .iter()
        .filter_map(|line| line.strip_prefix("NESTED-RUNNING "))
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|reply| reply.get("devices").is_some())
        .inspect(|info| {
            // Linux gives each queue its own MSI-X vector; each went out through an irqfd.
            assert!(info["msi_routes"].as_u64() >= Some(5), "{info}");
        })
        .filter_map(|info| {
            info["devices"]
                .as_array()?
                .iter()
                .find(|device| device["type"] == "balloon")
                .map(|device| device["statistics"].clone())
        })
        .collect();
    assert_eq!(balloons.len(), 2, "one info per boot:\n{console}");
    for stats in &balloons {
        assert_eq!(stats["target_pages"], 16384, "{stats}");
        assert_eq!(stats["actual_pages"], 16384, "{stats}");
        assert!(stats["inflated_pages"].as_u64() >= Some(16384), "{stats}");
        assert!(stats["guest_reports"].as_u64() >= Some(2), "{stats}");
        let total = stats["guest"]["total_memory"].as_u64().unwrap_or(0);
        assert!(
            (128 << 20..=256 << 20).contains(&total),
            "the guest's total memory, in bytes: {stats}"
        );
        assert!(stats["guest"]["free_memory"].as_u64() > Some(0), "{stats}");
    }
}

/// In the nested host: QEMU's emulated Intel IOMMU, and behind it a virtio-rng PCI device that
/// goes through the IOMMU for its DMA (iommu_platform) at 00:05.0. The host binds it to vfio-pci
/// as nodedev-detach would; the IOMMU here does not remap interrupts, which vfio_iommu_type1 must
/// be told to accept.
const VFIO_QEMU_ARGS: &str = "-M q35 -device intel-iommu -device virtio-rng-pci,disable-legacy=on,iommu_platform=on,addr=0x5";
const VFIO_SETUP: &str = "echo 1 > /sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts; \
    d=/sys/bus/pci/devices/0000:00:05.0; echo vfio-pci > $d/driver_override; \
    echo 0000:00:05.0 > /sys/bus/pci/drivers_probe; \
    echo \"NESTED-VFIO group=$(basename $(readlink $d/iommu_group)) driver=$(basename $(readlink $d/driver)) dev_vfio=$(ls /dev/vfio | tr '\\n' +)\"";
/// In the guest: the PCI functions it sees, and 64 bytes read from the assigned device (its
/// virtqueue in guest memory through the IOMMU, completion by MSI-X).
const VFIO_GUEST: &str = r#"echo "VIREO-REPORT devices=$(cat /sys/bus/pci/devices/*/device | tr '\n' ,) rng=$(cat /sys/class/misc/hw_random/rng_current) bytes=$(head -c 64 /dev/hwrng | wc -c) irqs=$(awk '/virtio0-/ { n += $2 } END { print n + 0 }' /proc/interrupts)""#;
/// In the nested host while the guest runs: the device's MSI-X vectors vfio-pci set up for it.
const VFIO_RUNNING: &str = "echo \"vfio_msix_vectors=$(grep -c 'vfio-msix' /proc/interrupts)\"";

#[test]
fn an_assigned_pci_device_is_driven_by_stock_linux_through_vfio_on_real_kvm() {
    let Some(console) = run_nested_host(&[
        "--vcpus",
        "1",
        "--timeout",
        "90",
        "--qemu-args",
        VFIO_QEMU_ARGS,
        "--append",
        "intel_iommu=on",
        "--setup",
        VFIO_SETUP,
        "--vmm-args",
        "--vfio /sys/bus/pci/devices/0000:00:05.0",
        "--guest",
        VFIO_GUEST,
        "--running",
        VFIO_RUNNING,
    ]) else {
        return;
    };
    let report = nested_report(&console);
    let vfio = report
        .iter()
        .find(|line| line.starts_with("NESTED-VFIO"))
        .unwrap_or_else(|| panic!("no VFIO setup line:\n{console}"));
    assert_eq!(field(vfio, "driver"), Some("vfio-pci"), "{vfio}");
    assert!(
        field(vfio, "dev_vfio").is_some_and(|v| v.contains("vfio")),
        "{vfio}"
    );
    let exit = report
        .iter()
        .find(|line| line.starts_with("NESTED-EXIT"))
        .unwrap_or_else(|| panic!("no exit report:\n{console}"));
    assert_eq!(field(exit, "status"), Some("0"), "{exit}\n{console}");
    assert_eq!(field(exit, "power_button"), Some("yes"), "{exit}");
    let guest = report
        .iter()
        .find(|line| line.starts_with("NESTED-GUEST VIREO-REPORT devices="))
        .unwrap_or_else(|| panic!("no guest report:\n{console}"));
    // The host bridge and the assigned virtio-rng (modern id 0x1044), which the guest's own
    // virtio_rng driver took and read from.
    assert_eq!(field(guest, "devices"), Some("0x0008,0x1044,"), "{guest}");
    assert_eq!(field(guest, "rng"), Some("virtio_rng.0"), "{guest}");
    assert_eq!(field(guest, "bytes"), Some("64"), "{guest}");
    assert!(
        field(guest, "irqs")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > 0),
        "the device's completions came as MSI-X interrupts: {guest}"
    );
    let running = report
        .iter()
        .find(|line| line.starts_with("NESTED-RUNNING vfio_msix_vectors="))
        .unwrap_or_else(|| panic!("no host interrupt report:\n{console}"));
    assert!(
        field(running, "vfio_msix_vectors")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > 0),
        "{running}"
    );
}

/// Where this host's own KVM runs stock guests (hardware VMX/SVM), the same boot runs directly.
#[test]
fn stock_linux_boots_directly_where_kvm_runs_stock_guests() {
    let hardware = ["kvm_intel", "kvm_amd"]
        .iter()
        .any(|module| std::path::Path::new("/sys/module").join(module).exists());
    if !hardware {
        eprintln!(
            "SKIPPED: this host's KVM cannot run stock Linux guests (needs kvm_intel or kvm_amd); the nested test host covers it"
        );
        return;
    }
    let kit = kit_dir();
    if !kit.join("vmlinuz").is_file() {
        eprintln!("SKIPPED: needs the kit (run scripts/guest-kit)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console");
    let control = dir.path().join("control.sock");
    let mut child = Command::new(VMM)
        .args(["run", "--kernel"])
        .arg(kit.join("vmlinuz"))
        .arg("--initrd")
        .arg(kit.join("initramfs.cpio.gz"))
        .args([
            "--cmdline",
            "console=ttyS0 quiet panic=-1 vireo.hold=1",
            "--vcpus",
            "2",
            "--memory",
            "256",
        ])
        .arg("--serial")
        .arg(format!("file:{}", console.display()))
        .arg("--control")
        .arg(&control)
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("VIREO-GUEST-READY")
    {
        assert!(
            started.elapsed().as_secs() < 60,
            "no marker: {}",
            std::fs::read_to_string(&console).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = Command::new(VMM)
        .arg("control")
        .arg(&control)
        .arg("shutdown")
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(
        std::fs::read_to_string(&console)
            .unwrap()
            .contains("VIREO-POWER-BUTTON")
    );
}
