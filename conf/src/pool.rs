//! libvirt storage pool XML <-> `PoolDefinition` (pool-define, pool-dumpxml), the `<sources>`
//! document of find-storage-pool-sources and `<storagepoolCapabilities>`: parse (every element and
//! attribute is understood or refused by name), fill libvirt's defaults, validate, format in
//! libvirt's layout. Also the pieces volume XML shares with pools: sizes and `<permissions>`.

use vireo_proto::compute::v1::PciAddress;
use vireo_proto::storage::v1 as pb;
use vireo_proto::storage::v1::PoolSourceFormat as Sf;

use crate::VIREO_XML_NAMESPACE;
use crate::dom::{self, ConfError, Element};
use crate::domain::{
    Attrs, Fmt, Table, check_host_path, check_name, enum_attr, lookup, name_of, number,
    number_attr, pci_address, random_uuid, valid_uuid, yes_no,
};
use crate::units::{parse_scaled, scale_of};
use crate::volume;
use crate::xml::{XmlError, XmlWriter};

pub const POOL_TYPES: Table<pb::PoolType> = &[
    ("dir", pb::PoolType::Dir),
    ("fs", pb::PoolType::Fs),
    ("netfs", pb::PoolType::Netfs),
    ("logical", pb::PoolType::Logical),
    ("disk", pb::PoolType::Disk),
    ("iscsi", pb::PoolType::Iscsi),
    ("iscsi-direct", pb::PoolType::IscsiDirect),
    ("scsi", pb::PoolType::Scsi),
    ("mpath", pb::PoolType::Mpath),
    ("rbd", pb::PoolType::Rbd),
    ("sheepdog", pb::PoolType::Sheepdog),
    ("gluster", pb::PoolType::Gluster),
    ("zfs", pb::PoolType::Zfs),
    ("vstorage", pb::PoolType::Vstorage),
];

/// The pool types Vireo runs; the others parse (so that the error can name them) but do not
/// validate.
pub const SUPPORTED_POOL_TYPES: &[pb::PoolType] = &[
    pb::PoolType::Dir,
    pb::PoolType::Fs,
    pb::PoolType::Netfs,
    pb::PoolType::Logical,
    pb::PoolType::Disk,
    pb::PoolType::Iscsi,
];

pub const POOL_SOURCE_FORMATS: Table<pb::PoolSourceFormat> = &[
    ("auto", pb::PoolSourceFormat::Auto),
    ("ext2", pb::PoolSourceFormat::Ext2),
    ("ext3", pb::PoolSourceFormat::Ext3),
    ("ext4", pb::PoolSourceFormat::Ext4),
    ("xfs", pb::PoolSourceFormat::Xfs),
    ("btrfs", pb::PoolSourceFormat::Btrfs),
    ("vfat", pb::PoolSourceFormat::Vfat),
    ("iso9660", pb::PoolSourceFormat::Iso9660),
    ("udf", pb::PoolSourceFormat::Udf),
    ("gfs2", pb::PoolSourceFormat::Gfs2),
    ("ocfs2", pb::PoolSourceFormat::Ocfs2),
    ("nfs", pb::PoolSourceFormat::Nfs),
    ("cifs", pb::PoolSourceFormat::Cifs),
    ("glusterfs", pb::PoolSourceFormat::Glusterfs),
    ("lvm2", pb::PoolSourceFormat::Lvm2),
    ("dos", pb::PoolSourceFormat::Dos),
    ("gpt", pb::PoolSourceFormat::Gpt),
    ("dvh", pb::PoolSourceFormat::Dvh),
    ("mac", pb::PoolSourceFormat::Mac),
    ("bsd", pb::PoolSourceFormat::Bsd),
    ("pc98", pb::PoolSourceFormat::Pc98),
    ("sun", pb::PoolSourceFormat::Sun),
];

pub const ADAPTER_TYPES: Table<pb::AdapterType> = &[
    ("scsi_host", pb::AdapterType::ScsiHost),
    ("fc_host", pb::AdapterType::FcHost),
];

pub const AUTH_TYPES: Table<pb::AuthType> =
    &[("chap", pb::AuthType::Chap), ("ceph", pb::AuthType::Ceph)];

/// libvirt's word for a disk label that is not given: probed on start. It is UNSPECIFIED here.
const UNKNOWN_FORMAT: &str = "unknown";

/// The longest iSCSI name (RFC 3720 §3.2.6.1).
const MAX_IQN_BYTES: usize = 223;

const FS_FORMATS: &[Sf] = &[
    Sf::Auto,
    Sf::Ext2,
    Sf::Ext3,
    Sf::Ext4,
    Sf::Xfs,
    Sf::Btrfs,
    Sf::Vfat,
    Sf::Iso9660,
    Sf::Udf,
    Sf::Gfs2,
    Sf::Ocfs2,
];
const NETFS_FORMATS: &[Sf] = &[Sf::Auto, Sf::Nfs, Sf::Cifs, Sf::Glusterfs];
const LOGICAL_FORMATS: &[Sf] = &[Sf::Auto, Sf::Lvm2];
// libvirt also lets a disk pool's device be a bare LVM2 physical volume.
const DISK_FORMATS: &[Sf] = &[
    Sf::Dos,
    Sf::Gpt,
    Sf::Dvh,
    Sf::Mac,
    Sf::Bsd,
    Sf::Pc98,
    Sf::Sun,
    Sf::Lvm2,
];

