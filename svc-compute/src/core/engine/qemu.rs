//! The qemu engine: a definition as a qemu-system-x86_64 command line (started paused with -S,
//! so the console is attached before the guest runs), and its QMP events as engine events.

use std::path::Path;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use vireo_proto::compute::v1 as pb;

use super::qmp::{Qmp, QmpEvent};
use super::{DiskCounters, EngineEvent, GuestMemory, Launch, RunPaths, disk_source, unsupported};
use crate::Error;

/// A value inside a QEMU option list: commas are doubled.
fn opt(value: &str) -> String {
    value.replace(',', ",,")
}

fn nic_model(model: pb::InterfaceModel) -> &'static str {
    match model {
        pb::InterfaceModel::E1000 => "e1000",
        pb::InterfaceModel::E1000e => "e1000e",
        pb::InterfaceModel::Rtl8139 => "rtl8139",
        pb::InterfaceModel::Ne2kPci => "ne2k_pci",
        pb::InterfaceModel::Pcnet => "pcnet",
        _ => "virtio-net-pci",
    }
}

/// The QEMU command line for a definition. `kvm` picks the accelerator; `vnc_display` is the
/// display number chosen for autoport VNC.
pub fn command(
    binary: &Path,
    def: &pb::DomainDefinition,
    kvm: bool,
    host: super::HostEnds<'_>,
    paths: &RunPaths,
) -> Result<Launch, Error> {
    super::check_char_devices(def, "qemu")?;
    let os = def.os.clone().unwrap_or_default();
    let vcpu = def.vcpu.clone().unwrap_or_default();
    let devices = def.devices.clone().unwrap_or_default();
    let acpi = def.features.as_ref().is_some_and(|f| f.acpi);
    let machine = if os.machine.is_empty() {
        "pc"
    } else {
        &os.machine
    };
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("guest={},debug-threads=on", opt(&def.name)),
        "-uuid".into(),
        def.uuid.clone(),
        "-machine".into(),
        format!(
            "{},accel={},acpi={},mem-merge={}",
            opt(machine),
            if kvm { "kvm" } else { "tcg" },
            if acpi { "on" } else { "off" },
            if def.memory_backing.as_ref().is_some_and(|m| m.nosharepages) {
                "off"
            } else {
                "on"
            }
        ),
        "-cpu".into(),
        match def.cpu.as_ref() {
            Some(cpu) if kvm && cpu.mode() == pb::CpuMode::HostPassthrough => "host".into(),
            Some(cpu) if !cpu.model.is_empty() => opt(&cpu.model),
            _ if kvm => "host".into(),
            _ => "qemu64".into(),
        },
        "-m".into(),
        format!("{}M", def.memory_kib.div_ceil(1024)),
        "-smp".into(),
        format!(
            "{},maxcpus={}",
            vcpu.current.unwrap_or(vcpu.count),
            vcpu.count
        ),
        "-no-user-config".into(),
        "-nodefaults".into(),
        "-S".into(),
        "-qmp".into(),
        format!(
            "unix:{},server=on,wait=off",
            opt(&paths.control().display().to_string())
        ),
        "-msg".into(),
        "timestamp=on".into(),
    ];
    if def.on_reboot == pb::DomainLifecycleAction::Destroy as i32 {
        a.push("-no-reboot".into());
    }
    if let Some(clock) = &def.clock {
        a.extend([
            "-rtc".into(),
            match clock.offset() {
                pb::ClockOffset::Localtime => "base=localtime".into(),
                _ => "base=utc".into(),
            },
        ]);
    }
    if let Some(loader) = &os.loader {
        a.extend(["-bios".into(), loader.path.clone()]);
    }
    if !os.kernel.is_empty() {
        a.extend(["-kernel".into(), os.kernel.clone()]);
        if !os.initrd.is_empty() {
            a.extend(["-initrd".into(), os.initrd.clone()]);
        }
        if !os.cmdline.is_empty() {
            a.extend(["-append".into(), os.cmdline.clone()]);
        }
    }
    let order: String = os
        .boot
        .iter()
        .filter_map(|b| match pb::BootDevice::try_from(*b) {
            Ok(pb::BootDevice::Hd) => Some('c'),
            Ok(pb::BootDevice::Cdrom) => Some('d'),
            Ok(pb::BootDevice::Network) => Some('n'),
            Ok(pb::BootDevice::Fd) => Some('a'),
            _ => None,
        })
        .collect();
    if !order.is_empty() || os.bootmenu == Some(true) {
        let mut boot = format!("order={}", if order.is_empty() { "c" } else { &order });
        if os.bootmenu == Some(true) {
            boot.push_str(",menu=on");
        }
        a.extend(["-boot".into(), boot]);
    }

    let mut have_ahci = false;
    let mut have_scsi = false;
    let mut have_usb = devices
        .controllers
        .iter()
        .any(|c| c.r#type() == pb::ControllerType::Usb && c.model() != pb::ControllerModel::None);
    for disk in &devices.disks {
        let target = disk.target.clone().unwrap_or_default();
        let id = format!("drive-{}", target.dev);
        let format = match disk.driver.as_ref().map(|d| d.r#type()) {
            Some(pb::DiskFormat::Qcow2) => "qcow2",
            _ => "raw",
        };
        let cdrom = disk.device == pb::DiskDevice::Cdrom as i32;
        let mut drive = format!("if=none,id={id}");
        match disk_source(disk) {
            Some(path) => drive.push_str(&format!(",file={},format={format}", opt(path))),
            None if disk.r#type() == pb::DiskType::Volume => {
                return Err(unsupported(
                    "qemu",
                    &format!("disk {}: an unresolved volume source", target.dev),
                ));
            }
            None => {}
        }
        if cdrom {
            drive.push_str(",media=cdrom");
        }
        if disk.readonly {
            drive.push_str(",readonly=on");
        }
        if let Some(cache) = disk.driver.as_ref().map(|d| d.cache()) {
            let cache = match cache {
                pb::DiskCache::None => "none",
                pb::DiskCache::Writethrough => "writethrough",
                pb::DiskCache::Writeback => "writeback",
                pb::DiskCache::Directsync => "directsync",
                pb::DiskCache::Unsafe => "unsafe",
                _ => "",
            };
            if !cache.is_empty() {
                drive.push_str(&format!(",cache={cache}"));
            }
        }
        if disk.device == pb::DiskDevice::Floppy as i32 {
            drive = drive.replacen("if=none", "if=floppy", 1);
            a.extend(["-drive".into(), drive]);
            continue;
        }
        a.extend(["-drive".into(), drive]);
        let unit = target
            .dev
            .chars()
            .last()
            .map_or(0, |c| (c as u32).saturating_sub('a' as u32));
        let mut device = match target.bus() {
            pb::DiskBus::Virtio if !cdrom => format!("virtio-blk-pci,drive={id},id={}", target.dev),
            pb::DiskBus::Ide => format!(
                "{},drive={id},id={},bus=ide.{},unit={}",
                if cdrom { "ide-cd" } else { "ide-hd" },
                target.dev,
                unit / 2,
                unit % 2
            ),
            pb::DiskBus::Sata => {
                if !have_ahci {
                    a.extend(["-device".into(), "ahci,id=sata0".into()]);
                    have_ahci = true;
                }
                format!(
                    "{},drive={id},id={},bus=sata0.{unit}",
                    if cdrom { "ide-cd" } else { "ide-hd" },
                    target.dev
                )
            }
            pb::DiskBus::Scsi => {
                if !have_scsi {
                    a.extend(["-device".into(), "virtio-scsi-pci,id=scsi0".into()]);
                    have_scsi = true;
                }
                format!(
                    "{},drive={id},id={},bus=scsi0.0,scsi-id={unit}",
                    if cdrom { "scsi-cd" } else { "scsi-hd" },
                    target.dev
                )
            }
            pb::DiskBus::Usb => {
                have_usb = true;
                format!("usb-storage,drive={id},id={}", target.dev)
            }
            _ => {
                return Err(unsupported(
                    "qemu",
                    &format!("disk {}: this device on this bus", target.dev),
                ));
            }
        };
        if !disk.serial.is_empty() {
            device.push_str(&format!(",serial={}", opt(&disk.serial)));
        }
        if disk.shareable {
            // Several guests may write it: QEMU must not lock the image for itself.
            device.push_str(",share-rw=on");
        }
        if let Some(order) = disk.boot_order {
            device.push_str(&format!(",bootindex={order}"));
        }
        a.extend(["-device".into(), device]);
    }
    if have_usb
        || devices
            .inputs
            .iter()
            .any(|i| i.bus == pb::InputBus::Usb as i32)
    {
        a.extend(["-device".into(), "piix3-usb-uhci,id=usb".into()]);
    }
    let mut fds = Vec::new();
    for (index, (interface, tap)) in devices.interfaces.iter().zip(host.taps).enumerate() {
        let netdev = match interface.r#type() {
            pb::InterfaceType::User => format!("user,id=net{index}"),
            pb::InterfaceType::Direct | pb::InterfaceType::Network
                if crate::core::network::is_macvtap(tap) =>
            {
                // A macvtap's queue is a character device QEMU gets already open.
                let fd = super::FIRST_PASSED_FD + i32::try_from(fds.len()).unwrap_or(0);
                fds.push((crate::core::network::macvtap_device(tap, &paths.dir)?, fd));
                format!("tap,id=net{index},fd={fd}")
            }
            _ => format!("tap,id=net{index},ifname={tap},script=no,downscript=no"),
        };
        let mut device = format!(
            "{},netdev=net{index},mac={},id=net{index}",
            nic_model(interface.model()),
            interface.mac
        );
        if let Some(order) = interface.boot_order {
            device.push_str(&format!(",bootindex={order}"));
        }
        a.extend(["-netdev".into(), netdev, "-device".into(), device]);
    }
    if devices.serials.len() > 1 {
        return Err(unsupported("qemu", "more than one <serial> port yet"));
    }
    if !devices.serials.is_empty() || !devices.consoles.is_empty() {
        a.extend([
            "-chardev".into(),
            format!(
                "socket,id=charserial0,path={},server=on,wait=off",
                opt(&paths.serial().display().to_string())
            ),
            "-device".into(),
            "isa-serial,chardev=charserial0,id=serial0".into(),
        ]);
    }
    for input in &devices.inputs {
        match (input.r#type(), input.bus()) {
            (pb::InputType::Tablet, pb::InputBus::Usb) => {
                a.extend(["-device".into(), "usb-tablet,id=input0".into()]);
            }
            (pb::InputType::Keyboard, pb::InputBus::Usb) => {
                a.extend(["-device".into(), "usb-kbd,id=input1".into()]);
            }
            (pb::InputType::Mouse, pb::InputBus::Usb) => {
                a.extend(["-device".into(), "usb-mouse,id=input2".into()]);
            }
            (_, pb::InputBus::Ps2 | pb::InputBus::Unspecified) => {}
            _ => return Err(unsupported("qemu", "a virtio <input> yet")),
        }
    }
    match devices.graphics.as_slice() {
        [] => a.extend(["-display".into(), "none".into()]),
        [graphics] if graphics.r#type() == pb::GraphicsType::Vnc => {
            let listen = if graphics.listen.is_empty() {
                "127.0.0.1"
            } else {
                &graphics.listen
            };
            let vnc = if graphics.autoport || graphics.port < 5900 {
                // QEMU finds a free display from :0 on; query-vnc reports the port it took.
                format!("{listen}:0,to=99")
            } else {
                format!("{listen}:{}", graphics.port - 5900)
            };
            a.extend(["-vnc".into(), vnc]);
        }
        _ => return Err(unsupported("qemu", "graphics other than one VNC display")),
    }
    let vga = match devices.videos.first().map(|v| v.model()) {
        None if devices.graphics.is_empty() => "none",
        None | Some(pb::VideoModel::Vga) => "std",
        Some(pb::VideoModel::Cirrus) => "cirrus",
        Some(pb::VideoModel::Qxl) => "qxl",
        Some(pb::VideoModel::Virtio) => "virtio",
        Some(pb::VideoModel::None) => "none",
        Some(other) => {
            return Err(unsupported("qemu", &format!("video model {other:?} yet")));
        }
    };
    a.extend(["-vga".into(), vga.into()]);
    if let Some(balloon) = &devices.memballoon
        && balloon.model == pb::MemballoonModel::Virtio as i32
    {
        a.extend(["-device".into(), "virtio-balloon-pci,id=balloon0".into()]);
    }
    for (index, rng) in devices.rngs.iter().enumerate() {
        let path = if rng.backend_path.is_empty() {
            "/dev/urandom"
        } else {
            &rng.backend_path
        };
        a.extend([
            "-object".into(),
            format!("rng-random,id=objrng{index},filename={}", opt(path)),
            "-device".into(),
            format!("virtio-rng-pci,rng=objrng{index},id=rng{index}"),
        ]);
    }
    if devices.hostdevs.len() != host.hostdevs.len() {
        return Err(unsupported("qemu", "USB or SCSI host devices yet"));
    }
    for (index, (hostdev, path)) in devices.hostdevs.iter().zip(host.hostdevs).enumerate() {
        let id = format!("hostdev{index}");
        a.extend(["-device".into(), vfio_pci_device(hostdev, path, &id)?]);
    }
    for panic in &devices.panics {
        let device = match panic.model() {
            pb::PanicModel::Pvpanic => "pvpanic-pci",
            pb::PanicModel::Isa | pb::PanicModel::Unspecified => "pvpanic",
            pb::PanicModel::Hyperv => return Err(unsupported("qemu", "a Hyper-V <panic> yet")),
        };
        a.extend(["-device".into(), device.into()]);
    }
    if !devices.panics.is_empty() {
        // A reported panic ends QEMU; the service then applies on_crash.
        a.extend(["-action".into(), "panic=shutdown".into()]);
    }
    if !devices.channels.is_empty() {
        return Err(unsupported("qemu", "<channel> yet"));
    }
    Ok(Launch {
        program: binary.to_path_buf(),
        args: a,
        fds,
    })
}

