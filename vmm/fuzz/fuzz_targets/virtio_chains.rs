//! Descriptor-chain walking and each device's request parsing: guest memory and the queue's
//! layout come from the fuzzer; every device model (blk rw/ro, rng, balloon, console, net)
//! processes the queue. Nothing may panic, and
//! all access stays inside guest memory (vm-memory checks every address).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vireo_vmm::devices::virtio::VirtioDevice;
use vireo_vmm::devices::virtio::balloon::Balloon;
use vireo_vmm::devices::virtio::block::{Block, ImageFormat};
use vireo_vmm::config::ConsoleTarget;
use vireo_vmm::devices::virtio::console::Console;
use vireo_vmm::devices::virtio::net::Net;
use vireo_vmm::devices::virtio::rng::Rng;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEMORY_BYTES: usize = 64 << 10;

fn disk() -> &'static std::path::Path {
    static DISK: OnceLock<std::path::PathBuf> = OnceLock::new();
    DISK.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("vireo-fuzz-disk-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 1 << 20]).expect("fuzz disk");
        path
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    // Header: device selector, queue size, three 16-bit ring offsets, avail index.
    let selector = data[0] % 6;
    let size = u16::from(data[1]).max(1).next_power_of_two().min(256);
    let offset = |at: usize| u64::from(u16::from_le_bytes([data[at], data[at + 1]])) % MEMORY_BYTES as u64;
    let (desc, avail, used) = (offset(2), offset(4), offset(6));
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEMORY_BYTES)]).expect("memory");
    let body = &data[8..];
    let _ = memory.write_slice(&body[..body.len().min(MEMORY_BYTES)], GuestAddress(0));
    let mut queue = Queue::new(256).expect("queue");
    queue.set_size(size);
    queue.set_desc_table_address(Some(desc as u32), Some(0));
    queue.set_avail_ring_address(Some(avail as u32), Some(0));
    queue.set_used_ring_address(Some(used as u32), Some(0));
    queue.set_ready(true);
    if !queue.is_valid(&memory) {
        return;
    }
    let mut device: Box<dyn VirtioDevice> = match selector {
        0 => Box::new(Block::open(disk(), ImageFormat::Raw, false, "fuzz").expect("disk")),
        1 => Box::new(Block::open(disk(), ImageFormat::Raw, true, "fuzz").expect("disk")),
        2 => Box::new(Rng::default()),
        3 => Box::new(Balloon::default()),
        4 => Box::new(Console::open(&ConsoleTarget::File("/dev/null".into())).expect("console")),
        // A tap this process creates (root and /dev/net/tun needed); frames go nowhere.
        _ => match Net::open(&format!("vfuzz{}", std::process::id() % 100_000), [0x52, 0x54, 0, 0, 0, 9]) {
            Ok(net) => Box::new(net),
            Err(_) => return,
        },
    };
    for index in 0..device.queue_max_sizes().len() {
        // Errors are expected (they put the device in NEEDS_RESET); panics are not.
        let _ = device.process_queue(index, &mut queue, &memory);
    }
});
