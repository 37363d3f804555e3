//! virsh's storage pool and volume commands: options, the StoragePoolService or
//! StorageVolumeService call each makes, and virsh's wording and layouts.

use std::io::{Read, Seek, SeekFrom};

use crate::connection::GatewayChannel as Channel;
use clap::{Args, Subcommand};
use prost::Message;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};
use vireo_conf::domain::{Table, lookup, name_of};
use vireo_conf::pool::{AUTH_TYPES, POOL_SOURCE_FORMATS, POOL_TYPES};
use vireo_conf::volume::{PARTITION_TYPES, VOLUME_FORMATS, VOLUME_TYPES, WIPE_ALGORITHMS};
use vireo_proto::common::v1::{self as common, DataChunk, ObjectRef};
use vireo_proto::storage::v1 as pb;
use vireo_proto::storage::v1::local_transfer_reply::Reply;
use vireo_proto::storage::v1::local_transfer_request::Transfer;
use vireo_proto::storage::v1::storage_pool_service_client::StoragePoolServiceClient;
use vireo_proto::storage::v1::storage_volume_service_client::StorageVolumeServiceClient;

use crate::commands::{Call, fail, failed, object_step, read_file};
use crate::connection::Connection;
use crate::domain::{object, object_named, object_with_uuid};
use crate::edit::edit_xml;
use crate::output::{
    Format, ProgressLine, human_size, print_fields_at, print_json, print_table, print_xml,
};

mod local_transfer;

/// Bytes per upload message: well under the 4 MiB that tonic (client, gateway and service)
/// accepts by default, and large enough that per-message cost does not show.
const CHUNK_BYTES: usize = 1 << 20;

/// Chunks read ahead of the network: memory stays at a few MiB whatever the file's size.
const UPLOAD_QUEUE: usize = 4;

/// UploadVolume is called through its own codec (see UploadCodec), so by path.
const UPLOAD_PATH: &str = "/vireo.storage.v1.StorageVolumeService/UploadVolume";

/// virsh pads `pool-info` and `vol-info` labels to 15 columns plus a space.
const INFO_WIDTH: usize = 16;

/// --overwrite / --no-overwrite of the commands that may build a pool.
#[derive(Debug, Clone, Copy, Args)]
pub struct BuildModeArgs {
    /// Format the source even if it already holds a filesystem, label or volume group
    #[arg(long)]
    overwrite: bool,
    /// Fail if the source already holds data
    #[arg(long, conflicts_with = "overwrite")]
    no_overwrite: bool,
}

impl BuildModeArgs {
    fn mode(self) -> i32 {
        let mode = if self.overwrite {
            pb::PoolBuildMode::Overwrite
        } else if self.no_overwrite {
            pb::PoolBuildMode::NoOverwrite
        } else {
            pb::PoolBuildMode::Unspecified
        };
        i32::from(mode)
    }
}

/// pool-list's filters and layout.
#[derive(Debug, Clone, Args)]
pub struct PoolListArgs {
    /// Active and inactive pools
    #[arg(long, conflicts_with = "inactive")]
    all: bool,
    /// Only inactive pools
    #[arg(long)]
    inactive: bool,
    /// Only persistent pools
    #[arg(long)]
    persistent: bool,
    /// Only transient pools
    #[arg(long)]
    transient: bool,
    /// Only pools marked to autostart
    #[arg(long)]
    autostart: bool,
    /// Only pools not marked to autostart
    #[arg(long)]
    no_autostart: bool,
    /// Only pools of these types, comma-separated (dir,logical,...)
    #[arg(long = "type", value_name = "TYPES")]
    kind: Option<String>,
    /// Add persistence and sizes
    #[arg(long, conflicts_with_all = ["name", "uuid"])]
    details: bool,
    /// Print only names
    #[arg(long)]
    name: bool,
    /// Print only UUIDs
    #[arg(long)]
    uuid: bool,
}

/// pool-define-as and pool-create-as: a pool described by arguments instead of XML. The five
/// optional positionals are virsh's old form of the --source-* and --target options; '-' skips one.
#[derive(Debug, Clone, Args)]
pub struct PoolAsArgs {
    /// Name of the pool
    name: String,
    /// Pool type: dir, fs, netfs, logical, disk, iscsi, scsi, mpath, rbd, gluster, zfs, ...
    #[arg(value_name = "TYPE")]
    kind: String,
    /// Same as --source-host
    #[arg(value_name = "SOURCE-HOST")]
    host_arg: Option<String>,
    /// Same as --source-path
    #[arg(value_name = "SOURCE-PATH")]
    path_arg: Option<String>,
    /// Same as --source-dev
    #[arg(value_name = "SOURCE-DEV")]
    dev_arg: Option<String>,
    /// Same as --source-name
    #[arg(value_name = "SOURCE-NAME")]
    source_name_arg: Option<String>,
    /// Same as --target
    #[arg(value_name = "TARGET")]
    target_arg: Option<String>,
    /// Host of the storage (netfs, iscsi, rbd, gluster, ...)
    #[arg(long)]
    source_host: Option<String>,
    /// Port on the source host
    #[arg(long)]
    source_port: Option<u32>,
    /// Directory on the source host (netfs, gluster)
    #[arg(long)]
    source_path: Option<String>,
    /// Source device (fs, logical, disk) or target IQN (iscsi)
    #[arg(long)]
    source_dev: Option<String>,
    /// Source name: volume group, Ceph pool, gluster volume, zpool
    #[arg(long)]
    source_name: Option<String>,
    /// Where the pool's volumes appear on the host
    #[arg(long)]
    target: Option<String>,
    /// Source format: ext4, xfs, nfs, lvm2, gpt, dos, ...
    #[arg(long)]
    source_format: Option<String>,
    /// Initiator IQN (iscsi, iscsi-direct)
    #[arg(long)]
    source_initiator: Option<String>,
    /// NFS protocol version
    #[arg(long)]
    source_protocol_ver: Option<u32>,
    /// scsi_host adapter name (scsi pools)
    #[arg(long)]
    adapter_name: Option<String>,
    /// WWNN of a vHBA (fc_host adapter, with --adapter-wwpn)
    #[arg(long, requires = "adapter_wwpn")]
    adapter_wwnn: Option<String>,
    /// WWPN of a vHBA (fc_host adapter, with --adapter-wwnn)
    #[arg(long, requires = "adapter_wwnn")]
    adapter_wwpn: Option<String>,
    /// Parent scsi_host of a vHBA
    #[arg(long)]
    adapter_parent: Option<String>,
    /// Authentication: chap (iscsi) or ceph (rbd)
    #[arg(long, requires = "auth_username")]
    auth_type: Option<String>,
    /// User to authenticate as
    #[arg(long, requires = "auth_type")]
    auth_username: Option<String>,
    /// Usage name of the secret holding the password or key
    #[arg(long, requires = "auth_type")]
    secret_usage: Option<String>,
    /// UUID of the secret holding the password or key
    #[arg(long, requires = "auth_type", conflicts_with = "secret_usage")]
    secret_uuid: Option<String>,
    /// Print the pool's XML instead of defining it
    #[arg(long)]
    print_xml: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PoolCreateAsArgs {
    #[command(flatten)]
    pool: PoolAsArgs,
    /// Build the pool before starting it
    #[arg(long)]
    build: bool,
    #[command(flatten)]
    mode: BuildModeArgs,
}

#[derive(Debug, Clone, Args)]
pub struct VolCreateAsArgs {
    /// Pool to create the volume in
    pool: String,
    /// Name of the volume
    name: String,
    /// Size: bytes, or with a unit (8G = 8 GiB, 100KB = 100000 bytes)
    capacity: String,
    /// Space to allocate now (default: all of it)
    #[arg(long)]
    allocation: Option<String>,
    /// raw, qcow2, qcow, vmdk, vdi, vpc, vhdx, qed, ... (disk pools: a partition type)
    #[arg(long)]
    format: Option<String>,
    /// The volume this one is an overlay of (name in the same pool, key or path)
    #[arg(long)]
    backing_vol: Option<String>,
    /// Format of the backing volume (probed when not given)
    #[arg(long, requires = "backing_vol")]
    backing_vol_format: Option<String>,
    /// Preallocate only qcow2 metadata
    #[arg(long)]
    prealloc_metadata: bool,
    /// Print the volume's XML instead of creating it
    #[arg(long)]
    print_xml: bool,
}

/// vol-upload and vol-download.
#[derive(Debug, Clone, Args)]
pub struct TransferArgs {
    /// Volume name (with --pool), key or path
    vol: String,
    /// Local file to read (upload) or write (download)
    file: String,
    #[arg(long)]
    pool: Option<String>,
    /// Where in the volume to start
    #[arg(long)]
    offset: Option<String>,
    /// How many bytes at most (default: to the end)
    #[arg(long)]
    length: Option<String>,
    /// Send runs of zeroes as holes
    #[arg(long)]
    sparse: bool,
}

#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// List storage pools (active ones unless told otherwise)
    PoolList(PoolListArgs),
    /// Define (but do not start) a pool from an XML file
    PoolDefine { file: String },
    /// Define a pool from arguments
    PoolDefineAs(Box<PoolAsArgs>),
    /// Create and start a transient pool from an XML file
    PoolCreate {
        file: String,
        /// Build the pool before starting it
        #[arg(long)]
        build: bool,
        #[command(flatten)]
        mode: BuildModeArgs,
    },
    /// Create and start a transient pool from arguments
    PoolCreateAs(Box<PoolCreateAsArgs>),
    /// Build a pool's storage (make the directory, format the device, create the VG, ...)
    PoolBuild {
        pool: String,
        #[command(flatten)]
        mode: BuildModeArgs,
    },
    /// Start an inactive pool
    PoolStart {
        pool: String,
        /// Build the pool first
        #[arg(long)]
        build: bool,
        #[command(flatten)]
        mode: BuildModeArgs,
    },
    /// Stop a pool (its data is kept)
    PoolDestroy { pool: String },
    /// Delete an inactive pool's storage (the definition stays)
    PoolDelete { pool: String },
    /// Remove an inactive pool's definition
    PoolUndefine { pool: String },
    /// Rescan a pool's volumes
    PoolRefresh { pool: String },
    /// Start a pool when the host starts
    PoolAutostart {
        pool: String,
        #[arg(long)]
        disable: bool,
    },
    /// Show a pool's state and sizes
    PoolInfo {
        pool: String,
        /// Sizes in bytes
        #[arg(long)]
        bytes: bool,
    },
    /// Print a pool's XML
    PoolDumpxml {
        pool: String,
        /// The persistent definition instead of the running one
        #[arg(long)]
        inactive: bool,
    },
    /// Edit a pool's XML in $EDITOR
    PoolEdit { pool: String },
    /// Print a pool's UUID
    PoolUuid { pool: String },
    /// Print the name of the pool with this UUID
    PoolName { uuid: String },
    /// Discover storage a pool of TYPE could use (libvirt <sources> XML)
    FindStoragePoolSources {
        #[arg(value_name = "TYPE")]
        kind: String,
        /// File with a <source> XML fragment saying where to look
        #[arg(value_name = "SRCSPEC-FILE")]
        spec: Option<String>,
    },
    /// Discover storage a pool of TYPE could use, on HOST
    FindStoragePoolSourcesAs {
        #[arg(value_name = "TYPE")]
        kind: String,
        host: Option<String>,
        port: Option<u32>,
        /// Initiator IQN to log in with (iscsi)
        #[arg(long)]
        initiator: Option<String>,
    },
    /// Show which pool types and formats this host supports
    PoolCapabilities,
    /// Print storage pool and volume events
    PoolEvent {
        /// Only this pool and its volumes
        #[arg(long)]
        pool: Option<String>,
        /// Only lifecycle, refresh or volume events
        #[arg(long)]
        event: Option<String>,
        /// Keep printing events instead of stopping after the first
        #[arg(long = "loop")]
        keep: bool,
        /// Stop after this many seconds
        #[arg(long)]
        timeout: Option<u64>,
        /// List the event types
        #[arg(long)]
        list: bool,
    },
    /// Create a volume from arguments
    VolCreateAs(Box<VolCreateAsArgs>),
    /// Create a volume from an XML file
    VolCreate {
        pool: String,
        file: String,
        #[arg(long)]
        prealloc_metadata: bool,
    },
    /// Create a volume from an XML file, copying another volume's contents
    VolCreateFrom {
        pool: String,
        file: String,
        /// The volume to copy (name with --inputpool, key or path)
        vol: String,
        /// Pool of the volume to copy
        #[arg(long)]
        inputpool: Option<String>,
        #[arg(long)]
        prealloc_metadata: bool,
        /// Share blocks with the input where the filesystem can
        #[arg(long)]
        reflink: bool,
    },
    /// Copy a volume into a new one in the same pool
    VolClone {
        vol: String,
        newname: String,
        #[arg(long)]
        pool: Option<String>,
        /// A qcow2 overlay on the volume instead of a full copy
        #[arg(long, conflicts_with = "reflink")]
        linked: bool,
        /// Share blocks with the volume where the filesystem can
        #[arg(long)]
        reflink: bool,
        #[arg(long)]
        prealloc_metadata: bool,
    },
    /// Delete a volume
    VolDelete {
        vol: String,
        #[arg(long)]
        pool: Option<String>,
        /// Also delete the volume's snapshots (rbd)
        #[arg(long)]
        delete_snapshots: bool,
    },
    /// Overwrite a volume's data
    VolWipe {
        vol: String,
        #[arg(long)]
        pool: Option<String>,
        /// zero, nnsa, dod, bsi, gutmann, schneier, pfitzner7, pfitzner33, random or trim
        #[arg(long)]
        algorithm: Option<String>,
    },
    /// Change a volume's capacity
    VolResize {
        vol: String,
        /// New size; with --delta (or a leading '-' and --shrink) the change
        #[arg(allow_hyphen_values = true)]
        capacity: String,
        #[arg(long)]
        pool: Option<String>,
        /// Allocate the new space now
        #[arg(long)]
        allocate: bool,
        /// CAPACITY is added to the current size
        #[arg(long)]
        delta: bool,
        /// Allow making the volume smaller
        #[arg(long)]
        shrink: bool,
    },
    /// Show a volume's type and sizes
    VolInfo {
        vol: String,
        #[arg(long)]
        pool: Option<String>,
        /// Sizes in bytes
        #[arg(long)]
        bytes: bool,
        /// Show the size on the host instead of the allocation
        #[arg(long)]
        physical: bool,
    },
    /// List a pool's volumes
    VolList {
        pool: String,
        /// Add type and sizes
        #[arg(long)]
        details: bool,
    },
    /// Print a volume's path
    VolPath {
        vol: String,
        #[arg(long)]
        pool: Option<String>,
    },
    /// Print a volume's key
    VolKey {
        vol: String,
        #[arg(long)]
        pool: Option<String>,
    },
    /// Print the name of the volume with this key or path
    VolName { vol: String },
    /// Print the pool of the volume with this key or path
    VolPool {
        vol: String,
        /// The pool's UUID instead of its name
        #[arg(long)]
        uuid: bool,
    },
    /// Print a volume's XML
    VolDumpxml {
        vol: String,
        #[arg(long)]
        pool: Option<String>,
    },
    /// Write a local file into a volume
    VolUpload(TransferArgs),
    /// Copy a volume into a local file
    VolDownload(TransferArgs),
}