/// The `<source><format type>` values a pool type accepts (empty: it takes none).
pub fn source_formats(pool_type: pb::PoolType) -> &'static [pb::PoolSourceFormat] {
    match pool_type {
        pb::PoolType::Fs => FS_FORMATS,
        pb::PoolType::Netfs => NETFS_FORMATS,
        pb::PoolType::Logical => LOGICAL_FORMATS,
        pb::PoolType::Disk => DISK_FORMATS,
        _ => &[],
    }
}

/// The source format `fill_defaults` gives a pool type. Disk pools stay UNSPECIFIED (libvirt's
/// `unknown`): the label is probed on start and pool-build writes a `dos` label.
pub fn default_source_format(pool_type: pb::PoolType) -> pb::PoolSourceFormat {
    match pool_type {
        pb::PoolType::Fs | pb::PoolType::Netfs => Sf::Auto,
        pb::PoolType::Logical => Sf::Lvm2,
        _ => Sf::Unspecified,
    }
}

/// What Vireo itself can do per pool type, for pool-capabilities; the service may turn a type
/// off (and say why) when a tool it needs is missing.
pub fn capabilities() -> Vec<pb::PoolTypeCapability> {
    POOL_TYPES
        .iter()
        .map(|(_, pool_type)| {
            let supported = SUPPORTED_POOL_TYPES.contains(pool_type);
            let mut cap = pb::PoolTypeCapability {
                r#type: *pool_type as i32,
                supported,
                unsupported_reason: if supported {
                    String::new()
                } else {
                    "not supported by Vireo".to_string()
                },
                source_formats: source_formats(*pool_type)
                    .iter()
                    .map(|f| *f as i32)
                    .collect(),
                default_source_format: default_source_format(*pool_type) as i32,
                ..Default::default()
            };
            match *pool_type {
                pb::PoolType::Dir | pb::PoolType::Fs | pb::PoolType::Netfs => {
                    cap.volume_formats = volume::VOLUME_FORMATS
                        .iter()
                        .map(|(_, f)| *f as i32)
                        .collect();
                    cap.default_volume_format = pb::VolumeFormat::Raw as i32;
                }
                pb::PoolType::Disk => {
                    cap.partition_types = volume::PARTITION_TYPES
                        .iter()
                        .map(|(_, t)| *t as i32)
                        .collect();
                    cap.default_partition_type = pb::PartitionType::None as i32;
                }
                _ => {}
            }
            cap
        })
        .collect()
}

// ============================================================================================
// Shared with volumes
// ============================================================================================

/// A size element (`<capacity unit='G'>8</capacity>`) in bytes. libvirt's unit words, case
/// insensitive; no unit means bytes.
pub(crate) fn size_bytes(el: &mut Element) -> Result<u64, ConfError> {
    let unit = el.attr("unit").unwrap_or_default();
    let text = el.text();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(el.error(format!("'{text}' is not a whole number of bytes")));
    }
    if scale_of(&unit, 1).is_none() {
        return Err(el.attr_error("unit", format!("unknown unit '{unit}'")));
    }
    parse_scaled(&format!("{text}{unit}"), 1, &el.path)
}

/// An owner or group id; libvirt writes -1 for "leave as is".
fn id_text(el: &mut Element) -> Result<Option<u32>, ConfError> {
    let text = el.text();
    if text == "-1" {
        return Ok(None);
    }
    number(&text, &el.path).map(Some)
}

/// `<permissions>` under `parent`, when present.
pub(crate) fn parse_permissions(
    parent: &mut Element,
) -> Result<Option<pb::StoragePermissions>, ConfError> {
    let Some(mut el) = parent.child("permissions") else {
        return Ok(None);
    };
    let mut perms = pb::StoragePermissions::default();
    if let Some(mut mode) = el.child("mode") {
        let text = mode.text();
        let bits = Some(&text)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| (b'0'..=b'7').contains(&b)))
            .and_then(|t| u32::from_str_radix(t, 8).ok())
            .filter(|bits| *bits <= 0o7777)
            .ok_or_else(|| mode.error(format!("'{text}' is not an octal mode such as 0755")))?;
        perms.mode = Some(bits);
        mode.finish()?;
    }
    if let Some(mut owner) = el.child("owner") {
        perms.owner_uid = id_text(&mut owner)?;
        owner.finish()?;
    }
    if let Some(mut group) = el.child("group") {
        perms.group_gid = id_text(&mut group)?;
        group.finish()?;
    }
    perms.label = el.child_text("label")?.unwrap_or_default();
    el.finish()?;
    Ok(Some(perms))
}

pub(crate) fn check_permissions(
    perms: Option<&pb::StoragePermissions>,
    field: &str,
) -> Result<(), ConfError> {
    let Some(perms) = perms else {
        return Ok(());
    };
    if perms.mode.is_some_and(|mode| mode > 0o7777) {
        return Err(ConfError::new(
            format!("{field}/mode"),
            "must be at most 07777",
        ));
    }
    if perms.label.chars().any(char::is_control) {
        return Err(ConfError::new(
            format!("{field}/label"),
            "must not contain control characters",
        ));
    }
    Ok(())
}

