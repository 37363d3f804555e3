//! The storage logic, free of gRPC: pools and their lifecycle, backends per pool type, volumes,
//! image work (qemu-img), volume bytes (wipe, upload, download), the lvm2 wrapper and tools.

pub mod backend;
pub mod data;
pub mod image;
pub mod lvm;
pub mod pools;
pub mod tool;
pub mod usage;
pub mod volumes;
