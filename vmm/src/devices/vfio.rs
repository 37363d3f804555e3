//! Host PCI devices assigned to the guest through VFIO (`--vfio SYSFS_PATH`, the device bound to
//! vfio-pci). The guest sees an emulated header with the device's identity and its memory BARs
//! (placed by our bus), then the device's own capability list, read-only but for MSI-X's enable
//! and mask bits; the device's command register follows the guest's. A BAR the kernel lets us mmap is mapped straight into the guest as a KVM memory slot;
//! the BAR holding the MSI-X table is trapped and forwarded, its table emulated. Each MSI-X
//! vector's eventfd is a KVM irqfd routed to the message the guest programmed (a masked vector
//! parks on an eventfd of its own and is delivered on unmask). All guest memory is mapped for
//! the device's DMA through the VFIO container (type-1 IOMMU).
//!
//! Not done: I/O-port BARs, INTx and plain MSI (a device must have MSI-X), writes to the device's
//! other capabilities and its extended (PCIe) configuration space, its expansion ROM; save and
//! restore.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::vstate::memory::GuestRam;
use kvm_bindings::{
    kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO, kvm_userspace_memory_region,
};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::pci::msix::{self, MsixTable};
use super::pci::{BarKind, PciConfig, PciDevice};
use crate::vstate::msi::MsiRoutes;
use crate::vstate::vm::Vm;

const COMMAND: u16 = 0x04;
const BAR_REGISTERS: std::ops::Range<u16> = 0x10..0x28;
const CAPABILITIES_POINTER: usize = 0x34;
const STATUS_CAPABILITIES: u16 = 1 << 4;
/// KVM memory slots for mapped BARs start here, above any guest RAM region's slot.
const FIRST_BAR_SLOT: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum VfioSetupError {
    #[error("KVM cannot create its VFIO device ({0}); this kernel lacks CONFIG_KVM_VFIO")]
    KvmDevice(kvm_ioctls::Error),
    #[error("host device {path}: {source}{hint}")]
    Vfio {
        path: String,
        source: VfioError,
        hint: &'static str,
    },
    #[error("host device {path}: {message}")]
    Device { path: String, message: String },
}

fn vfio_error(path: &Path) -> impl FnOnce(VfioError) -> VfioSetupError + '_ {
    move |source| {
        let hint = match &source {
            VfioError::OpenContainer(_) | VfioError::OpenGroup(..) => {
                " (the host needs an IOMMU and the vfio-pci driver, and the device bound to it: nodedev-detach)"
            }
            _ => "",
        };
        VfioSetupError::Vfio {
            path: path.display().to_string(),
            source,
            hint,
        }
    }
}

/// The VFIO container every assigned device of this VM joins, with KVM's VFIO device so KVM
/// knows the groups (it needs them for coherent DMA). Opening /dev/vfio/vfio is the first step
/// that needs the host's VFIO.
pub fn open_container(vm: &Vm, first_device: &Path) -> Result<Arc<VfioContainer>, VfioSetupError> {
    let mut request = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
        fd: 0,
        flags: 0,
    };
    let kvm_vfio = vm
        .fd
        .create_device(&mut request)
        .map_err(VfioSetupError::KvmDevice)?;
    let handle = Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio));
    VfioContainer::new(Some(handle))
        .map(Arc::new)
        .map_err(vfio_error(first_device))
}

/// Maps all of guest memory for device DMA, at guest-physical addresses (the IOVA the guest's
/// drivers program).
pub fn map_guest_memory(
    container: &VfioContainer,
    memory: &GuestRam,
    path: &Path,
) -> Result<(), VfioSetupError> {
    for region in memory.iter() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|err| VfioSetupError::Device {
                path: path.display().to_string(),
                message: format!("guest memory host address: {err}"),
            })?;
        let size = usize::try_from(region.len()).unwrap_or(usize::MAX);
        // SAFETY: the guest memory mapping lives as long as the VM (the process), and no Rust
        // reference is taken to the memory the device may write.
        unsafe { container.vfio_dma_map(region.start_addr().0, size, host) }
            .map_err(vfio_error(path))?;
    }
    Ok(())
}

