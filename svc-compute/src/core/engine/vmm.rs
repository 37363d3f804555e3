//! The vmm engine: a definition as a vireo-vmm command line, and its control socket (one JSON
//! object per line; `watch` streams events until the VMM exits).

use std::path::Path;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use vireo_proto::compute::v1 as pb;

use super::{DiskCounters, EngineEvent, GuestMemory, Launch, RunPaths, disk_source, unsupported};
use crate::Error;

/// What vireo-vmm's exit status says happened (see docs/architecture.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmExit {
    Poweroff,
    Reboot,
    Crash,
    Stopped,
    Saved,
    Failed,
}

pub fn exit_of(code: Option<i32>) -> VmmExit {
    match code {
        Some(0) => VmmExit::Poweroff,
        Some(3) => VmmExit::Reboot,
        Some(4) => VmmExit::Crash,
        Some(5) => VmmExit::Stopped,
        Some(6) => VmmExit::Saved,
        _ => VmmExit::Failed,
    }
}

/// The vireo-vmm command line for a definition, or the first thing it cannot run, named.
pub fn command(
    binary: &Path,
    def: &pb::DomainDefinition,
    host: super::HostEnds<'_>,
    paths: &RunPaths,
) -> Result<Launch, Error> {
    let os = def.os.clone().unwrap_or_default();
    if os.kernel.is_empty() {
        return Err(unsupported(
            "vmm",
            "a guest without <os><kernel> (it boots a kernel directly, no firmware)",
        ));
    }
    if os.loader.is_some() || os.firmware != 0 {
        return Err(unsupported("vmm", "firmware (<loader>, <os firmware=...>)"));
    }
    if !os.machine.is_empty() {
        return Err(unsupported("vmm", "a machine type (<type machine=...>)"));
    }
    super::check_char_devices(def, "vmm")?;
    if def.features.as_ref().is_some_and(|f| !f.acpi) {
        return Err(unsupported(
            "vmm",
            "a guest without ACPI (its <features> lack <acpi/>)",
        ));
    }
    if let Some(clock) = &def.clock
        && (!matches!(
            clock.offset(),
            pb::ClockOffset::Utc | pb::ClockOffset::Unspecified
        ) || !clock.timers.is_empty())
    {
        return Err(unsupported(
            "vmm",
            "a clock other than <clock offset='utc'/> without timers (its RTC keeps UTC)",
        ));
    }
    let vcpu = def.vcpu.clone().unwrap_or_default();
    if vcpu.current.is_some_and(|current| current != vcpu.count) {
        return Err(unsupported(
            "vmm",
            "fewer vCPUs online than <vcpu> (current=)",
        ));
    }
    let mut args = vec![
        "run".to_string(),
        "--kernel".into(),
        os.kernel.clone(),
        "--cmdline".into(),
        os.cmdline.clone(),
        "--vcpus".into(),
        vcpu.count.to_string(),
        "--memory".into(),
        def.memory_kib.div_ceil(1024).to_string(),
        "--control".into(),
        paths.control().display().to_string(),
    ];
    if !os.initrd.is_empty() {
        args.extend(["--initrd".into(), os.initrd.clone()]);
    }
    if let Some(backing) = &def.memory_backing {
        if backing.hugepages {
            args.push("--hugepages".into());
        }
        if backing.nosharepages {
            args.push("--no-ksm".into());
        }
    }
    let devices = def.devices.clone().unwrap_or_default();
    let serial_target = !devices.serials.is_empty()
        || devices.consoles.iter().any(|c| {
            c.target
                .as_ref()
                .is_none_or(|t| t.r#type != pb::CharTargetType::Virtio as i32)
        });
    if devices.serials.len() > 1 {
        return Err(unsupported("vmm", "more than one <serial> port"));
    }
    args.extend([
        "--serial".into(),
        if serial_target {
            format!("unix:{}", paths.serial().display())
        } else {
            "null".into()
        },
    ]);
    for console in &devices.consoles {
        if console
            .target
            .as_ref()
            .is_some_and(|t| t.r#type == pb::CharTargetType::Virtio as i32)
        {
            let path = console
                .source
                .as_ref()
                .map(|s| s.path.clone())
                .unwrap_or_default();
            if console.r#type != pb::CharSourceType::File as i32 {
                return Err(unsupported(
                    "vmm",
                    "a virtio <console> other than type='file'",
                ));
            }
            args.extend(["--console".into(), format!("file:{path}")]);
        }
    }
    for disk in &devices.disks {
        let target = disk.target.clone().unwrap_or_default();
        if disk.device != pb::DiskDevice::Disk as i32 {
            return Err(unsupported(
                "vmm",
                &format!(
                    "disk {}: only device='disk' (no cdrom or floppy)",
                    target.dev
                ),
            ));
        }
        if target.bus != pb::DiskBus::Virtio as i32 {
            return Err(unsupported(
                "vmm",
                &format!("disk {}: only bus='virtio'", target.dev),
            ));
        }
        let path = disk_source(disk).ok_or_else(|| {
            unsupported(
                "vmm",
                &format!("disk {}: an unresolved volume source", target.dev),
            )
        })?;
        let format = match disk.driver.as_ref().map(|d| d.r#type()) {
            Some(pb::DiskFormat::Qcow2) => "qcow2",
            _ => "raw",
        };
        let mut spec = format!("{path},format={format}");
        if disk.readonly {
            spec.push_str(",readonly");
        }
        if !disk.serial.is_empty() {
            spec.push_str(&format!(",serial={}", disk.serial));
        }
        args.extend(["--disk".into(), spec]);
    }
    for (interface, tap) in devices.interfaces.iter().zip(host.taps) {
        if interface.r#type() == pb::InterfaceType::Direct || crate::core::network::is_macvtap(tap)
        {
            return Err(unsupported(
                "vmm",
                "a direct (macvtap) interface; use type='bridge'",
            ));
        }
        if interface.r#type() == pb::InterfaceType::User {
            return Err(unsupported(
                "vmm",
                "user-mode networking; use type='bridge'",
            ));
        }
        if interface.model != pb::InterfaceModel::Virtio as i32 {
            return Err(unsupported(
                "vmm",
                &format!("interface {}: only model virtio", interface.mac),
            ));
        }
        args.extend(["--net".into(), format!("tap={tap},mac={}", interface.mac)]);
    }
    if let Some(balloon) = &devices.memballoon
        && balloon.model == pb::MemballoonModel::Virtio as i32
    {
        args.push("--balloon".into());
    }
    for path in host.hostdevs {
        args.extend(["--vfio".into(), path.display().to_string()]);
    }
    if devices.rngs.len() > 1 {
        return Err(unsupported("vmm", "more than one <rng>"));
    }
    if !devices.rngs.is_empty() {
        args.push("--rng".into());
    }
    for (present, what) in [
        (!devices.graphics.is_empty(), "<graphics>"),
        (!devices.videos.is_empty(), "<video>"),
        (
            devices.hostdevs.len() != host.hostdevs.len(),
            "a USB or SCSI <hostdev> (PCI devices are assigned through VFIO)",
        ),
        (
            devices
                .hostdevs
                .iter()
                .any(|h| h.rom_bar == Some(true) || !h.rom_file.is_empty()),
            "a host device's <rom> (the guest boots from its kernel and sees no ROM BAR)",
        ),
        (!devices.channels.is_empty(), "<channel>"),
        (
            !devices.panics.is_empty(),
            "<panic> (it sees a crash itself: a triple fault or a KVM error)",
        ),
        (
            devices
                .inputs
                .iter()
                .any(|i| i.bus != pb::InputBus::Ps2 as i32),
            "<input> other than PS/2 (its i8042 keyboard controller)",
        ),
        (
            devices.controllers.iter().any(|c| {
                !matches!(
                    c.model(),
                    pb::ControllerModel::PciRoot | pb::ControllerModel::None
                )
            }),
            "a <controller> other than pci-root or usb model='none'",
        ),
    ] {
        if present {
            return Err(unsupported("vmm", what));
        }
    }
    Ok(Launch {
        program: binary.to_path_buf(),
        args,
        fds: Vec::new(),
    })
}

