//! The CMOS real-time clock (MC146818) at ports 0x70/0x71, reading the host's UTC time in BCD, as
//! stock Linux expects at boot. Writes to the clock are accepted and ignored (the guest cannot
//! set the host's time); other CMOS bytes are plain storage.

use super::bus::PioDevice;

pub const RTC_PORT: u16 = 0x70;
pub const RTC_PORT_COUNT: u16 = 2;
/// The CMOS byte holding the century, named in the FADT.
pub const CMOS_CENTURY: u8 = 0x32;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
/// Register A: 32.768 kHz time base, 1024 Hz rate; the update-in-progress bit stays clear.
const REG_A_VALUE: u8 = 0x26;
/// Register B: 24-hour mode, BCD.
const REG_B_VALUE: u8 = 0x02;
/// Register D: valid RAM and time.
const REG_D_VALUE: u8 = 0x80;

fn bcd(value: i32) -> u8 {
    let value = u8::try_from(value.clamp(0, 99)).unwrap_or(0);
    ((value / 10) << 4) | (value % 10)
}

pub struct Rtc {
    index: u8,
    cmos: [u8; 128],
}

impl Default for Rtc {
    fn default() -> Self {
        Rtc {
            index: 0,
            cmos: [0; 128],
        }
    }
}

/// The CMOS index register and storage, for save and restore (the clock itself is the host's).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RtcState {
    pub index: u8,
    pub cmos: Vec<u8>,
}

impl Rtc {
    pub fn state(&self) -> RtcState {
        RtcState {
            index: self.index,
            cmos: self.cmos.to_vec(),
        }
    }

    pub fn from_state(state: &RtcState) -> Rtc {
        let mut rtc = Rtc {
            index: state.index & 0x7f,
            cmos: [0; 128],
        };
        for (slot, byte) in rtc.cmos.iter_mut().zip(&state.cmos) {
            *slot = *byte;
        }
        rtc
    }

    fn now() -> libc::tm {
        // SAFETY: time(NULL) only reads the clock.
        let now = unsafe { libc::time(std::ptr::null_mut()) };
        // SAFETY: all-zero is a valid `tm`, and gmtime_r writes only into it.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the call.
        unsafe { libc::gmtime_r(&now, &mut tm) };
        tm
    }

    fn register(&self, index: u8) -> u8 {
        let tm = || Self::now();
        match index {
            REG_SECONDS => bcd(tm().tm_sec),
            REG_MINUTES => bcd(tm().tm_min),
            REG_HOURS => bcd(tm().tm_hour),
            REG_WEEKDAY => bcd(tm().tm_wday + 1),
            REG_DAY => bcd(tm().tm_mday),
            REG_MONTH => bcd(tm().tm_mon + 1),
            REG_YEAR => bcd(tm().tm_year % 100),
            CMOS_CENTURY => bcd((tm().tm_year + 1900) / 100),
            REG_A => REG_A_VALUE,
            REG_B => REG_B_VALUE,
            REG_C => 0,
            REG_D => REG_D_VALUE,
            _ => self.cmos.get(usize::from(index)).copied().unwrap_or(0xff),
        }
    }
}

impl PioDevice for Rtc {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = if offset == 1 {
            self.register(self.index)
        } else {
            0xff
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let Some(value) = data.first().copied() else {
            return;
        };
        match offset {
            // Bit 7 is the NMI mask, not part of the index.
            0 => self.index = value & 0x7f,
            1 if !matches!(self.index, REG_SECONDS..=REG_YEAR | REG_A..=REG_D | CMOS_CENTURY) => {
                if let Some(byte) = self.cmos.get_mut(usize::from(self.index)) {
                    *byte = value;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bcd_time_and_stores_cmos() {
        let mut rtc = Rtc::default();
        let mut byte = [0u8];
        rtc.write(0, &[0x80 | REG_B]);
        rtc.read(1, &mut byte);
        assert_eq!(byte[0], REG_B_VALUE);
        rtc.write(0, &[REG_MONTH]);
        rtc.read(1, &mut byte);
        assert!((0x01..=0x12).contains(&byte[0]) && byte[0] & 0xf <= 9);
        rtc.write(0, &[0x40]);
        rtc.write(1, &[0x5a]);
        rtc.read(1, &mut byte);
        assert_eq!(byte[0], 0x5a);
        rtc.read(7, &mut byte);
        assert_eq!(byte[0], 0xff);
    }
}
