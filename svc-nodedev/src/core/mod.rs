//! The node device logic, free of gRPC: reading devices from a sysfs root.

pub mod assign;
pub mod pci_ids;
pub mod sriov;
pub mod sysfs;