/// One BAR mapped into the guest as a memory slot.
struct MappedBar {
    index: usize,
    host: *mut libc::c_void,
    size: u64,
    slot: u32,
    /// Guest address it is mapped at now.
    at: u64,
}

// SAFETY: the mapping is process-wide memory; the pointer is only handed to KVM.
unsafe impl Send for MappedBar {}

/// Where the device's MSI-X table and pending bits are.
#[derive(Debug, Clone, Copy)]
struct MsixLayout {
    capability: usize,
    table_bar: usize,
    table_offset: u64,
    pending_bar: usize,
    pending_offset: u64,
}

pub struct VfioPciDevice {
    path: PathBuf,
    device: VfioDevice,
    config: PciConfig,
    msix: MsixTable,
    layout: MsixLayout,
    /// Where a masked vector's interrupts wait.
    parked: Vec<EventFd>,
    routes: Arc<MsiRoutes>,
    vm: Arc<Vm>,
    mapped: Vec<MappedBar>,
    first_slot: u32,
}

/// The memory BARs of a device's configuration space: (index, 64-bit).
fn memory_bars(header: &[u8]) -> Vec<(usize, bool)> {
    let mut bars = Vec::new();
    let mut index = 0;
    while index < 6 {
        let at = 0x10 + index * 4;
        let low = u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
        let io = low & 1 != 0;
        let wide = !io && (low >> 1) & 3 == 2;
        if !io {
            bars.push((index, wide));
        }
        index += if wide { 2 } else { 1 };
    }
    bars
}

/// Where a BAR-resident structure is: BAR indicator and offset in that BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InBar {
    bar: u8,
    offset: u32,
}

impl InBar {
    fn from_register(value: u32) -> InBar {
        InBar {
            bar: u8::try_from(value & 7).unwrap_or(0),
            offset: value & !7,
        }
    }
}

/// The device's MSI-X capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DeviceMsix {
    /// Offset of the capability in configuration space.
    capability: usize,
    vectors: usize,
    table: InBar,
    pending: InBar,
}

/// The VFIO region of BAR `index`.
fn bar_region(index: usize) -> u32 {
    VFIO_PCI_BAR0_REGION_INDEX + u32::try_from(index).unwrap_or(0)
}

fn find_msix(header: &[u8]) -> Option<DeviceMsix> {
    let status = u16::from_le_bytes([header[6], header[7]]);
    if status & STATUS_CAPABILITIES == 0 {
        return None;
    }
    let mut at = usize::from(header[CAPABILITIES_POINTER] & 0xfc);
    let mut seen = 0;
    while at >= 0x40 && at + 12 <= header.len() && seen < 48 {
        if header[at] == msix::CAP_MSIX {
            let control = u16::from_le_bytes([header[at + 2], header[at + 3]]);
            let word = |offset: usize| {
                u32::from_le_bytes([
                    header[offset],
                    header[offset + 1],
                    header[offset + 2],
                    header[offset + 3],
                ])
            };
            return Some(DeviceMsix {
                capability: at,
                vectors: usize::from(control & 0x7ff) + 1,
                table: InBar::from_register(word(at + 4)),
                pending: InBar::from_register(word(at + 8)),
            });
        }
        at = usize::from(header[at + 1] & 0xfc);
        seen += 1;
    }
    None
}

