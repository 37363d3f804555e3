//! vireo-vmm on this machine's /dev/kvm, driven by the project's tiny test guests (built by
//! scripts/guest-kit into the kit directory): boot through both the ELF and the bzImage path,
//! command line and e820, SMP bring-up, memory, i8042 reset, ACPI power-off, a graceful shutdown
//! request, and crashes reported with their reason. Each runs with 1 and 2 vCPUs where it applies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[macro_use]
mod common;

use common::{DEADLINE, VMM, ask};

struct Run {
    status: Option<i32>,
    serial: String,
    stderr: String,
}

impl Run {
    fn lines(&self) -> Vec<&str> {
        self.serial.lines().map(str::trim_end).collect()
    }

    fn line_starting(&self, prefix: &str) -> &str {
        self.lines()
            .into_iter()
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| {
                panic!(
                    "no line starting `{prefix}` in serial output:\n{}\nstderr:\n{}",
                    self.serial, self.stderr
                )
            })
    }
}

struct Guest {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Guest {
    fn start(kernel: &Path, vcpus: u8, memory_mib: u64, tests: &str) -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(VMM)
            .args(["run", "--kernel"])
            .arg(kernel)
            .args([
                "--vcpus",
                &vcpus.to_string(),
                "--memory",
                &memory_mib.to_string(),
            ])
            .args(["--cmdline", &format!("console=ttyS0 tiny.test={tests}")])
            .arg("--serial")
            .arg(format!("file:{}", dir.path().join("serial").display()))
            .arg("--control")
            .arg(dir.path().join("control.sock"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vireo-vmm");
        Guest { child, dir }
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serial")).unwrap_or_default()
    }

    fn wait_for_line(&mut self, needle: &str) {
        let started = Instant::now();
        while !self.serial().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "vireo-vmm exited ({status}) before `{needle}`:\n{}",
                    self.serial()
                );
            }
            assert!(
                started.elapsed() < DEADLINE,
                "no `{needle}` within {DEADLINE:?}:\n{}",
                self.serial()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn control(&self, command: &str) -> serde_json::Value {
        control(self.dir.path(), command)
    }

    fn finish(mut self) -> Run {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > DEADLINE {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "vireo-vmm still running after {DEADLINE:?}; serial:\n{}",
                    self.serial()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut stderr).unwrap();
        Run {
            status: status.code(),
            serial: self.serial(),
            stderr,
        }
    }
}

fn run(kernel: &Path, vcpus: u8, memory_mib: u64, tests: &str) -> Run {
    Guest::start(kernel, vcpus, memory_mib, tests).finish()
}

/// RAM the e820 map gives a guest of `memory_mib`: all of it but the EBDA/BIOS hole below 1 MiB.
fn e820_ram_bytes(memory_mib: u64) -> u64 {
    (memory_mib << 20) - (0x100000 - 0x9fc00)
}

#[test]
fn boots_elf_and_bzimage_with_cmdline_and_e820() {
    for image in ["tiny.elf", "tiny.bzImage"] {
        let kernel = tiny_or_skip!(image);
        for vcpus in [1, 2] {
            let run = run(&kernel, vcpus, 64, "poweroff");
            assert_eq!(
                run.status,
                Some(0),
                "{image} with {vcpus} vCPUs: {}\n{}",
                run.serial,
                run.stderr
            );
            assert_eq!(run.line_starting("TINY: boot"), "TINY: boot entry=linux64");
            assert_eq!(
                run.line_starting("TINY: cmdline="),
                "TINY: cmdline=console=ttyS0 tiny.test=poweroff"
            );
            let e820 = run.line_starting("TINY: e820 ");
            assert!(
                e820.contains(&format!("ram_bytes={}", e820_ram_bytes(64))),
                "{e820}"
            );
            let acpi = run.line_starting("TINY: acpi ");
            assert!(
                acpi.contains(&format!("cpus={vcpus}")) && acpi.contains("hw_reduced=0"),
                "{acpi}"
            );
        }
    }
}

#[test]
fn brings_up_every_ap() {
    let kernel = tiny_or_skip!("tiny.elf");
    for vcpus in [1, 2] {
        let run = run(&kernel, vcpus, 64, "smp,poweroff");
        assert_eq!(run.status, Some(0), "{}\n{}", run.serial, run.stderr);
        let expected = (0..vcpus)
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            run.line_starting("TINY: smp"),
            format!("TINY: smp cpus={vcpus} apic_ids={expected}")
        );
    }
}

#[test]
fn writes_and_verifies_memory() {
    let kernel = tiny_or_skip!("tiny.elf");
    for vcpus in [1, 2] {
        let run = run(&kernel, vcpus, 128, "mem,poweroff tiny.mem_mib=32");
        assert_eq!(run.status, Some(0), "{}\n{}", run.serial, run.stderr);
        assert_eq!(run.line_starting("TINY: mem"), "TINY: mem ok mib=32");
    }
}

#[test]
fn i8042_reset_is_a_reboot() {
    let kernel = tiny_or_skip!("tiny.elf");
    for vcpus in [1, 2] {
        let run = run(&kernel, vcpus, 64, "reset");
        assert_eq!(run.status, Some(3), "{}\n{}", run.serial, run.stderr);
        assert!(run.stderr.contains("guest reboot"), "{}", run.stderr);
        assert!(!run.serial.contains("reset FAIL"), "{}", run.serial);
    }
}

#[test]
fn graceful_shutdown_request_powers_off() {
    let kernel = tiny_or_skip!("tiny.elf");
    for vcpus in [1, 2] {
        let mut guest = Guest::start(&kernel, vcpus, 64, "wait-shutdown");
        guest.wait_for_line("TINY: waiting for shutdown request");
        let info = guest.control("info");
        assert_eq!(info["state"], "running");
        assert_eq!(
            info["vcpus"].as_array().map(Vec::len),
            Some(usize::from(vcpus))
        );
        assert_eq!(guest.control("pause")["state"], "paused");
        assert_eq!(guest.control("resume")["state"], "running");
        assert_eq!(guest.control("shutdown")["ok"], true);
        let run = guest.finish();
        assert_eq!(run.status, Some(0), "{}\n{}", run.serial, run.stderr);
        assert!(
            run.lines().contains(&"TINY: shutdown request"),
            "{}",
            run.serial
        );
    }
}

#[test]
fn triple_fault_is_a_crash_with_its_reason() {
    let kernel = tiny_or_skip!("tiny.elf");
    for vcpus in [1, 2] {
        let run = run(&kernel, vcpus, 64, "triple-fault");
        assert_eq!(run.status, Some(4), "{}\n{}", run.serial, run.stderr);
        assert!(
            run.stderr.contains("guest crashed") && run.stderr.contains("triple fault"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn stop_and_reset_through_the_control_socket() {
    let kernel = tiny_or_skip!("tiny.elf");
    let mut guest = Guest::start(&kernel, 1, 64, "wait-shutdown");
    guest.wait_for_line("TINY: waiting for shutdown request");
    guest.control("stop");
    assert_eq!(guest.finish().status, Some(5));
    let mut guest = Guest::start(&kernel, 1, 64, "wait-shutdown");
    guest.wait_for_line("TINY: waiting for shutdown request");
    guest.control("reset");
    assert_eq!(guest.finish().status, Some(3));
}

#[test]
fn without_kvm_one_clear_line_and_nonzero_exit() {
    let kernel = tiny_or_skip!("tiny.elf");
    let missing = Command::new(VMM)
        .args(["run", "--kernel"])
        .arg(&kernel)
        .args(["--kvm-device", "/nonexistent/kvm"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("/nonexistent/kvm does not exist"),
        "{stderr}"
    );

    // An unprivileged user cannot open the root-only /dev/kvm.
    let denied = Command::new(VMM)
        .args(["run", "--kernel"])
        .arg(&kernel)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(denied.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
}

#[test]
fn bad_arguments_are_named() {
    let output = Command::new(VMM)
        .args(["run", "--kernel", "/x", "--memory", "9223372036854775807"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--memory 9223372036854775807 MiB"));
    let output = Command::new(VMM)
        .args(["run", "--kernel", "/no/such/kernel"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--kernel /no/such/kernel: no such file")
    );
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, b"not a kernel").unwrap();
    let output = Command::new(VMM)
        .args(["run", "--kernel"])
        .arg(&garbage)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("neither an ELF vmlinux nor a bzImage")
    );
}

#[test]
fn hostile_port_and_mmio_access_does_not_hurt_the_vmm() {
    let kernel = tiny_or_skip!("tiny.elf");
    for vcpus in [1, 2] {
        let run = run(&kernel, vcpus, 64, "io-hostile,poweroff");
        assert_eq!(run.status, Some(0), "{}\n{}", run.serial, run.stderr);
        assert!(
            run.lines().contains(&"TINY: io-hostile done"),
            "{}",
            run.serial
        );
    }
}

/// The KVM module loaded on this host.
fn kvm_module() -> Option<&'static str> {
    ["kvm_pvm", "kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|module| Path::new("/sys/module").join(module).exists())
}

#[test]
fn kvm_internal_error_is_a_crash_with_its_reason() {
    let kernel = tiny_or_skip!("tiny.elf");
    let run = run(&kernel, 1, 64, "emulation-failure");
    if kvm_module() != Some("kvm_pvm") {
        // Hardware KVM runs cmpxchg16b natively: there is no emulation failure to report.
        assert!(
            run.serial.contains("did not fail") || run.status == Some(4),
            "{}",
            run.serial
        );
        eprintln!(
            "SKIPPED: needs a KVM that emulates guest kernel mode (kvm_pvm) to provoke an internal error"
        );
        return;
    }
    assert_eq!(run.status, Some(4), "{}\n{}", run.serial, run.stderr);
    assert!(
        run.stderr
            .contains("KVM internal error (KVM_EXIT_INTERNAL_ERROR, suberror 1"),
        "{}",
        run.stderr
    );
}

fn start_with_serial(
    kernel: &Path,
    serial: &str,
    dir: &Path,
    extra: &[&str],
) -> std::process::Child {
    Command::new(VMM)
        .args(["run", "--kernel"])
        .arg(kernel)
        .args([
            "--memory",
            "64",
            "--cmdline",
            "tiny.test=wait-shutdown",
            "--serial",
            serial,
            "--control",
        ])
        .arg(dir.join("control.sock"))
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vireo-vmm")
}

fn control(dir: &Path, command: &str) -> serde_json::Value {
    ask(
        &dir.join("control.sock"),
        serde_json::json!({ "cmd": command }),
    )
}

fn wait_exit(child: &mut std::process::Child) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(started.elapsed() < DEADLINE, "vireo-vmm did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads from `reader` until `needle` appeared or the deadline passed.
fn read_until(mut reader: impl std::io::Read, needle: &str) -> String {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 512];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        assert!(
            started.elapsed() < DEADLINE,
            "no `{needle}` in {}",
            String::from_utf8_lossy(&seen)
        );
        match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => seen.extend_from_slice(&buffer[..count]),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            // A pty's slave reads EIO once vireo-vmm (the master's holder) has exited.
            Err(err) if err.raw_os_error() == Some(libc::EIO) => break,
            Err(err) => panic!("reading the console: {err}"),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn unix_socket_console_replays_what_a_late_client_missed() {
    let kernel = tiny_or_skip!("tiny.elf");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("console.sock");
    let mut child = start_with_serial(
        &kernel,
        &format!("unix:{}", socket.display()),
        dir.path(),
        &[],
    );
    // Connect only after the guest has printed everything up to its wait.
    let started = Instant::now();
    while control_ready(dir.path()).is_none() {
        assert!(started.elapsed() < DEADLINE);
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let client = UnixStream::connect(&socket).expect("console socket");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let seen = read_until(&client, "TINY: waiting for shutdown request");
    assert!(
        seen.contains("TINY: boot entry=linux64"),
        "the backlog starts at boot: {seen}"
    );
    control(dir.path(), "shutdown");
    let rest = read_until(&client, "TINY: poweroff");
    assert!(rest.contains("TINY: shutdown request"), "{rest}");
    assert_eq!(wait_exit(&mut child), Some(0));
}

fn control_ready(dir: &Path) -> Option<()> {
    UnixStream::connect(dir.join("control.sock"))
        .ok()
        .map(|_| ())
}

#[test]
fn pty_console_is_named_in_info_and_carries_output() {
    let kernel = tiny_or_skip!("tiny.elf");
    let dir = tempfile::tempdir().unwrap();
    let mut child = start_with_serial(&kernel, "pty", dir.path(), &[]);
    let started = Instant::now();
    let pty = loop {
        if control_ready(dir.path()).is_some() {
            break control(dir.path(), "info")["pty"]
                .as_str()
                .map(String::from)
                .expect("info names the pty");
        }
        assert!(started.elapsed() < DEADLINE);
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(pty.starts_with("/dev/pts/"), "{pty}");
    let console = std::fs::File::open(&pty).expect("open the pty");
    control(dir.path(), "shutdown");
    let seen = read_until(console, "TINY: poweroff");
    assert!(seen.contains("TINY: shutdown request"), "{seen}");
    assert_eq!(wait_exit(&mut child), Some(0));
}

#[test]
fn hugepage_backed_memory_boots() {
    let kernel = tiny_or_skip!("tiny.elf");
    let pages = Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages");
    let before: u64 = std::fs::read_to_string(pages)
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    if std::fs::write(pages, (before + 64).to_string()).is_err() {
        eprintln!(
            "SKIPPED: needs 2 MiB hugepages that can be reserved ({})",
            pages.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(VMM)
        .args(["run", "--kernel"])
        .arg(&kernel)
        .args([
            "--memory",
            "64",
            "--hugepages",
            "--cmdline",
            "tiny.test=mem,poweroff tiny.mem_mib=16",
            "--serial",
        ])
        .arg(format!("file:{}", dir.path().join("serial").display()))
        .output()
        .unwrap();
    let _ = std::fs::write(pages, before.to_string());
    let serial = std::fs::read_to_string(dir.path().join("serial")).unwrap_or_default();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{serial}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(serial.contains("TINY: mem ok mib=16"), "{serial}");
}

fn control_with(dir: &Path, request: serde_json::Value) -> serde_json::Value {
    ask(&dir.join("control.sock"), request)
}

/// The counts a counter guest printed, in order.
fn counts(serial: &str) -> Vec<u64> {
    serial
        .lines()
        .filter_map(|line| line.trim_end().strip_prefix("TINY: count=")?.parse().ok())
        .collect()
}

#[test]
fn save_then_restore_in_a_new_process_continues_the_counter() {
    const SHIFT: u32 = 14;
    let kernel = tiny_or_skip!("tiny.elf");
    for vcpus in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("guest.vmstate");
        let mut guest = Guest::start(
            &kernel,
            vcpus,
            64,
            &format!("counter tiny.count_shift={SHIFT}"),
        );
        guest.wait_for_line("TINY: count=");
        std::thread::sleep(Duration::from_millis(300));
        let reply = control_with(
            guest.dir.path(),
            serde_json::json!({ "cmd": "save", "path": snapshot }),
        );
        assert_eq!(reply["ok"], true, "{reply}");
        let saved_crc = reply["saved_memory_crc32"]
            .as_u64()
            .expect("save reports the memory CRC");
        let first = guest.finish();
        assert_eq!(first.status, Some(6), "saved and stopped: {}", first.stderr);
        let before = *counts(&first.serial).last().expect("counts before saving");

        let restored_serial = dir.path().join("restored-serial");
        let mut restored = Command::new(VMM)
            .args(["restore", "--snapshot"])
            .arg(&snapshot)
            .arg("--serial")
            .arg(format!("file:{}", restored_serial.display()))
            .arg("--control")
            .arg(dir.path().join("control.sock"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while counts(&std::fs::read_to_string(&restored_serial).unwrap_or_default()).is_empty() {
            assert!(
                started.elapsed() < DEADLINE,
                "the restored guest printed no count"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let info = control(dir.path(), "info");
        assert_eq!(
            info["restored_memory_crc32"].as_u64(),
            Some(saved_crc),
            "memory CRC before save = after restore"
        );
        assert_eq!(
            info["vcpus"].as_array().map(Vec::len),
            Some(usize::from(vcpus))
        );
        control(dir.path(), "stop");
        assert_eq!(wait_exit(&mut restored), Some(5));
        let after_text = std::fs::read_to_string(&restored_serial).unwrap();
        // The save may land in the middle of a line: the old process printed its start, the
        // new one its end. Joined, the two outputs are one unbroken count, every 2^SHIFT
        // increments, with none lost or repeated.
        let all = counts(&(first.serial.clone() + &after_text));
        let resumed = all
            .iter()
            .position(|count| *count > before)
            .unwrap_or_else(|| panic!("no count after restore: {after_text:?}"));
        assert_eq!(
            all[resumed],
            before + (1 << SHIFT),
            "before save {before}, then {:?}",
            &all[resumed..]
        );
        assert!(
            all.windows(2).all(|pair| pair[1] == pair[0] + (1 << SHIFT)),
            "{all:?}"
        );
    }
}

#[test]
fn a_corrupt_or_foreign_snapshot_is_refused() {
    let kernel = tiny_or_skip!("tiny.elf");
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("guest.vmstate");
    let mut guest = Guest::start(&kernel, 1, 64, "counter");
    guest.wait_for_line("TINY: count=");
    assert_eq!(
        control_with(
            guest.dir.path(),
            serde_json::json!({ "cmd": "save", "path": snapshot })
        )["ok"],
        true
    );
    assert_eq!(guest.finish().status, Some(6));
    let restore = |path: &Path| {
        Command::new(VMM)
            .args(["restore", "--snapshot"])
            .arg(path)
            .args(["--serial", "null"])
            .output()
            .unwrap()
    };

    let mut bytes = std::fs::read(&snapshot).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 0xff;
    let corrupt = dir.path().join("corrupt.vmstate");
    std::fs::write(&corrupt, &bytes).unwrap();
    let output = restore(&corrupt);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("memory CRC mismatch"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    bytes[8] = 99; // version
    std::fs::write(&corrupt, &bytes).unwrap();
    let output = restore(&corrupt);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("version 99"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    std::fs::write(&corrupt, b"not a snapshot at all").unwrap();
    let output = restore(&corrupt);
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a vireo-vmm snapshot"));
}

#[test]
fn save_and_restore_carry_virtio_devices_and_acpi_state() {
    let kernel = tiny_or_skip!("tiny.elf");
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let start = |args: &[&str]| {
        let mut child = Command::new(VMM)
            .args(args)
            .args(["--serial", "null", "--control"])
            .arg(dir.path().join("control.sock"))
            .spawn()
            .unwrap();
        let started = Instant::now();
        while control_ready(dir.path()).is_none() {
            assert!(started.elapsed() < DEADLINE, "no control socket");
            assert!(
                child.try_wait().unwrap().is_none(),
                "vireo-vmm exited early"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    };
    let kernel_arg = kernel.display().to_string();
    let disk_arg = format!("{},serial=SAVED", disk.display());
    let mut child = start(&[
        "run",
        "--kernel",
        &kernel_arg,
        "--memory",
        "64",
        "--rng",
        "--disk",
        &disk_arg,
        "--cmdline",
        "tiny.test=wait-shutdown",
    ]);
    // The guest enables the power button before it waits; give it that moment.
    std::thread::sleep(Duration::from_millis(300));
    let snapshot = dir.path().join("guest.vmstate");
    let reply = control_with(
        dir.path(),
        serde_json::json!({ "cmd": "save", "path": snapshot }),
    );
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(wait_exit(&mut child), Some(6));
    // The restore recreates the devices the snapshot names; the guest, still waiting, gets the
    // power button it enabled before the save.
    let snapshot_arg = snapshot.display().to_string();
    let mut restored = start(&["restore", "--snapshot", &snapshot_arg]);
    assert_eq!(control(dir.path(), "info")["state"], "running");
    control(dir.path(), "shutdown");
    assert_eq!(wait_exit(&mut restored), Some(0));
}

/// KVM's dirty logging, the base of live migration: the counter guest writes its counter page
/// (0x7000) over and over, so that page is reported dirty between two asks, a small set of pages
/// rather than all of memory; paused, it writes nothing.
#[test]
fn dirty_pages_are_the_ones_the_guest_writes() {
    let kernel = tiny_or_skip!("tiny.elf");
    let mut guest = Guest::start(&kernel, 1, 64, "counter tiny.count_shift=20");
    guest.wait_for_line("TINY: count=");
    let started = control(guest.dir.path(), "dirty-pages");
    assert_eq!(started["ok"], true, "{started}");
    std::thread::sleep(Duration::from_millis(200));
    let dirty = control(guest.dir.path(), "dirty-pages");
    let pages: Vec<u64> = dirty["dirty_pages"]
        .as_array()
        .expect("dirty_pages in the reply")
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    assert!(
        pages.contains(&0x7),
        "the counter's page 0x7000 is dirty: {pages:?}"
    );
    assert!(
        pages.len() < 64,
        "only the pages it writes, not all 16384 of 64 MiB: {} pages",
        pages.len()
    );
    assert_eq!(control(guest.dir.path(), "pause")["ok"], true);
    let _ = control(guest.dir.path(), "dirty-pages");
    std::thread::sleep(Duration::from_millis(100));
    let idle = control(guest.dir.path(), "dirty-pages");
    assert_eq!(
        idle["dirty_pages"].as_array().map(Vec::len),
        Some(0),
        "a paused guest writes nothing: {idle}"
    );
    let _ = control(guest.dir.path(), "stop");
    let _ = guest.finish();
}

/// A VMM removes at exit only the sockets that are still its own: a later VMM that took over
/// the same serial path keeps its socket.
#[test]
fn a_vmm_leaves_a_socket_another_vmm_took_over() {
    let kernel = tiny_or_skip!("tiny.elf");
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.sock");
    let start = |control: &str| {
        Command::new(VMM)
            .args(["run", "--kernel"])
            .arg(&kernel)
            .args(["--cmdline", "console=ttyS0 tiny.test=counter"])
            .arg("--serial")
            .arg(format!("unix:{}", serial.display()))
            .arg("--control")
            .arg(dir.path().join(control))
            .stderr(Stdio::null())
            .spawn()
            .expect("start vireo-vmm")
    };
    let wait_socket = |path: &Path| {
        let started = Instant::now();
        while std::os::unix::net::UnixStream::connect(path).is_err() {
            assert!(
                started.elapsed() < DEADLINE,
                "{} never appeared",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let mut first = start("first.sock");
    wait_socket(&dir.path().join("first.sock"));
    let mut second = start("second.sock");
    wait_socket(&dir.path().join("second.sock"));
    ask(
        &dir.path().join("first.sock"),
        serde_json::json!({"cmd": "stop"}),
    );
    assert_eq!(wait_exit(&mut first), Some(5));
    assert!(
        !dir.path().join("first.sock").exists(),
        "its own socket goes"
    );
    assert!(
        serial.exists(),
        "the serial socket the second VMM took stays"
    );
    std::os::unix::net::UnixStream::connect(&serial).expect("the second VMM's serial answers");
    ask(
        &dir.path().join("second.sock"),
        serde_json::json!({"cmd": "stop"}),
    );
    assert_eq!(wait_exit(&mut second), Some(5));
    assert!(!serial.exists(), "and goes with the second VMM");
}
