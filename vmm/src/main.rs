//! The `vireo-vmm` binary: `run` boots one guest and exits with a status that says how it ended
//! (0 poweroff, 3 reboot, 4 crash, 5 stopped, 6 saved, 1 VMM failure, 2 bad arguments); `restore`
//! continues a saved VM; `receive` waits for one migrating in; `control` talks to a running one;
//! `probe` reports what KVM offers here.

use std::path::PathBuf;
use std::process::ExitCode;

use vireo_vmm::builder::{self, VmExit};
use vireo_vmm::config::VmConfig;
use vireo_vmm::devices::serial::SerialOutput;
use vireo_vmm::vstate::memory::MemoryOptions;

const USAGE: &str = "usage: vireo-vmm run --kernel PATH [--initrd PATH] [--cmdline TEXT] [--vcpus N] [--memory MIB]
                     [--serial file:PATH|unix:PATH|pty|stdout|null] [--control PATH] [--hugepages] [--no-ksm]
                     [--kvm-device PATH] [--rng] [--disk PATH[,format=raw|qcow2][,readonly][,serial=TEXT]]...
                     [--net tap=NAME[,mac=MAC]]... [--balloon] [--vfio SYSFS_PATH]...
                     [--console file:PATH|unix:PATH]
       vireo-vmm restore --snapshot PATH [--serial ...] [--control PATH] [--no-ksm] [--kvm-device PATH]
       vireo-vmm receive --listen HOST:PORT [--paused] [--serial ...] [--control PATH] [--no-ksm]
                     [--kvm-device PATH] [--disk ...]... [--net ...]... [--rng] [--balloon] [--console ...]
       vireo-vmm control SOCKET info|pause|resume|shutdown|reset|stop|watch|save PATH|balloon MIB
                     |migrate HOST:PORT|migrate-cancel
       vireo-vmm probe
       vireo-vmm --version";

fn usage_error(message: &str) -> ExitCode {
    eprintln!("vireo-vmm: {message}\n{USAGE}");
    ExitCode::from(2)
}

/// Which command the options are for.
#[derive(PartialEq)]
enum Mode {
    Run,
    /// Takes the machine's shape from the snapshot; needs no kernel.
    Restore,
    /// Takes the machine's shape from the source; needs no kernel.
    Receive,
}

struct Parsed {
    config: VmConfig,
    snapshot: Option<PathBuf>,
    listen: Option<String>,
    paused: bool,
}

/// Options of `run`, `restore` or `receive`.
fn parse_run(mut args: impl Iterator<Item = String>, mode: Mode) -> Result<Parsed, String> {
    let mut snapshot = None;
    let mut listen = None;
    let mut paused = false;
    let mut kernel = None;
    let mut initrd = None;
    let mut cmdline = String::new();
    let mut vcpus: u64 = 1;
    let mut memory_mib: u64 = 128;
    let mut serial = SerialOutput::Stdout;
    let mut control_socket = None;
    let mut memory = MemoryOptions {
        hugepages: false,
        ksm: true,
    };
    let mut kvm_device = PathBuf::from("/dev/kvm");
    let mut rng = false;
    let mut disks = Vec::new();
    let mut nets = Vec::new();
    let mut balloon = false;
    let mut vfio = Vec::new();
    let mut console = None;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--initrd" => initrd = Some(PathBuf::from(value()?)),
            "--cmdline" => cmdline = value()?,
            "--vcpus" => {
                vcpus = value()?
                    .parse()
                    .map_err(|_| "--vcpus needs a number".to_string())?
            }
            "--memory" => {
                memory_mib = value()?
                    .parse()
                    .map_err(|_| "--memory needs a number of MiB".to_string())?
            }
            "--serial" => serial = value()?.parse()?,
            "--control" => control_socket = Some(PathBuf::from(value()?)),
            "--hugepages" => memory.hugepages = true,
            "--no-ksm" => memory.ksm = false,
            "--kvm-device" => kvm_device = PathBuf::from(value()?),
            "--rng" => rng = true,
            "--snapshot" if mode == Mode::Restore => snapshot = Some(PathBuf::from(value()?)),
            "--listen" if mode == Mode::Receive => listen = Some(value()?),
            "--paused" if mode == Mode::Receive => paused = true,
            "--disk" => disks.push(value()?.parse()?),
            "--net" => nets.push(value()?.parse()?),
            "--balloon" => balloon = true,
            "--vfio" => vfio.push(PathBuf::from(value()?)),
            "--console" => console = Some(value()?.parse()?),
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    let kernel = if mode == Mode::Run {
        kernel.ok_or("--kernel is required")?
    } else {
        PathBuf::new()
    };
    if mode == Mode::Restore && snapshot.is_none() {
        return Err("restore needs --snapshot PATH".into());
    }
    if mode == Mode::Receive && listen.is_none() {
        return Err("receive needs --listen HOST:PORT".into());
    }
    let vcpus = VmConfig::validate(vcpus, memory_mib).map_err(|err| err.to_string())?;
    let config = VmConfig {
        vcpus,
        memory_mib,
        kernel,
        initrd,
        cmdline,
        serial,
        control_socket,
        memory,
        kvm_device,
        rng,
        disks,
        nets,
        balloon,
        vfio,
        console,
    };
    Ok(Parsed {
        config,
        snapshot,
        listen,
        paused,
    })
}

