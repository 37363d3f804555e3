//! vireo-vmm's PCI virtio devices driven by the tiny guest's own virtio-pci drivers on this
//! machine's /dev/kvm: virtio-rng bytes, virtio-blk reads, writes, flush and read-only mode on a raw
//! image, with the data checked on the host and across boots.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

#[macro_use]
mod common;

use common::{VMM, ask, vmm_run, wait_for_text};

/// Boots the tiny guest with `devices` and `tests`, returns (exit status, serial output).
fn boot(kernel: &Path, vcpus: u8, devices: &[String], tests: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial");
    let output = Command::new(VMM)
        .args(["run", "--kernel"])
        .arg(kernel)
        .args([
            "--vcpus",
            &vcpus.to_string(),
            "--memory",
            "128",
            "--cmdline",
            &format!("tiny.test={tests}"),
        ])
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .args(devices)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(
        output.status.code().is_some(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

fn line<'a>(serial: &'a str, prefix: &str) -> &'a str {
    serial
        .lines()
        .map(str::trim_end)
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{serial}"))
}

/// A 16 MiB raw image whose sector 0 starts with `HELLO-SECTOR-0!!`.
fn image(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    let mut bytes = vec![0u8; 16 << 20];
    bytes[..16].copy_from_slice(b"HELLO-SECTOR-0!!");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[test]
fn rng_serves_random_bytes() {
    let kernel = tiny_or_skip!("tiny.elf");
    for vcpus in [1, 2] {
        let (status, serial) = boot(&kernel, vcpus, &["--rng".into()], "rng,poweroff");
        assert_eq!(status, Some(0), "{serial}");
        let rng = line(&serial, "TINY: rng");
        assert!(rng.starts_with("TINY: rng ok bytes=32 hex="), "{rng}");
    }
    // Two boots get different bytes.
    let (_, first) = boot(&kernel, 1, &["--rng".into()], "rng,poweroff");
    let (_, second) = boot(&kernel, 1, &["--rng".into()], "rng,poweroff");
    assert_ne!(line(&first, "TINY: rng"), line(&second, "TINY: rng"));
}

#[test]
fn block_reads_writes_flushes_and_keeps_data_across_boots() {
    let kernel = tiny_or_skip!("tiny.elf");
    for vcpus in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let disk = image(dir.path());
        let device = [
            "--disk".to_string(),
            format!("{},serial=TINYDISK", disk.display()),
        ];
        let (status, serial) = boot(&kernel, vcpus, &device, "blk,poweroff tiny.blk_seed=7");
        assert_eq!(status, Some(0), "{serial}");
        assert_eq!(
            line(&serial, "TINY: blk sector0="),
            format!("TINY: blk sector0={}", hex(b"HELLO-SECTOR-0!!"))
        );
        assert_eq!(
            line(&serial, "TINY: blk ok"),
            "TINY: blk ok capacity=32768 ro=0 wrote=1 flush=1"
        );
        // The write reached the image: sectors 8-15 hold data, sector 16 is untouched.
        let bytes = std::fs::read(&disk).unwrap();
        assert!(
            bytes[8 * 512..16 * 512].iter().any(|byte| *byte != 0),
            "the 4 KiB write reached the file"
        );
        assert!(bytes[16 * 512..17 * 512].iter().all(|byte| *byte == 0));
        // A later boot reads back what the first one wrote; a wrong seed does not match.
        let (_, serial) = boot(
            &kernel,
            vcpus,
            &device,
            "blk-verify,poweroff tiny.blk_seed=7",
        );
        assert_eq!(line(&serial, "TINY: blk-verify"), "TINY: blk-verify ok");
        let (_, serial) = boot(
            &kernel,
            vcpus,
            &device,
            "blk-verify,poweroff tiny.blk_seed=8",
        );
        assert!(
            line(&serial, "TINY: blk-verify").starts_with("TINY: blk-verify FAIL"),
            "{serial}"
        );
    }
}

#[test]
fn read_only_disks_refuse_writes_and_stay_unchanged() {
    let kernel = tiny_or_skip!("tiny.elf");
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path());
    let before = std::fs::read(&disk).unwrap();
    let device = ["--disk".to_string(), format!("{},readonly", disk.display())];
    let (status, serial) = boot(&kernel, 1, &device, "blk,poweroff tiny.blk_try_write=1");
    assert_eq!(status, Some(0), "{serial}");
    assert_eq!(
        line(&serial, "TINY: blk write-status="),
        "TINY: blk write-status=1",
        "VIRTIO_BLK_S_IOERR"
    );
    assert_eq!(
        line(&serial, "TINY: blk ok"),
        "TINY: blk ok capacity=32768 ro=1 wrote=0 flush=0"
    );
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        before,
        "a read-only disk is never written"
    );
}

