//! Network XML golden files: each `*.in.xml` parses, gets libvirt's defaults, validates and
//! formats to the matching `*.out.xml`, which parses back to the same definition (VIREO_BLESS=1
//! rewrites the expected files). Typed definitions survive format and parse; bad inputs are
//! refused naming their field.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use vireo_conf::network;
use vireo_proto::network::v1 as pb;

#[test]
fn golden_files_round_trip() {
    let seen = common::round_trip(
        "network",
        |stem, input| {
            let def = network::parse(input).unwrap_or_else(|err| panic!("{stem}: {err}"));
            let output = network::format(&def).unwrap();
            (def, output)
        },
        |stem, output| network::parse(output).unwrap_or_else(|err| panic!("{stem}: {err}")),
    );
    assert_eq!(
        seen,
        [
            "bridged",
            "default",
            "dhcp-dns",
            "hostdev",
            "hostdev-pf",
            "ipv6",
            "isolated",
            "macvtap",
            "nat-ranges",
            "open",
            "openvswitch",
            "qos",
            "rhel6-seed",
            "routed",
            "vireo-default",
        ]
    );
}

#[test]
fn defaults_are_libvirts() {
    let text = std::fs::read_to_string(common::golden_dir("network").join("default.in.xml"));
    let def = network::parse(&text.unwrap()).unwrap();
    assert_eq!(def.forward.as_ref().unwrap().mode(), pb::ForwardMode::Nat);
    let bridge = def.bridge.as_ref().unwrap();
    assert_eq!((bridge.stp, bridge.delay_s), (Some(true), 0));
    assert!(
        def.uuid.is_empty() && def.mac.is_empty(),
        "UUID and MAC are svc-network's to pick"
    );

    let def = network::parse(
        "<network><name>b</name><forward mode='bridge'/><bridge name='br0'/></network>",
    )
    .unwrap();
    assert_eq!(def.bridge.as_ref().unwrap().stp, None, "not our bridge");

    // An isolated network gets a bridge entry for its STP, but no name: svc-network picks it.
    let def = network::parse(
        "<network><name>i</name><forward mode='none'/><dns/><ip address='10.1.0.1'><dhcp/></ip></network>",
    )
    .unwrap();
    assert_eq!(def.forward, None, "mode none is isolated: no <forward>");
    assert_eq!(def.dns, None);
    assert_eq!(def.ips[0].dhcp, None);
    assert_eq!(network::subnet_of(&def.ips[0]).unwrap().1, 8, "class A");
    let bridge = def.bridge.as_ref().unwrap();
    assert!(bridge.name.is_empty() && bridge.stp == Some(true));
    let output = network::format(&def).unwrap();
    assert!(output.contains("<bridge stp='on' delay='0'/>"), "{output}");

    let def = network::parse(
        "<network><name>n</name><forward><nat/></forward><bridge name='v0'/></network>",
    )
    .unwrap();
    assert_eq!(def.forward.as_ref().unwrap().nat, None, "an empty <nat/>");
}

