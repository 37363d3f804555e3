//! Snapshot metadata, kept per domain under the state directory: one JSON record per snapshot
//! (written crash-safe, like definitions), a vireo-vmm machine-state file for vmm snapshots of a
//! running guest, and a `current` marker. Disk state lives inside the qcow2 images (internal
//! snapshots, by the same name); QEMU keeps its memory state there too (savevm).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::store::write_atomically;

/// Where a snapshot keeps the guest's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Memory {
    /// Taken while shut off: disks and definition only.
    None,
    /// A vireo-vmm machine-state file beside the record.
    VmmState,
    /// QEMU's savevm state inside the qcow2 disks.
    QemuInternal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub description: String,
    pub parent: String,
    pub created_unix_s: i64,
    /// DomainState when taken.
    pub state: i32,
    pub memory: Memory,
    /// The domain's definition when taken (libvirt XML).
    pub domain_xml: String,
    /// Writable qcow2 disks holding an internal snapshot of this name.
    pub qcow2_disks: Vec<String>,
    /// The running definition (with its tap names) for a vireo-vmm machine state, which
    /// reopens the same host ends when it is restored.
    #[serde(default)]
    pub live_xml: String,
}

pub struct SnapshotStore {
    root: PathBuf,
}

impl SnapshotStore {
    pub fn new(state_dir: &Path) -> SnapshotStore {
        SnapshotStore {
            root: state_dir.join("snapshots"),
        }
    }

    fn dir(&self, uuid: &str) -> PathBuf {
        self.root.join(uuid)
    }

    pub fn memory_file(&self, uuid: &str, name: &str) -> PathBuf {
        self.dir(uuid).join(format!("{name}.vmstate"))
    }

    pub fn list(&self, uuid: &str) -> Vec<Record> {
        let mut records: Vec<Record> = std::fs::read_dir(self.dir(uuid))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect();
        records.sort_by_key(|r| (r.created_unix_s, r.name.clone()));
        records
    }

    pub fn get(&self, uuid: &str, name: &str) -> Option<Record> {
        serde_json::from_slice(&std::fs::read(self.dir(uuid).join(format!("{name}.json"))).ok()?)
            .ok()
    }

    pub fn save(&self, uuid: &str, record: &Record) -> std::io::Result<()> {
        std::fs::create_dir_all(self.dir(uuid))?;
        let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        write_atomically(
            &self.dir(uuid).join(format!("{}.json", record.name)),
            &bytes,
        )
    }

    pub fn remove(&self, uuid: &str, name: &str) -> std::io::Result<()> {
        let _ = std::fs::remove_file(self.memory_file(uuid, name));
        std::fs::remove_file(self.dir(uuid).join(format!("{name}.json")))?;
        if self.current(uuid).as_deref() == Some(name) {
            let _ = std::fs::remove_file(self.dir(uuid).join("current"));
        }
        Ok(())
    }

    pub fn current(&self, uuid: &str) -> Option<String> {
        std::fs::read_to_string(self.dir(uuid).join("current"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    pub fn set_current(&self, uuid: &str, name: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(self.dir(uuid))?;
        write_atomically(&self.dir(uuid).join("current"), name.as_bytes())
    }

    /// Whether the domain has any snapshot (undefine refuses then, as libvirt does).
    pub fn any(&self, uuid: &str) -> bool {
        !self.list(uuid).is_empty()
    }

    pub fn remove_all(&self, uuid: &str) {
        let _ = std::fs::remove_dir_all(self.dir(uuid));
    }
}

/// Runs `qemu-img snapshot OP NAME FILE` (an image not in use by a running guest).
pub async fn qemu_img_snapshot(op: &str, name: &str, file: &str) -> Result<(), String> {
    let output = tokio::process::Command::new("qemu-img")
        .args(["snapshot", op, name, file])
        .output()
        .await
        .map_err(|err| format!("cannot run qemu-img: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "qemu-img snapshot {op} {name} {file}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