/// Connects to QMP and turns its events into engine events.
pub async fn connect(
    path: &Path,
    events: mpsc::UnboundedSender<EngineEvent>,
) -> Result<Qmp, String> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<QmpEvent>();
    let qmp = Qmp::connect(path, raw_tx)
        .await
        .map_err(|err| format!("QMP {}: {err}", path.display()))?;
    tokio::spawn(async move {
        while let Some(event) = raw_rx.recv().await {
            let reason = event
                .data
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("");
            let guest = event.data.get("guest").and_then(Value::as_bool) == Some(true);
            let translated = match event.name.as_str() {
                "SHUTDOWN" if guest && reason == "guest-reset" => EngineEvent::Reboot,
                "SHUTDOWN" if guest && reason == "guest-panic" => {
                    EngineEvent::Crash("guest panic".into())
                }
                "SHUTDOWN" if guest => EngineEvent::Poweroff,
                "RESET" if guest => EngineEvent::Reset,
                "GUEST_PANICKED" => EngineEvent::Crash("guest panic".into()),
                "STOP" => EngineEvent::Paused,
                "RESUME" => EngineEvent::Resumed,
                _ => continue,
            };
            if events.send(translated).is_err() {
                break;
            }
        }
    });
    Ok(qmp)
}

pub async fn guest_memory(qmp: &Qmp) -> Result<GuestMemory, Error> {
    let balloon = qmp
        .execute("query-balloon", json!({}))
        .await
        .map_err(|err| Error::Engine(format!("QEMU query-balloon: {err}")))?;
    Ok(GuestMemory {
        actual_kib: balloon
            .get("actual")
            .and_then(Value::as_u64)
            .map(|b| b / 1024),
        ..Default::default()
    })
}

