//! Volume XML golden files: each `*.in.xml` parses for its pool type, gets libvirt's defaults,
//! validates and formats to the matching `*.out.xml`; the output parses back to the same
//! definition. Set VIREO_BLESS=1 to rewrite the expected files after a deliberate change. Bad
//! inputs name their field.

#![allow(clippy::unwrap_used)]

mod common;

use vireo_conf::volume;
use vireo_proto::storage::v1 as pb;

/// The pool each golden volume lives in.
fn pool_type_of(stem: &str) -> pb::PoolType {
    match stem {
        "partition" => pb::PoolType::Disk,
        "logical" => pb::PoolType::Logical,
        _ => pb::PoolType::Dir,
    }
}

#[test]
fn golden_files_round_trip() {
    let seen = common::round_trip(
        "volume",
        |stem, input| {
            let pool_type = pool_type_of(stem);
            let def = volume::parse_definition(input, pool_type)
                .unwrap_or_else(|err| panic!("{stem}: {err}"));
            let output = volume::format(&def, pool_type).unwrap();
            (def, output)
        },
        |stem, output| volume::parse_definition(output, pool_type_of(stem)).unwrap(),
    );
    assert_eq!(seen, ["logical", "partition", "qcow2-backed", "raw"]);
}

#[test]
fn defaults_follow_the_pool() {
    let def = volume::parse_definition(
        "<volume><name>v</name><capacity>1024</capacity></volume>",
        pb::PoolType::Fs,
    )
    .unwrap();
    assert_eq!(def.r#type(), pb::VolumeType::File);
    assert_eq!(def.allocation_bytes, None, "unset: the same as capacity");
    let target = def.target.unwrap();
    assert_eq!(
        target.format,
        Some(pb::volume_target::Format::ImageFormat(
            pb::VolumeFormat::Raw as i32
        ))
    );

    let def = volume::parse_definition(
        "<volume><name>v</name><capacity>1024</capacity><target><format type='qcow2'/></target></volume>",
        pb::PoolType::Dir,
    )
    .unwrap();
    assert_eq!(def.target.unwrap().compat(), pb::Qcow2Compat::V11);

    let def = volume::parse_definition(
        "<volume><name>sdb2</name><capacity>1048576</capacity></volume>",
        pb::PoolType::Disk,
    )
    .unwrap();
    assert_eq!(def.r#type(), pb::VolumeType::Block);
    assert_eq!(
        def.target.unwrap().format,
        Some(pb::volume_target::Format::PartitionType(
            pb::PartitionType::None as i32
        ))
    );
}

#[test]
fn output_only_parts_are_formatted_and_dropped_on_input() {
    let def = pb::VolumeDefinition {
        name: "v1".into(),
        key: "r4xkCv-MQhr-WKIT-R66x-Epn2-e8hG-1Z5gY0".into(),
        r#type: pb::VolumeType::Block as i32,
        capacity_bytes: 2_080_374_784,
        allocation_bytes: Some(2_080_374_784),
        physical_bytes: 2_080_374_784,
        source_devices: vec![pb::VolumeSourceDevice {
            path: "/dev/sdc".into(),
            extents: vec![pb::Extent {
                start_bytes: 0,
                end_bytes: 2_080_374_784,
            }],
        }],
        target: Some(pb::VolumeTarget {
            path: "/dev/vg0/v1".into(),
            permissions: Some(pb::StoragePermissions {
                mode: Some(0o660),
                owner_uid: Some(0),
                group_gid: Some(6),
                label: String::new(),
            }),
            timestamps: Some(pb::VolumeTimestamps {
                atime_unix_ns: 1_341_933_637_273_190_990,
                mtime_unix_ns: 1_341_930_622_000_000_000,
                ..Default::default()
            }),
            ..Default::default()
        }),
        backing_store: None,
    };
    let xml = volume::format(&def, pb::PoolType::Logical).unwrap();
    for part in [
        "<volume type='block'>",
        "<key>r4xkCv-MQhr-WKIT-R66x-Epn2-e8hG-1Z5gY0</key>",
        "<device path='/dev/sdc'>",
        "<extent start='0' end='2080374784'/>",
        "<physical unit='bytes'>2080374784</physical>",
        "<path>/dev/vg0/v1</path>",
        "<mode>0660</mode>",
        "<atime>1341933637.273190990</atime>",
        "<mtime>1341930622</mtime>",
    ] {
        assert!(xml.contains(part), "missing {part} in\n{xml}");
    }
    let parsed = volume::parse(&xml, pb::PoolType::Logical).unwrap();
    assert!(parsed.key.is_empty() && parsed.source_devices.is_empty());
    assert_eq!(parsed.physical_bytes, 0);
    let target = parsed.target.unwrap();
    assert!(target.path.is_empty() && target.timestamps.is_none());
    assert_eq!(target.permissions, def.target.unwrap().permissions);
}

fn field_of(xml: &str, pool_type: pb::PoolType) -> String {
    match volume::parse_definition(xml, pool_type) {
        Ok(def) => panic!("accepted: {def:?}"),
        Err(err) => err.field,
    }
}

fn dir_field(xml: &str) -> String {
    field_of(xml, pb::PoolType::Dir)
}

fn named(name: &str) -> String {
    format!("<volume><name>{name}</name><capacity>1024</capacity></volume>")
}

#[test]
fn bad_volumes_name_their_field() {
    assert_eq!(
        dir_field(
            "<volume><name>v</name><capacity>1</capacity><target><colour/></target></volume>"
        ),
        "volume/target/colour"
    );
    assert_eq!(
        dir_field("<volume><name>v</name><capacity colour='red'>1</capacity></volume>"),
        "volume/capacity@colour"
    );
    for name in ["a/b", "..", "-rf", "", ".hidden"] {
        assert_eq!(dir_field(&named(name)), "volume/name", "{name:?}");
    }
    assert_eq!(dir_field(&named(&"x".repeat(256))), "volume/name");
    let mut def = volume::parse_definition(&named("v"), pb::PoolType::Dir).unwrap();
    def.name = "a\0b".into();
    assert_eq!(
        volume::validate(&def, pb::PoolType::Dir).unwrap_err().field,
        "volume/name"
    );
    assert_eq!(
        dir_field(
            "<volume><name>v</name><capacity unit='bytes'>9223372036854775808</capacity></volume>"
        ),
        "volume/capacity"
    );
    assert_eq!(
        dir_field("<volume><name>v</name><capacity unit='E'>16</capacity></volume>"),
        "volume/capacity"
    );
    assert_eq!(
        dir_field("<volume><name>v</name><capacity>0</capacity></volume>"),
        "volume/capacity"
    );
    assert_eq!(
        dir_field(
            "<volume><name>v</name><capacity unit='M'>1</capacity><allocation unit='M'>2</allocation></volume>"
        ),
        "volume/allocation"
    );
    assert_eq!(dir_field("<volume><name>v</name>"), "xml");
    assert_eq!(
        dir_field(
            "<volume><name>v</name><capacity>1024</capacity><target><format type='raw'/><features><lazy_refcounts/></features></target></volume>"
        ),
        "volume/target/features/lazy_refcounts"
    );
    assert_eq!(
        dir_field(
            "<volume><name>v</name><capacity>1024</capacity><target><format type='qcow2'/><compat>0.10</compat><features><extended_l2/></features></target></volume>"
        ),
        "volume/target/features/extended_l2"
    );
    assert_eq!(
        dir_field(
            "<volume><name>v</name><capacity>1024</capacity><target><format type='raw'/><compat>1.1</compat></target></volume>"
        ),
        "volume/target/compat"
    );
    assert_eq!(
        dir_field(
            "<volume><name>v</name><capacity>1024</capacity><target><format type='qcow2'/><clusterSize>1000</clusterSize></target></volume>"
        ),
        "volume/target/clusterSize"
    );
    assert_eq!(
        dir_field(
            "<volume><name>v</name><capacity>1024</capacity><target><format type='linux'/></target></volume>"
        ),
        "volume/target/format@type"
    );
    assert_eq!(
        dir_field(
            "<volume><name>v</name><capacity>1024</capacity><target><format type='raw'/></target><backingStore><path>/b.img</path></backingStore></volume>"
        ),
        "volume/backingStore"
    );
    assert_eq!(
        dir_field(
            "<volume><name>v</name><capacity>1024</capacity><backingStore><path>base.qcow2</path></backingStore></volume>"
        ),
        "volume/backingStore/path"
    );
    assert_eq!(
        dir_field(
            "<volume xmlns:vireo='urn:x-vireo:xmlns:1'><name>v</name><capacity>1024</capacity><vireo:preallocation>metadata</vireo:preallocation></volume>"
        ),
        "volume/vireo:preallocation"
    );
    assert_eq!(
        dir_field("<volume type='block'><name>v</name><capacity>1024</capacity></volume>"),
        "volume@type"
    );
}

#[test]
fn pool_types_decide_what_a_volume_may_be() {
    assert_eq!(
        field_of(
            "<volume><name>v</name><capacity>1024</capacity><target><format type='qcow2'/></target></volume>",
            pb::PoolType::Logical
        ),
        "volume/target/format@type"
    );
    assert_eq!(
        field_of(
            "<volume><name>bad name</name><capacity>1024</capacity></volume>",
            pb::PoolType::Logical
        ),
        "volume/name"
    );
    assert_eq!(
        field_of(
            "<volume><name>v</name><capacity>1024</capacity><target><format type='qcow2'/></target></volume>",
            pb::PoolType::Disk
        ),
        "volume/target/format@type"
    );
    let err = volume::parse_definition(&named("lun"), pb::PoolType::Iscsi).unwrap_err();
    assert_eq!(err.field, "volume");
    assert_eq!(
        err.message,
        "iscsi pools cannot create volumes; their LUNs are the volumes"
    );
    assert_eq!(field_of(&named("v"), pb::PoolType::Rbd), "pool@type");
    // Either kind of format word parses when the pool is not known.
    let def = volume::parse(
        "<volume><name>v</name><target><format type='linux-swap'/></target></volume>",
        pb::PoolType::Unspecified,
    )
    .unwrap();
    assert_eq!(
        def.target.unwrap().format,
        Some(pb::volume_target::Format::PartitionType(
            pb::PartitionType::LinuxSwap as i32
        ))
    );
}

#[test]
fn wipe_algorithms_cover_the_enum() {
    assert_eq!(volume::WIPE_ALGORITHMS.len(), 10);
    assert!(
        volume::WIPE_ALGORITHMS
            .iter()
            .any(|(w, a)| *w == "trim" && *a == pb::VolumeWipeAlgorithm::Trim)
    );
}
