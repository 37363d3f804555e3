//! Disk pools: a whole block device with a partition table; each partition is a volume. Tables
//! are written with parted, and partx tells the kernel (which does not re-read tables itself on
//! every host) about each new or removed partition. On GPT a volume's name is the partition's
//! name, so users pick names as on any pool; a partition being created carries a hidden name.

use std::path::Path;

use vireo_proto::storage::v1 as pb;

use super::Space;
use crate::core::tool::{ToolError, args, run};
use crate::error::{Error, Result};

/// Partitions start on 1 MiB boundaries, as every current partitioning tool does.
const ALIGN: u64 = 1 << 20;
const PARTIAL_PREFIX: &str = ".vireo-partial-";

pub fn device(def: &pb::PoolDefinition) -> String {
    def.source
        .as_ref()
        .and_then(|s| s.devices.first())
        .map(|d| d.path.clone())
        .unwrap_or_default()
}

/// The partition table the definition asks for; None ("unknown") takes whatever the disk has
/// when starting, and a DOS table when building.
fn wanted_label(def: &pb::PoolDefinition) -> Option<&'static str> {
    let format = def.source.as_ref().map(|s| s.format()).unwrap_or_default();
    (format != pb::PoolSourceFormat::Unspecified).then(|| label_name(format))
}

fn label_name(format: pb::PoolSourceFormat) -> &'static str {
    match format {
        pb::PoolSourceFormat::Gpt => "gpt",
        pb::PoolSourceFormat::Mac => "mac",
        pb::PoolSourceFormat::Bsd => "bsd",
        pb::PoolSourceFormat::Pc98 => "pc98",
        pb::PoolSourceFormat::Sun => "sun",
        pb::PoolSourceFormat::Dvh => "dvh",
        _ => "msdos",
    }
}

/// A partition as parted reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    pub number: u32,
    pub start: u64,
    pub end: u64,
    pub filesystem: String,
    pub name: String,
    pub flags: String,
}

/// What `parted -m print free` says about a device.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub size: u64,
    pub label: String,
    pub partitions: Vec<Partition>,
    /// Free regions [start, end].
    pub free: Vec<(u64, u64)>,
}

fn number(field: &str) -> u64 {
    field.trim_end_matches('B').parse().unwrap_or(0)
}

/// Reads parted's machine output: "BYT;", the device line, then one line per region.
fn parse_table(text: &str) -> Table {
    let mut table = Table::default();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim().trim_end_matches(';');
        let fields: Vec<&str> = line.split(':').collect();
        if index == 1 && fields.len() >= 6 {
            table.size = number(fields[1]);
            table.label = fields[5].to_string();
            continue;
        }
        if index < 2 || fields.len() < 5 {
            continue;
        }
        let (start, end) = (number(fields[1]), number(fields[2]));
        if fields[4] == "free" {
            table.free.push((start, end));
        } else if let Ok(number) = fields[0].parse() {
            table.partitions.push(Partition {
                number,
                start,
                end,
                filesystem: fields[4].to_string(),
                name: fields.get(5).unwrap_or(&"").to_string(),
                flags: fields.get(6).unwrap_or(&"").to_string(),
            });
        }
    }
    table
}

pub async fn read_table(device: &str) -> std::result::Result<Table, ToolError> {
    let text = run(
        "parted",
        &args(["-m", "-s", device, "unit", "B", "print", "free"]),
    )
    .await?;
    Ok(parse_table(&text))
}

/// The device node of partition `number`: `sdb1`, but `loop0p1` and `nvme0n1p1`.
pub fn partition_path(device: &str, number: u32, separator: Option<bool>) -> String {
    let ends_in_digit = device.ends_with(|c: char| c.is_ascii_digit());
    if separator.unwrap_or(ends_in_digit) {
        format!("{device}p{number}")
    } else {
        format!("{device}{number}")
    }
}

fn separator(def: &pb::PoolDefinition) -> Option<bool> {
    def.source
        .as_ref()
        .and_then(|s| s.devices.first())
        .and_then(|d| d.part_separator)
}

