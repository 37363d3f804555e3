//! The port-I/O bus: maps port ranges to devices. Reads of unclaimed ports return all ones, as on
//! real hardware; writes to them are dropped.

use std::sync::{Arc, Mutex};

/// A device on the port-I/O bus. `offset` is relative to the device's base port.
pub trait PioDevice: Send {
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]);
}

struct Range {
    base: u16,
    len: u16,
    device: Arc<Mutex<dyn PioDevice>>,
}

#[derive(Default)]
pub struct PioBus {
    ranges: Vec<Range>,
}

impl PioBus {
    /// Claims `len` ports from `base`. Overlaps are a programming error of the builder.
    pub fn insert(&mut self, base: u16, len: u16, device: Arc<Mutex<dyn PioDevice>>) {
        debug_assert!(self.ranges.iter().all(|r| base >= r.base.saturating_add(r.len) || r.base >= base.saturating_add(len)));
        self.ranges.push(Range { base, len, device });
    }

    fn find(&self, port: u16) -> Option<(&Range, u16)> {
        self.ranges
            .iter()
            .find(|range| port >= range.base && port - range.base < range.len)
            .map(|range| (range, port - range.base))
    }

    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some((range, offset)) => match range.device.lock() {
                Ok(mut device) => device.read(offset, data),
                Err(_) => data.fill(0xff),
            },
            None => data.fill(0xff),
        }
    }

    pub fn write(&self, port: u16, data: &[u8]) {
        if let Some((range, offset)) = self.find(port)
            && let Ok(mut device) = range.device.lock()
        {
            device.write(offset, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl PioDevice for Echo {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(u8::try_from(offset).unwrap_or(0)));
        }
        fn write(&mut self, _: u16, data: &[u8]) {
            self.0 = data.first().copied().unwrap_or(0);
        }
    }

    #[test]
    fn routes_by_port_and_fills_unclaimed() {
        let mut bus = PioBus::default();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Echo(1))));
        let mut data = [0u8; 2];
        bus.read(0x12, &mut data);
        assert_eq!(data, [3, 3]);
        bus.write(0x10, &[7]);
        bus.read(0x10, &mut data);
        assert_eq!(data, [7, 7]);
        bus.read(0x14, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        bus.write(0xffff, &[]);
    }
}
