//! The PCI bus: configuration space through ports 0xCF8/0xCFC and ECAM, memory BARs placed in the
//! 32-bit MMIO hole, and the devices in slots of bus 0 (slot 0 is the host bridge).

pub mod config;
pub mod msix;

use std::sync::{Arc, Mutex};

pub use config::{BarKind, PciConfig};

use super::bus::PioDevice;

/// ECAM window for bus 0: 32 devices x 8 functions x 4 KiB.
pub const ECAM_START: u64 = 0xe000_0000;
pub const ECAM_SIZE: u64 = 1 << 20;
/// Where BARs are placed, below ECAM.
pub const BAR_WINDOW_START: u64 = 0xc000_0000;
pub const BAR_WINDOW_END: u64 = ECAM_START;
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
pub const CONFIG_PORT_COUNT: u16 = 8;
pub const SLOTS: usize = 32;

/// A function on the bus: its configuration space and its BARs' contents.
pub trait PciDevice: Send {
    fn config(&self) -> &PciConfig;
    fn config_mut(&mut self) -> &mut PciConfig;
    /// A configuration write, after the generic handling (the device may react, e.g. to MSI-X).
    fn config_written(&mut self, _offset: u16) {}
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
}

/// The host bridge at 00:00.0.
pub struct HostBridge {
    config: PciConfig,
}

impl Default for HostBridge {
    fn default() -> Self {
        // Red Hat's PCIe host bridge id, as QEMU uses for its generic host; class 06/00 (host bridge).
        HostBridge {
            config: PciConfig::new(0x1b36, 0x0008, 0x0600_0000, 0, 0),
        }
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
    fn bar_read(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
}

pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

#[derive(Default)]
pub struct PciBus {
    slots: Vec<Option<SharedPciDevice>>,
    next_bar_address: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("no free PCI slot on bus 0")]
    NoSlot,
    #[error("no room for a {size:#x}-byte BAR in the PCI window")]
    NoBarSpace { size: u64 },
}

impl PciBus {
    pub fn new() -> PciBus {
        let mut bus = PciBus {
            slots: vec![None; SLOTS],
            next_bar_address: BAR_WINDOW_START,
        };
        bus.slots[0] = Some(Arc::new(Mutex::new(HostBridge::default())));
        bus
    }

    /// Puts `device` in the first free slot and gives its BARs addresses. Returns the slot.
    pub fn add(&mut self, device: SharedPciDevice) -> Result<u8, PciError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::NoSlot)?;
        if let Ok(mut locked) = device.lock() {
            let config = locked.config_mut();
            for index in 0..6 {
                let Some(size) = config.bar_size(index) else {
                    continue;
                };
                let base = self.next_bar_address.next_multiple_of(size);
                if base + size > BAR_WINDOW_END {
                    return Err(PciError::NoBarSpace { size });
                }
                config.set_bar_address(index, base);
                self.next_bar_address = base + size;
            }
            config.enable_memory();
        }
        self.slots[slot] = Some(device);
        Ok(u8::try_from(slot).unwrap_or(u8::MAX))
    }

    fn device(&self, slot: u8, function: u8) -> Option<&SharedPciDevice> {
        if function != 0 {
            return None;
        }
        self.slots.get(usize::from(slot)).and_then(Option::as_ref)
    }

    pub fn config_read(&self, slot: u8, function: u8, offset: u16, data: &mut [u8]) {
        match self
            .device(slot, function)
            .and_then(|device| device.lock().ok())
        {
            Some(device) => device.config().read(offset, data),
            None => data.fill(0xff),
        }
    }

    pub fn config_write(&self, slot: u8, function: u8, offset: u16, data: &[u8]) {
        if let Some(mut device) = self
            .device(slot, function)
            .and_then(|device| device.lock().ok())
        {
            device.config_mut().write(offset, data);
            device.config_written(offset);
        }
    }

    /// A guest MMIO access: ECAM, or a device's memory BAR. False when nothing claims `address`.
    pub fn mmio(&self, address: u64, access: MmioAccess<'_>) -> bool {
        if (ECAM_START..ECAM_START + ECAM_SIZE).contains(&address) {
            let offset = address - ECAM_START;
            let slot = u8::try_from((offset >> 15) & 0x1f).unwrap_or(0);
            let function = u8::try_from((offset >> 12) & 0x7).unwrap_or(0);
            let register = u16::try_from(offset & 0xfff).unwrap_or(0);
            match access {
                MmioAccess::Read(data) => self.config_read(slot, function, register, data),
                MmioAccess::Write(data) => self.config_write(slot, function, register, data),
            }
            return true;
        }
        for device in self.slots.iter().flatten() {
            let Ok(mut device) = device.lock() else {
                continue;
            };
            let Some((bar, offset)) = device.config().bar_containing(address) else {
                continue;
            };
            match access {
                MmioAccess::Read(data) => device.bar_read(bar, offset, data),
                MmioAccess::Write(data) => device.bar_write(bar, offset, data),
            }
            return true;
        }
        false
    }
}

pub enum MmioAccess<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

/// Ports 0xCF8 (address latch) and 0xCFC-0xCFF (data) of configuration mechanism 1.
pub struct PciConfigIo {
    bus: Arc<PciBus>,
    address: u32,
}

impl PciConfigIo {
    pub fn new(bus: Arc<PciBus>) -> PciConfigIo {
        PciConfigIo { bus, address: 0 }
    }

    /// (slot, function, register) of the latched address, when enabled and on bus 0.
    fn target(&self, data_offset: u16) -> Option<(u8, u8, u16)> {
        let enabled = self.address & 0x8000_0000 != 0;
        let bus = (self.address >> 16) & 0xff;
        if !enabled || bus != 0 {
            return None;
        }
        let slot = u8::try_from((self.address >> 11) & 0x1f).ok()?;
        let function = u8::try_from((self.address >> 8) & 0x7).ok()?;
        let register = u16::try_from(self.address & 0xfc).ok()? + data_offset;
        Some((slot, function, register))
    }
}

impl PioDevice for PciConfigIo {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        match offset {
            0..=3 => {
                let bytes = self.address.to_le_bytes();
                for (index, byte) in data.iter_mut().enumerate() {
                    *byte = bytes
                        .get(usize::from(offset) + index)
                        .copied()
                        .unwrap_or(0xff);
                }
            }
            4..=7 => match self.target(offset - 4) {
                Some((slot, function, register)) => {
                    self.bus.config_read(slot, function, register, data)
                }
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            }
            4..=7 => {
                if let Some((slot, function, register)) = self.target(offset - 4) {
                    self.bus.config_write(slot, function, register, data);
                }
            }
            _ => {}
        }
    }
}
