//! libvirt storage volume XML <-> `VolumeDefinition` (vol-create, vol-dumpxml): parse (every
//! element and attribute is understood or refused by name), fill libvirt's defaults for the pool
//! the volume lives in, validate, format in libvirt's layout. Also the keyword tables of volume
//! formats, partition types and vol-wipe algorithms.

use vireo_proto::storage::v1 as pb;

use crate::VIREO_XML_NAMESPACE;
use crate::dom::{self, ConfError, Element};
use crate::domain::{Attrs, Fmt, Table, check_host_path, enum_attr, lookup, name_of, number_attr};
use crate::pool::{
    check_permissions, format_permissions, parse_permissions, size_bytes, unsupported_pool_type,
};
use crate::xml::{XmlError, XmlWriter};

/// The largest volume Vireo creates: 64 PiB, far above any disk and well below where byte
/// arithmetic on sizes (offsets, sums of extents) could overflow.
pub const MAX_VOLUME_BYTES: u64 = 1 << 56;
/// A volume name becomes a file name: at most NAME_MAX bytes.
pub const MAX_VOLUME_NAME_BYTES: usize = 255;

pub const VOLUME_TYPES: Table<pb::VolumeType> = &[
    ("file", pb::VolumeType::File),
    ("block", pb::VolumeType::Block),
    ("dir", pb::VolumeType::Dir),
    ("network", pb::VolumeType::Network),
    ("netdir", pb::VolumeType::Netdir),
    ("ploop", pb::VolumeType::Ploop),
];

pub const VOLUME_FORMATS: Table<pb::VolumeFormat> = &[
    ("raw", pb::VolumeFormat::Raw),
    ("qcow2", pb::VolumeFormat::Qcow2),
    ("qcow", pb::VolumeFormat::Qcow),
    ("vmdk", pb::VolumeFormat::Vmdk),
    ("vdi", pb::VolumeFormat::Vdi),
    ("vpc", pb::VolumeFormat::Vpc),
    ("vhdx", pb::VolumeFormat::Vhdx),
    ("iso", pb::VolumeFormat::Iso),
    ("bochs", pb::VolumeFormat::Bochs),
    ("cloop", pb::VolumeFormat::Cloop),
    ("dmg", pb::VolumeFormat::Dmg),
    ("qed", pb::VolumeFormat::Qed),
    ("dir", pb::VolumeFormat::Dir),
];

pub const PARTITION_TYPES: Table<pb::PartitionType> = &[
    ("none", pb::PartitionType::None),
    ("linux", pb::PartitionType::Linux),
    ("fat16", pb::PartitionType::Fat16),
    ("fat32", pb::PartitionType::Fat32),
    ("linux-swap", pb::PartitionType::LinuxSwap),
    ("linux-lvm", pb::PartitionType::LinuxLvm),
    ("linux-raid", pb::PartitionType::LinuxRaid),
    ("extended", pb::PartitionType::Extended),
];

/// vol-wipe --algorithm words.
pub const WIPE_ALGORITHMS: Table<pb::VolumeWipeAlgorithm> = &[
    ("zero", pb::VolumeWipeAlgorithm::Zero),
    ("nnsa", pb::VolumeWipeAlgorithm::Nnsa),
    ("dod", pb::VolumeWipeAlgorithm::Dod),
    ("bsi", pb::VolumeWipeAlgorithm::Bsi),
    ("gutmann", pb::VolumeWipeAlgorithm::Gutmann),
    ("schneier", pb::VolumeWipeAlgorithm::Schneier),
    ("pfitzner7", pb::VolumeWipeAlgorithm::Pfitzner7),
    ("pfitzner33", pb::VolumeWipeAlgorithm::Pfitzner33),
    ("random", pb::VolumeWipeAlgorithm::Random),
    ("trim", pb::VolumeWipeAlgorithm::Trim),
];

/// `<vireo:preallocation>` words (libvirt has no element for it).
pub const PREALLOCATIONS: Table<pb::VolumePreallocation> = &[
    ("off", pb::VolumePreallocation::Off),
    ("metadata", pb::VolumePreallocation::Metadata),
    ("falloc", pb::VolumePreallocation::Falloc),
    ("full", pb::VolumePreallocation::Full),
];

