//! libvirt's network XML (`<network>`) to and from `NetworkDefinition`: parsing (every element
//! or attribute Vireo does not know is refused by its path), validation naming the field, and
//! formatting as libvirt prints it. Also one `<host>` of `<ip><dhcp>`, for net-update.

use std::net::IpAddr;

use vireo_proto::network::v1 as pb;

use crate::dom::{self, ConfError, Element};
use crate::domain::{Attrs, Table, check_name, lookup, name_of, number, yes_no};
use crate::xml::{XmlError, XmlWriter};

pub const FORWARD_MODES: Table<pb::ForwardMode> = &[
    ("nat", pb::ForwardMode::Nat),
    ("route", pb::ForwardMode::Route),
    ("open", pb::ForwardMode::Open),
    ("bridge", pb::ForwardMode::Bridge),
    ("private", pb::ForwardMode::Private),
    ("vepa", pb::ForwardMode::Vepa),
    ("passthrough", pb::ForwardMode::Passthrough),
    ("hostdev", pb::ForwardMode::Hostdev),
];

const FAMILIES: Table<pb::IpFamily> = &[("ipv4", pb::IpFamily::Ipv4), ("ipv6", pb::IpFamily::Ipv6)];

/// Parses and validates a `<network>` document.
pub fn parse(xml: &str) -> Result<pb::NetworkDefinition, ConfError> {
    let mut root = dom::parse(xml)?;
    if root.name != "network" {
        return Err(root.error(format!(
            "the root element must be <network>, not <{}>",
            root.name
        )));
    }
    // libvirt's own bookkeeping attributes, accepted and dropped.
    let _ = root.attr("connections");
    let _ = root.attr("ipv6");
    let mut def = pb::NetworkDefinition {
        name: root.child_text("name")?.unwrap_or_default(),
        uuid: root.child_text("uuid")?.unwrap_or_default(),
        ..Default::default()
    };
    if let Some(mut bridge) = root.child("bridge") {
        let stp = yes_no(&mut bridge, "stp")?;
        // `forwardDelay` is what the RHEL 6 guide writes; libvirt reads `delay`.
        let delay = match (bridge.attr("delay"), bridge.attr("forwardDelay")) {
            (Some(delay), _) | (None, Some(delay)) => number(&delay, &bridge.field("delay"))?,
            (None, None) => 0,
        };
        def.bridge = Some(pb::NetworkBridge {
            name: bridge.attr("name").unwrap_or_default(),
            stp,
            delay_s: delay,
            zone: bridge.attr("zone").unwrap_or_default(),
            ..Default::default()
        });
        let _ = bridge.attr("macTableManager");
        bridge.finish()?;
    }
    if let Some(mut mac) = root.child("mac") {
        def.mac = mac.required_attr("address")?.to_ascii_lowercase();
        mac.finish()?;
    }
    if let Some(mut mtu) = root.child("mtu") {
        def.mtu_bytes = number(&mtu.required_attr("size")?, &mtu.field("size"))?;
        mtu.finish()?;
    }
    if let Some(forward) = root.child("forward") {
        def.forward = Some(parse_forward(forward)?);
    }
    if let Some(mut domain) = root.child("domain") {
        def.domain = Some(pb::NetworkDomain {
            name: domain.required_attr("name")?,
            local_only: yes_no(&mut domain, "localOnly")?,
        });
        domain.finish()?;
    }
    if let Some(dns) = root.child("dns") {
        def.dns = Some(parse_dns(dns)?);
    }
    for ip in root.children("ip") {
        def.ips.push(parse_ip(ip)?);
    }
    for mut route in root.children("route") {
        let family = match route.attr("family") {
            Some(word) => lookup(FAMILIES, &word, route.field("family"))? as i32,
            None => 0,
        };
        def.routes.push(pb::NetworkRoute {
            family,
            address: route.required_attr("address")?,
            netmask: route.attr("netmask").unwrap_or_default(),
            prefix: route
                .attr("prefix")
                .map(|p| number(&p, &route.field("prefix")))
                .transpose()?
                .unwrap_or(0),
            gateway: route.required_attr("gateway")?,
            metric: route
                .attr("metric")
                .map(|m| number(&m, &route.field("metric")))
                .transpose()?
                .unwrap_or(0),
        });
        route.finish()?;
    }
    root.finish()?;
    validate(&def)?;
    Ok(def)
}

