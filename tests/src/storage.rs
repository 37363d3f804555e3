//! Fixtures for the storage end-to-end tests: loop devices, an LVM sandbox, a userspace iSCSI
//! target (tgtd), a userspace NFS server (nfs-ganesha) and an iscsiadm sandbox. Each starts only
//! what it owns, on 127.0.0.1 and temporary directories, and undoes it on drop. A constructor
//! returns `Err(what is missing)` when the host lacks a tool, so that a test can `skip!` naming
//! it. Facts about these tools on the test machines are in the storage facts notes
//! (`/tmp/notes/storage-facts.md` when written); the comments here repeat the ones the code
//! relies on.
//!
//! Every command is run with an argument vector, never through a shell.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::{stderr, stdout};

/// Where a tool is: PATH, then the sbin directories (a test may run with a user PATH).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `Ok` when every `(program, Debian package)` is installed, else the first missing one named
/// with its package, for `skip!`.
pub fn require_tools(tools: &[(&str, &str)]) -> Result<(), String> {
    match tools
        .iter()
        .find(|(program, _)| find_tool(program).is_none())
    {
        Some((program, package)) => Err(format!("{program} (Debian package {package})")),
        None => Ok(()),
    }
}

/// What scripts/nested-storage carries into the nested host and builds with, by Debian package.
pub const NESTED_STORAGE_TOOLS: &[(&str, &str)] = &[
    ("iscsid", "open-iscsi"),
    ("iscsiadm", "open-iscsi"),
    ("iscsi-ls", "libiscsi-bin"),
    ("qemu-img", "qemu-utils"),
    ("mount", "mount"),
    ("umount", "mount"),
    ("mount.nfs", "nfs-common"),
    ("showmount", "nfs-common"),
    ("strip", "binutils"),
    ("cpio", "cpio"),
];