pub const QCOW2_COMPATS: Table<pb::Qcow2Compat> = &[
    ("0.10", pb::Qcow2Compat::V010),
    ("1.1", pb::Qcow2Compat::V11),
];

/// How a pool type stores its volumes, which decides what a volume may be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Files in a directory (dir, fs, netfs).
    Files,
    /// LVM logical volumes.
    Logical,
    /// Partitions of one disk.
    Partitions,
}

fn kind_of(pool_type: pb::PoolType) -> Result<Kind, ConfError> {
    match pool_type {
        pb::PoolType::Dir | pb::PoolType::Fs | pb::PoolType::Netfs => Ok(Kind::Files),
        pb::PoolType::Logical => Ok(Kind::Logical),
        pb::PoolType::Disk => Ok(Kind::Partitions),
        pb::PoolType::Iscsi => Err(ConfError::new(
            "volume",
            "iscsi pools cannot create volumes; their LUNs are the volumes",
        )),
        other => Err(unsupported_pool_type(other as i32)),
    }
}

// ============================================================================================
// Parsing
// ============================================================================================

/// `sec[.nsec]` since the epoch, as libvirt writes timestamps.
fn parse_timestamp(el: &mut Element) -> Result<(), ConfError> {
    let text = el.text();
    let (secs, nanos) = text.split_once('.').unwrap_or((&text, "0"));
    let ok = secs.parse::<i64>().is_ok()
        && !nanos.is_empty()
        && nanos.len() <= 9
        && nanos.bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(el.error(format!(
            "'{text}' is not a time such as 1341933637.273190990"
        )))
    }
}

fn format_of(
    word: &str,
    pool_type: pb::PoolType,
    field: String,
) -> Result<pb::volume_target::Format, ConfError> {
    use pb::volume_target::Format;
    match pool_type {
        pb::PoolType::Disk => {
            lookup(PARTITION_TYPES, word, field).map(|t| Format::PartitionType(t as i32))
        }
        // Without a pool to ask, either kind of word is taken (they do not overlap).
        pb::PoolType::Unspecified => {
            if let Ok(format) = lookup(VOLUME_FORMATS, word, field.clone()) {
                Ok(Format::ImageFormat(format as i32))
            } else {
                lookup(PARTITION_TYPES, word, field).map(|t| Format::PartitionType(t as i32))
            }
        }
        _ => lookup(VOLUME_FORMATS, word, field).map(|f| Format::ImageFormat(f as i32)),
    }
}

/// Parses libvirt volume XML for a pool of `pool_type` (which decides whether `<format type>`
/// is an image format or a partition type; UNSPECIFIED takes either). Output-only parts (`key`,
/// `physical`, `source`, the target path, timestamps, the backing store's permissions) are
/// checked and dropped.
pub fn parse(xml: &str, pool_type: pb::PoolType) -> Result<pb::VolumeDefinition, ConfError> {
    let mut root = dom::parse(xml)?;
    if root.name != "volume" {
        return Err(root.error(format!(
            "the root element must be <volume>, not <{}>",
            root.name
        )));
    }
    let mut def = pb::VolumeDefinition {
        r#type: enum_attr(&mut root, "type", VOLUME_TYPES)?,
        ..Default::default()
    };
    check_namespace(&mut root)?;
    def.name = root.child_text("name")?.unwrap_or_default();
    root.child_text("key")?;
    if let Some(mut source) = root.child("source") {
        for mut device in source.children("device") {
            device.required_attr("path")?;
            for mut extent in device.children("extent") {
                number_attr::<u64>(&mut extent, "start")?;
                number_attr::<u64>(&mut extent, "end")?;
                extent.finish()?;
            }
            device.finish()?;
        }
        source.finish()?;
    }
    if let Some(mut el) = root.child("capacity") {
        def.capacity_bytes = size_bytes(&mut el)?;
        el.finish()?;
    }
    if let Some(mut el) = root.child("allocation") {
        def.allocation_bytes = Some(size_bytes(&mut el)?);
        el.finish()?;
    }
    if let Some(mut el) = root.child("physical") {
        size_bytes(&mut el)?;
        el.finish()?;
    }
    if let Some(target) = root.child("target") {
        def.target = Some(parse_target(target, pool_type)?);
    }
    if let Some(backing) = root.child("backingStore") {
        def.backing_store = parse_backing_store(backing)?;
    }
    if let Some(mut el) = root.child("vireo:preallocation") {
        check_namespace(&mut el)?;
        let text = el.text();
        def.target.get_or_insert_default().preallocation =
            lookup(PREALLOCATIONS, &text, el.path.clone())? as i32;
        el.finish()?;
    }
    root.finish()?;
    Ok(def)
}

