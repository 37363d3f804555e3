//! virtio-console, one port (no MULTIPORT): what the guest writes to /dev/hvc0 goes to a file. A
//! second console beside the UART and the base of a later guest-agent channel; input from the
//! host comes with that channel, so receive buffers the guest posts wait unused until then.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::{VIRTIO_F_VERSION_1, VirtioDevice, VirtioError, read_config_bytes};

pub const TYPE_CONSOLE: u16 = 3;
const QUEUE_SIZES: [u16; 2] = [64, 64];
const TX_QUEUE: usize = 1;
/// The most one transmit buffer may carry.
const MAX_TX_BYTES: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("--console file:{path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
}

pub struct Console {
    output: File,
    bytes_out: u64,
}

impl Console {
    pub fn open(path: &Path) -> Result<Console, ConsoleError> {
        let output = File::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| ConsoleError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Console {
            output,
            bytes_out: 0,
        })
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u16 {
        TYPE_CONSOLE
    }

    fn pci_class(&self) -> u32 {
        0x0780_0000
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols u16, rows u16, max_nr_ports u32, emerg_wr u32: only meaningful with features.
        read_config_bytes(&[0u8; 12], offset, data);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, VirtioError> {
        // Only the transmit queue carries anything (see the module header).
        let mut used_any = false;
        if index == TX_QUEUE {
            while let Some(chain) = queue.iter(memory)?.next() {
                let head = chain.head_index();
                for descriptor in chain.readable() {
                    let length = usize::try_from(descriptor.len())
                        .unwrap_or(0)
                        .min(MAX_TX_BYTES);
                    let mut bytes = vec![0u8; length];
                    memory.read_slice(&mut bytes, descriptor.addr())?;
                    let _ = self.output.write_all(&bytes);
                    self.bytes_out += bytes.len() as u64;
                }
                queue.add_used(memory, head, 0)?;
                used_any = true;
            }
        }
        Ok(used_any)
    }

    fn statistics(&self) -> serde_json::Value {
        serde_json::json!({ "bytes_out": self.bytes_out })
    }
}
