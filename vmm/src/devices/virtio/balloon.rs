//! virtio-balloon: the host sets a target (`setmem`), the guest gives pages back on the inflate
//! queue and takes them again on the deflate queue. Inflated pages are released to the host
//! (MADV_DONTNEED), so a ballooned guest really uses less host memory.

use std::any::Any;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{VIRTIO_F_VERSION_1, VirtioDevice, VirtioError, read_config_bytes};

pub const TYPE_BALLOON: u16 = 5;
const QUEUE_SIZES: [u16; 2] = [256, 256];
const INFLATE_QUEUE: usize = 0;
const DEFLATE_QUEUE: usize = 1;
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
}

impl Balloon {
    /// Sets the target; the transport then tells the driver its configuration changed.
    pub fn set_target_pages(&mut self, pages: u32) {
        self.target_pages = pages;
    }

    fn page_numbers(
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
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
        VIRTIO_F_VERSION_1
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
        memory: &GuestMemoryMmap,
    ) -> Result<bool, VirtioError> {
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
        })
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }
}