/// Our namespace may be declared on the root or on the element itself; only ours is accepted.
fn check_namespace(el: &mut Element) -> Result<(), ConfError> {
    match el.attr("xmlns:vireo") {
        Some(ns) if ns != VIREO_XML_NAMESPACE => {
            Err(el.attr_error("xmlns:vireo", format!("must be {VIREO_XML_NAMESPACE}")))
        }
        _ => Ok(()),
    }
}

fn parse_target(mut el: Element, pool_type: pb::PoolType) -> Result<pb::VolumeTarget, ConfError> {
    let mut target = pb::VolumeTarget::default();
    el.child_text("path")?;
    if let Some(mut format) = el.child("format") {
        let word = format.required_attr("type")?;
        target.format = Some(format_of(&word, pool_type, format.field("type"))?);
        format.finish()?;
    }
    target.permissions = parse_permissions(&mut el)?;
    if let Some(mut timestamps) = el.child("timestamps") {
        for name in ["atime", "mtime", "ctime", "btime"] {
            if let Some(mut time) = timestamps.child(name) {
                parse_timestamp(&mut time)?;
                time.finish()?;
            }
        }
        timestamps.finish()?;
    }
    if let Some(mut compat) = el.child("compat") {
        let text = compat.text();
        target.compat = lookup(QCOW2_COMPATS, &text, compat.path.clone())? as i32;
        compat.finish()?;
    }
    if let Some(mut size) = el.child("clusterSize") {
        target.cluster_size_bytes = size_bytes(&mut size)?;
        size.finish()?;
    }
    if let Some(nocow) = el.child("nocow") {
        target.nocow = true;
        nocow.finish()?;
    }
    if let Some(mut features) = el.child("features") {
        for (name, flag) in [
            ("lazy_refcounts", &mut target.lazy_refcounts),
            ("extended_l2", &mut target.extended_l2),
        ] {
            if let Some(child) = features.child(name) {
                *flag = true;
                child.finish()?;
            }
        }
        features.finish()?;
    }
    el.finish()?;
    Ok(target)
}

fn parse_backing_store(mut el: Element) -> Result<Option<pb::VolumeBackingStore>, ConfError> {
    let mut backing = pb::VolumeBackingStore {
        path: el.child_text("path")?.unwrap_or_default(),
        ..Default::default()
    };
    if let Some(mut format) = el.child("format") {
        backing.format = lookup(
            VOLUME_FORMATS,
            &format.required_attr("type")?,
            format.field("type"),
        )? as i32;
        format.finish()?;
    }
    parse_permissions(&mut el)?;
    el.finish()?;
    // An empty <backingStore/> is libvirt's "no backing store".
    if backing.path.is_empty() && backing.format == 0 {
        return Ok(None);
    }
    Ok(Some(backing))
}

// ============================================================================================
// Defaults and validation
// ============================================================================================

fn image_format(target: Option<&pb::VolumeTarget>) -> pb::VolumeFormat {
    match target.and_then(|t| t.format) {
        Some(pb::volume_target::Format::ImageFormat(format)) => {
            pb::VolumeFormat::try_from(format).unwrap_or(pb::VolumeFormat::Unspecified)
        }
        _ => pb::VolumeFormat::Unspecified,
    }
}