impl VfioPciDevice {
    /// Opens the device at sysfs `path` into `container` and builds its guest-visible header.
    pub fn open(
        path: &Path,
        container: &Arc<VfioContainer>,
        vm: &Arc<Vm>,
        routes: &Arc<MsiRoutes>,
        first_slot: u32,
    ) -> Result<VfioPciDevice, VfioSetupError> {
        let device = VfioDevice::new(path, container.clone(), false).map_err(vfio_error(path))?;
        let failed = |message: String| VfioSetupError::Device {
            path: path.display().to_string(),
            message,
        };
        let mut header = [0u8; 256];
        device.region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut header, 0);
        let word = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
        if word(0) == 0xffff {
            return Err(failed("its configuration space cannot be read".into()));
        }
        let class = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        let mut config = PciConfig::new(word(0), word(2), class, word(0x2c), word(0x2e));
        for (index, wide) in memory_bars(&header) {
            let size = device.get_region_size(bar_region(index));
            if size == 0 {
                continue;
            }
            let size = size.max(0x1000).next_power_of_two();
            let kind = if wide {
                BarKind::Memory64
            } else {
                BarKind::Memory32
            };
            config.add_bar(index, size, kind);
        }
        let Some(found) = find_msix(&header) else {
            return Err(failed(
                "it has no MSI-X capability; vireo-vmm assigns MSI-X devices only (INTx and MSI are not wired)".into(),
            ));
        };
        let (table_bar, pending_bar) =
            (usize::from(found.table.bar), usize::from(found.pending.bar));
        if config.bar_size(table_bar).is_none() || config.bar_size(pending_bar).is_none() {
            return Err(failed(
                "its MSI-X table is in a BAR it does not have".into(),
            ));
        }
        let msix = MsixTable::new(found.vectors);
        // The guest sees the device's own capabilities where the device has them (its driver
        // may need any of them); of MSI-X only the enable and function-mask bits are its to set,
        // and they act on our table.
        let capability = found.capability;
        let mut adopted = header;
        adopted[capability + 3] &= !0xc0;
        config.adopt_capabilities(&adopted, &[(capability + 3, 0xc0)]);
        let parked = (0..found.vectors)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| failed(format!("eventfd: {err}")))?;
        Ok(VfioPciDevice {
            path: path.to_path_buf(),
            device,
            config,
            msix,
            layout: MsixLayout {
                capability,
                table_bar,
                table_offset: u64::from(found.table.offset),
                pending_bar,
                pending_offset: u64::from(found.pending.offset),
            },
            parked,
            routes: routes.clone(),
            vm: vm.clone(),
            mapped: Vec::new(),
            first_slot,
        })
    }

    /// KVM memory slots this device may use for its BARs.
    pub const SLOTS_PER_DEVICE: u32 = 6;

    pub fn first_slot(device_index: u32) -> u32 {
        FIRST_BAR_SLOT + device_index * Self::SLOTS_PER_DEVICE
    }

    /// Maps every mmap-able BAR (other than the MSI-X one) at the address the bus gave it, and
    /// lets the device decode them as the bus has enabled.
    pub fn map_bars(&mut self) -> Result<(), VfioSetupError> {
        self.config_written(COMMAND);
        for index in 0..6 {
            let Some(size) = self.config.bar_size(index) else {
                continue;
            };
            let region = bar_region(index);
            let mappable = self.device.get_region_flags(region) & VFIO_REGION_INFO_FLAG_MMAP != 0;
            if !mappable || index == self.layout.table_bar || index == self.layout.pending_bar {
                continue;
            }
            let region_size = self.device.get_region_size(region);
            let offset = self.device.get_region_offset(region);
            // SAFETY: a fresh shared mapping of the device's region; nothing else aliases it.
            let host = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    usize::try_from(region_size).unwrap_or(0),
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    std::os::fd::AsRawFd::as_raw_fd(&self.device),
                    libc::off_t::try_from(offset).unwrap_or(0),
                )
            };
            if host == libc::MAP_FAILED {
                return Err(VfioSetupError::Device {
                    path: self.path.display().to_string(),
                    message: format!("mmap of BAR {index}: {}", std::io::Error::last_os_error()),
                });
            }
            let mut bar = MappedBar {
                index,
                host,
                size: region_size.min(size),
                slot: self.first_slot + region,
                at: 0,
            };
            let at = self.config.bar_address(index).unwrap_or(0);
            self.set_slot(&mut bar, at)?;
            self.mapped.push(bar);
        }
        Ok(())
    }

    /// Puts `bar`'s KVM slot at guest address `at` (0: removes it).
    fn set_slot(&self, bar: &mut MappedBar, at: u64) -> Result<(), VfioSetupError> {
        let region = kvm_userspace_memory_region {
            slot: bar.slot,
            flags: 0,
            guest_phys_addr: at,
            memory_size: if at == 0 { 0 } else { bar.size },
            userspace_addr: bar.host as u64,
        };
        if bar.at != 0 {
            let removal = kvm_userspace_memory_region {
                memory_size: 0,
                guest_phys_addr: bar.at,
                ..region
            };
            // SAFETY: deleting a slot this device made.
            let _ = unsafe { self.vm.fd.set_user_memory_region(removal) };
        }
        bar.at = at;
        if at == 0 {
            return Ok(());
        }
        // SAFETY: the BAR mapping lives as long as the process and lies in the PCI hole, where
        // no RAM slot is.
        unsafe { self.vm.fd.set_user_memory_region(region) }.map_err(|err| VfioSetupError::Device {
            path: self.path.display().to_string(),
            message: format!("mapping BAR {} at {at:#x}: {err}", bar.index),
        })
    }

    fn msix_control(&self) -> u16 {
        self.config.u16_at(self.layout.capability + 2)
    }

    /// Gives the device one eventfd per vector: the KVM irqfd of the vector's message when it
    /// can be delivered, its parking eventfd otherwise; then delivers what was parked and is
    /// deliverable now.
    fn program_vectors(&mut self) {
        let control = self.msix_control();
        if control & msix::CONTROL_ENABLE == 0 {
            let _ = self.device.disable_msix();
            return;
        }
        let function_masked = control & msix::CONTROL_MASK != 0;
        let mut owned = Vec::new();
        let mut deliverable = Vec::new();
        for (index, entry) in self.msix.entries.iter().enumerate() {
            let open = !function_masked && !entry.masked;
            match open
                .then(|| self.routes.irqfd(entry.address, entry.data))
                .flatten()
            {
                Some(irqfd) => {
                    owned.push(Some(irqfd));
                    deliverable.push(index);
                }
                None => owned.push(None),
            }
        }
        let fds: Vec<&EventFd> = owned
            .iter()
            .zip(&self.parked)
            .map(|(irqfd, parked)| irqfd.as_ref().unwrap_or(parked))
            .collect();
        if let Err(err) = self.device.enable_msix(fds) {
            eprintln!("vireo-vmm: {}: MSI-X: {err}", self.path.display());
        }
        for index in deliverable {
            if self.parked[index].read().is_ok() {
                let entry = self.msix.entries[index];
                self.routes.send(entry.address, entry.data);
            }
        }
    }

    fn table_range(&self) -> std::ops::Range<u64> {
        self.layout.table_offset..self.layout.table_offset + self.msix.table_size()
    }
}

