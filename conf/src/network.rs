//! libvirt network XML (`<network>`) <-> `NetworkDefinition` (net-define, net-dumpxml): parse
//! (every element and attribute is understood or refused by its path), fill libvirt's defaults,
//! validate naming the field, format in libvirt's layout. Also one `<host>` of `<ip><dhcp>` for
//! net-update, and the `<bandwidth>`, `<vlan>` and `<virtualport>` that network ports share.
//! A UUID, bridge name or bridge MAC left out stays empty: svc-network picks them on define.

use std::net::{IpAddr, Ipv4Addr};

use vireo_proto::network::v1 as pb;

use crate::dom::{self, ConfError, Element};
use crate::domain::{
    Attrs, Fmt, Table, check_host_path, check_name, enum_attr, lookup, name_of, number,
    number_attr, pci_address, valid_uuid, yes_no,
};
use crate::xml::{XmlError, XmlWriter};

/// `none` is libvirt's word for isolated; `fill_defaults` turns a bare one into no `<forward>`.
pub const FORWARD_MODES: Table<pb::ForwardMode> = &[
    ("none", pb::ForwardMode::None),
    ("nat", pb::ForwardMode::Nat),
    ("route", pb::ForwardMode::Route),
    ("open", pb::ForwardMode::Open),
    ("bridge", pb::ForwardMode::Bridge),
    ("private", pb::ForwardMode::Private),
    ("vepa", pb::ForwardMode::Vepa),
    ("passthrough", pb::ForwardMode::Passthrough),
    ("hostdev", pb::ForwardMode::Hostdev),
];

const IP_FAMILIES: Table<pb::IpFamily> =
    &[("ipv4", pb::IpFamily::Ipv4), ("ipv6", pb::IpFamily::Ipv6)];

const MAC_TABLE_MANAGERS: Table<pb::MacTableManager> = &[
    ("kernel", pb::MacTableManager::Kernel),
    ("libvirt", pb::MacTableManager::Libvirt),
];

const SRV_PROTOCOLS: Table<pb::DnsSrvProtocol> = &[
    ("tcp", pb::DnsSrvProtocol::Tcp),
    ("udp", pb::DnsSrvProtocol::Udp),
];

const VIRTUAL_PORT_TYPES: Table<pb::VirtualPortType> = &[
    ("802.1Qbg", pb::VirtualPortType::VirtualPortType8021qbg),
    ("802.1Qbh", pb::VirtualPortType::VirtualPortType8021qbh),
    ("openvswitch", pb::VirtualPortType::Openvswitch),
    ("midonet", pb::VirtualPortType::Midonet),
];

const NATIVE_MODES: Table<pb::VlanNativeMode> = &[
    ("tagged", pb::VlanNativeMode::Tagged),
    ("untagged", pb::VlanNativeMode::Untagged),
];

/// dnsmasq hands out no lease shorter than this.
const MIN_LEASE_S: u64 = 120;

/// The most a `<portgroup name>` or a `<virtualport>` profile id may hold (libvirt's limits).
const MAX_PORTGROUP_NAME_BYTES: usize = 64;
const MAX_PROFILE_ID_BYTES: usize = 39;

/// The word of a forward mode ("nat", "bridge", ...).
pub fn forward_mode_name(mode: i32) -> &'static str {
    name_of(FORWARD_MODES, mode)
}

/// The modes whose bridge Vireo creates and runs (with STP, addresses, DHCP and DNS).
fn manages_bridge(mode: pb::ForwardMode) -> bool {
    matches!(
        mode,
        pb::ForwardMode::None
            | pb::ForwardMode::Nat
            | pb::ForwardMode::Route
            | pb::ForwardMode::Open
    )
}

/// The mode a definition runs in: no `<forward>` is isolated, a bare one NAT.
fn mode_of(def: &pb::NetworkDefinition) -> pb::ForwardMode {
    match &def.forward {
        None => pb::ForwardMode::None,
        Some(forward) if forward.mode == 0 => pb::ForwardMode::Nat,
        Some(forward) => forward.mode(),
    }
}

/// `parent/name` for the first such child and `parent/name[n]` for the n-th, as the parser
/// writes paths, so that a validation error names the element the same way.
fn nth(parent: &str, name: &str, index: usize) -> String {
    if index == 0 {
        format!("{parent}/{name}")
    } else {
        format!("{parent}/{name}[{}]", index + 1)
    }
}

// ============================================================================================
// Parsing
// ============================================================================================

/// Parses a `<network>` document, fills libvirt's defaults and validates: what net-define and
/// net-create accept. Unlike `pool::parse` this is the whole pipeline, as svc-network relies on
/// it for checked definitions (typed ones too, through `format`).
pub fn parse(xml: &str) -> Result<pb::NetworkDefinition, ConfError> {
    let mut def = parse_network(dom::parse(xml)?)?;
    fill_defaults(&mut def);
    validate(&def)?;
    Ok(def)
}