/// Fills what libvirt fills for a new volume in a pool of `pool_type`: the volume type, `raw` in
/// file pools (`qcow2` when a backing store is given: raw images cannot have one), partition type
/// `none` in disk pools, qcow2 compat 1.1.
pub fn fill_defaults(def: &mut pb::VolumeDefinition, pool_type: pb::PoolType) {
    use pb::volume_target::Format;
    let has_backing = def
        .backing_store
        .as_ref()
        .is_some_and(|b| !b.path.is_empty());
    let wants_dir = def.r#type == pb::VolumeType::Dir as i32;
    let target = def.target.get_or_insert_default();
    match kind_of(pool_type) {
        Ok(Kind::Files) => {
            if target.format.is_none() {
                let format = if wants_dir {
                    pb::VolumeFormat::Dir
                } else if has_backing {
                    pb::VolumeFormat::Qcow2
                } else {
                    pb::VolumeFormat::Raw
                };
                target.format = Some(Format::ImageFormat(format as i32));
            }
            if def.r#type == 0 {
                def.r#type = if image_format(Some(target)) == pb::VolumeFormat::Dir {
                    pb::VolumeType::Dir
                } else {
                    pb::VolumeType::File
                } as i32;
            }
        }
        Ok(Kind::Partitions) => {
            if target.format.is_none() {
                target.format = Some(Format::PartitionType(pb::PartitionType::None as i32));
            }
            if def.r#type == 0 {
                def.r#type = pb::VolumeType::Block as i32;
            }
        }
        Ok(Kind::Logical) => {
            if def.r#type == 0 {
                def.r#type = pb::VolumeType::Block as i32;
            }
        }
        Err(_) => {}
    }
    if image_format(Some(target)) == pb::VolumeFormat::Qcow2 && target.compat == 0 {
        target.compat = pb::Qcow2Compat::V11 as i32;
    }
}

/// A volume name: it becomes a file, LV or partition name, so no '/', no NUL or control
/// characters, no leading '.' (hidden files, '..') or '-' (taken for an option by tools).
pub fn check_volume_name(name: &str, field: &str) -> Result<(), ConfError> {
    let problem = if name.is_empty() {
        Some("is required")
    } else if name.len() > MAX_VOLUME_NAME_BYTES {
        Some("is longer than 255 bytes")
    } else if name.contains('/') {
        Some("must not contain '/'")
    } else if name.contains('\0') {
        Some("must not contain NUL")
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if name.starts_with('.') {
        Some("must not start with '.'")
    } else if name.starts_with('-') {
        Some("must not start with '-'")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ConfError::new(
            field,
            format!(
                "'{}' is not a valid volume name: it {problem}",
                name.escape_debug()
            ),
        )),
        None => Ok(()),
    }
}

fn allowed_volume_types(kind: Kind) -> &'static [pb::VolumeType] {
    match kind {
        Kind::Files => &[pb::VolumeType::File, pb::VolumeType::Dir],
        Kind::Logical | Kind::Partitions => &[pb::VolumeType::Block],
    }
}

