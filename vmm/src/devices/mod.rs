//! Emulated devices: on the port-I/O bus the 16550 UART, the i8042 (for CPU reset), the CMOS RTC,
//! the ACPI PM registers (power button, S5, PM timer) and PCI configuration; on the PCI bus the
//! virtio devices. Every device treats guest input as
//! hostile: any width, any offset, any value is answered without panicking.

pub mod acpi_pm;
pub mod bus;
pub mod i8042;
pub mod pci;
pub mod rtc;
pub mod serial;
pub mod vfio;
pub mod virtio;

/// What a device asks the VMM to do on the guest's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestRequest {
    /// ACPI S5: the guest powered itself off.
    Poweroff,
    /// The guest reset the CPU (i8042 0xFE, triple fault): a reboot.
    Reset,
}

/// Where devices send their requests; the VMM's event loop receives them.
pub type RequestSender = std::sync::mpsc::Sender<crate::vstate::VmEvent>;

/// Everything a vCPU's I/O exits reach: the port bus and the PCI bus (ECAM and BARs).
pub struct Devices {
    pub pio: bus::PioBus,
    pub pci: std::sync::Arc<pci::PciBus>,
}

impl Devices {
    pub fn mmio_read(&self, address: u64, data: &mut [u8]) {
        if !self.pci.mmio(address, pci::MmioAccess::Read(data)) {
            data.fill(0xff);
        }
    }

    pub fn mmio_write(&self, address: u64, data: &[u8]) {
        self.pci.mmio(address, pci::MmioAccess::Write(data));
    }
}
