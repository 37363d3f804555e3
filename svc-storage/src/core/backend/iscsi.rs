//! iSCSI pools: the LUNs of one target, logged in with the host's initiator (iscsiadm); each
//! LUN's SCSI disk is a volume. Also the discovery half of find-storage-pool-sources (sendtargets
//! through libiscsi's iscsi-ls) and, for netfs, the NFS export list (showmount).

use std::path::Path;

use vireo_proto::storage::v1 as pb;

use super::Space;
use crate::core::tool::{args, run};
use crate::error::{Error, Result};

pub const DEFAULT_PORT: u32 = 3260;

/// "host:port" of the pool's first host.
pub fn portal(source: &pb::PoolSource) -> Result<String> {
    let host = source
        .hosts
        .first()
        .ok_or_else(|| Error::field("pool/source/host", "an iSCSI source needs a host"))?;
    let port = if host.port == 0 {
        DEFAULT_PORT
    } else {
        host.port
    };
    Ok(format!("{}:{port}", host.name))
}

fn target_iqn(def: &pb::PoolDefinition) -> String {
    def.source
        .as_ref()
        .and_then(|s| s.devices.first())
        .map(|d| d.path.clone())
        .unwrap_or_default()
}

/// Asks a portal which targets it offers (a sendtargets discovery session). libiscsi's
/// `iscsi-ls` runs it in user space, so discovery works on hosts without the kernel initiator
/// or iscsid; logging in (pool-start) is iscsiadm's.
pub async fn discover(source: &pb::PoolSource) -> Result<Vec<pb::PoolSource>> {
    let portal = portal(source)?;
    // Discovery only: `-s` would also log in to each target at the portal it advertises, which
    // the client may not reach (NAT, or tgtd on 127.0.0.1 seen through QEMU's user network).
    let mut argv: Vec<String> = Vec::new();
    if let Some(initiator) = initiator_name(source) {
        argv.push("-i".into());
        argv.push(initiator);
    }
    argv.push(format!("iscsi://{portal}"));
    let text = run("iscsi-ls", &argv).await?;
    Ok(parse_targets(&text)
        .into_iter()
        .map(|(address, iqn)| {
            let (name, port) = split_portal(&address);
            pb::PoolSource {
                hosts: vec![pb::PoolSourceHost { name, port }],
                devices: vec![pb::PoolSourceDevice {
                    path: iqn,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect())
}

/// The initiator IQN to present: the source's own, else this host's (open-iscsi's file).
fn initiator_name(source: &pb::PoolSource) -> Option<String> {
    if !source.initiator_iqn.is_empty() {
        return Some(source.initiator_iqn.clone());
    }
    std::fs::read_to_string("/etc/iscsi/initiatorname.iscsi")
        .ok()?
        .lines()
        .find_map(|line| line.trim().strip_prefix("InitiatorName="))
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
}

/// "Target:iqn.2010-05.com.example:trial Portal:127.0.0.1:3260,1" lines → (portal, IQN).
fn parse_targets(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut iqn = None;
            let mut portal = None;
            for word in line.split_whitespace() {
                if let Some(value) = word.strip_prefix("Target:") {
                    iqn = Some(value.to_string());
                } else if let Some(value) = word.strip_prefix("Portal:") {
                    portal = value.split(',').next().map(str::to_string);
                }
            }
            Some((portal?, iqn?))
        })
        .collect()
}

fn split_portal(address: &str) -> (String, u32) {
    match address.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_matches(['[', ']']).to_string(),
            port.parse().unwrap_or(DEFAULT_PORT),
        ),
        None => (address.to_string(), DEFAULT_PORT),
    }
}

/// pool-start: the target must be offered by the portal; then log in.
pub async fn start(def: &pb::PoolDefinition) -> Result<()> {
    let source = def.source.clone().unwrap_or_default();
    let iqn = target_iqn(def);
    let offered = discover(&source).await?;
    if !offered
        .iter()
        .any(|s| s.devices.first().is_some_and(|d| d.path == iqn))
    {
        return Err(Error::State(format!(
            "the portal {} does not offer target {iqn}",
            portal(&source)?
        )));
    }
    if session(&iqn).is_some() {
        return Ok(());
    }
    let portal = portal(&source)?;
    // Discovery above was not persistent; login needs a node record, created here and removed
    // on stop.
    node(&iqn, &portal, &["--op", "new"]).await?;
    if let Err(err) = node(&iqn, &portal, &["--login"]).await {
        forget_node(&iqn, &portal).await;
        return Err(err.into());
    }
    settle_luns(&iqn).await;
    Ok(())
}

/// Waits for the LUNs of a new session. The kernel scans them in the background and sd attaches
/// disks asynchronously, so a refresh right after login finds none. A write to the SCSI host's
/// `scan` (what `iscsiadm --rescan` does) returns once that scan is done; then each disk LUN gets
/// a few seconds to show its block device.
async fn settle_luns(iqn: &str) {
    let Some(session) = session(iqn) else {
        return;
    };
    // The session's device is /sys/devices/.../hostN/sessionM.
    let host = std::fs::canonicalize(session.join("device"))
        .ok()
        .and_then(|device| Some(device.parent()?.file_name()?.to_string_lossy().into_owned()))
        .filter(|name| name.starts_with("host"));
    if let Some(host) = host {
        let scan = Path::new("/sys/class/scsi_host").join(host).join("scan");
        let _ = tokio::task::spawn_blocking(move || std::fs::write(scan, "- - -")).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline
        && !lun_dirs(&session).iter().all(|lun| {
            // SCSI peripheral type 0 is a disk; others (tgt's LUN 0 controller) get no block device.
            let disk = std::fs::read_to_string(lun.join("type")).is_ok_and(|t| t.trim() == "0");
            !disk || block_device(lun).is_some()
        })
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The SCSI devices (H:C:T:L directories) under a session's targets.
fn lun_dirs(session: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for target in std::fs::read_dir(session.join("device"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if !target.file_name().to_string_lossy().starts_with("target") {
            continue;
        }
        found.extend(
            std::fs::read_dir(target.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|lun| lun.file_name().to_string_lossy().contains(':'))
                .map(|lun| lun.path()),
        );
    }
    found
}

/// The block device (`sdX`) of a SCSI device, once sd has attached it.
fn block_device(lun: &Path) -> Option<String> {
    std::fs::read_dir(lun.join("block"))
        .ok()?
        .next()?
        .ok()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
}

/// iscsiadm on the node record of one target at one portal.
async fn node(
    iqn: &str,
    portal: &str,
    operation: &[&str],
) -> std::result::Result<String, crate::core::tool::ToolError> {
    let mut argv = args(["--mode", "node", "--targetname", iqn, "--portal", portal]);
    argv.extend(operation.iter().map(|word| word.to_string()));
    run("iscsiadm", &argv).await
}

async fn forget_node(iqn: &str, portal: &str) {
    let _ = node(iqn, portal, &["--op", "delete"]).await;
}

pub async fn stop(def: &pb::PoolDefinition) -> Result<()> {
    let source = def.source.clone().unwrap_or_default();
    let iqn = target_iqn(def);
    let portal = portal(&source)?;
    if session(&iqn).is_some() {
        node(&iqn, &portal, &["--logout"]).await?;
    }
    forget_node(&iqn, &portal).await;
    Ok(())
}

/// The sysfs directory of the kernel's session with target `iqn`, if logged in.
fn session(iqn: &str) -> Option<std::path::PathBuf> {
    let sessions = std::fs::read_dir("/sys/class/iscsi_session").ok()?;
    sessions.flatten().map(|e| e.path()).find(|path| {
        std::fs::read_to_string(path.join("targetname")).is_ok_and(|name| name.trim() == iqn)
    })
}

pub fn is_active(def: &pb::PoolDefinition) -> bool {
    session(&target_iqn(def)).is_some()
}

/// The session's LUNs: each SCSI device under the session with a block device.
pub fn refresh(def: &pb::PoolDefinition) -> Result<(Space, Vec<pb::VolumeDefinition>)> {
    let iqn = target_iqn(def);
    let session = session(&iqn).ok_or_else(|| {
        Error::State(format!(
            "no iSCSI session with {iqn}: the pool is not logged in"
        ))
    })?;
    let portal = portal(&def.source.clone().unwrap_or_default())?;
    let mut volumes = Vec::new();
    for lun in lun_dirs(&session) {
        let hctl = lun
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(lun_number) = hctl.rsplit(':').next().and_then(|l| l.parse::<u32>().ok()) else {
            continue;
        };
        let Some(block) = block_device(&lun) else {
            continue;
        };
        let sectors: u64 = std::fs::read_to_string(format!("/sys/block/{block}/size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let by_path = format!("/dev/disk/by-path/ip-{portal}-iscsi-{iqn}-lun-{lun_number}");
        let path = if Path::new(&by_path).exists() {
            by_path.clone()
        } else {
            format!("/dev/{block}")
        };
        let mut volume = pb::VolumeDefinition {
            name: format!("unit:0:0:{lun_number}"),
            key: by_path,
            capacity_bytes: sectors * 512,
            allocation_bytes: Some(sectors * 512),
            physical_bytes: sectors * 512,
            target: Some(pb::VolumeTarget {
                path,
                format: Some(pb::volume_target::Format::ImageFormat(
                    pb::VolumeFormat::Raw as i32,
                )),
                ..Default::default()
            }),
            ..Default::default()
        };
        volume.set_type(pb::VolumeType::Block);
        volumes.push(volume);
    }
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    let capacity = volumes.iter().map(|v| v.capacity_bytes).sum();
    Ok((
        Space {
            capacity,
            allocation: capacity,
            available: 0,
        },
        volumes,
    ))
}

/// The exports an NFS server offers (showmount), as netfs sources.
pub async fn nfs_exports(source: &pb::PoolSource) -> Result<Vec<pb::PoolSource>> {
    let host = source
        .hosts
        .first()
        .ok_or_else(|| Error::field("source/host", "finding NFS exports needs a host"))?;
    let text = run(
        "showmount",
        &args(["--no-headers", "--exports", host.name.as_str()]),
    )
    .await?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(|dir| {
            let mut found = pb::PoolSource {
                hosts: vec![pb::PoolSourceHost {
                    name: host.name.clone(),
                    port: 0,
                }],
                dir_path: dir.to_string(),
                ..Default::default()
            };
            found.set_format(pb::PoolSourceFormat::Nfs);
            found
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovered_targets_are_read() {
        let found = parse_targets(
            "Target:iqn.2010-05.com.example.server1:trial1 Portal:127.0.0.1:3260,1\n\
             Lun:1    Type:DIRECT_ACCESS (Size:63M)\n\
             Target:iqn.x:y Portal:[::1]:3261,1\n",
        );
        assert_eq!(
            found[0],
            (
                "127.0.0.1:3260".into(),
                "iqn.2010-05.com.example.server1:trial1".into()
            )
        );
        assert_eq!(split_portal(&found[1].0), ("::1".into(), 3261));
    }
}
