//! A type-0 PCI configuration space: identity, command/status, memory BARs with the sizing
//! protocol, and a capability list. Only bits a guest may change are writable.

pub const CONFIG_SIZE: usize = 256;
const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const BAR0: usize = 0x10;
const CAPABILITIES_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
const FIRST_CAPABILITY: usize = 0x40;
const COMMAND_MEMORY: u16 = 1 << 1;
/// I/O, memory, bus master, parity, SERR, INTx disable: what a guest may set.
const COMMAND_WRITABLE: u16 = 0x0547;
const STATUS_CAPABILITIES: u16 = 1 << 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Memory32,
    Memory64,
}

#[derive(Debug, Clone, Copy)]
struct Bar {
    size: u64,
    address: u64,
    kind: BarKind,
}

/// A configuration space's guest-visible contents, for save and restore.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PciConfigState {
    pub bytes: Vec<u8>,
    pub bar_addresses: Vec<u64>,
}

#[derive(Clone)]
pub struct PciConfig {
    bytes: [u8; CONFIG_SIZE],
    /// Bits the guest may write, byte by byte (BARs and command are handled apart).
    writable: [u8; CONFIG_SIZE],
    bars: [Option<Bar>; 6],
    next_capability: usize,
    last_capability: Option<usize>,
}

impl PciConfig {
    /// `class` is class << 24 | subclass << 16 | prog-if << 8 | revision.
    pub fn new(
        vendor: u16,
        device: u16,
        class: u32,
        subsystem_vendor: u16,
        subsystem: u16,
    ) -> PciConfig {
        let mut config = PciConfig {
            bytes: [0; CONFIG_SIZE],
            writable: [0; CONFIG_SIZE],
            bars: [None; 6],
            next_capability: FIRST_CAPABILITY,
            last_capability: None,
        };
        config.set_u16(0x00, vendor);
        config.set_u16(0x02, device);
        config.set_u32(0x08, class);
        config.set_u16(0x2c, subsystem_vendor);
        config.set_u16(0x2e, subsystem);
        config.writable[INTERRUPT_LINE] = 0xff;
        config
    }