/// pool-build: writes a new, empty partition table. Without --overwrite a device that already
/// has one is refused: the user may not know it holds data.
pub async fn build(def: &pb::PoolDefinition, mode: pb::PoolBuildMode) -> Result<()> {
    let device = device(def);
    if mode != pb::PoolBuildMode::Overwrite
        && let Ok(table) = read_table(&device).await
        && !table.label.is_empty()
        && table.label != "unknown"
    {
        return Err(Error::State(format!(
            "{device} already has a {} partition table with {} partition(s); pass --overwrite to erase it",
            table.label,
            table.partitions.len()
        )));
    }
    run(
        "parted",
        &args([
            "-s",
            device.as_str(),
            "mklabel",
            wanted_label(def).unwrap_or("msdos"),
        ]),
    )
    .await?;
    // The kernel must forget the old partitions.
    let _ = run("partx", &args(["-d", device.as_str()])).await;
    Ok(())
}

/// pool-start: the device must carry the expected table; the kernel learns its partitions.
pub async fn start(def: &pb::PoolDefinition) -> Result<()> {
    let device = device(def);
    if !Path::new(&device).exists() {
        return Err(Error::State(format!(
            "the source device {device} does not exist"
        )));
    }
    let table = read_table(&device).await?;
    match wanted_label(def) {
        _ if table.label.is_empty() || table.label == "unknown" => {
            return Err(Error::State(format!(
                "{device} has no partition table; run pool-build"
            )));
        }
        Some(wanted) if table.label != wanted => {
            return Err(Error::State(format!(
                "{device} has a '{}' partition table, not '{wanted}'; run pool-build --overwrite",
                table.label
            )));
        }
        _ => {}
    }
    check_partition_scanning(&device)?;
    sync_kernel(&device).await?;
    Ok(())
}

/// Makes the kernel's view of the partitions match the table (parted tells the kernel itself
/// where it can; partx -u adds and removes whatever is still different).
async fn sync_kernel(device: &str) -> std::result::Result<(), ToolError> {
    match run("partx", &args(["-u", device])).await {
        // An empty table: partx has no range to update, and nothing is out of date.
        Err(err) if err.0.contains("does not make sense") => Ok(()),
        other => other.map(|_| ()),
    }
}

/// A loop device reports partitions only when attached with partition scanning (losetup -P).
fn check_partition_scanning(device: &str) -> Result<()> {
    let name = device.rsplit('/').next().unwrap_or("");
    let flag = format!("/sys/block/{name}/loop/partscan");
    match std::fs::read_to_string(&flag) {
        Ok(value) if value.trim() == "0" => Err(Error::State(format!(
            "{device} is a loop device without partition scanning; attach it with losetup -P"
        ))),
        _ => Ok(()),
    }
}

pub async fn remove_partials(def: &pb::PoolDefinition) {
    let device = device(def);
    let Ok(table) = read_table(&device).await else {
        return;
    };
    for partition in &table.partitions {
        if partition.name.starts_with(PARTIAL_PREFIX) {
            tracing::warn!(
                device,
                partition = partition.number,
                "removing a partition whose creation was cut short"
            );
            let _ = remove_partition(&device, partition.number).await;
        }
    }
}

/// pool-delete: erases the partition table; refused while it still has partitions.
pub async fn delete(def: &pb::PoolDefinition, pool: &str) -> Result<()> {
    let device = device(def);
    let Ok(table) = read_table(&device).await else {
        // No table parted can read: nothing of the pool's is left to delete.
        return Ok(());
    };
    if !table.partitions.is_empty() {
        return Err(Error::State(format!(
            "pool '{pool}' still holds {} volume(s) on {device}; delete them first",
            table.partitions.len()
        )));
    }
    run("wipefs", &args(["-a", "-q", device.as_str()])).await?;
    Ok(())
}

fn partition_type(partition: &Partition) -> pb::PartitionType {
    let flags = partition.flags.as_str();
    if flags.contains("lvm") {
        pb::PartitionType::LinuxLvm
    } else if flags.contains("raid") {
        pb::PartitionType::LinuxRaid
    } else if partition.filesystem.starts_with("linux-swap") || flags.contains("swap") {
        pb::PartitionType::LinuxSwap
    } else if partition.filesystem == "fat16" {
        pb::PartitionType::Fat16
    } else if partition.filesystem == "fat32" {
        pb::PartitionType::Fat32
    } else if partition.filesystem.is_empty() {
        pb::PartitionType::None
    } else {
        pb::PartitionType::Linux
    }
}

