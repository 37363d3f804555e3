//! The i8042 keyboard controller, for the one thing guests use it for here: CPU reset (0xFE to
//! port 0x64), which becomes a guest reboot.

use vm_superio::{I8042Device, Trigger};

use super::bus::PioDevice;
use super::{GuestRequest, RequestSender};
use crate::vstate::VmEvent;

pub const I8042_DATA_PORT: u16 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_PORT_COUNT: u16 = 5;

pub struct ResetTrigger(RequestSender);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        let _ = self.0.send(VmEvent::Guest(GuestRequest::Reset));
        Ok(())
    }
}

pub struct I8042(I8042Device<ResetTrigger>);

impl I8042 {
    pub fn new(requests: RequestSender) -> I8042 {
        I8042(I8042Device::new(ResetTrigger(requests)))
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0xff, |offset| self.0.read(offset));
        data.fill(value);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let (Ok(offset), Some(value)) = (u8::try_from(offset), data.first()) {
            let _ = self.0.write(offset, *value);
        }
    }
}