/// `vireo-vmm receive` for a domain whose `run` command line is `run_args`: the same host ends,
/// without what the source sends (kernel, command line, vCPUs, memory size).
pub fn receive_args(run_args: &[String], address: std::net::SocketAddr) -> Vec<String> {
    let mut args = vec![
        "receive".to_string(),
        "--listen".into(),
        address.to_string(),
        "--paused".into(),
    ];
    let mut given = run_args.iter().skip(1);
    while let Some(flag) = given.next() {
        match flag.as_str() {
            "--kernel" | "--initrd" | "--cmdline" | "--vcpus" | "--memory" => {
                given.next();
            }
            _ => args.push(flag.clone()),
        }
    }
    args
}

/// One request on the control socket and its reply.
pub async fn request(path: &Path, request: Value) -> Result<Value, String> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|err| format!("vireo-vmm control socket {}: {err}", path.display()))?;
    let (read, mut write) = stream.into_split();
    let mut line = request.to_string();
    line.push('\n');
    write
        .write_all(line.as_bytes())
        .await
        .map_err(|err| format!("vireo-vmm control: {err}"))?;
    let reply = BufReader::new(read)
        .lines()
        .next_line()
        .await
        .map_err(|err| format!("vireo-vmm control: {err}"))?
        .ok_or("vireo-vmm closed its control socket")?;
    let reply: Value =
        serde_json::from_str(&reply).map_err(|err| format!("vireo-vmm reply: {err}"))?;
    if reply.get("ok").and_then(Value::as_bool) == Some(true) {
        Ok(reply)
    } else {
        Err(reply
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("vireo-vmm refused the request")
            .to_string())
    }
}

