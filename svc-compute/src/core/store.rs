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
        let parse = |xml: &str| {
            let def = vireo_conf::domain::parse(xml).ok()?;
            vireo_conf::domain::validate(&def).ok()?;
            Some(def)
        };
        let mut stored: Vec<Stored> = self
            .0
            .load_checked("domain", parse, |def| &def.uuid)?
            .into_iter()
            .map(|(definition, autostart)| Stored {
                autostart,
                definition,
            })
            .collect();
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
