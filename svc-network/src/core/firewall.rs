//! The nftables side of a network: one table per active network, `inet vireo_<uuid>`, so that
//! starting twice replaces rather than duplicates, destroying removes every rule at once, and no
//! other table is ever touched. The script is applied atomically with `nft -f -`.

use std::net::IpAddr;

use vireo_proto::network::v1::{ForwardMode, NetworkDefinition};

/// One of a network's subnets: its network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub address: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl Subnet {
    fn match_word(&self) -> &'static str {
        match self.address {
            IpAddr::V4(_) => "ip",
            IpAddr::V6(_) => "ip6",
        }
    }
}

/// The prefix of every table Vireo owns.
pub const TABLE_PREFIX: &str = "vireo_";

/// The table of the network with this UUID.
pub fn table_name(uuid: &str) -> String {
    format!("{TABLE_PREFIX}{}", uuid.replace('-', ""))
}

/// The ruleset of a network whose mode needs one (nat, route, isolated); None for open, bridge,
/// macvtap and hostdev networks, which get no rules at all. `bridge` and the forward device are
/// validated interface names; they are quoted all the same.
pub fn ruleset(def: &NetworkDefinition, bridge: &str, subnets: &[Subnet]) -> Option<String> {
    let mode = mode_of(def);
    if !matches!(
        mode,
        ForwardMode::Nat | ForwardMode::Route | ForwardMode::None
    ) {
        return None;
    }
    let table = table_name(&def.uuid);
    let dev = def
        .forward
        .as_ref()
        .map(|forward| forward.dev.as_str())
        .filter(|dev| !dev.is_empty());
    let out_dev = dev
        .map(|dev| format!(" oifname \"{dev}\""))
        .unwrap_or_default();
    let in_dev = dev
        .map(|dev| format!(" iifname \"{dev}\""))
        .unwrap_or_default();
    let mut forward = vec![format!("iifname \"{bridge}\" oifname \"{bridge}\" accept")];
    let mut postrouting = Vec::new();
    for subnet in subnets {
        let family = subnet.match_word();
        match mode {
            ForwardMode::Nat | ForwardMode::Route => {
                forward.push(format!(
                    "iifname \"{bridge}\"{out_dev} {family} saddr {subnet} accept"
                ));
                let back = if mode == ForwardMode::Nat {
                    " ct state established,related"
                } else {
                    ""
                };
                forward.push(format!(
                    "oifname \"{bridge}\"{in_dev} {family} daddr {subnet}{back} accept"
                ));
            }
            _ => {}
        }
        let nat_v6 = def
            .forward
            .as_ref()
            .and_then(|forward| forward.nat.as_ref())
            .is_some_and(|nat| nat.ipv6);
        if mode == ForwardMode::Nat && (family == "ip" || nat_v6) {
            postrouting.extend(masquerade(def, *subnet, &out_dev));
        }
    }
    forward.push(format!("iifname \"{bridge}\" reject"));
    forward.push(format!("oifname \"{bridge}\" reject"));
    let mut script = format!(
        "add table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n  chain forward {{\n    type filter hook forward priority filter; policy accept;\n"
    );
    for rule in &forward {
        script.push_str(&format!("    {rule}\n"));
    }
    script.push_str("  }\n");
    if !postrouting.is_empty() {
        script.push_str(
            "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
        );
        for rule in &postrouting {
            script.push_str(&format!("    {rule}\n"));
        }
        script.push_str("  }\n");
    }
    script.push_str("}\n");
    Some(script)
}

/// The script that removes a network's table (it must exist: `nft` fails otherwise).
pub fn removal(uuid: &str) -> String {
    format!("delete table inet {}\n", table_name(uuid))
}

fn mode_of(def: &NetworkDefinition) -> ForwardMode {
    match &def.forward {
        None => ForwardMode::None,
        Some(forward) => match forward.mode() {
            ForwardMode::Unspecified => ForwardMode::Nat,
            mode => mode,
        },
    }
}