/// Subscribes to the VMM's events and forwards them until it exits.
pub async fn watch(path: &Path, events: mpsc::UnboundedSender<EngineEvent>) -> Result<(), String> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|err| format!("vireo-vmm control socket {}: {err}", path.display()))?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(b"{\"cmd\":\"watch\"}\n")
        .await
        .map_err(|err| format!("vireo-vmm watch: {err}"))?;
    let mut lines = BufReader::new(read).lines();
    tokio::spawn(async move {
        let _keep_open = write;
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(message) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let event = match message.get("event").and_then(Value::as_str) {
                Some("poweroff") => EngineEvent::Poweroff,
                Some("reboot") => EngineEvent::Reboot,
                Some("crash") => EngineEvent::Crash(
                    message
                        .get("reason")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                ),
                Some("paused") => EngineEvent::Paused,
                Some("resumed") => EngineEvent::Resumed,
                _ => continue,
            };
            if events.send(event).is_err() {
                break;
            }
        }
    });
    Ok(())
}

fn devices_of<'a>(info: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    info.get("devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |d| d.get("type").and_then(Value::as_str) == Some(kind))
}

pub fn guest_memory(info: &Value) -> GuestMemory {
    let memory_kib = info.get("memory_mib").and_then(Value::as_u64).unwrap_or(0) * 1024;
    let Some(balloon) = devices_of(info, "balloon").next() else {
        return GuestMemory {
            actual_kib: Some(memory_kib),
            ..Default::default()
        };
    };
    let statistics = &balloon["statistics"];
    let pages = statistics
        .get("actual_pages")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let guest = &statistics["guest"];
    let kib = |name: &str| guest.get(name).and_then(Value::as_u64).map(|b| b / 1024);
    let count = |name: &str| guest.get(name).and_then(Value::as_u64);
    GuestMemory {
        actual_kib: Some(memory_kib.saturating_sub(pages * 4)),
        unused_kib: kib("free_memory"),
        available_kib: kib("total_memory"),
        usable_kib: kib("available_memory"),
        swap_in_kib: kib("swap_in"),
        swap_out_kib: kib("swap_out"),
        major_faults: count("major_faults"),
        minor_faults: count("minor_faults"),
        disk_caches_kib: kib("disk_caches"),
    }
}

pub fn disk_counters(info: &Value, live: &pb::DomainDefinition) -> Vec<(String, DiskCounters)> {
    let targets = live
        .devices
        .iter()
        .flat_map(|d| &d.disks)
        .filter_map(|d| d.target.as_ref().map(|t| t.dev.clone()));
    targets
        .zip(devices_of(info, "block"))
        .map(|(target, device)| {
            let s = &device["statistics"];
            let n = |name: &str| {
                i64::try_from(s.get(name).and_then(Value::as_u64).unwrap_or(0)).unwrap_or(i64::MAX)
            };
            (
                target,
                DiskCounters {
                    rd_req: n("read_requests"),
                    rd_bytes: n("read_bytes"),
                    wr_req: n("write_requests"),
                    wr_bytes: n("write_bytes"),
                    flush_req: n("flush_requests"),
                },
            )
        })
        .collect()
}
