//! Persistent domain definitions, crash-safe: each is one libvirt XML file written to a
//! temporary name, flushed, renamed over the old one and the directory flushed, so a kill at any
//! moment leaves the old definition or the new one, never a torn file. Autostart is a marker file.

use std::io::Write;
use std::path::{Path, PathBuf};

use vireo_proto::compute::v1 as pb;

pub struct Store {
    domains: PathBuf,
    autostart: PathBuf,
}

/// A definition read back at start-up.
pub struct Stored {
    pub definition: pb::DomainDefinition,
    pub autostart: bool,
}

/// Writes `contents` to `path` so that a crash leaves either the old or the new file.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    temp.write_all(contents)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|err| err.error)?;
    std::fs::File::open(dir)?.sync_all()
}

impl Store {
    pub fn open(state_dir: &Path) -> std::io::Result<Store> {
        let store = Store {
            domains: state_dir.join("domains"),
            autostart: state_dir.join("autostart"),
        };
        std::fs::create_dir_all(&store.domains)?;
        std::fs::create_dir_all(&store.autostart)?;
        Ok(store)
    }

    fn file(&self, uuid: &str) -> PathBuf {
        self.domains.join(format!("{uuid}.xml"))
    }

    /// Every stored definition. Left-over temporary files (a write cut short) are removed; a
    /// file that does not parse is kept, renamed `.bad`, and reported, never deleted.
    pub fn load(&self) -> std::io::Result<Vec<Stored>> {
        let mut stored = Vec::new();
        for entry in std::fs::read_dir(&self.domains)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(uuid) = name.strip_suffix(".xml") else {
                continue;
            };
            let text = std::fs::read_to_string(&path)?;
            match vireo_conf::domain::parse(&text).and_then(|def| {
                vireo_conf::domain::validate(&def)?;
                Ok(def)
            }) {
                Ok(definition) if definition.uuid == uuid => stored.push(Stored {
                    autostart: self.autostart.join(uuid).exists(),
                    definition,
                }),
                Ok(_) | Err(_) => {
                    tracing::error!(file = %path.display(), "domain definition does not parse or names another UUID; kept as .bad");
                    let _ = std::fs::rename(&path, path.with_extension("xml.bad"));
                }
            }
        }
        stored.sort_by(|a, b| a.definition.name.cmp(&b.definition.name));
        Ok(stored)
    }

    pub fn save(&self, def: &pb::DomainDefinition) -> std::io::Result<()> {
        let xml = vireo_conf::domain::format(def, None).map_err(std::io::Error::other)?;
        write_atomically(&self.file(&def.uuid), xml.as_bytes())
    }

    pub fn remove(&self, uuid: &str) -> std::io::Result<()> {
        let _ = std::fs::remove_file(self.autostart.join(uuid));
        match std::fs::remove_file(self.file(uuid)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
            _ => std::fs::File::open(&self.domains)?.sync_all(),
        }
    }

    pub fn set_autostart(&self, uuid: &str, on: bool) -> std::io::Result<()> {
        let marker = self.autostart.join(uuid);
        if on {
            write_atomically(&marker, b"")
        } else {
            match std::fs::remove_file(marker) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            }
        }
    }
}