fn parse_network(mut root: Element) -> Result<pb::NetworkDefinition, ConfError> {
    if root.name != "network" {
        return Err(root.error(format!(
            "the root element must be <network>, not <{}>",
            root.name
        )));
    }
    // libvirt's live count of attached guests: checked and dropped, like a pool's capacity.
    number_attr::<u32>(&mut root, "connections")?;
    let mut def = pb::NetworkDefinition {
        name: root.child_text("name")?.unwrap_or_default(),
        uuid: root.child_text("uuid")?.unwrap_or_default(),
        ..Default::default()
    };
    if let Some(bridge) = root.child("bridge") {
        def.bridge = Some(parse_bridge(bridge)?);
    }
    if let Some(mut mac) = root.child("mac") {
        def.mac = mac.required_attr("address")?;
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
    for route in root.children("route") {
        def.routes.push(parse_route(route)?);
    }
    (def.bandwidth, def.vlan, def.virtualport) = parse_port_settings(&mut root)?;
    for portgroup in root.children("portgroup") {
        def.portgroups.push(parse_portgroup(portgroup)?);
    }
    root.finish()?;
    Ok(def)
}

fn parse_bridge(mut el: Element) -> Result<pb::NetworkBridge, ConfError> {
    let stp = yes_no(&mut el, "stp")?;
    let delay = number_attr::<u32>(&mut el, "delay")?;
    // The RHEL 6 guide writes `forwardDelay`; libvirt reads `delay`.
    let forward_delay = number_attr::<u32>(&mut el, "forwardDelay")?;
    if let (Some(delay), Some(other)) = (delay, forward_delay)
        && delay != other
    {
        return Err(el.attr_error(
            "forwardDelay",
            format!("{other} disagrees with delay='{delay}'"),
        ));
    }
    let bridge = pb::NetworkBridge {
        name: el.attr("name").unwrap_or_default(),
        stp,
        delay_s: delay.or(forward_delay).unwrap_or(0),
        mac_table_manager: enum_attr(&mut el, "macTableManager", MAC_TABLE_MANAGERS)?,
        zone: el.attr("zone").unwrap_or_default(),
    };
    el.finish()?;
    Ok(bridge)
}

fn parse_forward(mut el: Element) -> Result<pb::NetworkForward, ConfError> {
    let mut forward = pb::NetworkForward {
        // Unset is UNSPECIFIED, which the proto reads as NAT, like libvirt's bare <forward/>.
        mode: enum_attr(&mut el, "mode", FORWARD_MODES)?,
        dev: el.attr("dev").unwrap_or_default(),
        managed: yes_no(&mut el, "managed")?.unwrap_or(false),
        ..Default::default()
    };
    if let Some(nat) = el.child("nat") {
        forward.nat = Some(parse_nat(nat)?);
    }
    if let Some(mut pf) = el.child("pf") {
        forward.pf_dev = pf.required_attr("dev")?;
        pf.finish()?;
    }
    for mut interface in el.children("interface") {
        forward.interfaces.push(interface.required_attr("dev")?);
        interface.finish()?;
    }
    for mut address in el.children("address") {
        let kind = address.required_attr("type")?;
        if kind != "pci" {
            return Err(address.attr_error(
                "type",
                format!("'{kind}' is not supported by Vireo (supported: pci)"),
            ));
        }
        let pci = pci_address(&mut address)?;
        if pci.multifunction {
            return Err(address.attr_error("multifunction", "a VF is one function"));
        }
        address.finish()?;
        forward
            .pci_addresses
            .push(pci_text(pci.domain, pci.bus, pci.slot, pci.function));
    }
    el.finish()?;
    Ok(forward)
}

fn parse_nat(mut el: Element) -> Result<pb::NetworkNat, ConfError> {
    let mut nat = pb::NetworkNat {
        ipv6: yes_no(&mut el, "ipv6")?.unwrap_or(false),
        ..Default::default()
    };
    if let Some(mut address) = el.child("address") {
        nat.address_start = address.required_attr("start")?;
        // libvirt takes a lone start as a one-address range.
        nat.address_end = address.attr("end").unwrap_or_default();
        address.finish()?;
    }
    if let Some(mut port) = el.child("port") {
        nat.port_start = number(&port.required_attr("start")?, &port.field("start"))?;
        nat.port_end = number(&port.required_attr("end")?, &port.field("end"))?;
        port.finish()?;
    }
    el.finish()?;
    Ok(nat)
}

fn parse_dns(mut el: Element) -> Result<pb::NetworkDns, ConfError> {
    let mut dns = pb::NetworkDns {
        enable: yes_no(&mut el, "enable")?,
        forward_plain_names: yes_no(&mut el, "forwardPlainNames")?,
        ..Default::default()
    };
    for mut forwarder in el.children("forwarder") {
        dns.forwarders.push(pb::DnsForwarder {
            addr: forwarder.attr("addr").unwrap_or_default(),
            domain: forwarder.attr("domain").unwrap_or_default(),
        });
        forwarder.finish()?;
    }
    for mut host in el.children("host") {
        let mut parsed = pb::DnsHost {
            ip: host.required_attr("ip")?,
            ..Default::default()
        };
        for mut hostname in host.children("hostname") {
            parsed.hostnames.push(hostname.text());
            hostname.finish()?;
        }
        host.finish()?;
        dns.hosts.push(parsed);
    }
    for mut txt in el.children("txt") {
        dns.txts.push(pb::DnsTxt {
            name: txt.required_attr("name")?,
            value: txt.required_attr("value")?,
        });
        txt.finish()?;
    }
    for mut srv in el.children("srv") {
        let protocol = srv.required_attr("protocol")?;
        dns.srvs.push(pb::DnsSrv {
            service: srv.required_attr("service")?,
            protocol: lookup(SRV_PROTOCOLS, &protocol, srv.field("protocol"))? as i32,
            domain: srv.attr("domain").unwrap_or_default(),
            target: srv.attr("target").unwrap_or_default(),
            port: number_attr(&mut srv, "port")?.unwrap_or(0),
            priority: number_attr(&mut srv, "priority")?.unwrap_or(0),
            weight: number_attr(&mut srv, "weight")?.unwrap_or(0),
        });
        srv.finish()?;
    }
    el.finish()?;
    Ok(dns)
}

fn is_wildcard(address: &str) -> bool {
    address
        .parse::<IpAddr>()
        .is_ok_and(|address| address.is_unspecified())
}

/// `prefix`: given as 0 only for a default route (0.0.0.0 or ::), since 0 is also "not given".
fn parse_prefix(el: &mut Element, address: &str) -> Result<u32, ConfError> {
    let Some(text) = el.attr("prefix") else {
        return Ok(0);
    };
    let prefix = number(&text, &el.field("prefix"))?;
    if prefix == 0 && !is_wildcard(address) {
        return Err(el.attr_error(
            "prefix",
            "0 is only for a default route (address 0.0.0.0 or ::)",
        ));
    }
    Ok(prefix)
}

fn parse_ip(mut el: Element) -> Result<pb::NetworkIp, ConfError> {
    let family = enum_attr(&mut el, "family", IP_FAMILIES)?;
    let address = el.required_attr("address")?;
    let mut ip = pb::NetworkIp {
        family,
        netmask: el.attr("netmask").unwrap_or_default(),
        prefix: parse_prefix(&mut el, &address)?,
        address,
        local_ptr: yes_no(&mut el, "localPtr")?,
        ..Default::default()
    };
    if let Some(mut tftp) = el.child("tftp") {
        ip.tftp_root = tftp.required_attr("root")?;
        tftp.finish()?;
    }
    if let Some(mut dhcp_el) = el.child("dhcp") {
        let mut dhcp = pb::NetworkDhcp::default();
        for mut range in dhcp_el.children("range") {
            let mut parsed = pb::DhcpRange {
                start: range.required_attr("start")?,
                end: range.required_attr("end")?,
                lease_time_s: None,
            };
            if let Some(lease) = range.child("lease") {
                parsed.lease_time_s = Some(parse_lease(lease)?);
            }
            range.finish()?;
            dhcp.ranges.push(parsed);
        }
        for host in dhcp_el.children("host") {
            dhcp.hosts.push(parse_host(host)?);
        }
        if let Some(mut bootp) = dhcp_el.child("bootp") {
            dhcp.bootp_file = bootp.required_attr("file")?;
            dhcp.bootp_server = bootp.attr("server").unwrap_or_default();
            bootp.finish()?;
        }
        dhcp_el.finish()?;
        ip.dhcp = Some(dhcp);
    }
    el.finish()?;
    Ok(ip)
}

/// `<lease expiry='N' unit='seconds|minutes|hours'/>` in seconds; 0 is infinite.
fn parse_lease(mut el: Element) -> Result<u64, ConfError> {
    let expiry: u64 = number(&el.required_attr("expiry")?, &el.field("expiry"))?;
    let scale = match el.attr("unit").as_deref() {
        None | Some("minutes") => 60,
        Some("seconds") => 1,
        Some("hours") => 3600,
        Some(other) => {
            return Err(el.attr_error(
                "unit",
                format!("'{other}' is not seconds, minutes or hours"),
            ));
        }
    };
    let seconds = expiry
        .checked_mul(scale)
        .ok_or_else(|| el.attr_error("expiry", "is too long"))?;
    el.finish()?;
    Ok(seconds)
}

fn parse_host(mut el: Element) -> Result<pb::DhcpHost, ConfError> {
    let mut host = pb::DhcpHost {
        mac: el.attr("mac").unwrap_or_default(),
        id: el.attr("id").unwrap_or_default(),
        name: el.attr("name").unwrap_or_default(),
        ip: el.attr("ip").unwrap_or_default(),
        lease_time_s: None,
    };
    if let Some(lease) = el.child("lease") {
        host.lease_time_s = Some(parse_lease(lease)?);
    }
    el.finish()?;
    Ok(host)
}

fn parse_route(mut el: Element) -> Result<pb::NetworkRoute, ConfError> {
    let family = enum_attr(&mut el, "family", IP_FAMILIES)?;
    let address = el.required_attr("address")?;
    let route = pb::NetworkRoute {
        family,
        netmask: el.attr("netmask").unwrap_or_default(),
        prefix: parse_prefix(&mut el, &address)?,
        address,
        gateway: el.required_attr("gateway")?,
        metric: match number_attr::<u32>(&mut el, "metric")? {
            Some(0) => return Err(el.attr_error("metric", "must be at least 1")),
            metric => metric.unwrap_or(0),
        },
    };
    el.finish()?;
    Ok(route)
}

/// What a network and each of its portgroups may set for their ports: QoS, VLANs, virtualport.
type PortSettings = (
    Option<pb::Bandwidth>,
    Option<pb::Vlan>,
    Option<pb::VirtualPort>,
);

fn parse_port_settings(el: &mut Element) -> Result<PortSettings, ConfError> {
    Ok((
        el.child("bandwidth").map(parse_bandwidth).transpose()?,
        el.child("vlan").map(parse_vlan).transpose()?,
        el.child("virtualport").map(parse_virtualport).transpose()?,
    ))
}

/// `<bandwidth>` with its `<inbound>` and `<outbound>` (KiB/s and KiB, as libvirt).
pub(crate) fn parse_bandwidth(mut el: Element) -> Result<pb::Bandwidth, ConfError> {
    let mut bandwidth = pb::Bandwidth::default();
    if let Some(inbound) = el.child("inbound") {
        bandwidth.inbound = Some(parse_rate(inbound)?);
    }
    if let Some(outbound) = el.child("outbound") {
        bandwidth.outbound = Some(parse_rate(outbound)?);
    }
    el.finish()?;
    Ok(bandwidth)
}

fn parse_rate(mut el: Element) -> Result<pb::BandwidthRate, ConfError> {
    let rate = pb::BandwidthRate {
        average_kib_s: number_attr(&mut el, "average")?.unwrap_or(0),
        peak_kib_s: number_attr(&mut el, "peak")?.unwrap_or(0),
        burst_kib: number_attr(&mut el, "burst")?.unwrap_or(0),
        floor_kib_s: number_attr(&mut el, "floor")?.unwrap_or(0),
    };
    // All zeros is "no limit" in the typed message; in XML it is a mistake, as in libvirt.
    let missing = el.attr_error("average", "is required (or floor)");
    el.finish()?;
    if rate == pb::BandwidthRate::default() {
        return Err(missing);
    }
    Ok(rate)
}

/// `<vlan [trunk]><tag id [nativeMode]/>...</vlan>`.
pub(crate) fn parse_vlan(mut el: Element) -> Result<pb::Vlan, ConfError> {
    let trunk = yes_no(&mut el, "trunk")?;
    let mut tags = Vec::new();
    for mut tag in el.children("tag") {
        tags.push(pb::VlanTag {
            id: number(&tag.required_attr("id")?, &tag.field("id"))?,
            native_mode: enum_attr(&mut tag, "nativeMode", NATIVE_MODES)?,
        });
        tag.finish()?;
    }
    if trunk == Some(false) && tags.len() > 1 {
        return Err(el.attr_error("trunk", "a VLAN with several tags is a trunk"));
    }
    el.finish()?;
    Ok(pb::Vlan {
        trunk: trunk.unwrap_or(false),
        tags,
    })
}

/// `<virtualport [type]><parameters .../></virtualport>`.
pub(crate) fn parse_virtualport(mut el: Element) -> Result<pb::VirtualPort, ConfError> {
    let mut port = pb::VirtualPort {
        r#type: enum_attr(&mut el, "type", VIRTUAL_PORT_TYPES)?,
        ..Default::default()
    };
    if let Some(mut parameters) = el.child("parameters") {
        port.manager_id = number_attr(&mut parameters, "managerid")?.unwrap_or(0);
        port.type_id = number_attr(&mut parameters, "typeid")?.unwrap_or(0);
        port.type_id_version = number_attr(&mut parameters, "typeidversion")?.unwrap_or(0);
        port.instance_id = parameters.attr("instanceid").unwrap_or_default();
        port.profile_id = parameters.attr("profileid").unwrap_or_default();
        port.interface_id = parameters.attr("interfaceid").unwrap_or_default();
        parameters.finish()?;
    }
    el.finish()?;
    Ok(port)
}

fn parse_portgroup(mut el: Element) -> Result<pb::NetworkPortgroup, ConfError> {
    let mut group = pb::NetworkPortgroup {
        name: el.required_attr("name")?,
        is_default: yes_no(&mut el, "default")?.unwrap_or(false),
        ..Default::default()
    };
    (group.bandwidth, group.vlan, group.virtualport) = parse_port_settings(&mut el)?;
    el.finish()?;
    Ok(group)
}

/// One `<host mac= id= name= ip=/>` of `<ip><dhcp>` (virsh net-update ... ip-dhcp-host). The
/// ip may be left out, as net-update's delete matches on the MAC or id alone.
pub fn parse_dhcp_host(xml: &str) -> Result<pb::DhcpHost, ConfError> {
    let root = dom::parse(xml)?;
    if root.name != "host" {
        return Err(root.error(format!("expected a <host> element, not <{}>", root.name)));
    }
    let mut host = parse_host(root)?;
    host.mac.make_ascii_lowercase();
    let ipv4 = host.ip.parse::<IpAddr>().ok().map(|ip| ip.is_ipv4());
    check_host(&host, "host", ipv4)?;
    Ok(host)
}

// ============================================================================================
// Defaults
// ============================================================================================

/// Fills what libvirt fills on define, and drops what it would not write back (an empty
/// `<nat/>`, `<dhcp/>`, `<dns/>` or `<bandwidth/>`).
pub fn fill_defaults(def: &mut pb::NetworkDefinition) {
    def.uuid.make_ascii_lowercase();
    def.mac.make_ascii_lowercase();
    if let Some(forward) = def.forward.as_mut() {
        if forward.mode == 0 {
            forward.mode = pb::ForwardMode::Nat as i32;
        }
        if forward
            .nat
            .as_ref()
            .is_some_and(|nat| *nat == pb::NetworkNat::default())
        {
            forward.nat = None;
        }
    }
    let bare_none = pb::NetworkForward {
        mode: pb::ForwardMode::None as i32,
        ..Default::default()
    };
    if def.forward.as_ref() == Some(&bare_none) {
        def.forward = None;
    }
    if manages_bridge(mode_of(def)) {
        def.bridge.get_or_insert_default().stp.get_or_insert(true);
    }
    if def.dns.as_ref() == Some(&pb::NetworkDns::default()) {
        def.dns = None;
    }
    for ip in &mut def.ips {
        if let Some(dhcp) = ip.dhcp.as_mut() {
            for host in &mut dhcp.hosts {
                host.mac.make_ascii_lowercase();
            }
        }
        if ip.dhcp.as_ref() == Some(&pb::NetworkDhcp::default()) {
            ip.dhcp = None;
        }
    }
    fill_bandwidth(&mut def.bandwidth);
    fill_vlan(&mut def.vlan);
    for group in &mut def.portgroups {
        fill_bandwidth(&mut group.bandwidth);
        fill_vlan(&mut group.vlan);
    }
}

/// A direction with every rate 0 is no limit (SetPortBandwidth's way of removing one).
pub(crate) fn fill_bandwidth(bandwidth: &mut Option<pb::Bandwidth>) {
    if let Some(both) = bandwidth.as_mut() {
        for rate in [&mut both.inbound, &mut both.outbound] {
            if rate.as_ref() == Some(&pb::BandwidthRate::default()) {
                *rate = None;
            }
        }
    }
    if bandwidth
        .as_ref()
        .is_some_and(|both| both.inbound.is_none() && both.outbound.is_none())
    {
        *bandwidth = None;
    }
}

/// More than one tag is a trunk, and libvirt says so.
pub(crate) fn fill_vlan(vlan: &mut Option<pb::Vlan>) {
    if let Some(vlan) = vlan.as_mut()
        && vlan.tags.len() > 1
    {
        vlan.trunk = true;
    }
}

// ============================================================================================
// Validation
// ============================================================================================

fn address(text: &str, field: &str) -> Result<IpAddr, ConfError> {
    text.parse().map_err(|_| {
        ConfError::new(
            field,
            format!("'{}' is not an IP address", text.escape_debug()),
        )
    })
}

fn check_enum<T: TryFrom<i32>>(value: i32, field: &str) -> Result<T, ConfError> {
    T::try_from(value).map_err(|_| ConfError::new(field, format!("{value} is not a known value")))
}

/// A unicast MAC, as libvirt requires of bridges and DHCP hosts.
fn check_mac(mac: &str, field: &str) -> Result<(), ConfError> {
    let bytes: Vec<Option<u8>> = mac
        .split(':')
        .map(|part| {
            Some(part)
                .filter(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|p| u8::from_str_radix(p, 16).ok())
        })
        .collect();
    match bytes.as_slice() {
        [Some(first), rest @ ..] if rest.len() == 5 && rest.iter().all(Option::is_some) => {
            if first & 1 == 1 {
                Err(ConfError::new(
                    field,
                    format!("{mac} is a multicast MAC address"),
                ))
            } else {
                Ok(())
            }
        }
        _ => Err(ConfError::new(
            field,
            format!(
                "'{}' is not a MAC address (xx:xx:xx:xx:xx:xx)",
                mac.escape_debug()
            ),
        )),
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

/// A DNS name of RFC 1123 labels; `underscore` also allows the `_` of service labels.
fn check_dns_name(name: &str, field: &str, underscore: bool) -> Result<(), ConfError> {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || (underscore && c == '_'))
    };
    if !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(ConfError::new(
            field,
            format!(
                "'{}' is not a DNS name (letters, digits and '-' in dot-separated labels)",
                name.escape_debug()
            ),
        ))
    }
}