/// A definition using every field the proto has, valid as a whole.
fn full_definition() -> pb::NetworkDefinition {
    let host = |mac: &str, name: &str, ip: &str| pb::DhcpHost {
        mac: mac.into(),
        name: name.into(),
        ip: ip.into(),
        ..Default::default()
    };
    pb::NetworkDefinition {
        name: "full".into(),
        uuid: "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9".into(),
        bridge: Some(pb::NetworkBridge {
            name: "vireobr20".into(),
            stp: Some(false),
            delay_s: 3,
            mac_table_manager: pb::MacTableManager::Kernel as i32,
            zone: "public".into(),
        }),
        mac: "52:54:00:01:02:03".into(),
        forward: Some(pb::NetworkForward {
            mode: pb::ForwardMode::Nat as i32,
            dev: "eth0".into(),
            nat: Some(pb::NetworkNat {
                address_start: "198.51.100.1".into(),
                address_end: String::new(),
                port_start: 1024,
                port_end: 65535,
                ipv6: false,
            }),
            ..Default::default()
        }),
        domain: Some(pb::NetworkDomain {
            name: "full.test".into(),
            local_only: Some(false),
        }),
        dns: Some(pb::NetworkDns {
            enable: Some(true),
            forward_plain_names: Some(true),
            forwarders: vec![pb::DnsForwarder {
                addr: "2001:db8::53".into(),
                domain: String::new(),
            }],
            hosts: vec![pb::DnsHost {
                ip: "10.90.0.5".into(),
                hostnames: vec!["printer".into()],
            }],
            txts: vec![pb::DnsTxt {
                name: "_note".into(),
                value: String::new(),
            }],
            srvs: vec![pb::DnsSrv {
                service: "http".into(),
                protocol: pb::DnsSrvProtocol::Tcp as i32,
                target: ".".into(),
                ..Default::default()
            }],
        }),
        ips: vec![
            pb::NetworkIp {
                family: pb::IpFamily::Ipv4 as i32,
                address: "10.90.0.1".into(),
                prefix: 24,
                local_ptr: Some(true),
                dhcp: Some(pb::NetworkDhcp {
                    ranges: vec![pb::DhcpRange {
                        start: "10.90.0.100".into(),
                        end: "10.90.0.200".into(),
                        lease_time_s: Some(3661),
                    }],
                    hosts: vec![
                        host("52:54:00:0a:00:01", "one", "10.90.0.11"),
                        pb::DhcpHost {
                            lease_time_s: Some(0),
                            ..host("52:54:00:0a:00:02", "", "10.90.0.12")
                        },
                    ],
                    bootp_file: "pxelinux.0".into(),
                    bootp_server: String::new(),
                }),
                tftp_root: "/srv/tftp".into(),
                ..Default::default()
            },
            pb::NetworkIp {
                address: "fd00:90::1".into(),
                prefix: 64,
                ..Default::default()
            },
        ],
        routes: vec![pb::NetworkRoute {
            family: pb::IpFamily::Ipv4 as i32,
            address: "0.0.0.0".into(),
            gateway: "10.90.0.254".into(),
            metric: 7,
            ..Default::default()
        }],
        mtu_bytes: 1450,
        bandwidth: Some(pb::Bandwidth {
            inbound: Some(pb::BandwidthRate {
                average_kib_s: 100,
                peak_kib_s: 200,
                burst_kib: 50,
                floor_kib_s: 0,
            }),
            outbound: None,
        }),
        vlan: None,
        virtualport: None,
        portgroups: vec![pb::NetworkPortgroup {
            name: "Ops Team".into(),
            is_default: true,
            bandwidth: Some(pb::Bandwidth {
                inbound: None,
                outbound: Some(pb::BandwidthRate {
                    average_kib_s: 10,
                    ..Default::default()
                }),
            }),
            vlan: None,
            virtualport: Some(pb::VirtualPort {
                r#type: pb::VirtualPortType::Unspecified as i32,
                instance_id: "1b2c3d4e-5f60-4718-92a3-b4c5d6e7f809".into(),
                ..Default::default()
            }),
        }],
    }
}

#[test]
fn typed_definitions_survive_format_and_parse() {
    let mut def = full_definition();
    network::fill_defaults(&mut def);
    assert_eq!(def, full_definition(), "nothing left to fill");
    network::validate(&def).unwrap();
    let output = network::format(&def).unwrap();
    assert_eq!(network::parse(&output).unwrap(), def, "{output}");
    assert!(output.contains("<route family='ipv4' address='0.0.0.0' prefix='0'"));
    assert!(output.contains("<lease expiry='3661' unit='seconds'/>"));

    // Unfilled: what parse gives back is the filled definition.
    let bare = pb::NetworkDefinition {
        name: "bare".into(),
        forward: Some(pb::NetworkForward::default()),
        vlan: None,
        ..Default::default()
    };
    let mut filled = bare.clone();
    network::fill_defaults(&mut filled);
    assert_eq!(
        network::parse(&network::format(&bare).unwrap()).unwrap(),
        filled
    );
}