/// Checks a volume definition for a pool of `pool_type`, after defaults are filled.
pub fn validate(def: &pb::VolumeDefinition, pool_type: pb::PoolType) -> Result<(), ConfError> {
    let kind = kind_of(pool_type)?;
    check_volume_name(&def.name, "volume/name")?;
    if kind == Kind::Logical
        && !def
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '_' | '.' | '-'))
    {
        return Err(ConfError::new(
            "volume/name",
            format!(
                "'{}' is not a logical volume name: use letters, digits, '+', '_', '.', '-'",
                def.name.escape_debug()
            ),
        ));
    }
    check_sizes(def)?;
    let default_target = pb::VolumeTarget::default();
    let target = def.target.as_ref().unwrap_or(&default_target);
    let type_word = name_of(crate::pool::POOL_TYPES, pool_type as i32);
    let volume_type = pb::VolumeType::try_from(def.r#type).unwrap_or(pb::VolumeType::Unspecified);
    if volume_type != pb::VolumeType::Unspecified
        && !allowed_volume_types(kind).contains(&volume_type)
    {
        return Err(ConfError::new(
            "volume@type",
            format!(
                "{type_word} pools cannot hold {} volumes",
                name_of(VOLUME_TYPES, def.r#type)
            ),
        ));
    }
    let format = image_format(Some(target));
    check_format(kind, type_word, target, volume_type, format)?;
    check_qcow2_options(kind, target, format)?;
    check_permissions(target.permissions.as_ref(), "volume/target/permissions")?;
    check_backing_store(def, kind, type_word, format)
}

fn check_sizes(def: &pb::VolumeDefinition) -> Result<(), ConfError> {
    let too_big = |field: &str, bytes: u64| {
        ConfError::new(
            field,
            format!(
                "{bytes} bytes is more than Vireo supports (at most {MAX_VOLUME_BYTES}, 64 PiB)"
            ),
        )
    };
    if def.capacity_bytes > MAX_VOLUME_BYTES {
        return Err(too_big("volume/capacity", def.capacity_bytes));
    }
    let has_backing = def
        .backing_store
        .as_ref()
        .is_some_and(|b| !b.path.is_empty());
    if def.capacity_bytes == 0 && !has_backing {
        return Err(ConfError::new(
            "volume/capacity",
            "is required (above 0) unless a backing store gives it",
        ));
    }
    if let Some(allocation) = def.allocation_bytes {
        if allocation > MAX_VOLUME_BYTES {
            return Err(too_big("volume/allocation", allocation));
        }
        if def.capacity_bytes > 0 && allocation > def.capacity_bytes {
            return Err(ConfError::new(
                "volume/allocation",
                format!(
                    "{allocation} bytes is more than the capacity ({} bytes)",
                    def.capacity_bytes
                ),
            ));
        }
    }
    Ok(())
}

fn check_format(
    kind: Kind,
    type_word: &str,
    target: &pb::VolumeTarget,
    volume_type: pb::VolumeType,
    format: pb::VolumeFormat,
) -> Result<(), ConfError> {
    use pb::volume_target::Format;
    const FIELD: &str = "volume/target/format@type";
    let word = match target.format {
        Some(Format::ImageFormat(f)) => name_of(VOLUME_FORMATS, f),
        Some(Format::PartitionType(t)) => name_of(PARTITION_TYPES, t),
        None => "",
    };
    match (kind, target.format) {
        (_, None) => {}
        (Kind::Files, Some(Format::ImageFormat(_))) => {
            if format == pb::VolumeFormat::Unspecified {
                return Err(ConfError::new(FIELD, "is not a known image format"));
            }
            // A dir volume is a directory and nothing else is.
            if (format == pb::VolumeFormat::Dir) != (volume_type == pb::VolumeType::Dir)
                && volume_type != pb::VolumeType::Unspecified
            {
                return Err(ConfError::new(
                    FIELD,
                    "format dir goes with <volume type='dir'>, and only with it",
                ));
            }
        }
        (Kind::Logical, Some(Format::ImageFormat(_))) if format == pb::VolumeFormat::Raw => {}
        (Kind::Partitions, Some(Format::PartitionType(t)))
            if pb::PartitionType::try_from(t)
                .is_ok_and(|t| t != pb::PartitionType::Unspecified) => {}
        (Kind::Partitions, _) => {
            return Err(ConfError::new(
                FIELD,
                format!(
                    "'{word}' is not a partition type (supported: {})",
                    words(PARTITION_TYPES)
                ),
            ));
        }
        _ => {
            let supported = if kind == Kind::Logical {
                "raw"
            } else {
                "an image format"
            };
            return Err(ConfError::new(
                FIELD,
                format!("'{word}' is not a format for {type_word} pools (supported: {supported})"),
            ));
        }
    }
    Ok(())
}

fn words<T>(table: Table<T>) -> String {
    table.iter().map(|(w, _)| *w).collect::<Vec<_>>().join(", ")
}

fn check_qcow2_options(
    kind: Kind,
    target: &pb::VolumeTarget,
    format: pb::VolumeFormat,
) -> Result<(), ConfError> {
    let qcow2 = format == pb::VolumeFormat::Qcow2;
    let v1_1 = target.compat == pb::Qcow2Compat::V11 as i32;
    for (name, on) in [
        ("lazy_refcounts", target.lazy_refcounts),
        ("extended_l2", target.extended_l2),
    ] {
        if on && !(qcow2 && v1_1) {
            return Err(ConfError::new(
                format!("volume/target/features/{name}"),
                "needs format qcow2 with compat 1.1",
            ));
        }
    }
    if target.compat != 0 && !qcow2 {
        return Err(ConfError::new(
            "volume/target/compat",
            "is for qcow2 volumes only",
        ));
    }
    if target.cluster_size_bytes != 0 {
        // qemu-img's limits: a power of two from 512 bytes to 2 MiB.
        let size = target.cluster_size_bytes;
        if !qcow2 {
            return Err(ConfError::new(
                "volume/target/clusterSize",
                "is for qcow2 volumes only",
            ));
        }
        if !size.is_power_of_two() || !(512..=2 << 20).contains(&size) {
            return Err(ConfError::new(
                "volume/target/clusterSize",
                format!("{size} bytes: must be a power of two from 512 bytes to 2 MiB"),
            ));
        }
    }
    if target.nocow && kind != Kind::Files {
        return Err(ConfError::new(
            "volume/target/nocow",
            "is for file volumes only",
        ));
    }
    let preallocation = target.preallocation();
    if preallocation == pb::VolumePreallocation::Metadata && !qcow2 {
        return Err(ConfError::new(
            "volume/vireo:preallocation",
            "metadata preallocation needs format qcow2",
        ));
    }
    if preallocation != pb::VolumePreallocation::Unspecified && kind != Kind::Files {
        return Err(ConfError::new(
            "volume/vireo:preallocation",
            "is for file volumes only (logical volumes and partitions are always allocated)",
        ));
    }
    Ok(())
}

fn check_backing_store(
    def: &pb::VolumeDefinition,
    kind: Kind,
    type_word: &str,
    format: pb::VolumeFormat,
) -> Result<(), ConfError> {
    let Some(backing) = def.backing_store.as_ref() else {
        return Ok(());
    };
    if backing.path.is_empty() {
        return Err(ConfError::new(
            "volume/backingStore/path",
            "is required in a backing store",
        ));
    }
    check_host_path(&backing.path, "volume/backingStore/path")?;
    if kind == Kind::Partitions {
        return Err(ConfError::new(
            "volume/backingStore",
            format!("{type_word} pools cannot create volumes over a backing store"),
        ));
    }
    if kind == Kind::Files && matches!(format, pb::VolumeFormat::Raw | pb::VolumeFormat::Dir) {
        return Err(ConfError::new(
            "volume/backingStore",
            format!(
                "{} volumes cannot have a backing store (use qcow2)",
                name_of(VOLUME_FORMATS, format as i32)
            ),
        ));
    }
    if backing.format == pb::VolumeFormat::Dir as i32 {
        return Err(ConfError::new(
            "volume/backingStore/format@type",
            "a directory cannot back a volume",
        ));
    }
    Ok(())
}

/// Parses, fills defaults and validates: what vol-create accepts for a pool of `pool_type`.
pub fn parse_definition(
    xml: &str,
    pool_type: pb::PoolType,
) -> Result<pb::VolumeDefinition, ConfError> {
    let mut def = parse(xml, pool_type)?;
    fill_defaults(&mut def, pool_type);
    validate(&def, pool_type)?;
    Ok(def)
}

// ============================================================================================
// Formatting
// ============================================================================================

/// libvirt's `sec[.nsec]`: the fraction only when there is one.
fn timestamp(unix_ns: i64) -> String {
    const NS: i64 = 1_000_000_000;
    let (secs, nanos) = (unix_ns.div_euclid(NS), unix_ns.rem_euclid(NS));
    if nanos == 0 {
        secs.to_string()
    } else {
        format!("{secs}.{nanos:09}")
    }
}

fn target_is_empty(target: &pb::VolumeTarget) -> bool {
    let no_perms = target.permissions.as_ref().is_none_or(|p| {
        p.mode.is_none() && p.owner_uid.is_none() && p.group_gid.is_none() && p.label.is_empty()
    });
    let no_times = target.timestamps.as_ref().is_none_or(|t| {
        t.atime_unix_ns == 0 && t.mtime_unix_ns == 0 && t.ctime_unix_ns == 0 && t.btime_unix_ns == 0
    });
    target.path.is_empty()
        && target.format.is_none()
        && no_perms
        && no_times
        && target.compat == 0
        && target.cluster_size_bytes == 0
        && !target.nocow
        && !target.lazy_refcounts
        && !target.extended_l2
}

/// The definition as libvirt volume XML (vol-dumpxml). `pool_type` gives the volume type when
/// the definition has none.
pub fn format(def: &pb::VolumeDefinition, pool_type: pb::PoolType) -> Result<String, XmlError> {
    let mut x = XmlWriter::new();
    let volume_type = match def.r#type {
        0 => match kind_of(pool_type) {
            Ok(Kind::Files) => pb::VolumeType::File as i32,
            Ok(_) => pb::VolumeType::Block as i32,
            Err(_) if pool_type == pb::PoolType::Iscsi => pb::VolumeType::Block as i32,
            Err(_) => 0,
        },
        other => other,
    };
    let preallocation = def.target.as_ref().map_or(0, |target| target.preallocation);
    let root = Attrs::default()
        .word("type", VOLUME_TYPES, volume_type)
        .set(
            "xmlns:vireo",
            if preallocation == 0 {
                ""
            } else {
                VIREO_XML_NAMESPACE
            },
        );
    x.open("volume", &root.refs())?;
    x.text("name", &[], &def.name)?;
    if !def.key.is_empty() {
        x.text("key", &[], &def.key)?;
    }
    if !def.source_devices.is_empty() {
        x.open("source", &[])?;
        for device in &def.source_devices {
            if device.extents.is_empty() {
                x.empty("device", &[("path", &device.path)])?;
                continue;
            }
            x.open("device", &[("path", &device.path)])?;
            for extent in &device.extents {
                let start = extent.start_bytes.to_string();
                let end = extent.end_bytes.to_string();
                x.empty("extent", &[("start", &start), ("end", &end)])?;
            }
            x.close("device")?;
        }
        x.close("source")?;
    }
    x.text(
        "capacity",
        &[("unit", "bytes")],
        &def.capacity_bytes.to_string(),
    )?;
    if let Some(allocation) = def.allocation_bytes {
        x.text("allocation", &[("unit", "bytes")], &allocation.to_string())?;
    }
    if def.physical_bytes != 0 {
        x.text(
            "physical",
            &[("unit", "bytes")],
            &def.physical_bytes.to_string(),
        )?;
    }
    if let Some(target) = def.target.as_ref().filter(|t| !target_is_empty(t)) {
        format_target(&mut x, target)?;
    }
    if let Some(backing) = &def.backing_store {
        x.open("backingStore", &[])?;
        x.text("path", &[], &backing.path)?;
        let format = name_of(VOLUME_FORMATS, backing.format);
        if !format.is_empty() {
            x.empty("format", &[("type", format)])?;
        }
        format_permissions(&mut x, backing.permissions.as_ref())?;
        x.close("backingStore")?;
    }
    if preallocation != 0 {
        x.text(
            "vireo:preallocation",
            &[],
            name_of(PREALLOCATIONS, preallocation),
        )?;
    }
    x.close("volume")?;
    Ok(x.finish())
}