pub async fn disk_counters(qmp: &Qmp) -> Result<Vec<(String, DiskCounters)>, Error> {
    let stats = qmp
        .execute("query-blockstats", json!({}))
        .await
        .map_err(|err| Error::Engine(format!("QEMU query-blockstats: {err}")))?;
    Ok(stats
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let device = entry.get("device").and_then(Value::as_str)?;
            let target = device.strip_prefix("drive-").unwrap_or(device).to_string();
            let s = entry.get("stats")?;
            let n = |name: &str| s.get(name).and_then(Value::as_i64).unwrap_or(0);
            Some((
                target,
                DiskCounters {
                    rd_req: n("rd_operations"),
                    rd_bytes: n("rd_bytes"),
                    wr_req: n("wr_operations"),
                    wr_bytes: n("wr_bytes"),
                    flush_req: n("flush_operations"),
                },
            ))
        })
        .collect())
}

/// A device change on a running QEMU guest.
#[derive(Debug, Clone)]
pub enum Hotplug {
    AddDisk(Box<pb::Disk>),
    /// By target name (vdb).
    RemoveDisk(String),
    AddInterface(Box<pb::Interface>),
    /// By MAC address.
    RemoveInterface(String),
    AddHostdev(Box<pb::Hostdev>),
    /// By host PCI address.
    RemoveHostdev(pb::PciAddress),
}

