//! Builds a VM from a `VmConfig` and runs its event loop until the guest powers off, reboots,
//! crashes, or is stopped.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::vstate::memory::GuestRam;
use serde_json::json;

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
use crate::migration;
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
    memory: GuestRam,
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
    /// The last migration to another host, running or ended.
    outgoing: Option<Arc<migration::Outgoing>>,
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
    memory: &GuestRam,
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

/// How the guest starts: from its kernel, where a snapshot left it, or where it was on the
/// host it migrated from.
pub enum Start {
    Boot,
    Restore(Box<snapshot::SnapshotReader>),
    Incoming(Box<migration::ArrivedVm>),
}

/// The event loop's channel, and who already watches it (an incoming VM's watchers subscribed
/// while it arrived).
pub struct Events {
    pub sender: Sender<VmEvent>,
    pub receiver: Receiver<VmEvent>,
    pub watchers: Vec<Sender<String>>,
    /// Whether the control socket already feeds the channel; if not, `build` opens it once
    /// the VM is built, so a VM that cannot be built never shows a socket.
    control_served: bool,
}

impl Events {
    pub fn new() -> Events {
        let (sender, receiver) = mpsc::channel();
        Events {
            sender,
            receiver,
            watchers: Vec::new(),
            control_served: false,
        }
    }