// ---------------------------------------------------------------------------------------------
// Words
// ---------------------------------------------------------------------------------------------

/// A libvirt word as its proto value, through vireo-conf's tables (the ones the XML uses).
fn code<T: Copy + Into<i32>>(text: &str, table: Table<T>, what: &str) -> Result<i32, String> {
    lookup(table, text, what.to_string())
        .map(Into::into)
        .map_err(|err| err.to_string())
}

fn optional_code<T: Copy + Into<i32>>(
    text: Option<&str>,
    table: Table<T>,
    what: &str,
) -> Result<i32, String> {
    text.map_or(Ok(0), |text| code(text, table, what))
}

/// virsh's words for pool states (pool-info, pool-list --details).
fn pool_state_word(state: i32) -> &'static str {
    match pb::PoolState::try_from(state) {
        Ok(pb::PoolState::Inactive) => "inactive",
        Ok(pb::PoolState::Building) => "building",
        Ok(pb::PoolState::Running) => "running",
        Ok(pb::PoolState::Degraded) => "degraded",
        Ok(pb::PoolState::Inaccessible) => "inaccessible",
        Ok(pb::PoolState::Unspecified) | Err(_) => "unknown",
    }
}

fn volume_type_word(kind: i32) -> &'static str {
    match name_of(VOLUME_TYPES, kind) {
        "" => "unknown",
        word => word,
    }
}

/// A volume's `<format type>`: an image format, or in a disk pool a partition type.
fn volume_format(text: &str) -> Result<pb::volume_target::Format, String> {
    use pb::volume_target::Format;
    code(text, VOLUME_FORMATS, "--format")
        .map(Format::ImageFormat)
        .or_else(|err| {
            code(text, PARTITION_TYPES, "--format")
                .map(Format::PartitionType)
                .map_err(|_| err)
        })
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_string()
}

/// Sizes are shown only for pools whose storage is there to measure (as virsh does).
fn pool_has_sizes(state: i32) -> bool {
    matches!(
        pb::PoolState::try_from(state),
        Ok(pb::PoolState::Running | pb::PoolState::Degraded)
    )
}

fn pool_is_active(state: i32) -> bool {
    !matches!(
        pb::PoolState::try_from(state),
        Ok(pb::PoolState::Inactive | pb::PoolState::Unspecified) | Err(_)
    )
}

/// A size argument: bytes, or a number with a unit.
fn size(text: &str, field: &str) -> Result<u64, String> {
    vireo_conf::units::parse_scaled(text, 1, field).map_err(|err| err.to_string())
}

fn optional_size(text: Option<&str>, field: &str) -> Result<u64, String> {
    text.map_or(Ok(0), |text| size(text, field))
}

// ---------------------------------------------------------------------------------------------
// Arguments to requests (pure)
// ---------------------------------------------------------------------------------------------

/// The VOL argument: a name in --pool, or else a key or path (the server tries key, then path).
fn volume_ref(vol: &str, pool: Option<&str>) -> Option<pb::VolumeRef> {
    Some(match pool {
        Some(pool) => pb::VolumeRef {
            pool: pool.to_string(),
            name: vol.to_string(),
            ..Default::default()
        },
        None => pb::VolumeRef {
            key: vol.to_string(),
            path: vol.to_string(),
            ..Default::default()
        },
    })
}

fn list_pools_request(args: &PoolListArgs) -> Result<pb::ListPoolsRequest, String> {
    // Both or neither of a pair of opposite filters means no filter.
    let either = |yes: bool, no: bool| (yes != no).then_some(yes);
    let types = match &args.kind {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|word| !word.is_empty())
            .map(|word| code(word, POOL_TYPES, "--type"))
            .collect::<Result<_, _>>()?,
    };
    Ok(pb::ListPoolsRequest {
        host: String::new(),
        active: (!args.all).then_some(!args.inactive),
        persistent: either(args.persistent, args.transient),
        autostart: either(args.autostart, args.no_autostart),
        types,
    })
}

/// One field given positionally or as an option; '-' or empty is "not given".
fn either_form(
    positional: Option<&str>,
    option: Option<&str>,
    what: &str,
) -> Result<Option<String>, String> {
    fn given(value: Option<&str>) -> Option<&str> {
        value.filter(|v| !v.is_empty() && *v != "-")
    }
    match (given(positional), given(option)) {
        (Some(a), Some(b)) if a != b => Err(format!("{what} given twice: '{a}' and '{b}'")),
        (a, b) => Ok(a.or(b).map(str::to_string)),
    }
}