/// Free text that ends up in dnsmasq's configuration: one line, no quotes.
fn check_text(text: &str, field: &str) -> Result<(), ConfError> {
    if text.chars().any(|c| c.is_control() || c == '"') {
        Err(ConfError::new(
            field,
            "must not contain control characters or '\"'",
        ))
    } else {
        Ok(())
    }
}

/// "0000:03:10.1" as (domain, bus, slot, function), each within PCI's limits.
fn split_pci(text: &str) -> Option<(u32, u32, u32, u32)> {
    let (domain, rest) = text.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (slot, function) = rest.split_once('.')?;
    let hex = |part: &str, max: u32| {
        Some(part)
            .filter(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|p| u32::from_str_radix(p, 16).ok())
            .filter(|value| *value <= max)
    };
    Some((
        hex(domain, 0xffff)?,
        hex(bus, 0xff)?,
        hex(slot, 0x1f)?,
        hex(function, 7)?,
    ))
}

fn pci_text(domain: u32, bus: u32, slot: u32, function: u32) -> String {
    format!("{domain:04x}:{bus:02x}:{slot:02x}.{function:x}")
}

/// The prefix length from `prefix`, or `netmask` (IPv4 only), or libvirt's default: 0 for the
/// wildcard address (a default route), an IPv4 address's class, 64 for IPv6.
fn prefix_len(address: IpAddr, netmask: &str, prefix: u32, field: &str) -> Result<u8, ConfError> {
    if !netmask.is_empty() && prefix > 0 {
        return Err(ConfError::new(field, "give netmask or prefix, not both"));
    }
    if !netmask.is_empty() {
        let IpAddr::V4(_) = address else {
            return Err(ConfError::new(
                format!("{field}@netmask"),
                "IPv6 takes a prefix, not a netmask",
            ));
        };
        let mask: Ipv4Addr = netmask.parse().map_err(|_| {
            ConfError::new(
                format!("{field}@netmask"),
                format!("'{}' is not a netmask", netmask.escape_debug()),
            )
        })?;
        let bits = u32::from(mask);
        if bits.leading_ones() + bits.trailing_zeros() != 32 {
            return Err(ConfError::new(
                format!("{field}@netmask"),
                format!("'{netmask}' is not a contiguous netmask"),
            ));
        }
        return Ok(u8::try_from(bits.leading_ones()).unwrap_or(32));
    }
    let max: u8 = if address.is_ipv4() { 32 } else { 128 };
    let prefix = u8::try_from(prefix)
        .ok()
        .filter(|prefix| *prefix <= max)
        .ok_or_else(|| {
            ConfError::new(
                format!("{field}@prefix"),
                format!("{prefix} is longer than the address ({max} bits)"),
            )
        })?;
    if prefix > 0 {
        return Ok(prefix);
    }
    if address.is_unspecified() {
        return Ok(0);
    }
    match address {
        IpAddr::V4(v4) => match v4.octets()[0] {
            0..=127 => Ok(8),
            128..=191 => Ok(16),
            192..=223 => Ok(24),
            _ => Err(ConfError::new(
                format!("{field}@address"),
                format!("{v4} has no natural prefix: give netmask or prefix"),
            )),
        },
        IpAddr::V6(_) => Ok(64),
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

fn network_address(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(
            u32::try_from(masked(address, prefix)).unwrap_or_default(),
        )),
        IpAddr::V6(_) => IpAddr::V6(masked(address, prefix).into()),
    }
}