#[test]
fn missing_disk_is_named() {
    let kernel = tiny_or_skip!("tiny.elf");
    let output = Command::new(VMM)
        .args(["run", "--kernel"])
        .arg(&kernel)
        .args(["--disk", "/no/such/disk.img"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--disk /no/such/disk.img: no such file")
    );
    let output = Command::new(VMM)
        .args(["run", "--kernel"])
        .arg(&kernel)
        .args(["--disk", "x,bogus"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--disk option `bogus`"));
}

#[test]
fn block_statistics_count_what_the_guest_did() {
    let kernel = tiny_or_skip!("tiny.elf");
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path());
    let serial = dir.path().join("serial");
    let control = dir.path().join("control.sock");
    let mut child = vmm_run(&kernel, &serial)
        .args([
            "--memory",
            "128",
            "--cmdline",
            "tiny.test=blk,wait-shutdown",
        ])
        .arg("--disk")
        .arg(&disk)
        .arg("--control")
        .arg(&control)
        .spawn()
        .unwrap();
    wait_for_text(&serial, "waiting for shutdown");
    let info = ask(&control, serde_json::json!({ "cmd": "info" }));
    let device = &info["devices"][0];
    assert_eq!(device["type"], "block", "{info}");
    let stats = &device["statistics"];
    // sector 0 (512 B) and the 4 KiB read-back; one 4 KiB write; one flush.
    assert_eq!(stats["read_requests"], 2, "{stats}");
    assert_eq!(stats["read_bytes"], 512 + 4096, "{stats}");
    assert_eq!(stats["write_requests"], 1, "{stats}");
    assert_eq!(stats["write_bytes"], 4096, "{stats}");
    assert_eq!(stats["flush_requests"], 1, "{stats}");
    assert_eq!(stats["errors"], 0, "{stats}");
    ask(&control, serde_json::json!({ "cmd": "shutdown" }));
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// A network namespace for one test, deleted on drop.
struct Namespace(String);

impl Namespace {
    fn new(tag: &str) -> Option<Namespace> {
        let name = format!("vireo-{tag}-{}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .ok()?;
        status.success().then(|| Namespace(name))
    }

    fn ip(&self, args: &[&str]) {
        let status = Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ip -n {} {args:?}", self.0);
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.0, program]);
        command
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Answers one TINY-NET-PING frame (ethertype 0x88b5) on the tap with a TINY-NET-PONG frame.
const RESPONDER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88b5))
s.bind((sys.argv[1], 0))
s.settimeout(20)
print("ready", flush=True)
while True:
    frame = s.recv(2048)
    if frame[12:14] == b"\x88\xb5" and frame[14:27] == b"TINY-NET-PING":
        break
payload = b"TINY-NET-PONG from host"
s.send(frame[6:12] + bytes.fromhex("020000000001") + b"\x88\xb5" + payload + bytes(46 - len(payload)))
print("ping from " + frame[6:12].hex(":"), flush=True)
"#;

#[test]
fn net_frames_go_both_ways_through_a_tap() {
    use std::io::BufRead;
    let kernel = tiny_or_skip!("tiny.elf");
    let Some(namespace) = Namespace::new("tinynet") else {
        eprintln!("SKIPPED: needs network namespaces (ip netns add)");
        return;
    };
    namespace.ip(&["tuntap", "add", "dev", "vtap0", "mode", "tap"]);
    namespace.ip(&["link", "set", "vtap0", "up"]);
    let mut responder = namespace
        .command("python3")
        .args(["-c", RESPONDER, "vtap0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 responder");
    let mut replies = std::io::BufReader::new(responder.stdout.take().unwrap()).lines();
    assert_eq!(replies.next().unwrap().unwrap(), "ready");

    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial");
    let output = namespace
        .command(VMM)
        .args(["run", "--kernel"])
        .arg(&kernel)
        .args([
            "--memory",
            "128",
            "--net",
            "tap=vtap0,mac=52:54:00:ab:cd:ef",
        ])
        .args(["--cmdline", "tiny.test=net,poweroff tiny.net_wait_ms=5000"])
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&serial).unwrap_or_default();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        line(&text, "TINY: net mac="),
        "TINY: net mac=52:54:00:ab:cd:ef"
    );
    assert_eq!(
        line(&text, "TINY: net rx"),
        "TINY: net rx len=60 payload=TINY-NET-PONG from host"
    );
    assert_eq!(
        replies.next().unwrap().unwrap(),
        "ping from 52:54:00:ab:cd:ef",
        "the host saw the guest's frame"
    );
    let _ = responder.wait();
}

#[test]
fn balloon_takes_the_pages_the_guest_gives_and_the_host_sets_a_target() {
    let kernel = tiny_or_skip!("tiny.elf");
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial");
    let control = dir.path().join("control.sock");
    let mut child = vmm_run(&kernel, &serial)
        .args([
            "--memory",
            "128",
            "--balloon",
            "--cmdline",
            "tiny.test=balloon,wait-shutdown tiny.balloon_pages=512",
        ])
        .arg("--control")
        .arg(&control)
        .spawn()
        .unwrap();
    let text = wait_for_text(&serial, "waiting for shutdown");
    assert_eq!(
        line(&text, "TINY: balloon"),
        "TINY: balloon ok inflated=512"
    );
    let ask = |request: serde_json::Value| ask(&control, request);
    let info = ask(serde_json::json!({ "cmd": "info" }));
    let stats = &info["devices"][0]["statistics"];
    assert_eq!(info["devices"][0]["type"], "balloon", "{info}");
    assert_eq!(
        info["devices"][0]["ioeventfd"], true,
        "notifies go through KVM ioeventfds: {info}"
    );
    assert_eq!(stats["inflated_pages"], 512, "{stats}");
    assert_eq!(
        stats["actual_pages"], 512,
        "the guest reported what it gave: {stats}"
    );
    // setmem 96 MiB of 128: the balloon is asked for 32 MiB = 8192 pages.
    let reply = ask(serde_json::json!({ "cmd": "balloon", "target_mib": 96 }));
    assert_eq!(
        reply["devices"][0]["statistics"]["target_pages"], 8192,
        "{reply}"
    );
    let reply = ask(serde_json::json!({ "cmd": "balloon", "target_mib": 4096 }));
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("more than the guest's 128 MiB"),
        "{reply}"
    );
    let typo = Command::new(VMM)
        .arg("control")
        .arg(&control)
        .args(["balloon", "96M"])
        .output()
        .unwrap();
    assert_eq!(typo.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&typo.stderr).contains("not `96M`"),
        "{typo:?}"
    );
    ask(serde_json::json!({ "cmd": "shutdown" }));
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!control.exists(), "the control socket goes with the VMM");
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img")
}