fn pool_definition(args: &PoolAsArgs) -> Result<pb::PoolDefinition, String> {
    let host = either_form(
        args.host_arg.as_deref(),
        args.source_host.as_deref(),
        "--source-host",
    )?;
    let dir_path = either_form(
        args.path_arg.as_deref(),
        args.source_path.as_deref(),
        "--source-path",
    )?;
    let device = either_form(
        args.dev_arg.as_deref(),
        args.source_dev.as_deref(),
        "--source-dev",
    )?;
    let source_name = either_form(
        args.source_name_arg.as_deref(),
        args.source_name.as_deref(),
        "--source-name",
    )?;
    let target = either_form(
        args.target_arg.as_deref(),
        args.target.as_deref(),
        "--target",
    )?;
    if host.is_none() && args.source_port.is_some() {
        return Err("--source-port needs --source-host".into());
    }
    // virsh accepts HOST:PORT as the source host.
    let (host, port) = match host.as_deref().and_then(|h| h.rsplit_once(':')) {
        Some((name, port)) if !name.contains(':') && args.source_port.is_none() => {
            let port = port
                .parse::<u32>()
                .map_err(|_| format!("--source-host: '{port}' is not a port"))?;
            (Some(name.to_string()), Some(port))
        }
        _ => (host, args.source_port),
    };
    // The seed's iSCSI form gives the target's IQN as the source path; iSCSI pools name it
    // as their source device.
    let (dir_path, device) = match (args.kind.as_str(), dir_path, device) {
        ("iscsi" | "iscsi-direct", Some(iqn), None) => (None, Some(iqn)),
        (_, dir_path, device) => (dir_path, device),
    };
    let format = optional_code(
        args.source_format.as_deref(),
        POOL_SOURCE_FORMATS,
        "--source-format",
    )?;
    let adapter = match (&args.adapter_wwnn, &args.adapter_wwpn, &args.adapter_name) {
        (Some(wwnn), Some(wwpn), _) => Some(pb::PoolSourceAdapter {
            r#type: i32::from(pb::AdapterType::FcHost),
            wwnn: wwnn.clone(),
            wwpn: wwpn.clone(),
            parent: args.adapter_parent.clone().unwrap_or_default(),
            ..Default::default()
        }),
        (_, _, Some(name)) => Some(pb::PoolSourceAdapter {
            r#type: i32::from(pb::AdapterType::ScsiHost),
            name: name.clone(),
            ..Default::default()
        }),
        _ => None,
    };
    let auth = match (&args.auth_type, &args.auth_username) {
        (Some(kind), Some(username)) => {
            use pb::pool_source_auth::Secret;
            let secret = match (&args.secret_usage, &args.secret_uuid) {
                (Some(usage), _) => Secret::SecretUsage(usage.clone()),
                (_, Some(uuid)) => Secret::SecretUuid(uuid.clone()),
                _ => return Err("--auth-type needs --secret-usage or --secret-uuid".into()),
            };
            Some(pb::PoolSourceAuth {
                r#type: code(kind, AUTH_TYPES, "--auth-type")?,
                username: username.clone(),
                secret: Some(secret),
            })
        }
        _ => None,
    };
    let source = pb::PoolSource {
        hosts: host
            .map(|name| pb::PoolSourceHost {
                name,
                port: port.unwrap_or(0),
            })
            .into_iter()
            .collect(),
        devices: device
            .map(|path| pb::PoolSourceDevice {
                path,
                ..Default::default()
            })
            .into_iter()
            .collect(),
        dir_path: dir_path.unwrap_or_default(),
        adapter,
        name: source_name.unwrap_or_default(),
        format,
        initiator_iqn: args.source_initiator.clone().unwrap_or_default(),
        auth,
        protocol_version: args.source_protocol_ver.unwrap_or(0),
        ..Default::default()
    };
    Ok(pb::PoolDefinition {
        name: args.name.clone(),
        r#type: code(&args.kind, POOL_TYPES, "pool type")?,
        source: (source != pb::PoolSource::default()).then_some(source),
        target: target.map(|path| pb::PoolTarget {
            path,
            permissions: None,
        }),
        ..Default::default()
    })
}

/// vol-create-as's volume. A --backing-vol gets a backing store whose path is still empty: the
/// caller resolves the volume to its path with the server.
fn volume_definition(args: &VolCreateAsArgs) -> Result<pb::VolumeDefinition, String> {
    let target = args
        .format
        .as_deref()
        .map(volume_format)
        .transpose()?
        .map(|format| pb::VolumeTarget {
            format: Some(format),
            ..Default::default()
        });
    let backing_format = optional_code(
        args.backing_vol_format.as_deref(),
        VOLUME_FORMATS,
        "--backing-vol-format",
    )?;
    Ok(pb::VolumeDefinition {
        name: args.name.clone(),
        capacity_bytes: size(&args.capacity, "capacity")?,
        allocation_bytes: args
            .allocation
            .as_deref()
            .map(|text| size(text, "allocation"))
            .transpose()?,
        target,
        backing_store: args.backing_vol.as_ref().map(|_| pb::VolumeBackingStore {
            path: String::new(),
            format: backing_format,
            permissions: None,
        }),
        ..Default::default()
    })
}

/// vol-resize's CAPACITY: the bytes, whether they are a change, and the text virsh echoes.
/// A leading '-' (only with --shrink) is virsh's shorthand for "this much smaller".
fn resize_amount(text: &str, delta: bool, shrink: bool) -> Result<(u64, bool, String), String> {
    let text = text.trim_start();
    let (text, delta) = match text.strip_prefix('-') {
        Some(_) if !shrink => return Err("negative size requires --shrink".into()),
        Some(rest) => (rest, true),
        None => (text, delta),
    };
    Ok((size(text, "capacity")?, delta, text.to_string()))
}

fn find_sources_request(
    kind: &str,
    host: Option<&str>,
    port: Option<u32>,
    initiator: Option<&str>,
) -> Result<pb::FindPoolSourcesRequest, String> {
    let hosts: Vec<pb::PoolSourceHost> = host
        .map(|name| pb::PoolSourceHost {
            name: name.to_string(),
            port: port.unwrap_or(0),
        })
        .into_iter()
        .collect();
    if hosts.is_empty() && port.is_some() {
        return Err("a PORT needs a HOST".into());
    }
    let spec = (!hosts.is_empty() || initiator.is_some()).then(|| {
        pb::find_pool_sources_request::Spec::SpecSource(pb::PoolSource {
            hosts,
            initiator_iqn: initiator.unwrap_or_default().to_string(),
            ..Default::default()
        })
    });
    Ok(pb::FindPoolSourcesRequest {
        host: String::new(),
        r#type: code(kind, POOL_TYPES, "pool type")?,
        spec,
    })
}

// ---------------------------------------------------------------------------------------------
// Layouts (pure)
// ---------------------------------------------------------------------------------------------

pub(crate) fn by_name<T>(items: &[T], name: impl Fn(&T) -> &str) -> Vec<&T> {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_by_key(|item| name(item).to_lowercase());
    sorted
}

fn pool_table(pools: &[pb::PoolInfo], details: bool) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let pools = by_name(pools, |pool| &pool.name);
    if !details {
        let rows = pools
            .iter()
            .map(|pool| {
                let state = if pool_is_active(pool.state) {
                    "active"
                } else {
                    "inactive"
                };
                vec![pool.name.clone(), state.into(), yes_no(pool.autostart)]
            })
            .collect();
        return (vec!["Name", "State", "Autostart"], rows);
    }
    let rows = pools
        .iter()
        .map(|pool| {
            let sized = pool_has_sizes(pool.state);
            let shown = |bytes: u64| {
                if sized {
                    human_size(bytes)
                } else {
                    "-".to_string()
                }
            };
            vec![
                pool.name.clone(),
                pool_state_word(pool.state).to_string(),
                yes_no(pool.autostart),
                yes_no(pool.persistent),
                shown(pool.capacity_bytes),
                shown(pool.allocation_bytes),
                shown(pool.available_bytes),
            ]
        })
        .collect();
    (
        vec![
            "Name",
            "State",
            "Autostart",
            "Persistent",
            "Capacity",
            "Allocation",
            "Available",
        ],
        rows,
    )
}

fn pool_info_fields(info: &pb::PoolInfo, bytes: bool) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("Name", info.name.clone()),
        ("UUID", info.uuid.clone()),
        ("State", pool_state_word(info.state).to_string()),
        ("Persistent", yes_no(info.persistent)),
        ("Autostart", yes_no(info.autostart)),
    ];
    if pool_has_sizes(info.state) {
        let shown = |value: u64| {
            if bytes {
                value.to_string()
            } else {
                human_size(value)
            }
        };
        fields.push(("Capacity", shown(info.capacity_bytes)));
        fields.push(("Allocation", shown(info.allocation_bytes)));
        fields.push(("Available", shown(info.available_bytes)));
    }
    fields
}