/// The subnet of an `<ip>` (or a `<route>` put as one): its network address and prefix length.
pub fn subnet_of(ip: &pb::NetworkIp) -> Result<(IpAddr, u8), ConfError> {
    let own = address(&ip.address, "network/ip@address")?;
    let prefix = prefix_len(own, &ip.netmask, ip.prefix, "network/ip")?;
    Ok((network_address(own, prefix), prefix))
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

/// An `<ip>` or `<route>` family agrees with its address.
fn check_family(family: i32, address: IpAddr, field: &str) -> Result<(), ConfError> {
    let matches = match check_enum::<pb::IpFamily>(family, field)? {
        pb::IpFamily::Unspecified => true,
        pb::IpFamily::Ipv4 => address.is_ipv4(),
        pb::IpFamily::Ipv6 => address.is_ipv6(),
    };
    if matches {
        Ok(())
    } else {
        Err(ConfError::new(
            field,
            format!(
                "'{}' does not match the address {address}",
                name_of(IP_FAMILIES, family)
            ),
        ))
    }
}

fn check_lease(lease_time_s: Option<u64>, field: &str) -> Result<(), ConfError> {
    match lease_time_s {
        Some(seconds) if seconds != 0 && seconds < MIN_LEASE_S => Err(ConfError::new(
            field,
            format!("{seconds} seconds is shorter than dnsmasq's 2 minutes (0 is infinite)"),
        )),
        Some(seconds) if seconds > u64::from(u32::MAX) => Err(ConfError::new(
            field,
            format!("{seconds} seconds is too long"),
        )),
        _ => Ok(()),
    }
}

/// A DHCPv6 DUID as libvirt writes it: hex bytes separated by ':' ("0:3:0:1:0:16:3e:11:22:33").
fn check_duid(id: &str, field: &str) -> Result<(), ConfError> {
    let valid = id.split(':').count() >= 2
        && id.split(':').all(|part| {
            (1..=2).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_hexdigit())
        });
    if valid {
        Ok(())
    } else {
        Err(ConfError::new(
            field,
            format!(
                "'{}' is not a DUID such as 0:3:0:1:0:16:3e:11:22:33",
                id.escape_debug()
            ),
        ))
    }
}

/// One static host; `ipv4` is the family of its `<ip>` when known.
fn check_host(host: &pb::DhcpHost, field: &str, ipv4: Option<bool>) -> Result<(), ConfError> {
    if host.mac.is_empty() && host.id.is_empty() && host.name.is_empty() {
        return Err(ConfError::new(field, "a host needs a mac, an id or a name"));
    }
    if !host.mac.is_empty() {
        check_mac(&host.mac, &format!("{field}@mac"))?;
    }
    if !host.id.is_empty() {
        check_duid(&host.id, &format!("{field}@id"))?;
    }
    if !host.name.is_empty() {
        check_dns_name(&host.name, &format!("{field}@name"), false)?;
        if !host.name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(ConfError::new(
                format!("{field}@name"),
                format!("'{}' must start with a letter", host.name),
            ));
        }
    }
    if !host.ip.is_empty() {
        address(&host.ip, &format!("{field}@ip"))?;
    }
    match ipv4 {
        Some(true) if !host.id.is_empty() => Err(ConfError::new(
            format!("{field}@id"),
            "an IPv4 host is known by its MAC, not a DUID",
        )),
        Some(false) if !host.mac.is_empty() => Err(ConfError::new(
            format!("{field}@mac"),
            "an IPv6 host is known by its DUID (id), not a MAC",
        )),
        _ => check_lease(host.lease_time_s, &format!("{field}/lease@expiry")),
    }
}

/// Checks a definition after `fill_defaults`, naming the first wrong field.
pub fn validate(def: &pb::NetworkDefinition) -> Result<(), ConfError> {
    check_name(&def.name, "network/name")?;
    if !def.uuid.is_empty() && !valid_uuid(&def.uuid) {
        return Err(ConfError::new(
            "network/uuid",
            format!("'{}' is not a UUID", def.uuid.escape_debug()),
        ));
    }
    if let Some(forward) = &def.forward {
        check_forward(forward)?;
    }
    let mode = mode_of(def);
    check_bridge(def, mode)?;
    if !def.mac.is_empty() {
        check_mac(&def.mac, "network/mac@address")?;
    }
    if def.mtu_bytes != 0 && !(68..=65535).contains(&def.mtu_bytes) {
        return Err(ConfError::new(
            "network/mtu@size",
            format!("{} is outside 68-65535", def.mtu_bytes),
        ));
    }
    if !manages_bridge(mode) {
        check_host_side(def, mode)?;
    }
    if let Some(domain) = &def.domain {
        check_dns_name(&domain.name, "network/domain@name", false)?;
    }
    if let Some(dns) = &def.dns {
        check_dns(dns)?;
    }
    let subnets = check_ips(&def.ips)?;
    check_routes(&def.routes, &subnets)?;
    if let Some(bandwidth) = &def.bandwidth {
        check_bandwidth(bandwidth, "network/bandwidth", false)?;
    }
    let ovs = is_openvswitch(def.virtualport.as_ref());
    if let Some(vlan) = &def.vlan {
        check_vlan(vlan, "network/vlan")?;
        check_vlan_allowed(mode, ovs, "network/vlan")?;
    }
    if let Some(virtualport) = &def.virtualport {
        check_virtualport(virtualport, "network/virtualport")?;
    }
    check_portgroups(&def.portgroups, mode, ovs)
}

fn check_forward(forward: &pb::NetworkForward) -> Result<(), ConfError> {
    let mode = match check_enum::<pb::ForwardMode>(forward.mode, "network/forward@mode")? {
        pb::ForwardMode::Unspecified => pb::ForwardMode::Nat,
        mode => mode,
    };
    let word = forward_mode_name(mode as i32);
    if mode == pb::ForwardMode::None {
        return Err(ConfError::new(
            "network/forward@mode",
            "an isolated network has no <forward>: leave it out",
        ));
    }
    let hostdev = mode == pb::ForwardMode::Hostdev;
    if !forward.dev.is_empty() {
        if hostdev {
            return Err(ConfError::new(
                "network/forward@dev",
                "a hostdev network takes VFs from <pf> or <address type='pci'>",
            ));
        }
        check_interface_name(&forward.dev, "network/forward@dev")?;
    }
    for (index, dev) in forward.interfaces.iter().enumerate() {
        let field = format!("{}@dev", nth("network/forward", "interface", index));
        check_interface_name(dev, &field)?;
        if forward.interfaces[..index].contains(dev) {
            return Err(ConfError::new(field, format!("{dev} is listed twice")));
        }
    }
    if let Some(first) = forward.interfaces.first()
        && !forward.dev.is_empty()
        && *first != forward.dev
    {
        return Err(ConfError::new(
            "network/forward@dev",
            format!("{} must be the first <interface>, not {first}", forward.dev),
        ));
    }
    let routed = matches!(
        mode,
        pb::ForwardMode::Nat | pb::ForwardMode::Route | pb::ForwardMode::Open
    );
    if routed && forward.interfaces.len() > 1 {
        return Err(ConfError::new(
            nth("network/forward", "interface", 1),
            format!("a {word} network leaves the host by one interface"),
        ));
    }
    if hostdev && !forward.interfaces.is_empty() {
        return Err(ConfError::new(
            "network/forward/interface",
            "a hostdev network takes VFs from <pf> or <address type='pci'>",
        ));
    }
    if !forward.pf_dev.is_empty() {
        if routed {
            return Err(ConfError::new(
                "network/forward/pf",
                format!("a {word} network takes no <pf>"),
            ));
        }
        check_interface_name(&forward.pf_dev, "network/forward/pf@dev")?;
        if !forward.interfaces.is_empty() || !forward.pci_addresses.is_empty() {
            return Err(ConfError::new(
                "network/forward/pf",
                "give a <pf> or a list of devices, not both",
            ));
        }
    }
    for (index, text) in forward.pci_addresses.iter().enumerate() {
        let field = nth("network/forward", "address", index);
        if !hostdev {
            return Err(ConfError::new(
                field,
                "only hostdev networks take PCI addresses",
            ));
        }
        if split_pci(text).is_none() {
            return Err(ConfError::new(
                field,
                format!(
                    "'{}' is not a PCI address such as 0000:03:10.1",
                    text.escape_debug()
                ),
            ));
        }
        if forward.pci_addresses[..index].contains(text) {
            return Err(ConfError::new(field, format!("{text} is listed twice")));
        }
    }
    if forward.managed && !hostdev {
        return Err(ConfError::new(
            "network/forward@managed",
            "only hostdev networks detach devices from their host driver",
        ));
    }
    let no_devices =
        forward.dev.is_empty() && forward.interfaces.is_empty() && forward.pf_dev.is_empty();
    match mode {
        pb::ForwardMode::Private | pb::ForwardMode::Vepa | pb::ForwardMode::Passthrough
            if no_devices =>
        {
            return Err(ConfError::new(
                "network/forward",
                format!("a {word} network needs <interface dev> or <pf dev>"),
            ));
        }
        pb::ForwardMode::Hostdev
            if forward.pf_dev.is_empty() && forward.pci_addresses.is_empty() =>
        {
            return Err(ConfError::new(
                "network/forward",
                "a hostdev network needs <pf dev> or <address type='pci'>",
            ));
        }
        _ => {}
    }
    if let Some(nat) = &forward.nat {
        if mode != pb::ForwardMode::Nat {
            return Err(ConfError::new(
                "network/forward/nat",
                format!("only nat networks take <nat>, not {word} ones"),
            ));
        }
        check_nat(nat)?;
    }
    Ok(())
}