/// libvirt's masquerade rules: multicast and broadcast stay, TCP/UDP get unprivileged source
/// ports (or the `<nat><port>` range), and `<nat><address>` turns IPv4 masquerade into SNAT.
fn masquerade(def: &NetworkDefinition, subnet: Subnet, out_dev: &str) -> Vec<String> {
    let family = subnet.match_word();
    let nat = def
        .forward
        .as_ref()
        .and_then(|forward| forward.nat.clone())
        .unwrap_or_default();
    let (port_start, port_end) = match (nat.port_start, nat.port_end) {
        (0, 0) => (1024, 65535),
        (start, 0) => (start, start),
        (start, end) => (start, end),
    };
    // `<nat><address>` is IPv4 only, as in libvirt: IPv6 is masqueraded.
    let to = match (nat.address_start.as_str(), nat.address_end.as_str()) {
        ("", _) => None,
        _ if family == "ip6" => None,
        (start, "") => Some(start.to_string()),
        (start, end) => Some(format!("{start}-{end}")),
    };
    let action = |ports: bool| match (&to, ports) {
        (Some(to), true) => format!("snat {family} to {to}:{port_start}-{port_end}"),
        (Some(to), false) => format!("snat {family} to {to}"),
        (None, true) => format!("masquerade to :{port_start}-{port_end}"),
        (None, false) => "masquerade".to_string(),
    };
    let leaving = format!("{family} saddr {subnet} {family} daddr != {subnet}{out_dev}");
    let mut rules = Vec::new();
    if family == "ip" {
        rules.push(format!(
            "{family} saddr {subnet} ip daddr 224.0.0.0/24 return"
        ));
        rules.push(format!(
            "{family} saddr {subnet} ip daddr 255.255.255.255 return"
        ));
    }
    rules.push(format!(
        "{leaving} meta l4proto {{ tcp, udp }} {}",
        action(true)
    ));
    rules.push(format!("{leaving} {}", action(false)));
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_proto::network::v1::{NetworkForward, NetworkNat};

    fn network(mode: Option<ForwardMode>) -> NetworkDefinition {
        NetworkDefinition {
            name: "default".into(),
            uuid: "0a1b2c3d-0000-4000-8000-000000000001".into(),
            forward: mode.map(|mode| NetworkForward {
                mode: mode as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const SUBNET: Subnet = Subnet {
        address: IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 122, 0)),
        prefix: 24,
    };

    #[test]
    fn nat_masquerades_and_lets_replies_back() {
        let script = ruleset(&network(Some(ForwardMode::Nat)), "vireobr0", &[SUBNET]).unwrap();
        let table = "inet vireo_0a1b2c3d000040008000000000000001";
        assert!(script.starts_with(&format!("add table {table}\ndelete table {table}\n")));
        for rule in [
            "iifname \"vireobr0\" oifname \"vireobr0\" accept",
            "iifname \"vireobr0\" ip saddr 192.168.122.0/24 accept",
            "oifname \"vireobr0\" ip daddr 192.168.122.0/24 ct state established,related accept",
            "iifname \"vireobr0\" reject",
            "ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 meta l4proto { tcp, udp } masquerade to :1024-65535",
            "ip saddr 192.168.122.0/24 ip daddr 255.255.255.255 return",
        ] {
            assert!(script.contains(rule), "{rule} missing from\n{script}");
        }
    }

    #[test]
    fn routed_has_no_nat_and_isolated_only_rejects() {
        let routed = ruleset(&network(Some(ForwardMode::Route)), "br1", &[SUBNET]).unwrap();
        assert!(!routed.contains("postrouting"), "{routed}");
        assert!(routed.contains("oifname \"br1\" ip daddr 192.168.122.0/24 accept"));
        let isolated = ruleset(&network(None), "br2", &[SUBNET]).unwrap();
        assert!(!isolated.contains("saddr"), "{isolated}");
        assert!(isolated.contains("oifname \"br2\" reject"));
        assert!(ruleset(&network(Some(ForwardMode::Open)), "br3", &[SUBNET]).is_none());
        assert!(ruleset(&network(Some(ForwardMode::Bridge)), "br0", &[SUBNET]).is_none());
        // `<forward/>` without a mode is NAT, as in libvirt.
        let default = ruleset(&network(Some(ForwardMode::Unspecified)), "b", &[SUBNET]);
        assert!(default.unwrap().contains("masquerade"));
    }

    #[test]
    fn nat_ranges_and_forward_device() {
        let mut def = network(Some(ForwardMode::Nat));
        if let Some(forward) = def.forward.as_mut() {
            forward.dev = "eth0".into();
            forward.nat = Some(NetworkNat {
                address_start: "203.0.113.10".into(),
                address_end: "203.0.113.20".into(),
                port_start: 2000,
                port_end: 3000,
                ipv6: false,
            });
        }
        let script = ruleset(&def, "vireobr0", &[SUBNET]).unwrap();
        assert!(
            script
                .contains("iifname \"vireobr0\" oifname \"eth0\" ip saddr 192.168.122.0/24 accept"),
            "{script}"
        );
        assert!(
            script.contains("snat ip to 203.0.113.10-203.0.113.20:2000-3000"),
            "{script}"
        );
        let v6 = Subnet {
            address: "fd00:1::".parse().unwrap(),
            prefix: 64,
        };
        let script = ruleset(&def, "vireobr0", &[v6]).unwrap();
        assert!(script.contains("ip6 saddr fd00:1::/64 accept"), "{script}");
        assert!(
            !script.contains("snat"),
            "IPv6 is not NATed unless asked: {script}"
        );
    }
}
