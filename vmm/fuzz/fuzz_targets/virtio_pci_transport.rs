//! The virtio-pci transport and PCI configuration space under arbitrary guest accesses: a
//! sequence of (BAR or config, offset, width, value) reads and writes, notifications included.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vireo_vmm::devices::pci::PciDevice;
use vireo_vmm::devices::virtio::pci::VirtioPci;
use vireo_vmm::devices::virtio::rng::Rng;
use vm_memory::{GuestAddress, GuestMemoryMmap};

fuzz_target!(|data: &[u8]| {
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 10)]).expect("memory");
    let mut transport = VirtioPci::new(Box::new(Rng::default()), memory, Arc::new(|_, _| {}));
    for access in data.chunks_exact(8) {
        let width = [1usize, 2, 4, 8][usize::from(access[1] % 4)];
        let offset = u64::from(u16::from_le_bytes([access[2], access[3]])) % 0x9000;
        let value = &access[4..4 + width.min(4)];
        match access[0] % 4 {
            0 => transport.bar_write(0, offset, value),
            1 => {
                let mut out = vec![0u8; width];
                transport.bar_read(0, offset, &mut out);
            }
            2 => {
                transport.config_mut().write((offset % 0x1000) as u16, value);
                transport.config_written((offset % 0x1000) as u16);
            }
            _ => {
                let mut out = vec![0u8; width];
                transport.config().read((offset % 0x1000) as u16, &mut out);
            }
        }
    }
});
