//! Compute logic, free of gRPC types.

pub mod engines;
pub mod host;
