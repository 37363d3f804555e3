//! The two engines a domain runs on: how a definition becomes an engine command line, and how a
//! running guest is controlled (vireo-vmm's control socket, QEMU's QMP) and heard from.

pub mod qemu;
pub mod qmp;
pub mod vmm;

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::sync::mpsc;
use vireo_proto::compute::v1 as pb;

use crate::Error;

/// Where one running domain keeps its sockets and logs (under the run directory).
#[derive(Debug, Clone)]
pub struct RunPaths {
    pub dir: PathBuf,
}

impl RunPaths {
    pub fn new(dir: PathBuf) -> RunPaths {
        RunPaths { dir }
    }
    /// vireo-vmm's control socket or QEMU's QMP socket.
    pub fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    /// The guest's first serial port, which the console hub connects to.
    pub fn serial(&self) -> PathBuf {
        self.dir.join("serial.sock")
    }
    /// Everything the guest wrote on its serial console.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The engine's own stdout and stderr.
    pub fn engine_log(&self) -> PathBuf {
        self.dir.join("engine.log")
    }
    pub fn status(&self) -> PathBuf {
        self.dir.join("status.json")
    }
}

/// A command line ready to spawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Character devices the engine gets open at a given descriptor (macvtap queues).
    pub fds: Vec<(PathBuf, i32)>,
}

/// What the host made ready for a guest's devices, in the definition's order: the tap of each
/// interface ("" for user networking) and the sysfs path of each PCI `<hostdev>`.
#[derive(Debug, Clone, Copy)]
pub struct HostEnds<'a> {
    pub taps: &'a [String],
    pub hostdevs: &'a [PathBuf],
}

/// The first descriptor number handed to an engine for its devices.
pub const FIRST_PASSED_FD: i32 = 100;

/// Something the engine reported about the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// The guest powered itself off.
    Poweroff,
    /// The guest asked for a reboot and the engine is exiting for it (vmm, or QEMU with -no-reboot).
    Reboot,
    /// The guest was reset in place and keeps running (QEMU).
    Reset,
    Crash(String),
    Paused,
    Resumed,
}

/// Talks to a running engine.
#[derive(Clone)]
pub enum Control {
    Vmm(PathBuf),
    Qemu(qmp::Qmp),
}

/// Memory figures of a running guest (virsh dommemstat), in KiB; absent ones are None.
#[derive(Debug, Clone, Default)]
pub struct GuestMemory {
    pub actual_kib: Option<u64>,
    pub unused_kib: Option<u64>,
    pub available_kib: Option<u64>,
    pub usable_kib: Option<u64>,
    pub swap_in_kib: Option<u64>,
    pub swap_out_kib: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
    pub disk_caches_kib: Option<u64>,
}

/// I/O counters of one disk.
#[derive(Debug, Clone, Default)]
pub struct DiskCounters {
    pub rd_req: i64,
    pub rd_bytes: i64,
    pub wr_req: i64,
    pub wr_bytes: i64,
    pub flush_req: i64,
}

impl Control {
    /// Connects to the engine of a running domain and forwards its events.
    pub async fn connect(
        engine: pb::Engine,
        paths: &RunPaths,
        events: mpsc::UnboundedSender<EngineEvent>,
    ) -> Result<Control, String> {
        match engine {
            pb::Engine::Vmm => {
                vmm::watch(&paths.control(), events).await?;
                Ok(Control::Vmm(paths.control()))
            }
            _ => qemu::connect(&paths.control(), events)
                .await
                .map(Control::Qemu),
        }
    }

    pub fn engine(&self) -> pb::Engine {
        match self {
            Control::Vmm(_) => pb::Engine::Vmm,
            Control::Qemu(_) => pb::Engine::Qemu,
        }
    }

    async fn vmm(path: &Path, request: Value) -> Result<Value, Error> {
        vmm::request(path, request).await.map_err(Error::Engine)
    }

    async fn qmp(qmp: &qmp::Qmp, command: &str, arguments: Value) -> Result<Value, Error> {
        qmp.execute(command, arguments)
            .await
            .map_err(|err| Error::Engine(format!("QEMU {command}: {err}")))
    }

    pub async fn pause(&self) -> Result<(), Error> {
        match self {
            Control::Vmm(path) => Self::vmm(path, serde_json::json!({"cmd": "pause"})).await,
            Control::Qemu(qmp) => Self::qmp(qmp, "stop", Value::Null).await,
        }
        .map(drop)
    }

    pub async fn resume(&self) -> Result<(), Error> {
        match self {
            Control::Vmm(path) => Self::vmm(path, serde_json::json!({"cmd": "resume"})).await,
            Control::Qemu(qmp) => Self::qmp(qmp, "cont", Value::Null).await,
        }
        .map(drop)
    }