/// Plugs a virtio disk in (blockdev-add, device_add) or out (device_del, wait for the guest to
/// let go, blockdev-del). Only virtio disks hotplug on QEMU's PCI bus.
pub async fn hotplug(qmp: &Qmp, change: &Hotplug) -> Result<(), Error> {
    let run = |command: &'static str, arguments: Value| async move {
        qmp.execute(command, arguments)
            .await
            .map_err(|err| Error::Engine(format!("QEMU {command}: {err}")))
    };
    match change {
        Hotplug::AddDisk(disk) => {
            let target = disk.target.clone().unwrap_or_default();
            if target.bus() != pb::DiskBus::Virtio || disk.device != pb::DiskDevice::Disk as i32 {
                return Err(unsupported(
                    "qemu",
                    &format!(
                        "disk {}: live attach of anything but a virtio disk",
                        target.dev
                    ),
                ));
            }
            let path = disk_source(disk).ok_or_else(|| {
                unsupported(
                    "qemu",
                    &format!("disk {}: an unresolved volume source", target.dev),
                )
            })?;
            let format = match disk.driver.as_ref().map(|d| d.r#type()) {
                Some(pb::DiskFormat::Qcow2) => "qcow2",
                _ => "raw",
            };
            let protocol = if disk.source.as_ref().is_some_and(|s| !s.dev.is_empty()) {
                "host_device"
            } else {
                "file"
            };
            let node = format!("drive-{}", target.dev);
            run(
                "blockdev-add",
                json!({
                    "node-name": node,
                    "driver": format,
                    "read-only": disk.readonly,
                    "file": { "driver": protocol, "filename": path },
                }),
            )
            .await?;
            let mut device = json!({ "driver": "virtio-blk-pci", "drive": node, "id": target.dev });
            if !disk.serial.is_empty() {
                device["serial"] = json!(disk.serial);
            }
            if let Err(err) = run("device_add", device).await {
                let _ = run("blockdev-del", json!({ "node-name": node })).await;
                return Err(err);
            }
            Ok(())
        }
        Hotplug::AddInterface(_)
        | Hotplug::RemoveInterface(_)
        | Hotplug::AddHostdev(_)
        | Hotplug::RemoveHostdev(_) => Err(Error::Engine(
            "interfaces and host devices have their own plug and unplug".into(),
        )),
        Hotplug::RemoveDisk(target) => {
            unplug(qmp, target, "disk").await?;
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            // The device lets go of its drive a moment after it leaves the QOM tree.
            let node = format!("drive-{target}");
            loop {
                match run("blockdev-del", json!({ "node-name": node })).await {
                    Ok(_) => return Ok(()),
                    Err(_) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    Err(err) => return Err(err),
                }
            }
        }
    }
}