/// The volume name of a partition: its GPT name, or its device name where tables have no names.
fn volume_name(device: &str, partition: &Partition, separator: Option<bool>) -> String {
    if partition.name.is_empty() {
        partition_path(device, partition.number, separator)
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string()
    } else {
        partition.name.clone()
    }
}

/// The pool's space and volumes, from one read of the table.
pub async fn refresh(def: &pb::PoolDefinition) -> Result<(Space, Vec<pb::VolumeDefinition>)> {
    let device = device(def);
    let table = read_table(&device).await?;
    let free: u64 = table.free.iter().map(|(s, e)| e + 1 - s).sum();
    let space = Space {
        capacity: table.size,
        allocation: table.size.saturating_sub(free),
        available: free,
    };
    let volumes = table
        .partitions
        .iter()
        .filter(|p| !p.name.starts_with(PARTIAL_PREFIX))
        .map(|partition| {
            let path = partition_path(&device, partition.number, separator(def));
            let size = partition.end + 1 - partition.start;
            let mut volume = pb::VolumeDefinition {
                name: volume_name(&device, partition, separator(def)),
                key: path.clone(),
                capacity_bytes: size,
                allocation_bytes: Some(size),
                physical_bytes: size,
                source_devices: vec![pb::VolumeSourceDevice {
                    path: device.clone(),
                    extents: vec![pb::Extent {
                        start_bytes: partition.start,
                        end_bytes: partition.end + 1,
                    }],
                }],
                target: Some(pb::VolumeTarget {
                    path,
                    format: Some(pb::volume_target::Format::PartitionType(
                        partition_type(partition) as i32,
                    )),
                    ..Default::default()
                }),
                ..Default::default()
            };
            volume.set_type(pb::VolumeType::Block);
            volume
        })
        .collect();
    Ok((space, volumes))
}

/// The first free region that holds `size` bytes from a 1 MiB boundary: [start, end].
fn place(table: &Table, size: u64) -> Option<(u64, u64)> {
    table.free.iter().find_map(|&(start, end)| {
        let aligned = start.div_ceil(ALIGN).max(1) * ALIGN;
        let last = aligned.checked_add(size)? - 1;
        (last <= end).then_some((aligned, last))
    })
}

/// Creates a partition for `volume`; returns its device path once the kernel knows it.
pub async fn create(def: &pb::PoolDefinition, volume: &pb::VolumeDefinition) -> Result<String> {
    let device = device(def);
    let table = read_table(&device).await?;
    let gpt = table.label == "gpt";
    let size = volume.capacity_bytes;
    let (start, end) = place(&table, size).ok_or_else(|| {
        let largest = table.free.iter().map(|(s, e)| e + 1 - s).max().unwrap_or(0);
        Error::State(format!(
            "no free region of {size} bytes on {device}; the largest is {largest} bytes"
        ))
    })?;
    let expected = table.partitions.iter().map(|p| p.number).max().unwrap_or(0) + 1;
    if !gpt {
        let name = volume_name(
            &device,
            &Partition {
                number: expected,
                start,
                end,
                filesystem: String::new(),
                name: String::new(),
                flags: String::new(),
            },
            separator(def),
        );
        if volume.name != name {
            return Err(Error::field(
                "volume/name",
                format!(
                    "partitions on a {} table have no names: the new volume must be named '{name}'",
                    table.label
                ),
            ));
        }
    }
    let first = if gpt {
        format!("{PARTIAL_PREFIX}{}", volume.name)
    } else {
        "primary".to_string()
    };
    let mut argv = args(["-s", device.as_str(), "unit", "B", "mkpart", first.as_str()]);
    let partition_type = match &volume.target.as_ref().and_then(|t| t.format) {
        Some(pb::volume_target::Format::PartitionType(value)) => {
            pb::PartitionType::try_from(*value).unwrap_or_default()
        }
        _ => pb::PartitionType::None,
    };
    match partition_type {
        pb::PartitionType::LinuxSwap => argv.push("linux-swap".into()),
        pb::PartitionType::Fat16 => argv.push("fat16".into()),
        pb::PartitionType::Fat32 => argv.push("fat32".into()),
        pb::PartitionType::Linux => argv.push("ext2".into()),
        _ => {}
    }
    argv.push(format!("{start}B"));
    argv.push(format!("{end}B"));
    run("parted", &argv).await?;
    let after = read_table(&device).await?;
    let created = after
        .partitions
        .iter()
        .find(|p| p.start == start)
        .map(|p| p.number)
        .ok_or_else(|| {
            Error::State(format!(
                "parted made no partition at byte {start} of {device}"
            ))
        })?;
    let flag = match partition_type {
        pb::PartitionType::LinuxLvm => Some("lvm"),
        pb::PartitionType::LinuxRaid => Some("raid"),
        _ => None,
    };
    let number_text = created.to_string();
    let finish = async {
        if let Some(flag) = flag {
            run(
                "parted",
                &args(["-s", device.as_str(), "set", &number_text, flag, "on"]),
            )
            .await?;
        }
        sync_kernel(&device).await
    };
    if let Err(err) = finish.await {
        let _ = remove_partition(&device, created).await;
        return Err(err.into());
    }
    Ok(partition_path(&device, created, separator(def)))
}

