//! virtio-rng: fills the guest's buffers with bytes from the host's getrandom(2).

use crate::vstate::memory::GuestRam;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;

use super::{TYPE_RNG, VIRTIO_F_VERSION_1, VirtioDevice, VirtioError};

const QUEUE_SIZES: [u16; 1] = [256];
/// The most bytes handed out per request, so one request cannot make the VMM allocate much.
const MAX_REQUEST_BYTES: usize = 64 << 10;

#[derive(Default)]
pub struct Rng {
    /// Bytes given to the guest, for statistics.
    pub bytes_served: u64,
}

fn host_random(buffer: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buffer.len() {
        let rest = &mut buffer[filled..];
        // SAFETY: getrandom writes at most rest.len() bytes into rest.
        let count = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        filled += usize::try_from(count).map_err(|_| std::io::Error::last_os_error())?;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u16 {
        TYPE_RNG
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

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn statistics(&self) -> serde_json::Value {
        serde_json::json!({ "bytes_served": self.bytes_served })
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        memory: &GuestRam,
    ) -> Result<bool, VirtioError> {
        let mut used_any = false;
        while let Some(chain) = queue.iter(memory)?.next() {
            let head = chain.head_index();
            let mut written: u32 = 0;
            for descriptor in chain.writable() {
                let length = usize::try_from(descriptor.len())
                    .unwrap_or(0)
                    .min(MAX_REQUEST_BYTES);
                let mut bytes = vec![0u8; length];
                host_random(&mut bytes)
                    .map_err(|err| VirtioError::BadChain(format!("getrandom: {err}")))?;
                memory.write_slice(&bytes, descriptor.addr())?;
                written = written.saturating_add(u32::try_from(length).unwrap_or(0));
                if usize::try_from(written).unwrap_or(usize::MAX) >= MAX_REQUEST_BYTES {
                    break;
                }
            }
            queue.add_used(memory, head, written)?;
            self.bytes_served += u64::from(written);
            used_any = true;
        }
        Ok(used_any)
    }
}
