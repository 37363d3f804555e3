//! Saved-state images this host wrote (virsh save, managedsave): a record per image in the
//! state directory, naming the domain, its engine and live definition, so that restore takes
//! only a file name. Managed images live in `<state>/managed/<uuid>.save`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::store::write_atomically;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaveRecord {
    pub file: PathBuf,
    pub uuid: String,
    /// pb::Engine of the saved guest.
    pub engine: i32,
    /// The live definition when saved (libvirt XML).
    pub domain_xml: String,
    pub paused: bool,
    pub managed: bool,
    pub saved_unix_ms: i64,
}

pub struct SaveStore {
    records: PathBuf,
    managed: PathBuf,
}

impl SaveStore {
    pub fn new(state_dir: &Path) -> SaveStore {
        SaveStore {
            records: state_dir.join("saves"),
            managed: state_dir.join("managed"),
        }
    }

    pub fn managed_file(&self, uuid: &str) -> PathBuf {
        self.managed.join(format!("{uuid}.save"))
    }

    /// A record's file name: the image path with '/' replaced, so one image has one record.
    fn record_path(&self, file: &Path) -> PathBuf {
        let key: String = file
            .display()
            .to_string()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.records.join(format!("{key}.json"))
    }

    pub fn save(&self, record: &SaveRecord) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.records)?;
        std::fs::create_dir_all(&self.managed)?;
        let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        write_atomically(&self.record_path(&record.file), &bytes)
    }

    pub fn get(&self, file: &Path) -> Option<SaveRecord> {
        let record: SaveRecord =
            serde_json::from_slice(&std::fs::read(self.record_path(file)).ok()?).ok()?;
        (record.file == file && file.exists()).then_some(record)
    }

    pub fn managed(&self, uuid: &str) -> Option<SaveRecord> {
        self.get(&self.managed_file(uuid))
    }

    /// Forgets an image; a managed one is deleted too (a plain save file belongs to the user).
    pub fn remove(&self, record: &SaveRecord) {
        let _ = std::fs::remove_file(self.record_path(&record.file));
        if record.managed {
            let _ = std::fs::remove_file(&record.file);
        }
    }
}
