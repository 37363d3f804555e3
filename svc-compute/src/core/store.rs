//! Persistent domain definitions in vireo-runtime's crash-safe store, parsed and validated as
//! libvirt domain XML when read back.

use std::path::Path;

use vireo_proto::compute::v1 as pb;
use vireo_runtime::store::DefinitionStore;
pub use vireo_runtime::store::write_atomically;

pub struct Store(DefinitionStore);

/// A definition read back at start-up.
pub struct Stored {
    pub definition: pb::DomainDefinition,
    pub autostart: bool,
}

impl Store {
    pub fn open(state_dir: &Path) -> std::io::Result<Store> {
        DefinitionStore::open(state_dir, "domains").map(Store)
    }

    /// Every stored definition that parses; one that does not is kept aside as `.bad`.
    pub fn load(&self) -> std::io::Result<Vec<Stored>> {
        let mut stored = Vec::new();
        for text in self.0.load()? {
            match vireo_conf::domain::parse(&text.xml).and_then(|def| {
                vireo_conf::domain::validate(&def)?;
                Ok(def)
            }) {
                Ok(definition) if definition.uuid == text.uuid => stored.push(Stored {
                    autostart: text.autostart,
                    definition,
                }),
                Ok(_) | Err(_) => self.0.quarantine(&text, "domain"),
            }
        }
        stored.sort_by(|a, b| a.definition.name.cmp(&b.definition.name));
        Ok(stored)
    }

    pub fn save(&self, def: &pb::DomainDefinition) -> std::io::Result<()> {
        let xml = vireo_conf::domain::format(def, None).map_err(std::io::Error::other)?;
        self.0.save(&def.uuid, &xml)
    }

    pub fn remove(&self, uuid: &str) -> std::io::Result<()> {
        self.0.remove(uuid)
    }

    pub fn set_autostart(&self, uuid: &str, on: bool) -> std::io::Result<()> {
        self.0.set_autostart(uuid, on)
    }
}
