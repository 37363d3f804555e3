//! Network XML golden files: each `*.in.xml` parses, validates and formats to the matching
//! `*.out.xml`, which parses back to the same definition (VIREO_BLESS=1 rewrites the expected
//! files). Bad inputs are refused naming their field.

#![allow(clippy::unwrap_used)]

mod common;

use vireo_conf::network;

#[test]
fn golden_files_round_trip() {
    let seen = common::round_trip(
        "network",
        |stem, input| {
            let def = network::parse(input).unwrap_or_else(|err| panic!("{stem}: {err}"));
            let output = network::format(&def).unwrap();
            (def, output)
        },
        |_, output| network::parse(output).unwrap(),
    );
    assert_eq!(
        seen,
        [
            "bridged",
            "default",
            "hosts-dns",
            "isolated",
            "rhel6-seed",
            "routed"
        ]
    );
}

#[test]
fn bad_networks_are_refused_by_field() {
    let wrap = |inner: &str| format!("<network><name>n</name>{inner}</network>");
    for (inner, field, needle) in [
        ("<bogus/>", "network/bogus", "not supported"),
        (
            "<ip address='10.0.0.1' prefix='24'><dhcp><foo/></dhcp></ip>",
            "network/ip/dhcp/foo",
            "not supported",
        ),
        (
            "<ip address='10.0.0.300' prefix='24'/>",
            "network/ip@address",
            "not an IP address",
        ),
        (
            "<ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.1.2' end='10.0.0.9'/></dhcp></ip>",
            "network/ip/dhcp/range[1]@start",
            "outside",
        ),
        (
            "<ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.0.9' end='10.0.0.2'/></dhcp></ip>",
            "network/ip/dhcp/range[1]",
            "after",
        ),
        (
            "<ip address='10.0.0.1' netmask='255.255.255.0' prefix='24'/>",
            "network/ip",
            "not both",
        ),
        (
            "<ip address='10.0.0.1' netmask='255.0.255.0'/>",
            "network/ip@netmask",
            "contiguous",
        ),
        (
            "<bridge name='a-much-too-long-bridge'/>",
            "network/bridge@name",
            "interface name",
        ),
        (
            "<ip address='10.0.0.1' prefix='24'><dhcp><host mac='52:54:00:00:00:01' ip='10.0.0.5'/><host mac='52:54:00:00:00:01' ip='10.0.0.6'/></dhcp></ip>",
            "network/ip/dhcp/host[2]@mac",
            "twice",
        ),
        (
            "<ip address='10.0.0.1' prefix='24'><dhcp><host mac='zz' ip='10.0.0.5'/></dhcp></ip>",
            "network/ip/dhcp/host[1]@mac",
            "MAC",
        ),
        ("<forward mode='warp'/>", "network/forward@mode", "warp"),
        (
            "<forward mode='nat'><nat><port start='0' end='70000'/></nat></forward>",
            "network/forward/nat/port",
            "1-65535",
        ),
        ("<mtu size='12'/>", "network/mtu@size", "68-65535"),
    ] {
        let err = network::parse(&wrap(inner)).unwrap_err();
        assert_eq!(err.field, field, "{inner}: {err}");
        assert!(err.message.contains(needle), "{inner}: {err}");
    }
    let err = network::parse("<network><name>../x</name></network>").unwrap_err();
    assert_eq!(err.field, "network/name");
}

#[test]
fn one_dhcp_host_for_net_update() {
    let host = network::parse_dhcp_host("<host mac='52:54:00:AA:00:01' name='web' ip='10.0.0.9'/>")
        .unwrap();
    assert_eq!(host.mac, "52:54:00:aa:00:01");
    assert_eq!((host.name.as_str(), host.ip.as_str()), ("web", "10.0.0.9"));
    assert!(network::parse_dhcp_host("<range start='1' end='2'/>").is_err());
    assert!(network::parse_dhcp_host("<host/>").is_err());
}
