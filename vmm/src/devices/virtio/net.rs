//! virtio-net on a tap device (no vhost-net here: the data path is in userspace). The VMM attaches
//! to a tap by name with a virtio-net header (IFF_VNET_HDR), so frames pass between tap and guest
//! buffers as they are. Transmit happens on the vCPU that notifies; a reader thread takes one
//! frame at a time from the tap and hands it to the receive queue, waiting while the guest has no
//! buffer posted. Counters for `domifstat`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex};

use crate::vstate::memory::GuestRam;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;

use super::{TYPE_NET, VIRTIO_F_VERSION_1, VirtioDevice, VirtioError, read_config_bytes};

const QUEUE_SIZES: [u16; 2] = [256, 256];
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
const F_MAC: u64 = 1 << 5;
/// The virtio-net header with VERSION_1 (num_buffers included).
const VNET_HDR_BYTES: usize = 12;
/// A frame of the largest standard size plus its header.
const MAX_FRAME_BYTES: usize = VNET_HDR_BYTES + 65_550;

/// Counters for `domifstat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("--net tap={name}: {message}")]
    Tap { name: String, message: String },
}

/// What the reader thread and the device share.
#[derive(Default)]
struct Inbox {
    /// A frame (with its virtio-net header) read from the tap, waiting for a guest buffer.
    frame: Mutex<Option<Vec<u8>>>,
    delivered: Condvar,
}

