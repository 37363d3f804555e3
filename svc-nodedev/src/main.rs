//! The standalone `svc-nodedev` binary; all behaviour lives in the library.

vireo_runtime::service_main!(
    vireo_runtime::Service::Nodedev,
    svc_nodedev::serve,
    "Vireo node-device service: PCI, SR-IOV, NPIV, USB, detach and reattach"
);
