//! ACPI fixed-hardware PM registers: PM1a event (status/enable), PM1a control (S5 power-off) and
//! the PM timer. A graceful shutdown request presses the fixed power button: PWRBTN_STS is set and,
//! when the guest enabled it, the SCI is raised. The guest decides what to do, as on real hardware.

use std::time::Instant;

use super::bus::PioDevice;
use super::{GuestRequest, RequestSender};
use crate::vstate::VmEvent;

pub const PM1A_EVT_PORT: u16 = 0x600;
pub const PM1A_CNT_PORT: u16 = 0x604;
pub const PM_TMR_PORT: u16 = 0x608;
/// PM1a event (4) + control (2) + padding (2) + timer (4).
pub const ACPI_PM_PORT_COUNT: u16 = 12;
pub const SCI_IRQ: u8 = 9;
/// The sleep type `_S5_` declares in the DSDT.
pub const SLP_TYP_S5: u8 = 5;

const PWRBTN_STS: u16 = 1 << 8;
const PWRBTN_EN: u16 = 1 << 8;
const SCI_EN: u16 = 1 << 0;
const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0x7;
/// The PM timer runs at 3.579545 MHz and is 24 bits wide.
const PM_TIMER_HZ: u128 = 3_579_545;
const PM_TIMER_MASK: u32 = 0x00ff_ffff;

/// Raises or lowers an interrupt line.
pub type IrqLine = Box<dyn Fn(bool) + Send>;

pub struct AcpiPm {
    status: u16,
    enable: u16,
    control: u16,
    started: Instant,
    sci: IrqLine,
    requests: RequestSender,
}

/// PM1 status, enable and control, for save and restore (the PM timer restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AcpiPmState {
    pub status: u16,
    pub enable: u16,
    pub control: u16,
}

impl AcpiPm {
    pub fn state(&self) -> AcpiPmState {
        AcpiPmState {
            status: self.status,
            enable: self.enable,
            control: self.control,
        }
    }

    pub fn restore(&mut self, state: AcpiPmState) {
        self.status = state.status;
        self.enable = state.enable;
        self.control = state.control | SCI_EN;
        self.update_sci();
    }

    pub fn new(sci: IrqLine, requests: RequestSender) -> AcpiPm {
        // SCI_EN set: the platform is already in ACPI mode (no SMI command port).
        AcpiPm {
            status: 0,
            enable: 0,
            control: SCI_EN,
            started: Instant::now(),
            sci,
            requests,
        }
    }

    fn update_sci(&self) {
        (self.sci)(self.status & self.enable & PWRBTN_EN != 0);
    }

    /// A graceful shutdown request: press the power button.
    pub fn press_power_button(&mut self) {
        self.status |= PWRBTN_STS;
        self.update_sci();
    }

    fn timer(&self) -> u32 {
        let ticks = self.started.elapsed().as_nanos() * PM_TIMER_HZ / 1_000_000_000;
        u32::try_from(ticks & u128::from(PM_TIMER_MASK)).unwrap_or(0)
    }

    /// The 32-bit little-endian view of ports from the device's base.
    fn register_bytes(&self) -> [u8; 12] {
        let mut bytes = [0u8; 12];
        bytes[0..2].copy_from_slice(&self.status.to_le_bytes());
        bytes[2..4].copy_from_slice(&self.enable.to_le_bytes());
        bytes[4..6].copy_from_slice(&self.control.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.timer().to_le_bytes());
        bytes
    }
}

impl PioDevice for AcpiPm {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let registers = self.register_bytes();
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = registers
                .get(usize::from(offset) + index)
                .copied()
                .unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let mut registers = [0u8; 12];
        let mut written = [false; 12];
        for (index, byte) in data.iter().enumerate() {
            let position = usize::from(offset) + index;
            if let Some(slot) = registers.get_mut(position) {
                *slot = *byte;
                written[position] = true;
            }
        }
        let word = |at: usize| u16::from_le_bytes([registers[at], registers[at + 1]]);
        if written[0] || written[1] {
            // Write one to clear.
            self.status &= !word(0);
        }
        if written[2] || written[3] {
            self.enable = word(2);
        }
        if written[4] || written[5] {
            let value = word(4);
            self.control = (value & !SLP_EN) | SCI_EN;
            let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
            if value & SLP_EN != 0 && sleep_type == u16::from(SLP_TYP_S5) {
                let _ = self.requests.send(VmEvent::Guest(GuestRequest::Poweroff));
            }
        }
        self.update_sci();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, mpsc};

    use super::*;

    fn device() -> (AcpiPm, Arc<AtomicBool>, mpsc::Receiver<VmEvent>) {
        let line = Arc::new(AtomicBool::new(false));
        let seen = line.clone();
        let (sender, receiver) = mpsc::channel();
        (
            AcpiPm::new(
                Box::new(move |level| seen.store(level, Ordering::SeqCst)),
                sender,
            ),
            line,
            receiver,
        )
    }

    #[test]
    fn power_button_raises_sci_only_when_enabled_and_clears() {
        let (mut pm, line, _) = device();
        pm.press_power_button();
        assert!(!line.load(Ordering::SeqCst), "not enabled yet");
        pm.write(2, &PWRBTN_EN.to_le_bytes());
        assert!(line.load(Ordering::SeqCst));
        let mut status = [0u8; 2];
        pm.read(0, &mut status);
        assert_eq!(u16::from_le_bytes(status) & PWRBTN_STS, PWRBTN_STS);
        pm.write(0, &PWRBTN_STS.to_le_bytes());
        assert!(!line.load(Ordering::SeqCst));
    }

    #[test]
    fn s5_requests_poweroff_and_other_sleep_types_do_not() {
        let (mut pm, _, requests) = device();
        pm.write(4, &((1u16 << SLP_TYP_SHIFT) | SLP_EN).to_le_bytes());
        assert!(requests.try_recv().is_err());
        pm.write(
            4,
            &((u16::from(SLP_TYP_S5) << SLP_TYP_SHIFT) | SLP_EN).to_le_bytes(),
        );
        assert!(matches!(
            requests.try_recv(),
            Ok(VmEvent::Guest(GuestRequest::Poweroff))
        ));
        let mut control = [0u8; 2];
        pm.read(4, &mut control);
        assert_eq!(u16::from_le_bytes(control) & SCI_EN, SCI_EN);
    }

    #[test]
    fn odd_widths_and_offsets_are_harmless() {
        let (mut pm, _, _) = device();
        let mut big = [0u8; 64];
        pm.read(11, &mut big);
        pm.write(11, &big);
        pm.write(200, &[1, 2, 3]);
        let mut timer = [0u8; 4];
        pm.read(8, &mut timer);
        assert_eq!(timer[3], 0, "24-bit timer");
    }
}