pub struct Net {
    tap: File,
    mac: [u8; 6],
    inbox: Arc<Inbox>,
    stats: Arc<Mutex<NetStats>>,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// Opens (or attaches to) tap `name` with a virtio-net header of VNET_HDR_BYTES.
fn open_tap(name: &str) -> Result<File, NetError> {
    let tap_error = |message: String| NetError::Tap {
        name: name.to_string(),
        message,
    };
    if name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name.contains('/')
        || name.bytes().any(|b| b.is_ascii_whitespace())
    {
        return Err(tap_error("not a valid interface name".into()));
    }
    let tun = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|err| tap_error(format!("/dev/net/tun: {err}")))?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte.cast_signed();
    }
    request.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    // SAFETY: TUNSETIFF reads and writes the ifreq we own.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut request) } < 0 {
        return Err(tap_error(format!(
            "TUNSETIFF: {}",
            std::io::Error::last_os_error()
        )));
    }
    let header_bytes: libc::c_int = 12;
    // SAFETY: TUNSETVNETHDRSZ reads one int.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETVNETHDRSZ, &header_bytes) } < 0 {
        return Err(tap_error(format!(
            "TUNSETVNETHDRSZ: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(tun)
}

impl Net {
    pub fn open(tap_name: &str, mac: [u8; 6]) -> Result<Net, NetError> {
        let tap = open_tap(tap_name)?;
        Ok(Net {
            tap,
            mac,
            inbox: Arc::new(Inbox::default()),
            stats: Arc::new(Mutex::new(NetStats::default())),
        })
    }

    /// The tap itself (benchmarks compare against writing to it directly).
    pub fn tap_file(&self) -> &File {
        &self.tap
    }

    /// Starts the thread that reads frames from the tap. `kick` makes the transport process the
    /// receive queue (it is called without any device lock held).
    pub fn start_reader(&self, kick: Arc<dyn Fn() + Send + Sync>) -> std::io::Result<()> {
        let mut tap = self.tap.try_clone()?;
        let inbox = self.inbox.clone();
        let stats = self.stats.clone();
        std::thread::Builder::new()
            .name("net-rx".into())
            .spawn(move || {
                let mut buffer = vec![0u8; MAX_FRAME_BYTES];
                loop {
                    let length = match tap.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(length) => length,
                    };
                    if length <= VNET_HDR_BYTES {
                        if let Ok(mut stats) = stats.lock() {
                            stats.rx_errors += 1;
                        }
                        continue;
                    }
                    let Ok(mut slot) = inbox.frame.lock() else {
                        return;
                    };
                    *slot = Some(buffer[..length].to_vec());
                    drop(slot);
                    kick();
                    // Wait until a guest buffer took it; the tap queues further frames meanwhile.
                    let Ok(mut slot) = inbox.frame.lock() else {
                        return;
                    };
                    while slot.is_some() {
                        slot = match inbox.delivered.wait(slot) {
                            Ok(slot) => slot,
                            Err(_) => return,
                        };
                    }
                }
            })?;
        Ok(())
    }

    fn receive(&mut self, queue: &mut Queue, memory: &GuestRam) -> Result<bool, VirtioError> {
        let Ok(mut slot) = self.inbox.frame.lock() else {
            return Ok(false);
        };
        let Some(frame) = slot.as_mut() else {
            return Ok(false);
        };
        // num_buffers (header bytes 10-11): every frame fits one buffer (no MRG_RXBUF).
        frame[10..12].copy_from_slice(&1u16.to_le_bytes());
        let frame = &*frame;
        let Some(chain) = queue.iter(memory)?.next() else {
            return Ok(false);
        };
        let head = chain.head_index();
        let mut written = 0usize;
        for descriptor in chain.writable() {
            if written == frame.len() {
                break;
            }
            let room = usize::try_from(descriptor.len()).unwrap_or(0);
            let part = &frame[written..frame.len().min(written + room)];
            memory.write_slice(part, descriptor.addr())?;
            written += part.len();
        }
        let mut stats = self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if written < frame.len() {
            // The guest's buffer was too small: the frame is dropped, the buffer returned empty.
            stats.rx_dropped += 1;
            queue.add_used(memory, head, 0)?;
        } else {
            stats.rx_packets += 1;
            stats.rx_bytes += (frame.len() - VNET_HDR_BYTES) as u64;
            queue.add_used(memory, head, u32::try_from(written).unwrap_or(u32::MAX))?;
        }
        *slot = None;
        self.inbox.delivered.notify_all();
        Ok(true)
    }

    fn transmit(&mut self, queue: &mut Queue, memory: &GuestRam) -> Result<bool, VirtioError> {
        let mut used_any = false;
        while let Some(chain) = queue.iter(memory)?.next() {
            let head = chain.head_index();
            let mut packet = Vec::new();
            for descriptor in chain.readable() {
                let length = usize::try_from(descriptor.len()).unwrap_or(0);
                if packet.len() + length > MAX_FRAME_BYTES {
                    return Err(VirtioError::BadChain(format!(
                        "a transmitted frame exceeds {MAX_FRAME_BYTES} bytes"
                    )));
                }
                let start = packet.len();
                packet.resize(start + length, 0);
                memory.read_slice(&mut packet[start..], descriptor.addr())?;
            }
            let mut stats = self
                .stats
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if packet.len() <= VNET_HDR_BYTES {
                stats.tx_errors += 1;
            } else {
                // A tap takes one whole frame per write, or none.
                match self.tap.write(&packet) {
                    Ok(written) if written == packet.len() => {
                        stats.tx_packets += 1;
                        stats.tx_bytes += (packet.len() - VNET_HDR_BYTES) as u64;
                    }
                    Ok(_) => stats.tx_errors += 1,
                    Err(_) => stats.tx_dropped += 1,
                }
            }
            queue.add_used(memory, head, 0)?;
            used_any = true;
        }
        Ok(used_any)
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        TYPE_NET
    }

    fn pci_class(&self) -> u32 {
        0x0200_0000
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6], status u16 (unused: no STATUS feature), max_virtqueue_pairs u16.
        let mut config = [0u8; 10];
        config[..6].copy_from_slice(&self.mac);
        config[8] = 1;
        read_config_bytes(&config, offset, data);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        memory: &GuestRam,
    ) -> Result<bool, VirtioError> {
        match index {
            RX_QUEUE => self.receive(queue, memory),
            TX_QUEUE => self.transmit(queue, memory),
            _ => Ok(false),
        }
    }

    fn statistics(&self) -> serde_json::Value {
        serde_json::to_value(
            *self
                .stats
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .unwrap_or_default()
    }
}
