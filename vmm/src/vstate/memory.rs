//! Guest memory through vm-memory: anonymous private mappings below and above the MMIO hole, with
//! optional 2 MiB hugepages and KSM merging. Every region carries a bitmap of the pages the VMM
//! itself writes (virtio rings and buffers): KVM's dirty log sees only the guest's writes, and
//! live migration needs both.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Guest memory as the whole VMM shares it.
pub type GuestRam = GuestMemoryMmap<AtomicBitmap>;
type GuestRegion = vm_memory::GuestRegionMmap<AtomicBitmap>;

pub const PAGE_SHIFT: u64 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// The page frames of a per-slot bitmap of 64-bit words (KVM's dirty log, vm-memory's bitmap).
pub fn frames_of_bitmap(first_frame: u64, words: &[u64], frames: &mut Vec<u64>) {
    for (index, word) in words.iter().enumerate() {
        let mut bits = *word;
        while bits != 0 {
            frames.push(first_frame + (index as u64) * 64 + u64::from(bits.trailing_zeros()));
            bits &= bits - 1;
        }
    }
}

/// The page frames the VMM wrote since the last call, which clears them.
pub fn take_vmm_written(memory: &GuestRam) -> Vec<u64> {
    let mut frames = Vec::new();
    for region in memory.iter() {
        let mapping: &MmapRegion<AtomicBitmap> = region;
        let words = mapping.bitmap().get_and_reset();
        frames_of_bitmap(region.start_addr().0 >> PAGE_SHIFT, &words, &mut frames);
    }
    frames
}

use crate::arch::layout::ram_ranges;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size_mib} MiB of guest memory{hint}: {source}")]
    Map {
        size_mib: u64,
        hint: &'static str,
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest memory layout: {0}")]
    Layout(String),
}

/// How guest memory is backed.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryOptions {
    pub hugepages: bool,
    /// Mark memory MADV_MERGEABLE so KSM may share identical pages between guests.
    pub ksm: bool,
}

pub fn create(mem_bytes: u64, options: MemoryOptions) -> Result<GuestRam, MemoryError> {
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    if options.hugepages {
        flags |= libc::MAP_HUGETLB;
    }
    let mut regions = Vec::new();
    for (start, len) in ram_ranges(mem_bytes) {
        let size = usize::try_from(len).map_err(|_| MemoryError::Layout(format!("{len} bytes")))?;
        let hint = if options.hugepages {
            " with hugepages (are enough reserved in /proc/sys/vm/nr_hugepages?)"
        } else {
            ""
        };
        let mapping = MmapRegion::build(None, size, libc::PROT_READ | libc::PROT_WRITE, flags)
            .map_err(|source| MemoryError::Map {
                size_mib: len >> 20,
                hint,
                source,
            })?;
        let region = GuestRegion::new(mapping, GuestAddress(start))
            .ok_or_else(|| MemoryError::Layout(format!("region at {start:#x} overflows")))?;
        regions.push(region);
    }
    let memory =
        GuestRam::from_regions(regions).map_err(|err| MemoryError::Layout(err.to_string()))?;
    for region in memory.iter() {
        let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
            continue;
        };
        let Ok(len) = usize::try_from(region.len()) else {
            continue;
        };
        // SAFETY: the range is exactly one mapping we own; neither advice changes its contents.
        // DONTFORK: the teardown child (Vm::defer_teardown) must not copy guest memory.
        unsafe {
            libc::madvise(host.cast(), len, libc::MADV_DONTFORK);
            if options.ksm {
                libc::madvise(host.cast(), len, libc::MADV_MERGEABLE);
            }
        }
    }
    Ok(memory)
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;

    #[test]
    fn maps_and_is_usable() {
        let memory = create(
            64 << 20,
            MemoryOptions {
                hugepages: false,
                ksm: true,
            },
        )
        .unwrap();
        memory
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            memory.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert!(memory.write_obj(1u8, GuestAddress(64 << 20)).is_err());
    }
}
