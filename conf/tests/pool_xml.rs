//! Pool XML golden files: each `*.in.xml` parses, gets libvirt's defaults, validates and formats
//! to the matching `*.out.xml`; the output parses back to the same definition. Set VIREO_BLESS=1
//! to rewrite the expected files after a deliberate change. Bad inputs name their field.

#![allow(clippy::unwrap_used)]

mod common;

use vireo_conf::pool;
use vireo_proto::storage::v1 as pb;

#[test]
fn golden_files_round_trip() {
    let seen = common::round_trip(
        "pool",
        |stem, input| {
            let def = pool::parse_definition(input).unwrap_or_else(|err| panic!("{stem}: {err}"));
            let output = pool::format(&def).unwrap();
            (def, output)
        },
        |_, output| pool::parse_definition(output).unwrap(),
    );
    assert_eq!(seen, ["dir", "disk", "fs", "iscsi", "logical", "netfs"]);
}

#[test]
fn defaults_are_libvirts() {
    let def = pool::parse_definition(
        "<pool type='logical'><name>vg0</name><source><device path='/dev/sdc'/></source></pool>",
    )
    .unwrap();
    assert_eq!(def.uuid.len(), 36);
    let source = def.source.as_ref().unwrap();
    assert_eq!(source.name, "vg0", "the VG is named after the pool");
    assert_eq!(source.format(), pb::PoolSourceFormat::Lvm2);
    assert_eq!(def.target.as_ref().unwrap().path, "/dev/vg0");

    let def = pool::parse_definition(
        "<pool type='fs'><name>f</name><source><device path='/dev/sdc1'/></source><target><path>/mnt/f</path></target></pool>",
    )
    .unwrap();
    assert_eq!(def.source.unwrap().format(), pb::PoolSourceFormat::Auto);

    let def = pool::parse_definition(
        "<pool type='disk'><name>d</name><source><device path='/dev/sdb'/></source></pool>",
    )
    .unwrap();
    assert_eq!(def.target.as_ref().unwrap().path, "/dev");
    assert_eq!(
        def.source.as_ref().unwrap().format(),
        pb::PoolSourceFormat::Unspecified,
        "a disk label is probed, as libvirt's 'unknown'"
    );
    assert!(
        pool::format(&def)
            .unwrap()
            .contains("<format type='unknown'/>")
    );
}

fn field_of(xml: &str) -> String {
    match pool::parse_definition(xml) {
        Ok(def) => panic!("accepted: {def:?}"),
        Err(err) => err.field,
    }
}

fn dir_pool(name: &str, inner: &str) -> String {
    format!(
        "<pool type='dir'><name>{name}</name><target><path>/var/lib/vireo/p</path></target>{inner}</pool>"
    )
}

#[test]
fn bad_pools_name_their_field() {
    assert_eq!(
        field_of(&dir_pool("p", "<source><colour/></source>")),
        "pool/source/colour"
    );
    assert_eq!(
        field_of(
            "<pool type='dir'><name>p</name><target><path x='1'>/srv/p</path></target></pool>"
        ),
        "pool/target/path@x"
    );
    assert_eq!(field_of(&dir_pool("p", "<colour/>")), "pool/colour");
    for name in ["a/b", "..", "-rf", ""] {
        assert_eq!(field_of(&dir_pool(name, "")), "pool/name", "{name:?}");
    }
    let err = pool::parse_definition(
        "<pool type='rbd'><name>p</name><source><name>rbd</name></source></pool>",
    )
    .unwrap_err();
    assert_eq!(err.field, "pool@type");
    assert!(
        err.message
            .starts_with("pool type 'rbd' is not supported by Vireo"),
        "{err}"
    );
    assert_eq!(
        field_of("<pool type='xen'><name>p</name></pool>"),
        "pool@type"
    );
    assert_eq!(field_of("<pool><name>p</name></pool>"), "pool@type");
    assert_eq!(
        field_of("<pool type='dir'><name>p</name></pool>"),
        "pool/target/path"
    );
    assert_eq!(
        field_of("<pool type='dir'><name>p</name><target><path>images</path></target></pool>"),
        "pool/target/path"
    );
    assert_eq!(
        field_of("<pool type='dir'><name>p</name><target><path>/</path></target></pool>"),
        "pool/target/path"
    );
    assert_eq!(
        field_of("<pool type='dir'><name>p</name><target><path>/srv/../etc</path></target></pool>"),
        "pool/target/path"
    );
    assert_eq!(field_of("<pool type='dir'><name>p</name>"), "xml");
    assert_eq!(field_of("<network/>"), "network");
    assert_eq!(
        field_of(&dir_pool("p", "<capacity unit='bytes'>lots</capacity>")),
        "pool/capacity"
    );
    assert_eq!(
        field_of(&dir_pool("p", "<capacity unit='parsecs'>1</capacity>")),
        "pool/capacity@unit"
    );
    assert_eq!(
        field_of(&dir_pool("p", "<capacity unit='E'>16</capacity>")),
        "pool/capacity"
    );
    assert_eq!(
        field_of(&dir_pool("p", "<source><host name='h'/></source>")),
        "pool/source/host"
    );
    assert_eq!(
        field_of(
            "<pool type='dir'><name>p</name><target><path>/srv/p</path><permissions><mode>0999</mode></permissions></target></pool>"
        ),
        "pool/target/permissions/mode"
    );
}