/// Runs scripts/nested-storage with the built binaries, the kit and `args`, and answers its
/// console and stderr. The emulated host (QEMU TCG) has been seen to freeze whole under load
/// (vmm/tests/nested_linux.rs): one more complete run is allowed, after `before_retry` puts back
/// what the first changed, and a test's assertions hold for that one run.
pub fn run_nested_storage(
    kit: &Path,
    args: &[&str],
    mut before_retry: impl FnMut(),
) -> (String, String) {
    let run = || {
        let started = std::time::Instant::now();
        let output = Command::new(crate::repo_root().join("scripts/nested-storage"))
            .arg("--bin-dir")
            .arg(crate::bin_dir())
            .arg("--kit")
            .arg(kit)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/nested-storage");
        eprintln!(
            "scripts/nested-storage ran {:?} ({})",
            started.elapsed(),
            output.status
        );
        (
            String::from_utf8_lossy(&output.stdout).replace('\r', ""),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (console, errors) = run();
    if console.contains("NESTED-DONE") {
        return (console, errors);
    }
    eprintln!("RETRY: the nested host stopped before NESTED-DONE:\n{console}\n{errors}");
    before_retry();
    run()
}

/// The NESTED-* lines of a nested host's console, each from its marker on.
pub fn nested_report(console: &str) -> Vec<String> {
    console
        .lines()
        .filter_map(|line| {
            line.find("NESTED-")
                .map(|at| line[at..].trim_end().to_string())
        })
        .collect()
}

/// A `Command` for `name`, resolved with `find_tool`.
pub fn tool(name: &str) -> Command {
    Command::new(find_tool(name).unwrap_or_else(|| PathBuf::from(name)))
}

/// Runs `name args`, capturing its output (stdin is /dev/null: LVM's prompts answer "n").
pub fn run_tool<S: AsRef<OsStr>>(name: &str, args: &[S]) -> Output {
    tool(name)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {name}: {err}"))
}

/// Runs `name args` and returns its stdout; panics with the command line and stderr on failure.
pub fn run_tool_ok<S: AsRef<OsStr>>(name: &str, args: &[S]) -> String {
    let output = run_tool(name, args);
    assert!(
        output.status.success(),
        "`{name} {}` failed ({}): {}{}",
        display_args(args),
        output.status,
        stderr(&output),
        stdout(&output)
    );
    stdout(&output)
}

fn display_args<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|arg| arg.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The size in bytes of a block device (`blockdev --getsize64`).
pub fn block_device_size(device: &Path) -> u64 {
    let out = run_tool_ok("blockdev", &[OsStr::new("--getsize64"), device.as_os_str()]);
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("blockdev printed {out:?}"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the fixtures retry when they lose a race).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn sparse_file(path: &Path, size: u64) {
    fs::File::create(path)
        .and_then(|file| file.set_len(size))
        .unwrap_or_else(|err| panic!("cannot create {}: {err}", path.display()));
}

fn log_file(path: &Path) -> (Stdio, Stdio) {
    let log = fs::File::create(path)
        .unwrap_or_else(|err| panic!("cannot create {}: {err}", path.display()));
    let copy = log.try_clone().expect("log file");
    (Stdio::from(copy), Stdio::from(log))
}

/// Sends `signal` to `child`, waits up to `deadline`, then SIGKILLs; always reaps.
fn stop_child(child: &mut Child, signal: Option<nix::sys::signal::Signal>, deadline: Duration) {
    if let (Some(signal), Ok(pid)) = (signal, i32::try_from(child.id())) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
    let started = Instant::now();
    while started.elapsed() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------------
// Loop devices
// ---------------------------------------------------------------------------------------------

/// A sparse file attached to a free loop device (`losetup -f --show`).
///
/// Attached with `-P` (partition scanning). The kernel here has no partition-table parsers
/// (attaching and BLKRRPART find nothing): partitions exist only when added through BLKPG,
/// which `parted` does itself after every change and `partx -a`/`-u`/`-d` do on request
/// (`sfdisk` does not). They outlive `losetup -d` and would reappear on the next user of the
/// same loop device, so drop deletes them first.
pub struct LoopDevice {
    device: PathBuf,
    name: String,
    backing: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDevice {
    /// Attaches a sparse backing file of `size` bytes. `Err` names what is missing (the tools,
    /// root, or a free loop device).
    pub fn new(size: u64) -> Result<LoopDevice, String> {
        require_tools(&[
            ("losetup", "mount"),
            ("partx", "util-linux"),
            ("blockdev", "util-linux"),
        ])?;
        let dir = tempfile::tempdir().expect("temp dir");
        let backing = dir.path().join("disk.img");
        sparse_file(&backing, size);
        let output = run_tool(
            "losetup",
            // -P: svc-storage's disk pools refuse a loop device without partition scanning.
            // BLKPG (parted, partx) works either way here; with -P a re-read (BLKRRPART: sfdisk,
            // wipefs, blockdev --rereadpt) succeeds and, as this kernel has no partition-table
            // parsers, drops every partition until parted or partx adds them back.
            &[
                OsStr::new("-f"),
                OsStr::new("-P"),
                OsStr::new("--show"),
                backing.as_os_str(),
            ],
        );
        if !output.status.success() {
            return Err(format!(
                "a free loop device and root (`losetup -f --show` failed: {})",
                stderr(&output).trim()
            ));
        }
        let device = PathBuf::from(stdout(&output).trim());
        let name = device
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(LoopDevice {
            device,
            name,
            backing,
            _dir: dir,
        })
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.device
    }

    /// `loopN`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn backing_file(&self) -> &Path {
        &self.backing
    }

    /// Makes the whole device an ext4 filesystem (`mkfs.ext4 -q -F`).
    pub fn make_ext4(&self) {
        run_tool_ok(
            "mkfs.ext4",
            &[OsStr::new("-q"), OsStr::new("-F"), self.device.as_os_str()],
        );
    }

    /// The partitions the kernel has for this device (`/dev/loopNpM`, from sysfs), by number.
    /// devtmpfs creates and removes their nodes; there is no udev.
    pub fn partitions(&self) -> Vec<PathBuf> {
        let prefix = format!("{}p", self.name);
        let mut numbers: Vec<u32> = fs::read_dir(Path::new("/sys/block").join(&self.name))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                entry
                    .file_name()
                    .to_str()?
                    .strip_prefix(&prefix)?
                    .parse()
                    .ok()
            })
            .collect();
        numbers.sort_unstable();
        numbers
            .into_iter()
            .map(|number| PathBuf::from(format!("/dev/{prefix}{number}")))
            .collect()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if !self.partitions().is_empty() {
            let _ = run_tool("partx", &[OsStr::new("-d"), self.device.as_os_str()]);
        }
        let output = run_tool("losetup", &[OsStr::new("-d"), self.device.as_os_str()]);
        if !output.status.success() {
            eprintln!(
                "losetup -d {} failed: {}",
                self.device.display(),
                stderr(&output)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// LVM
// ---------------------------------------------------------------------------------------------

/// The `--config` string for LVM commands here: metadata only (no device-mapper), no udev, no
/// lvmpolld/dmeventd, no hints file (/run/lvm/hints), no metadata backups or archives
/// (/etc/lvm/backup, /etc/lvm/archive), lock files in `lock_dir` instead of /run/lock/lvm, and
/// scanning restricted to `devices`.
pub fn lvm_config(lock_dir: &Path, devices: &[&Path]) -> String {
    let accept: Vec<String> = devices
        .iter()
        .map(|device| format!("\"a|^{}$|\"", regex_escape(&device.to_string_lossy())))
        .chain(std::iter::once("\"r|.*|\"".to_string()))
        .collect();
    format!(
        "global{{activation=0 locking_dir=\"{}\" use_lvmpolld=0 event_activation=0}} \
         activation{{udev_sync=0 udev_rules=0 monitoring=0}} \
         devices{{obtain_device_list_from_udev=0 external_device_info_source=\"none\" \
         hints=\"none\" use_devicesfile=0 filter=[{}]}} \
         backup{{backup=0 archive=0}}",
        lock_dir.display(),
        accept.join(",")
    )
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = "\\.^$|?*+()[]{}".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// LVM commands confined to some devices, with `lvm_config` and `--devices`. Drop removes the
/// VGs and PV labels it finds on those devices.
pub struct Lvm {
    lock_dir: tempfile::TempDir,
    devices: Vec<PathBuf>,
}

impl Lvm {
    pub fn new(devices: &[&Path]) -> Result<Lvm, String> {
        require_tools(&[("lvm", "lvm2")])?;
        Ok(Lvm {
            lock_dir: tempfile::tempdir().expect("temp dir"),
            devices: devices.iter().map(|device| device.to_path_buf()).collect(),
        })
    }

    pub fn config(&self) -> String {
        let devices: Vec<&Path> = self.devices.iter().map(PathBuf::as_path).collect();
        lvm_config(self.lock_dir.path(), &devices)
    }

    /// `lvm TOOL --config CFG --devices DEV... ` (append the tool's own arguments).
    pub fn command(&self, lvm_tool: &str) -> Command {
        let mut command = tool("lvm");
        command
            .arg(lvm_tool)
            .arg("--config")
            .arg(self.config())
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .stdin(Stdio::null());
        for device in &self.devices {
            command.arg("--devices").arg(device);
        }
        command
    }

    pub fn run<S: AsRef<OsStr>>(&self, lvm_tool: &str, args: &[S]) -> Output {
        self.command(lvm_tool)
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("cannot run lvm {lvm_tool}: {err}"))
    }

    pub fn run_ok<S: AsRef<OsStr>>(&self, lvm_tool: &str, args: &[S]) -> String {
        let output = self.run(lvm_tool, args);
        assert!(
            output.status.success(),
            "`lvm {lvm_tool} {}` failed ({}): {}",
            display_args(args),
            output.status,
            stderr(&output)
        );
        stdout(&output)
    }

    /// The rows of `TOOL --reportformat json --units b --nosuffix -o FIELDS ARGS` (tool is
    /// pvs, vgs or lvs; values are JSON strings, sizes in bytes).
    pub fn report(&self, lvm_tool: &str, fields: &str, args: &[&str]) -> Vec<serde_json::Value> {
        let mut full = vec![
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            fields,
        ];
        full.extend_from_slice(args);
        let out = self.run_ok(lvm_tool, &full);
        let json: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|err| panic!("{lvm_tool} printed invalid JSON ({err}): {out}"));
        let key = lvm_tool.trim_end_matches('s');
        json["report"][0][key]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Lvm {
    fn drop(&mut self) {
        let names = |lvm_tool: &str, field: &str| -> Vec<String> {
            let output = self.run(
                lvm_tool,
                &["--noheadings", "-o", field, "--reportformat", "basic"],
            );
            stdout(&output)
                .split_whitespace()
                .map(ToString::to_string)
                .collect()
        };
        for vg in names("vgs", "vg_name") {
            let _ = self.run("vgremove", &["-f", &vg]);
        }
        for pv in names("pvs", "pv_name") {
            let _ = self.run("pvremove", &["-ff", "-y", &pv]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// iSCSI target (tgtd)
// ---------------------------------------------------------------------------------------------

/// A private `tgtd` with one target on `127.0.0.1:PORT` whose LUNs 1..=n are sparse files
/// (LUN 0 is tgt's controller). Its control channel is `-C N` (the unix socket
/// /run/tgtd/socket.N, with a .lock beside it), so it does not clash with a system tgtd; N is
/// PORT modulo 32768, as tgtd refuses a larger N ("out of range") and free ports are above it.
///
/// tgtd ignores SIGTERM and, when its portal is taken, keeps running on 0.0.0.0:3260 and
/// [::]:3260 instead; so start checks the portal list and drop shuts it down through tgtadm.
pub struct IscsiTarget {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    control: u16,
    iqn: String,
    luns: Vec<PathBuf>,
}

impl IscsiTarget {
    /// Starts tgtd with target `iqn` (tid 1), one LUN per size (LUN numbers from 1), open to
    /// every initiator (`bind -I ALL`).
    pub fn start(iqn: &str, lun_sizes: &[u64]) -> Result<IscsiTarget, String> {
        require_tools(&[("tgtd", "tgt"), ("tgtadm", "tgt")])?;
        let mut failures = Vec::new();
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            // 0 is the system tgtd's channel.
            let control = port % 32768;
            if control == 0 {
                continue;
            }
            let (out, err) = log_file(&dir.path().join("tgtd.log"));
            let child = tool("tgtd")
                .arg("-f")
                .arg("-C")
                .arg(control.to_string())
                .arg("--iscsi")
                .arg(format!("portal=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|err| format!("tgtd (cannot start: {err})"))?;
            let mut target = IscsiTarget {
                child,
                dir,
                port,
                control,
                iqn: iqn.to_string(),
                luns: Vec::new(),
            };
            if let Err(why) = target.wait_ready() {
                // Dropping `target` stops that tgtd.
                failures.push(why);
                continue;
            }
            target.tgtadm_ok(&[
                "--lld",
                "iscsi",
                "--mode",
                "target",
                "--op",
                "new",
                "--tid",
                "1",
                "--targetname",
                iqn,
            ]);
            for size in lun_sizes {
                target.add_lun(*size);
            }
            target.tgtadm_ok(&[
                "--lld",
                "iscsi",
                "--mode",
                "target",
                "--op",
                "bind",
                "--tid",
                "1",
                "--initiator-address",
                "ALL",
            ]);
            return Ok(target);
        }
        panic!("tgtd did not start on a free port: {failures:#?}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("tgtd exited with {status}: {}", self.log()));
            }
            if self
                .tgtadm(&["--mode", "sys", "--op", "show"])
                .status
                .success()
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err(format!("tgtd not answering after 10 s: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Only our portal: a tgtd that could not bind it listens on *:3260 instead.
        let portals = stdout(&self.tgtadm(&["--lld", "iscsi", "--mode", "portal", "--op", "show"]));
        let expected = format!("Portal: {},1", self.portal());
        let lines: Vec<&str> = portals.lines().map(str::trim).collect();
        if lines != [expected.as_str()] {
            return Err(format!("tgtd portals are {lines:?}: {}", self.log()));
        }
        Ok(())
    }

    /// Adds a LUN backed by a new sparse file of `size` bytes; returns its number.
    pub fn add_lun(&mut self, size: u64) -> u32 {
        let lun = u32::try_from(self.luns.len() + 1).expect("LUN number");
        let file = self.dir.path().join(format!("lun{lun}.img"));
        sparse_file(&file, size);
        let lun_text = lun.to_string();
        let file_text = file.to_string_lossy().into_owned();
        self.tgtadm_ok(&[
            "--lld",
            "iscsi",
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            "1",
            "--lun",
            &lun_text,
            "--backing-store",
            &file_text,
        ]);
        self.luns.push(file);
        lun
    }

    /// `127.0.0.1:PORT`.
    pub fn portal(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// tgtd's control channel N (`tgtd -C N`, `tgtadm -C N`, /run/tgtd/socket.N).
    pub fn control_port(&self) -> u16 {
        self.control
    }

    pub fn iqn(&self) -> &str {
        &self.iqn
    }

    /// The LUN numbers, 1..=n.
    pub fn luns(&self) -> Vec<u32> {
        (1..=u32::try_from(self.luns.len()).expect("LUN count")).collect()
    }

    /// The file backing LUN `lun`.
    pub fn lun_file(&self, lun: u32) -> &Path {
        &self.luns[usize::try_from(lun).expect("LUN") - 1]
    }

    /// `iscsi://127.0.0.1:PORT/IQN/LUN`, for libiscsi tools and qemu.
    pub fn lun_url(&self, lun: u32) -> String {
        format!("iscsi://{}/{}/{lun}", self.portal(), self.iqn)
    }

    /// `tgtadm -C N ARGS` (N: this tgtd's control channel).
    pub fn tgtadm(&self, args: &[&str]) -> Output {
        let control = self.control.to_string();
        let mut full = vec!["-C", control.as_str()];
        full.extend_from_slice(args);
        run_tool("tgtadm", &full)
    }

    pub fn tgtadm_ok(&self, args: &[&str]) -> String {
        let output = self.tgtadm(args);
        assert!(
            output.status.success(),
            "`tgtadm -C {} {}` failed ({}): {}{}",
            self.control,
            args.join(" "),
            output.status,
            stderr(&output),
            stdout(&output)
        );
        stdout(&output)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("tgtd.log")).unwrap_or_default()
    }

    fn shutdown(&mut self) {
        // Only a tgtd that is still running owns the control socket: one that lost the
        // control port's lock to another tgtd exits at once.
        if let Ok(None) = self.child.try_wait() {
            // tgtd ignores SIGTERM and refuses `--op delete --mode system` while a target
            // exists.
            let _ = self.tgtadm(&[
                "--lld", "iscsi", "--mode", "target", "--op", "delete", "--force", "--tid", "1",
            ]);
            let _ = self.tgtadm(&["--mode", "system", "--op", "delete"]);
            stop_child(&mut self.child, None, Duration::from_secs(5));
            for suffix in ["", ".lock"] {
                let _ = fs::remove_file(format!("/var/run/tgtd/socket.{}{suffix}", self.control));
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for IscsiTarget {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs iscsiadm in a private mount namespace where /etc/iscsi (its node, send_targets and
/// ifaces records) and /run/lock (its /run/lock/iscsi/lock) are directories of this sandbox, so
/// that nothing is written to the host's. iscsiadm has no option to move them. Here iscsid
/// cannot start (no NETLINK_ISCSI: the kernel initiator is missing), so discovery and login
/// fail; record creation and deletion work.
pub struct IscsiadmSandbox {
    dir: tempfile::TempDir,
}

impl IscsiadmSandbox {
    pub fn new() -> Result<IscsiadmSandbox, String> {
        require_tools(&[("iscsiadm", "open-iscsi")])?;
        if !Path::new("/etc/iscsi").is_dir() || !Path::new("/run/lock").is_dir() {
            return Err(
                "the directories /etc/iscsi and /run/lock (Debian package open-iscsi)".into(),
            );
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let etc = dir.path().join("etc-iscsi");
        fs::create_dir(&etc).expect("etc dir");
        fs::create_dir(dir.path().join("lock")).expect("lock dir");
        for name in ["iscsid.conf", "initiatorname.iscsi"] {
            let _ = fs::copy(Path::new("/etc/iscsi").join(name), etc.join(name));
        }
        Ok(IscsiadmSandbox { dir })
    }

    /// The sandbox's /etc/iscsi.
    pub fn etc_dir(&self) -> PathBuf {
        self.dir.path().join("etc-iscsi")
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let etc = c_path(&self.etc_dir());
        let lock = c_path(&self.dir.path().join("lock"));
        let mut command = tool("iscsiadm");
        command.args(args).stdin(Stdio::null());
        // SAFETY: the closure runs in the forked child before exec and only makes system calls
        // (unshare, mount) on C strings prepared before the fork; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                let none = std::ptr::null();
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        none,
                        c"/".as_ptr(),
                        none,
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        etc.as_ptr(),
                        c"/etc/iscsi".as_ptr(),
                        none,
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        lock.as_ptr(),
                        c"/run/lock".as_ptr(),
                        none,
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.output().expect("run iscsiadm")
    }
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

// ---------------------------------------------------------------------------------------------
// NFS server (nfs-ganesha)
// ---------------------------------------------------------------------------------------------

/// One NFS server at a time per test process: ganesha unregisters every NFS program from the
/// portmapper when it starts, so two would steal each other's registration.
static NFS_SERIAL: Mutex<()> = Mutex::new(());

const GANESHA_FSAL_DIR: &str = "/usr/lib/x86_64-linux-gnu/ganesha";

/// A private `ganesha.nfsd` (foreground, own config, log, pid file, recovery and krb5 ccache
/// directories, BLKID_FILE) exporting a temporary directory with FSAL VFS over NFSv3 and v4,
/// TCP only, on 127.0.0.1 with its own NFS and MOUNT ports, as pseudo path /export (NFSv3 too:
/// mount_path_pseudo), read-write, no root squash, no grace period.
///
/// NFSv3 needs a portmapper: ganesha exits ("Cannot register NFS V3 on TCP") without one. The
/// fixture uses a running rpcbind (port 111 is host-wide) or starts `rpcbind -f` and stops it
/// on drop, removing the /run files that rpcbind left. rpcbind listens on 0.0.0.0:111 and
/// [::]:111 (`-h ADDR` aborts with a double free in this rpcbind).
pub struct NfsServer {
    child: Child,
    dir: tempfile::TempDir,
    nfs_port: u16,
    mount_port: u16,
    rpcbind: Option<Rpcbind>,
    _serial: MutexGuard<'static, ()>,
}

impl NfsServer {
    pub fn start() -> Result<NfsServer, String> {
        require_tools(&[("ganesha.nfsd", "nfs-ganesha"), ("rpcbind", "rpcbind")])?;
        if !Path::new(GANESHA_FSAL_DIR).join("libfsalvfs.so").exists() {
            return Err(format!(
                "{GANESHA_FSAL_DIR}/libfsalvfs.so (Debian package nfs-ganesha-vfs)"
            ));
        }
        let serial = NFS_SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let rpcbind = Rpcbind::ensure()?;
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in ["export", "recovery", "ccache"] {
            fs::create_dir(dir.path().join(sub)).expect("ganesha dir");
        }
        let mut failures = Vec::new();
        for _attempt in 0..5 {
            let (nfs_port, mount_port) = (free_port(), free_port());
            if nfs_port == mount_port {
                continue;
            }
            let config = dir.path().join("ganesha.conf");
            fs::write(&config, ganesha_config(dir.path(), nfs_port, mount_port))
                .expect("ganesha config");
            let log = dir.path().join("ganesha.log");
            let _ = fs::remove_file(&log);
            let (out, err) = log_file(&dir.path().join("ganesha.out"));
            let mut child = tool("ganesha.nfsd")
                .arg("-F")
                .arg("-f")
                .arg(&config)
                .arg("-L")
                .arg(&log)
                .arg("-p")
                .arg(dir.path().join("ganesha.pid"))
                .env("BLKID_FILE", dir.path().join("blkid.tab"))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|err| format!("ganesha.nfsd (cannot start: {err})"))?;
            let started = Instant::now();
            let ready = loop {
                let text = fs::read_to_string(&log).unwrap_or_default();
                if text.contains("NFS SERVER INITIALIZED") {
                    break Ok(());
                }
                if let Ok(Some(status)) = child.try_wait() {
                    break Err(format!("ganesha.nfsd exited with {status}:\n{text}"));
                }
                if started.elapsed() > Duration::from_secs(30) {
                    stop_child(&mut child, None, Duration::ZERO);
                    break Err(format!("ganesha.nfsd not initialized after 30 s:\n{text}"));
                }
                std::thread::sleep(Duration::from_millis(25));
            };
            match ready {
                Ok(()) => {
                    return Ok(NfsServer {
                        child,
                        dir,
                        nfs_port,
                        mount_port,
                        rpcbind,
                        _serial: serial,
                    });
                }
                Err(why) if why.contains("Address already in use") => failures.push(why),
                Err(why) => panic!("{why}"),
            }
        }
        panic!("ganesha.nfsd did not start on free ports: {failures:?}");
    }

    /// The exported directory on this host.
    pub fn export_dir(&self) -> PathBuf {
        self.dir.path().join("export")
    }

    /// The export's path for clients (NFSv3 and NFSv4).
    pub fn export_path(&self) -> &'static str {
        "/export"
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn nfs_port(&self) -> u16 {
        self.nfs_port
    }

    pub fn mount_port(&self) -> u16 {
        self.mount_port
    }

    /// `nfs://127.0.0.1/export/FILE` (NFSv3 through the portmapper: libnfs, qemu, showmount).
    pub fn url(&self, file: &str) -> String {
        format!("nfs://{}{}/{file}", self.host(), self.export_path())
    }

    /// As `url`, with the ports given (libnfs `nfsport`/`mountport`; qemu rejects them).
    pub fn url_direct(&self, file: &str) -> String {
        format!(
            "{}?nfsport={}&mountport={}",
            self.url(file),
            self.nfs_port,
            self.mount_port
        )
    }

    /// NFSv4 through libnfs (`version=4`, which needs `nfsport`: it does not ask the portmapper).
    pub fn url_v4(&self, file: &str) -> String {
        format!("{}?version=4&nfsport={}", self.url(file), self.nfs_port)
    }

    /// Whether this fixture started rpcbind (else one was already running).
    pub fn started_rpcbind(&self) -> bool {
        self.rpcbind.is_some()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("ganesha.log")).unwrap_or_default()
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        // SIGTERM: a clean exit in about 0.1 s that unregisters from the portmapper.
        stop_child(
            &mut self.child,
            Some(nix::sys::signal::Signal::SIGTERM),
            Duration::from_secs(10),
        );
        self.rpcbind.take();
    }
}

fn ganesha_config(dir: &Path, nfs_port: u16, mount_port: u16) -> String {
    format!(
        r#"NFS_CORE_PARAM {{
    Bind_addr = 127.0.0.1;
    NFS_Port = {nfs_port};
    MNT_Port = {mount_port};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
    Protocols = 3, 4;
    mount_path_pseudo = true;
    Plugins_Dir = "{GANESHA_FSAL_DIR}";
}}
NFS_KRB5 {{
    Active_krb5 = false;
    CCacheDir = "{dir}/ccache";
}}
NFSV4 {{
    RecoveryBackend = fs;
    RecoveryRoot = "{dir}/recovery";
    Graceless = true;
}}
EXPORT {{
    Export_Id = 1;
    Path = "{dir}/export";
    Pseudo = "/export";
    Protocols = 3, 4;
    Transports = TCP;
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    FSAL {{
        Name = VFS;
    }}
}}
"#,
        dir = dir.display()
    )
}

/// An `rpcbind -f` this process started, with the /run paths it created.
struct Rpcbind {
    child: Child,
    created: Vec<PathBuf>,
}

const RPCBIND_PATHS: [&str; 5] = [
    "/run/rpcbind.sock",
    "/run/rpcbind.lock",
    "/run/rpcbind/portmap.xdr",
    "/run/rpcbind/rpcbind.xdr",
    "/run/rpcbind",
];

fn portmapper_listening() -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, 111)),
        Duration::from_secs(1),
    )
    .is_ok()
}

impl Rpcbind {
    /// None when a portmapper already answers on 127.0.0.1:111.
    fn ensure() -> Result<Option<Rpcbind>, String> {
        if portmapper_listening() {
            return Ok(None);
        }
        let created: Vec<PathBuf> = RPCBIND_PATHS
            .iter()
            .map(PathBuf::from)
            .filter(|path| !path.exists())
            .collect();
        let mut child = tool("rpcbind")
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| format!("rpcbind (cannot start: {err})"))?;
        let started = Instant::now();
        while !portmapper_listening() {
            if let Ok(Some(status)) = child.try_wait() {
                let output = child.wait_with_output().expect("rpcbind output");
                // Another test process may have started one meanwhile.
                if portmapper_listening() {
                    return Ok(None);
                }
                return Err(format!(
                    "a portmapper on port 111 (rpcbind -f exited with {status}: {})",
                    stderr(&output)
                ));
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "rpcbind not listening on 127.0.0.1:111 after 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(Rpcbind { child, created }))
    }
}

impl Drop for Rpcbind {
    fn drop(&mut self) {
        stop_child(
            &mut self.child,
            Some(nix::sys::signal::Signal::SIGTERM),
            Duration::from_secs(5),
        );
        // On exit rpcbind leaves its socket and lock and writes its warm-start state.
        for path in &self.created {
            let _ = fs::remove_file(path).or_else(|_| fs::remove_dir(path));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// qemu-img
// ---------------------------------------------------------------------------------------------

/// `qemu-img info --output=json [-f FORMAT] PATH`.
pub fn qemu_img_info(path: &str, format: Option<&str>) -> serde_json::Value {
    let mut args = vec!["info", "--output=json"];
    if let Some(format) = format {
        args.extend(["-f", format]);
    }
    args.push(path);
    let out = run_tool_ok("qemu-img", &args);
    serde_json::from_str(&out).unwrap_or_else(|err| panic!("qemu-img info JSON ({err}): {out}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skip;

    const MIB: u64 = 1024 * 1024;

    /// The loop device's backing file as the kernel reports it, if it is attached.
    fn kernel_backing_file(name: &str) -> Option<String> {
        fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
            .ok()
            .map(|text| text.trim().to_string())
    }

    #[test]
    fn loop_device_attaches_formats_and_detaches() {
        if let Err(missing) = require_tools(&[("mkfs.ext4", "e2fsprogs"), ("blkid", "util-linux")])
        {
            skip!("{missing}");
        }
        let device = match LoopDevice::new(64 * MIB) {
            Ok(device) => device,
            Err(missing) => skip!("{missing}"),
        };
        let name = device.name().to_string();
        let backing = device.backing_file().to_string_lossy().into_owned();
        assert!(
            device.path().starts_with("/dev"),
            "{}",
            device.path().display()
        );
        assert!(name.starts_with("loop"), "{name}");
        assert_eq!(
            kernel_backing_file(&name).as_deref(),
            Some(backing.as_str())
        );
        assert_eq!(block_device_size(device.path()), 64 * MIB);
        // Sparse: nothing allocated before mkfs.
        assert!(device.partitions().is_empty());

        device.make_ext4();
        // -p: probe the device itself; plain blkid writes its cache to /run/blkid/blkid.tab.
        let kind = run_tool_ok(
            "blkid",
            &[
                OsStr::new("-p"),
                OsStr::new("-o"),
                OsStr::new("value"),
                OsStr::new("-s"),
                OsStr::new("TYPE"),
                device.path().as_os_str(),
            ],
        );
        assert_eq!(kind.trim(), "ext4");

        drop(device);
        assert_ne!(
            kernel_backing_file(&name).as_deref(),
            Some(backing.as_str())
        );
        assert!(!Path::new(&backing).exists(), "{backing} left behind");
    }

    #[test]
    fn loop_device_partitions_appear_without_udev_and_go_on_drop() {
        if let Err(missing) = require_tools(&[("parted", "parted"), ("sfdisk", "fdisk")]) {
            skip!("{missing}");
        }
        let device = match LoopDevice::new(256 * MIB) {
            Ok(device) => device,
            Err(missing) => skip!("{missing}"),
        };
        let dev = device.path().to_string_lossy().into_owned();
        let name = device.name().to_string();
        run_tool_ok("parted", &["-s", "--script", &dev, "mklabel", "gpt"]);
        for (start, end) in [("1048576", "67108863"), ("67108864", "134217727")] {
            run_tool_ok(
                "parted",
                &["-s", &dev, "unit", "B", "mkpart", "primary", start, end],
            );
        }
        // parted adds the partitions to the kernel itself (BLKPG); devtmpfs makes the nodes.
        let partitions = device.partitions();
        let p1 = PathBuf::from(format!("{dev}p1"));
        let p2 = PathBuf::from(format!("{dev}p2"));
        assert_eq!(partitions, [p1.clone(), p2.clone()]);
        assert!(p1.exists() && p2.exists());
        assert_eq!(block_device_size(&p1), 66_060_288);
        assert_eq!(block_device_size(&p2), 67_108_864);

        let print = run_tool_ok("parted", &["-m", "-s", &dev, "unit", "B", "print", "free"]);
        assert_eq!(
            print,
            format!(
                "BYT;\n\
                 {dev}:268435456B:loopback:512:512:gpt:Loopback device:;\n\
                 1:17408B:1048575B:1031168B:free;\n\
                 1:1048576B:67108863B:66060288B::primary:;\n\
                 2:67108864B:134217727B:67108864B::primary:;\n\
                 1:134217728B:268418559B:134200832B:free;\n"
            )
        );

        let table: serde_json::Value =
            serde_json::from_str(&run_tool_ok("sfdisk", &["--json", &dev])).expect("sfdisk JSON");
        let table = &table["partitiontable"];
        assert_eq!(table["label"], "gpt");
        assert_eq!(table["sectorsize"], 512);
        let rows: Vec<(String, u64, u64)> = table["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .map(|p| {
                (
                    p["node"].as_str().unwrap_or_default().to_string(),
                    p["start"].as_u64().unwrap_or_default(),
                    p["size"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (format!("{dev}p1"), 2048, 129_024),
                (format!("{dev}p2"), 131_072, 131_072)
            ]
        );

        // partx: -d one, -a (fails on the one present, adds the rest), -d all, -a all.
        run_tool_ok("partx", &["-d", "--nr", "2", &dev]);
        assert_eq!(device.partitions(), std::slice::from_ref(&p1));
        let add = run_tool("partx", &["-a", &dev]);
        assert_eq!(add.status.code(), Some(1), "{}", stderr(&add));
        assert!(
            stderr(&add).contains("error adding partition 1"),
            "{}",
            stderr(&add)
        );
        assert_eq!(device.partitions(), [p1.clone(), p2.clone()]);
        run_tool_ok("partx", &["-d", &dev]);
        assert!(device.partitions().is_empty());
        assert!(!p1.exists(), "devtmpfs left {}", p1.display());
        run_tool_ok("partx", &["-a", &dev]);
        assert_eq!(device.partitions(), [p1.clone(), p2.clone()]);

        // Kernel partitions survive `losetup -d`: the fixture deletes them first.
        drop(device);
        let left: Vec<_> = ["p1", "p2"]
            .iter()
            .filter(|suffix| Path::new(&format!("/sys/block/{name}/{name}{suffix}")).exists())
            .collect();
        assert!(
            left.is_empty(),
            "partitions {left:?} of {name} left after drop"
        );
    }

    #[test]
    fn lvm_metadata_on_a_loop_device() {
        let device = match LoopDevice::new(256 * MIB) {
            Ok(device) => device,
            Err(missing) => skip!("{missing}"),
        };
        let lvm = match Lvm::new(&[device.path()]) {
            Ok(lvm) => lvm,
            Err(missing) => skip!("{missing}"),
        };
        let dev = device.path().to_string_lossy().into_owned();
        let vg = "vireo_test_vg";
        lvm.run_ok("pvcreate", &[dev.as_str()]);
        lvm.run_ok("vgcreate", &[vg, dev.as_str()]);
        lvm.run_ok("lvcreate", &["-an", "-Zn", "-L", "16m", "-n", "lv1", vg]);
        lvm.run_ok("lvcreate", &["-an", "-Zn", "-L", "8m", "-n", "lv2", vg]);

        let vgs = lvm.report("vgs", "vg_name,vg_uuid,vg_size,vg_free,vg_extent_size", &[]);
        assert_eq!(vgs.len(), 1, "{vgs:?}");
        assert_eq!(vgs[0]["vg_name"], vg);
        assert_eq!(vgs[0]["vg_size"], "264241152");
        assert_eq!(vgs[0]["vg_free"], "239075328");
        assert_eq!(vgs[0]["vg_extent_size"], "4194304");
        assert_eq!(vgs[0]["vg_uuid"].as_str().map(str::len), Some(38));

        let lvs = lvm.report(
            "lvs",
            "lv_name,lv_uuid,lv_path,lv_size,origin,lv_attr,devices,seg_start_pe",
            &[vg],
        );
        let row = |lv: &serde_json::Value| {
            [
                "lv_name",
                "lv_path",
                "lv_size",
                "origin",
                "lv_attr",
                "devices",
                "seg_start_pe",
            ]
            .map(|key| lv[key].as_str().unwrap_or("?").to_string())
        };
        assert_eq!(
            lvs.iter().map(row).collect::<Vec<_>>(),
            [
                [
                    "lv1".to_string(),
                    format!("/dev/{vg}/lv1"),
                    "16777216".into(),
                    String::new(),
                    "-wi-XX----".into(),
                    format!("{dev}(0)"),
                    "0".into()
                ],
                [
                    "lv2".to_string(),
                    format!("/dev/{vg}/lv2"),
                    "8388608".into(),
                    String::new(),
                    "-wi-XX----".into(),
                    format!("{dev}(4)"),
                    "0".into()
                ],
            ]
        );

        let pvs = lvm.report(
            "pvs",
            "pv_name,vg_name,pv_size,pv_free,dev_size,pe_start",
            &[],
        );
        assert_eq!(pvs.len(), 1, "{pvs:?}");
        assert_eq!(pvs[0]["pv_name"], dev.as_str());
        assert_eq!(pvs[0]["dev_size"], "268435456");
        assert_eq!(pvs[0]["pe_start"], "1048576");

        // Activation is switched off: a no-op that succeeds.
        let activate = lvm.run("vgchange", &["-aay", vg]);
        assert!(activate.status.success(), "{}", stderr(&activate));
        assert!(
            stdout(&activate).contains("0 logical volume(s) in volume group"),
            "{}",
            stdout(&activate)
        );
        // Snapshots need device-mapper.
        let snapshot = lvm.run(
            "lvcreate",
            &["-an", "-s", "-L", "8m", "-n", "snap", "vireo_test_vg/lv1"],
        );
        assert_eq!(snapshot.status.code(), Some(5));
        assert!(
            stderr(&snapshot).contains("Can't create snapshot without using device-mapper"),
            "{}",
            stderr(&snapshot)
        );

        lvm.run_ok("lvremove", &["-f", "vireo_test_vg/lv2"]);
        assert_eq!(lvm.report("lvs", "lv_name", &[vg]).len(), 1);
        // Nothing in the host's LVM directories.
        assert!(!Path::new("/etc/lvm/backup").join(vg).exists());
        assert!(
            !Path::new("/etc/lvm/archive").exists() || {
                fs::read_dir("/etc/lvm/archive")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .all(|entry| !entry.file_name().to_string_lossy().starts_with(vg))
            }
        );
        // Drop removes the VG (with lv1) and the PV label.
        let lock_dir = lvm.lock_dir.path().to_path_buf();
        drop(lvm);
        assert!(!lock_dir.exists());
        let after = Lvm::new(&[device.path()]).expect("lvm");
        assert!(after.report("pvs", "pv_name", &[]).is_empty());
        assert!(after.report("vgs", "vg_name", &[]).is_empty());
    }

    #[test]
    fn iscsi_target_serves_luns_to_libiscsi() {
        if let Err(missing) = require_tools(&[
            ("iscsi-ls", "libiscsi-bin"),
            ("iscsi-readcapacity16", "libiscsi-bin"),
        ]) {
            skip!("{missing}");
        }
        let iqn = "iqn.2026-11.org.vireo.test:fixture";
        let mut target = match IscsiTarget::start(iqn, &[64 * MIB, 32 * MIB]) {
            Ok(target) => target,
            Err(missing) => skip!("{missing}"),
        };
        let portal = target.portal();
        assert_eq!(portal, format!("127.0.0.1:{}", target.port()));
        assert_eq!(target.iqn(), iqn);
        assert_eq!(target.luns(), [1, 2]);

        let listing = run_tool_ok("iscsi-ls", &["-s", &format!("iscsi://{portal}")]);
        assert_eq!(
            listing,
            format!(
                "Target:{iqn} Portal:{portal},1\n\
                 Lun:0    Type:STORAGE_ARRAY_CONTROLLER\n\
                 Lun:1    Type:DIRECT_ACCESS (Size:63M)\n\
                 Lun:2    Type:DIRECT_ACCESS (Size:31M)\n"
            )
        );
        let size = run_tool_ok("iscsi-readcapacity16", &["-s", &target.lun_url(1)]);
        assert_eq!(size.trim(), "67108864");

        assert_eq!(target.add_lun(16 * MIB), 3);
        let size = run_tool_ok("iscsi-readcapacity16", &["-s", &target.lun_url(3)]);
        assert_eq!(size.trim(), "16777216");
        let show = target.tgtadm_ok(&["--lld", "iscsi", "--mode", "target", "--op", "show"]);
        assert!(
            show.contains(&format!(
                "Backing store path: {}",
                target.lun_file(3).display()
            )),
            "{show}"
        );

        if find_tool("qemu-img").is_some() {
            // qemu's iscsi:// driver (libiscsi) writes through the target into the file.
            let source = tempfile::NamedTempFile::new().expect("temp file");
            fs::write(source.path(), vec![0x5a_u8; 65536]).expect("write source");
            run_tool_ok(
                "qemu-img",
                &[
                    "convert",
                    "-n",
                    "-f",
                    "raw",
                    "-O",
                    "raw",
                    &source.path().to_string_lossy(),
                    &target.lun_url(2),
                ],
            );
            let written = fs::read(target.lun_file(2)).expect("read LUN file");
            assert!(written[..65536].iter().all(|byte| *byte == 0x5a));
        }

        let (port, control) = (target.port(), target.control_port());
        assert!(Path::new(&format!("/var/run/tgtd/socket.{control}")).exists());
        drop(target);
        assert!(
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
            "tgtd still listening on {port}"
        );
        assert!(!Path::new(&format!("/var/run/tgtd/socket.{control}")).exists());
        assert!(!Path::new(&format!("/var/run/tgtd/socket.{control}.lock")).exists());
    }

    #[test]
    fn iscsiadm_sandbox_keeps_records_off_the_host() {
        let sandbox = match IscsiadmSandbox::new() {
            Ok(sandbox) => sandbox,
            Err(missing) => skip!("{missing}"),
        };
        let target = match IscsiTarget::start("iqn.2026-11.org.vireo.test:sandbox", &[MIB]) {
            Ok(target) => target,
            Err(missing) => skip!("{missing}"),
        };
        let host_before = list_tree(Path::new("/etc/iscsi"));
        let lock_before = Path::new("/run/lock/iscsi").exists();
        let portal = target.portal();

        let new = sandbox.run(&["-m", "node", "-o", "new", "-T", target.iqn(), "-p", &portal]);
        assert!(new.status.success(), "{}", stderr(&new));
        let record = sandbox
            .etc_dir()
            .join("nodes")
            .join(target.iqn())
            .join(portal.replace(':', ","));
        assert!(record.exists(), "no {}", record.display());

        let discovery = sandbox.run(&["-m", "discovery", "-t", "sendtargets", "-p", &portal]);
        if discovery.status.success() {
            assert!(
                stdout(&discovery).contains(target.iqn()),
                "{}",
                stdout(&discovery)
            );
        } else {
            // No kernel initiator: iscsid cannot start and iscsi_tcp cannot be loaded.
            eprintln!(
                "iscsiadm discovery failed ({}): {}",
                discovery.status,
                stderr(&discovery)
            );
            assert!(
                stderr(&discovery).contains("iSCSI driver tcp is not loaded"),
                "{}",
                stderr(&discovery)
            );
        }
        let login = sandbox.run(&["-m", "node", "-T", target.iqn(), "-p", &portal, "--login"]);
        if login.status.success() {
            let _ = sandbox.run(&["-m", "node", "-T", target.iqn(), "-p", &portal, "--logout"]);
        } else {
            eprintln!(
                "iscsiadm login failed ({}): {}",
                login.status,
                stderr(&login)
            );
        }
        let delete = sandbox.run(&[
            "-m",
            "node",
            "-o",
            "delete",
            "-T",
            target.iqn(),
            "-p",
            &portal,
        ]);
        assert!(delete.status.success(), "{}", stderr(&delete));
        assert!(!record.exists());

        assert_eq!(list_tree(Path::new("/etc/iscsi")), host_before);
        assert_eq!(Path::new("/run/lock/iscsi").exists(), lock_before);
    }

    fn list_tree(root: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path.clone());
                }
                found.push(path);
            }
        }
        found.sort();
        found
    }

    #[test]
    fn nfs_server_exports_over_v3_and_v4() {
        if let Err(missing) = require_tools(&[
            ("showmount", "nfs-common"),
            ("nfs-ls", "libnfs-utils"),
            ("nfs-cat", "libnfs-utils"),
            ("nfs-cp", "libnfs-utils"),
        ]) {
            skip!("{missing}");
        }
        let rpcbind_files_before: Vec<bool> = RPCBIND_PATHS
            .iter()
            .map(|path| Path::new(path).exists())
            .collect();
        let server = match NfsServer::start() {
            Ok(server) => server,
            Err(missing) => skip!("{missing}"),
        };
        fs::write(server.export_dir().join("hello.txt"), "hello\n").expect("write export");

        let exports = run_tool_ok("showmount", &["-e", server.host()]);
        assert_eq!(exports, "Export list for 127.0.0.1:\n/export (everyone)\n");

        for url in [server.url(""), server.url_direct("")] {
            let listing = run_tool_ok("nfs-ls", &[url.as_str()]);
            assert_eq!(
                listing, "-rw-r--r--  1     0     0            6 hello.txt\n",
                "{url}"
            );
        }
        // NFSv4 maps owners by name: root@localdomain comes back as nobody.
        let listing = run_tool_ok("nfs-ls", &[server.url_v4("").as_str()]);
        assert_eq!(
            listing,
            "-rw-r--r--  1 65534 65534            6 hello.txt\n"
        );
        assert_eq!(
            run_tool_ok("nfs-cat", &[server.url("hello.txt").as_str()]),
            "hello\n"
        );

        let source = tempfile::NamedTempFile::new().expect("temp file");
        fs::write(source.path(), "copied\n").expect("write source");
        run_tool_ok(
            "nfs-cp",
            &[
                source.path().to_string_lossy().as_ref(),
                server.url("copy.txt").as_str(),
            ],
        );
        assert_eq!(
            fs::read_to_string(server.export_dir().join("copy.txt")).expect("copied file"),
            "copied\n"
        );

        if find_tool("qemu-img").is_some() {
            // qemu's nfs:// driver: NFSv3 through the portmapper.
            run_tool_ok(
                "qemu-img",
                &["create", "-f", "qcow2", &server.url("disk.qcow2"), "16M"],
            );
            assert!(server.export_dir().join("disk.qcow2").exists());
            let info = qemu_img_info(&server.url("disk.qcow2"), None);
            assert_eq!(info["format"], "qcow2");
            assert_eq!(info["virtual-size"], 16 * MIB);
        }

        let (nfs_port, mount_port) = (server.nfs_port(), server.mount_port());
        let started_rpcbind = server.started_rpcbind();
        drop(server);
        for port in [nfs_port, mount_port] {
            assert!(
                TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
                "ganesha still listening on {port}"
            );
        }
        if started_rpcbind {
            assert!(!portmapper_listening(), "rpcbind left running");
            let rpcbind_files_after: Vec<bool> = RPCBIND_PATHS
                .iter()
                .map(|path| Path::new(path).exists())
                .collect();
            assert_eq!(
                rpcbind_files_after, rpcbind_files_before,
                "{RPCBIND_PATHS:?}"
            );
        }
    }

    #[test]
    fn qemu_img_reports_raw_and_qcow2_chains() {
        if let Err(missing) = require_tools(&[("qemu-img", "qemu-utils")]) {
            skip!("{missing}");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        run_tool_ok("qemu-img", &["create", "-f", "raw", &path("a.raw"), "64M"]);
        let info = qemu_img_info(&path("a.raw"), Some("raw"));
        assert_eq!(info["format"], "raw");
        assert_eq!(info["virtual-size"], 64 * MIB);
        assert!(info["actual-size"].as_u64().is_some());

        run_tool_ok(
            "qemu-img",
            &["create", "-f", "qcow2", &path("base.qcow2"), "64M"],
        );
        let no_format = run_tool(
            "qemu-img",
            &[
                "create",
                "-f",
                "qcow2",
                "-b",
                &path("base.qcow2"),
                &path("bad.qcow2"),
            ],
        );
        assert!(!no_format.status.success());
        assert!(
            stderr(&no_format).contains("Backing file specified without backing format"),
            "{}",
            stderr(&no_format)
        );
        run_tool_ok(
            "qemu-img",
            &[
                "create",
                "-f",
                "qcow2",
                "-b",
                &path("base.qcow2"),
                "-F",
                "qcow2",
                &path("top.qcow2"),
            ],
        );
        let info = qemu_img_info(&path("top.qcow2"), Some("qcow2"));
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["virtual-size"], 64 * MIB);
        assert_eq!(info["cluster-size"], 65536);
        assert_eq!(info["backing-filename"], path("base.qcow2"));
        assert_eq!(info["full-backing-filename"], path("base.qcow2"));
        assert_eq!(info["backing-filename-format"], "qcow2");
        assert_eq!(info["format-specific"]["data"]["compat"], "1.1");

        let measure: serde_json::Value = serde_json::from_str(&run_tool_ok(
            "qemu-img",
            &["measure", "--output=json", "-O", "qcow2", "--size", "1G"],
        ))
        .expect("measure JSON");
        assert_eq!(measure["required"], 393_216);
        assert_eq!(measure["fully-allocated"], 1_074_135_040);

        let shrink = run_tool("qemu-img", &["resize", "-f", "raw", &path("a.raw"), "32M"]);
        assert!(!shrink.status.success());
        assert!(
            stderr(&shrink).contains("Use the --shrink option to perform a shrink operation."),
            "{}",
            stderr(&shrink)
        );
        run_tool_ok(
            "qemu-img",
            &["resize", "-f", "raw", "--shrink", &path("a.raw"), "32M"],
        );
        assert_eq!(
            qemu_img_info(&path("a.raw"), Some("raw"))["virtual-size"],
            32 * MIB
        );
    }
}
