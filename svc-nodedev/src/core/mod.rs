//! The node device logic, free of gRPC: reading and changing devices under a sysfs root.

pub mod assign;
pub mod npiv;
pub mod pci_ids;
pub mod sriov;
pub mod sysfs;
pub mod vf_config;
