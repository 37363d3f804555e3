//! The standalone `svc-storage` binary; all behaviour lives in the library.

vireo_runtime::service_main!(
    vireo_runtime::Service::Storage,
    svc_storage::serve,
    "Vireo storage service: storage pools and volumes"
);