pub(crate) fn format_permissions(x: &mut XmlWriter, perms: Option<&pb::StoragePermissions>) -> Fmt {
    let Some(perms) = perms else {
        return Ok(());
    };
    if perms.mode.is_none()
        && perms.owner_uid.is_none()
        && perms.group_gid.is_none()
        && perms.label.is_empty()
    {
        return Ok(());
    }
    x.open("permissions", &[])?;
    if let Some(mode) = perms.mode {
        x.text("mode", &[], &format!("{mode:04o}"))?;
    }
    if let Some(owner) = perms.owner_uid {
        x.text("owner", &[], &owner.to_string())?;
    }
    if let Some(group) = perms.group_gid {
        x.text("group", &[], &group.to_string())?;
    }
    if !perms.label.is_empty() {
        x.text("label", &[], &perms.label)?;
    }
    x.close("permissions")
}

// ============================================================================================
// Parsing
// ============================================================================================

/// Parses libvirt pool XML. `<capacity>`, `<allocation>` and `<available>` are checked and
/// dropped: they describe a running pool, and a definition must not carry stale numbers.
pub fn parse(xml: &str) -> Result<pb::PoolDefinition, ConfError> {
    let mut root = dom::parse(xml)?;
    if root.name != "pool" {
        return Err(root.error(format!(
            "the root element must be <pool>, not <{}>",
            root.name
        )));
    }
    let word = root
        .attr("type")
        .ok_or_else(|| root.attr_error("type", "is required (dir, fs, netfs, ...)"))?;
    let pool_type = lookup(POOL_TYPES, &word, root.field("type"))?;
    let mut def = pb::PoolDefinition {
        r#type: pool_type as i32,
        ..Default::default()
    };
    def.name = root.child_text("name")?.unwrap_or_default();
    def.uuid = root.child_text("uuid")?.unwrap_or_default();
    for name in ["capacity", "allocation", "available"] {
        if let Some(mut el) = root.child(name) {
            size_bytes(&mut el)?;
            el.finish()?;
        }
    }
    if let Some(mut features) = root.child("features") {
        if let Some(mut cow) = features.child("cow") {
            def.cow = Some(
                yes_no(&mut cow, "state")?
                    .ok_or_else(|| cow.attr_error("state", "is required (yes or no)"))?,
            );
            cow.finish()?;
        }
        features.finish()?;
    }
    if let Some(source) = root.child("source") {
        def.source = Some(parse_source_element(source)?);
    }
    if let Some(mut target) = root.child("target") {
        def.target = Some(pb::PoolTarget {
            path: target.child_text("path")?.unwrap_or_default(),
            permissions: parse_permissions(&mut target)?,
        });
        target.finish()?;
    }
    root.finish()?;
    Ok(def)
}

/// A standalone `<source>` (find-storage-pool-sources SRCSPEC). A format, when given, must be
/// one `pool_type` takes.
pub fn parse_source(xml: &str, pool_type: pb::PoolType) -> Result<pb::PoolSource, ConfError> {
    let root = dom::parse(xml)?;
    if root.name != "source" {
        return Err(root.error(format!(
            "the root element must be <source>, not <{}>",
            root.name
        )));
    }
    let source = parse_source_element(root)?;
    if pool_type != pb::PoolType::Unspecified {
        check_source_format(pool_type, source.format, "source/format@type")?;
    }
    Ok(source)
}

fn parse_source_element(mut el: Element) -> Result<pb::PoolSource, ConfError> {
    let mut source = pb::PoolSource::default();
    for mut host in el.children("host") {
        source.hosts.push(pb::PoolSourceHost {
            name: host.required_attr("name")?,
            port: number_attr(&mut host, "port")?.unwrap_or(0),
        });
        host.finish()?;
    }
    for mut device in el.children("device") {
        let path = device.required_attr("path")?;
        let part_separator = yes_no(&mut device, "part_separator")?;
        // Free extents describe a running disk pool: checked, then dropped.
        for mut extent in device.children("freeExtent") {
            number_attr::<u64>(&mut extent, "start")?;
            number_attr::<u64>(&mut extent, "end")?;
            extent.finish()?;
        }
        device.finish()?;
        source.devices.push(pb::PoolSourceDevice {
            path,
            part_separator,
            free_extents: Vec::new(),
        });
    }
    if let Some(mut dir) = el.child("dir") {
        source.dir_path = dir.required_attr("path")?;
        dir.finish()?;
    }
    if let Some(adapter) = el.child("adapter") {
        source.adapter = Some(parse_adapter(adapter)?);
    }
    source.name = el.child_text("name")?.unwrap_or_default();
    if let Some(mut format) = el.child("format") {
        let word = format.required_attr("type")?;
        if word != UNKNOWN_FORMAT {
            source.format = lookup(POOL_SOURCE_FORMATS, &word, format.field("type"))? as i32;
        }
        format.finish()?;
    }
    if let Some(mut initiator) = el.child("initiator") {
        let mut iqn = initiator
            .child("iqn")
            .ok_or_else(|| initiator.error("needs <iqn name='...'/>"))?;
        source.initiator_iqn = iqn.required_attr("name")?;
        iqn.finish()?;
        initiator.finish()?;
    }
    if let Some(auth) = el.child("auth") {
        source.auth = Some(parse_auth(auth)?);
    }
    for (name, value) in [
        ("vendor", &mut source.vendor),
        ("product", &mut source.product),
    ] {
        if let Some(mut child) = el.child(name) {
            *value = child.required_attr("name")?;
            child.finish()?;
        }
    }
    if let Some(mut protocol) = el.child("protocol") {
        source.protocol_version = number(&protocol.required_attr("ver")?, &protocol.field("ver"))?;
        protocol.finish()?;
    }
    el.finish()?;
    Ok(source)
}