fn volume_table(
    volumes: &[pb::VolumeInfo],
    details: bool,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let volumes = by_name(volumes, |volume| &volume.name);
    let path = |volume: &pb::VolumeInfo| {
        if volume.path.is_empty() {
            "unknown".to_string()
        } else {
            volume.path.clone()
        }
    };
    if !details {
        let rows = volumes
            .iter()
            .map(|volume| vec![volume.name.clone(), path(volume)])
            .collect();
        return (vec!["Name", "Path"], rows);
    }
    let rows = volumes
        .iter()
        .map(|volume| {
            vec![
                volume.name.clone(),
                path(volume),
                volume_type_word(volume.r#type).to_string(),
                human_size(volume.capacity_bytes),
                human_size(volume.allocation_bytes),
            ]
        })
        .collect();
    (vec!["Name", "Path", "Type", "Capacity", "Allocation"], rows)
}

fn volume_info_fields(
    info: &pb::VolumeInfo,
    bytes: bool,
    physical: bool,
) -> Vec<(&'static str, String)> {
    let shown = |value: u64| {
        if bytes {
            format!("{value} bytes")
        } else {
            human_size(value)
        }
    };
    let (label, used) = if physical {
        ("Physical", info.physical_bytes)
    } else {
        ("Allocation", info.allocation_bytes)
    };
    vec![
        ("Name", info.name.clone()),
        ("Type", volume_type_word(info.r#type).to_string()),
        ("Capacity", shown(info.capacity_bytes)),
        (label, shown(used)),
    ]
}

/// pool-event --event: virsh's two pool event kinds, and ours for volumes.
const EVENT_KINDS: [&str; 3] = ["lifecycle", "refresh", "volume"];

fn event_kind(event: &pb::StorageEvent) -> &'static str {
    if event.kind == i32::from(pb::StorageObjectKind::Volume) {
        "volume"
    } else if event.r#type == i32::from(pb::StorageEventType::Refreshed) {
        "refresh"
    } else {
        "lifecycle"
    }
}

/// An event as virsh prints it; volume events (which virsh does not have) in the same style.
fn event_line(event: &pb::StorageEvent) -> String {
    let what = match pb::StorageEventType::try_from(event.r#type) {
        Ok(pb::StorageEventType::Defined) => "Defined",
        Ok(pb::StorageEventType::Undefined) => "Undefined",
        Ok(pb::StorageEventType::Started) => "Started",
        Ok(pb::StorageEventType::Stopped) => "Stopped",
        Ok(pb::StorageEventType::Created) => "Created",
        Ok(pb::StorageEventType::Deleted) => "Deleted",
        Ok(pb::StorageEventType::Refreshed) => "Refreshed",
        Ok(pb::StorageEventType::Unspecified) | Err(_) => "Unknown",
    };
    match event_kind(event) {
        "volume" => format!(
            "event 'lifecycle' for storage volume {} in pool {}: {what}",
            event.name, event.pool
        ),
        "refresh" => format!("event 'refresh' for storage pool {}", event.name),
        _ => format!("event 'lifecycle' for storage pool {}: {what}", event.name),
    }
}

// ---------------------------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------------------------

async fn pools(connection: &mut Connection) -> Result<StoragePoolServiceClient<Channel>, Call> {
    Ok(StoragePoolServiceClient::new(connection.channel().await?))
}

async fn volumes(connection: &mut Connection) -> Result<StorageVolumeServiceClient<Channel>, Call> {
    Ok(StorageVolumeServiceClient::new(connection.channel().await?))
}

fn pool_failed(pool: &str, action: Option<String>) -> impl FnOnce(Status) -> Call {
    failed(Some(format!("failed to get pool '{pool}'")), action)
}

/// The end of a pool lifecycle call: virsh's "Pool X destroyed", or its two error lines.
fn pool_step<T>(
    pool: &str,
    verb: &str,
    done: &str,
    call: Result<tonic::Response<T>, Status>,
) -> Result<(), Call> {
    object_step("Pool", pool, verb, done, call)
}

fn vol_failed(
    vol: &str,
    pool: Option<&str>,
    action: Option<String>,
) -> impl FnOnce(Status) -> Call {
    let not_found = match pool {
        Some(_) => format!("failed to get vol '{vol}'"),
        None => format!("failed to get vol '{vol}', specifying --pool might help"),
    };
    failed(Some(not_found), action)
}

/// What a progress stream carries: progress, the result, or something to skip.
enum Step<T> {
    Progress(common::Progress),
    Done(T),
    Skip,
}

/// Follows a long operation's stream to its result, showing progress on a terminal.
async fn follow<M, T>(
    stream: &mut tonic::Streaming<M>,
    label: &str,
    step: impl Fn(M) -> Step<T>,
) -> Result<T, Status> {
    let mut progress = ProgressLine::new(label);
    let mut last = None;
    let mut result = None;
    while let Some(message) = stream.message().await? {
        match step(message) {
            Step::Progress(update) => {
                progress.update(update.processed_bytes, update.total_bytes);
                last = Some((update.processed_bytes, update.total_bytes));
            }
            Step::Done(value) => result = Some(value),
            Step::Skip => {}
        }
    }
    let result = result
        .ok_or_else(|| Status::internal("the server ended the operation without a result"))?;
    if let Some((done, total)) = last {
        progress.finish(if total > 0 { total } else { done }, total);
    }
    Ok(result)
}

fn created(update: pb::VolumeCreateUpdate) -> Step<pb::Volume> {
    match update.update {
        Some(pb::volume_create_update::Update::Progress(progress)) => Step::Progress(progress),
        Some(pb::volume_create_update::Update::Done(volume)) => Step::Done(volume),
        None => Step::Skip,
    }
}

fn wiped(update: pb::VolumeWipeUpdate) -> Step<pb::VolumeInfo> {
    match update.update {
        Some(pb::volume_wipe_update::Update::Progress(progress)) => Step::Progress(progress),
        Some(pb::volume_wipe_update::Update::Done(info)) => Step::Done(info),
        None => Step::Skip,
    }
}

fn volume_name(volume: &pb::Volume) -> String {
    volume
        .definition
        .as_ref()
        .map(|definition| definition.name.clone())
        .unwrap_or_default()
}

fn pool_of(pool: &pb::Pool) -> String {
    pool.definition
        .as_ref()
        .map(|definition| definition.name.clone())
        .unwrap_or_default()
}

/// Every name of the volume VOL names, or virsh's "failed to get vol".
async fn lookup_volume(
    client: &mut StorageVolumeServiceClient<Channel>,
    vol: &str,
    pool: Option<&str>,
) -> Result<pb::VolumeIdentity, Call> {
    Ok(client
        .lookup_volume(pb::LookupVolumeRequest {
            host: String::new(),
            volume: volume_ref(vol, pool),
        })
        .await
        .map_err(vol_failed(vol, pool, None))?
        .into_inner())
}

/// --backing-vol's path: a volume of the same pool by name first, then any by key or path.
async fn backing_path(
    client: &mut StorageVolumeServiceClient<Channel>,
    pool: &str,
    vol: &str,
) -> Result<String, Call> {
    let request = |volume| pb::LookupVolumeRequest {
        host: String::new(),
        volume,
    };
    let identity = match client
        .lookup_volume(request(volume_ref(vol, Some(pool))))
        .await
    {
        Ok(found) => found.into_inner(),
        Err(status) if status.code() == Code::NotFound => client
            .lookup_volume(request(volume_ref(vol, None)))
            .await
            .map_err(failed(Some(format!("failed to get vol '{vol}'")), None))?
            .into_inner(),
        Err(status) => return Err(Call::Status(status)),
    };
    if identity.path.is_empty() {
        return Err(fail(format!("backing volume '{vol}' has no path")));
    }
    Ok(identity.path)
}

pub async fn run(
    connection: &mut Connection,
    format: Format,
    command: StorageCommand,
) -> Result<(), Call> {
    use StorageCommand as C;
    match command {
        C::PoolList(args) => {
            let request = list_pools_request(&args).map_err(fail)?;
            let list = pools(connection)
                .await?
                .list_pools(request)
                .await
                .map_err(failed(None, Some("Failed to list pools".into())))?
                .into_inner();
            if format == Format::Json {
                print_json(&list);
            } else if args.name || args.uuid {
                for pool in by_name(&list.pools, |pool| &pool.name) {
                    match (args.uuid, args.name) {
                        (true, true) => println!("{} {}", pool.uuid, pool.name),
                        (true, false) => println!("{}", pool.uuid),
                        _ => println!("{}", pool.name),
                    }
                }
                println!();
            } else {
                let (headers, rows) = pool_table(&list.pools, args.details);
                print_table(&headers, &rows);
            }
        }
        C::PoolDefine { file } => {
            let xml = read_file(&file)?;
            let pool = pools(connection)
                .await?
                .define_pool(pb::DefinePoolRequest {
                    host: String::new(),
                    source: Some(pb::define_pool_request::Source::Xml(xml)),
                })
                .await
                .map_err(failed(
                    None,
                    Some(format!("Failed to define pool from {file}")),
                ))?
                .into_inner();
            match format {
                Format::Json => print_json(&pool),
                Format::Table => println!("Pool {} defined from {file}\n", pool_of(&pool)),
            }
        }
        C::PoolDefineAs(args) => {
            let definition = pool_definition(&args).map_err(fail)?;
            let mut client = pools(connection).await?;
            if args.print_xml {
                let xml = client
                    .format_pool_xml(pb::FormatPoolXmlRequest {
                        host: String::new(),
                        definition: Some(definition),
                    })
                    .await?
                    .into_inner();
                print_xml(format, &xml, &xml.xml);
                return Ok(());
            }
            let pool = client
                .define_pool(pb::DefinePoolRequest {
                    host: String::new(),
                    source: Some(pb::define_pool_request::Source::Definition(definition)),
                })
                .await
                .map_err(failed(
                    None,
                    Some(format!("Failed to define pool {}", args.name)),
                ))?
                .into_inner();
            match format {
                Format::Json => print_json(&pool),
                Format::Table => println!("Pool {} defined\n", args.name),
            }
        }
        C::PoolCreate { file, build, mode } => {
            let xml = read_file(&file)?;
            let pool = pools(connection)
                .await?
                .create_pool(pb::CreatePoolRequest {
                    host: String::new(),
                    source: Some(pb::create_pool_request::Source::Xml(xml)),
                    build,
                    build_mode: mode.mode(),
                })
                .await
                .map_err(failed(
                    None,
                    Some(format!("Failed to create pool from {file}")),
                ))?
                .into_inner();
            match format {
                Format::Json => print_json(&pool),
                Format::Table => println!("Pool {} created from {file}\n", pool_of(&pool)),
            }
        }
        C::PoolCreateAs(args) => {
            let definition = pool_definition(&args.pool).map_err(fail)?;
            let mut client = pools(connection).await?;
            if args.pool.print_xml {
                let xml = client
                    .format_pool_xml(pb::FormatPoolXmlRequest {
                        host: String::new(),
                        definition: Some(definition),
                    })
                    .await?
                    .into_inner();
                print_xml(format, &xml, &xml.xml);
                return Ok(());
            }
            let name = &args.pool.name;
            let pool = client
                .create_pool(pb::CreatePoolRequest {
                    host: String::new(),
                    source: Some(pb::create_pool_request::Source::Definition(definition)),
                    build: args.build,
                    build_mode: args.mode.mode(),
                })
                .await
                .map_err(failed(None, Some(format!("Failed to create pool {name}"))))?
                .into_inner();
            match format {
                Format::Json => print_json(&pool),
                Format::Table => println!("Pool {name} created\n"),
            }
        }
        C::PoolBuild { pool, mode } => {
            let request = pb::BuildPoolRequest {
                host: String::new(),
                pool: object(&pool),
                mode: mode.mode(),
            };
            let call = pools(connection).await?.build_pool(request).await;
            pool_step(&pool, "build", "built", call)?;
        }
        C::PoolStart { pool, build, mode } => {
            let request = pb::StartPoolRequest {
                host: String::new(),
                pool: object(&pool),
                build,
                build_mode: mode.mode(),
            };
            let call = pools(connection).await?.start_pool(request).await;
            pool_step(&pool, "start", "started", call)?;
        }
        C::PoolDestroy { pool } => {
            let request = pb::DestroyPoolRequest {
                host: String::new(),
                pool: object(&pool),
            };
            let call = pools(connection).await?.destroy_pool(request).await;
            pool_step(&pool, "destroy", "destroyed", call)?;
        }
        C::PoolDelete { pool } => {
            let request = pb::DeletePoolRequest {
                host: String::new(),
                pool: object(&pool),
            };
            let call = pools(connection).await?.delete_pool(request).await;
            pool_step(&pool, "delete", "deleted", call)?;
        }
        C::PoolUndefine { pool } => {
            let request = pb::UndefinePoolRequest {
                host: String::new(),
                pool: object(&pool),
            };
            let call = pools(connection).await?.undefine_pool(request).await;
            pool_step(&pool, "undefine", "has been undefined", call)?;
        }
        C::PoolRefresh { pool } => {
            let request = pb::RefreshPoolRequest {
                host: String::new(),
                pool: object(&pool),
            };
            let call = pools(connection).await?.refresh_pool(request).await;
            pool_step(&pool, "refresh", "refreshed", call)?;
        }
        C::PoolAutostart { pool, disable } => {
            let (action, done) = if disable {
                ("unmark", "unmarked")
            } else {
                ("mark", "marked")
            };
            pools(connection)
                .await?
                .set_pool_autostart(pb::SetPoolAutostartRequest {
                    host: String::new(),
                    pool: object(&pool),
                    autostart: !disable,
                })
                .await
                .map_err(pool_failed(
                    &pool,
                    Some(format!("failed to {action} pool {pool} as autostarted")),
                ))?;
            println!("Pool {pool} {done} as autostarted\n");
        }
        C::PoolInfo { pool, bytes } => {
            let info = pool_info(connection, &pool, object(&pool)).await?;
            if format == Format::Json {
                print_json(&info);
            } else {
                print_fields_at(INFO_WIDTH, &pool_info_fields(&info, bytes));
                println!();
            }
        }
        C::PoolUuid { pool } => {
            let info = pool_info(connection, &pool, object_named(&pool)).await?;
            match format {
                Format::Json => print_json(&info),
                Format::Table => println!("{}\n", info.uuid),
            }
        }
        C::PoolName { uuid } => {
            let info = pool_info(connection, &uuid, object_with_uuid(&uuid)).await?;
            match format {
                Format::Json => print_json(&info),
                Format::Table => println!("{}\n", info.name),
            }
        }
        C::PoolDumpxml { pool, inactive } => {
            let xml = pools(connection)
                .await?
                .get_pool_xml(pb::GetPoolXmlRequest {
                    host: String::new(),
                    pool: object(&pool),
                    inactive,
                })
                .await
                .map_err(pool_failed(&pool, None))?
                .into_inner();
            print_xml(format, &xml, &xml.xml);
        }
        C::PoolEdit { pool } => edit_pool(connection, &pool).await?,
        C::FindStoragePoolSources { kind, spec } => {
            let spec = spec
                .map(|file| read_file(&file))
                .transpose()?
                .map(pb::find_pool_sources_request::Spec::SpecXml);
            let request = pb::FindPoolSourcesRequest {
                host: String::new(),
                r#type: code(&kind, POOL_TYPES, "pool type").map_err(fail)?,
                spec,
            };
            find_sources(connection, format, &kind, request).await?;
        }
        C::FindStoragePoolSourcesAs {
            kind,
            host,
            port,
            initiator,
        } => {
            let request = find_sources_request(&kind, host.as_deref(), port, initiator.as_deref())
                .map_err(fail)?;
            find_sources(connection, format, &kind, request).await?;
        }
        C::PoolCapabilities => {
            let caps = pools(connection)
                .await?
                .get_pool_capabilities(pb::GetPoolCapabilitiesRequest::default())
                .await
                .map_err(failed(
                    None,
                    Some("failed to get storage pool capabilities".into()),
                ))?
                .into_inner();
            print_xml(format, &caps, &caps.xml);
        }
        C::PoolEvent {
            pool,
            event,
            keep,
            timeout,
            list,
        } => {
            if list {
                for kind in EVENT_KINDS {
                    println!("{kind}");
                }
                println!();
                return Ok(());
            }
            events(connection, format, pool, event, keep, timeout).await?;
        }
        C::VolCreateAs(args) => vol_create_as(connection, format, &args).await?,
        C::VolCreate {
            pool,
            file,
            prealloc_metadata,
        } => {
            let xml = read_file(&file)?;
            let action = || pool_failed(&pool, Some(format!("Failed to create vol from {file}")));
            let mut stream = volumes(connection)
                .await?
                .create_volume(pb::CreateVolumeRequest {
                    host: String::new(),
                    pool: object(&pool),
                    source: Some(pb::create_volume_request::Source::Xml(xml)),
                    prealloc_metadata,
                })
                .await
                .map_err(action())?
                .into_inner();
            let volume = follow(&mut stream, "Creating", created)
                .await
                .map_err(action())?;
            match format {
                Format::Json => print_json(&volume),
                Format::Table => println!("Vol {} created from {file}\n", volume_name(&volume)),
            }
        }
        C::VolCreateFrom {
            pool,
            file,
            vol,
            inputpool,
            prealloc_metadata,
            reflink,
        } => {
            let xml = read_file(&file)?;
            let mut client = volumes(connection).await?;
            let input = lookup_volume(&mut client, &vol, inputpool.as_deref()).await?;
            let action = || pool_failed(&pool, Some(format!("Failed to create vol from {file}")));
            let mut stream = client
                .create_volume_from(pb::CreateVolumeFromRequest {
                    host: String::new(),
                    pool: object(&pool),
                    source: Some(pb::create_volume_from_request::Source::Xml(xml)),
                    input_volume: volume_ref(&vol, inputpool.as_deref()),
                    prealloc_metadata,
                    reflink,
                })
                .await
                .map_err(action())?
                .into_inner();
            let volume = follow(&mut stream, "Copying", created)
                .await
                .map_err(action())?;
            match format {
                Format::Json => print_json(&volume),
                Format::Table => println!(
                    "Vol {} created from input vol {}\n",
                    volume_name(&volume),
                    input.name
                ),
            }
        }
        C::VolClone {
            vol,
            newname,
            pool,
            linked,
            reflink,
            prealloc_metadata,
        } => {
            let mut client = volumes(connection).await?;
            let source = lookup_volume(&mut client, &vol, pool.as_deref()).await?;
            let action = || {
                vol_failed(
                    &vol,
                    pool.as_deref(),
                    Some(format!("Failed to clone vol from {}", source.name)),
                )
            };
            let mut stream = client
                .clone_volume(pb::CloneVolumeRequest {
                    host: String::new(),
                    source: volume_ref(&vol, pool.as_deref()),
                    new_name: newname,
                    linked,
                    reflink,
                    prealloc_metadata,
                })
                .await
                .map_err(action())?
                .into_inner();
            let volume = follow(&mut stream, "Cloning", created)
                .await
                .map_err(action())?;
            match format {
                Format::Json => print_json(&volume),
                Format::Table => {
                    println!("Vol {} cloned from {}\n", volume_name(&volume), source.name)
                }
            }
        }
        C::VolDelete {
            vol,
            pool,
            delete_snapshots,
        } => {
            volumes(connection)
                .await?
                .delete_volume(pb::DeleteVolumeRequest {
                    host: String::new(),
                    volume: volume_ref(&vol, pool.as_deref()),
                    delete_snapshots,
                })
                .await
                .map_err(vol_failed(
                    &vol,
                    pool.as_deref(),
                    Some(format!("Failed to delete vol {vol}")),
                ))?;
            println!("Vol {vol} deleted\n");
        }
        C::VolWipe {
            vol,
            pool,
            algorithm,
        } => {
            let algorithm = optional_code(algorithm.as_deref(), WIPE_ALGORITHMS, "--algorithm")
                .map_err(fail)?;
            let action = || {
                vol_failed(
                    &vol,
                    pool.as_deref(),
                    Some(format!("Failed to wipe vol {vol}")),
                )
            };
            let mut stream = volumes(connection)
                .await?
                .wipe_volume(pb::WipeVolumeRequest {
                    host: String::new(),
                    volume: volume_ref(&vol, pool.as_deref()),
                    algorithm,
                })
                .await
                .map_err(action())?
                .into_inner();
            let info = follow(&mut stream, "Wiping", wiped)
                .await
                .map_err(action())?;
            match format {
                Format::Json => print_json(&info),
                Format::Table => println!("Vol {vol} wiped\n"),
            }
        }
        C::VolResize {
            vol,
            capacity,
            pool,
            allocate,
            delta,
            shrink,
        } => {
            let (capacity_bytes, delta, shown) =
                resize_amount(&capacity, delta, shrink).map_err(fail)?;
            let how = if delta { "by" } else { "to" };
            let info = volumes(connection)
                .await?
                .resize_volume(pb::ResizeVolumeRequest {
                    host: String::new(),
                    volume: volume_ref(&vol, pool.as_deref()),
                    capacity_bytes,
                    delta,
                    allocate,
                    shrink,
                })
                .await
                .map_err(vol_failed(
                    &vol,
                    pool.as_deref(),
                    Some(format!(
                        "Failed to change size of volume '{vol}' {how} {shown}"
                    )),
                ))?
                .into_inner();
            match format {
                Format::Json => print_json(&info),
                Format::Table => println!(
                    "Size of volume '{}' successfully changed {how} {shown}\n",
                    info.name
                ),
            }
        }
        C::VolInfo {
            vol,
            pool,
            bytes,
            physical,
        } => {
            let info = volumes(connection)
                .await?
                .get_volume_info(pb::GetVolumeInfoRequest {
                    host: String::new(),
                    volume: volume_ref(&vol, pool.as_deref()),
                })
                .await
                .map_err(vol_failed(&vol, pool.as_deref(), None))?
                .into_inner();
            if format == Format::Json {
                print_json(&info);
            } else {
                print_fields_at(INFO_WIDTH, &volume_info_fields(&info, bytes, physical));
                println!();
            }
        }
        C::VolList { pool, details } => {
            let list = volumes(connection)
                .await?
                .list_volumes(pb::ListVolumesRequest {
                    host: String::new(),
                    pool: object(&pool),
                    details,
                })
                .await
                .map_err(pool_failed(&pool, Some("Failed to list volumes".into())))?
                .into_inner();
            if format == Format::Json {
                print_json(&list);
            } else {
                let (headers, rows) = volume_table(&list.volumes, details);
                print_table(&headers, &rows);
            }
        }
        C::VolPath { vol, pool } => {
            let path = volumes(connection)
                .await?
                .get_volume_path(pb::GetVolumePathRequest {
                    host: String::new(),
                    volume: volume_ref(&vol, pool.as_deref()),
                })
                .await
                .map_err(vol_failed(&vol, pool.as_deref(), None))?
                .into_inner();
            match format {
                Format::Json => print_json(&path),
                Format::Table => println!("{}\n", path.path),
            }
        }
        C::VolKey { vol, pool } => {
            let key = volumes(connection)
                .await?
                .get_volume_key(pb::GetVolumeKeyRequest {
                    host: String::new(),
                    volume: volume_ref(&vol, pool.as_deref()),
                })
                .await
                .map_err(vol_failed(&vol, pool.as_deref(), None))?
                .into_inner();
            match format {
                Format::Json => print_json(&key),
                Format::Table => println!("{}\n", key.key),
            }
        }
        C::VolName { vol } => {
            let identity = lookup_by_key(connection, &vol).await?;
            match format {
                Format::Json => print_json(&identity),
                Format::Table => println!("{}\n", identity.name),
            }
        }
        C::VolPool { vol, uuid } => {
            let identity = lookup_by_key(connection, &vol).await?;
            match format {
                Format::Json => print_json(&identity),
                Format::Table if uuid => println!("{}\n", identity.pool_uuid),
                Format::Table => println!("{}\n", identity.pool),
            }
        }
        C::VolDumpxml { vol, pool } => {
            let xml = volumes(connection)
                .await?
                .get_volume_xml(pb::GetVolumeXmlRequest {
                    host: String::new(),
                    volume: volume_ref(&vol, pool.as_deref()),
                })
                .await
                .map_err(vol_failed(&vol, pool.as_deref(), None))?
                .into_inner();
            print_xml(format, &xml, &xml.xml);
        }
        C::VolUpload(args) => upload(connection, format, &args).await?,
        C::VolDownload(args) => download(connection, format, &args).await?,
    }
    Ok(())
}

async fn pool_info(
    connection: &mut Connection,
    shown: &str,
    pool: Option<ObjectRef>,
) -> Result<pb::PoolInfo, Call> {
    Ok(pools(connection)
        .await?
        .get_pool_info(pb::GetPoolInfoRequest {
            host: String::new(),
            pool,
        })
        .await
        .map_err(pool_failed(shown, None))?
        .into_inner())
}

/// vol-name and vol-pool take only a key or path (virsh has no --pool for them).
async fn lookup_by_key(connection: &mut Connection, vol: &str) -> Result<pb::VolumeIdentity, Call> {
    Ok(volumes(connection)
        .await?
        .lookup_volume(pb::LookupVolumeRequest {
            host: String::new(),
            volume: volume_ref(vol, None),
        })
        .await
        .map_err(failed(Some(format!("failed to get vol '{vol}'")), None))?
        .into_inner())
}

async fn find_sources(
    connection: &mut Connection,
    format: Format,
    kind: &str,
    request: pb::FindPoolSourcesRequest,
) -> Result<(), Call> {
    let sources = pools(connection)
        .await?
        .find_pool_sources(request)
        .await
        .map_err(failed(
            None,
            Some(format!("Failed to find any {kind} pool sources")),
        ))?
        .into_inner();
    print_xml(format, &sources, &sources.xml);
    Ok(())
}

async fn edit_pool(connection: &mut Connection, pool: &str) -> Result<(), Call> {
    let name = pool_info(connection, pool, object(pool)).await?.name;
    let mut client = pools(connection).await?;
    let xml = client
        .get_pool_xml(pb::GetPoolXmlRequest {
            host: String::new(),
            pool: object(pool),
            inactive: true,
        })
        .await
        .map_err(pool_failed(pool, None))?
        .into_inner()
        .xml;
    let Some(edited) = edit_xml(&name, &xml)? else {
        println!("Pool {name} XML configuration not changed.\n");
        return Ok(());
    };
    let defined = client
        .define_pool(pb::DefinePoolRequest {
            host: String::new(),
            source: Some(pb::define_pool_request::Source::Xml(edited)),
        })
        .await?
        .into_inner();
    println!("Pool {} XML configuration edited.\n", pool_of(&defined));
    Ok(())
}

async fn events(
    connection: &mut Connection,
    format: Format,
    pool: Option<String>,
    kind: Option<String>,
    keep: bool,
    timeout: Option<u64>,
) -> Result<(), Call> {
    if let Some(kind) = kind.as_deref()
        && !EVENT_KINDS.contains(&kind)
    {
        return Err(fail(format!(
            "unknown event type {kind} (one of: {})",
            EVENT_KINDS.join(", ")
        )));
    }
    let mut stream = pools(connection)
        .await?
        .watch_storage_events(pb::WatchStorageEventsRequest {
            host: String::new(),
            pool: pool.as_deref().and_then(object),
        })
        .await
        .map_err(match pool.as_deref() {
            Some(pool) => failed(Some(format!("failed to get pool '{pool}'")), None),
            None => failed(None, None),
        })?
        .into_inner();
    let deadline =
        timeout.map(|secs| tokio::time::Instant::now() + std::time::Duration::from_secs(secs));
    let mut count = 0u64;
    loop {
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(next) => next,
                Err(_) => {
                    if format == Format::Table {
                        println!("event loop timed out");
                    }
                    break;
                }
            },
            None => stream.message().await,
        };
        let Some(event) = next? else { break };
        if kind
            .as_deref()
            .is_some_and(|kind| kind != event_kind(&event))
        {
            continue;
        }
        count += 1;
        match format {
            Format::Json => print_json(&event),
            Format::Table => println!("{}", event_line(&event)),
        }
        let _ = std::io::Write::flush(&mut std::io::stdout());
        if !keep {
            break;
        }
    }
    if format == Format::Table {
        println!("events received: {count}\n");
    }
    Ok(())
}