#[test]
fn qcow2_overlay_reads_its_backing_file_and_takes_the_writes() {
    let kernel = tiny_or_skip!("tiny.elf");
    if Command::new("qemu-img").arg("--version").output().is_err() {
        eprintln!("SKIPPED: needs qemu-img (Debian package qemu-utils)");
        return;
    }
    for vcpus in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let raw = image(dir.path());
        let base = dir.path().join("base.qcow2");
        let overlay = dir.path().join("overlay.qcow2");
        let path = |p: &Path| p.to_str().unwrap().to_string();
        assert!(
            qemu_img(&[
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                &path(&raw),
                &path(&base)
            ])
            .status
            .success()
        );
        assert!(
            qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                &path(&base),
                "-F",
                "qcow2",
                &path(&overlay)
            ])
            .status
            .success()
        );
        let device = [
            "--disk".to_string(),
            format!("{},format=qcow2", overlay.display()),
        ];
        let (status, serial) = boot(&kernel, vcpus, &device, "blk,poweroff tiny.blk_seed=5");
        assert_eq!(status, Some(0), "{serial}");
        assert_eq!(
            line(&serial, "TINY: blk sector0="),
            format!("TINY: blk sector0={}", hex(b"HELLO-SECTOR-0!!")),
            "read through the backing file"
        );
        assert_eq!(
            line(&serial, "TINY: blk ok"),
            "TINY: blk ok capacity=32768 ro=0 wrote=1 flush=1"
        );
        // qemu-img agrees the overlay is sound, holds the write, and the base is untouched.
        assert!(qemu_img(&["check", &path(&overlay)]).status.success());
        let flat = dir.path().join("flat.raw");
        assert!(
            qemu_img(&["convert", "-O", "raw", &path(&overlay), &path(&flat)])
                .status
                .success()
        );
        let bytes = std::fs::read(&flat).unwrap();
        assert_eq!(&bytes[..16], b"HELLO-SECTOR-0!!");
        assert!(bytes[8 * 512..16 * 512].iter().any(|byte| *byte != 0));
        let base_flat = dir.path().join("base.raw");
        assert!(
            qemu_img(&["convert", "-O", "raw", &path(&base), &path(&base_flat)])
                .status
                .success()
        );
        assert_eq!(
            std::fs::read(&base_flat).unwrap(),
            std::fs::read(&raw).unwrap(),
            "the backing file is never written"
        );
        let (_, serial) = boot(
            &kernel,
            vcpus,
            &device,
            "blk-verify,poweroff tiny.blk_seed=5",
        );
        assert_eq!(line(&serial, "TINY: blk-verify"), "TINY: blk-verify ok");
    }
}

#[test]
fn console_socket_carries_what_the_host_types_to_the_guest() {
    use std::io::Write;
    let kernel = tiny_or_skip!("tiny.elf");
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial");
    let socket = dir.path().join("hvc.sock");
    let mut child = vmm_run(&kernel, &serial)
        .args(["--cmdline", "tiny.test=console,poweroff", "--console"])
        .arg(format!("unix:{}", socket.display()))
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut client = loop {
        match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(client) => break client,
            Err(err) => {
                assert!(
                    started.elapsed().as_secs() < 10,
                    "{}: {err}",
                    socket.display()
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    };
    client.write_all(b"typed-on-the-host").unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!socket.exists(), "the console socket goes with the VMM");
    let text = std::fs::read_to_string(&serial).unwrap();
    assert_eq!(
        line(&text, "TINY: console"),
        format!(
            "TINY: console ok bytes=17 hex={}",
            hex(b"typed-on-the-host")
        )
    );
}
