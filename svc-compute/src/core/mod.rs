//! Compute logic, free of gRPC types (apart from the generated definition messages it stores).

pub mod cgroup;
pub mod console;
pub mod domains;
pub mod engine;
pub mod engines;
pub mod host;
pub mod hostdev;
pub mod network;
pub mod process;
pub mod saves;
pub mod snapshots;
pub mod store;
pub mod volumes;