fn parse_forward(mut forward: Element) -> Result<pb::NetworkForward, ConfError> {
    let mode = match forward.attr("mode") {
        Some(word) => lookup(FORWARD_MODES, &word, forward.field("mode"))?,
        None => pb::ForwardMode::Nat,
    };
    let mut parsed = pb::NetworkForward {
        mode: mode as i32,
        dev: forward.attr("dev").unwrap_or_default(),
        managed: yes_no(&mut forward, "managed")?.unwrap_or(false),
        ..Default::default()
    };
    if let Some(mut nat) = forward.child("nat") {
        let mut out = pb::NetworkNat {
            ipv6: yes_no(&mut nat, "ipv6")?.unwrap_or(false),
            ..Default::default()
        };
        if let Some(mut address) = nat.child("address") {
            out.address_start = address.required_attr("start")?;
            out.address_end = address.required_attr("end")?;
            address.finish()?;
        }
        if let Some(mut port) = nat.child("port") {
            out.port_start = number(&port.required_attr("start")?, &port.field("start"))?;
            out.port_end = number(&port.required_attr("end")?, &port.field("end"))?;
            port.finish()?;
        }
        nat.finish()?;
        parsed.nat = Some(out);
    }
    for mut interface in forward.children("interface") {
        parsed.interfaces.push(interface.required_attr("dev")?);
        interface.finish()?;
    }
    if let Some(mut pf) = forward.child("pf") {
        parsed.pf_dev = pf.required_attr("dev")?;
        pf.finish()?;
    }
    forward.finish()?;
    Ok(parsed)
}

fn parse_dns(mut dns: Element) -> Result<pb::NetworkDns, ConfError> {
    let mut parsed = pb::NetworkDns {
        enable: yes_no(&mut dns, "enable")?,
        forward_plain_names: yes_no(&mut dns, "forwardPlainNames")?,
        ..Default::default()
    };
    for mut forwarder in dns.children("forwarder") {
        parsed.forwarders.push(pb::DnsForwarder {
            addr: forwarder.attr("addr").unwrap_or_default(),
            domain: forwarder.attr("domain").unwrap_or_default(),
        });
        forwarder.finish()?;
    }
    for mut host in dns.children("host") {
        let mut parsed_host = pb::DnsHost {
            ip: host.required_attr("ip")?,
            ..Default::default()
        };
        for mut hostname in host.children("hostname") {
            parsed_host
                .hostnames
                .push(hostname.text().trim().to_string());
            hostname.finish()?;
        }
        host.finish()?;
        parsed.hosts.push(parsed_host);
    }
    dns.finish()?;
    Ok(parsed)
}

fn parse_ip(mut ip: Element) -> Result<pb::NetworkIp, ConfError> {
    let family = match ip.attr("family") {
        Some(word) => lookup(FAMILIES, &word, ip.field("family"))? as i32,
        None => 0,
    };
    let mut parsed = pb::NetworkIp {
        family,
        address: ip.required_attr("address")?,
        netmask: ip.attr("netmask").unwrap_or_default(),
        prefix: ip
            .attr("prefix")
            .map(|p| number(&p, &ip.field("prefix")))
            .transpose()?
            .unwrap_or(0),
        local_ptr: yes_no(&mut ip, "localPtr")?,
        ..Default::default()
    };
    if let Some(mut tftp) = ip.child("tftp") {
        parsed.tftp_root = tftp.required_attr("root")?;
        tftp.finish()?;
    }
    if let Some(mut dhcp) = ip.child("dhcp") {
        let mut out = pb::NetworkDhcp::default();
        for mut range in dhcp.children("range") {
            let mut parsed_range = pb::DhcpRange {
                start: range.required_attr("start")?,
                end: range.required_attr("end")?,
                lease_time_s: None,
            };
            if let Some(lease) = range.child("lease") {
                parsed_range.lease_time_s = Some(parse_lease(lease)?);
            }
            range.finish()?;
            out.ranges.push(parsed_range);
        }
        for host in dhcp.children("host") {
            out.hosts.push(parse_host_element(host)?);
        }
        if let Some(mut bootp) = dhcp.child("bootp") {
            out.bootp_file = bootp.required_attr("file")?;
            out.bootp_server = bootp.attr("server").unwrap_or_default();
            bootp.finish()?;
        }
        dhcp.finish()?;
        parsed.dhcp = Some(out);
    }
    ip.finish()?;
    Ok(parsed)
}

