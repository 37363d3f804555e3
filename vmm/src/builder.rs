//! Builds a VM from a `VmConfig` and runs its event loop until the guest powers off, reboots,
//! crashes, or is stopped.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use serde_json::json;
use vm_memory::GuestMemoryMmap;

use crate::arch::{acpi, boot, regs};
use crate::config::VmConfig;
use crate::control::{self, Request};
use crate::devices::acpi_pm::{ACPI_PM_PORT_COUNT, AcpiPm, PM1A_EVT_PORT, SCI_IRQ};
use crate::devices::bus::PioBus;
use crate::devices::i8042::{I8042, I8042_DATA_PORT, I8042_PORT_COUNT};
use crate::devices::pci::{CONFIG_ADDRESS_PORT, CONFIG_PORT_COUNT, PciBus, PciConfigIo};
use crate::devices::rtc::{RTC_PORT, RTC_PORT_COUNT, Rtc};
use crate::devices::serial::{self, COM1_IRQ, COM1_PORT, COM1_PORT_COUNT, SerialInfo};
use crate::devices::vfio::{self, VfioPciDevice};
use crate::devices::virtio::VirtioDevice;
use crate::devices::virtio::balloon::Balloon;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::pci::{IoEventBinder, MsiSender, VirtioPci};
use crate::devices::virtio::rng::Rng;
use crate::devices::{Devices, GuestRequest};
use crate::snapshot;
use crate::vstate::msi::MsiRoutes;
use crate::vstate::vcpu::{self, RunControl, RunState, VcpuThread};
use crate::vstate::vm::Vm;
use crate::vstate::{VmEvent, memory};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Vm(#[from] crate::vstate::vm::VmError),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    Serial(#[from] serial::SerialError),
    #[error(transparent)]
    Disk(#[from] crate::devices::virtio::block::BlockError),
    #[error(transparent)]
    Net(#[from] crate::devices::virtio::net::NetError),
    #[error(transparent)]
    Console(#[from] crate::devices::virtio::console::ConsoleError),
    #[error(transparent)]
    Pci(#[from] crate::devices::pci::PciError),
    #[error(transparent)]
    Vfio(#[from] crate::devices::vfio::VfioSetupError),
    #[error("control socket {path}: {source}")]
    Control {
        path: String,
        source: std::io::Error,
    },
    #[error("starting vCPU threads: {0}")]
    Threads(std::io::Error),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
}

/// How the VM ended; the process exit status tells them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (ACPI S5): exit status 0.
    Poweroff,
    /// The guest reset itself, or a reset was requested: exit status 3.
    Reboot(String),
    /// Triple fault, KVM internal error, failed entry: exit status 4.
    Crash(String),
    /// Stopped through the control socket: exit status 5.
    Stopped,
    /// Saved to a snapshot through the control socket, then stopped: exit status 6.
    Saved,
}

impl VmExit {
    pub fn exit_code(&self) -> u8 {
        match self {
            VmExit::Poweroff => 0,
            VmExit::Reboot(_) => 3,
            VmExit::Crash(_) => 4,
            VmExit::Stopped => 5,
            VmExit::Saved => 6,
        }
    }

    fn event(&self) -> String {
        match self {
            VmExit::Poweroff => control::event_line("poweroff", None),
            VmExit::Reboot(reason) => control::event_line("reboot", Some(reason)),
            VmExit::Crash(reason) => control::event_line("crash", Some(reason)),
            VmExit::Stopped => control::event_line("stopped", None),
            VmExit::Saved => control::event_line("saved", None),
        }
    }
}

/// A built, running VM.
pub struct Vmm {
    vm: Arc<Vm>,
    memory: GuestMemoryMmap,
    serial_port: Arc<Mutex<serial::SerialPort>>,
    rtc: Arc<Mutex<Rtc>>,
    /// The virtio transports, in PCI slot order, for save.
    virtio: Vec<SharedVirtio>,
    /// The irqfd routes of the guest's MSI messages (their count shows in `info`).
    msi_routes: Arc<MsiRoutes>,
    /// The configured devices, which a restore recreates.
    machine: snapshot::MachineDevices,
    /// The CRC32 of guest memory as loaded from a snapshot, checked against the file.
    restored_memory_crc32: Option<u32>,
    /// KVM logs the pages the guest writes (since the first `dirty-pages` request).
    dirty_logging: bool,
    /// The answer to the last `dirty-pages` request, for its reply.
    dirty_reply: Option<Vec<u64>>,
    /// The CRC32 of guest memory as written by `save`.
    saved_memory_crc32: Option<u32>,
    vcpus: Vec<VcpuThread>,
    run_control: Arc<RunControl>,
    power: Arc<Mutex<AcpiPm>>,
    events: Receiver<VmEvent>,
    _events_sender: Sender<VmEvent>,
    watchers: Vec<Sender<String>>,
    serial: SerialInfo,
    memory_mib: u64,
    /// Host devices assigned through VFIO: their state lives in hardware, so no snapshot.
    assigned_devices: usize,
}

/// A virtio device's transport, shared by the PCI bus and the snapshot code.
type SharedVirtio = Arc<Mutex<VirtioPci>>;

/// The PCI bus with the configured virtio devices; their interrupts are MSI messages through KVM.
fn build_pci(
    config: &VmConfig,
    vm: &Arc<Vm>,
    memory: &GuestMemoryMmap,
) -> Result<(PciBus, Vec<SharedVirtio>, Arc<MsiRoutes>), BuildError> {
    let routes = Arc::new(MsiRoutes::new(vm.clone()));
    let sender = routes.clone();
    let msi: MsiSender = Arc::new(move |address, data| sender.send(address, data));
    let ioevent_vm = vm.clone();
    let binder: IoEventBinder = Arc::new(move |event, address, bind| {
        let address = kvm_ioctls::IoEventAddress::Mmio(address);
        if bind {
            ioevent_vm
                .fd
                .register_ioevent(event, &address, kvm_ioctls::NoDatamatch)
                .is_ok()
        } else {
            ioevent_vm
                .fd
                .unregister_ioevent(event, &address, kvm_ioctls::NoDatamatch)
                .is_ok()
        }
    });
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    if config.rng {
        devices.push(Box::new(Rng::default()));
    }
    for disk in &config.disks {
        devices.push(Box::new(Block::open(
            &disk.path,
            disk.format,
            disk.read_only,
            &disk.serial,
        )?));
    }
    // A device with its own input thread (a tap's frames, a console client's keys) kicks its
    // receive queue 0 through its transport, once that exists.
    let mut readers = Vec::new();
    let mut receive_kick = |at: usize| -> Arc<dyn Fn() + Send + Sync> {
        let cell: Arc<OnceLock<Weak<Mutex<VirtioPci>>>> = Arc::default();
        readers.push((at, cell.clone()));
        Arc::new(move || {
            if let Some(transport) = cell.get().and_then(Weak::upgrade)
                && let Ok(mut transport) = transport.lock()
            {
                transport.queue_event(0);
            }
        })
    };
    for net in &config.nets {
        let device = Net::open(&net.tap, net.mac)?;
        device
            .start_reader(receive_kick(devices.len()))
            .map_err(BuildError::Threads)?;
        devices.push(Box::new(device));
    }
    if config.balloon {
        devices.push(Box::new(Balloon::default()));
    }
    if let Some(target) = &config.console {
        let mut device = Console::open(target)?;
        device
            .start_input(receive_kick(devices.len()))
            .map_err(BuildError::Threads)?;
        devices.push(Box::new(device));
    }
    let mut pci = PciBus::new();
    let mut transports = Vec::new();
    for (index, device) in devices.into_iter().enumerate() {
        let transport = Arc::new(Mutex::new(VirtioPci::new(
            device,
            memory.clone(),
            msi.clone(),
        )));
        if let Some((_, cell)) = readers.iter().find(|(at, _)| *at == index) {
            let _ = cell.set(Arc::downgrade(&transport));
        }
        pci.add(transport.clone())?;
        VirtioPci::start_notifier(&transport, binder.clone()).map_err(BuildError::Threads)?;
        transports.push(transport);
    }
    if let Some(first) = config.vfio.first() {
        let container = vfio::open_container(vm, first)?;
        for (index, path) in config.vfio.iter().enumerate() {
            let first_slot = VfioPciDevice::first_slot(u32::try_from(index).unwrap_or(0));
            let device = VfioPciDevice::open(path, &container, vm, &routes, first_slot)?;
            let device = Arc::new(Mutex::new(device));
            pci.add(device.clone())?;
            if let Ok(mut device) = device.lock() {
                device.map_bars()?;
            }
        }
        vfio::map_guest_memory(&container, memory, first)?;
    }
    Ok((pci, transports, routes))
}

/// How the guest starts: from its kernel, or where a snapshot left it.
pub enum Start {
    Boot,
    Restore(Box<snapshot::SnapshotReader>),
}

/// Builds the VM and starts its vCPUs.
pub fn build(config: &VmConfig, start: Start) -> Result<Vmm, BuildError> {
    if matches!(start, Start::Boot) {
        config.check_files()?;
    }
    let vm = Arc::new(Vm::new(&config.kvm_device)?);
    let guest_memory = memory::create(config.memory_bytes(), config.memory)?;
    vm.register_memory(&guest_memory)?;
    vm.create_irqchip_and_pit()?;
    let (boot_info, restored) = match start {
        Start::Boot => {
            let boot_info = boot::load(
                &guest_memory,
                config.memory_bytes(),
                &config.kernel,
                config.initrd.as_deref(),
                &config.cmdline,
            )?;
            regs::write_boot_tables(&guest_memory)?;
            acpi::write_tables(&guest_memory, config.vcpus)?;
            (boot_info, None)
        }
        Start::Restore(reader) => {
            let (header, memory_crc) = reader.load_memory(&guest_memory)?;
            vm.restore_state(&header.vm)?;
            (
                boot::BootInfo {
                    entry: 0,
                    zero_page: 0,
                },
                Some((header, memory_crc)),
            )
        }
    };
    let supported = vcpu::supported_cpuid(&vm)?;
    let vcpu_fds = (0..config.vcpus)
        .map(|id| vcpu::create(&vm, id, config.vcpus, boot_info, &supported))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some((header, _)) = &restored {
        for (fd, state) in vcpu_fds.iter().zip(&header.vcpus) {
            vcpu::restore_state(fd, state)?;
        }
    }
    let device_states = restored.as_ref().map(|(header, _)| &header.devices);

    let (sender, events) = mpsc::channel();
    let mut bus = PioBus::default();
    let (serial_port, serial_interrupt, serial_info) =
        serial::build(&config.serial, device_states.map(|states| &states.serial))?;
    vm.register_irqfd(&serial_interrupt, COM1_IRQ)?;
    // The eventfd must outlive the VM's use of it; KVM holds its own reference once registered.
    std::mem::forget(serial_interrupt);
    let serial_port = Arc::new(Mutex::new(serial_port));
    bus.insert(COM1_PORT, COM1_PORT_COUNT, serial_port.clone());
    bus.insert(
        I8042_DATA_PORT,
        I8042_PORT_COUNT,
        Arc::new(Mutex::new(I8042::new(sender.clone()))),
    );
    let rtc = Arc::new(Mutex::new(
        device_states.map_or_else(Rtc::default, |states| Rtc::from_state(&states.rtc)),
    ));
    bus.insert(RTC_PORT, RTC_PORT_COUNT, rtc.clone());
    let sci_vm = vm.clone();
    let sci: crate::devices::acpi_pm::IrqLine = Box::new(move |level| {
        let _ = sci_vm.fd.set_irq_line(u32::from(SCI_IRQ), level);
    });
    let mut acpi_pm = AcpiPm::new(sci, sender.clone());
    if let Some(states) = device_states {
        acpi_pm.restore(states.acpi_pm);
    }
    let power = Arc::new(Mutex::new(acpi_pm));
    bus.insert(PM1A_EVT_PORT, ACPI_PM_PORT_COUNT, power.clone());
    let (pci, virtio, msi_routes) = build_pci(config, &vm, &guest_memory)?;
    if let Some(states) = device_states {
        for (transport, state) in virtio.iter().zip(&states.virtio) {
            if let Ok(mut transport) = transport.lock() {
                transport.restore(state);
            }
        }
    }
    let pci = Arc::new(pci);
    bus.insert(
        CONFIG_ADDRESS_PORT,
        CONFIG_PORT_COUNT,
        Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
    );
    let devices = Arc::new(Devices { pio: bus, pci });

    if let Some(path) = &config.control_socket {
        control::serve(path, sender.clone()).map_err(|source| BuildError::Control {
            path: path.display().to_string(),
            source,
        })?;
    }

    vcpu::install_kick_handler().map_err(BuildError::Threads)?;
    let run_control = Arc::new(RunControl::default());
    let mut vcpus = Vec::new();
    for (id, fd) in (0..config.vcpus).zip(vcpu_fds) {
        let thread = vcpu::spawn(
            id,
            Arc::new(Mutex::new(fd)),
            devices.clone(),
            run_control.clone(),
            sender.clone(),
        )
        .map_err(BuildError::Threads)?;
        vcpus.push(thread);
    }
    Ok(Vmm {
        vm,
        memory: guest_memory,
        vcpus,
        run_control,
        power,
        serial_port,
        rtc,
        virtio,
        machine: snapshot::MachineDevices {
            rng: config.rng,
            disks: config.disks.clone(),
            nets: config.nets.clone(),
            balloon: config.balloon,
            console: config.console.clone(),
        },
        restored_memory_crc32: restored.map(|(_, crc)| crc),
        dirty_logging: false,
        dirty_reply: None,
        msi_routes,
        saved_memory_crc32: None,
        events,
        _events_sender: sender,
        watchers: Vec::new(),
        serial: serial_info,
        memory_mib: config.memory_mib,
        assigned_devices: config.vfio.len(),
    })
}

impl Vmm {
    pub fn serial(&self) -> &SerialInfo {
        &self.serial
    }

    fn notify(&mut self, line: &str) {
        self.watchers
            .retain(|watcher| watcher.send(line.to_string()).is_ok());
    }

    fn info(&self) -> serde_json::Value {
        let state = match self.run_control.state() {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Stopping => "stopping",
        };
        let vcpus: Vec<_> = self
            .vcpus
            .iter()
            .map(|vcpu| json!({ "id": vcpu.id, "cpu_time_ns": vcpu.cpu_time_ns() }))
            .collect();
        json!({
            "state": state,
            "pid": std::process::id(),
            "memory_mib": self.memory_mib,
            "vcpus": vcpus,
            "pty": self.serial.pty.as_ref().map(|path| path.display().to_string()),
            "restored_memory_crc32": self.restored_memory_crc32,
            "msi_routes": self.msi_routes.count(),
            "saved_memory_crc32": self.saved_memory_crc32,
            "devices": self.virtio.iter().filter_map(|transport| transport.lock().ok().map(|t| t.describe())).collect::<Vec<_>>(),
        })
    }

    fn control(&mut self, request: Request) -> Result<Option<VmExit>, String> {
        match request {
            Request::Info => {
                // The balloon's figures in this reply are the last the guest sent; this asks for
                // the next ones.
                for transport in &self.virtio {
                    if let Ok(mut transport) = transport.lock() {
                        transport.request_balloon_stats();
                    }
                }
                Ok(None)
            }
            Request::Watch(_) => Ok(None),
            Request::Pause => {
                if !vcpu::transition(&self.run_control, &self.vcpus, RunState::Paused) {
                    return Err("vCPUs did not pause in time".into());
                }
                self.notify(&control::event_line("paused", None));
                Ok(None)
            }
            Request::Resume => {
                vcpu::transition(&self.run_control, &self.vcpus, RunState::Running);
                self.notify(&control::event_line("resumed", None));
                Ok(None)
            }
            Request::Shutdown => {
                self.power
                    .lock()
                    .map_err(|_| "power device unavailable".to_string())?
                    .press_power_button();
                self.notify(&control::event_line("shutdown-requested", None));
                Ok(None)
            }
            Request::Reset => Ok(Some(VmExit::Reboot("reset requested".into()))),
            Request::Save(path) => self.save(&path).map(|_| Some(VmExit::Saved)),
            Request::Balloon(target_mib) => self.set_balloon(target_mib).map(|()| None),
            Request::Stop => Ok(Some(VmExit::Stopped)),
            Request::DirtyPages => {
                let pages = if self.dirty_logging {
                    self.vm.dirty_pages(&self.memory)
                } else {
                    self.vm
                        .set_dirty_logging(&self.memory, true)
                        .map(|()| Vec::new())
                };
                self.dirty_logging = true;
                self.dirty_reply = Some(pages.map_err(|err| err.to_string())?);
                Ok(None)
            }
        }
    }

    /// Asks the balloon to leave the guest `target_mib`: it gives back the rest.
    fn set_balloon(&mut self, target_mib: u64) -> Result<(), String> {
        if target_mib > self.memory_mib {
            return Err(format!(
                "target_mib {target_mib}: more than the guest's {} MiB",
                self.memory_mib
            ));
        }
        let pages = u32::try_from((self.memory_mib - target_mib) << 8)
            .map_err(|_| format!("target_mib {target_mib}: too large a balloon"))?;
        for transport in &self.virtio {
            if transport
                .lock()
                .map_err(|_| "virtio lock poisoned")?
                .set_balloon_target(pages)
            {
                return Ok(());
            }
        }
        Err("this VM has no balloon device (--balloon)".into())
    }

    /// Pauses the vCPUs and writes the whole VM to `path`. On failure the vCPUs resume and the
    /// guest goes on as if nothing happened.
    fn save(&mut self, path: &std::path::Path) -> Result<u32, String> {
        if self.assigned_devices > 0 {
            return Err(
                "a VM with assigned host devices (--vfio) cannot be saved: their state is in the hardware"
                    .into(),
            );
        }
        if !vcpu::transition(&self.run_control, &self.vcpus, RunState::Paused) {
            return Err("vCPUs did not pause in time".into());
        }
        let saved = self.write_snapshot(path);
        match &saved {
            Ok(crc) => self.saved_memory_crc32 = Some(*crc),
            Err(_) => {
                vcpu::transition(&self.run_control, &self.vcpus, RunState::Running);
            }
        }
        saved
    }

    fn write_snapshot(&self, path: &std::path::Path) -> Result<u32, String> {
        // The devices stay locked until memory is written: a notifier or tap reader thread
        // must not move a queue between its saved position and the saved memory.
        let transports = self
            .virtio
            .iter()
            .map(|transport| transport.lock())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "virtio device lock poisoned")?;
        let msr_indices = self.vm.msr_indices().map_err(|err| err.to_string())?;
        let mut vcpu_states = Vec::new();
        for thread in &self.vcpus {
            let fd = thread
                .fd
                .lock()
                .map_err(|_| "vCPU lock poisoned".to_string())?;
            vcpu_states.push(
                vcpu::save_state(&fd, &msr_indices)
                    .map_err(|err| format!("vCPU {}: {err}", thread.id))?,
            );
        }
        let header = snapshot::SnapshotHeader {
            vcpu_count: u8::try_from(self.vcpus.len()).unwrap_or(u8::MAX),
            memory_mib: self.memory_mib,
            machine: self.machine.clone(),
            vcpus: vcpu_states,
            vm: self.vm.save_state().map_err(|err| err.to_string())?,
            devices: snapshot::DeviceStates {
                serial: self
                    .serial_port
                    .lock()
                    .map_err(|_| "serial lock poisoned")?
                    .state(),
                rtc: self.rtc.lock().map_err(|_| "rtc lock poisoned")?.state(),
                acpi_pm: self
                    .power
                    .lock()
                    .map_err(|_| "power lock poisoned")?
                    .state(),
                virtio: transports
                    .iter()
                    .map(|transport| transport.state())
                    .collect(),
            },
        };
        let memory_crc =
            snapshot::write(path, &header, &self.memory).map_err(|err| err.to_string())?;
        Ok(memory_crc)
    }

    /// Runs until the VM ends; stops the vCPUs and tells watchers how it ended.
    pub fn run(mut self) -> VmExit {
        let mut unread: Vec<std::sync::mpsc::Sender<control::Reply>> = Vec::new();
        let exit = loop {
            let Ok(event) = self.events.recv() else {
                break VmExit::Crash("event channel closed".into());
            };
            match event {
                VmEvent::Guest(GuestRequest::Poweroff) => break VmExit::Poweroff,
                VmEvent::Guest(GuestRequest::Reset) => break VmExit::Reboot("guest reset".into()),
                VmEvent::Crash { vcpu, reason } => {
                    break VmExit::Crash(format!("vCPU {vcpu}: {reason}"));
                }
                VmEvent::Control(request, reply) => {
                    let watch = match &request {
                        Request::Watch(sender) => Some(sender.clone()),
                        _ => None,
                    };
                    let outcome = self.control(request);
                    if let Some(watcher) = watch {
                        self.watchers.push(watcher);
                    }
                    let dirty = self.dirty_reply.take();
                    let _ = reply.send(
                        outcome
                            .as_ref()
                            .map(|_| {
                                let mut info = self.info();
                                if let Some(pages) = dirty {
                                    info["dirty_pages"] = json!(pages);
                                }
                                info
                            })
                            .map_err(Clone::clone),
                    );
                    unread.retain(|reply| reply.send(Err(String::new())).is_ok());
                    unread.push(reply);
                    if let Ok(Some(exit)) = outcome {
                        break exit;
                    }
                }
            }
        };
        // Let clients read their answers first (a `shutdown` answered just before the guest
        // powers off, a `stop`): each socket thread drops its end of the channel once the
        // reply is written. Bounded, never blocking.
        let asked = std::time::Instant::now();
        while asked.elapsed() < std::time::Duration::from_millis(200) {
            unread.retain(|reply| reply.send(Err(String::new())).is_ok());
            if unread.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        vcpu::transition(&self.run_control, &self.vcpus, RunState::Stopping);
        let line = exit.event();
        self.notify(&line);
        self.vm.defer_teardown();
        exit
    }
}
