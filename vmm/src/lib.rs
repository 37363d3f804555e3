//! vireo-vmm owns Vireo's hypervisor: one process per running guest on /dev/kvm (kvm-ioctls,
//! vm-memory, linux-loader, vm-superio), its control socket and, later, its saved state.
//! Modules: `arch/` (memory layout, boot protocol, registers, CPUID, ACPI), `vstate/` (the only
//! kvm-ioctls caller: VM, memory, vCPUs, the KVM probe), `devices/`, `control/` (the socket),
//! `config` (what was asked), `builder` (builds the VM and runs its event loop), `snapshot`
//! (save and restore) and `migration` (live migration over TCP).

pub mod arch;
pub mod builder;
pub mod config;
pub mod control;
pub mod devices;
pub mod migration;
pub mod snapshot;
pub mod vstate;