/// `<lease expiry='N' unit='seconds|minutes|hours'/>`; 0 is infinite.
fn parse_lease(mut lease: Element) -> Result<u64, ConfError> {
    let expiry: u64 = number(&lease.required_attr("expiry")?, &lease.field("expiry"))?;
    let scale = match lease.attr("unit").as_deref() {
        None | Some("minutes") => 60,
        Some("seconds") => 1,
        Some("hours") => 3600,
        Some(other) => {
            return Err(lease.attr_error(
                "unit",
                format!("'{other}' is not seconds, minutes or hours"),
            ));
        }
    };
    lease.finish()?;
    expiry
        .checked_mul(scale)
        .ok_or_else(|| ConfError::new("lease@expiry", "too long"))
}

fn parse_host_element(mut host: Element) -> Result<pb::DhcpHost, ConfError> {
    let mut parsed = pb::DhcpHost {
        mac: host.attr("mac").unwrap_or_default().to_ascii_lowercase(),
        id: host.attr("id").unwrap_or_default(),
        name: host.attr("name").unwrap_or_default(),
        ip: host.attr("ip").unwrap_or_default(),
        lease_time_s: None,
    };
    if let Some(lease) = host.child("lease") {
        parsed.lease_time_s = Some(parse_lease(lease)?);
    }
    host.finish()?;
    Ok(parsed)
}

/// One `<host mac= name= ip=/>` of `<ip><dhcp>` (virsh net-update ... ip-dhcp-host).
pub fn parse_dhcp_host(xml: &str) -> Result<pb::DhcpHost, ConfError> {
    let root = dom::parse(xml)?;
    if root.name != "host" {
        return Err(root.error(format!("expected a <host> element, not <{}>", root.name)));
    }
    let host = parse_host_element(root)?;
    check_host(&host, "host")?;
    Ok(host)
}

// ============================================================================================
// Validation
// ============================================================================================

fn address(text: &str, field: &str) -> Result<IpAddr, ConfError> {
    text.parse()
        .map_err(|_| ConfError::new(field, format!("'{text}' is not an IP address")))
}

fn check_mac(mac: &str, field: &str) -> Result<(), ConfError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let valid = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok());
    if valid {
        Ok(())
    } else {
        Err(ConfError::new(
            field,
            format!("'{mac}' is not a MAC address (xx:xx:xx:xx:xx:xx)"),
        ))
    }
}

/// An interface name the kernel takes: 1-15 bytes, no '/', ':' or white space.
pub fn check_interface_name(name: &str, field: &str) -> Result<(), ConfError> {
    let valid = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '"');
    if valid {
        Ok(())
    } else {
        Err(ConfError::new(
            field,
            format!(
                "'{}' is not an interface name (1-15 bytes, no '/', ':', quotes or spaces)",
                name.escape_debug()
            ),
        ))
    }
}

