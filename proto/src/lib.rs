//! vireo-proto owns Vireo's v1 gRPC surface: the `.proto` files under `vireo/`, the tonic/prost code
//! generated from them, their proto3 JSON (serde) mapping and the descriptor set served by reflection.
//! It holds no logic. The conventions every file follows are in `CONVENTIONS.md`.

#![allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]

/// The encoded `FileDescriptorSet` of every Vireo proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/vireo_descriptor.bin"));

/// The API packages, one per area, in the order the docs list them.
pub const PACKAGES: [&str; 6] = [
    "vireo.compute.v1",
    "vireo.storage.v1",
    "vireo.network.v1",
    "vireo.nodedev.v1",
    "vireo.migrate.v1",
    "vireo.cluster.v1",
];

macro_rules! package {
    ($file:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $file, ".rs"));
        include!(concat!(env!("OUT_DIR"), "/", $file, ".serde.rs"));
    };
}

pub mod common {
    pub mod v1 {
        package!("vireo.common.v1");
    }
}
pub mod compute {
    pub mod v1 {
        package!("vireo.compute.v1");
    }
}
pub mod storage {
    pub mod v1 {
        package!("vireo.storage.v1");
    }
}
pub mod network {
    pub mod v1 {
        package!("vireo.network.v1");
    }
}
pub mod nodedev {
    pub mod v1 {
        package!("vireo.nodedev.v1");
    }
}
pub mod migrate {
    pub mod v1 {
        package!("vireo.migrate.v1");
    }
}
pub mod cluster {
    pub mod v1 {
        package!("vireo.cluster.v1");
    }
}