fn parse_adapter(mut el: Element) -> Result<pb::PoolSourceAdapter, ConfError> {
    let mut adapter = pb::PoolSourceAdapter {
        r#type: enum_attr(&mut el, "type", ADAPTER_TYPES)?,
        name: el.attr("name").unwrap_or_default(),
        wwnn: el.attr("wwnn").unwrap_or_default(),
        wwpn: el.attr("wwpn").unwrap_or_default(),
        parent: el.attr("parent").unwrap_or_default(),
        parent_wwnn: el.attr("parent_wwnn").unwrap_or_default(),
        parent_wwpn: el.attr("parent_wwpn").unwrap_or_default(),
        parent_fabric_wwn: el.attr("parent_fabric_wwn").unwrap_or_default(),
        managed: yes_no(&mut el, "managed")?,
        ..Default::default()
    };
    if let Some(mut parentaddr) = el.child("parentaddr") {
        adapter.unique_id = number_attr(&mut parentaddr, "unique_id")?.unwrap_or(0);
        let mut address = parentaddr
            .child("address")
            .ok_or_else(|| parentaddr.error("needs <address domain bus slot function/>"))?;
        let pci = pci_address(&mut address)?;
        address.finish()?;
        adapter.parent_pci_address = format!(
            "{:04x}:{:02x}:{:02x}.{:x}",
            pci.domain, pci.bus, pci.slot, pci.function
        );
        parentaddr.finish()?;
    }
    el.finish()?;
    Ok(adapter)
}

fn parse_auth(mut el: Element) -> Result<pb::PoolSourceAuth, ConfError> {
    let mut auth = pb::PoolSourceAuth {
        r#type: enum_attr(&mut el, "type", AUTH_TYPES)?,
        username: el.attr("username").unwrap_or_default(),
        secret: None,
    };
    if let Some(mut secret) = el.child("secret") {
        // Older XML repeats the secret's own type ('iscsi', 'ceph'); the auth type says it.
        let _ = secret.attr("type");
        use pb::pool_source_auth::Secret;
        auth.secret = match (secret.attr("usage"), secret.attr("uuid")) {
            (Some(usage), None) => Some(Secret::SecretUsage(usage)),
            (None, Some(uuid)) => Some(Secret::SecretUuid(uuid)),
            (Some(_), Some(_)) => return Err(secret.error("give usage or uuid, not both")),
            (None, None) => return Err(secret.error("needs usage or uuid")),
        };
        secret.finish()?;
    }
    el.finish()?;
    Ok(auth)
}

// ============================================================================================
// Defaults and validation
// ============================================================================================

/// Joins repeated slashes and drops a trailing one, as libvirt does with target paths, so that
/// `/guest_images/` and `/guest_images` are the same pool.
fn tidy_path(path: &str) -> String {
    let mut tidy = String::with_capacity(path.len());
    for ch in path.chars() {
        if ch == '/' && tidy.ends_with('/') {
            continue;
        }
        tidy.push(ch);
    }
    if tidy.len() > 1 && tidy.ends_with('/') {
        tidy.pop();
    }
    tidy
}

/// Fills what libvirt fills when a pool definition leaves it out.
pub fn fill_defaults(def: &mut pb::PoolDefinition) {
    if def.uuid.is_empty() {
        def.uuid = random_uuid();
    }
    def.uuid = def.uuid.to_ascii_lowercase();
    let pool_type = def.r#type();
    let source = def.source.get_or_insert_default();
    if source.format == 0 {
        source.format = default_source_format(pool_type) as i32;
    }
    // libvirt names the volume group after the pool when the source does not.
    if pool_type == pb::PoolType::Logical && source.name.is_empty() {
        source.name = def.name.clone();
    }
    if let Some(adapter) = source.adapter.as_mut()
        && adapter.r#type == 0
        && (!adapter.name.is_empty() || !adapter.parent_pci_address.is_empty())
    {
        adapter.r#type = pb::AdapterType::ScsiHost as i32;
    }
    let target = def.target.get_or_insert_default();
    if target.path.is_empty() {
        target.path = match pool_type {
            pb::PoolType::Logical if !source.name.is_empty() => format!("/dev/{}", source.name),
            pb::PoolType::Iscsi | pb::PoolType::Scsi => "/dev/disk/by-path".to_string(),
            pb::PoolType::Mpath => "/dev/mapper".to_string(),
            pb::PoolType::Disk => "/dev".to_string(),
            _ => String::new(),
        };
    }
    target.path = tidy_path(&target.path);
}

