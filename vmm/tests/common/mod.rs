//! What the vireo-vmm integration tests share: the binary, the kit's tiny guests (or why a test
//! must skip), the control socket, and deadline-bound waits.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const VMM: &str = env!("CARGO_BIN_EXE_vireo-vmm");
pub const DEADLINE: Duration = Duration::from_secs(60);

/// `vireo-vmm run --kernel KERNEL --serial file:SERIAL`, for the caller to add to.
pub fn vmm_run(kernel: &Path, serial: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(VMM);
    command
        .args(["run", "--kernel"])
        .arg(kernel)
        .arg("--serial")
        .arg(format!("file:{}", serial.display()));
    command
}

pub fn kit_dir() -> PathBuf {
    std::env::var_os("VIREO_GUEST_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/vireo/guests"), PathBuf::from)
}

/// The kit's `image`, or what is missing to run. scripts/test builds the kit and sets
/// VIREO_GUEST_DIR: there a missing guest is a failure, not a skip.
pub fn tiny(image: &str) -> Result<PathBuf, String> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Err("a usable /dev/kvm".into());
    }
    let path = kit_dir().join(image);
    if !path.is_file() {
        assert!(
            std::env::var_os("VIREO_GUEST_DIR").is_none(),
            "{} is missing from the kit",
            path.display()
        );
        return Err(format!("{} (run scripts/guest-kit)", path.display()));
    }
    Ok(path)
}

/// The tiny guest image, or a skip that names what is missing.
macro_rules! tiny_or_skip {
    ($image:expr) => {
        match common::tiny($image) {
            Ok(path) => path,
            Err(needs) => {
                eprintln!("SKIPPED: needs {needs}");
                return;
            }
        }
    };
}

/// One request on a VMM's control socket, and its JSON reply.
pub fn ask(socket: &Path, request: serde_json::Value) -> serde_json::Value {
    let mut stream = UnixStream::connect(socket).expect("control socket");
    stream
        .write_all(format!("{request}\n").as_bytes())
        .expect("send request");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("read reply");
    serde_json::from_str(&line).expect("JSON reply")
}

/// Waits (bounded) until the file at `path` contains `needle`; returns its text.
pub fn wait_for_text(path: &Path, needle: &str) -> String {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no `{needle}` in {} within {DEADLINE:?}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
