//! The standalone `svc-network` binary; all behaviour lives in the library.

vireo_runtime::service_main!(
    vireo_runtime::Service::Network,
    svc_network::serve,
    "Vireo network service: virtual networks, bridges, NAT, DHCP/DNS, guest ports"
);
