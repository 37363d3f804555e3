//! Live migration of a 1 GiB guest that dirties memory at a fixed rate, between two hosts on this
//! machine: downtime and total time for each engine, and total time against memory size over the
//! link bandwidth measured in the same run (loopback TCP). Targets: downtime at most 50 ms with
//! default settings (QEMU's default limit is 300 ms), total time within 1.3x of memory/bandwidth.
//!
//! The qemu engine is QEMU's own migration, driven by Vireo; the vmm engine's live migration is
//! not built yet, and its row says so.
//!
//! `cargo build --release --workspace --bins && cargo bench -p vireo-tests --bench migration`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use vireo_tests::guests::{Console, debian_kit, debian_xml};
use vireo_tests::{Server, host_config as config, ok};

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

fn main() {
    let kit = match debian_kit() {
        Ok(kit) => kit,
        Err(missing) => {
            println!("SKIPPED: needs {missing}");
            return;
        }
    };
    let bandwidth = link_bandwidth();
    println!(
        "link: loopback TCP, {:.0} MiB/s measured",
        bandwidth / 1048576.0
    );
    let dir = tempfile::tempdir().unwrap();
    let b = Server::vireod_with(&[], &["--config", &config(dir.path(), "b", "")]);
    let hosts = format!("[gateway.hosts.b]\nrun_dir = \"{}\"\n", b.run_dir.display());
    let a = Server::vireod_with(&[], &["--config", &config(dir.path(), "a", &hosts)]);

    // The guest rewrites DIRTY_MIB_PER_S of its memory every second, and says so.
    let script = format!(
        "while true; do dd if=/dev/zero of=/dirty bs=1M count={DIRTY_MIB_PER_S} conv=notrunc 2>/dev/null; echo DIRTIED; sleep 1; done"
    );
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &script);
    let xml = debian_xml("mover", &kit)
        .replace(
            "<memory unit='MiB'>256</memory>",
            &format!("<memory unit='MiB'>{MEMORY_MIB}</memory>"),
        )
        .replace("vireo.hold=1", &format!("vireo.run64={encoded}"));
    let path = dir.path().join("mover.xml");
    std::fs::write(&path, xml).unwrap();
    ok(&a, &["define", path.to_str().unwrap()]);
    ok(&a, &["--host", "a", "start", "mover"]);
    let console = Console::attach_on(&a, Some("a"), "mover", false);
    console.wait_for("DIRTIED", Duration::from_secs(180));
    console.wait_for("DIRTIED\r\nDIRTIED", Duration::from_secs(60));

    let started = Instant::now();
    ok(&a, &["migrate", "--live", "mover", "b"]);
    let wall = started.elapsed();
    let job = ok(&a, &["--host", "a", "domjobinfo", "mover", "--completed"]);
    let downtime_ms = job_field(&job, "Total downtime");
    let elapsed_ms = job_field(&job, "Time elapsed");
    let ideal_s = (MEMORY_MIB as f64 * 1048576.0) / bandwidth;
    println!();
    println!("{MEMORY_MIB} MiB guest dirtying {DIRTY_MIB_PER_S} MiB/s, default limits, one run:");
    println!(
        "{:<28}{:>14}{:>14}{:>22}",
        "engine", "downtime", "total", "total / (mem/link)"
    );
    println!(
        "{:<28}{:>11.0} ms{:>11.2} s{:>22.2}   (wall {:.2} s)",
        "qemu (QEMU's migration)",
        downtime_ms,
        elapsed_ms / 1000.0,
        elapsed_ms / 1000.0 / ideal_s,
        wall.as_secs_f64()
    );
    println!(
        "{:<28}{:>14}{:>14}{:>22}",
        "vmm (vireo-vmm)", "not built", "-", "-"
    );
    println!(
        "targets: downtime <= 50 ms ({}), total <= 1.3x of {:.2} s ({})",
        if downtime_ms <= 50.0 { "met" } else { "MISSED" },
        ideal_s,
        if elapsed_ms / 1000.0 <= 1.3 * ideal_s {
            "met"
        } else {
            "MISSED"
        }
    );
    ok(&b, &["destroy", "mover"]);
}
