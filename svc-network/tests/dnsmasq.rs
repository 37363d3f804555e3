//! The dnsmasq configuration svc-network writes passes the real dnsmasq's syntax check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::process::Command;

use svc_network::core::dnsmasq::{Files, config};
use svc_network::core::firewall::Subnet;
use vireo_proto::network::v1::{
    DhcpHost, DhcpRange, DnsForwarder, DnsHost, NetworkDefinition, NetworkDhcp, NetworkDns,
    NetworkDomain, NetworkIp,
};

#[test]
fn dnsmasq_accepts_the_configuration() {
    if Command::new("dnsmasq").arg("--version").output().is_err() {
        eprintln!("SKIP: needs dnsmasq (Debian package dnsmasq-base)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let files = Files {
        pid: dir.path().join("net.pid"),
        leases: dir.path().join("net.leases"),
    };
    let def = NetworkDefinition {
        name: "default".into(),
        ips: vec![
            NetworkIp {
                address: "192.168.122.1".into(),
                prefix: 24,
                dhcp: Some(NetworkDhcp {
                    ranges: vec![DhcpRange {
                        start: "192.168.122.2".into(),
                        end: "192.168.122.254".into(),
                        lease_time_s: Some(3600),
                    }],
                    hosts: vec![DhcpHost {
                        mac: "52:54:00:00:00:01".into(),
                        ip: "192.168.122.10".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
            NetworkIp {
                address: "fd00:1::1".into(),
                prefix: 64,
                dhcp: Some(NetworkDhcp {
                    ranges: vec![DhcpRange {
                        start: "fd00:1::100".into(),
                        end: "fd00:1::1ff".into(),
                        lease_time_s: Some(0),
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ],
        dns: Some(NetworkDns {
            hosts: vec![DnsHost {
                ip: "192.168.122.1".into(),
                hostnames: vec!["gateway".into()],
            }],
            forwarders: vec![
                DnsForwarder {
                    addr: "192.0.2.53".into(),
                    domain: String::new(),
                },
                DnsForwarder {
                    addr: String::new(),
                    domain: "lab.test".into(),
                },
            ],
            ..Default::default()
        }),
        domain: Some(NetworkDomain {
            name: "vireo.test".into(),
            local_only: Some(true),
        }),
        ..Default::default()
    };
    let subnets = [
        Subnet {
            address: IpAddr::from([192, 168, 122, 0]),
            prefix: 24,
        },
        Subnet {
            address: "fd00:1::".parse().unwrap(),
            prefix: 64,
        },
    ];
    let conf = dir.path().join("net.conf");
    std::fs::write(&conf, config(&def, "vireobr0", &subnets, &files)).unwrap();
    let output = Command::new("dnsmasq")
        .arg("--test")
        .arg(format!("--conf-file={}", conf.display()))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && said.contains("syntax check OK"),
        "{said}\n{}",
        std::fs::read_to_string(&conf).unwrap()
    );
}