    fn set_u16(&mut self, offset: usize, value: u16) {
        self.bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn set_u32(&mut self, offset: usize, value: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    pub fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.bytes[offset], self.bytes[offset + 1]])
    }

    fn command(&self) -> u16 {
        self.u16_at(COMMAND)
    }

    pub fn enable_memory(&mut self) {
        let command = self.command() | COMMAND_MEMORY;
        self.set_u16(COMMAND, command);
    }

    /// Declares memory BAR `index` of `size` bytes (a power of two, at least 4 KiB).
    pub fn add_bar(&mut self, index: usize, size: u64, kind: BarKind) {
        debug_assert!(size.is_power_of_two() && size >= 0x1000 && index < 6);
        if let Some(slot) = self.bars.get_mut(index) {
            *slot = Some(Bar {
                size,
                address: 0,
                kind,
            });
        }
    }

    pub fn bar_size(&self, index: usize) -> Option<u64> {
        self.bars.get(index).copied().flatten().map(|bar| bar.size)
    }

    pub fn set_bar_address(&mut self, index: usize, address: u64) {
        if let Some(Some(bar)) = self.bars.get_mut(index) {
            bar.address = address & !(bar.size - 1);
        }
    }

    pub fn bar_address(&self, index: usize) -> Option<u64> {
        self.bars
            .get(index)
            .copied()
            .flatten()
            .map(|bar| bar.address)
    }

    /// Where memory BAR `index` decodes now: none while memory decoding is off or it is unplaced.
    pub fn decoded_bar_address(&self, index: usize) -> Option<u64> {
        if self.command() & COMMAND_MEMORY == 0 {
            return None;
        }
        self.bar_address(index).filter(|address| *address != 0)
    }

    /// The BAR and offset within it that `address` falls in, if memory decoding is on.
    pub fn bar_containing(&self, address: u64) -> Option<(usize, u64)> {
        if self.command() & COMMAND_MEMORY == 0 {
            return None;
        }
        self.bars.iter().enumerate().find_map(|(index, bar)| {
            let bar = (*bar)?;
            (bar.address != 0 && address >= bar.address && address - bar.address < bar.size)
                .then(|| (index, address - bar.address))
        })
    }

    /// Appends a capability (`body` starts after the id and next-pointer bytes) and returns its
    /// offset. `writable` marks which bytes of the whole capability the guest may change.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> usize {
        let offset = self.next_capability;
        let length = body.len() + 2;
        debug_assert!(offset + length <= CONFIG_SIZE);
        self.bytes[offset] = id;
        self.bytes[offset + 2..offset + length].copy_from_slice(body);
        for (index, mask) in writable.iter().enumerate() {
            self.writable[offset + index] = *mask;
        }
        match self.last_capability {
            Some(last) => self.bytes[last + 1] = u8::try_from(offset).unwrap_or(0),
            None => {
                self.bytes[CAPABILITIES_POINTER] = u8::try_from(offset).unwrap_or(0);
                let status = self.u16_at(STATUS) | STATUS_CAPABILITIES;
                self.set_u16(STATUS, status);
            }
        }
        self.last_capability = Some(offset);
        self.next_capability = (offset + length).next_multiple_of(4);
        offset
    }

    /// Takes an assigned device's own capability list as it is (offsets, contents), read-only
    /// but for what `writable` lets the guest change (offset, mask). Capabilities added after
    /// this go after the device's.
    pub fn adopt_capabilities(&mut self, device: &[u8; CONFIG_SIZE], writable: &[(usize, u8)]) {
        let first = usize::from(device[CAPABILITIES_POINTER] & 0xfc);
        let status = u16::from_le_bytes([device[STATUS], device[STATUS + 1]]);
        if status & STATUS_CAPABILITIES == 0 || first < FIRST_CAPABILITY {
            return;
        }
        self.bytes[FIRST_CAPABILITY..].copy_from_slice(&device[FIRST_CAPABILITY..]);
        self.bytes[CAPABILITIES_POINTER] = device[CAPABILITIES_POINTER] & 0xfc;
        let status = self.u16_at(STATUS) | STATUS_CAPABILITIES;
        self.set_u16(STATUS, status);
        for (offset, mask) in writable {
            if let Some(slot) = self.writable.get_mut(*offset) {
                *slot = *mask;
            }
        }
        // Nothing more fits without knowing every capability's length: none is added later.
        self.next_capability = CONFIG_SIZE;
    }

    pub fn state(&self) -> PciConfigState {
        PciConfigState {
            bytes: self.bytes.to_vec(),
            bar_addresses: self
                .bars
                .iter()
                .map(|bar| bar.map_or(0, |bar| bar.address))
                .collect(),
        }
    }

    /// Takes back what `state` saved; the layout (BAR sizes, capabilities) is rebuilt by the
    /// device, so only guest-written values come from the state.
    pub fn restore(&mut self, state: &PciConfigState) {
        for (slot, byte) in self.bytes.iter_mut().zip(&state.bytes) {
            *slot = *byte;
        }
        for (index, address) in state.bar_addresses.iter().enumerate() {
            self.set_bar_address(index, *address);
        }
    }

    /// The raw byte at `offset` (devices read their own capabilities' writable fields here).
    pub fn byte(&self, offset: usize) -> u8 {
        self.bytes.get(offset).copied().unwrap_or(0)
    }

    fn bar_register(&self, register: usize) -> u32 {
        // A 64-bit BAR spans two registers; the high one reads the upper address half.
        let index = (register - BAR0) / 4;
        if let Some(bar) = self.bars.get(index).copied().flatten() {
            let flags = match bar.kind {
                BarKind::Memory32 => 0,
                BarKind::Memory64 => 0b100,
            };
            return u32::try_from(bar.address & 0xffff_fff0).unwrap_or(0) | flags;
        }
        if let Some(Some(low)) = index.checked_sub(1).and_then(|low| self.bars.get(low))
            && low.kind == BarKind::Memory64
        {
            return u32::try_from(low.address >> 32).unwrap_or(0);
        }
        0
    }

    fn write_bar_register(&mut self, register: usize, value: u32) {
        let index = (register - BAR0) / 4;
        if let Some(Some(bar)) = self.bars.get_mut(index) {
            // Writing all ones sizes the BAR: the address bits below its size read back as zero.
            let low = u64::from(value & 0xffff_fff0);
            bar.address = ((bar.address & !0xffff_ffff) | low) & !(bar.size - 1);
            return;
        }
        if let Some(low_index) = index.checked_sub(1)
            && let Some(Some(bar)) = self.bars.get_mut(low_index)
            && bar.kind == BarKind::Memory64
        {
            bar.address =
                ((u64::from(value) << 32) | (bar.address & 0xffff_ffff)) & !(bar.size - 1);
        }
    }

    /// Reads `data.len()` bytes at `offset`; beyond the 256-byte space reads return zeros.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        let offset = usize::from(offset);
        for (index, byte) in data.iter_mut().enumerate() {
            let at = offset + index;
            *byte = match at {
                BAR0..=0x27 => self.bar_register(at & !3).to_le_bytes()[at & 3],
                _ => self.bytes.get(at).copied().unwrap_or(0),
            };
        }
    }

    pub fn write(&mut self, offset: u16, data: &[u8]) {
        let offset = usize::from(offset);
        if (BAR0..=0x27).contains(&offset) && data.len() == 4 && offset % 4 == 0 {
            self.write_bar_register(
                offset,
                u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
            );
            return;
        }
        for (index, value) in data.iter().enumerate() {
            let at = offset + index;
            match at {
                COMMAND | 0x05 => {
                    let shift = (at - COMMAND) * 8;
                    let mask = u8::try_from((COMMAND_WRITABLE >> shift) & 0xff).unwrap_or(0);
                    self.bytes[at] = (self.bytes[at] & !mask) | (value & mask);
                }
                _ => {
                    if let Some(mask) = self.writable.get(at).copied() {
                        self.bytes[at] = (self.bytes[at] & !mask) | (value & mask);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adopted_capability_list_reads_as_the_device_has_it_and_only_the_allowed_bits_change() {
        let mut device = [0u8; CONFIG_SIZE];
        device[STATUS] = 0x10;
        device[CAPABILITIES_POINTER] = 0x60;
        device[0x60..0x64].copy_from_slice(&[0x11, 0x70, 0x03, 0x00]);
        device[0x70..0x74].copy_from_slice(&[0x09, 0x00, 0x10, 0x01]);
        let mut config = PciConfig::new(0x1af4, 0x1044, 0x00ff_0000, 0, 0);
        config.adopt_capabilities(&device, &[(0x63, 0xc0)]);
        let mut read = [0u8; 4];
        config.read(0x34, &mut read[..1]);
        assert_eq!(read[0], 0x60);
        config.read(0x70, &mut read);
        assert_eq!(read, [0x09, 0x00, 0x10, 0x01]);
        config.write(0x60, &[0xff, 0xff, 0xff, 0xff]);
        config.write(0x70, &[0xff; 4]);
        config.read(0x60, &mut read);
        assert_eq!(read, [0x11, 0x70, 0x03, 0xc0]);
        config.read(0x70, &mut read);
        assert_eq!(read, [0x09, 0x00, 0x10, 0x01]);
        assert_ne!(config.u16_at(STATUS) & STATUS_CAPABILITIES, 0);
    }

    fn read32(config: &PciConfig, offset: u16) -> u32 {
        let mut data = [0u8; 4];
        config.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn identity_bars_and_sizing() {
        let mut config = PciConfig::new(0x1af4, 0x1044, 0x00ff_0001, 0x1af4, 0x1100);
        config.add_bar(0, 0x8000, BarKind::Memory32);
        config.add_bar(2, 0x4000, BarKind::Memory64);
        config.set_bar_address(0, 0xc000_0000);
        assert_eq!(read32(&config, 0), 0x1044_1af4);
        assert_eq!(read32(&config, 0x10), 0xc000_0000);
        config.write(0x10, &u32::MAX.to_le_bytes());
        assert_eq!(read32(&config, 0x10), 0xffff_8000, "size mask");
        config.write(0x10, &0xd000_0000u32.to_le_bytes());
        assert_eq!(config.bar_address(0), Some(0xd000_0000));
        config.write(0x18, &0xe000_0000u32.to_le_bytes());
        config.write(0x1c, &0x1u32.to_le_bytes());
        assert_eq!(config.bar_address(2), Some(0x1_e000_0000));
        assert_eq!(read32(&config, 0x18), 0xe000_0004);
        assert_eq!(
            config.bar_containing(0xd000_0010),
            None,
            "memory decoding off"
        );
        config.write(0x04, &[0x06, 0x00]);
        assert_eq!(config.bar_containing(0xd000_0010), Some((0, 0x10)));
        // Read-only identity.
        config.write(0x00, &[0, 0, 0, 0]);
        assert_eq!(read32(&config, 0), 0x1044_1af4);
    }

    #[test]
    fn capability_chain() {
        let mut config = PciConfig::new(1, 2, 0, 0, 0);
        let first = config.add_capability(0x09, &[16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
        let second = config.add_capability(0x11, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[0, 0, 0, 0xc0]);
        assert_eq!(config.byte(0x34), u8::try_from(first).unwrap());
        assert_eq!(config.byte(first + 1), u8::try_from(second).unwrap());
        assert_ne!(config.u16_at(0x06) & STATUS_CAPABILITIES, 0);
        config.write(u16::try_from(second + 3).unwrap(), &[0xff]);
        assert_eq!(config.byte(second + 3), 0xc0);
        let mut beyond = [0u8; 4];
        config.read(4094, &mut beyond);
        assert_eq!(beyond, [0; 4]);
    }
}
