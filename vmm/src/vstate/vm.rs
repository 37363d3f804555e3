//! The KVM VM: memory slots, in-kernel irqchip (PIC + IOAPIC + LAPICs), PIT, and irq lines.

use kvm_bindings::{
    KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VmFd};
use std::os::fd::AsRawFd;

use crate::vstate::memory::GuestRam;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
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
    /// Opens the KVM device (normally /dev/kvm) and creates a VM. Register its memory next, then
    /// create the interrupt controllers (`create_irqchip_and_pit`).
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
        Ok(Vm { kvm, fd })
    }

    /// The in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT. Called after `register_memory`: once an
    /// irqchip exists, every memory-slot change waits for an SRCU grace period (about 5 ms here),
    /// while before it the first slot costs about 0.1 ms.
    pub fn create_irqchip_and_pit(&self) -> Result<(), VmError> {
        let fd = &self.fd;
        fd.create_irq_chip()
            .map_err(kvm_error("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_error("KVM_CREATE_PIT2"))?;
        Ok(())
    }

    /// Gives every region of `memory` to KVM as a memory slot.
    pub fn register_memory(&self, memory: &GuestRam) -> Result<(), VmError> {
        self.set_memory_slots(memory, 0)
    }

    /// Starts or stops KVM's logging of the pages the guest writes, on every slot (the base of
    /// live migration's pre-copy).
    pub fn set_dirty_logging(&self, memory: &GuestRam, on: bool) -> Result<(), VmError> {
        let flags = if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
        self.set_memory_slots(memory, flags)
    }

    /// The guest page frames written since logging started or since the last call, which
    /// clears them, in address order.
    pub fn dirty_pages(&self, memory: &GuestRam) -> Result<Vec<u64>, VmError> {
        let mut pages = Vec::new();
        for (slot, region) in memory.iter().enumerate() {
            let size = usize::try_from(region.len()).unwrap_or(usize::MAX);
            let bitmap = self
                .fd
                .get_dirty_log(u32::try_from(slot).unwrap_or(u32::MAX), size)
                .map_err(kvm_error("KVM_GET_DIRTY_LOG"))?;
            crate::vstate::memory::frames_of_bitmap(
                region.start_addr().0 >> crate::vstate::memory::PAGE_SHIFT,
                &bitmap,
                &mut pages,
            );
        }
        Ok(pages)
    }

    fn set_memory_slots(&self, memory: &GuestRam, flags: u32) -> Result<(), VmError> {
        for (slot, region) in memory.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::Kvm {
                    what: "guest memory host address",
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
            let table = kvm_userspace_memory_region {
                slot: u32::try_from(slot).unwrap_or(u32::MAX),
                flags,
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

    /// Hands KVM's teardown of this VM to a short-lived child process, so this process can exit
    /// (and its supervisor learn how the guest ended) at once: destroying the in-kernel PIT alone
    /// waits for RCU grace periods, 10-20 ms on these hosts. The child keeps only the VM fd and
    /// a pipe, waits for this process to exit (the pipe closes), then exits itself, which
    /// destroys the VM. If the fork fails, teardown simply happens at this process's exit.
    pub fn defer_teardown(&self) {
        let vm_fd = self.fd.as_raw_fd();
        let mut pipe = [0; 2];
        // SAFETY: pipe writes two fds into the array.
        if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
            return;
        }
        let [read_end, write_end] = pipe;
        // SAFETY: after fork the child calls only async-signal-safe functions (close, read, _exit).
        match unsafe { libc::fork() } {
            0 => {
                let keep = [vm_fd.min(read_end), vm_fd.max(read_end)];
                // SAFETY: closing descriptors the child does not need; close_range takes ranges.
                unsafe {
                    libc::syscall(libc::SYS_close_range, 0, keep[0] - 1, 0);
                    libc::syscall(libc::SYS_close_range, keep[0] + 1, keep[1] - 1, 0);
                    libc::syscall(libc::SYS_close_range, keep[1] + 1, u32::MAX, 0);
                    let mut byte = 0u8;
                    while libc::read(read_end, (&raw mut byte).cast(), 1) > 0 {}
                    libc::_exit(0);
                }
            }
            pid if pid > 0 => {
                // SAFETY: the read end belongs to the child now; the write end stays open until
                // this process exits, which is what the child waits for.
                unsafe { libc::close(read_end) };
                let _ = write_end;
            }
            _ => {
                // SAFETY: both fds are ours and unused.
                unsafe {
                    libc::close(read_end);
                    libc::close(write_end);
                }
            }
        }
    }

    /// The irqchip (both PICs, the IOAPIC), the PIT and the KVM clock, for a snapshot.
    pub fn save_state(&self) -> Result<crate::snapshot::VmState, VmError> {
        let chip = |chip_id| -> Result<kvm_bindings::kvm_irqchip, VmError> {
            let mut chip = kvm_bindings::kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut chip)
                .map_err(kvm_error("KVM_GET_IRQCHIP"))?;
            Ok(chip)
        };
        Ok(crate::snapshot::VmState {
            pic_master: chip(kvm_bindings::KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(kvm_bindings::KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(kvm_bindings::KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(kvm_error("KVM_GET_PIT2"))?,
            clock: self.fd.get_clock().map_err(kvm_error("KVM_GET_CLOCK"))?,
        })
    }

    pub fn restore_state(&self, state: &crate::snapshot::VmState) -> Result<(), VmError> {
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            self.fd
                .set_irqchip(chip)
                .map_err(kvm_error("KVM_SET_IRQCHIP"))?;
        }
        self.fd
            .set_pit2(&state.pit)
            .map_err(kvm_error("KVM_SET_PIT2"))?;
        // Only the clock value is restored; the flags KVM reported are not settable.
        let clock = kvm_bindings::kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        self.fd
            .set_clock(&clock)
            .map_err(kvm_error("KVM_SET_CLOCK"))
    }

    /// Every MSR index KVM can save.
    pub fn msr_indices(&self) -> Result<Vec<u32>, VmError> {
        Ok(self
            .kvm
            .get_msr_index_list()
            .map_err(kvm_error("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec())
    }

    /// Routes `eventfd` to the interrupt `gsi`.
    pub fn register_irqfd(&self, eventfd: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(eventfd, gsi)
            .map_err(kvm_error("KVM_IRQFD"))
    }
}
