//! The pool table: definitions (persistent in the crash-safe store, or transient), which pools
//! are active (recorded in the run directory so a restarted service finds them again), their
//! space and volumes as last refreshed, and the lifecycle libvirt gives pools: define, build,
//! start, destroy, delete, undefine, refresh, autostart. Events go to watchers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, broadcast};
use vireo_proto::common::v1::{ObjectRef, object_ref};
use vireo_proto::storage::v1 as pb;
use vireo_runtime::store::{DefinitionStore, write_atomically};

use super::backend::{Backends, Space};
use super::lvm::Lvm;
use super::usage::Usage;
use crate::error::{Error, Result};

/// Settings of the `[storage]` section of the config file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the `default` pool lives (a fresh host gets it, as with libvirt).
    pub default_pool_path: Option<PathBuf>,
    /// Extra lvm `--config` text, e.g. a devices filter.
    #[serde(default)]
    pub lvm_config: String,
}

pub(crate) struct Entry {
    /// The definition the pool runs with (or will start with when inactive).
    pub def: pb::PoolDefinition,
    /// A persistent definition saved while active, taking effect at the next start.
    pub next: Option<pb::PoolDefinition>,
    pub persistent: bool,
    pub autostart: bool,
    pub active: bool,
    pub space: Space,
    pub volumes: BTreeMap<String, pb::VolumeDefinition>,
    /// A lifecycle operation (build, start, ...) running on the pool.
    pub transition: Option<&'static str>,
}

impl Entry {
    pub fn state(&self) -> pb::PoolState {
        match (self.transition, self.active) {
            (Some("building"), _) => pb::PoolState::Building,
            (_, true) => pb::PoolState::Running,
            (_, false) => pb::PoolState::Inactive,
        }
    }

    pub fn info(&self) -> pb::PoolInfo {
        let mut info = pb::PoolInfo {
            name: self.def.name.clone(),
            uuid: self.def.uuid.clone(),
            persistent: self.persistent,
            autostart: self.autostart,
            ..Default::default()
        };
        info.set_type(self.def.r#type());
        info.set_state(self.state());
        if self.active {
            info.capacity_bytes = self.space.capacity;
            info.allocation_bytes = self.space.allocation;
            info.available_bytes = self.space.available;
        }
        info
    }

    /// The definition with its runtime figures, as dumpxml shows it.
    pub fn shown(&self, inactive: bool) -> pb::PoolDefinition {
        let mut def = match (&self.next, inactive) {
            (Some(next), true) => next.clone(),
            _ => self.def.clone(),
        };
        if self.active && !inactive {
            def.capacity_bytes = self.space.capacity;
            def.allocation_bytes = self.space.allocation;
            def.available_bytes = self.space.available;
        }
        def
    }

    fn busy_message(&self, marks: &Marks) -> Option<String> {
        if let Some(what) = self.transition {
            return Some(format!("pool '{}' is busy ({what})", self.def.name));
        }
        let names: Vec<String> = marks
            .iter()
            .filter(|((pool, _), _)| *pool == self.def.uuid)
            .map(|((_, name), what)| format!("{what} of {name}"))
            .collect();
        (!names.is_empty()).then(|| {
            format!(
                "pool '{}' has volume operations in progress ({})",
                self.def.name,
                names.join(", ")
            )
        })
    }
}

/// Volumes with an operation in progress, by (pool UUID, volume name): what the operation is.
/// A name being created is reserved here before anything exists on disk.
pub(crate) type Marks = BTreeMap<(String, String), &'static str>;

pub(crate) struct Table {
    pub pools: Vec<Entry>,
}

impl Table {
    pub fn find(&self, pool: &ObjectRef) -> Result<usize> {
        let (text, by_uuid) = match &pool.key {
            Some(object_ref::Key::Name(name)) => (name.as_str(), false),
            Some(object_ref::Key::Uuid(uuid)) => (uuid.as_str(), true),
            Some(object_ref::Key::Any(any)) => (any.as_str(), false),
            Some(object_ref::Key::Id(_)) | None => {
                return Err(Error::field("pool", "name a pool by name or UUID"));
            }
        };
        let any = matches!(pool.key, Some(object_ref::Key::Any(_)));
        self.pools
            .iter()
            .position(|e| {
                (!by_uuid && e.def.name == text)
                    || ((by_uuid || any) && e.def.uuid.eq_ignore_ascii_case(text))
            })
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no storage pool with matching {} '{text}'",
                    if by_uuid { "uuid" } else { "name" }
                ))
            })
    }

    pub fn find_name(&self, name: &str) -> Result<usize> {
        self.find(&ObjectRef {
            key: Some(object_ref::Key::Any(name.to_string())),
        })
    }
}