#[test]
fn per_type_requirements() {
    assert_eq!(
        field_of(
            "<pool type='fs'><name>f</name><source><device path='/dev/a'/><device path='/dev/b'/></source><target><path>/mnt/f</path></target></pool>"
        ),
        "pool/source/device"
    );
    assert_eq!(
        field_of("<pool type='fs'><name>f</name><target><path>/mnt/f</path></target></pool>"),
        "pool/source/device"
    );
    assert_eq!(
        field_of(
            "<pool type='netfs'><name>n</name><source><host name='h'/></source><target><path>/mnt/n</path></target></pool>"
        ),
        "pool/source/dir"
    );
    assert_eq!(
        field_of(
            "<pool type='netfs'><name>n</name><source><dir path='/x'/></source><target><path>/mnt/n</path></target></pool>"
        ),
        "pool/source/host"
    );
    assert_eq!(
        field_of(
            "<pool type='netfs'><name>n</name><source><host name='h'/><dir path='/x'/><format type='ext4'/></source><target><path>/mnt/n</path></target></pool>"
        ),
        "pool/source/format@type"
    );
    assert_eq!(
        field_of(
            "<pool type='disk'><name>d</name><source><device path='/dev/sdb'/><format type='nfs'/></source></pool>"
        ),
        "pool/source/format@type"
    );
    assert_eq!(
        field_of("<pool type='disk'><name>d</name></pool>"),
        "pool/source/device"
    );
    assert_eq!(
        field_of("<pool type='iscsi'><name>i</name><source><host name='h'/></source></pool>"),
        "pool/source/device"
    );
    assert_eq!(
        field_of(
            "<pool type='iscsi'><name>i</name><source><device path='iqn.2010-05.com.example:t'/></source></pool>"
        ),
        "pool/source/host"
    );
    assert_eq!(
        field_of(
            "<pool type='iscsi'><name>i</name><source><host name='h'/><device path='iqn with spaces'/></source></pool>"
        ),
        "pool/source/device@path"
    );
    assert_eq!(
        field_of(
            "<pool type='logical'><name>v</name><source><name>vg</name></source><target><path>/dev/other</path></target></pool>"
        ),
        "pool/target/path"
    );
    assert_eq!(
        field_of(
            "<pool type='logical'><name>v</name><source><device path='dev/sdc'/></source></pool>"
        ),
        "pool/source/device@path"
    );
    assert_eq!(
        field_of(
            "<pool type='netfs'><name>n</name><features><cow state='no'/></features><source><host name='h'/><dir path='/x'/></source><target><path>/mnt/n</path></target></pool>"
        ),
        "pool/features/cow"
    );
}

#[test]
fn iscsi_auth_and_initiator_round_trip() {
    let xml = "<pool type='iscsi'><name>i</name><uuid>afcc5367-6770-e151-bcb3-847bc36c5e28</uuid>\
        <source><host name='10.0.0.1'/><device path='iqn.2010-05.com.example:t'/>\
        <initiator><iqn name='iqn.2010-05.com.example:client'/></initiator>\
        <auth type='chap' username='admin'><secret type='iscsi' usage='libvirtiscsi'/></auth>\
        </source></pool>";
    let def = pool::parse_definition(xml).unwrap();
    let output = pool::format(&def).unwrap();
    assert!(
        output.contains("<auth type='chap' username='admin'>"),
        "{output}"
    );
    assert!(
        output.contains("<secret usage='libvirtiscsi'/>"),
        "{output}"
    );
    assert!(
        output.contains("<iqn name='iqn.2010-05.com.example:client'/>"),
        "{output}"
    );
    assert_eq!(pool::parse_definition(&output).unwrap(), def);
}

#[test]
fn sources_document() {
    let spec = pool::parse_source(
        "<source><host name='nfs.example.com'/></source>",
        pb::PoolType::Netfs,
    )
    .unwrap();
    assert_eq!(spec.hosts[0].name, "nfs.example.com");
    assert_eq!(
        pool::parse_source("<source><format type='gpt'/></source>", pb::PoolType::Netfs)
            .unwrap_err()
            .field,
        "source/format@type"
    );
    assert_eq!(
        pool::parse_source("<source><colour/></source>", pb::PoolType::Netfs)
            .unwrap_err()
            .field,
        "source/colour"
    );
    let found = [pb::PoolSource {
        hosts: vec![pb::PoolSourceHost {
            name: "nfs.example.com".into(),
            port: 0,
        }],
        dir_path: "/nfstrial".into(),
        format: pb::PoolSourceFormat::Nfs as i32,
        ..Default::default()
    }];
    assert_eq!(
        pool::format_sources(pb::PoolType::Netfs, &found).unwrap(),
        "<sources>\n  <source>\n    <host name='nfs.example.com'/>\n    <dir path='/nfstrial'/>\n    <format type='nfs'/>\n  </source>\n</sources>\n"
    );
    assert_eq!(
        pool::format_sources(pb::PoolType::Logical, &[]).unwrap(),
        "<sources/>\n"
    );
}

#[test]
fn capabilities_document() {
    let mut caps = pool::capabilities();
    assert_eq!(caps.len(), pool::POOL_TYPES.len());
    // As the service reports a type whose tools are missing.
    if let Some(logical) = caps
        .iter_mut()
        .find(|c| c.r#type == pb::PoolType::Logical as i32)
    {
        logical.supported = false;
        logical.unsupported_reason = "lvm2 tools not installed".into();
    }
    let output = pool::format_capabilities(&caps).unwrap();
    common::check_golden("pool", "capabilities.xml", &output);
}
