//! One dnsmasq per network: its configuration (DHCP ranges, static hosts by MAC, DNS hosts and
//! forwarders, the network's domain), the files it reads, and its lease file, read back for
//! net-dhcp-leases.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use vireo_proto::network::v1::{DhcpLease, IpFamily, NetworkDefinition, NetworkIp};

use super::firewall::Subnet;

/// Where a network's dnsmasq keeps its files.
#[derive(Debug, Clone)]
pub struct Files {
    pub pid: PathBuf,
    pub leases: PathBuf,
    /// `dhcp-hostsfile`: static hosts, re-read on SIGHUP (net-update).
    pub dhcp_hosts: PathBuf,
    /// `addn-hosts`: the network's DNS host entries.
    pub dns_hosts: PathBuf,
}

/// The configuration file. `subnets` are the subnets of `def.ips`, in order.
pub fn config(def: &NetworkDefinition, bridge: &str, subnets: &[Subnet], files: &Files) -> String {
    let mut lines = vec![
        "strict-order".to_string(),
        "except-interface=lo".to_string(),
        "bind-dynamic".to_string(),
        format!("interface={bridge}"),
        format!("pid-file={}", files.pid.display()),
        format!("dhcp-leasefile={}", files.leases.display()),
        format!("dhcp-hostsfile={}", files.dhcp_hosts.display()),
        format!("addn-hosts={}", files.dns_hosts.display()),
        // No /etc/hosts: guests see only the network's own names and the forwarders.
        "no-hosts".to_string(),
    ];
    let dns = def.dns.clone().unwrap_or_default();
    if dns.enable == Some(false) {
        lines.push("port=0".into());
    }
    if let Some(domain) = def.domain.as_ref().filter(|domain| !domain.name.is_empty()) {
        lines.push(format!("domain={}", domain.name));
        lines.push("expand-hosts".into());
        if domain.local_only == Some(true) {
            lines.push(format!("local=/{}/", domain.name));
        }
    }
    if dns.forward_plain_names == Some(false) {
        lines.push("domain-needed".into());
    }
    for forwarder in &dns.forwarders {
        lines.push(match (forwarder.domain.as_str(), forwarder.addr.as_str()) {
            ("", addr) => format!("server={addr}"),
            // A domain without an address is answered here only.
            (domain, "") => format!("server=/{domain}/"),
            (domain, addr) => format!("server=/{domain}/{addr}"),
        });
    }
    let mut leases = 0u64;
    for (ip, subnet) in def.ips.iter().zip(subnets) {
        let Some(dhcp) = &ip.dhcp else { continue };
        for range in &dhcp.ranges {
            let scope = match subnet.address {
                IpAddr::V4(_) => netmask(subnet.prefix).to_string(),
                IpAddr::V6(_) => subnet.prefix.to_string(),
            };
            let mut line = format!("dhcp-range={},{},{scope}", range.start, range.end);
            if let Some(seconds) = range.lease_time_s {
                line.push_str(&lease_time(seconds));
            }
            lines.push(line);
            leases += addresses_between(&range.start, &range.end);
        }
        if !dhcp.bootp_file.is_empty() {
            lines.push(match dhcp.bootp_server.as_str() {
                "" => format!("dhcp-boot={}", dhcp.bootp_file),
                server => format!("dhcp-boot={},,{server}", dhcp.bootp_file),
            });
        }
        if !ip.tftp_root.is_empty() {
            lines.push("enable-tftp".into());
            lines.push(format!("tftp-root={}", ip.tftp_root));
        }
        if matches!(subnet.address, IpAddr::V6(_)) {
            lines.push("enable-ra".into());
        }
    }
    if leases > 0 {
        lines.push("dhcp-no-override".into());
        lines.push("dhcp-authoritative".into());
        lines.push(format!("dhcp-lease-max={leases}"));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// `dhcp-hostsfile`: one line per static host, `mac,ip,name[,lease]` (IPv6: `id:duid,[ip],name`).
pub fn dhcp_hosts(def: &NetworkDefinition) -> String {
    let mut text = String::new();
    for ip in &def.ips {
        let Some(dhcp) = &ip.dhcp else { continue };
        let v6 = family_of(ip) == IpFamily::Ipv6;
        for host in &dhcp.hosts {
            let mut fields = Vec::new();
            if !host.mac.is_empty() {
                fields.push(host.mac.clone());
            }
            if !host.id.is_empty() {
                fields.push(format!("id:{}", host.id));
            }
            if !host.ip.is_empty() {
                fields.push(if v6 {
                    format!("[{}]", host.ip)
                } else {
                    host.ip.clone()
                });
            }
            if !host.name.is_empty() {
                fields.push(host.name.clone());
            }
            let mut line = fields.join(",");
            if let Some(seconds) = host.lease_time_s {
                line.push_str(&lease_time(seconds));
            }
            text.push_str(&line);
            text.push('\n');
        }
    }
    text
}

/// `addn-hosts`: the network's DNS host entries, in /etc/hosts form.
pub fn dns_hosts(def: &NetworkDefinition) -> String {
    let mut text = String::new();
    for host in def.dns.iter().flat_map(|dns| &dns.hosts) {
        text.push_str(&format!("{} {}\n", host.ip, host.hostnames.join(" ")));
    }
    text
}

/// The leases in a dnsmasq lease file: IPv4 lines `expiry mac ip name client-id`, then, after a
/// `duid` line, IPv6 lines `expiry iaid ip name duid`. `*` means none.
pub fn parse_leases(text: &str, bridge: &str, subnets: &[Subnet]) -> Vec<DhcpLease> {
    let none = |field: &str| {
        if field == "*" {
            String::new()
        } else {
            field.to_string()
        }
    };
    let mut leases = Vec::new();
    let mut v6 = false;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() == Some(&"duid") {
            v6 = true;
            continue;
        }
        let [expiry, id, ip, name, client, ..] = fields.as_slice() else {
            continue;
        };
        let Ok(address) = ip.parse::<IpAddr>() else {
            continue;
        };
        let prefix = subnets
            .iter()
            .find(|subnet| contains(subnet, address))
            .map_or(0, |subnet| u32::from(subnet.prefix));
        leases.push(DhcpLease {
            expiry_time_unix_s: expiry.parse().unwrap_or(0),
            interface: bridge.to_string(),
            mac: if v6 { String::new() } else { none(id) },
            iaid: if v6 { none(id) } else { String::new() },
            r#type: if address.is_ipv4() {
                IpFamily::Ipv4
            } else {
                IpFamily::Ipv6
            } as i32,
            ip_address: address.to_string(),
            prefix,
            hostname: none(name),
            client_id: none(client),
        });
    }
    leases
}