/// The prefix length of an `<ip>`: from `prefix`, or `netmask` (IPv4), or the family's default.
fn prefix_of(ip: &pb::NetworkIp, field: &str) -> Result<u8, ConfError> {
    let address = address(&ip.address, &format!("{field}@address"))?;
    if !ip.netmask.is_empty() && ip.prefix > 0 {
        return Err(ConfError::new(field, "give netmask or prefix, not both"));
    }
    if !ip.netmask.is_empty() {
        let IpAddr::V4(_) = address else {
            return Err(ConfError::new(
                format!("{field}@netmask"),
                "IPv6 takes a prefix",
            ));
        };
        let mask: std::net::Ipv4Addr = ip.netmask.parse().map_err(|_| {
            ConfError::new(
                format!("{field}@netmask"),
                format!("'{}' is not a netmask", ip.netmask),
            )
        })?;
        let bits = u32::from(mask);
        if bits.leading_ones() + bits.trailing_zeros() != 32 {
            return Err(ConfError::new(
                format!("{field}@netmask"),
                format!("'{}' is not a contiguous netmask", ip.netmask),
            ));
        }
        return Ok(u8::try_from(bits.leading_ones()).unwrap_or(32));
    }
    let max = if address.is_ipv4() { 32 } else { 128 };
    match ip.prefix {
        0 if address.is_ipv4() => Ok(24),
        0 => Ok(64),
        prefix if prefix <= max => Ok(u8::try_from(prefix).unwrap_or(0)),
        prefix => Err(ConfError::new(
            format!("{field}@prefix"),
            format!("{prefix} is longer than the address ({max} bits)"),
        )),
    }
}

fn masked(address: IpAddr, prefix: u8) -> u128 {
    match address {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            u128::from(u32::from(v4) & mask)
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            u128::from(v6) & mask
        }
    }
}

/// The subnet of an `<ip>` (or a `<route>` put as one): its network address and prefix length.
pub fn subnet_of(ip: &pb::NetworkIp) -> Result<(IpAddr, u8), ConfError> {
    let prefix = prefix_of(ip, "network/ip")?;
    let own = address(&ip.address, "network/ip@address")?;
    let network = match own {
        IpAddr::V4(_) => IpAddr::V4(
            u32::try_from(masked(own, prefix))
                .unwrap_or_default()
                .into(),
        ),
        IpAddr::V6(_) => IpAddr::V6(masked(own, prefix).into()),
    };
    Ok((network, prefix))
}

/// Whether `address` lies in `network`/`prefix`.
pub fn contains(network: IpAddr, prefix: u8, address: IpAddr) -> bool {
    network.is_ipv4() == address.is_ipv4() && masked(network, prefix) == masked(address, prefix)
}