impl PciDevice for VfioPciDevice {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn config_written(&mut self, offset: u16) {
        if (COMMAND..COMMAND + 2).contains(&offset) {
            let command = self.config.u16_at(usize::from(COMMAND));
            self.device.region_write(
                VFIO_PCI_CONFIG_REGION_INDEX,
                &command.to_le_bytes(),
                u64::from(COMMAND),
            );
        }
        if BAR_REGISTERS.contains(&offset) {
            let mut mapped = std::mem::take(&mut self.mapped);
            for bar in &mut mapped {
                let now = self.config.decoded_bar_address(bar.index).unwrap_or(0);
                if now != bar.at
                    && let Err(err) = self.set_slot(bar, now)
                {
                    eprintln!("vireo-vmm: {err}");
                }
            }
            self.mapped = mapped;
        }
        let capability = u16::try_from(self.layout.capability).unwrap_or(u16::MAX);
        if (capability..capability + 4).contains(&offset) {
            self.program_vectors();
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar == self.layout.table_bar && self.table_range().contains(&offset) {
            self.msix.read(offset - self.layout.table_offset, data);
        } else {
            if bar == self.layout.pending_bar && offset >= self.layout.pending_offset {
                let pending = self.parked.iter().map(|fd| {
                    // A parked vector with an interrupt waiting reads as pending; the count is
                    // put back so unmasking still delivers it.
                    fd.read().is_ok_and(|count| fd.write(count).is_ok())
                });
                for (index, waiting) in pending.enumerate() {
                    self.msix.pending[index] = waiting;
                }
            }
            self.device.region_read(bar_region(bar), data, offset);
            if bar == self.layout.pending_bar && offset >= self.layout.pending_offset {
                self.msix
                    .read_pending(offset - self.layout.pending_offset, data);
            }
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar == self.layout.table_bar && self.table_range().contains(&offset) {
            if self
                .msix
                .write(offset - self.layout.table_offset, data)
                .is_some()
            {
                self.program_vectors();
            }
        } else {
            self.device.region_write(bar_region(bar), data, offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_with_msix() -> [u8; 256] {
        let mut header = [0u8; 256];
        header[0..4].copy_from_slice(&[0x86, 0x80, 0x3e, 0x15]);
        // BAR0: 64-bit memory; BAR2: I/O; BAR3: 32-bit memory.
        header[0x10] = 0x4;
        header[0x18] = 0x1;
        header[0x1c] = 0x0;
        header[6..8].copy_from_slice(&STATUS_CAPABILITIES.to_le_bytes());
        header[CAPABILITIES_POINTER] = 0x40;
        // A power-management capability, then MSI-X: 5 vectors, table in BAR3 at 0x2000, PBA in
        // BAR3 at 0x3000.
        header[0x40] = 0x01;
        header[0x41] = 0x50;
        header[0x50] = msix::CAP_MSIX;
        header[0x52..0x54].copy_from_slice(&4u16.to_le_bytes());
        header[0x54..0x58].copy_from_slice(&(0x2000u32 | 3).to_le_bytes());
        header[0x58..0x5c].copy_from_slice(&(0x3000u32 | 3).to_le_bytes());
        header
    }

    #[test]
    fn memory_bars_skip_io_bars_and_the_upper_half_of_wide_ones() {
        assert_eq!(
            memory_bars(&header_with_msix()),
            vec![(0, true), (3, false), (4, false), (5, false)]
        );
    }

    #[test]
    fn the_msix_capability_is_found_along_the_capability_list() {
        assert_eq!(
            find_msix(&header_with_msix()),
            Some(DeviceMsix {
                capability: 0x50,
                vectors: 5,
                table: InBar {
                    bar: 3,
                    offset: 0x2000
                },
                pending: InBar {
                    bar: 3,
                    offset: 0x3000
                },
            })
        );
        let mut none = header_with_msix();
        none[0x50] = 0x05;
        assert_eq!(find_msix(&none), None);
    }

    #[test]
    fn setting_up_vfio_stops_at_the_first_step_that_needs_dev_vfio_when_the_host_has_none() {
        if Path::new("/dev/vfio/vfio").exists() {
            eprintln!("skipped: this host has /dev/vfio/vfio; the test needs a host without VFIO");
            return;
        }
        let vm = match Vm::new(Path::new("/dev/kvm")) {
            Ok(vm) => vm,
            Err(err) => {
                eprintln!("skipped: the test needs /dev/kvm ({err})");
                return;
            }
        };
        let device = Path::new("/sys/bus/pci/devices/0000:00:03.0");
        let Err(err) = open_container(&vm, device) else {
            panic!("a VFIO container opened without /dev/vfio/vfio");
        };
        let text = err.to_string();
        assert!(
            text.contains("/dev/vfio/vfio") && text.contains("No such file"),
            "{text}"
        );
        assert!(
            text.contains("0000:00:03.0") && text.contains("IOMMU"),
            "{text}"
        );
    }
}
