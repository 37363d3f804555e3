//! The virtio 1.x PCI transport ("modern" only): capabilities in configuration space pointing into
//! one 32 KiB memory BAR that holds the common configuration, ISR, device configuration, notify
//! area and the MSI-X table. Notifications reach the device through ioeventfds that KVM signals
//! without leaving the kernel, served by one notifier thread per device; where KVM refuses them
//! they are handled on the vCPU that wrote them. Interrupts go out as MSI messages through KVM.

use std::sync::{Arc, Mutex, Weak};

use crate::vstate::memory::GuestRam;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::VirtioDevice;
use crate::devices::pci::msix::{self, MsixEntry, MsixTable};
use crate::devices::pci::{BarKind, PciConfig, PciDevice};

const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const COMMON_LENGTH: u64 = 0x38;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_OFFSET: u64 = 0x2000;
const DEVICE_LENGTH: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x5000;
const NO_VECTOR: u16 = 0xffff;

const VENDOR_REDHAT_VIRTIO: u16 = 0x1af4;
const CAP_VENDOR: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;

const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;
const STATUS_NEEDS_RESET: u8 = 0x40;
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

/// Delivers one MSI message (address, data) to the guest.
pub type MsiSender = Arc<dyn Fn(u64, u32) + Send + Sync>;

/// Binds (`true`) or unbinds (`false`) an eventfd to guest writes at an MMIO address, in KVM.
/// Returns whether KVM did it.
pub type IoEventBinder = Arc<dyn Fn(&EventFd, u64, bool) -> bool + Send + Sync>;

/// The queues' notify eventfds and where they are bound now.
struct NotifyEvents {
    events: Vec<EventFd>,
    binder: IoEventBinder,
    /// The BAR address the eventfds are bound at, if they are.
    bound_at: Option<u64>,
}

/// One virtqueue's negotiated layout and positions, for save and restore.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct QueueSnapshot {
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
    pub vector: u16,
}

/// The transport's whole state: configuration space, negotiation, queues and MSI-X.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VirtioPciState {
    config: crate::devices::pci::config::PciConfigState,
    driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    config_vector: u16,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    isr: u8,
    queues: Vec<QueueSnapshot>,
    msix: Vec<MsixEntry>,
    msix_pending: Vec<bool>,
    /// The device model's own guest-visible state (older snapshots have none).
    #[serde(default)]
    device: serde_json::Value,
}

pub struct VirtioPci {
    config: PciConfig,
    msix_capability: usize,
    device: Box<dyn VirtioDevice>,
    memory: GuestRam,
    queues: Vec<Queue>,
    queue_vectors: Vec<u16>,
    msix: MsixTable,
    msi: MsiSender,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    config_vector: u16,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    isr: u8,
    notify_events: Option<NotifyEvents>,
}

/// The low and high 32 bits of an address, as virtio-queue's setters take them.
fn halves(address: u64) -> (Option<u32>, Option<u32>) {
    (
        u32::try_from(address & 0xffff_ffff).ok(),
        u32::try_from(address >> 32).ok(),
    )
}

