//! The network logic, free of gRPC: nftables rulesets (`firewall.rs`) and dnsmasq (`dnsmasq.rs`).

pub mod dnsmasq;
pub mod firewall;
