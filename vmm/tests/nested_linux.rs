//! vireo-vmm boots the stock Debian kernel and the kit's initramfs on a real kvm_amd: inside the
//! nested test host (scripts/nested-host: the same kernel under QEMU TCG emulating AMD SVM), with
//! 1 and 2 vCPUs. Each guest reaches its marker, reports all its CPUs, drives vireo-vmm's PCI
//! virtio-blk, -rng, -net, -console and -balloon with its own drivers, and powers itself off
//! after a graceful shutdown request (ACPI power button) sent over the VMM's control socket.

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

#[test]
fn stock_linux_boots_and_shuts_down_gracefully_on_real_kvm() {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIPPED: needs qemu-system-x86_64 (Debian package qemu-system-x86) for the nested test host"
        );
        return;
    }
    if !kit_dir().join("nested-vmlinux").is_file() {
        assert!(
            std::env::var_os("VIREO_GUEST_DIR").is_none(),
            "the kit lacks the nested test host"
        );
        eprintln!("SKIPPED: needs the kit's nested test host (run scripts/guest-kit)");
        return;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/nested-host");
    let run_nested_host = || {
        let output = Command::new(&script)
            .args(["--vmm", VMM, "--vcpus", "1,2", "--timeout", "60", "--kit"])
            .arg(kit_dir())
            .args([
                "--vmm-args",
                "--rng --disk /tmp/disk.img,serial=VIREODISK0 --net tap=vtap0,mac=52:54:00:12:34:56 --console file:/tmp/hvc.log --balloon",
            ])
            .args([
                "--setup",
                DISK_SETUP,
                "--guest",
                GUEST_CHECKS,
                "--running",
                WHILE_RUNNING,
                "--post",
                "cat /tmp/hvc.log",
            ])
            .output()
            .expect("run scripts/nested-host");
        String::from_utf8_lossy(&output.stdout).replace('\r', "")
    };
    let mut console = run_nested_host();
    if !console.contains("NESTED-DONE") {
        // The emulated outer host (QEMU TCG emulating SVM) has been seen to freeze whole, its
        // clock included, once in our runs, under load; it is not vireo-vmm that stops then.
        // One more complete run is allowed, and every assertion below holds for that one run.
        eprintln!(
            "RETRY: the nested test host stopped before NESTED-DONE; its console:\n{console}"
        );
        console = run_nested_host();
    }
    let report: Vec<&str> = console
        .lines()
        .filter_map(|line| line.find("NESTED-").map(|at| &line[at..]))
        .collect();
    eprintln!("{}", report.join("\n"));
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
