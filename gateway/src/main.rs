//! The standalone `gateway` binary; all behaviour lives in the library.

vireo_runtime::service_main!(
    vireo_runtime::Service::Gateway,
    gateway::serve,
    "Vireo gateway: the one public gRPC API over the services of every host"
);