/// Writes a paused guest's whole state to `file`: QEMU migrates into a unix socket the service
/// listens on, and the service copies the stream into the file.
pub async fn save_to(qmp: &Qmp, socket: &Path, file: &Path) -> Result<u64, Error> {
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)
        .map_err(|err| Error::Engine(format!("save socket {}: {err}", socket.display())))?;
    let mut out = tokio::fs::File::create(file)
        .await
        .map_err(|err| Error::State(format!("cannot write {}: {err}", file.display())))?;
    let copy = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        let copied = tokio::io::copy(&mut stream, &mut out).await?;
        tokio::io::AsyncWriteExt::flush(&mut out).await?;
        out.sync_all().await?;
        Ok::<u64, std::io::Error>(copied)
    });
    let run = |command: &'static str, arguments: Value| async move {
        qmp.execute(command, arguments)
            .await
            .map_err(|err| Error::Engine(format!("QEMU {command}: {err}")))
    };
    run("stop", json!({})).await?;
    let uri = format!("unix:{}", socket.display());
    if let Err(err) = run("migrate", json!({ "uri": uri })).await {
        copy.abort();
        let _ = run("cont", json!({})).await;
        return Err(err);
    }
    loop {
        let status = run("query-migrate", json!({})).await?;
        match status.get("status").and_then(Value::as_str) {
            Some("completed") => break,
            Some("failed" | "cancelled") => {
                copy.abort();
                let _ = run("cont", json!({})).await;
                return Err(Error::Engine(format!(
                    "QEMU could not write its state: {}",
                    status
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("migration failed")
                )));
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    let copied = copy
        .await
        .map_err(|err| Error::Engine(format!("save copy: {err}")))?
        .map_err(|err| Error::State(format!("writing {}: {err}", file.display())))?;
    let _ = std::fs::remove_file(socket);
    Ok(copied)
}

/// Feeds a saved state into a QEMU started with `-incoming unix:SOCKET` and waits until it has
/// taken it (the guest is then paused, as -S leaves it).
pub async fn feed_incoming(qmp: &Qmp, socket: &Path, file: &Path) -> Result<(), Error> {
    let mut input = tokio::fs::File::open(file)
        .await
        .map_err(|err| Error::State(format!("cannot read {}: {err}", file.display())))?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut stream = loop {
        match tokio::net::UnixStream::connect(socket).await {
            Ok(stream) => break stream,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(err) => {
                return Err(Error::Engine(format!(
                    "QEMU incoming socket {}: {err}",
                    socket.display()
                )));
            }
        }
    };
    tokio::io::copy(&mut input, &mut stream)
        .await
        .map_err(|err| Error::Engine(format!("feeding the saved state to QEMU: {err}")))?;
    drop(stream);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let status = qmp
            .execute("query-status", json!({}))
            .await
            .map_err(|err| Error::Engine(format!("QEMU query-status: {err}")))?;
        match status.get("status").and_then(Value::as_str) {
            Some("inmigrate") if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Some("paused" | "prelaunch" | "running") => return Ok(()),
            other => {
                return Err(Error::Engine(format!(
                    "QEMU did not take the saved state (status {})",
                    other.unwrap_or("unknown")
                )));
            }
        }
    }
}

/// Plugs vCPUs in or out until `count` are present (QEMU's CPU hotplug; the guest brings new
/// ones online, and must release ones being removed). Only hot-plugged vCPUs can leave.
pub async fn set_vcpus(qmp: &Qmp, count: u32) -> Result<(), Error> {
    let query = || async {
        qmp.execute("query-hotpluggable-cpus", json!({}))
            .await
            .map_err(|err| Error::Engine(format!("QEMU query-hotpluggable-cpus: {err}")))
    };
    let slots = query().await?;
    let slots = slots.as_array().cloned().unwrap_or_default();
    let present: Vec<&Value> = slots
        .iter()
        .filter(|s| s.get("qom-path").is_some())
        .collect();
    let wanted = usize::try_from(count).unwrap_or(usize::MAX);
    if wanted > present.len() {
        // QEMU lists free slots last-first; plug the lowest ones.
        let mut free: Vec<&Value> = slots
            .iter()
            .filter(|s| s.get("qom-path").is_none())
            .collect();
        free.reverse();
        for slot in free.into_iter().take(wanted - present.len()) {
            let props = slot.get("props").cloned().unwrap_or(json!({}));
            let id = |key: &str| props.get(key).and_then(Value::as_u64).unwrap_or(0);
            let mut device = json!({
                "driver": slot.get("type").cloned().unwrap_or(Value::Null),
                "id": format!("vcpu-{}-{}-{}", id("socket-id"), id("core-id"), id("thread-id")),
            });
            for (key, value) in props.as_object().into_iter().flatten() {
                device[key] = value.clone();
            }
            qmp.execute("device_add", device)
                .await
                .map_err(|err| Error::Engine(format!("QEMU device_add (vCPU): {err}")))?;
        }
        return Ok(());
    }
    let mut removable: Vec<String> = present
        .iter()
        .filter_map(|s| s.get("qom-path")?.as_str())
        .filter_map(|path| path.strip_prefix("/machine/peripheral/"))
        .map(str::to_string)
        .collect();
    removable.sort();
    let surplus = present.len() - wanted;
    if removable.len() < surplus {
        return Err(Error::State(format!(
            "only vCPUs added while running can be removed ({} of them); the guest booted with {}",
            removable.len(),
            present.len() - removable.len()
        )));
    }
    for id in removable.iter().rev().take(surplus) {
        qmp.execute("device_del", json!({ "id": id }))
            .await
            .map_err(|err| Error::Engine(format!("QEMU device_del {id}: {err}")))?;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let slots = query().await?;
        let now = slots
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s.get("qom-path").is_some())
            .count();
        if now <= wanted {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::State(
                "the guest did not release the vCPUs within 10 s (it must act on the ACPI eject)"
                    .into(),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The properties of QEMU's vfio-pci device for the host PCI device at sysfs `path`: named by
/// `host=` address in the host's own sysfs (as libvirt passes it), by `sysfsdev=` path under any
/// other sysfs root.
fn vfio_pci_properties(
    hostdev: &pb::Hostdev,
    path: &Path,
    id: &str,
) -> Result<Vec<(&'static str, Value)>, Error> {
    let Some(pb::hostdev::Source::Pci(pci)) = &hostdev.source else {
        return Err(unsupported("qemu", "USB or SCSI host devices yet"));
    };
    let mut properties = vec![("driver", json!("vfio-pci"))];
    if path.starts_with("/sys/") {
        properties.push(("host", json!(crate::core::hostdev::host_address(pci))));
    } else {
        properties.push(("sysfsdev", json!(path.display().to_string())));
    }
    properties.push(("id", json!(id)));
    if let Some(order) = hostdev.boot_order {
        properties.push(("bootindex", json!(order)));
    }
    if let Some(bar) = hostdev.rom_bar {
        properties.push(("rombar", json!(u32::from(bar))));
    }
    if !hostdev.rom_file.is_empty() {
        properties.push(("romfile", json!(hostdev.rom_file)));
    }
    Ok(properties)
}

/// The `-device` argument of a host PCI device.
fn vfio_pci_device(hostdev: &pb::Hostdev, path: &Path, id: &str) -> Result<String, Error> {
    let properties = vfio_pci_properties(hostdev, path, id)?;
    let parts: Vec<String> = properties
        .into_iter()
        .map(|(key, value)| match (key, value) {
            ("driver", Value::String(driver)) => driver,
            (key, Value::String(text)) => format!("{key}={}", opt(&text)),
            (key, other) => format!("{key}={other}"),
        })
        .collect();
    Ok(parts.join(","))
}

/// Plugs a host PCI device in (device_add vfio-pci); QEMU opens its VFIO group itself.
pub async fn plug_hostdev(qmp: &Qmp, hostdev: &pb::Hostdev, path: &Path) -> Result<(), Error> {
    let properties = vfio_pci_properties(hostdev, path, &hostdev.alias)?;
    let arguments: serde_json::Map<String, Value> = properties
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect();
    qmp.execute("device_add", Value::Object(arguments))
        .await
        .map_err(|err| Error::Engine(format!("QEMU device_add (hostdev): {err}")))?;
    Ok(())
}

/// Unplugs the host device with this alias once the guest lets go of it.
pub async fn unplug_hostdev(qmp: &Qmp, alias: &str) -> Result<(), Error> {
    unplug(qmp, alias, "host device").await
}

/// Plugs a NIC in: its host end (`tap`, or user networking) as a netdev, then the device; both
/// take the interface's alias as id.
pub async fn plug_interface(qmp: &Qmp, interface: &pb::Interface, tap: &str) -> Result<(), Error> {
    let netdev = match interface.r#type() {
        pb::InterfaceType::User => json!({ "type": "user", "id": interface.alias }),
        pb::InterfaceType::Bridge | pb::InterfaceType::Ethernet => json!({
            "type": "tap", "id": interface.alias, "ifname": tap,
            "script": "no", "downscript": "no",
        }),
        _ => {
            return Err(unsupported(
                "qemu",
                "live attach of this interface type yet (bridge, ethernet and user are)",
            ));
        }
    };
    qmp.execute("netdev_add", netdev)
        .await
        .map_err(|err| Error::Engine(format!("QEMU netdev_add: {err}")))?;
    let device = json!({
        "driver": nic_model(interface.model()),
        "netdev": interface.alias,
        "mac": interface.mac,
        "id": interface.alias,
    });
    if let Err(err) = qmp.execute("device_add", device).await {
        let _ = qmp
            .execute("netdev_del", json!({ "id": interface.alias }))
            .await;
        return Err(Error::Engine(format!("QEMU device_add (NIC): {err}")));
    }
    Ok(())
}

/// Asks the guest to release device `id` (device_del) and waits until it has left QEMU's device
/// tree; the guest must act on the ACPI eject request.
async fn unplug(qmp: &Qmp, id: &str, what: &str) -> Result<(), Error> {
    qmp.execute("device_del", json!({ "id": id }))
        .await
        .map_err(|err| Error::Engine(format!("QEMU device_del {id}: {err}")))?;
    let path = format!("/machine/peripheral/{id}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while qmp
        .execute("qom-get", json!({ "path": path, "property": "type" }))
        .await
        .is_ok()
    {
        if tokio::time::Instant::now() > deadline {
            return Err(Error::State(format!(
                "the guest did not release {what} {id} within 10 s (it must act on the ACPI eject request)"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Unplugs the NIC with this alias once the guest lets go of it, then its netdev.
pub async fn unplug_interface(qmp: &Qmp, alias: &str) -> Result<(), Error> {
    unplug(qmp, alias, "interface").await?;
    qmp.execute("netdev_del", json!({ "id": alias }))
        .await
        .map_err(|err| Error::Engine(format!("QEMU netdev_del {alias}: {err}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_pci_device_is_named_by_address_in_the_hosts_sysfs_and_by_path_under_another_root() {
        let hostdev = pb::Hostdev {
            r#type: pb::HostdevType::Pci as i32,
            source: Some(pb::hostdev::Source::Pci(pb::PciAddress {
                domain: 0,
                bus: 3,
                slot: 0x10,
                function: 1,
                ..Default::default()
            })),
            boot_order: Some(2),
            ..Default::default()
        };
        let real = Path::new("/sys/devices/pci0000:00/0000:03:10.1");
        assert_eq!(
            vfio_pci_device(&hostdev, real, "hostdev0").unwrap(),
            "vfio-pci,host=0000:03:10.1,id=hostdev0,bootindex=2"
        );
        let with_rom = pb::Hostdev {
            rom_bar: Some(false),
            rom_file: "/srv/roms/nic.rom".into(),
            ..hostdev.clone()
        };
        assert_eq!(
            vfio_pci_device(&with_rom, real, "hostdev0").unwrap(),
            "vfio-pci,host=0000:03:10.1,id=hostdev0,bootindex=2,rombar=0,romfile=/srv/roms/nic.rom"
        );
        let tree = Path::new("/tmp/tree,x/devices/pci0000:00/0000:03:10.1");
        assert_eq!(
            vfio_pci_device(&hostdev, tree, "hostdev1").unwrap(),
            "vfio-pci,sysfsdev=/tmp/tree,,x/devices/pci0000:00/0000:03:10.1,id=hostdev1,bootindex=2"
        );
        let usb = pb::Hostdev {
            source: Some(pb::hostdev::Source::Usb(pb::HostdevUsbSource::default())),
            ..Default::default()
        };
        assert!(vfio_pci_device(&usb, real, "hostdev2").is_err());
    }
}