#[test]
fn typed_mistakes_are_refused_not_dropped() {
    type Spoil = fn(&mut pb::NetworkDefinition);
    let cases: [(Spoil, &str); 5] = [
        (
            |def| def.forward.as_mut().unwrap().mode = 99,
            "network/forward@mode",
        ),
        (|def| def.ips[0].family = 7, "network/ip@family"),
        (
            |def| def.dns.as_mut().unwrap().srvs[0].protocol = 0,
            "network/dns/srv@protocol",
        ),
        (
            |def| {
                let nat = def.forward.as_mut().unwrap().nat.as_mut().unwrap();
                nat.address_end = nat.address_start.clone();
                nat.address_start.clear();
            },
            "network/forward/nat/address@start",
        ),
        (
            |def| def.bridge.as_mut().unwrap().mac_table_manager = 5,
            "network/bridge@macTableManager",
        ),
    ];
    for (spoil, field) in cases {
        let mut def = full_definition();
        spoil(&mut def);
        assert_eq!(network::validate(&def).unwrap_err().field, field);
        let output = network::format(&def).unwrap();
        let err = network::parse(&output).unwrap_err();
        assert_eq!(err.field, field, "{output}");
    }
}

#[test]
fn bad_networks_are_refused_by_field() {
    let wrap = |inner: &str| format!("<network><name>n</name>{inner}</network>");
    let ip = |dhcp: &str| format!("<ip address='10.0.0.1' prefix='24'><dhcp>{dhcp}</dhcp></ip>");
    let nat = |inner: &str| format!("<forward mode='nat'>{inner}</forward>");
    for (inner, field, needle) in [
        ("<bogus/>".to_string(), "network/bogus", "not supported"),
        (ip("<foo/>"), "network/ip/dhcp/foo", "not supported"),
        (
            "<ip address='10.0.0.300' prefix='24'/>".into(),
            "network/ip@address",
            "not an IP address",
        ),
        (
            ip("<range start='10.0.1.2' end='10.0.0.9'/>"),
            "network/ip/dhcp/range@start",
            "outside the network 10.0.0.0/24",
        ),
        (
            ip("<range start='10.0.0.2' end='10.0.0.9'/><range start='10.0.0.9' end='10.0.0.3'/>"),
            "network/ip/dhcp/range[2]",
            "after",
        ),
        (
            ip("<range start='10.0.0.0' end='10.0.0.9'/>"),
            "network/ip/dhcp/range@start",
            "network's own address",
        ),
        (
            ip("<range start='10.0.0.2' end='10.0.0.255'/>"),
            "network/ip/dhcp/range@end",
            "broadcast",
        ),
        (
            "<ip address='10.0.0.1' netmask='255.255.255.0' prefix='24'/>".into(),
            "network/ip",
            "not both",
        ),
        (
            "<ip address='10.0.0.1' netmask='255.0.255.0'/>".into(),
            "network/ip@netmask",
            "contiguous",
        ),
        (
            "<ip family='ipv6' address='fd00::1' netmask='255.255.255.0'/>".into(),
            "network/ip@netmask",
            "IPv6 takes a prefix",
        ),
        (
            "<ip address='10.0.0.1' prefix='33'/>".into(),
            "network/ip@prefix",
            "32 bits",
        ),
        (
            "<ip address='10.0.0.1' prefix='0'/>".into(),
            "network/ip@prefix",
            "default route",
        ),
        (
            "<ip family='ipv6' address='10.0.0.1'/>".into(),
            "network/ip@family",
            "does not match",
        ),
        (
            "<bridge name='vireobr012345678'/>".into(),
            "network/bridge@name",
            "1-15 bytes",
        ),
        (
            "<bridge name='br 0'/>".into(),
            "network/bridge@name",
            "interface name",
        ),
        (
            "<bridge name='br/0'/>".into(),
            "network/bridge@name",
            "interface name",
        ),
        (
            ip(
                "<host mac='52:54:00:00:00:01' ip='10.0.0.5'/><host mac='52:54:00:00:00:01' ip='10.0.0.6'/>",
            ),
            "network/ip/dhcp/host[2]@mac",
            "twice",
        ),
        (
            ip("<host mac='52:54:00:00:00:01' ip='10.0.0.5'/><host name='b' ip='10.0.0.5'/>"),
            "network/ip/dhcp/host[2]@ip",
            "two hosts",
        ),
        (
            ip("<host mac='zz' ip='10.0.0.5'/>"),
            "network/ip/dhcp/host@mac",
            "MAC",
        ),
        (
            ip("<host mac='01:00:5e:00:00:01' ip='10.0.0.5'/>"),
            "network/ip/dhcp/host@mac",
            "multicast",
        ),
        (
            ip("<host mac='52:54:00:00:00:01' ip='10.0.9.5'/>"),
            "network/ip/dhcp/host@ip",
            "outside",
        ),
        (
            ip("<host id='0:1:0:1' name='a' ip='10.0.0.5'/>"),
            "network/ip/dhcp/host@id",
            "IPv4",
        ),
        (
            "<ip family='ipv6' address='fd00::1' prefix='64'><dhcp><host mac='52:54:00:00:00:01' ip='fd00::5'/></dhcp></ip>".into(),
            "network/ip/dhcp/host@mac",
            "DUID",
        ),
        (
            ip("<host name='9lives' ip='10.0.0.5'/>"),
            "network/ip/dhcp/host@name",
            "letter",
        ),
        (
            ip("<range start='10.0.0.2' end='10.0.0.9'><lease expiry='60' unit='seconds'/></range>"),
            "network/ip/dhcp/range/lease@expiry",
            "2 minutes",
        ),
        (
            format!(
                "{}<ip address='10.0.1.1' prefix='24'><dhcp><range start='10.0.1.2' end='10.0.1.9'/></dhcp></ip>",
                ip("<range start='10.0.0.2' end='10.0.0.9'/>")
            ),
            "network/ip[2]/dhcp",
            "only one",
        ),
        (
            "<ip family='ipv6' address='fd00::1' prefix='64'><tftp root='/srv'/></ip>".into(),
            "network/ip/tftp",
            "IPv4",
        ),
        (
            "<ip address='10.0.0.1' prefix='24'><tftp root='srv'/></ip>".into(),
            "network/ip/tftp@root",
            "absolute",
        ),
        ("<forward mode='warp'/>".into(), "network/forward@mode", "warp"),
        (
            nat("<nat><port start='0' end='70000'/></nat>"),
            "network/forward/nat/port",
            "1-65535",
        ),
        (
            nat("<nat><port start='3000' end='2000'/></nat>"),
            "network/forward/nat/port",
            "1-65535",
        ),
        (
            nat("<nat><address start='2001:db8::1'/></nat>"),
            "network/forward/nat/address@start",
            "IPv4",
        ),
        (
            nat("<nat><address start='10.9.9.9' end='10.9.9.1'/></nat>"),
            "network/forward/nat/address",
            "after",
        ),
        (
            "<forward mode='route'><nat><port start='1' end='2'/></nat></forward>".into(),
            "network/forward/nat",
            "only nat",
        ),
        (
            "<forward mode='nat' managed='yes'/>".into(),
            "network/forward@managed",
            "hostdev",
        ),
        (
            nat("<interface dev='eth0'/><interface dev='eth1'/>"),
            "network/forward/interface[2]",
            "one interface",
        ),
        (
            "<forward mode='nat' dev='eth0'><interface dev='eth1'/></forward>".into(),
            "network/forward@dev",
            "first <interface>",
        ),
        (
            "<forward mode='passthrough'/>".into(),
            "network/forward",
            "needs <interface dev>",
        ),
        (
            "<forward mode='hostdev'><address type='pci' domain='0' bus='3' slot='0x20' function='1'/></forward>".into(),
            "network/forward/address",
            "not a PCI address",
        ),
        (
            "<forward mode='hostdev'><pf dev='eth3'/><address type='pci' domain='0' bus='3' slot='1' function='1'/></forward>".into(),
            "network/forward/pf",
            "not both",
        ),
        ("<mtu size='12'/>".into(), "network/mtu@size", "68-65535"),
        ("<uuid>not-a-uuid</uuid>".into(), "network/uuid", "UUID"),
        (
            "<mac address='52:54:00:00:00'/>".into(),
            "network/mac@address",
            "MAC",
        ),
        (
            "<ip address='10.0.0.1' prefix='24'/><route address='10.5.0.0' prefix='16' gateway='10.1.0.1'/>".into(),
            "network/route@gateway",
            "not on any <ip>",
        ),
        (
            "<ip address='10.0.0.1' prefix='24'/><route address='10.5.0.1' prefix='16' gateway='10.0.0.2'/>".into(),
            "network/route@address",
            "host bits",
        ),
        (
            "<ip address='10.0.0.1' prefix='24'/><route address='10.5.0.0' prefix='16' gateway='10.0.0.2' metric='0'/>".into(),
            "network/route@metric",
            "at least 1",
        ),
        (
            "<forward mode='bridge'/><bridge name='br0' stp='on'/>".into(),
            "network/bridge@stp",
            "not bridge networks",
        ),
        (
            "<forward mode='bridge'/>".into(),
            "network/bridge@name",
            "names the host bridge",
        ),
        (
            "<forward mode='bridge'/><bridge name='br0'/><ip address='10.0.0.1' prefix='24'/>".into(),
            "network/ip",
            "host's LAN",
        ),
        (
            "<forward mode='vepa'><interface dev='eth0'/></forward><bridge name='br0'/>".into(),
            "network/bridge",
            "has no bridge",
        ),
        (
            "<bridge name='br0' delay='2' forwardDelay='3'/>".into(),
            "network/bridge@forwardDelay",
            "disagrees",
        ),
        (
            "<domain name='bad_domain'/>".into(),
            "network/domain@name",
            "DNS name",
        ),
        (
            "<dns enable='no'><host ip='10.0.0.9'><hostname>a</hostname></host></dns>".into(),
            "network/dns@enable",
            "DNS is off",
        ),
        (
            "<dns><host ip='10.0.0.9'><hostname>a b</hostname></host></dns>".into(),
            "network/dns/host/hostname",
            "DNS name",
        ),
        (
            "<dns><host ip='10.0.0.9'/></dns>".into(),
            "network/dns/host",
            "needs a <hostname>",
        ),
        (
            "<dns><forwarder/></dns>".into(),
            "network/dns/forwarder",
            "addr or domain",
        ),
        (
            "<dns><txt name='t' value='say \"hi\"'/></dns>".into(),
            "network/dns/txt@value",
            "control characters",
        ),
        (
            "<dns><srv service='ldap' protocol='sctp'/></dns>".into(),
            "network/dns/srv@protocol",
            "sctp",
        ),
        (
            "<dns><srv service='ldap' protocol='tcp' port='389'/></dns>".into(),
            "network/dns/srv@target",
            "with port",
        ),
        (
            "<bandwidth><inbound average='10' floor='5'/></bandwidth>".into(),
            "network/bandwidth/inbound@floor",
            "port's guarantee",
        ),
        (
            "<bandwidth><inbound/></bandwidth>".into(),
            "network/bandwidth/inbound@average",
            "required",
        ),
        (
            "<bandwidth><outbound peak='10'/></bandwidth>".into(),
            "network/bandwidth/outbound@average",
            "with peak",
        ),
        (
            "<vlan><tag id='5'/></vlan>".into(),
            "network/vlan",
            "hostdev, passthrough and Open vSwitch",
        ),
        (
            "<forward mode='hostdev'><pf dev='eth3'/></forward><vlan><tag id='5000'/></vlan>".into(),
            "network/vlan/tag@id",
            "0-4095",
        ),
        (
            "<forward mode='hostdev'><pf dev='eth3'/></forward><vlan trunk='no'><tag id='5'/><tag id='6'/></vlan>".into(),
            "network/vlan@trunk",
            "trunk",
        ),
        (
            "<forward mode='hostdev'><pf dev='eth3'/></forward><vlan><tag id='5' nativeMode='tagged'/></vlan>".into(),
            "network/vlan/tag@nativeMode",
            "only a trunk",
        ),
        (
            "<portgroup name='a' default='yes'/><portgroup name='b' default='yes'/>".into(),
            "network/portgroup[2]@default",
            "only one",
        ),
        (
            "<portgroup name='a'/><portgroup name='a'/>".into(),
            "network/portgroup[2]@name",
            "two portgroups",
        ),
        (
            "<forward mode='bridge'/><bridge name='br0'/><virtualport type='802.1Qbh'><parameters interfaceid='1b2c3d4e-5f60-4718-92a3-b4c5d6e7f809'/></virtualport>".into(),
            "network/virtualport/parameters@interfaceid",
            "802.1Qbh",
        ),
        (
            "<forward mode='bridge'/><bridge name='br0'/><virtualport type='openvswitch'><parameters interfaceid='x'/></virtualport>".into(),
            "network/virtualport/parameters@interfaceid",
            "UUID",
        ),
    ] {
        let xml = wrap(&inner);
        let err = match network::parse(&xml) {
            Ok(def) => panic!("accepted {xml}: {def:?}"),
            Err(err) => err,
        };
        assert_eq!(err.field, field, "{inner}: {err}");
        assert!(err.message.contains(needle), "{inner}: {err}");
    }
    let err = network::parse("<network><name>../x</name></network>").unwrap_err();
    assert_eq!(err.field, "network/name");
    let err = network::parse("<network ipv6='yes'><name>n</name></network>").unwrap_err();
    assert_eq!(
        err.field, "network@ipv6",
        "not in the proto: refused, not dropped"
    );
    // libvirt's live count of guests is output only: accepted and dropped.
    network::parse("<network connections='2'><name>n</name></network>").unwrap();
}

