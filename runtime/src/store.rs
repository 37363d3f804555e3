//! Crash-safe persistent definitions, shared by every service that keeps libvirt XML objects
//! (domains, pools, networks): one file per object named by its UUID, written to a temporary
//! name, flushed, renamed over the old one and the directory flushed, so a kill at any moment
//! leaves the old definition or the new one, never a torn file. Autostart is a marker file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` so that a crash leaves either the old or the new file.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    temp.write_all(contents)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|err| err.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Definitions in `<dir>/<kind>/<uuid>.xml`, autostart markers in `<dir>/autostart/<uuid>`.
pub struct DefinitionStore {
    definitions: PathBuf,
    autostart: PathBuf,
}

/// A definition file read back at start-up, not yet parsed.
pub struct StoredText {
    pub uuid: String,
    pub path: PathBuf,
    pub xml: String,
    pub autostart: bool,
}

impl DefinitionStore {
    /// `kind` names the sub-directory (`domains`, `pools`, ...).
    pub fn open(state_dir: &Path, kind: &str) -> std::io::Result<DefinitionStore> {
        let store = DefinitionStore {
            definitions: state_dir.join(kind),
            autostart: state_dir.join("autostart"),
        };
        std::fs::create_dir_all(&store.definitions)?;
        std::fs::create_dir_all(&store.autostart)?;
        Ok(store)
    }

    fn file(&self, uuid: &str) -> PathBuf {
        self.definitions.join(format!("{uuid}.xml"))
    }

    /// Every stored definition's text. Left-over temporary files (a write cut short) are removed.
    pub fn load(&self) -> std::io::Result<Vec<StoredText>> {
        let mut stored = Vec::new();
        for entry in std::fs::read_dir(&self.definitions)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(uuid) = name.strip_suffix(".xml") else {
                continue;
            };
            stored.push(StoredText {
                uuid: uuid.to_string(),
                xml: std::fs::read_to_string(&path)?,
                autostart: self.autostart.join(uuid).exists(),
                path,
            });
        }
        Ok(stored)
    }

    /// Every stored definition that `parse` accepts and that names the UUID it is stored under,
    /// with its autostart flag; any other file is quarantined (kept for a human as `.bad`).
    pub fn load_checked<T>(
        &self,
        kind: &str,
        parse: impl Fn(&str) -> Option<T>,
        uuid_of: impl Fn(&T) -> &str,
    ) -> std::io::Result<Vec<(T, bool)>> {
        let mut loaded = Vec::new();
        for stored in self.load()? {
            match parse(&stored.xml) {
                Some(def) if uuid_of(&def) == stored.uuid => loaded.push((def, stored.autostart)),
                _ => self.quarantine(&stored, kind),
            }
        }
        Ok(loaded)
    }

    /// Keeps a file that does not parse (renamed `.bad`) for a human, never deletes it.
    pub fn quarantine(&self, stored: &StoredText, kind: &str) {
        tracing::error!(file = %stored.path.display(), "{kind} definition does not parse or names another UUID; kept as .bad");
        let _ = std::fs::rename(&stored.path, stored.path.with_extension("xml.bad"));
    }

    pub fn save(&self, uuid: &str, xml: &str) -> std::io::Result<()> {
        write_atomically(&self.file(uuid), xml.as_bytes())
    }

    pub fn remove(&self, uuid: &str) -> std::io::Result<()> {
        let _ = std::fs::remove_file(self.autostart.join(uuid));
        match std::fs::remove_file(self.file(uuid)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
            _ => std::fs::File::open(&self.definitions)?.sync_all(),
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
