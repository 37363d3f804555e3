//! The network logic, free of gRPC: the lifecycle (`networks.rs`), links (`netlink.rs`),
//! nftables rulesets (`firewall.rs`) and dnsmasq (`dnsmasq.rs`).

pub mod dnsmasq;
pub mod firewall;
pub mod netlink;
pub mod networks;
