//! Live migration of a 1 GiB guest that dirties memory at a fixed rate, between two hosts on this
//! machine: downtime and total time for each engine, and total time against memory size over the
//! link bandwidth measured in the same run (loopback TCP). Targets: downtime at most 50 ms with
//! default settings (QEMU's default limit is 300 ms), total time within 1.3x of memory/bandwidth.
//!
//! The qemu engine is QEMU's own migration, driven by Vireo, with the Debian guest rewriting a
//! file in its RAM-backed root; the vmm engine is vireo-vmm's, with the tiny guest rewriting
//! 1000 MiB of its memory page by page (so nearly all of it must cross, where QEMU's guest is
//! mostly zero pages that cross as flags).
//!
//! `cargo build --release --workspace --bins && cargo bench -p vireo-tests --bench migration`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use vireo_tests::guests::{Console, debian_kit, debian_xml};
use vireo_tests::{Server, host_config as config, kit_files, kvm_usable, ok};

const MEMORY_MIB: u64 = 1024;
/// What the guest rewrites every second: 32 MiB of a file in its RAM-backed root.
const DIRTY_MIB_PER_S: u64 = 32;

/// Loopback TCP throughput, bytes per second: what one connection carries here.
fn link_bandwidth() -> f64 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let total: usize = 2 << 30;
    let sender = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        let mut sent = 0;
        while sent < total {
            stream.write_all(&chunk).unwrap();
            sent += chunk.len();
        }
    });
    let (mut stream, _) = listener.accept().unwrap();
    let started = Instant::now();
    let mut buffer = vec![0u8; 1 << 20];
    let mut received = 0;
    while received < total {
        let n = stream.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        received += n;
    }
    sender.join().unwrap();
    received as f64 / started.elapsed().as_secs_f64()
}

/// The field `label` of domjobinfo's output, as a number.
fn job_field(job: &str, label: &str) -> f64 {
    job.lines()
        .find_map(|line| line.strip_prefix(label))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(f64::NAN)
}

/// What one migration measured.
struct Measured {
    downtime_ms: f64,
    elapsed_ms: f64,
    wall: Duration,
    dirty_pages_s: f64,
    data_mib: f64,
}

/// Migrates `name` from a to b with default limits and reads the finished job.
fn migrate(a: &Server, b: &Server, name: &str) -> Measured {
    let started = Instant::now();
    ok(a, &["migrate", "--live", name, "b"]);
    let wall = started.elapsed();
    let job = ok(a, &["--host", "a", "domjobinfo", name, "--completed"]);
    ok(b, &["destroy", name]);
    Measured {
        downtime_ms: job_field(&job, "Total downtime"),
        elapsed_ms: job_field(&job, "Time elapsed"),
        wall,
        dirty_pages_s: job_field(&job, "Dirty rate"),
        data_mib: job_field(&job, "Data processed"),
    }
}

/// The Debian guest under QEMU, with `fill_mib` of a non-zero file in its RAM-backed root,
/// rewriting DIRTY_MIB_PER_S of another file every second.
fn qemu_row(
    a: &Server,
    b: &Server,
    dir: &std::path::Path,
    fill_mib: u64,
) -> Result<Measured, String> {
    let kit = debian_kit()?;
    let script = format!(
        "dd if=/dev/zero bs=1M count={fill_mib} 2>/dev/null | tr '\\000' v > /fill; while true; do dd if=/dev/zero of=/dirty bs=1M count={DIRTY_MIB_PER_S} conv=notrunc 2>/dev/null; echo DIRTIED; sleep 1; done"
    );
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &script);
    let name = format!("mover{fill_mib}");
    let xml = debian_xml(&name, &kit)
        .replace(
            "<memory unit='MiB'>256</memory>",
            &format!("<memory unit='MiB'>{MEMORY_MIB}</memory>"),
        )
        .replace("vireo.hold=1", &format!("vireo.run64={encoded}"));
    let path = dir.join(format!("{name}.xml"));
    std::fs::write(&path, xml).unwrap();
    ok(a, &["define", path.to_str().unwrap()]);
    ok(a, &["--host", "a", "start", &name]);
    let console = Console::attach_on(a, Some("a"), &name, false);
    console.wait_for("DIRTIED", Duration::from_secs(180));
    console.wait_for("DIRTIED\r\nDIRTIED", Duration::from_secs(60));
    Ok(migrate(a, b, &name))
}