fn ordinal(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn check_host(host: &pb::DhcpHost, field: &str) -> Result<(), ConfError> {
    if host.mac.is_empty() && host.id.is_empty() && host.name.is_empty() {
        return Err(ConfError::new(field, "a host needs a mac, an id or a name"));
    }
    if !host.mac.is_empty() {
        check_mac(&host.mac, &format!("{field}@mac"))?;
    }
    if !host.ip.is_empty() {
        address(&host.ip, &format!("{field}@ip"))?;
    }
    Ok(())
}

/// Checks a definition, naming the first wrong field.
pub fn validate(def: &pb::NetworkDefinition) -> Result<(), ConfError> {
    check_name(&def.name, "network/name")?;
    if let Some(bridge) = &def.bridge
        && !bridge.name.is_empty()
    {
        check_interface_name(&bridge.name, "network/bridge@name")?;
    }
    if !def.mac.is_empty() {
        check_mac(&def.mac, "network/mac@address")?;
    }
    if def.mtu_bytes != 0 && !(68..=65535).contains(&def.mtu_bytes) {
        return Err(ConfError::new(
            "network/mtu@size",
            format!("{} is outside 68-65535", def.mtu_bytes),
        ));
    }
    if let Some(forward) = &def.forward {
        if !forward.dev.is_empty() {
            check_interface_name(&forward.dev, "network/forward@dev")?;
        }
        for (index, dev) in forward.interfaces.iter().enumerate() {
            check_interface_name(
                dev,
                &format!("network/forward/interface[{}]@dev", index + 1),
            )?;
        }
        if forward.mode() == pb::ForwardMode::Bridge
            && forward.interfaces.is_empty()
            && def.bridge.as_ref().is_none_or(|b| b.name.is_empty())
        {
            return Err(ConfError::new(
                "network/bridge@name",
                "a bridge network names the host bridge (or forward interfaces)",
            ));
        }
        if let Some(nat) = &forward.nat {
            for (text, field) in [
                (&nat.address_start, "network/forward/nat/address@start"),
                (&nat.address_end, "network/forward/nat/address@end"),
            ] {
                if !text.is_empty() && !address(text, field)?.is_ipv4() {
                    return Err(ConfError::new(field, "NAT addresses are IPv4"));
                }
            }
            if nat.port_start != 0 || nat.port_end != 0 {
                let valid = (1..=65535).contains(&nat.port_start)
                    && (1..=65535).contains(&nat.port_end)
                    && nat.port_start <= nat.port_end;
                if !valid {
                    return Err(ConfError::new(
                        "network/forward/nat/port",
                        format!(
                            "{}-{} is not a port range within 1-65535",
                            nat.port_start, nat.port_end
                        ),
                    ));
                }
            }
        }
    }
    for (index, host) in def.dns.iter().flat_map(|d| &d.hosts).enumerate() {
        let field = format!("network/dns/host[{}]", index + 1);
        address(&host.ip, &format!("{field}@ip"))?;
        if host.hostnames.iter().all(|h| h.is_empty()) {
            return Err(ConfError::new(field, "a DNS host needs a hostname"));
        }
    }
    for (index, forwarder) in def.dns.iter().flat_map(|d| &d.forwarders).enumerate() {
        if !forwarder.addr.is_empty() {
            address(
                &forwarder.addr,
                &format!("network/dns/forwarder[{}]@addr", index + 1),
            )?;
        }
    }
    let mut seen_macs: Vec<&str> = Vec::new();
    let mut seen_ips: Vec<&str> = Vec::new();
    for (index, ip) in def.ips.iter().enumerate() {
        let field = if def.ips.len() == 1 {
            "network/ip".to_string()
        } else {
            format!("network/ip[{}]", index + 1)
        };
        let prefix = prefix_of(ip, &field)?;
        let own = address(&ip.address, &format!("{field}@address"))?;
        let subnet = masked(own, prefix);
        let inside = |text: &str, field: String| -> Result<IpAddr, ConfError> {
            let found = address(text, &field)?;
            if found.is_ipv4() != own.is_ipv4() || masked(found, prefix) != subnet {
                return Err(ConfError::new(
                    field,
                    format!("{text} is outside the network's {}/{prefix}", ip.address),
                ));
            }
            Ok(found)
        };
        let Some(dhcp) = &ip.dhcp else { continue };
        for (r, range) in dhcp.ranges.iter().enumerate() {
            let field = format!("{field}/dhcp/range[{}]", r + 1);
            let start = inside(&range.start, format!("{field}@start"))?;
            let end = inside(&range.end, format!("{field}@end"))?;
            if ordinal(start) > ordinal(end) {
                return Err(ConfError::new(
                    field,
                    format!("start {} is after end {}", range.start, range.end),
                ));
            }
        }
        for (h, host) in dhcp.hosts.iter().enumerate() {
            let field = format!("{field}/dhcp/host[{}]", h + 1);
            check_host(host, &field)?;
            if !host.ip.is_empty() {
                inside(&host.ip, format!("{field}@ip"))?;
                if seen_ips.contains(&host.ip.as_str()) {
                    return Err(ConfError::new(
                        format!("{field}@ip"),
                        format!("{} is given to two hosts", host.ip),
                    ));
                }
                seen_ips.push(&host.ip);
            }
            if !host.mac.is_empty() {
                if seen_macs.contains(&host.mac.as_str()) {
                    return Err(ConfError::new(
                        format!("{field}@mac"),
                        format!("{} appears twice", host.mac),
                    ));
                }
                seen_macs.push(&host.mac);
            }
        }
    }
    for (index, route) in def.routes.iter().enumerate() {
        let field = format!("network/route[{}]", index + 1);
        let as_ip = pb::NetworkIp {
            address: route.address.clone(),
            netmask: route.netmask.clone(),
            prefix: route.prefix,
            ..Default::default()
        };
        prefix_of(&as_ip, &field)?;
        let gateway = address(&route.gateway, &format!("{field}@gateway"))?;
        if gateway.is_ipv4() != address(&route.address, &field)?.is_ipv4() {
            return Err(ConfError::new(
                format!("{field}@gateway"),
                "the gateway and the address are of different families",
            ));
        }
    }
    Ok(())
}

// ============================================================================================
// Formatting
// ============================================================================================

/// The definition as libvirt's network XML.
pub fn format(def: &pb::NetworkDefinition) -> Result<String, XmlError> {
    let mut x = XmlWriter::new();
    x.open("network", &[])?;
    x.text("name", &[], &def.name)?;
    if !def.uuid.is_empty() {
        x.text("uuid", &[], &def.uuid)?;
    }
    if let Some(forward) = &def.forward {
        format_forward(&mut x, forward)?;
    }
    if let Some(bridge) = &def.bridge {
        let attrs = Attrs::default()
            .set("name", &bridge.name)
            .set(
                "stp",
                match bridge.stp {
                    Some(true) => "on",
                    Some(false) => "off",
                    None => "",
                },
            )
            .set("delay", bridge.delay_s)
            .set("zone", &bridge.zone);
        x.empty("bridge", &attrs.refs())?;
    }
    if def.mtu_bytes > 0 {
        x.empty("mtu", &[("size", &def.mtu_bytes.to_string())])?;
    }
    if !def.mac.is_empty() {
        x.empty("mac", &[("address", &def.mac)])?;
    }
    if let Some(domain) = &def.domain {
        let attrs = Attrs::default()
            .set("name", &domain.name)
            .set("localOnly", optional_yes_no(domain.local_only));
        x.empty("domain", &attrs.refs())?;
    }
    if let Some(dns) = &def.dns {
        format_dns(&mut x, dns)?;
    }
    for ip in &def.ips {
        format_ip(&mut x, ip)?;
    }
    for route in &def.routes {
        let attrs = Attrs::default()
            .word("family", FAMILIES, route.family)
            .set("address", &route.address)
            .set("netmask", &route.netmask)
            .set("prefix", nonzero(route.prefix))
            .set("gateway", &route.gateway)
            .set("metric", nonzero(route.metric));
        x.empty("route", &attrs.refs())?;
    }
    x.close("network")?;
    Ok(x.finish())
}

fn nonzero(value: u32) -> String {
    if value == 0 {
        String::new()
    } else {
        value.to_string()
    }
}

fn optional_yes_no(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "",
    }
}

