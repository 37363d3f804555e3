//! Everything that talks to KVM. No other module calls kvm-ioctls.

pub mod probe;
