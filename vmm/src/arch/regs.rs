//! The architectural state a 64-bit Linux entry expects: flat GDT, identity-mapped page tables for
//! the first 1 GiB, long mode, RSI pointing at boot_params; plus FPU, MSR and LAPIC defaults.

use crate::vstate::memory::GuestRam;
use kvm_bindings::{
    Msrs, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
};

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing boot page tables or GDT: {0}")]
    GuestWrite(#[from] vm_memory::GuestMemoryError),
    #[error("building the MSR list: {0}")]
    Msrs(String),
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// GDT entries: null, 64-bit code, data, TSS.
const GDT: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x008f_8b00_0000_ffff,
];

fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bits = |shift: u32, mask: u64| u8::try_from((entry >> shift) & mask).unwrap_or(0);
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: u32::try_from((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)).unwrap_or(u32::MAX),
        selector: u16::from(index) * 8,
        type_: bits(40, 0xf),
        present: bits(47, 1),
        dpl: bits(45, 0x3),
        db: bits(54, 1),
        s: bits(44, 1),
        l: bits(53, 1),
        g: bits(55, 1),
        avl: bits(52, 1),
        unusable: u8::from(bits(47, 1) == 0),
        padding: 0,
    }
}

/// Writes the GDT and the identity page tables (2 MiB pages, first 1 GiB) into guest memory.
pub fn write_boot_tables(mem: &GuestRam) -> Result<(), RegsError> {
    for (index, entry) in GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + (index as u64) * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))?;
    for index in 0..512u64 {
        // Present, writable, 2 MiB page.
        mem.write_obj((index << 21) | 0x83, GuestAddress(PDE_START + index * 8))?;
    }
    Ok(())
}

/// Special registers for long mode with the boot GDT and page tables.
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(GDT[1], 1);
    let data = segment_from_gdt(GDT[2], 2);
    let tss = segment_from_gdt(GDT[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = u16::try_from(std::mem::size_of_val(&GDT) - 1).unwrap_or(u16::MAX);
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = u16::try_from(std::mem::size_of::<u64>() - 1).unwrap_or(u16::MAX);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 = X86_CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

/// General registers at the 64-bit entry: RIP at the entry, RSI at boot_params.
pub fn boot_regs(entry: u64, zero_page: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: zero_page,
        ..Default::default()
    }
}

pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 0x1;

/// MSRs every vCPU starts with.
pub fn boot_msrs() -> Result<Msrs, RegsError> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    Msrs::from_entries(&[
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
    ])
    .map_err(|err| RegsError::Msrs(format!("{err:?}")))
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_register(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|index| lapic.regs[offset + index].cast_unsigned());
    u32::from_le_bytes(bytes)
}

fn set_lapic_register(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (index, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + index] = byte.cast_signed();
    }
}

/// LINT0 as ExtINT (the PIC) and LINT1 as NMI, as a PC BIOS leaves them.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let delivery = |value: u32, mode: u32| (value & !0x700) | (mode << 8);
    let lvt0 = lapic_register(lapic, APIC_LVT0);
    set_lapic_register(lapic, APIC_LVT0, delivery(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_register(lapic, APIC_LVT1);
    set_lapic_register(lapic, APIC_LVT1, delivery(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_segments_decode() {
        let code = segment_from_gdt(GDT[1], 1);
        assert_eq!(
            (code.selector, code.l, code.present, code.type_, code.g),
            (8, 1, 1, 0xb, 1)
        );
        let data = segment_from_gdt(GDT[2], 2);
        assert_eq!(
            (data.selector, data.db, data.type_, data.limit),
            (16, 1, 3, 0xfffff)
        );
    }

    #[test]
    fn lint_modes() {
        let mut lapic = kvm_lapic_state::default();
        set_lint(&mut lapic);
        assert_eq!(
            lapic_register(&lapic, APIC_LVT0) >> 8 & 0x7,
            APIC_MODE_EXTINT
        );
        assert_eq!(lapic_register(&lapic, APIC_LVT1) >> 8 & 0x7, APIC_MODE_NMI);
    }
}