async fn vol_create_as(
    connection: &mut Connection,
    format: Format,
    args: &VolCreateAsArgs,
) -> Result<(), Call> {
    let mut definition = volume_definition(args).map_err(fail)?;
    let mut client = volumes(connection).await?;
    if let (Some(vol), Some(backing)) = (&args.backing_vol, definition.backing_store.as_mut()) {
        backing.path = backing_path(&mut client, &args.pool, vol).await?;
    }
    if args.print_xml {
        let xml = client
            .format_volume_xml(pb::FormatVolumeXmlRequest {
                host: String::new(),
                pool: object(&args.pool),
                definition: Some(definition),
            })
            .await
            .map_err(pool_failed(&args.pool, None))?
            .into_inner();
        print_xml(format, &xml, &xml.xml);
        return Ok(());
    }
    let action = || {
        pool_failed(
            &args.pool,
            Some(format!("Failed to create vol {}", args.name)),
        )
    };
    let mut stream = client
        .create_volume(pb::CreateVolumeRequest {
            host: String::new(),
            pool: object(&args.pool),
            source: Some(pb::create_volume_request::Source::Definition(definition)),
            prealloc_metadata: args.prealloc_metadata,
        })
        .await
        .map_err(action())?
        .into_inner();
    let volume = follow(&mut stream, &format!("Creating {}", args.name), created)
        .await
        .map_err(action())?;
    match format {
        Format::Json => print_json(&volume),
        Format::Table => println!("Vol {} created\n", args.name),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// vol-upload and vol-download
// ---------------------------------------------------------------------------------------------

/// UploadVolume's codec, with a way to abort: an `Err` item fails encoding, and tonic then has
/// hyper reset the HTTP/2 stream, so the receiver sees an error instead of a clean end (which it
/// would take for a complete upload). Dropping the call alone does not reset it.
#[derive(Debug, Clone, Copy, Default)]
struct UploadCodec;

impl Codec for UploadCodec {
    type Encode = Result<pb::UploadVolumeRequest, Status>;
    type Decode = pb::UploadVolumeResult;
    type Encoder = UploadCodec;
    type Decoder = UploadCodec;

    fn encoder(&mut self) -> UploadCodec {
        UploadCodec
    }

    fn decoder(&mut self) -> UploadCodec {
        UploadCodec
    }
}

impl Encoder for UploadCodec {
    type Item = Result<pb::UploadVolumeRequest, Status>;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item?
            .encode(dst)
            .map_err(|err| Status::internal(err.to_string()))
    }
}

impl Decoder for UploadCodec {
    type Item = pb::UploadVolumeResult;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        Message::decode(src)
            .map(Some)
            .map_err(|err| Status::internal(err.to_string()))
    }
}