pub struct Manager {
    pub(crate) table: Mutex<Table>,
    /// Kept outside the table so that a finished operation clears its mark without awaiting.
    pub(crate) marks: Arc<std::sync::Mutex<Marks>>,
    store: DefinitionStore,
    /// `<run>/storage/active/<uuid>.xml`: the running definition of each active pool.
    active_dir: PathBuf,
    pub(crate) backends: Backends,
    pub(crate) usage: Usage,
    events: broadcast::Sender<pb::StorageEvent>,
    seq: AtomicU64,
}

fn pool_ref(name: &str) -> ObjectRef {
    ObjectRef {
        key: Some(object_ref::Key::Name(name.to_string())),
    }
}

fn parse_checked(xml: &str) -> Result<pb::PoolDefinition> {
    let mut def = vireo_conf::pool::parse(xml)?;
    vireo_conf::pool::fill_defaults(&mut def);
    vireo_conf::pool::validate(&def)?;
    Ok(def)
}

impl Manager {
    pub async fn open(
        state_dir: &Path,
        run_dir: &Path,
        settings: Settings,
    ) -> Result<Arc<Manager>> {
        let store =
            DefinitionStore::open(state_dir, "pools").map_err(Error::io("pool definitions"))?;
        let active_dir = run_dir.join("storage").join("active");
        std::fs::create_dir_all(&active_dir).map_err(Error::io("the storage run directory"))?;
        let manager = Arc::new(Manager {
            table: Mutex::new(Table { pools: Vec::new() }),
            marks: Arc::new(std::sync::Mutex::new(Marks::new())),
            store,
            active_dir,
            backends: Backends {
                lvm: Lvm::new(&settings.lvm_config),
            },
            usage: Usage::new(run_dir.join("compute.sock")),
            events: broadcast::channel(256).0,
            seq: AtomicU64::new(0),
        });
        manager.load().await?;
        manager.ensure_default_pool(state_dir, &settings).await;
        Ok(manager)
    }

