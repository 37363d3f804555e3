//! Emulated devices on the port-I/O bus: the 16550 UART, the i8042 (for CPU reset), the CMOS RTC
//! and the ACPI PM registers (power button, S5, PM timer). Every device treats guest input as
//! hostile: any width, any offset, any value is answered without panicking.

pub mod acpi_pm;
pub mod bus;
pub mod i8042;
pub mod rtc;
pub mod serial;

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
