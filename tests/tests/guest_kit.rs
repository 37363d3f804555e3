//! The test-guest kit: its Debian kernel and busybox initramfs boot under QEMU (TCG) to the marker,
//! and run what the kernel command line asks. `scripts/test` builds the kit before the suite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vireo_tests::{kit_dir, kit_files, qemu_installed, repo_root, skip, stdout};

const MARKER: &str = "VIREO-GUEST-READY";

/// Boots the kit under `qemu-system-x86_64 -accel tcg` with `cmdline`, returns the serial output
/// once QEMU exits (the guest powers off), bounded by `deadline`.
fn boot(cmdline: &str, deadline: Duration) -> String {
    let kit = kit_dir();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-M",
            "q35",
            "-m",
            "512",
            "-nodefaults",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-serial", "stdio", "-monitor", "none"])
        .args(["-device", "virtio-rng-pci"])
        .arg("-kernel")
        .arg(kit.join("vmlinuz"))
        .arg("-initrd")
        .arg(kit.join("initramfs.cpio.gz"))
        .args([
            "-append",
            &format!("console=ttyS0 quiet panic=-1 {cmdline}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-system-x86_64");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = qemu.try_wait().expect("qemu status") {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = qemu.kill();
            let _ = qemu.wait();
            panic!("the guest did not power off within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut serial = String::new();
    qemu.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut serial)
        .expect("serial output");
    let mut errors = String::new();
    qemu.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut errors)
        .expect("qemu stderr");
    assert!(
        status.success(),
        "qemu exited with {status}: {errors}\nserial:\n{serial}"
    );
    eprintln!("guest booted and powered off in {:?}", started.elapsed());
    serial
}

fn kit_ready() -> Result<(), String> {
    qemu_installed()?;
    kit_files(&["vmlinuz", "initramfs.cpio.gz"]).map(drop)
}

#[test]
fn kit_is_cached_and_current() {
    if let Err(needs) = kit_ready() {
        skip!("needs {needs}");
    }
    let output = Command::new(repo_root().join("scripts/guest-kit"))
        .args(["--check", "--out"])
        .arg(kit_dir())
        .output()
        .expect("run scripts/guest-kit --check");
    assert!(
        output.status.success(),
        "the kit is out of date or broken: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = Command::new(repo_root().join("scripts/guest-kit"))
        .args(["--print-dir", "--quiet", "--out"])
        .arg(kit_dir())
        .output()
        .expect("run scripts/guest-kit --print-dir");
    assert!(output.status.success());
    assert_eq!(PathBuf::from(stdout(&output).trim()), kit_dir());
}

#[test]
fn kit_boots_to_the_marker_under_qemu_tcg() {
    if let Err(needs) = kit_ready() {
        skip!("needs {needs}");
    }
    let serial = boot("", Duration::from_secs(120));
    assert!(
        serial.lines().any(|line| line.trim_end() == MARKER),
        "no {MARKER} line in:\n{serial}"
    );
    assert!(
        !serial.contains("VIREO-MODULE-FAILED"),
        "a virtio module failed to load:\n{serial}"
    );
}

#[test]
fn kit_runs_the_command_line_command() {
    if let Err(needs) = kit_ready() {
        skip!("needs {needs}");
    }
    let release =
        std::fs::read_to_string(kit_dir().join("kernel-version")).expect("kernel-version");
    let serial = boot("vireo.run=\"uname -r\"", Duration::from_secs(120));
    let after_marker = serial
        .split(MARKER)
        .nth(1)
        .unwrap_or_else(|| panic!("no marker in:\n{serial}"));
    assert!(
        after_marker.contains(release.trim()),
        "uname -r output missing:\n{serial}"
    );
    assert!(after_marker.contains("VIREO-RUN-EXIT=0"), "{serial}");
}
