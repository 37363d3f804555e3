//! The rulesets svc-network writes, applied by the real `nft` in a network namespace made for the
//! test: every mode loads, loading twice leaves one table with the same rules, removal leaves none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use svc_network::core::firewall::{Subnet, removal, ruleset};
use vireo_proto::network::v1::{ForwardMode, NetworkDefinition, NetworkForward, NetworkNat};

/// A network namespace that goes with the test.
struct Namespace(String);

impl Namespace {
    fn new() -> Namespace {
        let name = format!("vireo-nft-{}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(status.success(), "ip netns add {name}");
        Namespace(name)
    }

    fn nft(&self, script: &str) -> Result<String, String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        if output.status.success() {
            Ok(self.listing())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    fn listing(&self) -> String {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "list", "ruleset"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn nft_or_skip() -> bool {
    let found = Command::new("nft").arg("--version").output().is_ok();
    if !found {
        eprintln!("SKIP: needs nft (Debian package nftables) and root for network namespaces");
    }
    found
}

#[test]
fn every_mode_loads_once_however_often_it_is_applied_and_goes_without_a_trace() {
    if !nft_or_skip() {
        return;
    }
    let namespace = Namespace::new();
    let v4 = Subnet {
        address: IpAddr::from([192, 168, 122, 0]),
        prefix: 24,
    };
    let v6 = Subnet {
        address: "fd00:1::".parse().unwrap(),
        prefix: 64,
    };
    let nat = NetworkNat {
        address_start: "203.0.113.10".into(),
        address_end: "203.0.113.20".into(),
        port_start: 2000,
        port_end: 3000,
        ipv6: true,
    };
    let cases = [
        (Some((ForwardMode::Nat, "", None)), "masquerade"),
        (Some((ForwardMode::Nat, "eth0", Some(nat))), "snat ip to"),
        (Some((ForwardMode::Route, "eth0", None)), "accept"),
        (None, "reject"),
    ];
    for (index, (forward, expected)) in cases.into_iter().enumerate() {
        let def = NetworkDefinition {
            name: format!("net{index}"),
            uuid: format!("0a1b2c3d-0000-4000-8000-00000000000{index}"),
            forward: forward.map(|(mode, dev, nat)| NetworkForward {
                mode: mode as i32,
                dev: dev.into(),
                nat,
                ..Default::default()
            }),
            ..Default::default()
        };
        let script = ruleset(&def, "vireobr0", &[v4, v6]).unwrap();
        let first = namespace
            .nft(&script)
            .unwrap_or_else(|err| panic!("{err}\n{script}"));
        assert!(first.contains(expected), "{first}");
        let again = namespace.nft(&script).unwrap();
        assert_eq!(first, again, "applying twice changed the ruleset");
        assert_eq!(again.matches("table inet vireo_").count(), 1, "{again}");
        let gone = namespace.nft(&removal(&def.uuid)).unwrap();
        assert!(!gone.contains("vireo_"), "left behind: {gone}");
    }
}
