//! The KVM VM: memory slots, in-kernel irqchip (PIC + IOAPIC + LAPICs), PIT, and irq lines.

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open KVM: {0}")]
    OpenKvm(String),
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

fn kvm_error(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

pub struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
}

impl Vm {
    /// Opens the KVM device (normally /dev/kvm) and creates a VM with an in-kernel irqchip and PIT.
    pub fn new(kvm_device: &std::path::Path) -> Result<Vm, VmError> {
        let device = kvm_device.display();
        let path = std::ffi::CString::new(kvm_device.as_os_str().as_encoded_bytes())
            .map_err(|_| VmError::OpenKvm(format!("{device}: path contains a NUL byte")))?;
        let kvm = Kvm::new_with_path(path).map_err(|err| {
            VmError::OpenKvm(match err.errno() {
                libc::ENOENT => format!("{device} does not exist (is KVM enabled in this kernel?)"),
                libc::EACCES | libc::EPERM => {
                    format!("{device}: permission denied (run as root or join its group)")
                }
                _ => format!("{device}: {err}"),
            })
        })?;
        let fd = kvm.create_vm().map_err(kvm_error("KVM_CREATE_VM"))?;
        fd.set_tss_address(usize::try_from(KVM_TSS_ADDRESS).unwrap_or_default())
            .map_err(kvm_error("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_error("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.create_irq_chip()
            .map_err(kvm_error("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_error("KVM_CREATE_PIT2"))?;
        Ok(Vm { kvm, fd })
    }

    /// Gives every region of `memory` to KVM as a memory slot.
    pub fn register_memory(&self, memory: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in memory.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::Kvm {
                    what: "guest memory host address",
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
            let table = kvm_userspace_memory_region {
                slot: u32::try_from(slot).unwrap_or(u32::MAX),
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the mapping stays alive for the whole life of the VM (the memory object is
            // owned by the VMM until the process exits) and does not overlap another slot.
            unsafe { self.fd.set_user_memory_region(table) }
                .map_err(kvm_error("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// Routes `eventfd` to the interrupt `gsi`.
    pub fn register_irqfd(&self, eventfd: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(eventfd, gsi)
            .map_err(kvm_error("KVM_IRQFD"))
    }
}