    async fn load(&self) -> Result<()> {
        let mut table = self.table.lock().await;
        let loaded = self
            .store
            .load_checked("pool", |xml| parse_checked(xml).ok(), |def| &def.uuid)
            .map_err(Error::io("reading pool definitions"))?;
        for (def, autostart) in loaded {
            table.pools.push(new_entry(def, true, autostart));
        }
        // Pools that were active when the service stopped (transient ones live only here).
        for entry in std::fs::read_dir(&self.active_dir)
            .map_err(Error::io("reading active pools"))?
            .flatten()
        {
            let path = entry.path();
            let Ok(xml) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Ok(def) = parse_checked(&xml) else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            if !self.backends.still_active(&def).await {
                tracing::info!(
                    pool = def.name,
                    "pool recorded as active is no longer; marking it inactive"
                );
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let index = match table.pools.iter().position(|e| e.def.uuid == def.uuid) {
                Some(index) => {
                    let persistent = std::mem::replace(&mut table.pools[index].def, def);
                    if persistent != table.pools[index].def {
                        table.pools[index].next = Some(persistent);
                    }
                    index
                }
                None => {
                    table.pools.push(new_entry(def, false, false));
                    table.pools.len() - 1
                }
            };
            table.pools[index].active = true;
            let def = table.pools[index].def.clone();
            self.backends.remove_partials(&def).await;
            match self.backends.refresh(&def).await {
                Ok((space, volumes)) => set_volumes(&mut table.pools[index], space, volumes),
                Err(err) => tracing::warn!(pool = def.name, %err, "refreshing a pool found active"),
            }
        }
        table.pools.sort_by(|a, b| a.def.name.cmp(&b.def.name));
        Ok(())
    }

    /// A fresh host gets the `default` directory pool, built, started and autostarted.
    async fn ensure_default_pool(&self, state_dir: &Path, settings: &Settings) {
        let marker = state_dir.join("default-pool-made");
        if marker.exists() {
            return;
        }
        let path = settings
            .default_pool_path
            .clone()
            .unwrap_or_else(|| state_dir.parent().unwrap_or(state_dir).join("images"));
        let xml = format!(
            "<pool type='dir'><name>default</name><target><path>{}</path></target></pool>",
            path.display()
        );
        let made = async {
            if self.table.lock().await.find_name("default").is_ok() {
                return Ok(());
            }
            self.define(pb::define_pool_request::Source::Xml(xml))
                .await?;
            self.build(&pool_ref("default"), pb::PoolBuildMode::Unspecified)
                .await?;
            self.set_autostart(&pool_ref("default"), true).await?;
            self.start(&pool_ref("default"), false, pb::PoolBuildMode::Unspecified)
                .await
        };
        match made.await {
            Ok(()) => {
                let _ = write_atomically(&marker, b"");
            }
            Err(err) => tracing::warn!(%err, "could not make the default storage pool"),
        }
    }

    /// Starts every autostart pool that is not running (when the service starts).
    pub async fn autostart(&self) {
        let names: Vec<String> = {
            let table = self.table.lock().await;
            table
                .pools
                .iter()
                .filter(|e| e.autostart && !e.active)
                .map(|e| e.def.name.clone())
                .collect()
        };
        for name in names {
            if let Err(err) = self
                .start(&pool_ref(&name), false, pb::PoolBuildMode::Unspecified)
                .await
            {
                tracing::warn!(pool = name, %err, "autostart failed");
            }
        }
    }

    pub(crate) fn marks(&self) -> std::sync::MutexGuard<'_, Marks> {
        self.marks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<pb::StorageEvent> {
        self.events.subscribe()
    }

    pub(crate) fn emit(
        &self,
        kind: pb::StorageObjectKind,
        name: &str,
        pool: &pb::PoolDefinition,
        key: &str,
        what: pb::StorageEventType,
    ) {
        let mut event = pb::StorageEvent {
            name: name.to_string(),
            uuid: pool.uuid.clone(),
            pool: pool.name.clone(),
            volume_key: key.to_string(),
            time_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            ..Default::default()
        };
        event.set_kind(kind);
        event.set_type(what);
        let _ = self.events.send(event);
    }

    fn emit_pool(&self, def: &pb::PoolDefinition, what: pb::StorageEventType) {
        self.emit(pb::StorageObjectKind::Pool, &def.name, def, "", what);
    }

    fn record_active(&self, def: &pb::PoolDefinition) -> Result<()> {
        let xml = vireo_conf::pool::format(def)?;
        write_atomically(
            &self.active_dir.join(format!("{}.xml", def.uuid)),
            xml.as_bytes(),
        )
        .map_err(Error::io("recording the active pool"))
    }

    fn forget_active(&self, uuid: &str) {
        let _ = std::fs::remove_file(self.active_dir.join(format!("{uuid}.xml")));
    }

    fn definition_of(source: pb::define_pool_request::Source) -> Result<pb::PoolDefinition> {
        match source {
            pb::define_pool_request::Source::Xml(xml) => parse_checked(&xml),
            pb::define_pool_request::Source::Definition(mut def) => {
                vireo_conf::pool::fill_defaults(&mut def);
                vireo_conf::pool::validate(&def)?;
                Ok(def)
            }
        }
    }

    /// Checks a new definition against the others: names and UUIDs are unique, and no two pools
    /// share a target directory or source device.
    fn check_unique(table: &Table, def: &pb::PoolDefinition) -> Result<Option<usize>> {
        let same_uuid = table.pools.iter().position(|e| e.def.uuid == def.uuid);
        if let Some(other) = table.pools.iter().position(|e| e.def.name == def.name)
            && Some(other) != same_uuid
        {
            return Err(Error::AlreadyExists(format!(
                "pool '{}' already exists with uuid {}",
                def.name, table.pools[other].def.uuid
            )));
        }
        if let Some(index) = same_uuid
            && table.pools[index].def.name != def.name
        {
            return Err(Error::AlreadyExists(format!(
                "pool uuid {} already belongs to pool '{}'",
                def.uuid, table.pools[index].def.name
            )));
        }
        let target = def.target.as_ref().map(|t| t.path.as_str()).unwrap_or("");
        let shares_target = matches!(
            def.r#type(),
            pb::PoolType::Dir | pb::PoolType::Fs | pb::PoolType::Netfs
        );
        for (index, other) in table.pools.iter().enumerate() {
            if Some(index) == same_uuid {
                continue;
            }
            let other_target = other
                .def
                .target
                .as_ref()
                .map(|t| t.path.as_str())
                .unwrap_or("");
            if shares_target && !target.is_empty() && target == other_target {
                return Err(Error::AlreadyExists(format!(
                    "pool '{}' already uses the target {target}",
                    other.def.name
                )));
            }
            let devices = |d: &pb::PoolDefinition| -> Vec<String> {
                d.source
                    .as_ref()
                    .map(|s| s.devices.iter().map(|x| x.path.clone()).collect())
                    .unwrap_or_default()
            };
            if def.r#type() != pb::PoolType::Iscsi
                && let Some(shared) = devices(def)
                    .into_iter()
                    .find(|d| devices(&other.def).contains(d))
            {
                return Err(Error::AlreadyExists(format!(
                    "pool '{}' already uses the source device {shared}",
                    other.def.name
                )));
            }
        }
        Ok(same_uuid)
    }

    /// pool-define (also pool-edit's second half).
    pub async fn define(&self, source: pb::define_pool_request::Source) -> Result<pb::Pool> {
        let def = Self::definition_of(source)?;
        let mut table = self.table.lock().await;
        let existing = Self::check_unique(&table, &def)?;
        if let Some(index) = existing
            && table.pools[index].def.r#type() != def.r#type()
        {
            return Err(Error::field(
                "pool@type",
                "a defined pool's type cannot change; undefine it first",
            ));
        }
        let xml = vireo_conf::pool::format(&def)?;
        self.store
            .save(&def.uuid, &xml)
            .map_err(Error::io("saving the pool definition"))?;
        let index = match existing {
            Some(index) => {
                let entry = &mut table.pools[index];
                if entry.active {
                    entry.next = Some(def.clone());
                } else {
                    entry.def = def.clone();
                }
                entry.persistent = true;
                index
            }
            None => {
                table.pools.push(new_entry(def.clone(), true, false));
                table.pools.sort_by(|a, b| a.def.name.cmp(&b.def.name));
                table.find_name(&def.name)?
            }
        };
        self.emit_pool(&def, pb::StorageEventType::Defined);
        Ok(to_pool(&table.pools[index], false))
    }

    /// pool-create: a transient pool, built if asked, started.
    pub async fn create(
        &self,
        source: pb::define_pool_request::Source,
        build: bool,
        mode: pb::PoolBuildMode,
    ) -> Result<pb::Pool> {
        let def = Self::definition_of(source)?;
        {
            let mut table = self.table.lock().await;
            if Self::check_unique(&table, &def)?.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "pool '{}' is already defined; use pool-start",
                    def.name
                )));
            }
            let mut entry = new_entry(def.clone(), false, false);
            entry.transition = Some("starting");
            table.pools.push(entry);
            table.pools.sort_by(|a, b| a.def.name.cmp(&b.def.name));
        }
        let started = async {
            if build || mode != pb::PoolBuildMode::Unspecified {
                self.backends.build(&def, mode).await?;
            }
            self.backends.start(&def).await?;
            let refreshed = self.backends.refresh(&def).await;
            if refreshed.is_err() {
                let _ = self.backends.stop(&def).await;
            }
            let refreshed = refreshed?;
            if let Err(err) = self.record_active(&def) {
                let _ = self.backends.stop(&def).await;
                return Err(err);
            }
            Ok(refreshed)
        }
        .await;
        let mut table = self.table.lock().await;
        let index = table.find_name(&def.name)?;
        match started {
            Ok((space, volumes)) => {
                let entry = &mut table.pools[index];
                entry.transition = None;
                entry.active = true;
                set_volumes(entry, space, volumes);
                self.emit_pool(&def, pb::StorageEventType::Started);
                Ok(to_pool(&table.pools[index], false))
            }
            Err(err) => {
                table.pools.remove(index);
                Err(err)
            }
        }
    }

    /// Marks a pool busy with `what` for a lifecycle step; returns its definition.
    async fn begin(
        &self,
        pool: &ObjectRef,
        what: &'static str,
        want_active: Option<bool>,
    ) -> Result<pb::PoolDefinition> {
        let mut table = self.table.lock().await;
        let index = table.find(pool)?;
        let entry = &mut table.pools[index];
        if let Some(message) = entry.busy_message(&self.marks()) {
            return Err(Error::State(message));
        }
        match want_active {
            Some(true) if !entry.active => {
                return Err(Error::State(format!(
                    "pool '{}' is not active",
                    entry.def.name
                )));
            }
            Some(false) if entry.active => {
                return Err(Error::State(format!(
                    "pool '{}' is active; destroy it first",
                    entry.def.name
                )));
            }
            _ => {}
        }
        entry.transition = Some(what);
        Ok(entry.def.clone())
    }

    async fn end(&self, uuid: &str) -> tokio::sync::MutexGuard<'_, Table> {
        let mut table = self.table.lock().await;
        if let Some(entry) = table.pools.iter_mut().find(|e| e.def.uuid == uuid) {
            entry.transition = None;
        }
        table
    }

    /// pool-build.
    pub async fn build(&self, pool: &ObjectRef, mode: pb::PoolBuildMode) -> Result<()> {
        let def = self.begin(pool, "building", Some(false)).await?;
        let result = self.backends.build(&def, mode).await;
        drop(self.end(&def.uuid).await);
        result?;
        self.emit_pool(&def, pb::StorageEventType::Created);
        Ok(())
    }

    /// pool-start, building first when asked.
    pub async fn start(
        &self,
        pool: &ObjectRef,
        build: bool,
        mode: pb::PoolBuildMode,
    ) -> Result<()> {
        let def = self.begin(pool, "starting", Some(false)).await?;
        let started = async {
            if build || mode != pb::PoolBuildMode::Unspecified {
                self.backends.build(&def, mode).await?;
            }
            self.backends.start(&def).await?;
            let refreshed = match self.backends.refresh(&def).await {
                Ok(refreshed) => refreshed,
                Err(err) => {
                    let _ = self.backends.stop(&def).await;
                    return Err(err);
                }
            };
            if let Err(err) = self.record_active(&def) {
                let _ = self.backends.stop(&def).await;
                return Err(err);
            }
            Ok(refreshed)
        }
        .await;
        let mut table = self.end(&def.uuid).await;
        let (space, volumes) = started?;
        let index = table.find_name(&def.name)?;
        let entry = &mut table.pools[index];
        entry.active = true;
        set_volumes(entry, space, volumes);
        self.emit_pool(&def, pb::StorageEventType::Started);
        Ok(())
    }

    /// pool-destroy: deactivate; a transient pool disappears.
    pub async fn destroy(&self, pool: &ObjectRef) -> Result<()> {
        let def = self.begin(pool, "stopping", Some(true)).await?;
        let result = self.backends.stop(&def).await;
        let mut table = self.end(&def.uuid).await;
        result?;
        self.forget_active(&def.uuid);
        let index = table.find_name(&def.name)?;
        let entry = &mut table.pools[index];
        entry.active = false;
        entry.volumes.clear();
        entry.space = Space::default();
        if let Some(next) = entry.next.take() {
            entry.def = next;
        }
        if !entry.persistent {
            table.pools.remove(index);
        }
        self.emit_pool(&def, pb::StorageEventType::Stopped);
        Ok(())
    }

    /// pool-delete: removes the storage pool-build made; the definition stays.
    pub async fn delete(&self, pool: &ObjectRef) -> Result<()> {
        let def = self.begin(pool, "deleting", Some(false)).await?;
        let result = self.backends.delete(&def).await;
        drop(self.end(&def.uuid).await);
        result?;
        self.emit_pool(&def, pb::StorageEventType::Deleted);
        Ok(())
    }

    /// pool-undefine: an inactive pool goes; an active one becomes transient.
    pub async fn undefine(&self, pool: &ObjectRef) -> Result<()> {
        let mut table = self.table.lock().await;
        let index = table.find(pool)?;
        let entry = &mut table.pools[index];
        if !entry.persistent {
            return Err(Error::State(format!(
                "pool '{}' is transient: nothing to undefine",
                entry.def.name
            )));
        }
        if let Some(message) = entry.busy_message(&self.marks()) {
            return Err(Error::State(message));
        }
        self.store
            .remove(&entry.def.uuid)
            .map_err(Error::io("removing the pool definition"))?;
        let def = entry.def.clone();
        if entry.active {
            entry.persistent = false;
            entry.autostart = false;
            entry.next = None;
        } else {
            table.pools.remove(index);
        }
        self.emit_pool(&def, pb::StorageEventType::Undefined);
        Ok(())
    }

    /// pool-refresh.
    pub async fn refresh(&self, pool: &ObjectRef) -> Result<()> {
        let def = {
            let table = self.table.lock().await;
            let entry = &table.pools[table.find(pool)?];
            if !entry.active {
                return Err(Error::State(format!(
                    "pool '{}' is not active",
                    entry.def.name
                )));
            }
            entry.def.clone()
        };
        let (space, volumes) = self.backends.refresh(&def).await?;
        let mut table = self.table.lock().await;
        let index = table.find_name(&def.name)?;
        set_volumes(&mut table.pools[index], space, volumes);
        self.emit_pool(&def, pb::StorageEventType::Refreshed);
        Ok(())
    }

    /// pool-autostart [--disable].
    pub async fn set_autostart(&self, pool: &ObjectRef, on: bool) -> Result<()> {
        let mut table = self.table.lock().await;
        let index = table.find(pool)?;
        let entry = &mut table.pools[index];
        if !entry.persistent {
            return Err(Error::State(format!(
                "pool '{}' is transient: it cannot be autostarted",
                entry.def.name
            )));
        }
        self.store
            .set_autostart(&entry.def.uuid, on)
            .map_err(Error::io("saving the autostart flag"))?;
        entry.autostart = on;
        Ok(())
    }

    pub async fn list(&self, request: &pb::ListPoolsRequest) -> Vec<pb::PoolInfo> {
        let table = self.table.lock().await;
        table
            .pools
            .iter()
            .filter(|e| request.active.is_none_or(|a| a == e.active))
            .filter(|e| request.persistent.is_none_or(|p| p == e.persistent))
            .filter(|e| request.autostart.is_none_or(|a| a == e.autostart))
            .filter(|e| {
                request.types.is_empty() || request.types.contains(&(e.def.r#type() as i32))
            })
            .map(Entry::info)
            .collect()
    }

    pub async fn pool_type(&self, pool: &ObjectRef) -> Result<pb::PoolType> {
        let table = self.table.lock().await;
        Ok(table.pools[table.find(pool)?].def.r#type())
    }

    pub async fn info(&self, pool: &ObjectRef) -> Result<pb::PoolInfo> {
        self.refresh_space(pool).await;
        let table = self.table.lock().await;
        Ok(table.pools[table.find(pool)?].info())
    }

    pub async fn get(&self, pool: &ObjectRef, inactive: bool) -> Result<pb::Pool> {
        self.refresh_space(pool).await;
        let table = self.table.lock().await;
        Ok(to_pool(&table.pools[table.find(pool)?], inactive))
    }

    /// Space changes as volumes fill; pool-info and dumpxml show it as it is now.
    async fn refresh_space(&self, pool: &ObjectRef) {
        let def = {
            let table = self.table.lock().await;
            match table.find(pool) {
                Ok(index)
                    if table.pools[index].active && table.pools[index].transition.is_none() =>
                {
                    table.pools[index].def.clone()
                }
                _ => return,
            }
        };
        if let Ok(space) = self.backends.space(&def).await {
            let mut table = self.table.lock().await;
            if let Ok(index) = table.find_name(&def.name) {
                table.pools[index].space = space;
            }
        }
    }
}

fn new_entry(def: pb::PoolDefinition, persistent: bool, autostart: bool) -> Entry {
    Entry {
        def,
        next: None,
        persistent,
        autostart,
        active: false,
        space: Space::default(),
        volumes: BTreeMap::new(),
        transition: None,
    }
}

pub(crate) fn set_volumes(entry: &mut Entry, space: Space, volumes: Vec<pb::VolumeDefinition>) {
    entry.space = space;
    entry.volumes = volumes.into_iter().map(|v| (v.name.clone(), v)).collect();
}

fn to_pool(entry: &Entry, inactive: bool) -> pb::Pool {
    let mut pool = pb::Pool {
        definition: Some(entry.shown(inactive)),
        persistent: entry.persistent,
        autostart: entry.autostart,
        ..Default::default()
    };
    pool.set_state(entry.state());
    pool
}