/// Gives a finished partition its real name (GPT only).
pub async fn finish(def: &pb::PoolDefinition, path: &str, name: &str) -> Result<()> {
    let device = device(def);
    let table = read_table(&device).await?;
    if table.label != "gpt" {
        return Ok(());
    }
    let number = number_of(def, &table, path)?;
    run(
        "parted",
        &args(["-s", device.as_str(), "name", &number.to_string(), name]),
    )
    .await?;
    Ok(())
}

fn number_of(def: &pb::PoolDefinition, table: &Table, path: &str) -> Result<u32> {
    let device = device(def);
    table
        .partitions
        .iter()
        .find(|p| partition_path(&device, p.number, separator(def)) == path)
        .map(|p| p.number)
        .ok_or_else(|| Error::NotFound(format!("no partition {path} on {device}")))
}

async fn remove_partition(device: &str, number: u32) -> std::result::Result<(), ToolError> {
    let number = number.to_string();
    run("parted", &args(["-s", device, "rm", number.as_str()])).await?;
    sync_kernel(device).await
}

/// Removes the partition at `path`.
pub async fn delete_volume(def: &pb::PoolDefinition, path: &str) -> Result<()> {
    let device = device(def);
    let table = read_table(&device).await?;
    let number = number_of(def, &table, path)?;
    remove_partition(&device, number).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parted_machine_output_is_read() {
        let text = "BYT;\n/dev/loop3:67108864B:loopback:512:512:gpt:Loopback device:;\n\
                    1:17408B:1048575B:1031168B:free;\n\
                    1:1048576B:9437183B:8388608B::volume1:;\n\
                    2:9437184B:17825791B:8388608B::.vireo-partial-v2:lvm;\n\
                    1:17825792B:67091967B:49266176B:free;\n";
        let table = parse_table(text);
        assert_eq!(table.size, 64 << 20);
        assert_eq!(table.label, "gpt");
        assert_eq!(table.partitions.len(), 2);
        assert_eq!(table.partitions[0].name, "volume1");
        assert_eq!(
            partition_type(&table.partitions[1]),
            pb::PartitionType::LinuxLvm
        );
        assert_eq!(table.free.len(), 2);
        assert_eq!(place(&table, 8 << 20), Some((17 << 20, (25 << 20) - 1)));
        assert_eq!(place(&table, 1 << 30), None);
    }

    #[test]
    fn partition_nodes_are_named_like_the_kernel() {
        assert_eq!(partition_path("/dev/sdb", 1, None), "/dev/sdb1");
        assert_eq!(partition_path("/dev/loop0", 2, None), "/dev/loop0p2");
        assert_eq!(partition_path("/dev/nvme0n1", 1, None), "/dev/nvme0n1p1");
    }
}
