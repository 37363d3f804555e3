//! virtio-console, one port (no MULTIPORT): a second console beside the UART and the base of a
//! later guest-agent channel. What the guest writes to /dev/hvc0 goes to a file, or to the client
//! of a unix socket, whose bytes in turn fill the guest's receive buffers.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::vstate::memory::GuestRam;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;

use super::{VIRTIO_F_VERSION_1, VirtioDevice, VirtioError, read_config_bytes};
use crate::config::ConsoleTarget;
use crate::devices::serial::{SocketClient, unix_listener};

pub const TYPE_CONSOLE: u16 = 3;
const QUEUE_SIZES: [u16; 2] = [64, 64];
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
/// The most one transmit buffer may carry.
const MAX_TX_BYTES: usize = 64 << 10;
/// Input the guest has not taken yet; a client typing faster waits.
const MAX_PENDING_INPUT: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("--console {target}: {source}")]
    Open {
        target: String,
        source: std::io::Error,
    },
}

pub struct Console {
    output: Box<dyn Write + Send>,
    /// The socket side, until `start_input` hands it to its thread.
    listener: Option<(UnixListener, SocketClient)>,
    input: Arc<Mutex<VecDeque<u8>>>,
    bytes_out: u64,
    bytes_in: u64,
}

impl Console {
    pub fn open(target: &ConsoleTarget) -> Result<Console, ConsoleError> {
        let failed = |source| ConsoleError::Open {
            target: format!("{target:?}"),
            source,
        };
        let (output, listener): (Box<dyn Write + Send>, _) = match target {
            ConsoleTarget::File(path) => (
                Box::new(
                    File::options()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(failed)?,
                ),
                None,
            ),
            ConsoleTarget::Unix(path) => {
                let listener = unix_listener(path)
                    .map_err(|err| failed(std::io::Error::other(err.to_string())))?;
                let client = SocketClient::default();
                (Box::new(client.clone()), Some((listener, client)))
            }
        };
        Ok(Console {
            output,
            listener,
            input: Arc::default(),
            bytes_out: 0,
            bytes_in: 0,
        })
    }

    /// For a socket console: accepts clients and queues what they type; `kick` makes the
    /// transport fill the receive queue (it is called without any device lock held).
    pub fn start_input(&mut self, kick: Arc<dyn Fn() + Send + Sync>) -> std::io::Result<()> {
        let Some((listener, client)) = self.listener.take() else {
            return Ok(());
        };
        let input = self.input.clone();
        std::thread::Builder::new()
            .name("console-accept".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let Ok(reader) = stream.try_clone() else {
                        continue;
                    };
                    client.attach(stream);
                    let input = input.clone();
                    let kick = kick.clone();
                    let _ = std::thread::Builder::new()
                        .name("console-input".into())
                        .spawn(move || queue_input(reader, &input, kick.as_ref()));
                }
            })?;
        Ok(())
    }

    /// Fills the guest's receive buffers from the pending input.
    fn receive(&mut self, queue: &mut Queue, memory: &GuestRam) -> Result<bool, VirtioError> {
        let Ok(mut input) = self.input.lock() else {
            return Ok(false);
        };
        let mut used_any = false;
        while !input.is_empty() {
            let Some(chain) = queue.iter(memory)?.next() else {
                break;
            };
            let head = chain.head_index();
            let mut written = 0u32;
            for descriptor in chain.writable() {
                let count = usize::try_from(descriptor.len())
                    .unwrap_or(0)
                    .min(input.len());
                let bytes: Vec<u8> = input.drain(..count).collect();
                memory.write_slice(&bytes, descriptor.addr())?;
                written += u32::try_from(count).unwrap_or(0);
                if input.is_empty() {
                    break;
                }
            }
            self.bytes_in += u64::from(written);
            queue.add_used(memory, head, written)?;
            used_any = true;
        }
        Ok(used_any)
    }
}

/// A client's bytes, queued for the guest; a full queue makes the client wait.
fn queue_input(
    mut reader: impl Read,
    input: &Mutex<VecDeque<u8>>,
    kick: &(dyn Fn() + Send + Sync),
) {
    let mut buffer = [0u8; 4096];
    loop {
        let count = match reader.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(count) => count,
        };
        loop {
            let Ok(mut pending) = input.lock() else {
                return;
            };
            if pending.len() + count <= MAX_PENDING_INPUT {
                pending.extend(&buffer[..count]);
                break;
            }
            drop(pending);
            kick();
            std::thread::sleep(Duration::from_millis(1));
        }
        kick();
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
        memory: &GuestRam,
    ) -> Result<bool, VirtioError> {
        if index == RX_QUEUE {
            return self.receive(queue, memory);
        }
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
        serde_json::json!({ "bytes_out": self.bytes_out, "bytes_in": self.bytes_in })
    }
}
