//! Everything that talks to KVM: the VM (memory slots, irqchip, PIT, irqfds), the vCPUs and their
//! run loops. No other module calls kvm-ioctls.

pub mod memory;
pub mod msi;
pub mod probe;
pub mod vcpu;
pub mod vm;

use crate::devices::GuestRequest;

/// What the VMM's event loop reacts to.
#[derive(Debug)]
pub enum VmEvent {
    /// A device acted for the guest (power-off, reset).
    Guest(GuestRequest),
    /// A vCPU stopped the VM: triple fault, emulation failure, a KVM error.
    Crash { vcpu: u8, reason: String },
    /// A request from the control socket, with where to send the reply.
    Control(
        crate::control::Request,
        std::sync::mpsc::Sender<crate::control::Reply>,
    ),
    /// The pre-copy is done: pause, send the rest, and hand over.
    Switchover(Box<crate::migration::Switchover>),
    /// An incoming VM arrived whole, or could not.
    Arrived(Result<Box<crate::migration::Arrival>, String>),
}