/// The tiny guest on vireo-vmm, rewriting DIRTY_MIB_PER_S of a `region_mib` region, page by
/// page (all of it non-zero).
fn vmm_row(
    a: &Server,
    b: &Server,
    dir: &std::path::Path,
    region_mib: u64,
) -> Result<Measured, String> {
    kvm_usable()?;
    let kit = kit_files(&["tiny.elf"])?;
    let xml = format!(
        "<domain type='kvm'><name>tiny{region_mib}</name><memory unit='MiB'>{MEMORY_MIB}</memory>
         <os><type>hvm</type><kernel>{}</kernel>
         <cmdline>console=ttyS0 tiny.test=dirty tiny.dirty_mib={region_mib} tiny.dirty_rate={DIRTY_MIB_PER_S} tiny.count_shift=13</cmdline></os>
         <devices><serial type='pty'/></devices></domain>",
        kit.join("tiny.elf").display()
    );
    let name = format!("tiny{region_mib}");
    let path = dir.join(format!("{name}.xml"));
    std::fs::write(&path, xml).unwrap();
    ok(a, &["define", path.to_str().unwrap()]);
    ok(a, &["--host", "a", "start", &name]);
    let console = Console::attach_on(a, Some("a"), &name, false);
    console.wait_for("dirty filled", Duration::from_secs(60));
    console.wait_for("count=16384", Duration::from_secs(60));
    Ok(migrate(a, b, &name))
}

fn main() {
    let bandwidth = link_bandwidth();
    println!(
        "link: loopback TCP, {:.0} MiB/s measured",
        bandwidth / 1048576.0
    );
    let dir = tempfile::tempdir().unwrap();
    let b = Server::vireod_with(&[], &["--config", &config(dir.path(), "b", "")]);
    let hosts = format!("[gateway.hosts.b]\nrun_dir = \"{}\"\n", b.run_dir.display());
    let a = Server::vireod_with(&[], &["--config", &config(dir.path(), "a", &hosts)]);
    // Light: what each guest needs of its memory to run (QEMU's Debian guest a few hundred
    // MiB, the tiny guest a 64 MiB region). Heavy: 512 MiB more of non-zero data on each,
    // which must cross the link (zero pages cross as flags on both engines).
    let rows = [
        ("qemu, light", qemu_row(&a, &b, dir.path(), 0)),
        ("vmm, light", vmm_row(&a, &b, dir.path(), 64)),
        ("qemu, +512 MiB data", qemu_row(&a, &b, dir.path(), 512)),
        ("vmm, 576 MiB region", vmm_row(&a, &b, dir.path(), 576)),
    ];

    let ideal_s = (MEMORY_MIB as f64 * 1048576.0) / bandwidth;
    println!();
    println!(
        "{MEMORY_MIB} MiB guests dirtying {DIRTY_MIB_PER_S} MiB/s, default limits, one run each; ideal total (memory / link) {ideal_s:.2} s:"
    );
    println!(
        "{:<26}{:>12}{:>12}{:>20}{:>16}{:>12}{:>12}",
        "engine, guest", "downtime", "total", "total / (mem/link)", "dirty rate", "data", "wall"
    );
    for (engine, row) in &rows {
        match row {
            Ok(m) => {
                let ratio = m.elapsed_ms / 1000.0 / ideal_s;
                println!(
                    "{:<26}{:>9.0} ms{:>10.2} s{:>20.2}{:>10.1} MiB/s{:>8.0} MiB{:>10.2} s   targets: downtime {}, total {}",
                    engine,
                    m.downtime_ms,
                    m.elapsed_ms / 1000.0,
                    ratio,
                    m.dirty_pages_s * 4096.0 / 1048576.0,
                    m.data_mib,
                    m.wall.as_secs_f64(),
                    if m.downtime_ms <= 50.0 {
                        "met"
                    } else {
                        "MISSED"
                    },
                    if ratio <= 1.3 { "met" } else { "MISSED" },
                );
            }
            Err(missing) => println!("{engine:<26}SKIPPED: needs {missing}"),
        }
    }
    println!("targets: downtime <= 50 ms, total <= 1.3x of memory/link");
}
