//! One dnsmasq per network: its configuration (DHCP ranges, static hosts by MAC, DNS hosts and
//! forwarders, the network's domain) and its lease file, read back for net-dhcp-leases. Hosts
//! live in the configuration file itself, which dnsmasq reads before it drops root: separate
//! host files would be read as its unprivileged user, which cannot reach a root-only state
//! directory.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use vireo_proto::network::v1::{DhcpLease, IpFamily, NetworkDefinition, NetworkIp};

use super::firewall::Subnet;

/// Where a network's dnsmasq keeps its files.
#[derive(Debug, Clone)]
pub struct Files {
    pub pid: PathBuf,
    pub leases: PathBuf,
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
    lines.extend(dhcp_hosts(def));
    let domain = def
        .domain
        .as_ref()
        .map_or("", |domain| domain.name.as_str());
    lines.extend(dns_hosts(def, domain));
    if leases > 0 {
        lines.push("dhcp-no-override".into());
        lines.push("dhcp-authoritative".into());
        lines.push(format!("dhcp-lease-max={leases}"));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// `dhcp-host=` lines: `mac,ip,name[,lease]` (IPv6: `id:duid,[ip],name`).
fn dhcp_hosts(def: &NetworkDefinition) -> Vec<String> {
    let mut lines = Vec::new();
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
            let mut line = format!("dhcp-host={}", fields.join(","));
            if let Some(seconds) = host.lease_time_s {
                line.push_str(&lease_time(seconds));
            }
            lines.push(line);
        }
    }
    lines
}

/// `host-record=` lines for the network's DNS hosts, each name also under the network's domain.
fn dns_hosts(def: &NetworkDefinition, domain: &str) -> Vec<String> {
    def.dns
        .iter()
        .flat_map(|dns| &dns.hosts)
        .map(|host| {
            let mut names: Vec<String> = host.hostnames.clone();
            if !domain.is_empty() {
                names.extend(
                    host.hostnames
                        .iter()
                        .filter(|name| !name.contains('.'))
                        .map(|name| format!("{name}.{domain}")),
                );
            }
            format!("host-record={},{}", names.join(","), host.ip)
        })
        .collect()
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

/// The pid in `files.pid` when that process is a dnsmasq reading `conf` (a pid file can outlive
/// its process, and the number can be reused).
pub fn running(files: &Files, conf: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(&files.pid)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let wanted = format!("--conf-file={}", conf.display());
    cmdline
        .split(|&byte| byte == 0)
        .any(|arg| arg == wanted.as_bytes())
        .then_some(pid)
}

/// Starts dnsmasq on `conf`; it detaches, and outlives this service (a restarted service finds
/// it again by its pid file). Returns once it serves, or with what it said.
pub async fn start(conf: &Path) -> Result<(), String> {
    let output = tokio::process::Command::new("dnsmasq")
        .arg(format!("--conf-file={}", conf.display()))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|err| format!("cannot run dnsmasq: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "dnsmasq: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Stops the network's dnsmasq (if it runs) and waits, bounded, until it has gone.
pub async fn stop(files: &Files, conf: &Path) {
    if let Some(pid) = running(files, conf) {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if nix::sys::signal::kill(pid, None).is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let _ = std::fs::remove_file(&files.pid);
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
    vireo_conf::network::contains(subnet.address, subnet.prefix, address)
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
            "dhcp-host=52:54:00:00:00:01,192.168.122.10,web",
            "host-record=gateway,gw,gateway.vireo.test,gw.vireo.test,192.168.122.1",
            "domain=vireo.test",
            "local=/vireo.test/",
            "server=/example.org/192.0.2.53",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
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