/// The parts of `<source>` each supported pool type uses; anything else is refused rather than
/// silently ignored. (The format is checked on its own.)
fn used_source_parts(pool_type: pb::PoolType) -> &'static [&'static str] {
    match pool_type {
        pb::PoolType::Fs | pb::PoolType::Disk => &["device"],
        pb::PoolType::Netfs => &["host", "dir", "protocol"],
        pb::PoolType::Logical => &["device", "name"],
        pb::PoolType::Iscsi => &["host", "device", "initiator", "auth", "vendor", "product"],
        _ => &[],
    }
}

fn check_source_format(pool_type: pb::PoolType, format: i32, field: &str) -> Result<(), ConfError> {
    if format == 0 {
        return Ok(());
    }
    let allowed = source_formats(pool_type);
    if allowed.iter().any(|f| *f as i32 == format) {
        return Ok(());
    }
    let type_word = name_of(POOL_TYPES, pool_type as i32);
    let word = name_of(POOL_SOURCE_FORMATS, format);
    if allowed.is_empty() {
        return Err(ConfError::new(
            field,
            format!("{type_word} pools take no source format"),
        ));
    }
    let words: Vec<&str> = allowed
        .iter()
        .map(|f| name_of(POOL_SOURCE_FORMATS, *f as i32))
        .collect();
    Err(ConfError::new(
        field,
        format!(
            "'{word}' is not a format for {type_word} pools (supported: {})",
            words.join(", ")
        ),
    ))
}

/// A host name or address: letters, digits and the punctuation of names and IPv6 literals.
fn check_host_name(name: &str, field: &str) -> Result<(), ConfError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
    if ok {
        Ok(())
    } else {
        Err(ConfError::new(
            field,
            format!("'{}' is not a host name or address", name.escape_debug()),
        ))
    }
}

/// An iSCSI qualified name: printable, no spaces (they end up on iscsiadm's command line).
fn check_iqn(iqn: &str, field: &str) -> Result<(), ConfError> {
    let ok = !iqn.is_empty()
        && iqn.len() <= MAX_IQN_BYTES
        && !iqn.starts_with('-')
        && iqn.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ConfError::new(
            field,
            format!(
                "'{}' is not an iSCSI name such as iqn.2010-05.com.example:target",
                iqn.escape_debug()
            ),
        ))
    }
}

/// An LVM volume group name, as vgcreate accepts it.
fn check_vg_name(name: &str, field: &str) -> Result<(), ConfError> {
    let ok = !name.is_empty()
        && name.len() <= 127
        && !name.starts_with('-')
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ConfError::new(
            field,
            format!(
                "'{}' is not a volume group name: use letters, digits, '+', '_', '.', '-'",
                name.escape_debug()
            ),
        ))
    }
}

fn check_printable(value: &str, field: &str) -> Result<(), ConfError> {
    if value.chars().any(char::is_control) {
        Err(ConfError::new(field, "must not contain control characters"))
    } else {
        Ok(())
    }
}

fn check_source(pool_type: pb::PoolType, source: &pb::PoolSource) -> Result<(), ConfError> {
    let type_word = name_of(POOL_TYPES, pool_type as i32);
    let parts = [
        ("host", !source.hosts.is_empty()),
        ("device", !source.devices.is_empty()),
        ("dir", !source.dir_path.is_empty()),
        ("adapter", source.adapter.is_some()),
        ("name", !source.name.is_empty()),
        ("initiator", !source.initiator_iqn.is_empty()),
        ("auth", source.auth.is_some()),
        ("vendor", !source.vendor.is_empty()),
        ("product", !source.product.is_empty()),
        ("protocol", source.protocol_version != 0),
    ];
    let used = used_source_parts(pool_type);
    if let Some((part, _)) = parts
        .iter()
        .find(|(part, set)| *set && !used.contains(part))
    {
        return Err(ConfError::new(
            format!("pool/source/{part}"),
            format!("is not used by {type_word} pools"),
        ));
    }
    check_source_format(pool_type, source.format, "pool/source/format@type")?;
    let exactly_one = |count: usize, part: &str, what: &str| {
        if count == 1 {
            Ok(())
        } else {
            Err(ConfError::new(
                format!("pool/source/{part}"),
                format!("{type_word} pools need exactly one source {what} (found {count})"),
            ))
        }
    };
    match pool_type {
        pb::PoolType::Fs | pb::PoolType::Disk => {
            exactly_one(source.devices.len(), "device", "device")?;
        }
        pb::PoolType::Netfs => {
            exactly_one(source.hosts.len(), "host", "host")?;
            if source.dir_path.is_empty() {
                return Err(ConfError::new(
                    "pool/source/dir",
                    "is required: the exported directory",
                ));
            }
            let format = source.format();
            if format == Sf::Cifs {
                // A CIFS share name, not a path on this host.
                check_printable(&source.dir_path, "pool/source/dir@path")?;
                if source.dir_path.split('/').any(|part| part == "..") {
                    return Err(ConfError::new(
                        "pool/source/dir@path",
                        "must not contain '..'",
                    ));
                }
            } else {
                check_host_path(&source.dir_path, "pool/source/dir@path")?;
            }
            if source.protocol_version != 0 && !matches!(format, Sf::Auto | Sf::Nfs) {
                return Err(ConfError::new(
                    "pool/source/protocol@ver",
                    "is an NFS version: only for nfs (or auto) netfs pools",
                ));
            }
        }
        pb::PoolType::Logical => {
            if source.name.is_empty() && source.devices.is_empty() {
                return Err(ConfError::new(
                    "pool/source/name",
                    "is required: the volume group (or give its devices)",
                ));
            }
            if !source.name.is_empty() {
                check_vg_name(&source.name, "pool/source/name")?;
            }
        }
        pb::PoolType::Iscsi => {
            exactly_one(source.hosts.len(), "host", "host")?;
            exactly_one(source.devices.len(), "device", "device: the target's IQN")?;
        }
        _ => {}
    }
    for host in &source.hosts {
        check_host_name(&host.name, "pool/source/host@name")?;
        if host.port > u32::from(u16::MAX) {
            return Err(ConfError::new(
                "pool/source/host@port",
                format!("{} is not a port", host.port),
            ));
        }
    }
    for device in &source.devices {
        if pool_type == pb::PoolType::Iscsi {
            check_iqn(&device.path, "pool/source/device@path")?;
        } else {
            check_host_path(&device.path, "pool/source/device@path")?;
        }
    }
    if !source.initiator_iqn.is_empty() {
        check_iqn(&source.initiator_iqn, "pool/source/initiator/iqn@name")?;
    }
    if let Some(auth) = &source.auth {
        if auth.r#type != pb::AuthType::Chap as i32 {
            return Err(ConfError::new(
                "pool/source/auth@type",
                "iscsi pools authenticate with chap",
            ));
        }
        if auth.username.is_empty() {
            return Err(ConfError::new("pool/source/auth@username", "is required"));
        }
        check_printable(&auth.username, "pool/source/auth@username")?;
        if auth.secret.is_none() {
            return Err(ConfError::new(
                "pool/source/auth/secret",
                "is required (usage or uuid)",
            ));
        }
    }
    check_printable(&source.vendor, "pool/source/vendor@name")?;
    check_printable(&source.product, "pool/source/product@name")?;
    Ok(())
}

