//! Where things live in guest-physical memory. Low memory follows the PC conventions Linux expects;
//! the 32-bit MMIO hole holds the IOAPIC and the local APIC.

/// The GDT the vCPUs start with.
pub const BOOT_GDT_START: u64 = 0x500;
/// The (empty) IDT the vCPUs start with.
pub const BOOT_IDT_START: u64 = 0x520;
/// The Linux zero page (struct boot_params).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// The boot page tables: PML4, PDPT, then one page directory mapping the first 1 GiB.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// The stack pointer handed to the kernel entry (the kernel sets its own at once).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// End of conventional low RAM; above it, the EBDA and BIOS area are reserved.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables, in the BIOS area where a scan for "RSD PTR " also finds them.
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x100000;
/// Where kernels are loaded (1 MiB), as the boot protocol prefers.
pub const HIMEM_START: u64 = 0x100000;
/// The 32-bit MMIO hole: RAM stops here and continues at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const FOUR_GIB: u64 = 0x1_0000_0000;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM's private pages for the TSS and the identity map, just below the BIOS ROM.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// The RAM ranges (start, length) for `mem_bytes` of guest memory: below the MMIO hole, then above 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_HOLE_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (FOUR_GIB, mem_bytes - MMIO_HOLE_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_the_mmio_hole() {
        assert_eq!(ram_ranges(512 << 20), vec![(0, 512 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![
                (0, MMIO_HOLE_START),
                (FOUR_GIB, (4 << 30) - MMIO_HOLE_START)
            ]
        );
    }
}