    /// Presses the ACPI power button: the guest decides.
    pub async fn power_button(&self) -> Result<(), Error> {
        match self {
            Control::Vmm(path) => Self::vmm(path, serde_json::json!({"cmd": "shutdown"})).await,
            Control::Qemu(qmp) => Self::qmp(qmp, "system_powerdown", Value::Null).await,
        }
        .map(drop)
    }

    /// A hard reset. vireo-vmm exits with its reboot status for the supervisor to start it again.
    pub async fn reset(&self) -> Result<(), Error> {
        match self {
            Control::Vmm(path) => Self::vmm(path, serde_json::json!({"cmd": "reset"})).await,
            Control::Qemu(qmp) => Self::qmp(qmp, "system_reset", Value::Null).await,
        }
        .map(drop)
    }

    /// Asks the engine to end the guest now.
    pub async fn stop(&self) -> Result<(), Error> {
        match self {
            Control::Vmm(path) => Self::vmm(path, serde_json::json!({"cmd": "stop"})).await,
            Control::Qemu(qmp) => Self::qmp(qmp, "quit", Value::Null).await,
        }
        .map(drop)
    }

    /// Whether the engine has the guest paused.
    pub async fn paused(&self) -> Result<bool, Error> {
        match self {
            Control::Vmm(path) => {
                let info = Self::vmm(path, serde_json::json!({"cmd": "info"})).await?;
                Ok(info.get("state").and_then(Value::as_str) == Some("paused"))
            }
            Control::Qemu(qmp) => {
                let status = Self::qmp(qmp, "query-status", Value::Null).await?;
                Ok(status.get("running").and_then(Value::as_bool) == Some(false))
            }
        }
    }

    /// Sets the balloon target: the guest keeps `kib`.
    pub async fn set_balloon(&self, kib: u64) -> Result<(), Error> {
        match self {
            Control::Vmm(path) => {
                Self::vmm(
                    path,
                    serde_json::json!({"cmd": "balloon", "target_mib": kib.div_ceil(1024)}),
                )
                .await
            }
            Control::Qemu(qmp) => {
                Self::qmp(
                    qmp,
                    "balloon",
                    serde_json::json!({"value": kib.saturating_mul(1024)}),
                )
                .await
            }
        }
        .map(drop)
    }

    pub async fn memory(&self) -> Result<GuestMemory, Error> {
        match self {
            Control::Vmm(path) => {
                let info = Self::vmm(path, serde_json::json!({"cmd": "info"})).await?;
                Ok(vmm::guest_memory(&info))
            }
            Control::Qemu(qmp) => qemu::guest_memory(qmp).await,
        }
    }

    /// Counters per disk target (vda, ...), in the order the engine lists them.
    pub async fn disk_counters(
        &self,
        live: &pb::DomainDefinition,
    ) -> Result<Vec<(String, DiskCounters)>, Error> {
        match self {
            Control::Vmm(path) => {
                let info = Self::vmm(path, serde_json::json!({"cmd": "info"})).await?;
                Ok(vmm::disk_counters(&info, live))
            }
            Control::Qemu(qmp) => qemu::disk_counters(qmp).await,
        }
    }
}

/// Disks of a definition in engine order, with their host source path.
pub fn disk_source(disk: &pb::Disk) -> Option<&str> {
    let source = disk.source.as_ref()?;
    match disk.r#type() {
        pb::DiskType::File if !source.file.is_empty() => Some(&source.file),
        pb::DiskType::Block if !source.dev.is_empty() => Some(&source.dev),
        // Resolved by svc-storage when the domain starts or the disk is plugged.
        pb::DiskType::Volume if !source.file.is_empty() => Some(&source.file),
        pb::DiskType::Volume if !source.dev.is_empty() => Some(&source.dev),
        _ => None,
    }
}

/// Serial ports and consoles the service can serve: pty (through the console hub), file, and
/// unix sockets it listens on. TCP ends and unix sockets it would connect out to are refused.
pub fn check_char_devices(def: &pb::DomainDefinition, engine: &str) -> Result<(), Error> {
    let devices = def
        .devices
        .iter()
        .flat_map(|d| d.serials.iter().chain(&d.consoles));
    for device in devices {
        let source = device.source.clone().unwrap_or_default();
        match device.r#type() {
            pb::CharSourceType::Tcp => {
                return Err(unsupported(engine, "a serial port on TCP (type='tcp') yet"));
            }
            pb::CharSourceType::Unix if source.mode == pb::CharSourceMode::Connect as i32 => {
                return Err(unsupported(
                    engine,
                    "a serial port that connects out to a unix socket (mode='connect') yet",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The first device of a definition's list that an engine cannot run, named for the error.
pub fn unsupported(engine: &str, what: &str) -> Error {
    Error::Unsupported(format!(
        "the {engine} engine cannot run {what}{}",
        if engine == "vmm" {
            "; choose the qemu engine (<vireo:engine>qemu</vireo:engine>)"
        } else {
            ""
        }
    ))
}