/// Checks a pool definition after defaults are filled: every problem names its field.
pub fn validate(def: &pb::PoolDefinition) -> Result<(), ConfError> {
    check_name(&def.name, "pool/name")?;
    if !valid_uuid(&def.uuid) {
        return Err(ConfError::new(
            "pool/uuid",
            format!("'{}' is not a UUID", def.uuid.escape_debug()),
        ));
    }
    let pool_type = pb::PoolType::try_from(def.r#type).unwrap_or(pb::PoolType::Unspecified);
    if !SUPPORTED_POOL_TYPES.contains(&pool_type) {
        return Err(unsupported_pool_type(def.r#type));
    }
    let type_word = name_of(POOL_TYPES, def.r#type);
    let default_source = pb::PoolSource::default();
    let source = def.source.as_ref().unwrap_or(&default_source);
    check_source(pool_type, source)?;
    let default_target = pb::PoolTarget::default();
    let target = def.target.as_ref().unwrap_or(&default_target);
    if target.path.is_empty() {
        return Err(ConfError::new(
            "pool/target/path",
            format!("is required for {type_word} pools"),
        ));
    }
    check_host_path(&target.path, "pool/target/path")?;
    if target.path.trim_end_matches('/').is_empty() {
        return Err(ConfError::new(
            "pool/target/path",
            "must not be / (the pool would own the whole host)",
        ));
    }
    // LVs appear under /dev/<vg>; any other target path would point at nothing.
    if pool_type == pb::PoolType::Logical && !source.name.is_empty() {
        let expected = format!("/dev/{}", source.name);
        if tidy_path(&target.path) != expected {
            return Err(ConfError::new(
                "pool/target/path",
                format!(
                    "must be {expected} for a logical pool on volume group '{}'",
                    source.name
                ),
            ));
        }
    }
    check_permissions(target.permissions.as_ref(), "pool/target/permissions")?;
    if def.cow.is_some() && !matches!(pool_type, pb::PoolType::Dir | pb::PoolType::Fs) {
        return Err(ConfError::new(
            "pool/features/cow",
            "only dir and fs pools (on btrfs) have copy-on-write",
        ));
    }
    Ok(())
}

/// The error for a pool type Vireo does not run (also used for volumes in such pools).
pub fn unsupported_pool_type(pool_type: i32) -> ConfError {
    let supported: Vec<&str> = SUPPORTED_POOL_TYPES
        .iter()
        .map(|t| name_of(POOL_TYPES, *t as i32))
        .collect();
    let supported = supported.join(", ");
    match name_of(POOL_TYPES, pool_type) {
        "" => ConfError::new("pool@type", format!("is required ({supported})")),
        word => ConfError::new(
            "pool@type",
            format!("pool type '{word}' is not supported by Vireo (supported: {supported})"),
        ),
    }
}

/// Parses, fills defaults and validates: what pool-define and pool-create accept.
pub fn parse_definition(xml: &str) -> Result<pb::PoolDefinition, ConfError> {
    let mut def = parse(xml)?;
    fill_defaults(&mut def);
    validate(&def)?;
    Ok(def)
}

// ============================================================================================
// Formatting
// ============================================================================================

/// The definition as libvirt pool XML (pool-dumpxml).
pub fn format(def: &pb::PoolDefinition) -> Result<String, XmlError> {
    let mut x = XmlWriter::new();
    let attrs = Attrs::default().word("type", POOL_TYPES, def.r#type);
    x.open("pool", &attrs.refs())?;
    x.text("name", &[], &def.name)?;
    if !def.uuid.is_empty() {
        x.text("uuid", &[], &def.uuid)?;
    }
    for (name, bytes) in [
        ("capacity", def.capacity_bytes),
        ("allocation", def.allocation_bytes),
        ("available", def.available_bytes),
    ] {
        x.text(name, &[("unit", "bytes")], &bytes.to_string())?;
    }
    if let Some(cow) = def.cow {
        x.open("features", &[])?;
        x.empty("cow", &[("state", if cow { "yes" } else { "no" })])?;
        x.close("features")?;
    }
    let default_source = pb::PoolSource::default();
    format_source(
        &mut x,
        def.r#type(),
        def.source.as_ref().unwrap_or(&default_source),
    )?;
    if let Some(target) = &def.target {
        x.open("target", &[])?;
        if !target.path.is_empty() {
            x.text("path", &[], &target.path)?;
        }
        format_permissions(&mut x, target.permissions.as_ref())?;
        x.close("target")?;
    }
    x.close("pool")?;
    Ok(x.finish())
}

/// find-storage-pool-sources' answer: a `<sources>` document.
pub fn format_sources(
    pool_type: pb::PoolType,
    sources: &[pb::PoolSource],
) -> Result<String, XmlError> {
    let mut x = XmlWriter::new();
    if sources.is_empty() {
        x.empty("sources", &[])?;
    } else {
        x.open("sources", &[])?;
        for source in sources {
            format_source(&mut x, pool_type, source)?;
        }
        x.close("sources")?;
    }
    Ok(x.finish())
}

/// "0000:00:1f.2" as PCI address parts.
fn split_pci_address(text: &str) -> Option<PciAddress> {
    let (domain, rest) = text.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (slot, function) = rest.split_once('.')?;
    Some(PciAddress {
        domain: u32::from_str_radix(domain, 16).ok()?,
        bus: u32::from_str_radix(bus, 16).ok()?,
        slot: u32::from_str_radix(slot, 16).ok()?,
        function: u32::from_str_radix(function, 16).ok()?,
        multifunction: false,
    })
}

fn format_adapter(x: &mut XmlWriter, adapter: &pb::PoolSourceAdapter) -> Fmt {
    let attrs = Attrs::default()
        .word("type", ADAPTER_TYPES, adapter.r#type)
        .set("name", &adapter.name)
        .set("parent", &adapter.parent)
        .set("parent_wwnn", &adapter.parent_wwnn)
        .set("parent_wwpn", &adapter.parent_wwpn)
        .set("parent_fabric_wwn", &adapter.parent_fabric_wwn)
        .set(
            "managed",
            match adapter.managed {
                Some(true) => "yes",
                Some(false) => "no",
                None => "",
            },
        )
        .set("wwnn", &adapter.wwnn)
        .set("wwpn", &adapter.wwpn);
    let Some(pci) = split_pci_address(&adapter.parent_pci_address) else {
        return x.empty("adapter", &attrs.refs());
    };
    x.open("adapter", &attrs.refs())?;
    x.open(
        "parentaddr",
        &[("unique_id", &adapter.unique_id.to_string())],
    )?;
    let attrs = Attrs::default()
        .set("domain", format!("0x{:04x}", pci.domain))
        .set("bus", format!("0x{:02x}", pci.bus))
        .set("slot", format!("0x{:02x}", pci.slot))
        .set("function", format!("0x{:x}", pci.function));
    x.empty("address", &attrs.refs())?;
    x.close("parentaddr")?;
    x.close("adapter")
}

fn format_source(x: &mut XmlWriter, pool_type: pb::PoolType, source: &pb::PoolSource) -> Fmt {
    // Disk pools show an unset label as libvirt's 'unknown'; types without formats show none.
    let format_word = match name_of(POOL_SOURCE_FORMATS, source.format) {
        "" if pool_type == pb::PoolType::Disk => UNKNOWN_FORMAT,
        word => word,
    };
    let is_empty = source.hosts.is_empty()
        && source.devices.is_empty()
        && source.dir_path.is_empty()
        && source.adapter.is_none()
        && source.name.is_empty()
        && source.initiator_iqn.is_empty()
        && format_word.is_empty()
        && source.auth.is_none()
        && source.protocol_version == 0
        && source.vendor.is_empty()
        && source.product.is_empty();
    if is_empty {
        return x.empty("source", &[]);
    }
    x.open("source", &[])?;
    for host in &source.hosts {
        let attrs = Attrs::default().set("name", &host.name).set(
            "port",
            if host.port == 0 {
                String::new()
            } else {
                host.port.to_string()
            },
        );
        x.empty("host", &attrs.refs())?;
    }
    for device in &source.devices {
        let attrs = Attrs::default().set("path", &device.path).set(
            "part_separator",
            match device.part_separator {
                Some(true) => "yes",
                Some(false) => "no",
                None => "",
            },
        );
        if device.free_extents.is_empty() {
            x.empty("device", &attrs.refs())?;
        } else {
            x.open("device", &attrs.refs())?;
            for extent in &device.free_extents {
                let start = extent.start_bytes.to_string();
                let end = extent.end_bytes.to_string();
                x.empty("freeExtent", &[("start", &start), ("end", &end)])?;
            }
            x.close("device")?;
        }
    }
    if !source.dir_path.is_empty() {
        x.empty("dir", &[("path", &source.dir_path)])?;
    }
    if let Some(adapter) = &source.adapter {
        format_adapter(x, adapter)?;
    }
    if !source.name.is_empty() {
        x.text("name", &[], &source.name)?;
    }
    if !source.initiator_iqn.is_empty() {
        x.open("initiator", &[])?;
        x.empty("iqn", &[("name", &source.initiator_iqn)])?;
        x.close("initiator")?;
    }
    if !format_word.is_empty() {
        x.empty("format", &[("type", format_word)])?;
    }
    if let Some(auth) = &source.auth {
        let attrs = Attrs::default()
            .word("type", AUTH_TYPES, auth.r#type)
            .set("username", &auth.username);
        use pb::pool_source_auth::Secret;
        match &auth.secret {
            Some(secret) => {
                x.open("auth", &attrs.refs())?;
                match secret {
                    Secret::SecretUsage(usage) => x.empty("secret", &[("usage", usage)])?,
                    Secret::SecretUuid(uuid) => x.empty("secret", &[("uuid", uuid)])?,
                }
                x.close("auth")?;
            }
            None => x.empty("auth", &attrs.refs())?,
        }
    }
    if source.protocol_version != 0 {
        x.empty("protocol", &[("ver", &source.protocol_version.to_string())])?;
    }
    if !source.vendor.is_empty() {
        x.empty("vendor", &[("name", &source.vendor)])?;
    }
    if !source.product.is_empty() {
        x.empty("product", &[("name", &source.product)])?;
    }
    x.close("source")
}

/// pool-capabilities: libvirt's `<storagepoolCapabilities>`. Why a type is unsupported goes in
/// a `vireo:reason` attribute, libvirt having no place for it.
pub fn format_capabilities(caps: &[pb::PoolTypeCapability]) -> Result<String, XmlError> {
    let mut x = XmlWriter::new();
    let with_reasons = caps
        .iter()
        .any(|cap| !cap.supported && !cap.unsupported_reason.is_empty());
    let root = Attrs::default().set(
        "xmlns:vireo",
        if with_reasons {
            VIREO_XML_NAMESPACE
        } else {
            ""
        },
    );
    x.open("storagepoolCapabilities", &root.refs())?;
    for cap in caps {
        format_pool_capability(&mut x, cap)?;
    }
    x.close("storagepoolCapabilities")?;
    Ok(x.finish())
}

fn format_enum(x: &mut XmlWriter, name: &str, words: &[&str]) -> Fmt {
    x.open("enum", &[("name", name)])?;
    for word in words {
        x.text("value", &[], word)?;
    }
    x.close("enum")
}

fn format_pool_capability(x: &mut XmlWriter, cap: &pb::PoolTypeCapability) -> Fmt {
    let pool_type = cap.r#type();
    let mut attrs = Attrs::default()
        .word("type", POOL_TYPES, cap.r#type)
        .set("supported", if cap.supported { "yes" } else { "no" });
    if !cap.supported {
        attrs = attrs.set("vireo:reason", &cap.unsupported_reason);
    }
    let source_words: Vec<&str> = cap
        .source_formats
        .iter()
        .map(|v| name_of(POOL_SOURCE_FORMATS, *v))
        .filter(|w| !w.is_empty())
        .collect();
    let volume_words: Vec<&str> = if cap.partition_types.is_empty() {
        cap.volume_formats
            .iter()
            .map(|v| name_of(volume::VOLUME_FORMATS, *v))
            .filter(|w| !w.is_empty())
            .collect()
    } else {
        cap.partition_types
            .iter()
            .map(|v| name_of(volume::PARTITION_TYPES, *v))
            .filter(|w| !w.is_empty())
            .collect()
    };
    if source_words.is_empty() && volume_words.is_empty() {
        return x.empty("pool", &attrs.refs());
    }
    x.open("pool", &attrs.refs())?;
    if !source_words.is_empty() {
        let default = match name_of(POOL_SOURCE_FORMATS, cap.default_source_format) {
            "" if pool_type == pb::PoolType::Disk => UNKNOWN_FORMAT,
            word => word,
        };
        x.open("poolOptions", &[])?;
        if !default.is_empty() {
            x.empty("defaultFormat", &[("type", default)])?;
        }
        format_enum(x, "sourceFormatType", &source_words)?;
        x.close("poolOptions")?;
    }
    if !volume_words.is_empty() {
        let default = if cap.partition_types.is_empty() {
            name_of(volume::VOLUME_FORMATS, cap.default_volume_format)
        } else {
            name_of(volume::PARTITION_TYPES, cap.default_partition_type)
        };
        x.open("volOptions", &[])?;
        if !default.is_empty() {
            x.empty("defaultFormat", &[("type", default)])?;
        }
        format_enum(x, "targetFormatType", &volume_words)?;
        x.close("volOptions")?;
    }
    x.close("pool")
}