fn family_of(ip: &NetworkIp) -> IpFamily {
    match ip.family() {
        IpFamily::Unspecified if ip.address.contains(':') => IpFamily::Ipv6,
        IpFamily::Unspecified => IpFamily::Ipv4,
        family => family,
    }
}

fn lease_time(seconds: u64) -> String {
    match seconds {
        0 => ",infinite".to_string(),
        seconds => format!(",{seconds}"),
    }
}

fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(
        u32::MAX
            .checked_shl(32 - u32::from(prefix.min(32)))
            .unwrap_or(0),
    )
}

fn contains(subnet: &Subnet, address: IpAddr) -> bool {
    let bits = u32::from(subnet.prefix);
    match (subnet.address, address) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let mask = u32::MAX.checked_shl(32 - bits.min(32)).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let mask = u128::MAX.checked_shl(128 - bits.min(128)).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

/// How many addresses a DHCP range holds (IPv6 ranges count as many as dnsmasq will track).
fn addresses_between(start: &str, end: &str) -> u64 {
    match (start.parse::<IpAddr>(), end.parse::<IpAddr>()) {
        (Ok(IpAddr::V4(start)), Ok(IpAddr::V4(end))) => {
            u64::from(u32::from(end).saturating_sub(u32::from(start))) + 1
        }
        (Ok(IpAddr::V6(start)), Ok(IpAddr::V6(end))) => {
            u64::try_from(u128::from(end).saturating_sub(u128::from(start)) + 1)
                .unwrap_or(u64::MAX)
                .min(u64::from(u32::MAX))
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_proto::network::v1::{
        DhcpHost, DhcpRange, DnsForwarder, DnsHost, NetworkDhcp, NetworkDns, NetworkDomain,
    };

    fn files() -> Files {
        Files {
            pid: "/run/vireo/network/default.pid".into(),
            leases: "/run/vireo/network/default.leases".into(),
            dhcp_hosts: "/var/lib/vireo/network/default.hosts".into(),
            dns_hosts: "/var/lib/vireo/network/default.addnhosts".into(),
        }
    }

    fn default_network() -> NetworkDefinition {
        NetworkDefinition {
            name: "default".into(),
            ips: vec![NetworkIp {
                address: "192.168.122.1".into(),
                prefix: 24,
                dhcp: Some(NetworkDhcp {
                    ranges: vec![DhcpRange {
                        start: "192.168.122.2".into(),
                        end: "192.168.122.254".into(),
                        lease_time_s: None,
                    }],
                    hosts: vec![DhcpHost {
                        mac: "52:54:00:00:00:01".into(),
                        name: "web".into(),
                        ip: "192.168.122.10".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            dns: Some(NetworkDns {
                hosts: vec![DnsHost {
                    ip: "192.168.122.1".into(),
                    hostnames: vec!["gateway".into(), "gw".into()],
                }],
                forwarders: vec![DnsForwarder {
                    addr: "192.0.2.53".into(),
                    domain: "example.org".into(),
                }],
                ..Default::default()
            }),
            domain: Some(NetworkDomain {
                name: "vireo.test".into(),
                local_only: Some(true),
            }),
            ..Default::default()
        }
    }

    const SUBNET: Subnet = Subnet {
        address: IpAddr::V4(Ipv4Addr::new(192, 168, 122, 0)),
        prefix: 24,
    };

    #[test]
    fn the_default_network_serves_its_range_hosts_and_names() {
        let def = default_network();
        let text = config(&def, "vireobr0", &[SUBNET], &files());
        for line in [
            "interface=vireobr0",
            "bind-dynamic",
            "dhcp-range=192.168.122.2,192.168.122.254,255.255.255.0",
            "dhcp-lease-max=253",
            "dhcp-leasefile=/run/vireo/network/default.leases",
            "dhcp-hostsfile=/var/lib/vireo/network/default.hosts",
            "domain=vireo.test",
            "local=/vireo.test/",
            "server=/example.org/192.0.2.53",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert_eq!(dhcp_hosts(&def), "52:54:00:00:00:01,192.168.122.10,web\n");
        assert_eq!(dns_hosts(&def), "192.168.122.1 gateway gw\n");
    }

    #[test]
    fn dns_off_and_no_dhcp() {
        let mut def = default_network();
        def.ips[0].dhcp = None;
        if let Some(dns) = def.dns.as_mut() {
            dns.enable = Some(false);
        }
        let text = config(&def, "b", &[SUBNET], &files());
        assert!(text.contains("port=0\n"), "{text}");
        assert!(!text.contains("dhcp-range"), "{text}");
        assert!(!text.contains("dhcp-authoritative"), "{text}");
    }

    #[test]
    fn leases_of_both_families() {
        let v6 = Subnet {
            address: "fd00::".parse().unwrap(),
            prefix: 64,
        };
        let text = "1700000000 52:54:00:00:00:01 192.168.122.10 web 01:52:54:00:00:00:01\n\
                    0 52:54:00:00:00:02 192.168.122.77 * *\n\
                    duid 00:01:00:01:aa\n\
                    1700000100 1234 fd00::10 guest6 00:04:ab\n\
                    garbage\n";
        let leases = parse_leases(text, "vireobr0", &[SUBNET, v6]);
        assert_eq!(leases.len(), 3);
        assert_eq!(leases[0].mac, "52:54:00:00:00:01");
        assert_eq!(leases[0].hostname, "web");
        assert_eq!(leases[0].prefix, 24);
        assert_eq!(leases[1].hostname, "");
        assert_eq!(leases[1].expiry_time_unix_s, 0);
        assert_eq!(leases[2].iaid, "1234");
        assert_eq!(leases[2].prefix, 64);
        assert_eq!(leases[2].r#type, IpFamily::Ipv6 as i32);
    }
}