#[test]
fn one_dhcp_host_for_net_update() {
    let host = network::parse_dhcp_host("<host mac='52:54:00:AA:00:01' name='web' ip='10.0.0.9'/>")
        .unwrap();
    assert_eq!(host.mac, "52:54:00:aa:00:01");
    assert_eq!((host.name.as_str(), host.ip.as_str()), ("web", "10.0.0.9"));
    assert_eq!(
        network::format_dhcp_host(&host).unwrap(),
        "<host mac='52:54:00:aa:00:01' name='web' ip='10.0.0.9'/>\n"
    );

    let leased = pb::DhcpHost {
        id: "0:3:0:1:0:16:3e:11:22:33".into(),
        ip: "fd00::9".into(),
        lease_time_s: Some(7200),
        ..Default::default()
    };
    let xml = network::format_dhcp_host(&leased).unwrap();
    assert!(xml.contains("<lease expiry='2' unit='hours'/>"), "{xml}");
    assert_eq!(network::parse_dhcp_host(&xml).unwrap(), leased);

    // net-update's delete names the host by its MAC alone.
    network::parse_dhcp_host("<host mac='52:54:00:aa:00:01'/>").unwrap();
    for (xml, field) in [
        ("<range start='1' end='2'/>", "range"),
        ("<host/>", "host"),
        ("<host mac='52:54:00:aa:00' ip='10.0.0.9'/>", "host@mac"),
        ("<host mac='52:54:00:aa:00:01' ip='10.0.0'/>", "host@ip"),
        ("<host mac='52:54:00:aa:00:01' ip='fd00::9'/>", "host@mac"),
        (
            "<host mac='52:54:00:aa:00:01' colour='red'/>",
            "host@colour",
        ),
    ] {
        assert_eq!(
            network::parse_dhcp_host(xml).unwrap_err().field,
            field,
            "{xml}"
        );
    }
}

