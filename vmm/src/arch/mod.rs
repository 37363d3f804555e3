//! x86_64 boot: guest memory layout, the Linux boot protocol (boot_params, e820), page tables and
//! the registers a 64-bit kernel entry expects, CPUID and MSRs, and the ACPI tables.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod regs;