fn check_nat(nat: &pb::NetworkNat) -> Result<(), ConfError> {
    let ipv4 = |text: &str, field: &str| -> Result<Option<IpAddr>, ConfError> {
        if text.is_empty() {
            return Ok(None);
        }
        let found = address(text, field)?;
        if found.is_ipv4() {
            Ok(Some(found))
        } else {
            Err(ConfError::new(field, "NAT addresses are IPv4"))
        }
    };
    let start = ipv4(&nat.address_start, "network/forward/nat/address@start")?;
    let end = ipv4(&nat.address_end, "network/forward/nat/address@end")?;
    match (start, end) {
        (None, Some(_)) => {
            return Err(ConfError::new(
                "network/forward/nat/address@start",
                "is required with end",
            ));
        }
        (Some(start), Some(end)) if ordinal(start) > ordinal(end) => {
            return Err(ConfError::new(
                "network/forward/nat/address",
                format!("start {start} is after end {end}"),
            ));
        }
        _ => {}
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
    Ok(())
}

fn check_bridge(def: &pb::NetworkDefinition, mode: pb::ForwardMode) -> Result<(), ConfError> {
    let default = pb::NetworkBridge::default();
    let bridge = def.bridge.as_ref().unwrap_or(&default);
    if !bridge.name.is_empty() {
        check_interface_name(&bridge.name, "network/bridge@name")?;
    }
    check_enum::<pb::MacTableManager>(bridge.mac_table_manager, "network/bridge@macTableManager")?;
    if !bridge.zone.is_empty()
        && !bridge
            .zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        return Err(ConfError::new(
            "network/bridge@zone",
            format!(
                "'{}' is not a firewalld zone name",
                bridge.zone.escape_debug()
            ),
        ));
    }
    if manages_bridge(mode) {
        return Ok(());
    }
    let word = forward_mode_name(mode as i32);
    let managed_only = [
        ("stp", bridge.stp.is_some()),
        ("delay", bridge.delay_s != 0),
        ("zone", !bridge.zone.is_empty()),
    ];
    if let Some((attr, _)) = managed_only.iter().find(|(_, given)| *given) {
        return Err(ConfError::new(
            format!("network/bridge@{attr}"),
            format!("is for bridges Vireo runs (isolated, nat, route, open), not {word} networks"),
        ));
    }
    if mode != pb::ForwardMode::Bridge {
        if !bridge.name.is_empty() || bridge.mac_table_manager != 0 {
            return Err(ConfError::new(
                "network/bridge",
                format!("a {word} network has no bridge"),
            ));
        }
        return Ok(());
    }
    let devices = def.forward.as_ref().is_some_and(|forward| {
        !forward.dev.is_empty() || !forward.interfaces.is_empty() || !forward.pf_dev.is_empty()
    });
    match (bridge.name.is_empty(), devices) {
        (true, false) => Err(ConfError::new(
            "network/bridge@name",
            "a bridge network names the host bridge (or forward interfaces)",
        )),
        (false, true) => Err(ConfError::new(
            "network/bridge@name",
            "give the host bridge or forward interfaces, not both",
        )),
        (true, true) if bridge.mac_table_manager != 0 => Err(ConfError::new(
            "network/bridge@macTableManager",
            "macvtap interfaces have no bridge MAC table",
        )),
        _ => Ok(()),
    }
}

/// Networks on the host's own LAN (bridge, macvtap, hostdev) have no address, DHCP or DNS of
/// Vireo's.
fn check_host_side(def: &pb::NetworkDefinition, mode: pb::ForwardMode) -> Result<(), ConfError> {
    let word = forward_mode_name(mode as i32);
    let parts = [
        ("network/mac", !def.mac.is_empty()),
        ("network/domain", def.domain.is_some()),
        ("network/dns", def.dns.is_some()),
        ("network/ip", !def.ips.is_empty()),
        ("network/route", !def.routes.is_empty()),
    ];
    match parts.iter().find(|(_, given)| *given) {
        Some((field, _)) => Err(ConfError::new(
            *field,
            format!("a {word} network is on the host's LAN: it takes no addresses, DHCP or DNS"),
        )),
        None => Ok(()),
    }
}

fn check_dns(dns: &pb::NetworkDns) -> Result<(), ConfError> {
    let has_records = !dns.forwarders.is_empty()
        || !dns.hosts.is_empty()
        || !dns.txts.is_empty()
        || !dns.srvs.is_empty();
    if dns.enable == Some(false) && (has_records || dns.forward_plain_names.is_some()) {
        return Err(ConfError::new(
            "network/dns@enable",
            "DNS is off: leave out forwardPlainNames, forwarders, hosts, txt and srv records",
        ));
    }
    for (index, forwarder) in dns.forwarders.iter().enumerate() {
        let field = nth("network/dns", "forwarder", index);
        if forwarder.addr.is_empty() && forwarder.domain.is_empty() {
            return Err(ConfError::new(field, "needs addr or domain"));
        }
        if !forwarder.addr.is_empty() {
            address(&forwarder.addr, &format!("{field}@addr"))?;
        }
        if !forwarder.domain.is_empty() {
            check_dns_name(&forwarder.domain, &format!("{field}@domain"), false)?;
        }
    }
    for (index, host) in dns.hosts.iter().enumerate() {
        let field = nth("network/dns", "host", index);
        address(&host.ip, &format!("{field}@ip"))?;
        if host.hostnames.is_empty() {
            return Err(ConfError::new(field, "needs a <hostname>"));
        }
        for (h, hostname) in host.hostnames.iter().enumerate() {
            check_dns_name(hostname, &nth(&field, "hostname", h), false)?;
        }
    }
    for (index, txt) in dns.txts.iter().enumerate() {
        let field = nth("network/dns", "txt", index);
        check_dns_name(&txt.name, &format!("{field}@name"), true)?;
        check_text(&txt.value, &format!("{field}@value"))?;
    }
    for (index, srv) in dns.srvs.iter().enumerate() {
        check_srv(srv, &nth("network/dns", "srv", index))?;
    }
    Ok(())
}

fn check_srv(srv: &pb::DnsSrv, field: &str) -> Result<(), ConfError> {
    // RFC 6335 service names.
    let service_ok = (1..=15).contains(&srv.service.len())
        && srv
            .service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !service_ok {
        return Err(ConfError::new(
            format!("{field}@service"),
            format!(
                "'{}' is not a service name (1-15 letters, digits, '-')",
                srv.service.escape_debug()
            ),
        ));
    }
    let protocol: pb::DnsSrvProtocol = check_enum(srv.protocol, &format!("{field}@protocol"))?;
    if protocol == pb::DnsSrvProtocol::Unspecified {
        return Err(ConfError::new(
            format!("{field}@protocol"),
            "is required (tcp or udp)",
        ));
    }
    if !srv.domain.is_empty() {
        check_dns_name(&srv.domain, &format!("{field}@domain"), true)?;
    }
    // "." says that the service is not offered.
    if !srv.target.is_empty() && srv.target != "." {
        check_dns_name(&srv.target, &format!("{field}@target"), false)?;
    }
    for (attr, value) in [
        ("port", srv.port),
        ("priority", srv.priority),
        ("weight", srv.weight),
    ] {
        if value > 65535 {
            return Err(ConfError::new(
                format!("{field}@{attr}"),
                format!("{value} is outside 0-65535"),
            ));
        }
        if value != 0 && srv.target.is_empty() {
            return Err(ConfError::new(
                format!("{field}@target"),
                format!("is required with {attr}"),
            ));
        }
    }
    Ok(())
}