fn format_forward(x: &mut XmlWriter, forward: &pb::NetworkForward) -> Result<(), XmlError> {
    let mut attrs = Attrs::default().word("mode", FORWARD_MODES, forward.mode);
    if forward.mode == 0 {
        attrs = attrs.set("mode", "nat");
    }
    let attrs = attrs
        .set("dev", &forward.dev)
        .set("managed", if forward.managed { "yes" } else { "" });
    let empty = forward.nat.is_none() && forward.interfaces.is_empty() && forward.pf_dev.is_empty();
    if empty {
        return x.empty("forward", &attrs.refs());
    }
    x.open("forward", &attrs.refs())?;
    if let Some(nat) = &forward.nat {
        let nat_attrs = Attrs::default().set("ipv6", if nat.ipv6 { "yes" } else { "" });
        let inner = !nat.address_start.is_empty() || nat.port_start != 0;
        if inner {
            x.open("nat", &nat_attrs.refs())?;
            if !nat.address_start.is_empty() {
                x.empty(
                    "address",
                    &[("start", &nat.address_start), ("end", &nat.address_end)],
                )?;
            }
            if nat.port_start != 0 {
                x.empty(
                    "port",
                    &[
                        ("start", &nat.port_start.to_string()),
                        ("end", &nat.port_end.to_string()),
                    ],
                )?;
            }
            x.close("nat")?;
        } else {
            x.empty("nat", &nat_attrs.refs())?;
        }
    }
    if !forward.pf_dev.is_empty() {
        x.empty("pf", &[("dev", &forward.pf_dev)])?;
    }
    for dev in &forward.interfaces {
        x.empty("interface", &[("dev", dev)])?;
    }
    x.close("forward")
}

