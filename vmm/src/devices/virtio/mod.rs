//! virtio 1.x devices and their PCI transport. A device model only sees descriptor chains from a
//! queue and guest memory; the transport (`pci.rs`) owns the queues, feature negotiation, status,
//! notifications and MSI-X. A guest is hostile: a malformed chain puts the device in
//! NEEDS_RESET and is never allowed to panic the VMM or reach outside guest memory.

pub mod balloon;
pub mod block;
pub mod console;
pub mod net;
pub mod pci;
pub mod rng;

use crate::vstate::memory::GuestRam;
use virtio_queue::Queue;

/// Feature bits common to every device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// virtio device types (the PCI device id is 0x1040 + type).
pub const TYPE_NET: u16 = 1;
pub const TYPE_BLOCK: u16 = 2;
pub const TYPE_RNG: u16 = 4;

#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("malformed descriptor chain: {0}")]
    BadChain(String),
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("queue: {0}")]
    Queue(#[from] virtio_queue::Error),
}

/// A device model behind the virtio-pci transport.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u16;
    /// PCI class code (class << 24 | subclass << 16 | prog-if << 8).
    fn pci_class(&self) -> u32;
    /// The largest size of each queue; their count is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits offered (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver accepted `features` and set DRIVER_OK.
    fn activate(&mut self, _features: u64) {}
    /// Handles every available buffer of queue `index`. Returns whether buffers were used (the
    /// driver is then notified). An error puts the device in NEEDS_RESET.
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        memory: &GuestRam,
    ) -> Result<bool, VirtioError>;
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// Counters for `info` (domblkstat, domifstat, dommemstat), if the device keeps any.
    fn statistics(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Device state the guest can observe that a restore must bring back (a held buffer).
    fn saved_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    fn restore_state(&mut self, _state: &serde_json::Value) {}
    /// The device itself, for host requests only one kind of device takes (a balloon target).
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }
}

/// Reads a little-endian config field of `bytes` at `offset` into `data`; out of range reads 0.
pub fn read_config_bytes(bytes: &[u8], offset: u64, data: &mut [u8]) {
    for (index, byte) in data.iter_mut().enumerate() {
        *byte = usize::try_from(offset)
            .ok()
            .and_then(|offset| offset.checked_add(index))
            .and_then(|at| bytes.get(at))
            .copied()
            .unwrap_or(0);
    }
}
