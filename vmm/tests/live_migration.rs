//! Live migration between two vireo-vmm processes on this host's KVM: the tiny guest's `dirty`
//! action rewrites its memory at a fixed rate and checks every page it rewrites, so a page the
//! migration lost or left stale stops it with "dirty FAIL". A cancel, a destination killed
//! midway and a hostile peer leave the source running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{DEADLINE, VMM, ask};
use serde_json::{Value, json};

/// Pages between two printed counts (tiny.count_shift).
const SHIFT: u32 = 11;

struct Vmm {
    child: Child,
    serial: PathBuf,
    control: PathBuf,
}

impl Vmm {
    fn ask(&self, request: Value) -> Value {
        ask(&self.control, request)
    }

    fn info(&self) -> Value {
        self.ask(json!({"cmd": "info"}))
    }

    fn counts(&self) -> Vec<u64> {
        counts(&std::fs::read_to_string(&self.serial).unwrap_or_default())
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    fn wait_exit(&mut self) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(started.elapsed() < DEADLINE, "vireo-vmm did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the guest printed `more` counts beyond what it had.
    fn wait_counting(&self, more: usize) {
        let had = self.counts().len();
        wait("the guest counting on", || {
            (self.counts().len() >= had + more).then_some(())
        });
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn counts(serial: &str) -> Vec<u64> {
    serial
        .lines()
        .filter_map(|line| line.trim_end().strip_prefix("TINY: count=")?.parse().ok())
        .collect()
}

fn wait<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spawn(dir: &Path, name: &str, args: &[String]) -> Vmm {
    let serial = dir.join(format!("{name}.serial"));
    let control = dir.join(format!("{name}.sock"));
    let child = Command::new(VMM)
        .args(args)
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .arg("--control")
        .arg(&control)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vireo-vmm");
    // Listening, not only bound: the file appears a moment before the socket listens.
    wait("the control socket", || {
        std::os::unix::net::UnixStream::connect(&control)
            .ok()
            .map(drop)
    });
    Vmm {
        child,
        serial,
        control,
    }
}

/// A guest dirtying `rate` MiB/s over `region` MiB.
fn source(dir: &Path, kernel: &Path, vcpus: u8, rate: u32, region: u64) -> Vmm {
    let vmm = spawn(
        dir,
        "source",
        &[
            "run".into(),
            "--kernel".into(),
            kernel.display().to_string(),
            "--vcpus".into(),
            vcpus.to_string(),
            "--memory".into(),
            "128".into(),
            "--cmdline".into(),
            format!(
                "tiny.test=dirty tiny.dirty_mib={region} tiny.dirty_rate={rate} tiny.count_shift={SHIFT}"
            ),
        ],
    );
    // Two passes over the region: every page has been rewritten (and checked) once.
    wait("the guest dirtying", || {
        (vmm.counts().last().copied().unwrap_or(0) >= 2 * region * 256).then_some(())
    });
    vmm
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn destination(dir: &Path) -> (Vmm, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let vmm = spawn(
        dir,
        "destination",
        &["receive".into(), "--listen".into(), address.clone()],
    );
    (vmm, address)
}

/// Polls the source's migration until it ends; returns its last status and the largest
/// throttle seen.
fn wait_migration(source: &Vmm) -> (Value, u64) {
    let mut throttle = 0;
    let status = wait("the migration to end", || {
        let migration = source.info()["migration"].clone();
        throttle = throttle.max(migration["throttle_percent"].as_u64().unwrap_or(0));
        matches!(
            migration["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        )
        .then_some(migration)
    });
    (status, throttle)
}

#[test]
fn a_dirtying_guest_migrates_live_and_checks_every_page_on_arrival() {
    let kernel = tiny_or_skip!("tiny.elf");
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path(), &kernel, 2, 32, 16);
    let (mut destination, address) = destination(dir.path());
    assert_eq!(destination.info()["state"], "incoming");
    let refused = destination.ask(json!({"cmd": "shutdown"}));
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("still arriving")),
        "{refused}"
    );

    let started = source.ask(json!({"cmd": "migrate", "address": address, "verify": true}));
    assert_eq!(started["ok"], true, "{started}");
    let (status, _) = wait_migration(&source);
    assert_eq!(status["status"], "completed", "{status}");
    assert!(status["iteration"].as_u64().unwrap() >= 1, "{status}");
    assert!(
        status["dirty_pages_rate"].as_u64().unwrap() > 0,
        "the guest dirtied memory while it moved: {status}"
    );
    let info = source.info();
    assert_eq!(info["state"], "paused", "the source stays stopped");

    // The same memory on both sides at the switchover.
    let crc = status["memory_crc32"].as_u64().expect("verified");
    let arrived = destination.info();
    assert_eq!(arrived["state"], "running", "{arrived}");
    assert_eq!(arrived["restored_memory_crc32"].as_u64(), Some(crc));
    assert_eq!(arrived["vcpus"].as_array().map(Vec::len), Some(2));

    // It goes on counting from where it was, every page it rewrites still what it wrote
    // before (two more passes over the region), with no count lost or repeated.
    let before = *source.counts().last().unwrap();
    wait("two more passes on the destination", || {
        (destination.counts().last().copied().unwrap_or(0) >= before + 2 * 16 * 256).then_some(())
    });
    let serial = destination.serial();
    assert!(!serial.contains("FAIL"), "{serial}");
    let all = counts(&(source.serial() + &serial));
    assert!(
        all.windows(2).all(|pair| pair[1] == pair[0] + (1 << SHIFT)),
        "{all:?}"
    );
    eprintln!(
        "migrated {} MiB in {} ms, {} iterations, downtime {} ms (verified: both sides checksum memory while paused)",
        status["transferred_bytes"].as_u64().unwrap() >> 20,
        status["elapsed_ms"],
        status["iteration"],
        status["downtime_ms"]
    );
    assert_eq!(
        destination.ask(json!({"cmd": "stop"}))["ok"],
        true,
        "the arrived VM answers"
    );
    assert_eq!(destination.wait_exit(), Some(5));
}

#[test]
fn a_cancel_or_a_lost_destination_leaves_the_source_running() {
    let kernel = tiny_or_skip!("tiny.elf");
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path(), &kernel, 1, 32, 16);
    for how in ["cancel", "kill"] {
        let (mut destination, address) = destination(dir.path());
        let started = source.ask(json!({
            "cmd": "migrate", "address": address, "bandwidth_mib_s": 1
        }));
        assert_eq!(started["ok"], true, "{started}");
        let again = source.ask(json!({"cmd": "migrate", "address": address}));
        assert!(
            again["error"]
                .as_str()
                .is_some_and(|e| e.contains("already running")),
            "{again}"
        );
        wait("bytes arriving", || {
            (destination.info()["received_bytes"].as_u64().unwrap_or(0) > 0).then_some(())
        });
        // Limits change while it runs.
        let tuned = source.ask(json!({"cmd": "migrate-tune", "max_downtime_ms": 40}));
        assert_eq!(tuned["ok"], true, "{tuned}");
        assert_eq!(source.info()["migration"]["max_downtime_ms"], 40);
        if how == "cancel" {
            assert_eq!(source.ask(json!({"cmd": "migrate-cancel"}))["ok"], true);
        } else {
            destination.child.kill().unwrap();
        }
        let (status, _) = wait_migration(&source);
        let expected = if how == "cancel" {
            "cancelled"
        } else {
            "failed"
        };
        assert_eq!(status["status"], expected, "{how}: {status}");
        assert_eq!(source.info()["state"], "running", "{how}");
        source.wait_counting(3);
        if how == "cancel" {
            // The destination learns the source went away and gives up.
            assert_eq!(destination.wait_exit(), Some(1));
        }
        assert!(!source.serial().contains("FAIL"), "{}", source.serial());
    }
    let nothing = source.ask(json!({"cmd": "migrate-cancel"}));
    assert!(
        nothing["error"]
            .as_str()
            .is_some_and(|e| e.contains("no migration")),
        "{nothing}"
    );
    let unreachable =
        source.ask(json!({"cmd": "migrate", "address": format!("127.0.0.1:{}", free_port())}));
    assert!(
        unreachable["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach the destination")),
        "{unreachable}"
    );
    assert_eq!(source.info()["state"], "running");
}

#[test]
fn auto_converge_slows_a_guest_that_outruns_the_link() {
    let kernel = tiny_or_skip!("tiny.elf");
    let dir = tempfile::tempdir().unwrap();
    // 64 MiB/s dirtied over an 8 MiB region, 16 MiB/s sent, 30 ms allowed: without help this
    // never fits.
    let source = source(dir.path(), &kernel, 1, 64, 8);
    let (mut destination, address) = destination(dir.path());
    let started = source.ask(json!({
        "cmd": "migrate", "address": address, "bandwidth_mib_s": 16,
        "max_downtime_ms": 30, "auto_converge": true
    }));
    assert_eq!(started["ok"], true, "{started}");
    let (status, throttle) = wait_migration(&source);
    assert_eq!(status["status"], "completed", "{status}");
    assert!(
        throttle >= 20,
        "the vCPU was throttled: at most {throttle}%"
    );
    destination.wait_counting(3);
    assert!(!destination.serial().contains("FAIL"));
    assert_eq!(destination.info()["migration"], Value::Null);
    destination.ask(json!({"cmd": "stop"}));
    assert_eq!(destination.wait_exit(), Some(5));
}

#[test]
fn a_receiver_refuses_a_peer_that_does_not_speak_the_protocol() {
    // The receiver refuses before it lays out a VM: no KVM needed.
    let dir = tempfile::tempdir().unwrap();
    let (mut destination, address) = destination(dir.path());
    let mut peer = std::net::TcpStream::connect(&address).unwrap();
    std::io::Write::write_all(&mut peer, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(destination.wait_exit(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(destination.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("did not speak vireo-vmm's migration protocol"),
        "{stderr}"
    );
}
