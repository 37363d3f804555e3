//! The network logic, free of gRPC: the lifecycle and guest ports (`networks.rs`), links
//! (`netlink.rs`), taps (`tap.rs`), their QoS (`qos.rs`),
//! nftables rulesets (`firewall.rs`) and dnsmasq (`dnsmasq.rs`).

pub mod dnsmasq;
pub mod firewall;
pub mod netlink;
pub mod networks;
pub mod qos;
pub mod tap;