fn vendor_capability(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    // Body after id/next: cap_len, cfg_type, bar, id, padding[2], offset, length, then extra.
    let cap_len = u8::try_from(16 + extra.len()).unwrap_or(16);
    let mut body = vec![cap_len, cfg_type, 0, 0, 0, 0];
    body.extend_from_slice(&u32::try_from(offset).unwrap_or(0).to_le_bytes());
    body.extend_from_slice(&u32::try_from(length).unwrap_or(0).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

impl VirtioPci {
    pub fn new(device: Box<dyn VirtioDevice>, memory: GuestRam, msi: MsiSender) -> VirtioPci {
        let device_id = 0x1040 + device.device_type();
        let mut config = PciConfig::new(
            VENDOR_REDHAT_VIRTIO,
            device_id,
            device.pci_class() | 1,
            VENDOR_REDHAT_VIRTIO,
            0x1100,
        );
        config.add_bar(0, BAR_SIZE, BarKind::Memory32);
        let queue_count = device.queue_max_sizes().len();
        config.add_capability(
            CAP_VENDOR,
            &vendor_capability(CFG_COMMON, COMMON_OFFSET, COMMON_LENGTH, &[]),
            &[],
        );
        let notify_length = u64::try_from(queue_count).unwrap_or(1) * u64::from(NOTIFY_MULTIPLIER);
        config.add_capability(
            CAP_VENDOR,
            &vendor_capability(
                CFG_NOTIFY,
                NOTIFY_OFFSET,
                notify_length,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
            &[],
        );
        config.add_capability(
            CAP_VENDOR,
            &vendor_capability(CFG_ISR, ISR_OFFSET, 1, &[]),
            &[],
        );
        config.add_capability(
            CAP_VENDOR,
            &vendor_capability(CFG_DEVICE, DEVICE_OFFSET, DEVICE_LENGTH, &[]),
            &[],
        );
        let msix = MsixTable::new(queue_count + 1);
        let msix_body = msix.capability_body(
            (0, u32::try_from(MSIX_TABLE_OFFSET).unwrap_or(0)),
            (0, u32::try_from(MSIX_PBA_OFFSET).unwrap_or(0)),
        );
        // Only the enable and function-mask bits of Message Control are writable.
        let msix_capability = config.add_capability(msix::CAP_MSIX, &msix_body, &[0, 0, 0, 0xc0]);
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|max| {
                Queue::new(*max)
                    .unwrap_or_else(|_| Queue::new(256).expect("256 is a valid queue size"))
            })
            .collect();
        VirtioPci {
            config,
            msix_capability,
            device,
            memory,
            queues,
            queue_vectors: vec![NO_VECTOR; queue_count],
            msix,
            msi,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            config_vector: NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            isr: 0,
            notify_events: None,
        }
    }

    /// Gives each queue an eventfd that KVM signals on the guest's notify write, and starts the
    /// thread that serves them. Without KVM's help (`binder` refusing) notifies stay on the vCPU.
    pub fn start_notifier(
        transport: &Arc<Mutex<VirtioPci>>,
        binder: IoEventBinder,
    ) -> std::io::Result<()> {
        let mut watched = Vec::new();
        {
            let mut locked = transport
                .lock()
                .map_err(|_| std::io::Error::other("virtio lock poisoned"))?;
            let mut events = Vec::new();
            for _ in 0..locked.queues.len() {
                let event = EventFd::new(libc::EFD_NONBLOCK)?;
                watched.push(event.try_clone()?);
                events.push(event);
            }
            locked.notify_events = Some(NotifyEvents {
                events,
                binder,
                bound_at: None,
            });
            locked.bind_notify_events();
        }
        let weak = Arc::downgrade(transport);
        std::thread::Builder::new()
            .name("virtio-notify".into())
            .spawn(move || serve_notify_events(&weak, &watched))?;
        Ok(())
    }

    /// Keeps the eventfds bound where BAR 0 decodes now (the guest may move or disable it).
    fn bind_notify_events(&mut self) {
        let wanted = self.config.decoded_bar_address(0);
        let Some(notify) = &mut self.notify_events else {
            return;
        };
        if notify.bound_at == wanted {
            return;
        }
        let at = |base: u64, index: usize| {
            base + NOTIFY_OFFSET + u64::try_from(index).unwrap_or(0) * u64::from(NOTIFY_MULTIPLIER)
        };
        if let Some(old) = notify.bound_at.take() {
            for (index, event) in notify.events.iter().enumerate() {
                (notify.binder)(event, at(old, index), false);
            }
        }
        if let Some(base) = wanted {
            let mut bound = 0;
            for (index, event) in notify.events.iter().enumerate() {
                if (notify.binder)(event, at(base, index), true) {
                    bound += 1;
                }
            }
            if bound == notify.events.len() {
                notify.bound_at = Some(base);
            } else {
                for (index, event) in notify.events.iter().enumerate().take(bound) {
                    (notify.binder)(event, at(base, index), false);
                }
            }
        }
    }

    /// The device's type name and counters, for `info`.
    pub fn describe(&self) -> serde_json::Value {
        let kind = match self.device.device_type() {
            super::TYPE_BLOCK => "block",
            super::TYPE_NET => "net",
            super::TYPE_RNG => "rng",
            super::balloon::TYPE_BALLOON => "balloon",
            super::console::TYPE_CONSOLE => "console",
            _ => "other",
        };
        serde_json::json!({
            "type": kind,
            "status": self.status,
            "needs_reset": self.status & STATUS_NEEDS_RESET != 0,
            // Whether the guest's notifies reach the device through KVM ioeventfds.
            "ioeventfd": self.notify_events.as_ref().is_some_and(|notify| notify.bound_at.is_some()),
            "statistics": self.device.statistics(),
        })
    }

    pub fn state(&self) -> VirtioPciState {
        VirtioPciState {
            config: self.config.state(),
            driver_features: self.driver_features,
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            config_vector: self.config_vector,
            status: self.status,
            config_generation: self.config_generation,
            queue_select: self.queue_select,
            isr: self.isr,
            queues: self
                .queues
                .iter()
                .zip(&self.queue_vectors)
                .map(|(queue, vector)| QueueSnapshot {
                    size: queue.size(),
                    ready: queue.ready(),
                    desc_table: queue.desc_table(),
                    avail_ring: queue.avail_ring(),
                    used_ring: queue.used_ring(),
                    next_avail: queue.next_avail(),
                    next_used: queue.next_used(),
                    event_idx: queue.event_idx_enabled(),
                    vector: *vector,
                })
                .collect(),
            msix: self.msix.entries.clone(),
            msix_pending: self.msix.pending.clone(),
            device: self.device.saved_state(),
        }
    }

    /// Takes back a saved state, the device model's included.
    pub fn restore(&mut self, state: &VirtioPciState) {
        self.config.restore(&state.config);
        self.driver_features = state.driver_features & self.device.features();
        self.device_feature_select = state.device_feature_select;
        self.driver_feature_select = state.driver_feature_select;
        self.config_vector = state.config_vector;
        self.status = state.status;
        self.config_generation = state.config_generation;
        self.queue_select = state.queue_select;
        self.isr = state.isr;
        for ((queue, vector), saved) in self
            .queues
            .iter_mut()
            .zip(self.queue_vectors.iter_mut())
            .zip(&state.queues)
        {
            queue.set_size(saved.size);
            let (low, high) = halves(saved.desc_table);
            queue.set_desc_table_address(low, high);
            let (low, high) = halves(saved.avail_ring);
            queue.set_avail_ring_address(low, high);
            let (low, high) = halves(saved.used_ring);
            queue.set_used_ring_address(low, high);
            queue.set_next_avail(saved.next_avail);
            queue.set_next_used(saved.next_used);
            queue.set_event_idx(saved.event_idx);
            queue.set_ready(saved.ready);
            *vector = saved.vector;
        }
        for (entry, saved) in self.msix.entries.iter_mut().zip(&state.msix) {
            *entry = *saved;
        }
        for (pending, saved) in self.msix.pending.iter_mut().zip(&state.msix_pending) {
            *pending = *saved;
        }
        self.device.restore_state(&state.device);
        self.bind_notify_events();
        if self.status & STATUS_DRIVER_OK != 0 {
            self.device.activate(self.driver_features);
            // A notify still waiting in its eventfd at save time was not carried over: look at
            // every queue once.
            for index in 0..self.queues.len() {
                self.notify(index);
            }
        }
    }

    fn msix_control(&self) -> u16 {
        self.config.u16_at(self.msix_capability + 2)
    }

    fn interrupt(&mut self, vector: u16, isr_bit: u8) {
        self.isr |= isr_bit;
        let control = self.msix_control();
        if control & msix::CONTROL_ENABLE == 0 || vector == NO_VECTOR {
            return;
        }
        let Some(entry) = self.msix.entries.get(usize::from(vector)).copied() else {
            return;
        };
        if entry.masked || control & msix::CONTROL_MASK != 0 {
            if let Some(pending) = self.msix.pending.get_mut(usize::from(vector)) {
                *pending = true;
            }
            return;
        }
        (self.msi)(entry.address, entry.data);
    }

    fn reset(&mut self) {
        for (queue, max) in self.queues.iter_mut().zip(self.device.queue_max_sizes()) {
            if let Ok(fresh) = Queue::new(*max) {
                *queue = fresh;
            }
        }
        self.queue_vectors.fill(NO_VECTOR);
        self.config_vector = NO_VECTOR;
        self.driver_features = 0;
        self.status = 0;
        self.isr = 0;
        self.device.reset();
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn balloon(&mut self) -> Option<&mut super::balloon::Balloon> {
        self.device
            .as_any_mut()
            .and_then(|device| device.downcast_mut::<super::balloon::Balloon>())
    }

    /// Sets the balloon's target, if this is a balloon, and tells the driver. Returns whether it was.
    pub fn set_balloon_target(&mut self, pages: u32) -> bool {
        let Some(balloon) = self.balloon() else {
            return false;
        };
        balloon.set_target_pages(pages);
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt(self.config_vector, ISR_CONFIG);
        true
    }

    /// Asks a balloon's driver for fresh memory statistics by giving back the buffer it holds;
    /// they arrive on the stats queue a moment later.
    pub fn request_balloon_stats(&mut self) {
        if self.status & STATUS_DRIVER_OK == 0 || self.status & STATUS_NEEDS_RESET != 0 {
            return;
        }
        let Some(head) = self
            .balloon()
            .and_then(|balloon| balloon.release_stats_buffer())
        else {
            return;
        };
        let index = super::balloon::STATS_QUEUE;
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        if queue.add_used(&self.memory, head, 0).is_ok() {
            let vector = self.queue_vectors.get(index).copied().unwrap_or(NO_VECTOR);
            self.interrupt(vector, ISR_QUEUE);
        }
    }

    /// A device backend has work for queue `index` (a frame arrived): process it as a notify would.
    pub fn queue_event(&mut self, index: usize) {
        self.notify(index);
    }

    fn notify(&mut self, index: usize) {
        if self.status & STATUS_DRIVER_OK == 0 || self.status & STATUS_NEEDS_RESET != 0 {
            return;
        }
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        if !queue.ready() || !queue.is_valid(&self.memory) {
            return;
        }
        match self.device.process_queue(index, queue, &self.memory) {
            Ok(true) => {
                let vector = self.queue_vectors.get(index).copied().unwrap_or(NO_VECTOR);
                self.interrupt(vector, ISR_QUEUE);
            }
            Ok(false) => {}
            Err(err) => {
                eprintln!(
                    "vireo-vmm: virtio device type {}: {err}; it needs a reset",
                    self.device.device_type()
                );
                self.status |= STATUS_NEEDS_RESET;
                self.config_generation = self.config_generation.wrapping_add(1);
                self.interrupt(self.config_vector, ISR_CONFIG);
            }
        }
    }

    fn common_read(&mut self, offset: u64, data: &mut [u8]) {
        let features = self.device.features();
        let queue_count = u16::try_from(self.queues.len()).unwrap_or(0);
        let value: u64 = match offset {
            0x00 => u64::from(self.device_feature_select),
            0x04 => match self.device_feature_select {
                0 => features & 0xffff_ffff,
                1 => features >> 32,
                _ => 0,
            },
            0x08 => u64::from(self.driver_feature_select),
            0x0c => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(self.config_vector),
            0x12 => u64::from(queue_count),
            0x14 => u64::from(self.status),
            0x15 => u64::from(self.config_generation),
            0x16 => u64::from(self.queue_select),
            0x18 => self
                .queues
                .get(usize::from(self.queue_select))
                .map_or(0, |q| u64::from(q.size())),
            0x1a => self
                .queue_vectors
                .get(usize::from(self.queue_select))
                .map_or(u64::from(NO_VECTOR), |v| u64::from(*v)),
            0x1c => self
                .queues
                .get(usize::from(self.queue_select))
                .map_or(0, |q| u64::from(q.ready())),
            0x1e => u64::from(self.queue_select),
            0x20 => self
                .queues
                .get(usize::from(self.queue_select))
                .map_or(0, QueueT::desc_table),
            0x24 => self
                .queues
                .get(usize::from(self.queue_select))
                .map_or(0, |q| q.desc_table() >> 32),
            0x28 => self
                .queues
                .get(usize::from(self.queue_select))
                .map_or(0, QueueT::avail_ring),
            0x2c => self
                .queues
                .get(usize::from(self.queue_select))
                .map_or(0, |q| q.avail_ring() >> 32),
            0x30 => self
                .queues
                .get(usize::from(self.queue_select))
                .map_or(0, QueueT::used_ring),
            0x34 => self
                .queues
                .get(usize::from(self.queue_select))
                .map_or(0, |q| q.used_ring() >> 32),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = bytes.get(index).copied().unwrap_or(0);
        }
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 8];
        for (slot, byte) in bytes.iter_mut().zip(data) {
            *slot = *byte;
        }
        let value = u64::from_le_bytes(bytes);
        let low32 = u32::try_from(value & 0xffff_ffff).unwrap_or(0);
        let low16 = u16::try_from(value & 0xffff).unwrap_or(0);
        let queue_writable = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            0x00 => self.device_feature_select = low32,
            0x08 => self.driver_feature_select = low32,
            0x0c if self.status & STATUS_FEATURES_OK == 0 => {
                // Only offered features can be accepted.
                let offered = self.device.features();
                match self.driver_feature_select {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | (u64::from(low32) & offered)
                    }
                    1 => {
                        self.driver_features = (self.driver_features & 0xffff_ffff)
                            | ((u64::from(low32) << 32) & offered)
                    }
                    _ => {}
                }
            }
            0x10 => self.config_vector = low16,
            0x14 => self.write_status(u8::try_from(value & 0xff).unwrap_or(0)),
            0x16 => self.queue_select = low16,
            0x18 if queue_writable => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_size(low16);
                }
            }
            0x1a => {
                if let Some(vector) = self.queue_vectors.get_mut(usize::from(self.queue_select)) {
                    *vector = low16;
                }
            }
            0x1c if queue_writable => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_ready(low16 == 1);
                }
            }
            0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34 if queue_writable => {
                let high = offset % 8 == 4;
                let (low, high) = if high {
                    (None, Some(low32))
                } else {
                    (
                        Some(low32),
                        if data.len() == 8 {
                            Some(u32::try_from(value >> 32).unwrap_or(0))
                        } else {
                            None
                        },
                    )
                };
                if let Some(queue) = self.selected_queue() {
                    match offset & !7 {
                        0x20 => queue.set_desc_table_address(low, high),
                        0x28 => queue.set_avail_ring_address(low, high),
                        _ => queue.set_used_ring_address(low, high),
                    }
                }
            }
            _ => {}
        }
    }

    fn write_status(&mut self, status: u8) {
        if status == 0 {
            self.reset();
            return;
        }
        if status & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            // A device must have VERSION_1 accepted to be driven as a modern device.
            if self.driver_features & super::VIRTIO_F_VERSION_1 == 0 {
                self.status = status & !STATUS_FEATURES_OK;
                return;
            }
        }
        let became_ready = status & STATUS_DRIVER_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
        self.status = status;
        if became_ready {
            self.device.activate(self.driver_features);
            // Linux's balloon driver makes its stats buffer available (and notifies) before
            // DRIVER_OK; whatever a driver queued that early is served now.
            for index in 0..self.queues.len() {
                self.notify(index);
            }
        }
    }
}