/// Checks every `<ip>`; returns their subnets (own address and prefix) for the routes.
fn check_ips(ips: &[pb::NetworkIp]) -> Result<Vec<(IpAddr, u8)>, ConfError> {
    let mut subnets = Vec::new();
    let mut seen_macs: Vec<&str> = Vec::new();
    let mut seen_ips: Vec<IpAddr> = Vec::new();
    let (mut dhcp_v4, mut dhcp_v6, mut tftp_v4) = (false, false, false);
    for (index, ip) in ips.iter().enumerate() {
        let field = nth("network", "ip", index);
        let own = address(&ip.address, &format!("{field}@address"))?;
        if own.is_unspecified() || own.is_multicast() {
            return Err(ConfError::new(
                format!("{field}@address"),
                format!("{own} cannot be a bridge's address"),
            ));
        }
        check_family(ip.family, own, &format!("{field}@family"))?;
        let prefix = prefix_len(own, &ip.netmask, ip.prefix, &field)?;
        if prefix == 0 {
            return Err(ConfError::new(
                format!("{field}@netmask"),
                "a network's prefix is at least 1 bit",
            ));
        }
        if !ip.tftp_root.is_empty() {
            let tftp = format!("{field}/tftp");
            if own.is_ipv6() {
                return Err(ConfError::new(tftp, "TFTP is served on IPv4 only"));
            }
            if std::mem::replace(&mut tftp_v4, true) {
                return Err(ConfError::new(tftp, "only one <ip> may serve TFTP"));
            }
            check_host_path(&ip.tftp_root, &format!("{tftp}@root"))?;
        }
        if let Some(dhcp) = &ip.dhcp {
            let dhcp_field = format!("{field}/dhcp");
            if !dhcp.ranges.is_empty() || !dhcp.hosts.is_empty() {
                let served = if own.is_ipv4() {
                    &mut dhcp_v4
                } else {
                    &mut dhcp_v6
                };
                if std::mem::replace(served, true) {
                    return Err(ConfError::new(
                        dhcp_field,
                        "only one <ip> of each family may serve DHCP",
                    ));
                }
            }
            check_dhcp(
                dhcp,
                own,
                prefix,
                &dhcp_field,
                &mut seen_macs,
                &mut seen_ips,
            )?;
        }
        subnets.push((own, prefix));
    }
    Ok(subnets)
}

fn check_dhcp<'a>(
    dhcp: &'a pb::NetworkDhcp,
    own: IpAddr,
    prefix: u8,
    field: &str,
    seen_macs: &mut Vec<&'a str>,
    seen_ips: &mut Vec<IpAddr>,
) -> Result<(), ConfError> {
    let network = network_address(own, prefix);
    let inside = |text: &str, field: String| -> Result<IpAddr, ConfError> {
        let found = address(text, &field)?;
        if contains(network, prefix, found) {
            Ok(found)
        } else {
            Err(ConfError::new(
                field,
                format!("{text} is outside the network {network}/{prefix}"),
            ))
        }
    };
    for (index, range) in dhcp.ranges.iter().enumerate() {
        let range_field = nth(field, "range", index);
        let start = inside(&range.start, format!("{range_field}@start"))?;
        let end = inside(&range.end, format!("{range_field}@end"))?;
        if ordinal(start) > ordinal(end) {
            return Err(ConfError::new(
                range_field,
                format!("start {start} is after end {end}"),
            ));
        }
        if own.is_ipv4() && prefix < 31 {
            let broadcast = ordinal(network) | (u128::from(u32::MAX) >> prefix);
            if start == network {
                return Err(ConfError::new(
                    format!("{range_field}@start"),
                    format!("{start} is the network's own address"),
                ));
            }
            if ordinal(end) == broadcast {
                return Err(ConfError::new(
                    format!("{range_field}@end"),
                    format!("{end} is the broadcast address"),
                ));
            }
        }
        check_lease(range.lease_time_s, &format!("{range_field}/lease@expiry"))?;
    }
    for (index, host) in dhcp.hosts.iter().enumerate() {
        let host_field = nth(field, "host", index);
        check_host(host, &host_field, Some(own.is_ipv4()))?;
        if !host.ip.is_empty() {
            let ip = inside(&host.ip, format!("{host_field}@ip"))?;
            if seen_ips.contains(&ip) {
                return Err(ConfError::new(
                    format!("{host_field}@ip"),
                    format!("{ip} is given to two hosts"),
                ));
            }
            seen_ips.push(ip);
        }
        if !host.mac.is_empty() {
            if seen_macs
                .iter()
                .any(|mac| mac.eq_ignore_ascii_case(&host.mac))
            {
                return Err(ConfError::new(
                    format!("{host_field}@mac"),
                    format!("{} appears twice", host.mac),
                ));
            }
            seen_macs.push(&host.mac);
        }
    }
    if !dhcp.bootp_file.is_empty() || !dhcp.bootp_server.is_empty() {
        let bootp = format!("{field}/bootp");
        if own.is_ipv6() {
            return Err(ConfError::new(bootp, "BOOTP is IPv4 only"));
        }
        if dhcp.bootp_file.is_empty() {
            return Err(ConfError::new(format!("{bootp}@file"), "is required"));
        }
        check_text(&dhcp.bootp_file, &format!("{bootp}@file"))?;
        if !dhcp.bootp_server.is_empty()
            && !address(&dhcp.bootp_server, &format!("{bootp}@server"))?.is_ipv4()
        {
            return Err(ConfError::new(
                format!("{bootp}@server"),
                "is an IPv4 address",
            ));
        }
    }
    Ok(())
}

fn check_routes(routes: &[pb::NetworkRoute], subnets: &[(IpAddr, u8)]) -> Result<(), ConfError> {
    for (index, route) in routes.iter().enumerate() {
        let field = nth("network", "route", index);
        let destination = address(&route.address, &format!("{field}@address"))?;
        check_family(route.family, destination, &format!("{field}@family"))?;
        let prefix = prefix_len(destination, &route.netmask, route.prefix, &field)?;
        let network = network_address(destination, prefix);
        if network != destination {
            return Err(ConfError::new(
                format!("{field}@address"),
                format!("{destination}/{prefix} has host bits set: the network is {network}"),
            ));
        }
        let gateway = address(&route.gateway, &format!("{field}@gateway"))?;
        if gateway.is_ipv4() != destination.is_ipv4() {
            return Err(ConfError::new(
                format!("{field}@gateway"),
                "the gateway and the address are of different families",
            ));
        }
        if !subnets
            .iter()
            .any(|(own, prefix)| contains(*own, *prefix, gateway))
        {
            return Err(ConfError::new(
                format!("{field}@gateway"),
                format!("{gateway} is not on any <ip> of the network"),
            ));
        }
    }
    Ok(())
}