type UploadItem = Result<pb::UploadVolumeRequest, Status>;

/// How the file reader of an upload ended.
#[derive(Debug)]
enum ReadEnd {
    /// Every byte was queued; the stream ends when the sender drops.
    Sent,
    /// The call ended first (the server answered or refused); its status says why.
    Closed,
    /// The file could not be read; the upload was aborted.
    Failed(std::io::Error),
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) {
        match file.read(rest) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

fn upload_part(part: pb::upload_volume_request::Part) -> UploadItem {
    Ok(pb::UploadVolumeRequest {
        host: String::new(),
        part: Some(part),
    })
}

/// What the reader sends: at most `limit_bytes` (0: all), exactly that many when `exact`
/// (the header promised them), holes for zero chunks when `sparse`.
#[derive(Debug, Clone, Copy)]
struct ReadPlan {
    limit_bytes: u64,
    exact: bool,
    sparse: bool,
    total_bytes: u64,
}

/// Reads the file in chunks into the upload stream (a blocking thread; the bounded channel
/// keeps it at most UPLOAD_QUEUE chunks ahead). A read error aborts the stream.
fn send_file(
    mut file: impl Read,
    plan: ReadPlan,
    label: &str,
    tx: mpsc::Sender<UploadItem>,
) -> ReadEnd {
    use pb::upload_volume_request::Part;
    let mut progress = ProgressLine::new(label);
    let mut read_bytes: u64 = 0;
    let mut hole_bytes: u64 = 0;
    let failed = |err: std::io::Error| {
        let abort = Status::aborted(format!("the client could not read its file: {err}"));
        let _ = tx.blocking_send(Err(abort));
        ReadEnd::Failed(err)
    };
    loop {
        let want = match plan.limit_bytes {
            0 => CHUNK_BYTES,
            limit => usize::try_from(limit - read_bytes)
                .unwrap_or(usize::MAX)
                .min(CHUNK_BYTES),
        };
        if want == 0 {
            break;
        }
        let mut chunk = vec![0u8; want];
        let read = match read_full(&mut file, &mut chunk) {
            Ok(read) => read,
            Err(err) => return failed(err),
        };
        chunk.truncate(read);
        read_bytes += read as u64;
        if sparse_chunk(plan.sparse, &chunk) {
            hole_bytes += read as u64;
        } else {
            if hole_bytes > 0 {
                let hole = Part::Hole(pb::VolumeHole {
                    length_bytes: std::mem::take(&mut hole_bytes),
                });
                if tx.blocking_send(upload_part(hole)).is_err() {
                    return ReadEnd::Closed;
                }
            }
            let data = Part::Chunk(DataChunk { data: chunk.into() });
            if tx.blocking_send(upload_part(data)).is_err() {
                return ReadEnd::Closed;
            }
        }
        progress.update(read_bytes, plan.total_bytes);
        if read < want {
            break;
        }
    }
    if plan.exact && read_bytes < plan.limit_bytes {
        return failed(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("it ended after {read_bytes} of {} bytes", plan.limit_bytes),
        ));
    }
    if hole_bytes > 0 {
        let hole = Part::Hole(pb::VolumeHole {
            length_bytes: hole_bytes,
        });
        if tx.blocking_send(upload_part(hole)).is_err() {
            return ReadEnd::Closed;
        }
    }
    progress.finish(read_bytes, plan.total_bytes);
    ReadEnd::Sent
}

fn sparse_chunk(sparse: bool, chunk: &[u8]) -> bool {
    sparse && !chunk.is_empty() && chunk.iter().all(|byte| *byte == 0)
}

async fn upload(
    connection: &mut Connection,
    format: Format,
    args: &TransferArgs,
) -> Result<(), Call> {
    let offset_bytes = optional_size(args.offset.as_deref(), "offset").map_err(fail)?;
    let length_bytes = optional_size(args.length.as_deref(), "length").map_err(fail)?;
    let path = &args.file;
    let mut file =
        std::fs::File::open(path).map_err(|err| fail(format!("cannot read {path}: {err}")))?;
    // Seeking finds the size of block devices too, whose metadata says 0; a pipe has none.
    let size_bytes = file
        .seek(SeekFrom::End(0))
        .and_then(|size| file.rewind().map(|()| size))
        .ok();
    // With a known size the header promises the exact count, so that the server can tell a
    // complete upload from one cut short.
    let plan = match size_bytes {
        Some(size) => {
            let count = match length_bytes {
                0 => size,
                length => size.min(length),
            };
            ReadPlan {
                limit_bytes: count,
                exact: true,
                sparse: args.sparse,
                total_bytes: count,
            }
        }
        None => ReadPlan {
            limit_bytes: length_bytes,
            exact: false,
            sparse: args.sparse,
            total_bytes: length_bytes,
        },
    };
    let header = pb::UploadVolumeHeader {
        volume: volume_ref(&args.vol, args.pool.as_deref()),
        offset_bytes,
        length_bytes: if plan.exact { plan.limit_bytes } else { 0 },
        sparse: args.sparse,
    };
    let label = format!("Uploading {}", args.vol);
    let upload_failed = || {
        vol_failed(
            &args.vol,
            args.pool.as_deref(),
            Some(format!("cannot upload to volume {}", args.vol)),
        )
    };
    let local = Transfer::Upload(header.clone());
    if let Some(result) = local_transfer::run(connection, local, &file, &label).await {
        let Reply::Uploaded(done) = result.map_err(upload_failed())? else {
            return Err(fail(
                "the gateway answered an upload with something else".into(),
            ));
        };
        if format == Format::Json {
            print_json(&done);
        }
        return Ok(());
    }
    let mut grpc = tonic::client::Grpc::new(connection.channel().await?);
    grpc.ready()
        .await
        .map_err(|err| Status::unavailable(format!("the gateway is not ready: {err}")))?;
    let (tx, rx) = mpsc::channel(UPLOAD_QUEUE);
    tx.send(upload_part(pb::upload_volume_request::Part::Header(header)))
        .await
        .map_err(|_| fail("the upload stream closed before it started".into()))?;
    let reader = tokio::task::spawn_blocking(move || send_file(file, plan, &label, tx));
    let result = grpc
        .client_streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            PathAndQuery::from_static(UPLOAD_PATH),
            UploadCodec,
        )
        .await;
    // The call is over, and with it the stream: a reader still waiting on the queue stops.
    match reader.await {
        Ok(ReadEnd::Failed(err)) => return Err(fail(format!("cannot read {path}: {err}"))),
        Err(err) => return Err(fail(format!("the reader of {path} failed: {err}"))),
        Ok(ReadEnd::Sent | ReadEnd::Closed) => {}
    }
    let done = result.map_err(upload_failed())?.into_inner();
    if format == Format::Json {
        print_json(&done);
    }
    Ok(())
}

