//! virtio-balloon: the host sets a target (`setmem`), the guest gives pages back on the inflate
//! queue and takes them again on the deflate queue. Inflated pages are released to the host
//! (MADV_DONTNEED), so a ballooned guest really uses less host memory. With the statistics queue
//! the guest reports its memory use (`dommemstat`): the device holds the guest's one stats
//! buffer and hands it back whenever the host wants fresh figures.

use std::any::Any;

use crate::vstate::memory::GuestRam;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{VIRTIO_F_VERSION_1, VirtioDevice, VirtioError, read_config_bytes};

pub const TYPE_BALLOON: u16 = 5;
const QUEUE_SIZES: [u16; 3] = [256, 256, 2];
const INFLATE_QUEUE: usize = 0;
const DEFLATE_QUEUE: usize = 1;
pub const STATS_QUEUE: usize = 2;
const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
/// One statistic on the wire: a le16 tag and a le64 value.
const STAT_BYTES: usize = 10;
/// The spec's tags, in order; a tag past these is kept under its number.
const STAT_NAMES: [&str; 10] = [
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "hugetlb_allocations",
    "hugetlb_failures",
];
/// More statistics than the spec defines is a malformed buffer.
const MAX_STATS: usize = 64;
const PAGE_SHIFT: u32 = 12;
const PAGE_BYTES: usize = 1 << PAGE_SHIFT;
/// The most page numbers one buffer may carry (the Linux driver sends 256).
const MAX_PFNS_PER_BUFFER: usize = 4096;

#[derive(Debug, Default)]
pub struct Balloon {
    /// What the host asks the guest to give back, in 4 KiB pages.
    target_pages: u32,
    /// What the guest says it has given back.
    actual_pages: u32,
    inflated_pages: u64,
    deflated_pages: u64,
    stats: GuestStats,
}

/// What the guest last reported on the statistics queue, and the buffer it is owed back.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct GuestStats {
    /// By name (bytes for memory sizes, counts otherwise), as the guest reported them.
    values: std::collections::BTreeMap<String, u64>,
    reports: u64,
    /// The head of the guest's stats buffer the device holds until it wants new figures.
    held_buffer: Option<u16>,
}

impl Balloon {
    /// Sets the target; the transport then tells the driver its configuration changed.
    pub fn set_target_pages(&mut self, pages: u32) {
        self.target_pages = pages;
    }

    /// Gives the guest's stats buffer back so that it refills it with fresh figures. Returns the
    /// buffer's head, if the device held one.
    pub fn release_stats_buffer(&mut self) -> Option<u16> {
        self.stats.held_buffer.take()
    }

    /// Reads the statistics in each new buffer and keeps the newest buffer. Returns whether an
    /// older held buffer was given back (a driver that sent a second one without being asked).
    fn take_stats(&mut self, queue: &mut Queue, memory: &GuestRam) -> Result<bool, VirtioError> {
        let mut used = false;
        while let Some(chain) = queue.iter(memory)?.next() {
            let head = chain.head_index();
            let mut raw = Vec::new();
            for descriptor in chain.readable() {
                let length = usize::try_from(descriptor.len()).unwrap_or(usize::MAX);
                if raw.len().saturating_add(length) > MAX_STATS * STAT_BYTES {
                    return Err(VirtioError::BadChain(format!(
                        "more than {MAX_STATS} balloon statistics in one buffer"
                    )));
                }
                let start = raw.len();
                raw.resize(start + length, 0);
                memory.read_slice(&mut raw[start..], descriptor.addr())?;
            }
            for stat in raw.chunks_exact(STAT_BYTES) {
                let tag = u16::from_le_bytes([stat[0], stat[1]]);
                let mut value = [0u8; 8];
                value.copy_from_slice(&stat[2..]);
                let name = STAT_NAMES
                    .get(usize::from(tag))
                    .map_or_else(|| format!("tag_{tag}"), |name| (*name).to_string());
                self.stats.values.insert(name, u64::from_le_bytes(value));
            }
            self.stats.reports += 1;
            if let Some(older) = self.stats.held_buffer.replace(head) {
                queue.add_used(memory, older, 0)?;
                used = true;
            }
        }
        Ok(used)
    }

    fn page_numbers(
        queue: &mut Queue,
        memory: &GuestRam,
    ) -> Result<Vec<(u16, Vec<u32>)>, VirtioError> {
        let mut buffers = Vec::new();
        while let Some(chain) = queue.iter(memory)?.next() {
            let head = chain.head_index();
            let mut pfns = Vec::new();
            for descriptor in chain.readable() {
                let count = usize::try_from(descriptor.len()).unwrap_or(0) / 4;
                if pfns.len() + count > MAX_PFNS_PER_BUFFER {
                    return Err(VirtioError::BadChain(format!(
                        "more than {MAX_PFNS_PER_BUFFER} pages in one balloon buffer"
                    )));
                }
                let mut raw = vec![0u8; count * 4];
                memory.read_slice(&mut raw, descriptor.addr())?;
                pfns.extend(
                    raw.chunks_exact(4)
                        .map(|bytes| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
                );
            }
            buffers.push((head, pfns));
        }
        Ok(buffers)
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u16 {
        TYPE_BALLOON
    }

    fn pci_class(&self) -> u32 {
        0x00ff_0000
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_STATS_VQ
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 8];
        config[..4].copy_from_slice(&self.target_pages.to_le_bytes());
        config[4..].copy_from_slice(&self.actual_pages.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (offset 4) is the driver's to write.
        if offset == 4 && data.len() == 4 {
            self.actual_pages = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        }
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        memory: &GuestRam,
    ) -> Result<bool, VirtioError> {
        if index == STATS_QUEUE {
            return self.take_stats(queue, memory);
        }
        let buffers = Self::page_numbers(queue, memory)?;
        for (head, pfns) in &buffers {
            for pfn in pfns {
                if index == INFLATE_QUEUE {
                    let address = GuestAddress(u64::from(*pfn) << PAGE_SHIFT);
                    // A page outside guest RAM is ignored, never touched.
                    if let Ok(host) = memory.get_host_address(address) {
                        // SAFETY: `host` is the start of one guest page inside our mapping;
                        // dropping it only makes the guest read zeros there next time.
                        unsafe { libc::madvise(host.cast(), PAGE_BYTES, libc::MADV_DONTNEED) };
                        if let Ok(page) = memory.get_slice(address, PAGE_BYTES) {
                            vm_memory::bitmap::Bitmap::mark_dirty(page.bitmap(), 0, PAGE_BYTES);
                        }
                        self.inflated_pages += 1;
                    }
                } else if index == DEFLATE_QUEUE {
                    self.deflated_pages += 1;
                }
            }
            queue.add_used(memory, *head, 0)?;
        }
        Ok(!buffers.is_empty())
    }

    fn statistics(&self) -> serde_json::Value {
        serde_json::json!({
            "target_pages": self.target_pages,
            "actual_pages": self.actual_pages,
            "inflated_pages": self.inflated_pages,
            "deflated_pages": self.deflated_pages,
            "guest": self.stats.values,
            "guest_reports": self.stats.reports,
        })
    }

    fn reset(&mut self) {
        self.stats = GuestStats::default();
    }

    fn saved_state(&self) -> serde_json::Value {
        serde_json::to_value(&self.stats).unwrap_or_default()
    }

    fn restore_state(&mut self, state: &serde_json::Value) {
        if let Ok(stats) = serde_json::from_value(state.clone()) {
            self.stats = stats;
        }
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }
}
