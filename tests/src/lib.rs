//! vireo-tests owns the end-to-end harness: it starts the real binaries (vireod, the services,
//! vireo) with temporary `--state-dir`/`--run-dir`, waits for health under a deadline, talks only
//! to the public API, and kills what it started on drop. Tests that cannot run here skip with a
//! message naming what they need.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

pub mod fake_sysfs;
pub mod guests;
pub mod storage;

/// Prints why a test cannot run here and returns from it. It never counts as a pass of the
/// behaviour: the message names what is missing.
#[macro_export]
macro_rules! skip {
    ($($reason:tt)*) => {{
        eprintln!("SKIPPED: {}", format!($($reason)*));
        return;
    }};
}

/// The directory holding the workspace's built binaries (target/debug).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

/// The path of a workspace binary; panics with the build command when it is missing.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// The repository root (for scripts).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Polls `check` until it returns Some or the deadline passes.
pub fn wait_until<T>(deadline: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A one-shot tokio runtime for gRPC calls from synchronous tests.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// A running server process with its own temporary directories.
pub struct Server {
    pub child: Child,
    wrapper: Vec<String>,
    binary_name: String,
    extra: Vec<String>,
    pub dirs: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub socket: PathBuf,
}

impl Server {
    /// Starts `binary` with temporary state and run directories, plus `extra` arguments, and
    /// waits until it reports itself SERVING on `socket_name`.
    pub fn start(binary_name: &str, socket_name: &str, extra: &[&str]) -> Server {
        Server::start_wrapped(&[], binary_name, socket_name, extra)
    }

    /// As `start`, run under `wrapper` (e.g. `ip netns exec NS`).
    pub fn start_wrapped(
        wrapper: &[&str],
        binary_name: &str,
        socket_name: &str,
        extra: &[&str],
    ) -> Server {
        let dirs = tempfile::tempdir().expect("temp dir");
        let state_dir = dirs.path().join("state");
        let run_dir = dirs.path().join("run");
        let wrapper: Vec<String> = wrapper.iter().map(ToString::to_string).collect();
        let child = spawn_server(
            &wrapper,
            binary_name,
            dirs.path(),
            &state_dir,
            &run_dir,
            extra,
        );
        let socket = run_dir.join(socket_name);
        let mut server = Server {
            child,
            wrapper,
            binary_name: binary_name.to_string(),
            extra: extra.iter().map(ToString::to_string).collect(),
            dirs,
            state_dir,
            run_dir,
            socket,
        };
        server.wait_serving("");
        server
    }

    /// Kills the server with SIGKILL (no clean-up of its own runs) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same server again on the same directories (after `kill9` or `terminate`).
    pub fn restart(&mut self) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.child = spawn_server(
            &self.wrapper,
            &self.binary_name,
            self.dirs.path(),
            &self.state_dir,
            &self.run_dir,
            &extra,
        );
        self.wait_serving("");
        for name in self.service_names() {
            self.wait_serving(&name);
        }
    }

    /// vireod on temporary directories, with every service SERVING through the gateway.
    pub fn vireod() -> Server {
        Server::vireod_wrapped(&[])
    }

    /// vireod under `wrapper`, e.g. `["ip", "netns", "exec", NS]` to give it its own network.
    pub fn vireod_wrapped(wrapper: &[&str]) -> Server {
        Server::vireod_with(wrapper, &[])
    }

    /// vireod under `wrapper` with `extra` arguments (e.g. `--config FILE`).
    pub fn vireod_with(wrapper: &[&str], extra: &[&str]) -> Server {
        let mut server = Server::start_wrapped(wrapper, "vireod", "gateway.sock", extra);
        for name in server.service_names() {
            server.wait_serving(&name);
        }
        server
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dirs.path().join("log")).unwrap_or_default()
    }

    /// A gRPC channel to this server's socket.
    pub async fn connect(&self) -> Channel {
        vireo_runtime::client::connect_unix(&self.socket)
            .await
            .expect("connect to server socket")
    }

    /// The health status of `service` ("" for the server itself), or None if unreachable.
    pub fn health(&self, service: &str) -> Option<ServingStatus> {
        block_on(async {
            let channel = vireo_runtime::client::connect_unix(&self.socket)
                .await
                .ok()?;
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: service.to_string(),
                })
                .await
                .ok()?;
            Some(reply.into_inner().status())
        })
    }

    fn wait_serving(&mut self, service: &str) {
        let started = Instant::now();
        loop {
            if self.health(service) == Some(ServingStatus::Serving) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "server exited with {status} before serving `{service}`; log:\n{}",
                    self.log()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "`{service}` not SERVING after 30 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Services listed by server reflection.
    pub fn service_names(&self) -> Vec<String> {
        block_on(async {
            let mut client = ServerReflectionClient::new(self.connect().await);
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut replies = client
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .expect("reflection")
                .into_inner();
            let reply = replies
                .message()
                .await
                .expect("reflection reply")
                .expect("one reply");
            match reply.message_response {
                Some(MessageResponse::ListServicesResponse(list)) => {
                    list.service.into_iter().map(|s| s.name).collect()
                }
                other => panic!("unexpected reflection reply {other:?}"),
            }
        })
    }

    /// Runs `vireo -c unix://<socket> ARGS`.
    pub fn vireo(&self, args: &[&str]) -> Output {
        self.vireo_with_stdin(args, "")
    }

    pub fn vireo_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        run_with_stdin(
            Command::new(binary("vireo"))
                .arg("-c")
                .arg(format!("unix://{}", self.socket.display()))
                .args(args),
            stdin,
        )
    }

    /// Sends SIGTERM and waits up to `deadline` for the exit status.
    pub fn terminate(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let started = Instant::now();
        while started.elapsed() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Socket files left in the run directory.
    pub fn sockets_left(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.run_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.to_string_lossy().contains(".sock"))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Guests outlive the service by design; a test's guests must not outlive the test.
        let pids = self.guest_pids();
        for pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let started = Instant::now();
        while pids
            .iter()
            .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
            && started.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Nor their cgroups (svc-compute names them vireo/<uuid>).
        for entry in std::fs::read_dir(self.run_dir.join("compute"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let uuid = entry.file_name();
            for hierarchy in ["cpu", "cpuacct", "memory", ""] {
                let _ = std::fs::remove_dir(
                    Path::new("/sys/fs/cgroup")
                        .join(hierarchy)
                        .join("vireo")
                        .join(&uuid),
                );
            }
        }
    }
}

impl Server {
    /// Engine processes of the guests svc-compute runs (from its run directory).
    pub fn guest_pids(&self) -> Vec<i32> {
        std::fs::read_dir(self.run_dir.join("compute"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let status = std::fs::read(entry.path().join("status.json")).ok()?;
                let status: serde_json::Value = serde_json::from_slice(&status).ok()?;
                i32::try_from(status.get("pid")?.as_u64()?).ok()
            })
            .collect()
    }
}

fn spawn_server(
    wrapper: &[String],
    binary_name: &str,
    dir: &Path,
    state_dir: &Path,
    run_dir: &Path,
    extra: &[&str],
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .expect("log file");
    let (program, leading) = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut leading: Vec<std::ffi::OsString> = rest.iter().map(Into::into).collect();
            leading.push(binary(binary_name).into());
            (std::ffi::OsString::from(program), leading)
        }
        None => (binary(binary_name).into(), Vec::new()),
    };
    // Servers share this host's network: no default network (bridge, nftables, dnsmasq) unless
    // a test's own configuration asks for one, in a namespace of its own.
    let mut config = Vec::new();
    if !extra.contains(&"--config") {
        let path = dir.join("vireo.toml");
        std::fs::write(&path, "[network]\ndefault_network = false\n").expect("config file");
        config = vec!["--config".into(), path.into_os_string()];
    }
    Command::new(program)
        .args(leading)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--run-dir")
        .arg(run_dir)
        .args(config)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {binary_name}: {err}"))
}