/// Opens the download's file as virsh does: created if new (and then removed on failure),
/// truncated if it exists.
fn open_output(path: &str) -> Result<(std::fs::File, bool), Call> {
    let create = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path);
    match create {
        Ok(file) => Ok((file, true)),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .map(|file| (file, false))
            .map_err(|err| fail(format!("cannot create {path}: {err}"))),
        Err(err) => Err(fail(format!("cannot create {path}: {err}"))),
    }
}

async fn download(
    connection: &mut Connection,
    format: Format,
    args: &TransferArgs,
) -> Result<(), Call> {
    let request = pb::DownloadVolumeRequest {
        host: String::new(),
        volume: volume_ref(&args.vol, args.pool.as_deref()),
        offset_bytes: optional_size(args.offset.as_deref(), "offset").map_err(fail)?,
        length_bytes: optional_size(args.length.as_deref(), "length").map_err(fail)?,
        sparse: args.sparse,
    };
    let (file, created) = open_output(&args.file)?;
    let label = format!("Downloading {}", args.vol);
    let local = Transfer::Download(request.clone());
    let result = match local_transfer::run(connection, local, &file, &label).await {
        Some(result) => match result.map_err(download_failed(args)) {
            Ok(Reply::Downloaded(header)) => Ok(header),
            Ok(_) => Err(fail(
                "the gateway answered a download with something else".into(),
            )),
            Err(call) => Err(call),
        },
        None => match volumes(connection).await {
            Ok(mut client) => receive(&mut client, request, file, args).await,
            Err(call) => Err(call),
        },
    };
    if result.is_err() && created {
        let _ = std::fs::remove_file(&args.file);
    }
    let header = result?;
    if format == Format::Json {
        print_json(&header);
    }
    Ok(())
}

fn download_failed(args: &TransferArgs) -> impl FnOnce(Status) -> Call {
    vol_failed(
        &args.vol,
        args.pool.as_deref(),
        Some(format!("cannot download from volume {}", args.vol)),
    )
}

/// Writes the download stream into `file`. A hole is a seek in a regular file (the file stays
/// sparse) and zeroes written anywhere else (a block device must really be overwritten).
async fn receive(
    client: &mut StorageVolumeServiceClient<Channel>,
    request: pb::DownloadVolumeRequest,
    file: std::fs::File,
    args: &TransferArgs,
) -> Result<pb::VolumeDownloadHeader, Call> {
    use pb::volume_download_part::Part;
    let path = &args.file;
    let write_failed = |err: std::io::Error| fail(format!("cannot write {path}: {err}"));
    let regular = file.metadata().map(|meta| meta.is_file()).unwrap_or(false);
    let mut file = tokio::fs::File::from_std(file);
    let action = || download_failed(args);
    let mut stream = client
        .download_volume(request)
        .await
        .map_err(action())?
        .into_inner();
    let mut progress = ProgressLine::new(&format!("Downloading {}", args.vol));
    let mut header = None;
    let mut written_bytes: u64 = 0;
    let mut seeked = false;
    let mut zeroes: Vec<u8> = Vec::new();
    while let Some(message) = stream.message().await.map_err(action())? {
        match message.part {
            Some(Part::Header(first)) => header = Some(first),
            Some(Part::Chunk(chunk)) => {
                file.write_all(&chunk.data).await.map_err(write_failed)?;
                written_bytes += chunk.data.len() as u64;
            }
            Some(Part::Hole(hole)) if regular => {
                let skip = i64::try_from(hole.length_bytes)
                    .map_err(|_| fail(format!("hole of {} bytes", hole.length_bytes)))?;
                file.seek(SeekFrom::Current(skip))
                    .await
                    .map_err(write_failed)?;
                written_bytes += hole.length_bytes;
                seeked = true;
            }
            Some(Part::Hole(hole)) => {
                zeroes.resize(CHUNK_BYTES, 0);
                let mut left = hole.length_bytes;
                while left > 0 {
                    let run = usize::try_from(left)
                        .unwrap_or(CHUNK_BYTES)
                        .min(CHUNK_BYTES);
                    file.write_all(zeroes.get(..run).unwrap_or_default())
                        .await
                        .map_err(write_failed)?;
                    left -= run as u64;
                }
                written_bytes += hole.length_bytes;
            }
            None => {}
        }
        let total_bytes = header.as_ref().map_or(0, |h| h.total_bytes);
        progress.update(written_bytes, total_bytes);
    }
    file.flush().await.map_err(write_failed)?;
    if seeked {
        // A trailing hole was only a seek: the file must still reach its full length.
        file.set_len(written_bytes).await.map_err(write_failed)?;
    }
    let header = header.unwrap_or_default();
    progress.finish(written_bytes, header.total_bytes);
    Ok(header)
}