fn format_dns(x: &mut XmlWriter, dns: &pb::NetworkDns) -> Result<(), XmlError> {
    let attrs = Attrs::default()
        .set("enable", optional_yes_no(dns.enable))
        .set(
            "forwardPlainNames",
            optional_yes_no(dns.forward_plain_names),
        );
    if dns.forwarders.is_empty() && dns.hosts.is_empty() {
        return x.empty("dns", &attrs.refs());
    }
    x.open("dns", &attrs.refs())?;
    for forwarder in &dns.forwarders {
        let attrs = Attrs::default()
            .set("domain", &forwarder.domain)
            .set("addr", &forwarder.addr);
        x.empty("forwarder", &attrs.refs())?;
    }
    for host in &dns.hosts {
        x.open("host", &[("ip", &host.ip)])?;
        for hostname in &host.hostnames {
            x.text("hostname", &[], hostname)?;
        }
        x.close("host")?;
    }
    x.close("dns")
}

fn format_ip(x: &mut XmlWriter, ip: &pb::NetworkIp) -> Result<(), XmlError> {
    let attrs = Attrs::default()
        .word("family", FAMILIES, ip.family)
        .set("address", &ip.address)
        .set("netmask", &ip.netmask)
        .set("prefix", nonzero(ip.prefix))
        .set("localPtr", optional_yes_no(ip.local_ptr));
    if ip.dhcp.is_none() && ip.tftp_root.is_empty() {
        return x.empty("ip", &attrs.refs());
    }
    x.open("ip", &attrs.refs())?;
    if !ip.tftp_root.is_empty() {
        x.empty("tftp", &[("root", &ip.tftp_root)])?;
    }
    if let Some(dhcp) = &ip.dhcp {
        if dhcp.ranges.is_empty() && dhcp.hosts.is_empty() && dhcp.bootp_file.is_empty() {
            x.empty("dhcp", &[])?;
        } else {
            x.open("dhcp", &[])?;
            for range in &dhcp.ranges {
                let attrs = [("start", range.start.as_str()), ("end", range.end.as_str())];
                match range.lease_time_s {
                    None => x.empty("range", &attrs)?,
                    Some(seconds) => {
                        x.open("range", &attrs)?;
                        format_lease(x, seconds)?;
                        x.close("range")?;
                    }
                }
            }
            for host in &dhcp.hosts {
                format_host(x, host)?;
            }
            if !dhcp.bootp_file.is_empty() {
                let attrs = Attrs::default()
                    .set("file", &dhcp.bootp_file)
                    .set("server", &dhcp.bootp_server);
                x.empty("bootp", &attrs.refs())?;
            }
            x.close("dhcp")?;
        }
    }
    x.close("ip")
}

fn format_lease(x: &mut XmlWriter, seconds: u64) -> Result<(), XmlError> {
    x.empty(
        "lease",
        &[("expiry", &seconds.to_string()), ("unit", "seconds")],
    )
}

fn format_host(x: &mut XmlWriter, host: &pb::DhcpHost) -> Result<(), XmlError> {
    let attrs = Attrs::default()
        .set("mac", &host.mac)
        .set("id", &host.id)
        .set("name", &host.name)
        .set("ip", &host.ip);
    match host.lease_time_s {
        None => x.empty("host", &attrs.refs()),
        Some(seconds) => {
            x.open("host", &attrs.refs())?;
            format_lease(x, seconds)?;
            x.close("host")
        }
    }
}

/// The word of a forward mode ("nat", "bridge", ...).
pub fn forward_mode_name(mode: i32) -> &'static str {
    name_of(FORWARD_MODES, mode)
}
