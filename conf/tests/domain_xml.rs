//! Domain XML golden files: each `*.in.xml` parses, gets libvirt's defaults and formats to the
//! matching `*.out.xml`; the output parses back to the same definition. Set
//! VIREO_BLESS=1 to rewrite the expected files after a deliberate change.

#![allow(clippy::unwrap_used)]

mod common;

use vireo_conf::domain;

#[test]
fn golden_files_round_trip() {
    let seen = common::round_trip(
        "domain",
        |stem, input| {
            let def = domain::parse_definition(input).unwrap_or_else(|err| panic!("{stem}: {err}"));
            let output = domain::format(&def, None).unwrap();
            (def, output)
        },
        |_, output| domain::parse_definition(output).unwrap(),
    );
    assert!(seen.len() >= 2, "no golden inputs found");
}

fn error_of(xml: &str) -> String {
    domain::parse_definition(xml).unwrap_err().to_string()
}

fn minimal(inner: &str) -> String {
    format!("<domain type='kvm'><name>g</name><memory unit='MiB'>64</memory>{inner}</domain>")
}

#[test]
fn unsupported_elements_and_attributes_are_named() {
    assert_eq!(
        error_of(&minimal("<devices><sound model='ich6'/></devices>")),
        "domain/devices/sound: <sound> is not supported by Vireo"
    );
    assert_eq!(
        error_of(&minimal(
            "<devices><disk type='file' colour='red'/></devices>"
        )),
        "domain/devices/disk@colour: attribute is not supported by Vireo"
    );
    assert_eq!(
        error_of(&minimal("<devices><disk type='network'/></devices>")),
        "domain/devices/disk@type: 'network' is not supported by Vireo (supported: file, block, volume)"
    );
    assert_eq!(
        error_of(&minimal("<memory>1</memory>")),
        "domain/memory[2]: <memory> is not supported by Vireo"
    );
}

#[test]
fn bad_values_name_their_field() {
    let huge =
        "<domain type='kvm'><name>g</name><memory unit='KiB'>9223372036854775808</memory></domain>";
    assert!(error_of(huge).starts_with("domain/memory: 9223372036854775808 KiB is more than"));
    let overflow = "<domain type='kvm'><name>g</name><memory unit='TiB'>18446744073709551615</memory></domain>";
    assert!(error_of(overflow).starts_with("domain/memory:"));
    assert!(
        error_of("<domain type='kvm'><name>../etc</name><memory>65536</memory></domain>")
            .starts_with("domain/name: '../etc' is not a valid name")
    );
    assert!(error_of("<domain type='xen'><name>g</name></domain>").starts_with("domain@type:"));
    assert!(
        error_of(&minimal(
            "<os><type>hvm</type><kernel>/boot/../etc/shadow</kernel></os>"
        ))
        .starts_with("domain/os/kernel: '/boot/../etc/shadow' must not contain '..'")
    );
    assert!(error_of(&minimal("<vcpu>0</vcpu>")).starts_with("domain/vcpu: 0 vCPUs"));
    assert!(error_of(&minimal("<vcpu>99999999999</vcpu>")).starts_with("domain/vcpu:"));
    assert!(error_of(&minimal(
        "<devices><disk type='file'><source file='/a'/><target dev='vda'/></disk><disk type='file'><source file='/b'/><target dev='vda'/></disk></devices>"
    ))
    .contains("is used by two disks"));
    assert!(error_of(&minimal(
        "<devices><interface type='bridge'><mac address='01:00:00:00:00:01'/><source bridge='br0'/></interface></devices>"
    ))
    .contains("is not a unicast MAC address"));
    let pci_source = "<source><address domain='0' bus='3' slot='0' function='1'/></source>";
    let legacy = error_of(&minimal(&format!(
        "<devices><hostdev mode='subsystem' type='pci'><driver name='kvm'/>{pci_source}</hostdev></devices>"
    )));
    assert!(
        legacy.contains("driver@name") && legacy.contains("through vfio"),
        "{legacy}"
    );
    assert!(
        error_of(&minimal(&format!(
            "<devices><hostdev mode='subsystem' type='pci'>{pci_source}<rom file='/roms/../x'/></hostdev></devices>"
        )))
        .starts_with("domain/devices/hostdev/rom@file: '/roms/../x' must not contain '..'")
    );
    assert!(error_of("<domain type='kvm'><name>g</name>").starts_with("xml:"));
    assert!(error_of("<network/>").starts_with("network: the root element must be <domain>"));
}

#[test]
fn defaults_are_libvirts() {
    let def = domain::parse_definition(&minimal(
        "<devices><disk type='file' device='cdrom'><source file='/x.iso'/><target dev='hdc'/></disk><interface type='bridge'><source bridge='br0'/></interface><serial type='pty'/></devices>",
    ))
    .unwrap();
    assert_eq!(def.uuid.len(), 36);
    assert_eq!(def.current_memory_kib, 65536);
    assert_eq!(def.vcpu.as_ref().unwrap().count, 1);
    let devices = def.devices.as_ref().unwrap();
    assert!(devices.disks[0].readonly, "a CD-ROM is read-only");
    assert_eq!(
        devices.disks[0].target.as_ref().unwrap().bus,
        2,
        "hdX is IDE"
    );
    assert!(devices.interfaces[0].mac.starts_with("52:54:00:"));
    assert_eq!(
        devices.consoles.len(),
        1,
        "the serial port is also the console"
    );
    assert!(devices.memballoon.is_some());
    assert_eq!(
        domain::parse_cpuset("0-3,^2,6", "f").unwrap(),
        vec![0, 1, 3, 6]
    );
}
