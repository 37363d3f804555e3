//! The x86_64 Linux boot protocol, 64-bit entry: load the kernel (ELF vmlinux or bzImage) and
//! initrd, write the command line and boot_params (setup header, e820 map, initrd, RSDP).

use std::fs::File;
use std::path::Path;

use crate::vstate::memory::GuestRam;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{KernelLoader, KernelLoaderResult, bzimage::BzImage, elf::Elf};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{
    ACPI_START, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIMEM_START, MMIO_HOLE_START,
    ZERO_PAGE_START, ram_ranges,
};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        path: String,
        source: std::io::Error,
    },
    #[error("kernel {path} is neither an ELF vmlinux nor a bzImage: {elf}; {bzimage}")]
    KernelFormat {
        path: String,
        elf: String,
        bzimage: String,
    },
    #[error("cannot read initrd {path}: {source}")]
    ReadInitrd {
        path: String,
        source: std::io::Error,
    },
    #[error("initrd of {size} bytes does not fit in guest memory below {limit:#x}")]
    InitrdTooLarge { size: u64, limit: u64 },
    #[error("command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("writing {what} to guest memory: {source}")]
    GuestWrite {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
}

/// What the boot left for the vCPUs.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// Where the BSP starts, in 64-bit mode.
    pub entry: u64,
    pub zero_page: u64,
}

/// The magic of a bzImage setup header ("HdrS") and the loader id Linux assigns to undefined loaders.
const HDRS_MAGIC: u32 = 0x5372_6448;
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// bzImage: the 64-bit entry is 0x200 past the protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
/// initrd must stay below this on kernels that do not say otherwise.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

fn load_kernel(mem: &GuestRam, path: &Path) -> Result<(KernelLoaderResult, u64), BootError> {
    let display = path.display().to_string();
    let open = || {
        File::open(path).map_err(|source| BootError::OpenKernel {
            path: display.clone(),
            source,
        })
    };
    let elf_error = match Elf::load(mem, None, &mut open()?, Some(GuestAddress(HIMEM_START))) {
        Ok(result) => {
            let entry = result.kernel_load.0;
            return Ok((result, entry));
        }
        Err(err) => err.to_string(),
    };
    match BzImage::load(mem, None, &mut open()?, Some(GuestAddress(HIMEM_START))) {
        Ok(result) => {
            let entry = result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET;
            Ok((result, entry))
        }
        Err(err) => Err(BootError::KernelFormat {
            path: display,
            elf: elf_error,
            bzimage: err.to_string(),
        }),
    }
}

/// The e820 map: low RAM, the reserved EBDA/BIOS area (where the ACPI tables are), then RAM
/// from 1 MiB (and above 4 GiB when the guest is larger than the MMIO hole).
pub fn e820_map(mem_bytes: u64) -> Vec<boot_e820_entry> {
    let mut map = vec![
        boot_e820_entry {
            addr: 0,
            size: EBDA_START,
            r#type: E820_RAM,
        },
        boot_e820_entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            r#type: E820_RESERVED,
        },
    ];
    for (start, len) in ram_ranges(mem_bytes) {
        let ram_start = start.max(HIMEM_START);
        let end = start + len;
        if end > ram_start {
            map.push(boot_e820_entry {
                addr: ram_start,
                size: end - ram_start,
                r#type: E820_RAM,
            });
        }
    }
    // Linux trusts the MCFG's ECAM window only when firmware reserves it.
    map.push(boot_e820_entry {
        addr: crate::devices::pci::ECAM_START,
        size: crate::devices::pci::ECAM_SIZE,
        r#type: E820_RESERVED,
    });
    map
}

/// Loads kernel, initrd and command line, and writes boot_params. `mem_bytes` is the guest's RAM.
pub fn load(
    mem: &GuestRam,
    mem_bytes: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<BootInfo, BootError> {
    let (kernel_result, entry) = load_kernel(mem, kernel)?;
    let mut params = boot_params::default();
    if let Some(header) = kernel_result.setup_header {
        params.hdr = header;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.kernel_alignment = 0x0100_0000;

    if cmdline.len() + 1 > CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    let mut cmdline_bytes = cmdline.as_bytes().to_vec();
    cmdline_bytes.push(0);
    mem.write_slice(&cmdline_bytes, GuestAddress(CMDLINE_START))
        .map_err(|source| BootError::GuestWrite {
            what: "command line",
            source,
        })?;
    params.hdr.cmd_line_ptr = u32::try_from(CMDLINE_START).unwrap_or_default();
    params.hdr.cmdline_size = u32::try_from(cmdline.len()).unwrap_or_default();

    if let Some(initrd) = initrd {
        let data = std::fs::read(initrd).map_err(|source| BootError::ReadInitrd {
            path: initrd.display().to_string(),
            source,
        })?;
        let size = data.len() as u64;
        let kernel_max = u64::from(params.hdr.initrd_addr_max);
        let limit = if kernel_max == 0 {
            DEFAULT_INITRD_ADDR_MAX
        } else {
            kernel_max
        }
        .min(mem_bytes.min(MMIO_HOLE_START) - 1);
        // Highest page-aligned address that fits, above the kernel.
        let address = (limit + 1)
            .checked_sub(size)
            .map(|top| top & !0xfff)
            .filter(|addr| *addr >= kernel_result.kernel_end);
        let Some(address) = address else {
            return Err(BootError::InitrdTooLarge { size, limit });
        };
        mem.write_slice(&data, GuestAddress(address))
            .map_err(|source| BootError::GuestWrite {
                what: "initrd",
                source,
            })?;
        params.hdr.ramdisk_image = u32::try_from(address).unwrap_or_default();
        params.hdr.ramdisk_size = u32::try_from(size).unwrap_or_default();
    }

    let map = e820_map(mem_bytes);
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = *entry;
    }
    params.e820_entries = u8::try_from(map.len()).unwrap_or_default();
    params.acpi_rsdp_addr = ACPI_START;

    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|source| BootError::GuestWrite {
            what: "boot_params",
            source,
        })?;
    Ok(BootInfo {
        entry,
        zero_page: ZERO_PAGE_START,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::FOUR_GIB;

    #[test]
    fn e820_covers_ram_and_reserves_the_bios_area() {
        let map = e820_map(256 << 20);
        let ram: u64 = map
            .iter()
            .filter(|entry| entry.r#type == E820_RAM)
            .map(|entry| entry.size)
            .sum();
        assert_eq!(ram, (256 << 20) - (HIMEM_START - EBDA_START));
        assert_eq!(map.len(), 4);
        let map = e820_map(5 << 30);
        assert_eq!(map.len(), 5);
        let high = map[3];
        assert_eq!(
            (high.addr, high.size),
            (FOUR_GIB, (5 << 30) - MMIO_HOLE_START)
        );
    }
}