/// A vireod config file in `dir` for host `name` of a cluster test (no default network; `body`
/// adds to `[gateway]`); returns its path.
pub fn host_config(dir: &Path, name: &str, body: &str) -> String {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!("[network]\ndefault_network = false\n[gateway]\nhost_name = \"{name}\"\n{body}"),
    )
    .expect("config file");
    file.to_string_lossy().into_owned()
}

/// The test-guest kit's directory (`VIREO_GUEST_DIR`, set by scripts/test).
pub fn kit_dir() -> PathBuf {
    std::env::var_os("VIREO_GUEST_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/vireo/guests"), PathBuf::from)
}

/// The kit's `files`, or what is missing. Under scripts/test (VIREO_GUEST_DIR set) a missing
/// file is a failure, not a skip.
pub fn kit_files(files: &[&str]) -> Result<PathBuf, String> {
    let kit = kit_dir();
    if let Some(missing) = files.iter().find(|f| !kit.join(f).exists()) {
        assert!(
            std::env::var_os("VIREO_GUEST_DIR").is_none(),
            "the kit in {} has no {missing}",
            kit.display()
        );
        return Err(format!(
            "the test-guest kit's {missing} in {} (run scripts/guest-kit)",
            kit.display()
        ));
    }
    Ok(kit)
}