fn run(config: &VmConfig, start: builder::Start) -> ExitCode {
    let built = builder::build(config, start, builder::Events::new(), false);
    match built {
        Ok(vmm) => run_built(vmm),
        Err(err) => {
            eprintln!("vireo-vmm: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Waits for a VM migrating in, then runs it.
fn receive(config: VmConfig, listen: &str, paused: bool) -> ExitCode {
    let listener = match std::net::TcpListener::bind(listen) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("vireo-vmm: cannot listen on {listen}: {err}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("vireo-vmm: waiting for a migration on {listen}");
    match builder::receive(config.clone(), listener, paused) {
        Ok(vmm) => {
            eprintln!("vireo-vmm: the VM arrived");
            run_built(vmm)
        }
        Err(builder::NotArrived::Stopped) => {
            eprintln!("vireo-vmm: stopped before the VM arrived");
            remove_sockets();
            ExitCode::from(VmExit::Stopped.exit_code())
        }
        Err(builder::NotArrived::Failed(error)) => {
            eprintln!("vireo-vmm: {error}");
            remove_sockets();
            ExitCode::FAILURE
        }
    }
}

fn run_built(vmm: builder::Vmm) -> ExitCode {
    if let Some(pty) = &vmm.serial().pty {
        eprintln!("vireo-vmm: serial console on {}", pty.display());
    }
    let exit = vmm.run();
    match &exit {
        VmExit::Poweroff => eprintln!("vireo-vmm: guest powered off"),
        VmExit::Reboot(reason) => eprintln!("vireo-vmm: guest reboot: {reason}"),
        VmExit::Crash(reason) => eprintln!("vireo-vmm: guest crashed: {reason}"),
        VmExit::Stopped => eprintln!("vireo-vmm: stopped"),
        VmExit::Saved => eprintln!("vireo-vmm: saved and stopped"),
    }
    remove_sockets();
    ExitCode::from(exit.exit_code())
}

/// The sockets this process listened on go with it (unless another process took the path).
fn remove_sockets() {
    vireo_vmm::control::remove_bound_sockets();
}

/// Sends one request to a running VMM's control socket and prints the reply (and, for `watch`,
/// every event until the VMM exits). Exits 1 when the VMM answers with an error.
fn control_client(socket: &str, command: &str, path: Option<&str>) -> ExitCode {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(err) => {
            eprintln!("vireo-vmm: cannot connect to {socket}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let request = match (command, path) {
        ("balloon", Some(mib)) => {
            let Ok(target_mib) = mib.parse::<u64>() else {
                eprintln!("vireo-vmm: balloon: MIB must be a whole number of MiB, not `{mib}`");
                return ExitCode::from(2);
            };
            serde_json::json!({ "cmd": command, "target_mib": target_mib })
        }
        ("migrate", Some(address)) => serde_json::json!({ "cmd": command, "address": address }),
        (_, Some(path)) => serde_json::json!({ "cmd": command, "path": path }),
        (_, None) => serde_json::json!({ "cmd": command }),
    };
    let request = format!("{request}\n");
    if let Err(err) = stream.write_all(request.as_bytes()) {
        eprintln!("vireo-vmm: {socket}: {err}");
        return ExitCode::FAILURE;
    }
    let mut ok = true;
    for (index, line) in BufReader::new(stream)
        .lines()
        .map_while(Result::ok)
        .enumerate()
    {
        println!("{line}");
        if index == 0 {
            ok = serde_json::from_str::<serde_json::Value>(&line)
                .is_ok_and(|reply| reply["ok"] == true);
            if command != "watch" {
                break;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("run") => match parse_run(args, Mode::Run) {
            Ok(parsed) => run(&parsed.config, builder::Start::Boot),
            Err(message) => usage_error(&message),
        },
        Some("receive") => match parse_run(args, Mode::Receive) {
            Ok(parsed) => receive(
                parsed.config,
                parsed.listen.as_deref().unwrap_or_default(),
                parsed.paused,
            ),
            Err(message) => usage_error(&message),
        },
        Some("restore") => match parse_run(args, Mode::Restore) {
            Ok(Parsed {
                mut config,
                snapshot: Some(path),
                ..
            }) => match vireo_vmm::snapshot::open(&path) {
                Ok(reader) => {
                    config.vcpus = reader.header.vcpu_count;
                    config.memory_mib = reader.header.memory_mib;
                    config.rng = reader.header.machine.rng;
                    config.disks = reader.header.machine.disks.clone();
                    config.nets = reader.header.machine.nets.clone();
                    config.balloon = reader.header.machine.balloon;
                    config.console = reader.header.machine.console.clone();
                    if let Err(err) = VmConfig::validate(u64::from(config.vcpus), config.memory_mib)
                    {
                        eprintln!("vireo-vmm: snapshot {}: {err}", path.display());
                        return ExitCode::FAILURE;
                    }
                    run(&config, builder::Start::Restore(Box::new(reader)))
                }
                Err(err) => {
                    eprintln!("vireo-vmm: {err}");
                    ExitCode::FAILURE
                }
            },
            Ok(_) => usage_error("restore needs --snapshot PATH"),
            Err(message) => usage_error(&message),
        },
        Some("control") => {
            let (Some(socket), Some(command)) = (args.next(), args.next()) else {
                return usage_error("control needs SOCKET and a command");
            };
            control_client(&socket, &command, args.next().as_deref())
        }
        Some("probe") => {
            let probe = vireo_vmm::vstate::probe::probe_kvm();
            if probe.available {
                println!(
                    "kvm: available, API {}, module {}, max vCPUs {}, extensions {}",
                    probe.api_version,
                    if probe.module.is_empty() {
                        "unknown"
                    } else {
                        &probe.module
                    },
                    probe.max_vcpus,
                    probe.extensions.join(",")
                );
                ExitCode::SUCCESS
            } else {
                eprintln!("vireo-vmm: {}", probe.unavailable_reason);
                ExitCode::FAILURE
            }
        }
        Some("--version" | "-V") => {
            println!("vireo-vmm {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(other) => usage_error(&format!("unknown command `{other}`")),
        None => usage_error("no command"),
    }
}
