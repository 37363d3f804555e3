//! An MSI-X table and its pending bits as the guest sees them in a BAR: 16-byte entries (message
//! address, message data, vector control), read and written at any width and offset.

pub const CAP_MSIX: u8 = 0x11;
pub const ENTRY_SIZE: u64 = 16;
pub const CONTROL_ENABLE: u16 = 1 << 15;
pub const CONTROL_MASK: u16 = 1 << 14;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsixEntry {
    pub address: u64,
    pub data: u32,
    pub masked: bool,
}

impl MsixEntry {
    fn bytes(&self) -> [u8; 16] {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&self.address.to_le_bytes());
        raw[8..12].copy_from_slice(&self.data.to_le_bytes());
        raw[12..16].copy_from_slice(&u32::from(self.masked).to_le_bytes());
        raw
    }
}

/// What a table write changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryWritten {
    pub index: usize,
    /// The vector went from masked to unmasked with a message pending: deliver it now.
    pub deliver_pending: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsixTable {
    pub entries: Vec<MsixEntry>,
    pub pending: Vec<bool>,
}

impl MsixTable {
    /// A table of `vectors` entries, each masked as after reset.
    pub fn new(vectors: usize) -> MsixTable {
        MsixTable {
            entries: vec![
                MsixEntry {
                    masked: true,
                    ..MsixEntry::default()
                };
                vectors
            ],
            pending: vec![false; vectors],
        }
    }

    /// The capability's body after its id and next pointer: message control (table size) and
    /// the BAR indicator and offset of the table and of the pending bits.
    pub fn capability_body(&self, table: (u8, u32), pending: (u8, u32)) -> Vec<u8> {
        let mut body = Vec::new();
        let size = u16::try_from(self.entries.len().saturating_sub(1)).unwrap_or(0x7ff);
        body.extend_from_slice(&size.to_le_bytes());
        body.extend_from_slice(&(table.1 | u32::from(table.0 & 7)).to_le_bytes());
        body.extend_from_slice(&(pending.1 | u32::from(pending.0 & 7)).to_le_bytes());
        body
    }

    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let Some((index, start)) = locate(offset) else {
            data.fill(0);
            return;
        };
        let Some(entry) = self.entries.get(index) else {
            data.fill(0);
            return;
        };
        let raw = entry.bytes();
        for (at, byte) in data.iter_mut().enumerate() {
            *byte = raw.get(start + at).copied().unwrap_or(0);
        }
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<EntryWritten> {
        let (index, start) = locate(offset)?;
        let entry = self.entries.get_mut(index)?;
        let mut raw = entry.bytes();
        for (at, byte) in data.iter().enumerate() {
            if let Some(slot) = raw.get_mut(start + at) {
                *slot = *byte;
            }
        }
        let was_masked = entry.masked;
        entry.address = u64::from_le_bytes(raw[0..8].try_into().unwrap_or([0; 8]));
        entry.data = u32::from_le_bytes(raw[8..12].try_into().unwrap_or([0; 4]));
        entry.masked = raw[12] & 1 != 0;
        let deliver_pending = was_masked && !entry.masked && self.pending[index];
        if deliver_pending {
            self.pending[index] = false;
        }
        Some(EntryWritten {
            index,
            deliver_pending,
        })
    }

    /// The pending-bit array (one bit per vector) at `offset`.
    pub fn read_pending(&self, offset: u64, data: &mut [u8]) {
        let mut bytes = vec![0u8; self.pending.len().div_ceil(64) * 8];
        for (index, pending) in self.pending.iter().enumerate() {
            if *pending {
                bytes[index / 8] |= 1 << (index % 8);
            }
        }
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (at, byte) in data.iter_mut().enumerate() {
            *byte = start
                .checked_add(at)
                .and_then(|i| bytes.get(i))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Bytes the table and the pending bits take in their BAR.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }
}

fn locate(offset: u64) -> Option<(usize, usize)> {
    let index = usize::try_from(offset / ENTRY_SIZE).ok()?;
    let start = usize::try_from(offset % ENTRY_SIZE).ok()?;
    Some((index, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_written_at_any_width_and_unmasking_delivers_what_was_pending() {
        let mut table = MsixTable::new(3);
        table.write(16, &0xfee0_0000u32.to_le_bytes());
        table.write(20, &0u32.to_le_bytes());
        table.write(24, &0x41u16.to_le_bytes());
        table.pending[1] = true;
        let written = table.write(28, &0u32.to_le_bytes());
        assert_eq!(
            written,
            Some(EntryWritten {
                index: 1,
                deliver_pending: true
            })
        );
        assert_eq!(
            table.entries[1],
            MsixEntry {
                address: 0xfee0_0000,
                data: 0x41,
                masked: false
            }
        );
        let mut read = [0u8; 8];
        table.read(16, &mut read);
        assert_eq!(u64::from_le_bytes(read), 0xfee0_0000);
        table.pending[2] = true;
        let mut bits = [0u8; 8];
        table.read_pending(0, &mut bits);
        assert_eq!(bits[0], 0b100);
        assert_eq!(table.write(48, &[1]), None, "past the last entry");
    }

    #[test]
    fn the_capability_names_the_table_size_and_where_table_and_pending_bits_live() {
        let table = MsixTable::new(4);
        let body = table.capability_body((2, 0x3000), (2, 0x3800));
        assert_eq!(body, [3, 0, 0x02, 0x30, 0, 0, 0x02, 0x38, 0, 0]);
    }
}