/// Whether this host can run vireo-vmm guests: a usable /dev/kvm.
pub fn kvm_usable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|err| format!("a usable /dev/kvm ({err})"))
}

/// Whether qemu-system-x86_64 is installed.
pub fn qemu_installed() -> Result<(), String> {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(drop)
        .map_err(|_| "qemu-system-x86_64 (Debian package qemu-system-x86)".to_string())
}

/// Runs a command with `stdin` fed in, capturing stdout and stderr.
pub fn run_with_stdin(command: &mut Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait for command")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Debian's libvirtd (the peer of the benchmarks), started with virtlogd when not answering;
/// `Err` names what is missing.
pub fn libvirt_ready() -> Result<(), String> {
    if Command::new("virsh").arg("--version").output().is_err() {
        return Err("virsh and libvirtd (scripts/install-deps bench)".into());
    }
    for (socket, daemon) in [
        ("/run/libvirt/virtlogd-sock", "virtlogd"),
        ("/run/libvirt/libvirt-sock", "libvirtd"),
    ] {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            continue;
        }
        // A socket left by a daemon that is gone would make the new one refuse to start.
        let _ = std::fs::remove_file(socket);
        std::fs::create_dir_all("/var/log/libvirt").ok();
        let status = Command::new(daemon).arg("-d").status();
        if !status.is_ok_and(|s| s.success()) {
            return Err(format!("{daemon} could not be started"));
        }
        let started = std::time::Instant::now();
        while std::os::unix::net::UnixStream::connect(socket).is_err()
            && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let probe = Command::new("virsh")
        .args(["-c", "qemu:///system", "version"])
        .output()
        .map_err(|err| err.to_string())?;
    if !probe.status.success() {
        return Err(format!(
            "a working libvirtd: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    Ok(())
}

/// Runs vireo and insists it succeeds; returns stdout.
pub fn ok(server: &Server, args: &[&str]) -> String {
    let output = server.vireo(args);
    assert!(
        output.status.success(),
        "vireo {args:?} failed: {}\nlog:\n{}",
        stderr(&output),
        server.log()
    );
    stdout(&output)
}

/// Runs vireo and insists it fails; returns stderr.
pub fn fails(server: &Server, args: &[&str]) -> String {
    let output = server.vireo(args);
    assert!(
        !output.status.success(),
        "vireo {args:?} should have failed; printed {}",
        stdout(&output)
    );
    stderr(&output)
}

/// Runs a benchmark step, which must succeed, and returns how long it took.
pub fn timed(what: &str, command: &mut Command) -> Duration {
    let started = Instant::now();
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{what}: {err}"));
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    elapsed
}

pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Writes `mib` MiB of data that neither compresses nor has holes, except every `zero_every`-th
/// MiB (0: none), which is zeroes.
pub fn write_random_file(path: &Path, mib: usize, zero_every: usize) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create data file"));
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    for index in 0..mib {
        if zero_every > 0 && index % zero_every == 0 {
            block.fill(0);
        } else {
            for word in block.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
        }
        file.write_all(&block).expect("write data file");
    }
    file.into_inner()
        .expect("flush data file")
        .sync_all()
        .expect("sync data file");
}

/// A network namespace of the test's own, deleted when dropped.
pub struct Netns(pub String);

impl Netns {
    pub fn create(tag: &str) -> Result<Netns, String> {
        let name = format!("vireo-test-{tag}-{}", std::process::id());
        let made = Command::new("ip").args(["netns", "add", &name]).status();
        if made.is_ok_and(|s| s.success()) {
            Ok(Netns(name))
        } else {
            Err("`ip netns add` (CAP_SYS_ADMIN, iproute2)".into())
        }
    }

    /// `program args` inside the namespace, its output.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, program])
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("ip netns exec {} {program}: {err}", self.0))
    }

    /// As `run`, which must succeed; its stdout.
    pub fn ok(&self, program: &str, args: &[&str]) -> String {
        let output = self.run(program, args);
        assert!(
            output.status.success(),
            "{program} {args:?} in {} failed: {}{}",
            self.0,
            stdout(&output),
            stderr(&output)
        );
        stdout(&output)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