#[cfg(test)]
mod wire_tests;

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::commands::Command;

    fn parse(args: &[&str]) -> StorageCommand {
        let cli = crate::Cli::try_parse_from(std::iter::once("vireo").chain(args.iter().copied()))
            .expect("arguments parse");
        match cli.command {
            Some(Command::Storage(command)) => *command,
            other => panic!("not a storage command: {other:?}"),
        }
    }

    #[test]
    fn words_come_from_conf() {
        assert_eq!(
            code("iscsi-direct", POOL_TYPES, "pool type").unwrap(),
            i32::from(pb::PoolType::IscsiDirect)
        );
        let err = code("nfs", POOL_TYPES, "pool type").unwrap_err();
        assert!(
            err.starts_with("pool type: 'nfs' is not supported"),
            "{err}"
        );
        assert_eq!(
            volume_format("qcow2").unwrap(),
            pb::volume_target::Format::ImageFormat(pb::VolumeFormat::Qcow2.into())
        );
        assert_eq!(
            volume_format("linux-swap").unwrap(),
            pb::volume_target::Format::PartitionType(pb::PartitionType::LinuxSwap.into())
        );
        assert!(volume_format("floppy").unwrap_err().contains("raw, qcow2"));
        assert_eq!(pool_state_word(pb::PoolState::Running.into()), "running");
        assert_eq!(pool_state_word(99), "unknown");
        assert_eq!(volume_type_word(pb::VolumeType::Block.into()), "block");
        assert_eq!(
            optional_code(Some("pfitzner33"), WIPE_ALGORITHMS, "--algorithm").unwrap(),
            i32::from(pb::VolumeWipeAlgorithm::Pfitzner33)
        );
        assert_eq!(
            optional_code(None, WIPE_ALGORITHMS, "--algorithm").unwrap(),
            0
        );
    }

    #[test]
    fn pool_list_filters() {
        let request = |args: &[&str]| {
            let mut all = vec!["pool-list"];
            all.extend_from_slice(args);
            match parse(&all) {
                StorageCommand::PoolList(args) => list_pools_request(&args),
                other => panic!("{other:?}"),
            }
        };
        let plain = request(&[]).unwrap();
        assert_eq!(plain.active, Some(true));
        assert_eq!((plain.persistent, plain.autostart), (None, None));
        assert_eq!(request(&["--all"]).unwrap().active, None);
        assert_eq!(request(&["--inactive"]).unwrap().active, Some(false));
        let filtered = request(&["--transient", "--autostart", "--type", "dir,logical"]).unwrap();
        assert_eq!(filtered.persistent, Some(false));
        assert_eq!(filtered.autostart, Some(true));
        assert_eq!(
            filtered.types,
            vec![
                i32::from(pb::PoolType::Dir),
                i32::from(pb::PoolType::Logical)
            ]
        );
        assert_eq!(
            request(&["--persistent", "--transient"])
                .unwrap()
                .persistent,
            None
        );
        assert!(request(&["--type", "floppy"]).is_err());
    }

    #[test]
    fn pool_define_as_positional_and_options() {
        let definition = |args: &[&str]| {
            let mut all = vec!["pool-define-as"];
            all.extend_from_slice(args);
            match parse(&all) {
                StorageCommand::PoolDefineAs(args) => pool_definition(&args),
                other => panic!("{other:?}"),
            }
        };
        let dir = definition(&["images", "dir", "-", "-", "-", "-", "/srv/images"]).unwrap();
        assert_eq!(dir.name, "images");
        assert_eq!(dir.r#type, i32::from(pb::PoolType::Dir));
        assert_eq!(dir.source, None);
        assert_eq!(dir.target.unwrap().path, "/srv/images");

        let nfs = definition(&[
            "share",
            "netfs",
            "--source-host",
            "nas",
            "--source-port",
            "2049",
            "--source-path",
            "/export",
            "--source-format",
            "nfs",
            "--target",
            "/mnt/share",
        ])
        .unwrap();
        let source = nfs.source.unwrap();
        assert_eq!(
            source.hosts,
            vec![pb::PoolSourceHost {
                name: "nas".into(),
                port: 2049
            }]
        );
        assert_eq!(source.dir_path, "/export");
        assert_eq!(source.format, i32::from(pb::PoolSourceFormat::Nfs));

        let vg = definition(&["vg", "logical", "-", "-", "/dev/sdb", "vg0"]).unwrap();
        let source = vg.source.unwrap();
        assert_eq!(source.devices[0].path, "/dev/sdb");
        assert_eq!(source.name, "vg0");
        assert!(vg.target.is_none());

        assert!(
            definition(&["x", "dir", "-", "-", "-", "-", "/a", "--target", "/b"])
                .unwrap_err()
                .contains("given twice")
        );
        assert!(definition(&["x", "dir", "-", "-", "-", "-", "/a", "--target", "/a"]).is_ok());
        assert!(definition(&["x", "dri"]).unwrap_err().contains("pool type"));
        assert!(
            definition(&["x", "iscsi", "--source-port", "3260"])
                .unwrap_err()
                .contains("--source-host")
        );
    }

    #[test]
    fn pool_create_as_build_mode() {
        match parse(&["pool-create-as", "p", "dir", "--build", "--no-overwrite"]) {
            StorageCommand::PoolCreateAs(args) => {
                assert!(args.build);
                assert_eq!(args.mode.mode(), i32::from(pb::PoolBuildMode::NoOverwrite));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            crate::Cli::try_parse_from([
                "vireo",
                "pool-build",
                "p",
                "--overwrite",
                "--no-overwrite"
            ])
            .is_err()
        );
    }

    #[test]
    fn vol_create_as_definition() {
        let definition = |args: &[&str]| {
            let mut all = vec!["vol-create-as"];
            all.extend_from_slice(args);
            match parse(&all) {
                StorageCommand::VolCreateAs(args) => volume_definition(&args),
                other => panic!("{other:?}"),
            }
        };
        let plain = definition(&["default", "disk.img", "8G"]).unwrap();
        assert_eq!(plain.capacity_bytes, 8 << 30);
        assert_eq!(plain.allocation_bytes, None);
        assert_eq!(plain.target, None);

        let overlay = definition(&[
            "default",
            "top.qcow2",
            "100KB",
            "--allocation",
            "0",
            "--format",
            "qcow2",
            "--backing-vol",
            "base",
            "--backing-vol-format",
            "raw",
        ])
        .unwrap();
        assert_eq!(overlay.capacity_bytes, 100_000);
        assert_eq!(overlay.allocation_bytes, Some(0));
        assert_eq!(
            overlay.target.unwrap().format,
            Some(pb::volume_target::Format::ImageFormat(
                pb::VolumeFormat::Qcow2.into()
            ))
        );
        let backing = overlay.backing_store.unwrap();
        assert_eq!(backing.path, "");
        assert_eq!(backing.format, i32::from(pb::VolumeFormat::Raw));

        let err = definition(&["default", "x", "12Q"]).unwrap_err();
        assert!(err.starts_with("capacity:"), "{err}");
        assert!(
            crate::Cli::try_parse_from([
                "vireo",
                "vol-create-as",
                "p",
                "v",
                "1G",
                "--backing-vol-format",
                "raw"
            ])
            .is_err()
        );
    }

    #[test]
    fn volume_references() {
        assert_eq!(
            volume_ref("disk.img", Some("default")).unwrap(),
            pb::VolumeRef {
                pool: "default".into(),
                name: "disk.img".into(),
                ..Default::default()
            }
        );
        assert_eq!(
            volume_ref("/var/lib/vireo/images/disk.img", None).unwrap(),
            pb::VolumeRef {
                key: "/var/lib/vireo/images/disk.img".into(),
                path: "/var/lib/vireo/images/disk.img".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn resize_amounts() {
        assert_eq!(
            resize_amount("2G", false, false).unwrap(),
            (2 << 30, false, "2G".to_string())
        );
        assert_eq!(
            resize_amount("-1G", false, true).unwrap(),
            (1 << 30, true, "1G".to_string())
        );
        assert!(
            resize_amount("-1G", false, false)
                .unwrap_err()
                .contains("--shrink")
        );
        match parse(&["vol-resize", "v", "-512M", "--pool", "p", "--shrink"]) {
            StorageCommand::VolResize { capacity, .. } => assert_eq!(capacity, "-512M"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn find_sources_specs() {
        let local = find_sources_request("logical", None, None, None).unwrap();
        assert_eq!(local.r#type, i32::from(pb::PoolType::Logical));
        assert_eq!(local.spec, None);
        let remote = find_sources_request("iscsi", Some("san"), Some(3260), Some("iqn.x")).unwrap();
        match remote.spec {
            Some(pb::find_pool_sources_request::Spec::SpecSource(source)) => {
                assert_eq!(source.hosts[0].name, "san");
                assert_eq!(source.hosts[0].port, 3260);
                assert_eq!(source.initiator_iqn, "iqn.x");
            }
            other => panic!("{other:?}"),
        }
        assert!(find_sources_request("netfs", None, Some(1), None).is_err());
    }

    fn pool(name: &str, state: pb::PoolState, autostart: bool) -> pb::PoolInfo {
        pb::PoolInfo {
            name: name.into(),
            uuid: format!("uuid-{name}"),
            r#type: pb::PoolType::Dir.into(),
            state: state.into(),
            persistent: true,
            autostart,
            capacity_bytes: 10_501_771_264,
            allocation_bytes: 1 << 30,
            available_bytes: 9_427_001_344,
        }
    }

    #[test]
    fn pool_tables() {
        let pools = vec![
            pool("zeta", pb::PoolState::Inactive, false),
            pool("default", pb::PoolState::Running, true),
        ];
        let (headers, rows) = pool_table(&pools, false);
        assert_eq!(
            crate::output::format_table(&headers, &rows),
            " Name      State      Autostart\n\
             ---------------------------------\n\
             \x20default   active     yes\n\
             \x20zeta      inactive   no\n\n"
        );
        let (headers, rows) = pool_table(&pools, true);
        assert_eq!(headers.len(), 7);
        assert_eq!(
            rows[0],
            [
                "default", "running", "yes", "yes", "9.78 GiB", "1.00 GiB", "8.78 GiB"
            ]
        );
        assert_eq!(rows[1], ["zeta", "inactive", "no", "yes", "-", "-", "-"]);
    }

    #[test]
    fn pool_info_layout() {
        let fields = pool_info_fields(&pool("default", pb::PoolState::Running, true), false);
        let labels: Vec<&str> = fields.iter().map(|(label, _)| *label).collect();
        assert_eq!(
            labels,
            [
                "Name",
                "UUID",
                "State",
                "Persistent",
                "Autostart",
                "Capacity",
                "Allocation",
                "Available"
            ]
        );
        assert_eq!(fields[5].1, "9.78 GiB");
        let bytes = pool_info_fields(&pool("default", pb::PoolState::Running, true), true);
        assert_eq!(bytes[5].1, "10501771264");
        assert_eq!(
            pool_info_fields(&pool("off", pb::PoolState::Inactive, false), false).len(),
            5
        );
    }

    #[test]
    fn volume_layouts() {
        let volumes = vec![pb::VolumeInfo {
            pool: "default".into(),
            name: "disk.qcow2".into(),
            key: "/images/disk.qcow2".into(),
            path: "/images/disk.qcow2".into(),
            r#type: pb::VolumeType::File.into(),
            capacity_bytes: 10 << 30,
            allocation_bytes: 200_704,
            physical_bytes: 262_144,
        }];
        let (headers, rows) = volume_table(&volumes, false);
        assert_eq!(headers, ["Name", "Path"]);
        assert_eq!(rows[0], ["disk.qcow2", "/images/disk.qcow2"]);
        let (headers, rows) = volume_table(&volumes, true);
        assert_eq!(headers, ["Name", "Path", "Type", "Capacity", "Allocation"]);
        assert_eq!(
            rows[0],
            [
                "disk.qcow2",
                "/images/disk.qcow2",
                "file",
                "10.00 GiB",
                "196.00 KiB"
            ]
        );
        let info = volume_info_fields(&volumes[0], false, false);
        assert_eq!(
            info,
            [
                ("Name", "disk.qcow2".to_string()),
                ("Type", "file".to_string()),
                ("Capacity", "10.00 GiB".to_string()),
                ("Allocation", "196.00 KiB".to_string()),
            ]
        );
        let physical = volume_info_fields(&volumes[0], true, true);
        assert_eq!(physical[3], ("Physical", "262144 bytes".to_string()));
    }

    #[test]
    fn event_lines() {
        let event = |kind: pb::StorageObjectKind, r#type: pb::StorageEventType| pb::StorageEvent {
            kind: kind.into(),
            name: "vol1".into(),
            pool: "default".into(),
            r#type: r#type.into(),
            ..Default::default()
        };
        let mut started = event(pb::StorageObjectKind::Pool, pb::StorageEventType::Started);
        started.name = "default".into();
        assert_eq!(
            event_line(&started),
            "event 'lifecycle' for storage pool default: Started"
        );
        let mut refreshed = event(pb::StorageObjectKind::Pool, pb::StorageEventType::Refreshed);
        refreshed.name = "default".into();
        assert_eq!(event_kind(&refreshed), "refresh");
        assert_eq!(
            event_line(&refreshed),
            "event 'refresh' for storage pool default"
        );
        let volume = event(pb::StorageObjectKind::Volume, pb::StorageEventType::Created);
        assert_eq!(event_kind(&volume), "volume");
        assert_eq!(
            event_line(&volume),
            "event 'lifecycle' for storage volume vol1 in pool default: Created"
        );
    }

    #[test]
    fn upload_reader_chunks_and_holes() {
        use pb::upload_volume_request::Part;
        let mut data = vec![7u8; 10];
        data.extend(std::iter::repeat_n(0u8, 2 * CHUNK_BYTES + 5));
        let size = data.len() as u64;
        let run = |data: Vec<u8>, limit_bytes: u64, exact: bool, sparse: bool| {
            let (tx, mut rx) = mpsc::channel(64);
            let plan = ReadPlan {
                limit_bytes,
                exact,
                sparse,
                total_bytes: 0,
            };
            let end = send_file(std::io::Cursor::new(data), plan, "test", tx);
            let mut parts = Vec::new();
            while let Ok(message) = rx.try_recv() {
                parts.push(match message {
                    Ok(message) => match message.part.expect("a part") {
                        Part::Chunk(chunk) => ('d', chunk.data.len() as u64),
                        Part::Hole(hole) => ('h', hole.length_bytes),
                        Part::Header(_) => ('?', 0),
                    },
                    Err(_) => ('!', 0),
                });
            }
            (end, parts)
        };
        let chunk = CHUNK_BYTES as u64;
        // Dense: every byte travels, in 1 MiB chunks.
        let (end, parts) = run(data.clone(), size, true, false);
        assert!(matches!(end, ReadEnd::Sent));
        assert_eq!(parts, [('d', chunk), ('d', chunk), ('d', 15)]);
        // Sparse: the zero chunks after the first merge into one hole.
        let (_, parts) = run(data.clone(), 0, false, true);
        assert_eq!(parts, [('d', chunk), ('h', chunk + 15)]);
        // A length stops early.
        let (_, parts) = run(data.clone(), 4, true, false);
        assert_eq!(parts, [('d', 4)]);
        // A file shorter than promised aborts the stream.
        let (end, parts) = run(data, size + 1, true, false);
        assert!(matches!(end, ReadEnd::Failed(_)));
        assert_eq!(parts.last(), Some(&('!', 0)));
    }

    #[test]
    fn upload_path_names_the_service() {
        use vireo_proto::storage::v1::storage_volume_service_server::SERVICE_NAME;
        assert_eq!(UPLOAD_PATH, format!("/{SERVICE_NAME}/UploadVolume"));
    }

    #[test]
    fn commands_are_well_formed() {
        use clap::CommandFactory;
        crate::Cli::command().debug_assert();
    }
}
