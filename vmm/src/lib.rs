//! vireo-vmm owns Vireo's hypervisor: one process per running guest on /dev/kvm (kvm-ioctls,
//! vm-memory, linux-loader, vm-superio, virtio-queue), its control socket and its saved state.
//! Layout follows docs/architecture.md: `vstate/` is the only caller of kvm-ioctls.
//! Today it holds the KVM probe that `capabilities` reports; booting guests arrives with issue #3.

pub mod vstate;