fn format_target(x: &mut XmlWriter, target: &pb::VolumeTarget) -> Fmt {
    use pb::volume_target::Format;
    x.open("target", &[])?;
    if !target.path.is_empty() {
        x.text("path", &[], &target.path)?;
    }
    let format = match target.format {
        Some(Format::ImageFormat(f)) => name_of(VOLUME_FORMATS, f),
        Some(Format::PartitionType(t)) => name_of(PARTITION_TYPES, t),
        None => "",
    };
    if !format.is_empty() {
        x.empty("format", &[("type", format)])?;
    }
    format_permissions(x, target.permissions.as_ref())?;
    if let Some(times) = &target.timestamps {
        let fields = [
            ("atime", times.atime_unix_ns),
            ("mtime", times.mtime_unix_ns),
            ("ctime", times.ctime_unix_ns),
            ("btime", times.btime_unix_ns),
        ];
        if fields.iter().any(|(_, ns)| *ns != 0) {
            x.open("timestamps", &[])?;
            for (name, ns) in fields {
                if ns != 0 {
                    x.text(name, &[], &timestamp(ns))?;
                }
            }
            x.close("timestamps")?;
        }
    }
    let compat = name_of(QCOW2_COMPATS, target.compat);
    if !compat.is_empty() {
        x.text("compat", &[], compat)?;
    }
    if target.cluster_size_bytes != 0 {
        x.text(
            "clusterSize",
            &[("unit", "B")],
            &target.cluster_size_bytes.to_string(),
        )?;
    }
    if target.nocow {
        x.empty("nocow", &[])?;
    }
    if target.lazy_refcounts || target.extended_l2 {
        x.open("features", &[])?;
        if target.lazy_refcounts {
            x.empty("lazy_refcounts", &[])?;
        }
        if target.extended_l2 {
            x.empty("extended_l2", &[])?;
        }
        x.close("features")?;
    }
    x.close("target")
}
