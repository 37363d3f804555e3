//! The standalone `svc-migrate` binary; all behaviour lives in the library.

vireo_runtime::service_main!(
    vireo_runtime::Service::Migrate,
    svc_migrate::serve,
    "Vireo migration service: live and offline migration, save and restore"
);