    /// The channel, with the control socket (if configured) feeding it from now on.
    pub fn serve(config: &VmConfig) -> Result<Events, BuildError> {
        let mut events = Events::new();
        serve_control(config, &events.sender)?;
        events.control_served = true;
        Ok(events)
    }
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

fn serve_control(config: &VmConfig, sender: &Sender<VmEvent>) -> Result<(), BuildError> {
    if let Some(path) = &config.control_socket {
        control::serve(path, sender.clone()).map_err(|source| BuildError::Control {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// The VM and its memory, registered with KVM, with its interrupt controllers.
pub fn prepare(config: &VmConfig) -> Result<(Arc<Vm>, GuestRam), BuildError> {
    let vm = Arc::new(Vm::new(&config.kvm_device)?);
    let guest_memory = memory::create(config.memory_bytes(), config.memory)?;
    vm.register_memory(&guest_memory)?;
    vm.create_irqchip_and_pit()?;
    Ok((vm, guest_memory))
}

/// Builds the VM and starts its vCPUs (parked if `paused`).
pub fn build(
    config: &VmConfig,
    start: Start,
    events: Events,
    paused: bool,
) -> Result<Vmm, BuildError> {
    if matches!(start, Start::Boot) {
        config.check_files()?;
    }
    let (vm, guest_memory) = match &start {
        Start::Incoming(arrived) => (arrived.vm.clone(), arrived.memory.clone()),
        _ => prepare(config)?,
    };
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
                Some((header, Some(memory_crc))),
            )
        }
        Start::Incoming(arrived) => {
            let arrived = *arrived;
            vm.restore_state(&arrived.header.vm)?;
            (
                boot::BootInfo {
                    entry: 0,
                    zero_page: 0,
                },
                Some((arrived.header, arrived.memory_crc32)),
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

    let Events {
        sender,
        receiver: events,
        watchers,
        control_served,
    } = events;
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

    if !control_served {
        serve_control(config, &sender)?;
    }

    vcpu::install_kick_handler().map_err(BuildError::Threads)?;
    let run_control = Arc::new(RunControl::default());
    if paused {
        // Parked before they first run: nothing is counted as having run.
        vcpu::transition(&run_control, &[], RunState::Paused);
    }
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
        restored_memory_crc32: restored.and_then(|(_, crc)| crc),
        outgoing: None,
        dirty_logging: false,
        dirty_reply: None,
        msi_routes,
        saved_memory_crc32: None,
        events,
        _events_sender: sender,
        watchers,
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
            "migration": self.outgoing.as_ref().map(|outgoing| outgoing.describe(self.run_control.throttle())),
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
            Request::DirtyPages if self.running_migration().is_ok() => {
                Err("a migration is running: its pre-copy owns the dirty log".into())
            }
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
            Request::Migrate(request) => self.migrate(&request).map(|()| None),
            Request::MigrateCancel => {
                self.running_migration()?.cancel();
                Ok(None)
            }
            Request::MigrateTune {
                max_downtime_ms,
                bandwidth_mib_s,
            } => {
                self.running_migration()?
                    .tune(max_downtime_ms, bandwidth_mib_s);
                Ok(None)
            }
        }
    }

    fn running_migration(&self) -> Result<&Arc<migration::Outgoing>, String> {
        self.outgoing
            .as_ref()
            .filter(|outgoing| !outgoing.phase().is_over())
            .ok_or_else(|| "no migration is running".to_string())
    }

    /// Starts sending this VM to a `vireo-vmm receive` at `request.address`.
    fn migrate(&mut self, request: &migration::Request) -> Result<(), String> {
        if self.assigned_devices > 0 {
            return Err(
                "a VM with assigned host devices (--vfio) cannot migrate: their state is in the hardware"
                    .into(),
            );
        }
        if self.running_migration().is_ok() {
            return Err("a migration is already running".into());
        }
        let source = migration::Source {
            vm: self.vm.clone(),
            memory: self.memory.clone(),
            run_control: self.run_control.clone(),
            kicker: vcpu::Kicker::new(&self.vcpus, self.run_control.clone()),
            events: self._events_sender.clone(),
            preamble: migration::Preamble {
                vcpu_count: u8::try_from(self.vcpus.len()).unwrap_or(u8::MAX),
                memory_mib: self.memory_mib,
                machine: self.machine.clone(),
            },
        };
        self.outgoing = Some(migration::start(source, request)?);
        // The migration owns KVM's dirty log now; a later `dirty-pages` starts afresh.
        self.dirty_logging = false;
        Ok(())
    }

    /// The stop-and-copy: the vCPUs pause, the rest goes, and the destination confirms. On any
    /// failure the guest goes on here as it was.
    fn switchover(&mut self, mut switchover: Box<migration::Switchover>) {
        if switchover.outgoing.cancelled() {
            // Cancelled between the pre-copy's end and now: the guest never stops.
            migration::finished(
                &switchover.outgoing,
                &Err("cancelled".into()),
                std::time::Duration::ZERO,
            );
            self.run_control.set_throttle(0);
            let _ = self.vm.set_dirty_logging(&self.memory, false);
            return;
        }
        let was_running = self.run_control.state() == RunState::Running;
        migration::entering_device_phase(&switchover.outgoing);
        let paused_at = std::time::Instant::now();
        let result = if vcpu::transition(&self.run_control, &self.vcpus, RunState::Paused) {
            self.with_machine_state(|header| {
                migration::finish(&mut switchover, &self.vm, &self.memory, header)
            })
        } else {
            Err("vCPUs did not pause in time".into())
        };
        migration::finished(&switchover.outgoing, &result, paused_at.elapsed());
        self.run_control.set_throttle(0);
        if result.is_ok() {
            self.notify(&control::event_line("migrated", None));
        } else {
            let _ = self.vm.set_dirty_logging(&self.memory, false);
            if was_running {
                vcpu::transition(&self.run_control, &self.vcpus, RunState::Running);
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
        self.with_machine_state(|header| {
            snapshot::write(path, header, &self.memory).map_err(|err| err.to_string())
        })
    }

    /// Reads the paused machine's state and hands it to `use_state` with the devices still
    /// locked: a notifier or tap reader thread must not move a queue between its saved
    /// position and the memory written with it.
    fn with_machine_state<T>(
        &self,
        use_state: impl FnOnce(&snapshot::SnapshotHeader) -> Result<T, String>,
    ) -> Result<T, String> {
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
        let outcome = use_state(&header);
        drop(transports);
        outcome
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
                VmEvent::Switchover(switchover) => self.switchover(switchover),
                // Only a `receive` waits for one, before there is a Vmm.
                VmEvent::Arrived(_) => {}
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
        for reply in &unread {
            wait_until_read(reply);
        }
        vcpu::transition(&self.run_control, &self.vcpus, RunState::Stopping);
        let line = exit.event();
        self.notify(&line);
        self.vm.defer_teardown();
        exit
    }
}

/// How waiting for an incoming VM ended without one.
#[derive(Debug)]
pub enum NotArrived {
    /// Stopped through the control socket.
    Stopped,
    Failed(String),
}

/// The destination takes the source's devices, or checks that its own (given on its command
/// line: its disk paths and taps) have the same shape, slot for slot.
fn adopt_machine(config: &mut VmConfig, preamble: &migration::Preamble) -> Result<(), String> {
    config.vcpus = preamble.vcpu_count;
    config.memory_mib = preamble.memory_mib;
    let machine = &preamble.machine;
    let given = !config.disks.is_empty()
        || !config.nets.is_empty()
        || config.rng
        || config.balloon
        || config.console.is_some();
    if !given {
        config.rng = machine.rng;
        config.disks = machine.disks.clone();
        config.nets = machine.nets.clone();
        config.balloon = machine.balloon;
        config.console = machine.console.clone();
        return Ok(());
    }
    let shape = |rng: bool, disks: usize, nets: usize, balloon: bool, console: bool| {
        format!(
            "{disks} disks, {nets} NICs, rng {rng}, balloon {balloon}, virtio console {console}"
        )
    };
    let here = shape(
        config.rng,
        config.disks.len(),
        config.nets.len(),
        config.balloon,
        config.console.is_some(),
    );
    let there = shape(
        machine.rng,
        machine.disks.len(),
        machine.nets.len(),
        machine.balloon,
        machine.console.is_some(),
    );
    if here == there {
        Ok(())
    } else {
        Err(format!(
            "the destination's devices ({here}) differ from the source's ({there})"
        ))
    }
}

/// The arrived state fits the machine it is for: a vCPU state per vCPU, a device state per
/// virtio device.
fn check_state(config: &VmConfig, header: &snapshot::SnapshotHeader) -> Result<(), String> {
    let devices = usize::from(config.rng)
        + config.disks.len()
        + config.nets.len()
        + usize::from(config.balloon)
        + usize::from(config.console.is_some());
    if header.vcpus.len() != usize::from(config.vcpus) || header.devices.virtio.len() != devices {
        return Err(format!(
            "the state has {} vCPUs and {} virtio devices, the machine {} and {devices}",
            header.vcpus.len(),
            header.devices.virtio.len(),
            config.vcpus
        ));
    }
    Ok(())
}

/// Waits for a VM migrating in on `listener`, answering control requests meanwhile; then builds
/// it (paused if asked, before or while it arrived) and tells the source.
pub fn receive(
    mut config: VmConfig,
    listener: std::net::TcpListener,
    mut paused: bool,
) -> Result<Vmm, NotArrived> {
    let mut events = Events::serve(&config).map_err(|err| NotArrived::Failed(err.to_string()))?;
    let received = migration::Received::default();
    let counter = received.clone();
    let sender = events.sender.clone();
    let shape = config.clone();
    std::thread::Builder::new()
        .name("incoming".into())
        .spawn(move || {
            let result = migration::receive(&listener, &counter, |preamble| {
                let mut shape = shape;
                shape.vcpus =
                    VmConfig::validate(u64::from(preamble.vcpu_count), preamble.memory_mib)
                        .map_err(|err| err.to_string())?;
                shape.memory_mib = preamble.memory_mib;
                prepare(&shape).map_err(|err| err.to_string())
            });
            let _ = sender.send(VmEvent::Arrived(result.map(Box::new)));
        })
        .map_err(|err| NotArrived::Failed(format!("starting the incoming thread: {err}")))?;
    loop {
        let Ok(event) = events.receiver.recv() else {
            return Err(NotArrived::Failed("event channel closed".into()));
        };
        match event {
            VmEvent::Arrived(Ok(arrival)) => {
                let migration::Arrival {
                    preamble,
                    arrived,
                    mut stream,
                } = *arrival;
                // Built paused: it runs only once the source has heard it may stop.
                let built = adopt_machine(&mut config, &preamble)
                    .and_then(|()| check_state(&config, &arrived.header))
                    .and_then(|()| {
                        build(&config, Start::Incoming(Box::new(arrived)), events, true)
                            .map_err(|err| err.to_string())
                    });
                let told = migration::confirm(
                    &mut stream,
                    &built.as_ref().map(|_| ()).map_err(Clone::clone),
                );
                let vmm = built.map_err(NotArrived::Failed)?;
                if let Err(err) = told {
                    return Err(NotArrived::Failed(format!(
                        "the source went away before the handover: {err}"
                    )));
                }
                if !paused {
                    vcpu::transition(&vmm.run_control, &vmm.vcpus, RunState::Running);
                }
                return Ok(vmm);
            }
            VmEvent::Arrived(Err(error)) => {
                return Err(NotArrived::Failed(format!("incoming migration: {error}")));
            }
            VmEvent::Control(request, reply) => {
                let answer = match request {
                    Request::Info => Ok(json!({
                        "state": "incoming",
                        "pid": std::process::id(),
                        "received_bytes": received.load(std::sync::atomic::Ordering::Relaxed),
                        "paused_on_arrival": paused,
                    })),
                    Request::Pause => {
                        paused = true;
                        Ok(json!({}))
                    }
                    Request::Resume => {
                        paused = false;
                        Ok(json!({}))
                    }
                    Request::Watch(watcher) => {
                        events.watchers.push(watcher);
                        Ok(json!({}))
                    }
                    Request::Stop => {
                        let _ = reply.send(Ok(json!({})));
                        wait_until_read(&reply);
                        return Err(NotArrived::Stopped);
                    }
                    _ => Err("the VM is still arriving: until it has, only info, pause, resume, watch and stop are answered".to_string()),
                };
                let _ = reply.send(answer);
            }
            VmEvent::Guest(_) | VmEvent::Crash { .. } | VmEvent::Switchover(_) => {}
        }
    }
}

/// Waits (briefly) until the socket thread has written `reply`'s answer: it drops its end then.
fn wait_until_read(reply: &Sender<control::Reply>) {
    let asked = std::time::Instant::now();
    while asked.elapsed() < std::time::Duration::from_millis(200)
        && reply.send(Err(String::new())).is_ok()
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