impl PciDevice for VirtioPci {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn config_written(&mut self, _offset: u16) {
        self.bind_notify_events();
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar != 0 {
            data.fill(0xff);
            return;
        }
        match offset {
            COMMON_OFFSET..0x1000 if offset < COMMON_LENGTH => self.common_read(offset, data),
            ISR_OFFSET => {
                // Reading the ISR acknowledges it.
                data.fill(0);
                if let Some(first) = data.first_mut() {
                    *first = self.isr;
                }
                self.isr = 0;
            }
            DEVICE_OFFSET..NOTIFY_OFFSET => self.device.read_config(offset - DEVICE_OFFSET, data),
            MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET => self.msix.read(offset - MSIX_TABLE_OFFSET, data),
            MSIX_PBA_OFFSET..BAR_SIZE => self.msix.read_pending(offset - MSIX_PBA_OFFSET, data),
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        match offset {
            COMMON_OFFSET..0x1000 if offset < COMMON_LENGTH => self.common_write(offset, data),
            DEVICE_OFFSET..NOTIFY_OFFSET => self.device.write_config(offset - DEVICE_OFFSET, data),
            NOTIFY_OFFSET..MSIX_TABLE_OFFSET => {
                let index = (offset - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER);
                if let Ok(index) = usize::try_from(index) {
                    self.notify(index);
                }
            }
            MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET => {
                if let Some(written) = self.msix.write(offset - MSIX_TABLE_OFFSET, data)
                    && written.deliver_pending
                {
                    self.interrupt(u16::try_from(written.index).unwrap_or(NO_VECTOR), 0);
                }
            }
            _ => {}
        }
    }
}

/// The notifier thread: waits on every queue's eventfd and serves the queue whose fd fired. It
/// ends with the transport.
fn serve_notify_events(transport: &Weak<Mutex<VirtioPci>>, events: &[EventFd]) {
    let mut polled: Vec<libc::pollfd> = events
        .iter()
        .map(|event| libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(event),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let count = libc::nfds_t::try_from(polled.len()).unwrap_or(0);
    loop {
        // SAFETY: `polled` is a live array of `count` pollfd entries for the whole call.
        let ready = unsafe { libc::poll(polled.as_mut_ptr(), count, -1) };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        let Some(transport) = transport.upgrade() else {
            return;
        };
        for (index, (entry, event)) in polled.iter_mut().zip(events).enumerate() {
            if entry.revents & libc::POLLIN != 0
                && event.read().is_ok()
                && let Ok(mut transport) = transport.lock()
            {
                transport.notify(index);
            }
            entry.revents = 0;
        }
    }
}