/// `allow_floor`: a guaranteed minimum belongs to a port, never to a network or portgroup.
pub(crate) fn check_bandwidth(
    bandwidth: &pb::Bandwidth,
    field: &str,
    allow_floor: bool,
) -> Result<(), ConfError> {
    for (name, rate) in [
        ("inbound", &bandwidth.inbound),
        ("outbound", &bandwidth.outbound),
    ] {
        let Some(rate) = rate else { continue };
        let rate_field = format!("{field}/{name}");
        if rate.floor_kib_s != 0 {
            if name == "outbound" {
                return Err(ConfError::new(
                    format!("{rate_field}@floor"),
                    "only inbound traffic has a floor",
                ));
            }
            if !allow_floor {
                return Err(ConfError::new(
                    format!("{rate_field}@floor"),
                    "a floor is a port's guarantee; networks and portgroups take none",
                ));
            }
        }
        if rate.average_kib_s == 0 && (rate.peak_kib_s != 0 || rate.burst_kib != 0) {
            return Err(ConfError::new(
                format!("{rate_field}@average"),
                "is required with peak or burst",
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_vlan(vlan: &pb::Vlan, field: &str) -> Result<(), ConfError> {
    if vlan.tags.is_empty() {
        return Err(ConfError::new(field, "needs at least one <tag id='n'/>"));
    }
    if !vlan.trunk && vlan.tags.len() > 1 {
        return Err(ConfError::new(
            format!("{field}@trunk"),
            "a VLAN with several tags is a trunk",
        ));
    }
    let mut native = false;
    for (index, tag) in vlan.tags.iter().enumerate() {
        let tag_field = nth(field, "tag", index);
        if tag.id > 4095 {
            return Err(ConfError::new(
                format!("{tag_field}@id"),
                format!("{} is outside 0-4095", tag.id),
            ));
        }
        let mode: pb::VlanNativeMode =
            check_enum(tag.native_mode, &format!("{tag_field}@nativeMode"))?;
        if mode != pb::VlanNativeMode::Unspecified {
            if !vlan.trunk {
                return Err(ConfError::new(
                    format!("{tag_field}@nativeMode"),
                    "only a trunk has a native VLAN",
                ));
            }
            if std::mem::replace(&mut native, true) {
                return Err(ConfError::new(
                    format!("{tag_field}@nativeMode"),
                    "only one tag is native",
                ));
            }
        }
    }
    Ok(())
}

fn is_openvswitch(virtualport: Option<&pb::VirtualPort>) -> bool {
    virtualport.is_some_and(|port| port.r#type == pb::VirtualPortType::Openvswitch as i32)
}

/// As libvirt: VLAN tags need something that applies them (an SR-IOV VF or Open vSwitch).
fn check_vlan_allowed(
    mode: pb::ForwardMode,
    openvswitch: bool,
    field: &str,
) -> Result<(), ConfError> {
    let allowed = matches!(
        mode,
        pb::ForwardMode::Hostdev | pb::ForwardMode::Passthrough
    ) || (mode == pb::ForwardMode::Bridge && openvswitch);
    if allowed {
        Ok(())
    } else {
        Err(ConfError::new(
            field,
            "VLAN tags are for hostdev, passthrough and Open vSwitch bridge networks",
        ))
    }
}

pub(crate) fn check_virtualport(port: &pb::VirtualPort, field: &str) -> Result<(), ConfError> {
    use pb::VirtualPortType as T;
    let kind: T = check_enum(port.r#type, &format!("{field}@type"))?;
    let parameters = format!("{field}/parameters");
    let given = [
        ("managerid", port.manager_id != 0),
        ("typeid", port.type_id != 0),
        ("typeidversion", port.type_id_version != 0),
        ("instanceid", !port.instance_id.is_empty()),
        ("profileid", !port.profile_id.is_empty()),
        ("interfaceid", !port.interface_id.is_empty()),
    ];
    let allowed: &[&str] = match kind {
        // A typeless port fills in whatever the port or portgroup's own type needs.
        T::Unspecified => &[
            "managerid",
            "typeid",
            "typeidversion",
            "instanceid",
            "profileid",
            "interfaceid",
        ],
        T::VirtualPortType8021qbg => &["managerid", "typeid", "typeidversion", "instanceid"],
        T::VirtualPortType8021qbh => &["profileid"],
        T::Openvswitch => &["interfaceid", "profileid"],
        T::Midonet => &["interfaceid"],
    };
    if let Some((name, _)) = given
        .iter()
        .find(|(name, given)| *given && !allowed.contains(name))
    {
        return Err(ConfError::new(
            format!("{parameters}@{name}"),
            format!(
                "is not a parameter of {} virtual ports",
                name_of(VIRTUAL_PORT_TYPES, port.r#type)
            ),
        ));
    }
    for (name, value, max) in [
        ("managerid", port.manager_id, 0xff),
        ("typeid", port.type_id, 0xff_ffff),
        ("typeidversion", port.type_id_version, 0xff),
    ] {
        if value > max {
            return Err(ConfError::new(
                format!("{parameters}@{name}"),
                format!("{value} is outside 0-{max}"),
            ));
        }
    }
    for (name, id) in [
        ("instanceid", &port.instance_id),
        ("interfaceid", &port.interface_id),
    ] {
        if !id.is_empty() && !valid_uuid(id) {
            return Err(ConfError::new(
                format!("{parameters}@{name}"),
                format!("'{}' is not a UUID", id.escape_debug()),
            ));
        }
    }
    let profile = &port.profile_id;
    if profile.len() > MAX_PROFILE_ID_BYTES || !profile.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ConfError::new(
            format!("{parameters}@profileid"),
            format!(
                "'{}' is not a profile id (at most {MAX_PROFILE_ID_BYTES} printable bytes)",
                profile.escape_debug()
            ),
        ));
    }
    Ok(())
}

fn check_portgroups(
    groups: &[pb::NetworkPortgroup],
    mode: pb::ForwardMode,
    network_ovs: bool,
) -> Result<(), ConfError> {
    let mut has_default = false;
    for (index, group) in groups.iter().enumerate() {
        let field = nth("network", "portgroup", index);
        let name_ok = !group.name.is_empty()
            && group.name.len() <= MAX_PORTGROUP_NAME_BYTES
            && !group.name.chars().any(char::is_control);
        if !name_ok {
            return Err(ConfError::new(
                format!("{field}@name"),
                format!(
                    "'{}' is not a portgroup name (1-{MAX_PORTGROUP_NAME_BYTES} bytes, no control characters)",
                    group.name.escape_debug()
                ),
            ));
        }
        if groups[..index].iter().any(|other| other.name == group.name) {
            return Err(ConfError::new(
                format!("{field}@name"),
                format!("'{}' names two portgroups", group.name),
            ));
        }
        if group.is_default && std::mem::replace(&mut has_default, true) {
            return Err(ConfError::new(
                format!("{field}@default"),
                "only one portgroup is the default",
            ));
        }
        if let Some(bandwidth) = &group.bandwidth {
            check_bandwidth(bandwidth, &format!("{field}/bandwidth"), false)?;
        }
        if let Some(virtualport) = &group.virtualport {
            check_virtualport(virtualport, &format!("{field}/virtualport"))?;
        }
        if let Some(vlan) = &group.vlan {
            let vlan_field = format!("{field}/vlan");
            check_vlan(vlan, &vlan_field)?;
            let ovs = network_ovs || is_openvswitch(group.virtualport.as_ref());
            check_vlan_allowed(mode, ovs, &vlan_field)?;
        }
    }
    Ok(())
}

// ============================================================================================
// Formatting
// ============================================================================================

/// An enum's XML word; an unknown value is written as its number, so that parsing it back names
/// the field rather than silently dropping it.
fn word_or_number<T: Copy + PartialEq + TryFrom<i32>>(table: Table<T>, value: i32) -> String {
    match name_of(table, value) {
        "" if value != 0 => value.to_string(),
        word => word.to_string(),
    }
}

fn nonzero(value: impl Into<u64>) -> String {
    match value.into() {
        0 => String::new(),
        value => value.to_string(),
    }
}

fn optional_yes_no(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "",
    }
}

/// The definition as libvirt network XML (net-dumpxml), in libvirt's element order.
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
    format_bridge(&mut x, def.bridge.as_ref(), mode_of(def))?;
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
    if let Some(vlan) = &def.vlan {
        format_vlan(&mut x, vlan)?;
    }
    if let Some(bandwidth) = &def.bandwidth {
        format_bandwidth(&mut x, bandwidth)?;
    }
    for ip in &def.ips {
        format_ip(&mut x, ip)?;
    }
    for route in &def.routes {
        // A default route shows its prefix 0, which an unset prefix would otherwise hide.
        let prefix = if route.prefix == 0 && route.netmask.is_empty() && is_wildcard(&route.address)
        {
            "0".to_string()
        } else {
            nonzero(route.prefix)
        };
        let attrs = Attrs::default()
            .set("family", word_or_number(IP_FAMILIES, route.family))
            .set("address", &route.address)
            .set("netmask", &route.netmask)
            .set("prefix", prefix)
            .set("gateway", &route.gateway)
            .set("metric", nonzero(route.metric));
        x.empty("route", &attrs.refs())?;
    }
    if let Some(virtualport) = &def.virtualport {
        format_virtualport(&mut x, virtualport)?;
    }
    for group in &def.portgroups {
        format_portgroup(&mut x, group)?;
    }
    x.close("network")?;
    Ok(x.finish())
}

fn format_forward(x: &mut XmlWriter, forward: &pb::NetworkForward) -> Fmt {
    let hostdev = forward.mode == pb::ForwardMode::Hostdev as i32;
    let mode = match forward.mode {
        0 => "nat".to_string(),
        mode => word_or_number(FORWARD_MODES, mode),
    };
    // libvirt always says whether a hostdev network is managed.
    let managed = match (forward.managed, hostdev) {
        (true, _) => "yes",
        (false, true) => "no",
        (false, false) => "",
    };
    let attrs = Attrs::default()
        .set("dev", &forward.dev)
        .set("mode", mode)
        .set("managed", managed);
    if forward.nat.is_none()
        && forward.pf_dev.is_empty()
        && forward.interfaces.is_empty()
        && forward.pci_addresses.is_empty()
    {
        return x.empty("forward", &attrs.refs());
    }
    x.open("forward", &attrs.refs())?;
    if let Some(nat) = &forward.nat {
        format_nat(x, nat)?;
    }
    if !forward.pf_dev.is_empty() {
        x.empty("pf", &[("dev", &forward.pf_dev)])?;
    }
    for dev in &forward.interfaces {
        x.empty("interface", &[("dev", dev)])?;
    }
    for text in &forward.pci_addresses {
        let attrs = match split_pci(text) {
            Some((domain, bus, slot, function)) => Attrs::default()
                .set("type", "pci")
                .set("domain", format!("0x{domain:04x}"))
                .set("bus", format!("0x{bus:02x}"))
                .set("slot", format!("0x{slot:02x}"))
                .set("function", format!("0x{function:x}")),
            // Kept whole, so that parsing it back names the field.
            None => Attrs::default().set("type", "pci").set("domain", text),
        };
        x.empty("address", &attrs.refs())?;
    }
    x.close("forward")
}

fn format_nat(x: &mut XmlWriter, nat: &pb::NetworkNat) -> Fmt {
    let attrs = Attrs::default().set("ipv6", if nat.ipv6 { "yes" } else { "" });
    let has_address = !nat.address_start.is_empty() || !nat.address_end.is_empty();
    let has_port = nat.port_start != 0 || nat.port_end != 0;
    if !has_address && !has_port {
        return x.empty("nat", &attrs.refs());
    }
    x.open("nat", &attrs.refs())?;
    if has_address {
        let attrs = Attrs::default()
            .set("start", &nat.address_start)
            .set("end", &nat.address_end);
        x.empty("address", &attrs.refs())?;
    }
    if has_port {
        let start = nat.port_start.to_string();
        let end = nat.port_end.to_string();
        x.empty("port", &[("start", &start), ("end", &end)])?;
    }
    x.close("nat")
}

/// libvirt shows STP and the delay for the bridges it runs, and only the name for a host's.
fn format_bridge(
    x: &mut XmlWriter,
    bridge: Option<&pb::NetworkBridge>,
    mode: pb::ForwardMode,
) -> Fmt {
    let default = pb::NetworkBridge::default();
    let managed = manages_bridge(mode);
    if !managed && bridge.is_none_or(|bridge| *bridge == default) {
        return Ok(());
    }
    let bridge = bridge.unwrap_or(&default);
    let stp = match bridge.stp {
        Some(true) => "on",
        Some(false) => "off",
        None if managed => "on",
        None => "",
    };
    let delay = if managed {
        bridge.delay_s.to_string()
    } else {
        nonzero(bridge.delay_s)
    };
    let attrs = Attrs::default()
        .set("name", &bridge.name)
        .set("zone", &bridge.zone)
        .set(
            "macTableManager",
            word_or_number(MAC_TABLE_MANAGERS, bridge.mac_table_manager),
        )
        .set("stp", stp)
        .set("delay", delay);
    x.empty("bridge", &attrs.refs())
}

fn format_dns(x: &mut XmlWriter, dns: &pb::NetworkDns) -> Fmt {
    let attrs = Attrs::default()
        .set("enable", optional_yes_no(dns.enable))
        .set(
            "forwardPlainNames",
            optional_yes_no(dns.forward_plain_names),
        );
    if dns.forwarders.is_empty()
        && dns.hosts.is_empty()
        && dns.txts.is_empty()
        && dns.srvs.is_empty()
    {
        return x.empty("dns", &attrs.refs());
    }
    x.open("dns", &attrs.refs())?;
    for forwarder in &dns.forwarders {
        let attrs = Attrs::default()
            .set("domain", &forwarder.domain)
            .set("addr", &forwarder.addr);
        x.empty("forwarder", &attrs.refs())?;
    }
    for txt in &dns.txts {
        // An empty value is still written: the attribute is required.
        x.empty("txt", &[("name", &txt.name), ("value", &txt.value)])?;
    }
    for srv in &dns.srvs {
        let attrs = Attrs::default()
            .set("service", &srv.service)
            .set("protocol", word_or_number(SRV_PROTOCOLS, srv.protocol))
            .set("domain", &srv.domain)
            .set("target", &srv.target)
            .set("port", nonzero(srv.port))
            .set("priority", nonzero(srv.priority))
            .set("weight", nonzero(srv.weight));
        x.empty("srv", &attrs.refs())?;
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

fn format_ip(x: &mut XmlWriter, ip: &pb::NetworkIp) -> Fmt {
    let attrs = Attrs::default()
        .set("family", word_or_number(IP_FAMILIES, ip.family))
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
        format_dhcp(x, dhcp)?;
    }
    x.close("ip")
}

fn format_dhcp(x: &mut XmlWriter, dhcp: &pb::NetworkDhcp) -> Fmt {
    let bootp = !dhcp.bootp_file.is_empty() || !dhcp.bootp_server.is_empty();
    if dhcp.ranges.is_empty() && dhcp.hosts.is_empty() && !bootp {
        return x.empty("dhcp", &[]);
    }
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
    if bootp {
        let attrs = Attrs::default()
            .set("file", &dhcp.bootp_file)
            .set("server", &dhcp.bootp_server);
        x.empty("bootp", &attrs.refs())?;
    }
    x.close("dhcp")
}

/// In the largest unit that keeps the number whole; 0 (infinite) in libvirt's default unit.
fn format_lease(x: &mut XmlWriter, seconds: u64) -> Fmt {
    let (expiry, unit) = match seconds {
        0 => (0, "minutes"),
        s if s % 3600 == 0 => (s / 3600, "hours"),
        s if s % 60 == 0 => (s / 60, "minutes"),
        s => (s, "seconds"),
    };
    x.empty("lease", &[("expiry", &expiry.to_string()), ("unit", unit)])
}

fn format_host(x: &mut XmlWriter, host: &pb::DhcpHost) -> Fmt {
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

/// One `<host>` of `<ip><dhcp>`, as net-update takes it and `parse_dhcp_host` reads it.
pub fn format_dhcp_host(host: &pb::DhcpHost) -> Result<String, XmlError> {
    let mut x = XmlWriter::new();
    format_host(&mut x, host)?;
    Ok(x.finish())
}

pub(crate) fn format_bandwidth(x: &mut XmlWriter, bandwidth: &pb::Bandwidth) -> Fmt {
    let directions: Vec<(&str, &pb::BandwidthRate)> = [
        ("inbound", bandwidth.inbound.as_ref()),
        ("outbound", bandwidth.outbound.as_ref()),
    ]
    .into_iter()
    .filter_map(|(name, rate)| Some((name, rate?)))
    // All zeros is no limit, which libvirt writes as nothing.
    .filter(|(_, rate)| **rate != pb::BandwidthRate::default())
    .collect();
    if directions.is_empty() {
        return x.empty("bandwidth", &[]);
    }
    x.open("bandwidth", &[])?;
    for (name, rate) in directions {
        let attrs = Attrs::default()
            .set("average", nonzero(rate.average_kib_s))
            .set("peak", nonzero(rate.peak_kib_s))
            .set("floor", nonzero(rate.floor_kib_s))
            .set("burst", nonzero(rate.burst_kib));
        x.empty(name, &attrs.refs())?;
    }
    x.close("bandwidth")
}

pub(crate) fn format_vlan(x: &mut XmlWriter, vlan: &pb::Vlan) -> Fmt {
    let attrs = Attrs::default().set("trunk", if vlan.trunk { "yes" } else { "" });
    if vlan.tags.is_empty() {
        return x.empty("vlan", &attrs.refs());
    }
    x.open("vlan", &attrs.refs())?;
    for tag in &vlan.tags {
        let attrs = Attrs::default()
            .set("id", tag.id)
            .set("nativeMode", word_or_number(NATIVE_MODES, tag.native_mode));
        x.empty("tag", &attrs.refs())?;
    }
    x.close("vlan")
}

pub(crate) fn format_virtualport(x: &mut XmlWriter, port: &pb::VirtualPort) -> Fmt {
    let attrs = Attrs::default().set("type", word_or_number(VIRTUAL_PORT_TYPES, port.r#type));
    let parameters = Attrs::default()
        .set("managerid", nonzero(port.manager_id))
        .set("typeid", nonzero(port.type_id))
        .set("typeidversion", nonzero(port.type_id_version))
        .set("instanceid", &port.instance_id)
        .set("interfaceid", &port.interface_id)
        .set("profileid", &port.profile_id);
    let parameters = parameters.refs();
    if parameters.is_empty() {
        return x.empty("virtualport", &attrs.refs());
    }
    x.open("virtualport", &attrs.refs())?;
    x.empty("parameters", &parameters)?;
    x.close("virtualport")
}

fn format_portgroup(x: &mut XmlWriter, group: &pb::NetworkPortgroup) -> Fmt {
    let attrs = Attrs::default()
        .set("name", &group.name)
        .set("default", if group.is_default { "yes" } else { "" });
    if group.vlan.is_none() && group.virtualport.is_none() && group.bandwidth.is_none() {
        return x.empty("portgroup", &attrs.refs());
    }
    x.open("portgroup", &attrs.refs())?;
    if let Some(vlan) = &group.vlan {
        format_vlan(x, vlan)?;
    }
    if let Some(virtualport) = &group.virtualport {
        format_virtualport(x, virtualport)?;
    }
    if let Some(bandwidth) = &group.bandwidth {
        format_bandwidth(x, bandwidth)?;
    }
    x.close("portgroup")
}
