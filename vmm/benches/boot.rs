//! Boot benchmark: vireo-vmm against `qemu-system-x86_64 -M microvm -accel kvm`, in one run, on the
//! same tiny guest (the kit's tiny.elf: Linux 64-bit entry for vireo-vmm, PVH entry for QEMU).
//! Measures, as medians over several runs:
//! - exec to the guest's first serial line;
//! - guest power-off (its last line) to the VMM's exit;
//! - the VMM's own RSS: process RSS minus the RSS of the guest-memory mapping.
//!
//! Prints both engines' figures and vireo/QEMU ratios. Run:
//! `cargo bench -p vireo-vmm --bench boot --profile vmm` (the LTO build vireod-up installs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 10;
const GUEST_MEMORY_MIB: u64 = 128;

fn kit_dir() -> PathBuf {
    std::env::var_os("VIREO_GUEST_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/vireo/guests"), PathBuf::from)
}

fn vmm_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vireo-vmm"))
}

#[derive(Clone, Copy)]
enum Engine {
    Vireo,
    Qemu,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Vireo => "vireo-vmm",
            Engine::Qemu => "qemu microvm",
        }
    }

    fn spawn(self, kernel: &Path, tests: &str) -> Child {
        let cmdline = format!("console=ttyS0 tiny.test={tests}");
        let mut command = match self {
            Engine::Vireo => {
                let mut command = Command::new(vmm_binary());
                command.args(["run", "--kernel"]).arg(kernel).args([
                    "--memory",
                    &GUEST_MEMORY_MIB.to_string(),
                    "--serial",
                    "stdout",
                    "--cmdline",
                    &cmdline,
                ]);
                command
            }
            Engine::Qemu => {
                let mut command = Command::new("qemu-system-x86_64");
                command
                    .args([
                        "-M",
                        "microvm,x-option-roms=off,isa-serial=on,rtc=off",
                        "-accel",
                        "kvm",
                        "-cpu",
                        "host,-arch-capabilities",
                    ])
                    .args(["-m", &GUEST_MEMORY_MIB.to_string(), "-smp", "1"])
                    .args([
                        "-nodefaults",
                        "-no-user-config",
                        "-nographic",
                        "-no-reboot",
                        "-serial",
                        "stdio",
                    ])
                    .arg("-kernel")
                    .arg(kernel)
                    .args(["-append", &cmdline]);
                command
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn engine")
    }
}

struct Sample {
    first_line: Duration,
    exit_after_poweroff: Duration,
}

fn boot_once(engine: Engine, kernel: &Path) -> Sample {
    let started = Instant::now();
    let mut child = engine.spawn(kernel, "poweroff");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let mut first_line = None;
    let mut poweroff_seen = None;
    while lines.read_line(&mut line).unwrap_or(0) > 0 {
        first_line.get_or_insert_with(|| started.elapsed());
        if line.contains("TINY: poweroff") {
            poweroff_seen = Some(Instant::now());
            break;
        }
        line.clear();
    }
    let poweroff_seen = poweroff_seen.unwrap_or_else(|| {
        panic!(
            "{}: the guest never printed `TINY: poweroff`",
            engine.name()
        )
    });
    // Drain anything else so the VMM never blocks on a full pipe.
    let mut rest = Vec::new();
    let _ = lines.read_to_end(&mut rest);
    let status = child.wait().expect("wait");
    let exit_after_poweroff = poweroff_seen.elapsed();
    assert!(
        status.success() || matches!(engine, Engine::Qemu),
        "{}: exit {status}",
        engine.name()
    );
    Sample {
        first_line: first_line.expect("a first line"),
        exit_after_poweroff,
    }
}

/// Process RSS minus the guest-memory mapping's RSS, in KiB, from /proc/PID/smaps.
fn vmm_overhead_kib(pid: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let guest_kib = GUEST_MEMORY_MIB * 1024;
    let (mut total, mut guest) = (0u64, 0u64);
    let mut mapping_kib = 0u64;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some("Size:"), Some(size)) => mapping_kib = size.parse().unwrap_or(0),
            (Some("Rss:"), Some(rss)) => {
                let rss: u64 = rss.parse().unwrap_or(0);
                total += rss;
                // The guest RAM mapping: exactly the guest's size (QEMU may round up by a page or two).
                if mapping_kib >= guest_kib && mapping_kib <= guest_kib + 8192 {
                    guest += rss;
                }
            }
            _ => {}
        }
    }
    (total - guest, guest)
}

fn overhead(engine: Engine, kernel: &Path) -> (u64, u64) {
    let mut child = engine.spawn(kernel, "wait-shutdown");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    while lines.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("waiting for shutdown") {
        line.clear();
    }
    std::thread::sleep(Duration::from_millis(200));
    let measured = vmm_overhead_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    measured
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() {
    let kernel = kit_dir().join("tiny.elf");
    if !kernel.is_file() {
        eprintln!(
            "SKIPPED: needs {} (run scripts/guest-kit)",
            kernel.display()
        );
        return;
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: needs qemu-system-x86_64 (Debian package qemu-system-x86)");
        return;
    }
    let mut results = Vec::new();
    for engine in [Engine::Vireo, Engine::Qemu] {
        // One warm-up run so both start with the binary and kernel in the page cache.
        boot_once(engine, &kernel);
        let samples: Vec<Sample> = (0..RUNS).map(|_| boot_once(engine, &kernel)).collect();
        let first = median(samples.iter().map(|s| s.first_line).collect());
        let exit = median(samples.iter().map(|s| s.exit_after_poweroff).collect());
        let (overhead_kib, guest_kib) = overhead(engine, &kernel);
        println!(
            "{:<14} first line {:>8.2} ms   exit after poweroff {:>7.2} ms   VMM RSS {:>6} KiB (guest touched {} KiB)",
            engine.name(),
            first.as_secs_f64() * 1e3,
            exit.as_secs_f64() * 1e3,
            overhead_kib,
            guest_kib
        );
        results.push((first, exit, overhead_kib));
    }
    let (vireo, qemu) = (results[0], results[1]);
    println!(
        "ratio vireo/qemu: first line {:.3} (target <= 0.167), exit {:.3}, VMM RSS {:.3} (target: vireo <= 3072 KiB, got {})",
        vireo.0.as_secs_f64() / qemu.0.as_secs_f64(),
        vireo.1.as_secs_f64() / qemu.1.as_secs_f64(),
        vireo.2 as f64 / qemu.2 as f64,
        vireo.2
    );
}
