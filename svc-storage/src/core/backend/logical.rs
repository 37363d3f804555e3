//! Logical pools: an LVM volume group whose logical volumes are the volumes, through the
//! lvm2-cmd wrapper. An LV being created carries a tag that hides it until complete.

use vireo_proto::storage::v1 as pb;

use super::Space;
use crate::core::lvm::{Lvm, PARTIAL_TAG};
use crate::error::{Error, Result};

pub fn group(def: &pb::PoolDefinition) -> String {
    match def.source.as_ref().map(|s| s.name.as_str()) {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => def.name.clone(),
    }
}

fn devices(def: &pb::PoolDefinition) -> Vec<String> {
    def.source
        .as_ref()
        .map(|s| s.devices.iter().map(|d| d.path.clone()).collect())
        .unwrap_or_default()
}

pub async fn build(lvm: &Lvm, def: &pb::PoolDefinition, mode: pb::PoolBuildMode) -> Result<()> {
    let vg = group(def);
    let devices = devices(def);
    if devices.is_empty() {
        return Err(Error::field(
            "pool/source/device",
            "building a logical pool needs at least one source device",
        ));
    }
    if mode != pb::PoolBuildMode::Overwrite {
        let in_use: Vec<String> = lvm
            .physical_volumes()
            .await?
            .into_iter()
            .filter(|pv| devices.contains(&pv.name))
            .map(|pv| match pv.vg.as_str() {
                "" => format!("{} (an LVM physical volume)", pv.name),
                group => format!("{} (in volume group {group})", pv.name),
            })
            .collect();
        if !in_use.is_empty() {
            return Err(Error::State(format!(
                "{} already hold(s) LVM data; pass --overwrite to erase it",
                in_use.join(", ")
            )));
        }
    }
    lvm.create_group(&vg, &devices, mode == pb::PoolBuildMode::Overwrite)
        .await?;
    Ok(())
}

pub async fn start(lvm: &Lvm, def: &pb::PoolDefinition) -> Result<()> {
    let vg = group(def);
    if lvm.volume_group(&vg).await?.is_none() {
        return Err(Error::State(format!(
            "volume group '{vg}' does not exist; run pool-build"
        )));
    }
    lvm.activate(&vg, true).await?;
    Ok(())
}

pub async fn remove_partials(lvm: &Lvm, def: &pb::PoolDefinition) {
    let vg = group(def);
    for lv in lvm.logical_volumes(&vg).await.unwrap_or_default() {
        if lv.tags.iter().any(|t| t == PARTIAL_TAG) {
            tracing::warn!(
                vg,
                lv = lv.name,
                "removing a logical volume whose creation was cut short"
            );
            let _ = lvm.remove_volume(&vg, &lv.name).await;
        }
    }
}

pub async fn stop(lvm: &Lvm, def: &pb::PoolDefinition) -> Result<()> {
    lvm.activate(&group(def), false).await?;
    Ok(())
}

pub async fn delete(lvm: &Lvm, def: &pb::PoolDefinition, pool: &str) -> Result<()> {
    let vg = group(def);
    if lvm.volume_group(&vg).await?.is_none() {
        return Ok(());
    }
    let held = lvm.logical_volumes(&vg).await?;
    if !held.is_empty() {
        let names: Vec<&str> = held.iter().map(|lv| lv.name.as_str()).collect();
        return Err(Error::State(format!(
            "pool '{pool}' still holds {} volume(s) ({}); delete them first",
            names.len(),
            names.join(", ")
        )));
    }
    lvm.remove_group(&vg, &devices(def)).await?;
    Ok(())
}

pub async fn refresh(
    lvm: &Lvm,
    def: &pb::PoolDefinition,
) -> Result<(Space, Vec<pb::VolumeDefinition>)> {
    let vg = group(def);
    let info = lvm
        .volume_group(&vg)
        .await?
        .ok_or_else(|| Error::State(format!("volume group '{vg}' is gone")))?;
    let space = Space {
        capacity: info.size,
        allocation: info.size - info.free.min(info.size),
        available: info.free,
    };
    let volumes = lvm
        .logical_volumes(&vg)
        .await?
        .into_iter()
        .filter(|lv| !lv.tags.iter().any(|t| t == PARTIAL_TAG))
        .map(|lv| {
            let mut volume = pb::VolumeDefinition {
                name: lv.name,
                key: lv.uuid,
                capacity_bytes: lv.size,
                allocation_bytes: Some(lv.size),
                physical_bytes: lv.size,
                source_devices: lv
                    .devices
                    .split(',')
                    .filter_map(|d| d.split('(').next())
                    .filter(|d| !d.is_empty())
                    .map(|d| pb::VolumeSourceDevice {
                        path: d.to_string(),
                        extents: Vec::new(),
                    })
                    .collect(),
                target: Some(pb::VolumeTarget {
                    path: lv.path,
                    format: Some(pb::volume_target::Format::ImageFormat(
                        pb::VolumeFormat::Raw as i32,
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

/// Creates the LV (tagged partial) and returns its path.
pub async fn create(
    lvm: &Lvm,
    def: &pb::PoolDefinition,
    volume: &pb::VolumeDefinition,
) -> Result<String> {
    if volume
        .backing_store
        .as_ref()
        .is_some_and(|b| !b.path.is_empty())
    {
        return Err(Error::Unsupported(
            "logical pools cannot make volumes with a backing store (LVM snapshots are not supported)".into(),
        ));
    }
    let vg = group(def);
    lvm.create_volume(&vg, &volume.name, volume.capacity_bytes)
        .await?;
    let target = def
        .target
        .as_ref()
        .map(|t| t.path.clone())
        .unwrap_or_default();
    Ok(format!("{}/{}", target.trim_end_matches('/'), volume.name))
}
