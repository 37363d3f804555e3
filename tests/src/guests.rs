//! The Debian test guest under QEMU as tests use it: its kit, its XML (plain, or counting on its
//! serial port), and `vireo console` driven from a test.

// Test harness: a console pipe that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Server, binary, kit_files, qemu_installed, wait_until};

/// The Debian test guest under QEMU, or what is missing.
pub fn debian_kit() -> Result<std::path::PathBuf, String> {
    qemu_installed()?;
    kit_files(&["vmlinuz", "initramfs.cpio.gz"])
}

pub fn debian_xml(name: &str, kit: &Path) -> String {
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 vireo.hold=1</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <serial type='pty'/>
  </devices>
</domain>
",
        kernel = kit.join("vmlinuz").display(),
        initrd = kit.join("initramfs.cpio.gz").display(),
    )
}

/// The Debian guest running a counter on its serial port: `N=0`, `N=1`, ... every 0.2 s. It
/// shows where a guest is in time without typing into a shell.
pub fn counting_debian_xml(name: &str, kit: &Path) -> String {
    // base64 of: i=0; while true; do echo N=$i; i=$((i+1)); sleep 0.2; done
    debian_xml(name, kit).replace(
        "vireo.hold=1",
        "vireo.run64=aT0wOyB3aGlsZSB0cnVlOyBkbyBlY2hvIE49JGk7IGk9JCgoaSsxKSk7IHNsZWVwIDAuMjsgZG9uZQ==",
    )
}

/// `vireo console NAME` in the background, collecting what the guest prints. Like a terminal,
/// it answers the shell's cursor-position query (ESC [6n), which busybox's line editor waits
/// for, eating typed characters as the answer otherwise.
pub struct Console {
    child: Child,
    input: Arc<Mutex<std::process::ChildStdin>>,
    seen: Arc<Mutex<String>>,
    /// What the client printed on stderr (its errors), for failure messages.
    errors: Arc<Mutex<String>>,
}

impl Console {
    pub fn attach(server: &Server, name: &str, force: bool) -> Console {
        Console::attach_on(server, None, name, force)
    }

    /// As `attach`, for a domain of another host behind the gateway (`vireo --host HOST`).
    pub fn attach_on(server: &Server, host: Option<&str>, name: &str, force: bool) -> Console {
        let mut command = Command::new(binary("vireo"));
        command
            .arg("-c")
            .arg(format!("unix://{}", server.socket.display()));
        if let Some(host) = host {
            command.args(["--host", host]);
        }
        command.args(["console", name]);
        if force {
            command.arg("--force");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let seen = Arc::new(Mutex::new(String::new()));
        let input = Arc::new(Mutex::new(child.stdin.take().unwrap()));
        let mut out = child.stdout.take().unwrap();
        let sink = seen.clone();
        let answer = input.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = out.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                for _ in 0..text.matches("\u{1b}[6n").count() {
                    let mut input = answer.lock().unwrap();
                    let _ = input.write_all(b"\x1b[1;1R");
                    let _ = input.flush();
                }
                sink.lock().unwrap().push_str(&text);
            }
        });
        let errors = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let error_sink = errors.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            error_sink.lock().unwrap().push_str(&text);
        });
        let console = Console {
            child,
            input,
            seen,
            errors,
        };
        // Attached once the client says so: what the guest prints from then on is seen.
        console.wait_for(
            &format!("Connected to domain '{name}'"),
            Duration::from_secs(10),
        );
        console
    }

    pub fn wait_for(&self, text: &str, deadline: Duration) {
        let started = Instant::now();
        while !self.seen.lock().unwrap().contains(text) {
            assert!(
                started.elapsed() < deadline,
                "console never showed {text:?}; it showed:\n{}\nand on stderr:\n{}",
                self.seen.lock().unwrap(),
                self.errors.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where the output seen so far ends.
    pub fn mark(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The counts printed after `mark`: the counting Debian guest's `N=<count>` lines, the tiny
    /// guest's `TINY: count=<count>`. Only whole lines: a count still arriving ("count=1024"
    /// of "count=10240") is not one yet.
    pub fn counts_since(&self, mark: usize) -> Vec<u64> {
        let seen = self.seen.lock().unwrap();
        let since = seen.get(mark..).unwrap_or("");
        since[..since.rfind('\n').unwrap_or(0)]
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                l.strip_prefix("N=")
                    .or_else(|| l.strip_prefix("TINY: count="))?
                    .parse()
                    .ok()
            })
            .collect()
    }

    pub fn last_count(&self) -> u64 {
        self.counts_since(0).last().copied().unwrap_or(0)
    }

    pub fn type_text(&mut self, text: &str) {
        let mut input = self.input.lock().unwrap();
        input.write_all(text.as_bytes()).unwrap();
        input.flush().unwrap();
    }

    /// Ctrl-], as in virsh; the client must exit by itself.
    pub fn leave(mut self) -> String {
        self.type_text("\u{1d}");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "vireo console did not leave on Ctrl-]"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "vireo console exited with {status}");
        self.seen.lock().unwrap().clone()
    }

    /// Waits for the session to end by itself (the guest stopped or another client forced it).
    pub fn wait_ended(mut self, deadline: Duration) -> (bool, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < deadline,
                "the console session did not end"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread has everything once the pipe closes with the process.
        wait_until(Duration::from_secs(5), "the console's stderr", || {
            Arc::strong_count(&self.errors).eq(&1).then_some(())
        });
        let errors = self.errors.lock().unwrap().clone();
        (status.success(), errors)
    }
}