#[test]
fn subnets_follow_libvirt() {
    let subnet = |address: &str, netmask: &str, prefix: u32| {
        network::subnet_of(&pb::NetworkIp {
            address: address.into(),
            netmask: netmask.into(),
            prefix,
            ..Default::default()
        })
        .map(|(network, prefix)| format!("{network}/{prefix}"))
    };
    assert_eq!(
        subnet("192.168.122.1", "255.255.255.0", 0).unwrap(),
        "192.168.122.0/24"
    );
    assert_eq!(subnet("10.1.2.3", "", 0).unwrap(), "10.0.0.0/8");
    assert_eq!(subnet("172.16.1.1", "", 0).unwrap(), "172.16.0.0/16");
    assert_eq!(subnet("fd00:1::5", "", 0).unwrap(), "fd00:1::/64");
    assert_eq!(subnet("0.0.0.0", "", 0).unwrap(), "0.0.0.0/0");
    assert_eq!(
        subnet("224.0.0.1", "", 0).unwrap_err().field,
        "network/ip@address"
    );
    let net: IpAddr = "192.168.122.0".parse().unwrap();
    assert!(network::contains(
        net,
        24,
        "192.168.122.77".parse().unwrap()
    ));
    assert!(!network::contains(
        net,
        24,
        "192.168.123.1".parse().unwrap()
    ));
    assert!(!network::contains(
        net,
        24,
        "::ffff:192.168.122.1".parse().unwrap()
    ));
}
