//! The standalone `svc-compute` binary; all behaviour lives in the library.

vireo_runtime::service_main!(
    vireo_runtime::Service::Compute,
    svc_compute::serve,
    "Vireo compute service: domains, engines and host facts, over gRPC on a unix socket"
);
