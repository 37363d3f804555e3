//! The domain table: definitions, running guests and their lifecycle. One lock orders every
//! change; each running guest has a supervisor task that waits for its engine process to exit
//! and applies on_poweroff/on_reboot/on_crash. Guests are not our children in spirit: they run in
//! their own process group, and their run directory (status, sockets, console log) lets a
//! restarted service find and re-attach to them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, broadcast, mpsc};
use vireo_proto::common::v1::{ObjectRef, object_ref::Key};
use vireo_proto::compute::v1 as pb;

use super::cgroup::{self, Group};
use super::console::{ConsoleHub, HostEnd};
use super::engine::{self, Control, EngineEvent, RunPaths};
use super::engines::Engines;
use super::hostdev;
use super::network;
use super::process;
use super::saves::{SaveRecord, SaveStore};
use super::snapshots::{self, Memory, Record, SnapshotStore};
use super::store::{Store, write_atomically};
use super::volumes::Storage;
use crate::Error;

mod migration;
mod migration_tls;

use pb::DomainState as State;
use pb::DomainStateReason as Reason;

/// How long a destroy waits for the engine to end before it is killed.
const DESTROY_GRACE: Duration = Duration::from_secs(3);
/// How long a start waits for the engine's control socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What the service asked of a running guest, so its exit is read right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Intent {
    None,
    Shutdown,
    Reboot,
    Destroy,
}

/// A running guest.
struct Run {
    live: pb::DomainDefinition,
    id: i32,
    engine: pb::Engine,
    pid: u32,
    start_time: u64,
    started_ms: i64,
    state: State,
    reason: Reason,
    control: Control,
    console: Arc<ConsoleHub>,
    paths: RunPaths,
    taps: Vec<String>,
    cgroup: Option<Group>,
    generation: u64,
    intent: Intent,
    /// The last poweroff/reboot/crash the engine reported.
    last_event: Option<EngineEvent>,
    /// Its state went to another host, which has yet to confirm: whether it ran before.
    awaiting_confirm: Option<bool>,
}

struct Entry {
    /// None for a transient domain (from create, or undefined while running).
    persistent: Option<pb::DomainDefinition>,
    autostart: bool,
    /// State and reason while inactive.
    inactive: (State, Reason),
    run: Option<Run>,
}

impl Entry {
    /// A domain not defined or run yet: shut off, for no known reason.
    fn empty() -> Entry {
        Entry {
            persistent: None,
            autostart: false,
            inactive: (State::Shutoff, Reason::ShutoffUnknown),
            run: None,
        }
    }

    fn name(&self) -> &str {
        self.run
            .as_ref()
            .map(|r| r.live.name.as_str())
            .or(self.persistent.as_ref().map(|p| p.name.as_str()))
            .unwrap_or("")
    }

    fn definition(&self) -> &pb::DomainDefinition {
        match (&self.run, &self.persistent) {
            (Some(run), _) => &run.live,
            (None, Some(def)) => def,
            (None, None) => unreachable!("an entry has a definition or a run"),
        }
    }

    fn state(&self) -> (State, Reason) {
        self.run
            .as_ref()
            .map_or(self.inactive, |run| (run.state, run.reason))
    }
}

#[derive(Default)]
struct Table {
    entries: BTreeMap<String, Entry>,
    next_id: i32,
    generation: u64,
}

impl Table {
    fn find(&self, domain: Option<&ObjectRef>) -> Result<String, Error> {
        let key = domain
            .and_then(|d| d.key.as_ref())
            .ok_or_else(|| Error::InvalidField {
                field: "domain",
                message: "name a domain (name, UUID or id)".into(),
            })?;
        let by_name = |name: &str| {
            self.entries
                .iter()
                .find(|(_, e)| e.name() == name)
                .map(|(uuid, _)| uuid.clone())
        };
        let by_id = |id: u32| {
            self.entries
                .iter()
                .find(|(_, e)| {
                    e.run
                        .as_ref()
                        .is_some_and(|r| u32::try_from(r.id) == Ok(id))
                })
                .map(|(uuid, _)| uuid.clone())
        };
        let by_uuid = |uuid: &str| {
            let uuid = uuid.to_ascii_lowercase();
            self.entries.contains_key(&uuid).then_some(uuid)
        };
        let (found, what) = match key {
            Key::Name(name) => (by_name(name), format!("name '{name}'")),
            Key::Uuid(uuid) => (by_uuid(uuid), format!("UUID '{uuid}'")),
            Key::Id(id) => (by_id(*id), format!("id {id}")),
            Key::Any(any) => (
                any.parse()
                    .ok()
                    .and_then(by_id)
                    .or_else(|| by_uuid(any))
                    .or_else(|| by_name(any)),
                format!("'{any}'"),
            ),
        };
        found.ok_or_else(|| Error::NotFound(format!("failed to get domain {what}: no such domain")))
    }

    fn entry(&mut self, uuid: &str) -> &mut Entry {
        self.entries
            .get_mut(uuid)
            .expect("looked up under the same lock")
    }
}

/// What vireo-vmm or QEMU and the host let a domain run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub engine: pb::Engine,
    pub kvm: bool,
}

/// The run directory's record of a running guest, read back after a restart.
#[derive(Serialize, Deserialize)]
struct Status {
    id: i32,
    pid: u32,
    start_time: u64,
    engine: i32,
    started_ms: i64,
    state: i32,
    reason: i32,
    transient: bool,
    taps: Vec<String>,
    live_xml: String,
}

pub struct Manager {
    store: Store,
    snapshots: SnapshotStore,
    saves: SaveStore,
    run_root: PathBuf,
    engines: Arc<Engines>,
    storage: Storage,
    /// svc-network, which gives network interfaces their ports.
    networks: network::Networks,
    /// svc-nodedev, which detaches and reattaches `<hostdev>` devices.
    host_devices: hostdev::HostDevices,
    /// The deployment's certificates (`[tls]` pki_dir), for migration data over TLS.
    pki_dir: PathBuf,
    table: Mutex<Table>,
    events: broadcast::Sender<pb::DomainEvent>,
    seq: AtomicU64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Manager {
    /// Loads the definitions, re-attaches to guests that kept running while the service was
    /// away, and starts autostart domains.
    /// svc-storage, which resolves volume disks.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// svc-network, which gives network interfaces their ports.
    pub fn networks(&self) -> &network::Networks {
        &self.networks
    }

    /// svc-nodedev, which detaches and reattaches `<hostdev>` devices.
    pub fn host_devices(&self) -> &hostdev::HostDevices {
        &self.host_devices
    }

    pub async fn open(
        state_dir: &Path,
        run_dir: &Path,
        engines: Arc<Engines>,
        pki_dir: PathBuf,
    ) -> Result<Arc<Manager>, Error> {
        let store = Store::open(state_dir).map_err(Error::io("domain definitions"))?;
        let run_root = run_dir.join("compute");
        std::fs::create_dir_all(&run_root).map_err(Error::io("compute run directory"))?;
        let manager = Arc::new(Manager {
            store,
            snapshots: SnapshotStore::new(state_dir),
            saves: SaveStore::new(state_dir),
            run_root,
            engines,
            storage: Storage::new(run_dir.join("storage.sock")),
            networks: network::Networks::new(run_dir.join("network.sock")),
            host_devices: hostdev::HostDevices::new(run_dir.join("nodedev.sock")),
            pki_dir,
            table: Mutex::new(Table {
                next_id: 1,
                ..Table::default()
            }),
            events: broadcast::channel(1024).0,
            seq: AtomicU64::new(0),
        });
        let mut table = manager.table.lock().await;
        for stored in manager
            .store
            .load()
            .map_err(Error::io("domain definitions"))?
        {
            table.entries.insert(
                stored.definition.uuid.clone(),
                Entry {
                    persistent: Some(stored.definition),
                    autostart: stored.autostart,
                    inactive: (State::Shutoff, Reason::ShutoffUnknown),
                    run: None,
                },
            );
        }
        manager.recover(&mut table).await;
        let autostart: Vec<String> = table
            .entries
            .iter()
            .filter(|(_, e)| e.autostart && e.run.is_none())
            .map(|(uuid, _)| uuid.clone())
            .collect();
        for uuid in autostart {
            let id = table.next_id;
            table.next_id += 1;
            if let Err(err) = manager
                .launch(&mut table, &uuid, id, false, &Boot::Fresh)
                .await
            {
                tracing::error!(%uuid, %err, "autostart failed");
            }
        }
        drop(table);
        Ok(manager)
    }

    /// Finds the guests still running from before a restart.
    async fn recover(self: &Arc<Self>, table: &mut Table) {
        let Ok(dirs) = std::fs::read_dir(&self.run_root) else {
            return;
        };
        for dir in dirs.flatten() {
            let paths = RunPaths::new(dir.path());
            let uuid = dir.file_name().to_string_lossy().into_owned();
            let status: Option<Status> = std::fs::read(paths.status())
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            let Some(status) = status.filter(|s| process::alive(s.pid, s.start_time)) else {
                if let Some(status) = std::fs::read(paths.status())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Status>(&b).ok())
                {
                    network::remove_taps(&status.taps).await;
                    if let Ok(live) = vireo_conf::domain::parse(&status.live_xml) {
                        self.host_devices.release(&live).await;
                    }
                }
                let _ = std::fs::remove_dir_all(&paths.dir);
                if let Some(entry) = table.entries.get_mut(&uuid) {
                    entry.inactive = (State::Shutoff, Reason::ShutoffUnknown);
                }
                continue;
            };
            let Ok(live) = vireo_conf::domain::parse(&status.live_xml) else {
                tracing::error!(%uuid, "unreadable live definition; leaving the guest alone");
                continue;
            };
            let engine = pb::Engine::try_from(status.engine).unwrap_or(pb::Engine::Qemu);
            let (events_tx, events_rx) = mpsc::unbounded_channel();
            let control = match Control::connect(engine, &paths, events_tx).await {
                Ok(control) => control,
                Err(err) => {
                    tracing::error!(%uuid, %err, "cannot re-attach to a running guest");
                    continue;
                }
            };
            let Ok(pidfd) = process::pidfd(status.pid) else {
                continue;
            };
            let console = ConsoleHub::start(paths.serial(), paths.console_log(), host_end(&live));
            let paused = control.paused().await.unwrap_or(false);
            table.generation += 1;
            let generation = table.generation;
            table.next_id = table.next_id.max(status.id + 1);
            let mut run = Run {
                live: live.clone(),
                id: status.id,
                engine,
                pid: status.pid,
                start_time: status.start_time,
                started_ms: status.started_ms,
                state: State::try_from(status.state).unwrap_or(State::Running),
                reason: Reason::try_from(status.reason).unwrap_or(Reason::RunningUnknown),
                control,
                console,
                paths,
                taps: status.taps,
                cgroup: cgroup::detect().map(|layout| Group::new(layout, &uuid)),
                generation,
                intent: Intent::None,
                last_event: None,
                awaiting_confirm: None,
            };
            if paused && run.state != State::Paused {
                (run.state, run.reason) = (State::Paused, Reason::PausedUnknown);
            } else if !paused && run.state == State::Paused {
                (run.state, run.reason) = (State::Running, Reason::RunningUnpaused);
            }
            let entry = table.entries.entry(uuid.clone()).or_insert(Entry::empty());
            entry.run = Some(run);
            tracing::info!(%uuid, pid = status.pid, id = status.id, "re-attached to a running guest");
            self.clone()
                .supervise(uuid, generation, None, Some(pidfd), events_rx);
        }
    }

    fn publish(
        &self,
        def: &pb::DomainDefinition,
        kind: pb::DomainEventType,
        state: (State, Reason),
        detail: pb::DomainEventDetail,
    ) {
        let event = pb::DomainEvent {
            host: String::new(),
            name: def.name.clone(),
            uuid: def.uuid.clone(),
            r#type: kind as i32,
            state: state.0 as i32,
            reason: state.1 as i32,
            detail: detail as i32,
            device_alias: String::new(),
            time_unix_ms: now_ms(),
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
        };
        let _ = self.events.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<pb::DomainEvent> {
        self.events.subscribe()
    }

    /// Which engine a definition runs on here, or why it cannot run.
    pub fn placement(&self, def: &pb::DomainDefinition) -> Result<Placement, Error> {
        let engines = &self.engines;
        let kvm_stock = engines.kvm.available && engines.kvm.runs_stock_guests();
        let available = |engine: pb::Engine, kvm: bool| -> Result<Placement, Error> {
            let (name, facts) = match engine {
                pb::Engine::Vmm => ("vmm", &engines.vmm),
                _ => ("qemu", &engines.qemu),
            };
            if !facts.available {
                return Err(Error::Unsupported(format!(
                    "the {name} engine is unavailable: {}",
                    facts.unavailable_reason
                )));
            }
            Ok(Placement { engine, kvm })
        };
        let qemu = |kvm: bool| available(pb::Engine::Qemu, kvm);
        let vmm = || available(pb::Engine::Vmm, true);
        let is_kvm = def.r#type == pb::DomainType::Kvm as i32;
        match def.engine() {
            pb::Engine::Vmm => {
                if !is_kvm {
                    return Err(Error::Unsupported(
                        "the vmm engine runs <domain type='kvm'> guests only".into(),
                    ));
                }
                vmm()
            }
            pb::Engine::Qemu if !is_kvm => qemu(false),
            pb::Engine::Qemu => {
                if kvm_stock {
                    qemu(true)
                } else {
                    Err(Error::Unsupported(format!(
                        "<domain type='kvm'> on the qemu engine needs a KVM that runs stock guests, and this host's does not ({}); use <domain type='qemu'> for TCG emulation",
                        if engines.kvm.available {
                            "a paravirtual nested KVM"
                        } else {
                            engines.kvm.unavailable_reason.as_str()
                        }
                    )))
                }
            }
            pb::Engine::Unspecified if !is_kvm => qemu(false),
            pb::Engine::Unspecified => {
                let vmm_refusal = if engines.vmm.available {
                    engine::vmm::command(
                        Path::new("vireo-vmm"),
                        def,
                        engine::HostEnds {
                            taps: &vec![
                                String::new();
                                def.devices.as_ref().map_or(0, |d| d.interfaces.len())
                            ],
                            hostdevs: &hostdev::pci_hostdevs(def)
                                .map(|_| PathBuf::new())
                                .collect::<Vec<_>>(),
                        },
                        &RunPaths::new(PathBuf::new()),
                    )
                    .err()
                    .map(|err| err.to_string())
                } else {
                    Some(engines.vmm.unavailable_reason.clone())
                };
                match vmm_refusal {
                    None => vmm(),
                    Some(_) if kvm_stock => qemu(true),
                    Some(why) => Err(Error::Unsupported(format!(
                        "this <domain type='kvm'> cannot run on vireo-vmm ({why}), and the qemu engine would need a KVM that runs stock guests, which this host's is not ({}); use <domain type='qemu'> for TCG emulation",
                        if engines.kvm.available {
                            "a paravirtual nested KVM"
                        } else {
                            engines.kvm.unavailable_reason.as_str()
                        }
                    ))),
                }
            }
        }
    }

    fn engine_guess(&self, def: &pb::DomainDefinition) -> pb::Engine {
        self.placement(def)
            .map_or(def.engine(), |placement| placement.engine)
    }

    // ----------------------------------------------------------------------------------------
    // Definitions
    // ----------------------------------------------------------------------------------------

    /// Checks a new definition against the table: names and UUIDs are unique.
    fn check_identity(table: &Table, def: &pb::DomainDefinition) -> Result<bool, Error> {
        if let Some((uuid, _)) = table
            .entries
            .iter()
            .find(|(uuid, e)| e.name() == def.name && **uuid != def.uuid)
        {
            return Err(Error::AlreadyExists(format!(
                "domain '{}' already exists with UUID {uuid}",
                def.name
            )));
        }
        match table.entries.get(&def.uuid) {
            Some(entry) if entry.name() != def.name => Err(Error::AlreadyExists(format!(
                "domain with UUID {} already exists as '{}'",
                def.uuid,
                entry.name()
            ))),
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }

    pub async fn define(&self, mut def: pb::DomainDefinition) -> Result<pb::Domain, Error> {
        let mut table = self.table.lock().await;
        // Defining a known name without a UUID updates that domain, as libvirt does.
        if def.uuid.is_empty()
            && let Some((uuid, _)) = table.entries.iter().find(|(_, e)| e.name() == def.name)
        {
            def.uuid.clone_from(uuid);
        }
        vireo_conf::domain::fill_defaults(&mut def);
        vireo_conf::domain::validate(&def)?;
        let existed = Self::check_identity(&table, &def)?;
        self.store.save(&def).map_err(Error::io(format!(
            "saving the definition of '{}'",
            def.name
        )))?;
        let entry = table
            .entries
            .entry(def.uuid.clone())
            .or_insert(Entry::empty());
        let updated = existed && entry.persistent.is_some();
        entry.persistent = Some(def.clone());
        let state = entry.state();
        self.publish(
            &def,
            pb::DomainEventType::Defined,
            state,
            if updated {
                pb::DomainEventDetail::DefinedUpdated
            } else {
                pb::DomainEventDetail::DefinedAdded
            },
        );
        Ok(self.domain_of(&table, &def.uuid))
    }

    pub async fn undefine(
        &self,
        domain: Option<&ObjectRef>,
        snapshots_metadata: bool,
    ) -> Result<(), Error> {
        let mut table = self.table.lock().await;
        let uuid = table.find(domain)?;
        if self.snapshots.any(&uuid) {
            if !snapshots_metadata {
                return Err(Error::State(format!(
                    "domain '{}' has snapshots: delete them, or undefine with --snapshots-metadata",
                    table.entry(&uuid).name()
                )));
            }
            self.snapshots.remove_all(&uuid);
        }
        let entry = table.entry(&uuid);
        let Some(def) = entry.persistent.clone() else {
            return Err(Error::State(format!(
                "domain '{}' is transient: it has no persistent definition to undefine",
                entry.name()
            )));
        };
        self.store.remove(&uuid).map_err(Error::io(format!(
            "removing the definition of '{}'",
            def.name
        )))?;
        entry.persistent = None;
        entry.autostart = false;
        let state = entry.state();
        if entry.run.is_none() {
            table.entries.remove(&uuid);
        }
        self.publish(
            &def,
            pb::DomainEventType::Undefined,
            state,
            pb::DomainEventDetail::UndefinedRemoved,
        );
        Ok(())
    }

    pub async fn set_autostart(&self, domain: Option<&ObjectRef>, on: bool) -> Result<(), Error> {
        let mut table = self.table.lock().await;
        let uuid = table.find(domain)?;
        let entry = table.entry(&uuid);
        if entry.persistent.is_none() {
            return Err(Error::State(format!(
                "domain '{}' is transient: autostart needs a persistent definition",
                entry.name()
            )));
        }
        self.store
            .set_autostart(&uuid, on)
            .map_err(Error::io("autostart marker"))?;
        entry.autostart = on;
        Ok(())
    }

    // ----------------------------------------------------------------------------------------
    // Views
    // ----------------------------------------------------------------------------------------

    fn summary_of(&self, uuid: &str, entry: &Entry) -> pb::DomainSummary {
        let def = entry.definition();
        let (state, reason) = entry.state();
        pb::DomainSummary {
            host: String::new(),
            id: entry.run.as_ref().map_or(-1, |r| r.id),
            name: def.name.clone(),
            uuid: uuid.to_string(),
            state: state as i32,
            reason: reason as i32,
            persistent: entry.persistent.is_some(),
            autostart: entry.autostart,
            engine: entry
                .run
                .as_ref()
                .map_or_else(|| self.engine_guess(def), |r| r.engine) as i32,
            title: def.title.clone(),
        }
    }

    fn domain_of(&self, table: &Table, uuid: &str) -> pb::Domain {
        let entry = &table.entries[uuid];
        pb::Domain {
            persistent: entry.persistent.clone(),
            live: entry.run.as_ref().map(|r| r.live.clone()),
            summary: Some(self.summary_of(uuid, entry)),
            cpu_time_ns: entry
                .run
                .as_ref()
                .map_or(0, |r| process::process_cpu_ns(r.pid)),
            pid: entry.run.as_ref().map_or(0, |r| r.pid),
            has_managed_save: self.saves.managed(uuid).is_some(),
            current_snapshot: String::new(),
            started_unix_ms: entry.run.as_ref().map_or(0, |r| r.started_ms),
        }
    }

    pub async fn list(&self, request: &pb::ListDomainsRequest) -> Vec<pb::DomainSummary> {
        let (active, inactive) = match (request.include_active, request.include_inactive) {
            (false, false) => (true, false),
            pair => pair,
        };
        let table = self.table.lock().await;
        let mut list: Vec<pb::DomainSummary> = table
            .entries
            .iter()
            .filter(|(_, e)| if e.run.is_some() { active } else { inactive })
            .filter(|(_, e)| request.autostart.is_none_or(|a| a == e.autostart))
            .map(|(uuid, e)| self.summary_of(uuid, e))
            .collect();
        // virsh: running domains by id, then inactive ones by name.
        list.sort_by(|a, b| match (a.id, b.id) {
            (-1, -1) => a.name.cmp(&b.name),
            (-1, _) => std::cmp::Ordering::Greater,
            (_, -1) => std::cmp::Ordering::Less,
            (x, y) => x.cmp(&y),
        });
        list
    }

    /// The domain; graphics passwords only with `security_info`.
    pub async fn get(
        &self,
        domain: Option<&ObjectRef>,
        security_info: bool,
    ) -> Result<pb::Domain, Error> {
        let table = self.table.lock().await;
        let uuid = table.find(domain)?;
        let mut found = self.domain_of(&table, &uuid);
        if !security_info {
            found.persistent.iter_mut().for_each(hide_secrets);
            found.live.iter_mut().for_each(hide_secrets);
        }
        Ok(found)
    }

    /// The domain's XML; graphics passwords only with `security_info` (as dumpxml
    /// --security-info).
    pub async fn xml(
        &self,
        domain: Option<&ObjectRef>,
        inactive: bool,
        security_info: bool,
    ) -> Result<String, Error> {
        let table = self.table.lock().await;
        let uuid = table.find(domain)?;
        let entry = &table.entries[&uuid];
        let (def, id) = match (&entry.run, &entry.persistent) {
            (Some(_), Some(def)) if inactive => (def, None),
            (Some(run), _) => (&run.live, Some(run.id)),
            (None, Some(def)) => (def, None),
            (None, None) => return Err(Error::NotFound("no definition".into())),
        };
        if security_info {
            return Ok(vireo_conf::domain::format(def, id)?);
        }
        let mut shown = def.clone();
        hide_secrets(&mut shown);
        Ok(vireo_conf::domain::format(&shown, id)?)
    }

    // ----------------------------------------------------------------------------------------
    // Lifecycle
    // ----------------------------------------------------------------------------------------

    pub async fn start(
        self: &Arc<Self>,
        domain: Option<&ObjectRef>,
        paused: bool,
        force_boot: bool,
    ) -> Result<pb::Domain, Error> {
        let mut table = self.table.lock().await;
        let uuid = table.find(domain)?;
        let entry = table.entry(&uuid);
        if entry.run.is_some() {
            return Err(Error::State(format!(
                "domain '{}' is already active",
                entry.name()
            )));
        }
        // A managed save image is resumed from, and removed, unless --force-boot.
        if let Some(record) = self.saves.managed(&uuid) {
            if !force_boot {
                drop(table);
                return self
                    .restore_state(&record.file, Some(paused || record.paused))
                    .await;
            }
            self.saves.remove(&record);
        }
        let id = table.next_id;
        table.next_id += 1;
        self.launch(&mut table, &uuid, id, paused, &Boot::Fresh)
            .await?;
        Ok(self.domain_of(&table, &uuid))
    }

    /// Writes a running guest's state through its engine and stops it (shut off, saved).
    pub async fn save_state(
        self: &Arc<Self>,
        domain: Option<&ObjectRef>,
        file: &str,
        managed: bool,
        restore_paused: Option<bool>,
    ) -> Result<(PathBuf, u64, String, String), Error> {
        let mut table = self.table.lock().await;
        let uuid = table.find(domain)?;
        let file = if managed {
            if table.entry(&uuid).persistent.is_none() {
                return Err(Error::State(
                    "a transient domain has no managed save: use save FILE".into(),
                ));
            }
            self.saves.managed_file(&uuid)
        } else {
            vireo_conf::domain::check_host_path(file, "file")?;
            PathBuf::from(file)
        };
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(Error::io(format!("{}", parent.display())))?;
        }
        let run = Self::running(&mut table, &uuid)?;
        let record = SaveRecord {
            file: file.clone(),
            uuid: uuid.clone(),
            engine: run.engine as i32,
            domain_xml: vireo_conf::domain::format(&run.live, None)?,
            paused: restore_paused.unwrap_or(run.state == State::Paused),
            managed,
            saved_unix_ms: now_ms(),
        };
        let name = run.live.name.clone();
        let pid = run.pid;
        let pidfd = process::pidfd(pid).map_err(Error::io("pidfd of the guest"))?;
        match &run.control {
            Control::Vmm(socket) => {
                // vireo-vmm pauses, writes the machine and exits with its "saved" status.
                engine::vmm::request(socket, serde_json::json!({"cmd": "save", "path": file}))
                    .await
                    .map_err(Error::Engine)?;
            }
            Control::Qemu(qmp) => {
                engine::qemu::save_to(qmp, &run.paths.dir.join("save.sock"), &file).await?;
                let _ = qmp.execute("quit", serde_json::json!({})).await;
            }
        }
        run.intent = Intent::Destroy;
        if tokio::time::timeout(DESTROY_GRACE, process::wait_exit(pidfd))
            .await
            .is_err()
        {
            process::signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
        self.saves.save(&record).map_err(Error::io("save record"))?;
        if let Some(run) = table.entry(&uuid).run.take() {
            self.finish(&mut table, &uuid, run, Outcome::Saved).await;
        }
        let size = std::fs::metadata(&file).map_or(0, |m| m.len());
        Ok((file, size, name, uuid))
    }

    /// Starts a domain from an image this host saved; a new id, the same name and UUID.
    pub async fn restore_state(
        self: &Arc<Self>,
        file: &Path,
        paused: Option<bool>,
    ) -> Result<pb::Domain, Error> {
        let record = self.saves.get(file).ok_or_else(|| {
            Error::NotFound(format!(
                "{} is not a save image this host wrote (or it was removed)",
                file.display()
            ))
        })?;
        let mut def = vireo_conf::domain::parse(&record.domain_xml)?;
        def.engine = record.engine;
        let mut table = self.table.lock().await;
        let uuid = record.uuid.clone();
        let fresh = !table.entries.contains_key(&uuid);
        if let Some(entry) = table.entries.get(&uuid)
            && entry.run.is_some()
        {
            return Err(Error::State(format!(
                "domain '{}' is already active",
                entry.name()
            )));
        }
        let entry = table.entries.entry(uuid.clone()).or_insert(Entry {
            persistent: None,
            autostart: false,
            inactive: (State::Shutoff, Reason::ShutoffSaved),
            run: None,
        });
        // The saved machine runs with its saved definition.
        let saved = entry.persistent.replace(def);
        let id = table.next_id;
        table.next_id += 1;
        let boot = if record.engine == pb::Engine::Vmm as i32 {
            Boot::Restore(record.file.clone())
        } else {
            Boot::Incoming(record.file.clone())
        };
        let result = self
            .launch(
                &mut table,
                &uuid,
                id,
                paused.unwrap_or(record.paused),
                &boot,
            )
            .await;
        table.entry(&uuid).persistent = saved;
        if let Err(err) = result {
            if fresh {
                table.entries.remove(&uuid);
            }
            return Err(err);
        }
        if let Some(run) = table.entry(&uuid).run.as_mut()
            && run.state == State::Running
        {
            run.reason = Reason::RunningRestored;
        }
        self.write_status(&table, &uuid);
        // The image is used up: a managed one is deleted, a plain one forgotten (libvirt keeps
        // the file, and so do we; restoring it twice would fork the guest's disks).
        self.saves.remove(&record);
        Ok(self.domain_of(&table, &uuid))
    }

    /// create: a transient domain, started at once; nothing is left behind if it fails.
    pub async fn create(
        self: &Arc<Self>,
        mut def: pb::DomainDefinition,
        paused: bool,
    ) -> Result<pb::Domain, Error> {
        vireo_conf::domain::fill_defaults(&mut def);
        vireo_conf::domain::validate(&def)?;
        let mut table = self.table.lock().await;
        if Self::check_identity(&table, &def)? {
            let entry = table.entry(&def.uuid);
            if entry.run.is_some() {
                return Err(Error::State(format!(
                    "domain '{}' is already active",
                    def.name
                )));
            }
        }
        self.launch_definition(&mut table, &def, paused, &Boot::Fresh)
            .await?;
        Ok(self.domain_of(&table, &def.uuid))
    }

    /// Runs `def` as given (create's XML, or an incoming migration's); a persistent definition
    /// the domain has stays its definition for the next start, as libvirt keeps it. On failure
    /// nothing is left of a domain this added.
    async fn launch_definition(
        self: &Arc<Self>,
        table: &mut Table,
        def: &pb::DomainDefinition,
        paused: bool,
        boot: &Boot,
    ) -> Result<(), Error> {
        let uuid = def.uuid.clone();
        let fresh = !table.entries.contains_key(&uuid);
        let entry = table.entries.entry(uuid.clone()).or_insert(Entry::empty());
        let saved = entry.persistent.replace(def.clone());
        let id = table.next_id;
        table.next_id += 1;
        let result = self.launch(table, &uuid, id, paused, boot).await;
        table.entry(&uuid).persistent = saved;
        if result.is_err() && fresh {
            table.entries.remove(&uuid);
        }
        result
    }

    /// Spawns the engine for a domain and records the run. On failure nothing is left running.
    async fn launch(
        self: &Arc<Self>,
        table: &mut Table,
        uuid: &str,
        id: i32,
        paused: bool,
        boot: &Boot,
    ) -> Result<(), Error> {
        let entry = table.entry(uuid);
        let mut live = entry.definition().clone();
        self.storage.resolve(&mut live).await?;
        let placement = self.placement(&live)?;
        let paths = RunPaths::new(self.run_root.join(uuid));
        let _ = std::fs::remove_dir_all(&paths.dir);
        std::fs::create_dir_all(&paths.dir).map_err(Error::io("domain run directory"))?;
        hostdev::check_not_in_use(
            &live,
            table
                .entries
                .iter()
                .filter(|(other, _)| *other != uuid)
                .filter_map(|(_, entry)| entry.run.as_ref().map(|run| &run.live)),
        )?;
        let taps = match network::prepare_taps(&live, id, &self.networks).await {
            Ok(taps) => taps,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&paths.dir);
                return Err(err);
            }
        };
        let hostdevs = match self.host_devices.prepare(&live).await {
            Ok(hostdevs) => hostdevs,
            Err(err) => {
                network::remove_taps(&taps).await;
                let _ = std::fs::remove_dir_all(&paths.dir);
                return Err(err);
            }
        };
        let result = self
            .spawn(
                uuid,
                &mut live,
                placement,
                &paths,
                engine::HostEnds {
                    taps: &taps,
                    hostdevs: &hostdevs,
                },
                paused,
                boot,
            )
            .await;
        let (mut child, control, events_rx, console, group) = match result {
            Ok(parts) => parts,
            Err(err) => {
                if let Some(layout) = cgroup::detect() {
                    Group::new(layout, uuid).remove();
                }
                self.host_devices.release(&live).await;
                network::remove_taps(&taps).await;
                let _ = std::fs::remove_dir_all(&paths.dir);
                let entry = table.entry(uuid);
                entry.inactive = (State::Shutoff, Reason::ShutoffFailed);
                return Err(err);
            }
        };
        let pid = child.id().unwrap_or(0);
        let start_time = process::start_time(pid).unwrap_or(0);
        table.generation += 1;
        let generation = table.generation;
        fill_live(&mut live, &taps, placement);
        let (state, reason) = match (paused, boot) {
            (true, _) => (State::Paused, Reason::PausedStartingUp),
            (false, Boot::Fresh) => (State::Running, Reason::RunningBooted),
            (false, _) => (State::Running, Reason::RunningFromSnapshot),
        };
        let run = Run {
            live: live.clone(),
            id,
            engine: placement.engine,
            pid,
            start_time,
            started_ms: now_ms(),
            state,
            reason,
            control,
            console,
            paths,
            taps,
            cgroup: group,
            generation,
            intent: Intent::None,
            last_event: None,
            awaiting_confirm: None,
        };
        if let Err(err) = apply_pinning(&run) {
            tracing::warn!(%uuid, %err, "vCPU pinning");
        }
        let entry = table.entry(uuid);
        entry.run = Some(run);
        self.write_status(table, uuid);
        let pidfd = process::pidfd(pid).ok();
        let child = child.take();
        self.clone()
            .supervise(uuid.to_string(), generation, child, pidfd, events_rx);
        self.publish(
            &live,
            pb::DomainEventType::Started,
            (state, reason),
            pb::DomainEventDetail::Unspecified,
        );
        if paused {
            self.publish(
                &live,
                pb::DomainEventType::Suspended,
                (state, reason),
                pb::DomainEventDetail::Unspecified,
            );
        }
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    // One argument per part of a start; grouping them would only rename them.
    #[allow(clippy::too_many_arguments)]
    async fn spawn(
        &self,
        uuid: &str,
        live: &mut pb::DomainDefinition,
        placement: Placement,
        paths: &RunPaths,
        host: engine::HostEnds<'_>,
        paused: bool,
        boot: &Boot,
    ) -> Result<
        (
            SpawnedChild,
            Control,
            mpsc::UnboundedReceiver<EngineEvent>,
            Arc<ConsoleHub>,
            Option<Group>,
        ),
        Error,
    > {
        let launch = match placement.engine {
            pb::Engine::Vmm => engine::vmm::command(
                self.engines
                    .vmm
                    .binary
                    .as_deref()
                    .unwrap_or(Path::new("vireo-vmm")),
                live,
                host,
                paths,
            )?,
            _ => engine::qemu::command(
                self.engines
                    .qemu
                    .binary
                    .as_deref()
                    .unwrap_or(Path::new("qemu-system-x86_64")),
                live,
                placement.kvm,
                host,
                paths,
            )?,
        };
        let mut launch = launch;
        match boot {
            Boot::Fresh => {}
            Boot::Restore(file) if placement.engine == pb::Engine::Vmm => {
                // The snapshot holds the machine and its devices; only the host ends are given.
                let serial = launch
                    .args
                    .iter()
                    .skip_while(|a| *a != "--serial")
                    .nth(1)
                    .cloned()
                    .unwrap_or_else(|| "null".into());
                launch.args = vec![
                    "restore".into(),
                    "--snapshot".into(),
                    file.display().to_string(),
                    "--serial".into(),
                    serial,
                    "--control".into(),
                    paths.control().display().to_string(),
                ];
            }
            Boot::LoadVm(name) if placement.engine == pb::Engine::Qemu => {
                launch.args.extend(["-loadvm".into(), name.clone()]);
            }
            Boot::Incoming(_) if placement.engine == pb::Engine::Qemu => {
                launch.args.extend([
                    "-incoming".into(),
                    format!("unix:{}", paths.dir.join("incoming.sock").display()),
                ]);
            }
            Boot::IncomingTcp(address) if placement.engine == pb::Engine::Qemu => {
                launch
                    .args
                    .extend(["-incoming".into(), format!("tcp:{address}")]);
            }
            Boot::IncomingTcp(address) => {
                // The machine's shape comes with the state; the host ends (serial, control,
                // disks, taps) are this host's.
                launch.args = engine::vmm::receive_args(&launch.args, *address);
            }
            _ => {
                return Err(Error::Unsupported(format!(
                    "this snapshot was taken on another engine than the domain's {}",
                    if placement.engine == pb::Engine::Vmm {
                        "vmm"
                    } else {
                        "qemu"
                    }
                )));
            }
        }
        let log = std::fs::File::create(paths.engine_log()).map_err(Error::io("engine log"))?;
        let log_err = log.try_clone().map_err(Error::io("engine log"))?;
        let mut passed = Vec::new();
        for (path, fd) in &launch.fds {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|err| Error::Engine(format!("opening {}: {err}", path.display())))?;
            passed.push((file, *fd));
        }
        let mut command = tokio::process::Command::new(&launch.program);
        if !passed.is_empty() {
            use std::os::fd::AsRawFd;
            let pairs: Vec<(i32, i32)> =
                passed.iter().map(|(f, fd)| (f.as_raw_fd(), *fd)).collect();
            // SAFETY: between fork and exec only dup2 runs, which is async-signal-safe; the
            // duplicates have no close-on-exec flag, so the engine inherits them.
            unsafe {
                command.pre_exec(move || {
                    for (from, to) in &pairs {
                        if libc::dup2(*from, *to) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        command
            .args(&launch.args)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command.spawn().map_err(|err| {
            Error::Engine(format!("cannot run {}: {err}", launch.program.display()))
        })?;
        let pid = child.id().unwrap_or(0);
        let engine_name = if placement.engine == pb::Engine::Vmm {
            "vireo-vmm"
        } else {
            "QEMU"
        };
        let failed = |why: String| {
            let log = std::fs::read_to_string(paths.engine_log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Error::State(format!(
                "{engine_name} did not start the guest ({why}){}{}",
                if tail.is_empty() { "" } else { ": " },
                tail.join(" | ")
            ))
        };
        let group = match place_in_cgroup(uuid, pid, live) {
            Ok(group) => group,
            Err(err) => {
                process::signal(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait().await;
                return Err(err);
            }
        };
        // Wait for the control socket, watching for an early exit.
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failed(format!("exited with {status}")));
            }
            if process::socket_exists(&paths.control()) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                process::signal(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait().await;
                return Err(failed("no control socket in time".into()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut attempts = 0;
        let control = loop {
            match Control::connect(placement.engine, paths, events_tx.clone()).await {
                Ok(control) => break control,
                // The guest already ran and ended (a guest that powers off at once): the
                // supervisor reads its exit status like any other.
                Err(_) if matches!(child.try_wait(), Ok(Some(_))) => {
                    break match placement.engine {
                        pb::Engine::Vmm => Control::Vmm(paths.control()),
                        _ => return Err(failed("exited before it could be controlled".into())),
                    };
                }
                Err(err) if attempts >= 50 => {
                    process::signal(pid, nix::sys::signal::Signal::SIGKILL);
                    let _ = child.wait().await;
                    return Err(failed(err));
                }
                Err(_) => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        drop(events_tx);
        let has_serial = live
            .devices
            .as_ref()
            .is_some_and(|d| !d.serials.is_empty() || !d.consoles.is_empty());
        let console = ConsoleHub::start(paths.serial(), paths.console_log(), host_end(live));
        if let (Control::Qemu(qmp), Some(devices)) = (&control, live.devices.as_mut())
            && let Some(graphics) = devices.graphics.first_mut()
            && let Ok(vnc) = qmp.execute("query-vnc", serde_json::json!({})).await
            && let Some(port) = vnc
                .get("service")
                .and_then(|p| p.as_str())
                .and_then(|p| p.parse().ok())
        {
            // The display QEMU found free (autoport), as libvirt's live XML shows it.
            graphics.port = port;
        }
        if let (Boot::Incoming(file), Control::Qemu(qmp)) = (boot, &control)
            && let Err(err) =
                engine::qemu::feed_incoming(qmp, &paths.dir.join("incoming.sock"), file).await
        {
            console.close();
            process::signal(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait().await;
            return Err(err);
        }
        if placement.engine == pb::Engine::Qemu {
            // QEMU waits (-S) until the console is attached, so nothing the guest prints is lost.
            if has_serial {
                console.wait_connected(Duration::from_secs(5)).await;
            }
            if !paused && let Err(err) = control.resume().await {
                console.close();
                process::signal(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait().await;
                return Err(failed(err.to_string()));
            }
        } else if paused && let Err(err) = control.pause().await {
            console.close();
            process::signal(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait().await;
            return Err(failed(err.to_string()));
        }
        Ok((
            SpawnedChild(Some(child)),
            control,
            events_rx,
            console,
            group,
        ))
    }

    fn write_status(&self, table: &Table, uuid: &str) {
        let entry = &table.entries[uuid];
        let Some(run) = &entry.run else { return };
        let status = Status {
            id: run.id,
            pid: run.pid,
            start_time: run.start_time,
            engine: run.engine as i32,
            started_ms: run.started_ms,
            state: run.state as i32,
            reason: run.reason as i32,
            transient: entry.persistent.is_none(),
            taps: run.taps.clone(),
            live_xml: vireo_conf::domain::format(&run.live, Some(run.id)).unwrap_or_default(),
        };
        if let Ok(bytes) = serde_json::to_vec(&status)
            && let Err(err) = write_atomically(&run.paths.status(), &bytes)
        {
            tracing::error!(%uuid, %err, "writing the run status");
        }
    }

    /// Waits for the guest's engine to exit, passing its events on, then applies the outcome.
    fn supervise(
        self: Arc<Self>,
        uuid: String,
        generation: u64,
        child: Option<tokio::process::Child>,
        pidfd: Option<std::os::fd::OwnedFd>,
        mut events: mpsc::UnboundedReceiver<EngineEvent>,
    ) {
        tokio::spawn(async move {
            let exit = async {
                match (child, pidfd) {
                    (Some(mut child), _) => child.wait().await.ok().and_then(|s| s.code()),
                    (None, Some(fd)) => {
                        process::wait_exit(fd).await;
                        None
                    }
                    (None, None) => None,
                }
            };
            tokio::pin!(exit);
            let code = loop {
                tokio::select! {
                    code = &mut exit => break code,
                    Some(event) = events.recv() => self.on_engine_event(&uuid, generation, event).await,
                }
            };
            // The engine's last words (poweroff, reboot, crash) may trail its exit a little.
            let drain = async {
                while let Some(event) = events.recv().await {
                    self.on_engine_event(&uuid, generation, event).await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
            self.on_exit(&uuid, generation, code).await;
        });
    }

    async fn on_engine_event(&self, uuid: &str, generation: u64, event: EngineEvent) {
        let mut table = self.table.lock().await;
        let Some(entry) = table.entries.get_mut(uuid) else {
            return;
        };
        let Some(run) = entry.run.as_mut().filter(|r| r.generation == generation) else {
            return;
        };
        match event {
            EngineEvent::Poweroff | EngineEvent::Reboot | EngineEvent::Crash(_) => {
                run.last_event = Some(event);
            }
            EngineEvent::Reset => {
                // QEMU reset the guest in place (a reboot under on_reboot=restart).
                if run.intent == Intent::Reboot {
                    run.intent = Intent::None;
                }
            }
            EngineEvent::Paused | EngineEvent::Resumed => {}
        }
    }

    /// The engine process is gone: decide what that means and what happens next.
    async fn on_exit(self: &Arc<Self>, uuid: &str, generation: u64, code: Option<i32>) {
        let mut table = self.table.lock().await;
        let Some(entry) = table.entries.get_mut(uuid) else {
            return;
        };
        if entry
            .run
            .as_ref()
            .is_none_or(|r| r.generation != generation)
        {
            return;
        }
        let Some(run) = entry.run.take() else { return };
        let outcome = outcome_of(&run, code);
        self.finish(&mut table, uuid, run, outcome).await;
    }

    /// Cleans up after a run and applies `outcome`; a restart keeps the runtime id.
    async fn finish(self: &Arc<Self>, table: &mut Table, uuid: &str, run: Run, outcome: Outcome) {
        self.release(&run).await;
        let live = run.live.clone();
        let action = |action: i32| {
            pb::DomainLifecycleAction::try_from(action)
                .unwrap_or(pb::DomainLifecycleAction::Destroy)
        };
        use pb::DomainLifecycleAction as Action;
        let (restart, stopped) = match outcome {
            Outcome::Destroyed => (false, (State::Shutoff, Reason::ShutoffDestroyed)),
            Outcome::Restart => (true, (State::Shutoff, Reason::ShutoffShutdown)),
            Outcome::Saved => (false, (State::Shutoff, Reason::ShutoffSaved)),
            Outcome::Migrated => (false, (State::Shutoff, Reason::ShutoffMigrated)),
            Outcome::Poweroff => match action(live.on_poweroff) {
                Action::Restart | Action::RenameRestart => {
                    (true, (State::Shutoff, Reason::ShutoffShutdown))
                }
                _ => (false, (State::Shutoff, Reason::ShutoffShutdown)),
            },
            Outcome::Reboot => match action(live.on_reboot) {
                Action::Destroy => (false, (State::Shutoff, Reason::ShutoffShutdown)),
                _ => (true, (State::Shutoff, Reason::ShutoffShutdown)),
            },
            Outcome::Crash => match action(live.on_crash) {
                Action::Restart | Action::RenameRestart | Action::CoredumpRestart => {
                    (true, (State::Shutoff, Reason::ShutoffCrashed))
                }
                Action::Preserve => (false, (State::Crashed, Reason::CrashedUnknown)),
                _ => (false, (State::Shutoff, Reason::ShutoffCrashed)),
            },
        };
        if matches!(outcome, Outcome::Poweroff) {
            self.publish(
                &live,
                pb::DomainEventType::Shutdown,
                stopped,
                pb::DomainEventDetail::ShutdownFinished,
            );
        }
        if matches!(outcome, Outcome::Crash) {
            self.publish(
                &live,
                pb::DomainEventType::Crashed,
                (State::Crashed, Reason::CrashedUnknown),
                pb::DomainEventDetail::Unspecified,
            );
        }
        if restart {
            match self.launch(table, uuid, run.id, false, &Boot::Fresh).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::error!(%uuid, %err, "restarting the guest failed");
                }
            }
        }
        let entry = table.entry(uuid);
        entry.inactive = stopped;
        self.publish(
            &live,
            pb::DomainEventType::Stopped,
            stopped,
            pb::DomainEventDetail::Unspecified,
        );
        if entry.persistent.is_none() {
            table.entries.remove(uuid);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Snapshots
    // ----------------------------------------------------------------------------------------

    fn snapshot_view(
        &self,
        uuid: &str,
        domain: &str,
        record: &Record,
        all: &[Record],
    ) -> pb::Snapshot {
        let children = all.iter().filter(|r| r.parent == record.name).count();
        let mut descendants = 0;
        let mut frontier = vec![record.name.clone()];
        while let Some(name) = frontier.pop() {
            for child in all.iter().filter(|r| r.parent == name) {
                descendants += 1;
                frontier.push(child.name.clone());
            }
        }
        pb::Snapshot {
            name: record.name.clone(),
            domain: domain.to_string(),
            description: record.description.clone(),
            parent: record.parent.clone(),
            creation_time_unix_s: record.created_unix_s,
            state: record.state,
            disk_only: false,
            location: if record.memory == Memory::VmmState {
                pb::SnapshotLocation::External
            } else {
                pb::SnapshotLocation::Internal
            } as i32,
            current: self.snapshots.current(uuid).as_deref() == Some(record.name.as_str()),
            children: u32::try_from(children).unwrap_or(u32::MAX),
            descendants: u32::try_from(descendants).unwrap_or(u32::MAX),
            has_metadata: true,
        }
    }

    /// Stops a run at once for a snapshot operation: no lifecycle action, no stop event.
    async fn stop_for_snapshot(&self, table: &mut Table, uuid: &str) -> Option<Run> {
        let entry = table.entry(uuid);
        let run = entry.run.as_mut()?;
        run.intent = Intent::Destroy;
        let pid = run.pid;
        if let Ok(pidfd) = process::pidfd(pid) {
            process::signal(pid, nix::sys::signal::Signal::SIGKILL);
            process::wait_exit(pidfd).await;
        }
        let run = table.entry(uuid).run.take()?;
        self.release(&run).await;
        Some(run)
    }

    /// What a run holds on the host: console, cgroup, taps, managed host devices, run directory.
    async fn release(&self, run: &Run) {
        run.console.close();
        if let Some(group) = &run.cgroup {
            group.remove();
        }
        network::remove_taps(&run.taps).await;
        self.host_devices.release(&run.live).await;
        let _ = std::fs::remove_dir_all(&run.paths.dir);
    }

    fn snapshot_name(&self, uuid: &str, name: &str, current: bool) -> Result<String, Error> {
        if current || name.is_empty() {
            return self
                .snapshots
                .current(uuid)
                .ok_or_else(|| Error::NotFound("the domain has no current snapshot".into()));
        }
        if self.snapshots.get(uuid, name).is_none() {
            return Err(Error::NotFound(format!("snapshot '{name}' does not exist")));
        }
        Ok(name.to_string())
    }

    pub async fn create_snapshot(
        self: &Arc<Self>,
        domain: Option<&ObjectRef>,
        name: String,
        description: String,
        disk_only: bool,
    ) -> Result<pb::Snapshot, Error> {
        if disk_only {
            return Err(Error::Unsupported(
                "--disk-only (external overlay) snapshots are not built; internal snapshots keep disks and memory".into(),
            ));
        }
        let created = now_ms() / 1000;
        let name = if name.is_empty() {
            created.to_string()
        } else {
            name
        };
        vireo_conf::domain::check_name(&name, "name")?;
        let mut table = self.table.lock().await;
        let uuid = table.find(domain)?;
        if self.snapshots.get(&uuid, &name).is_some() {
            return Err(Error::AlreadyExists(format!(
                "snapshot '{name}' already exists"
            )));
        }
        let entry = table.entry(&uuid);
        let domain_name = entry.name().to_string();
        let def = entry
            .persistent
            .clone()
            .unwrap_or_else(|| entry.definition().clone());
        let disks = writable_disks(entry.definition());
        if let Some((target, _, _)) = disks.iter().find(|(_, _, qcow2)| !qcow2) {
            return Err(Error::Unsupported(format!(
                "disk {target} is writable and not qcow2: internal snapshots keep disk state inside qcow2 images (make it qcow2 or read-only)"
            )));
        }
        let (state, _) = entry.state();
        let live_xml = match entry.run.as_ref() {
            Some(run) => vireo_conf::domain::format(&run.live, None)?,
            None => String::new(),
        };
        let memory = match entry.run.as_ref().map(|r| r.engine) {
            None => {
                for (_, path, _) in &disks {
                    snapshots::qemu_img_snapshot("-c", &name, path)
                        .await
                        .map_err(Error::State)?;
                }
                Memory::None
            }
            Some(pb::Engine::Qemu) => {
                let run = Self::running(&mut table, &uuid)?;
                if disks.is_empty() {
                    return Err(Error::Unsupported(
                        "a running qemu guest keeps its snapshot inside a writable qcow2 disk, and this one has none".into(),
                    ));
                }
                hmp(&run.control, &format!("savevm {name}")).await?;
                Memory::QemuInternal
            }
            Some(_) => {
                if let Some((target, _, _)) = disks.first() {
                    return Err(Error::Unsupported(format!(
                        "the vmm engine snapshots running guests without writable disks only (disk {target} is writable)"
                    )));
                }
                let file = self.snapshots.memory_file(&uuid, &name);
                std::fs::create_dir_all(file.parent().unwrap_or(Path::new("/")))
                    .map_err(Error::io("snapshot directory"))?;
                let run = Self::running(&mut table, &uuid)?;
                let (id, was_paused) = (run.id, run.state == State::Paused);
                let Control::Vmm(socket) = &run.control else {
                    return Err(Error::Engine("vmm run without a vmm control".into()));
                };
                // vireo-vmm writes the machine and stops; a new process continues from the file.
                engine::vmm::request(socket, serde_json::json!({"cmd": "save", "path": file}))
                    .await
                    .map_err(Error::Engine)?;
                self.stop_for_snapshot(&mut table, &uuid).await;
                self.launch(&mut table, &uuid, id, false, &Boot::Restore(file))
                    .await?;
                if was_paused {
                    let run = Self::running(&mut table, &uuid)?;
                    run.control.pause().await?;
                    (run.state, run.reason) = (State::Paused, Reason::PausedFromSnapshot);
                }
                Memory::VmmState
            }
        };
        let record = Record {
            name: name.clone(),
            description,
            parent: self.snapshots.current(&uuid).unwrap_or_default(),
            created_unix_s: created,
            state: state as i32,
            memory,
            domain_xml: vireo_conf::domain::format(&def, None)?,
            qcow2_disks: disks.iter().map(|(_, path, _)| path.clone()).collect(),
            live_xml: if memory == Memory::VmmState {
                live_xml
            } else {
                String::new()
            },
        };
        self.snapshots
            .save(&uuid, &record)
            .map_err(Error::io("snapshot record"))?;
        self.snapshots
            .set_current(&uuid, &name)
            .map_err(Error::io("current snapshot"))?;
        let all = self.snapshots.list(&uuid);
        Ok(self.snapshot_view(&uuid, &domain_name, &record, &all))
    }

    pub async fn list_snapshots(
        &self,
        domain: Option<&ObjectRef>,
    ) -> Result<Vec<pb::Snapshot>, Error> {
        let table = self.table.lock().await;
        let uuid = table.find(domain)?;
        let name = table.entries[&uuid].name().to_string();
        let all = self.snapshots.list(&uuid);
        Ok(all
            .iter()
            .map(|r| self.snapshot_view(&uuid, &name, r, &all))
            .collect())
    }

    pub async fn get_snapshot(
        &self,
        domain: Option<&ObjectRef>,
        name: &str,
        current: bool,
    ) -> Result<(pb::Snapshot, String, Option<String>), Error> {
        let table = self.table.lock().await;
        let uuid = table.find(domain)?;
        let name = self.snapshot_name(&uuid, name, current)?;
        let domain_name = table.entries[&uuid].name().to_string();
        let all = self.snapshots.list(&uuid);
        let record = self
            .snapshots
            .get(&uuid, &name)
            .ok_or_else(|| Error::NotFound(format!("snapshot '{name}' does not exist")))?;
        let memory_file = (record.memory == Memory::VmmState).then(|| {
            self.snapshots
                .memory_file(&uuid, &name)
                .display()
                .to_string()
        });
        Ok((
            self.snapshot_view(&uuid, &domain_name, &record, &all),
            record.domain_xml,
            memory_file,
        ))
    }

    pub async fn revert_snapshot(
        self: &Arc<Self>,
        domain: Option<&ObjectRef>,
        name: &str,
        current: bool,
        paused: bool,
    ) -> Result<(), Error> {
        let mut table = self.table.lock().await;
        let uuid = table.find(domain)?;
        let name = self.snapshot_name(&uuid, name, current)?;
        let record = self
            .snapshots
            .get(&uuid, &name)
            .ok_or_else(|| Error::NotFound(format!("snapshot '{name}' does not exist")))?;
        let mut def = vireo_conf::domain::parse(&record.domain_xml)?;
        vireo_conf::domain::fill_defaults(&mut def);
        let running_engine = table.entry(&uuid).run.as_ref().map(|r| r.engine);
        // A running QEMU guest goes back in place; anything else starts again from the snapshot.
        if record.memory == Memory::QemuInternal && running_engine == Some(pb::Engine::Qemu) {
            let run = Self::running(&mut table, &uuid)?;
            hmp(&run.control, &format!("loadvm {name}")).await?;
            if paused {
                run.control.pause().await?;
                (run.state, run.reason) = (State::Paused, Reason::PausedFromSnapshot);
            } else {
                run.control.resume().await?;
                (run.state, run.reason) = (State::Running, Reason::RunningFromSnapshot);
            }
            self.write_status(&table, &uuid);
        } else {
            let old = self.stop_for_snapshot(&mut table, &uuid).await;
            if record.memory == Memory::None {
                for path in &record.qcow2_disks {
                    snapshots::qemu_img_snapshot("-a", &name, path)
                        .await
                        .map_err(Error::State)?;
                }
            }
            let entry = table.entry(&uuid);
            if entry.persistent.is_some() {
                self.store
                    .save(&def)
                    .map_err(Error::io("saving the reverted definition"))?;
                entry.persistent = Some(def.clone());
            }
            if let Some(old) = &old {
                self.publish(
                    &old.live,
                    pb::DomainEventType::Stopped,
                    (State::Shutoff, Reason::ShutoffFromSnapshot),
                    pb::DomainEventDetail::Unspecified,
                );
            }
            let boot = match record.memory {
                Memory::None => None,
                Memory::VmmState => Some(Boot::Restore(self.snapshots.memory_file(&uuid, &name))),
                Memory::QemuInternal => Some(Boot::LoadVm(name.clone())),
            };
            match boot {
                Some(boot) => {
                    let transient = entry.persistent.is_none();
                    // launch reads the definition from the entry: a machine state comes back
                    // with the definition it ran with (its taps' names); the persistent one
                    // is put back after.
                    let run_with =
                        vireo_conf::domain::parse(&record.live_xml).unwrap_or(def.clone());
                    let kept = entry.persistent.replace(run_with);
                    let id = match &old {
                        Some(run) => run.id,
                        None => {
                            table.next_id += 1;
                            table.next_id - 1
                        }
                    };
                    let result = self.launch(&mut table, &uuid, id, paused, &boot).await;
                    table.entry(&uuid).persistent = kept;
                    if transient && result.is_err() {
                        table.entries.remove(&uuid);
                    }
                    result?;
                }
                None => {
                    if entry.persistent.is_none() {
                        table.entries.remove(&uuid);
                    } else {
                        entry.inactive = (State::Shutoff, Reason::ShutoffFromSnapshot);
                    }
                }
            }
        }
        self.snapshots
            .set_current(&uuid, &name)
            .map_err(Error::io("current snapshot"))?;
        Ok(())
    }

    pub async fn delete_snapshot(
        &self,
        domain: Option<&ObjectRef>,
        name: &str,
        current: bool,
        metadata_only: bool,
    ) -> Result<String, Error> {
        let table = self.table.lock().await;
        let uuid = table.find(domain)?;
        let name = self.snapshot_name(&uuid, name, current)?;
        let record = self
            .snapshots
            .get(&uuid, &name)
            .ok_or_else(|| Error::NotFound(format!("snapshot '{name}' does not exist")))?;
        if !metadata_only && !record.qcow2_disks.is_empty() {
            match table.entries[&uuid].run.as_ref() {
                Some(run) if run.engine == pb::Engine::Qemu => {
                    hmp(&run.control, &format!("delvm {name}")).await?;
                }
                Some(_) => {
                    return Err(Error::State(format!(
                        "snapshot '{name}' lives in the disks of a running guest; destroy it first or use --metadata"
                    )));
                }
                None => {
                    for path in &record.qcow2_disks {
                        snapshots::qemu_img_snapshot("-d", &name, path)
                            .await
                            .map_err(Error::State)?;
                    }
                }
            }
        }
        let was_current = self.snapshots.current(&uuid).as_deref() == Some(name.as_str());
        // Children now hang from the deleted snapshot's parent.
        for mut child in self
            .snapshots
            .list(&uuid)
            .into_iter()
            .filter(|r| r.parent == name)
        {
            child.parent.clone_from(&record.parent);
            self.snapshots
                .save(&uuid, &child)
                .map_err(Error::io("snapshot record"))?;
        }
        self.snapshots
            .remove(&uuid, &name)
            .map_err(Error::io("snapshot record"))?;
        if was_current && !record.parent.is_empty() {
            self.snapshots
                .set_current(&uuid, &record.parent)
                .map_err(Error::io("current snapshot"))?;
        }
        Ok(name)
    }

    /// The running guest of a domain, or the error virsh gives for an inactive one.
    fn running<'a>(table: &'a mut Table, uuid: &str) -> Result<&'a mut Run, Error> {
        let entry = table.entry(uuid);
        let name = entry.name().to_string();
        entry
            .run
            .as_mut()
            .ok_or_else(|| Error::State(format!("domain '{name}' is not running")))
    }

    pub async fn shutdown(&self, domain: Option<&ObjectRef>, reboot: bool) -> Result<(), Error> {
        let mut table = self.table.lock().await;
        let uuid = table.find(domain)?;
        let run = Self::running(&mut table, &uuid)?;
        if run.state == State::Paused {
            return Err(Error::State(format!(
                "domain '{}' is paused: resume it so it can act on the power button",
                run.live.name
            )));
        }
        run.control.power_button().await?;
        run.intent = if reboot {
            Intent::Reboot
        } else {
            Intent::Shutdown
        };
        Ok(())
    }

    pub async fn reset(&self, domain: Option<&ObjectRef>) -> Result<(), Error> {
        let mut table = self.table.lock().await;
        let uuid = table.find(domain)?;
        let run = Self::running(&mut table, &uuid)?;
        // vireo-vmm exits for a reset and is started again; QEMU resets in place.
        if run.engine == pb::Engine::Vmm {
            run.intent = Intent::Reboot;
        }
        run.control.reset().await
    }

    pub async fn destroy(
        self: &Arc<Self>,
        domain: Option<&ObjectRef>,
        graceful: bool,
    ) -> Result<(), Error> {
        let mut table = self.table.lock().await;
        let uuid = table.find(domain)?;
        let run = Self::running(&mut table, &uuid)?;
        run.intent = Intent::Destroy;
        let pid = run.pid;
        let pidfd = process::pidfd(pid).map_err(Error::io("pidfd of the guest"))?;
        process::signal(pid, nix::sys::signal::Signal::SIGTERM);
        let exited = tokio::time::timeout(
            DESTROY_GRACE,
            process::wait_exit(pidfd.try_clone().map_err(Error::io("pidfd"))?),
        )
        .await
        .is_ok();
        if !exited {
            if graceful {
                return Err(Error::State(format!(
                    "domain '{}' did not end within {} s of SIGTERM (--graceful does not kill)",
                    run.live.name,
                    DESTROY_GRACE.as_secs()
                )));
            }
            process::signal(pid, nix::sys::signal::Signal::SIGKILL);
            process::wait_exit(pidfd).await;
        }
        let entry = table.entry(&uuid);
        let Some(run) = entry.run.take() else {
            return Ok(());
        };
        self.finish(&mut table, &uuid, run, Outcome::Destroyed)
            .await;
        Ok(())
    }

    pub async fn suspend(&self, domain: Option<&ObjectRef>, suspend: bool) -> Result<(), Error> {
        let mut table = self.table.lock().await;
        let uuid = table.find(domain)?;
        let run = Self::running(&mut table, &uuid)?;
        let state = if suspend {
            run.control.pause().await?;
            (State::Paused, Reason::PausedUser)
        } else {
            run.control.resume().await?;
            (State::Running, Reason::RunningUnpaused)
        };
        self.set_run_state(&mut table, &uuid, state);
        Ok(())
    }

    /// Records that a running guest is now paused or running, and tells the watchers.
    fn set_run_state(&self, table: &mut Table, uuid: &str, state: (State, Reason)) {
        let Some(run) = table.entry(uuid).run.as_mut() else {
            return;
        };
        (run.state, run.reason) = state;
        let live = run.live.clone();
        self.write_status(table, uuid);
        self.publish(
            &live,
            if state.0 == State::Paused {
                pb::DomainEventType::Suspended
            } else {
                pb::DomainEventType::Resumed
            },
            state,
            pb::DomainEventDetail::Unspecified,
        );
    }

    /// Runs `f` on a running guest's engine control and live definition.
    pub async fn with_run<T>(
        &self,
        domain: Option<&ObjectRef>,
        f: impl AsyncFnOnce(RunView<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut table = self.table.lock().await;
        let uuid = table.find(domain)?;
        let others_with_hostdevs = table
            .entries
            .iter()
            .filter(|(other, _)| **other != uuid)
            .filter_map(|(_, entry)| entry.run.as_ref())
            .filter(|run| hostdev::pci_hostdevs(&run.live).next().is_some())
            .map(|run| run.live.clone())
            .collect();
        let run = Self::running(&mut table, &uuid)?;
        f(RunView {
            others_with_hostdevs,
            id: run.id,
            taps: &mut run.taps,
            live: &mut run.live,
            control: &run.control,
            console: &run.console,
            cgroup: run.cgroup.as_ref(),
            pid: run.pid,
            engine: run.engine,
        })
        .await
    }

    /// Changes a domain's persistent definition (and tells listeners it was updated).
    pub async fn update_persistent(
        &self,
        domain: Option<&ObjectRef>,
        f: impl FnOnce(&mut pb::DomainDefinition) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut table = self.table.lock().await;
        let uuid = table.find(domain)?;
        let entry = table.entry(&uuid);
        let name = entry.name().to_string();
        let mut def = entry.persistent.clone().ok_or_else(|| {
            Error::State(format!(
                "domain '{name}' is transient: it has no persistent definition"
            ))
        })?;
        f(&mut def)?;
        vireo_conf::domain::validate(&def)?;
        self.store
            .save(&def)
            .map_err(Error::io(format!("saving the definition of '{name}'")))?;
        entry.persistent = Some(def.clone());
        let state = entry.state();
        self.publish(
            &def,
            pb::DomainEventType::Defined,
            state,
            pb::DomainEventDetail::DefinedUpdated,
        );
        Ok(())
    }

    /// Writes the run status after a live change.
    pub async fn save_status(&self, domain: Option<&ObjectRef>) {
        let table = self.table.lock().await;
        if let Ok(uuid) = table.find(domain) {
            self.write_status(&table, &uuid);
        }
    }

    /// Stops every supervisor's guest? No: guests outlive the service. This only drops consoles.
    pub async fn close(&self) {
        let table = self.table.lock().await;
        for entry in table.entries.values() {
            if let Some(run) = &entry.run {
                run.console.close();
            }
        }
    }
}

/// Writable disks of a definition, as (target, path, is qcow2).
fn writable_disks(def: &pb::DomainDefinition) -> Vec<(String, String, bool)> {
    def.devices
        .iter()
        .flat_map(|d| &d.disks)
        .filter(|d| !d.readonly && d.device == pb::DiskDevice::Disk as i32)
        .map(|d| {
            (
                d.target.as_ref().map(|t| t.dev.clone()).unwrap_or_default(),
                engine::disk_source(d).unwrap_or("").to_string(),
                d.driver
                    .as_ref()
                    .is_some_and(|x| x.r#type == pb::DiskFormat::Qcow2 as i32),
            )
        })
        .collect()
}

/// An HMP command through QMP; HMP reports failure as text.
async fn hmp(control: &Control, command: &str) -> Result<(), Error> {
    let Control::Qemu(qmp) = control else {
        return Err(Error::Unsupported(format!(
            "'{command}' needs the qemu engine"
        )));
    };
    let reply = qmp
        .execute(
            "human-monitor-command",
            serde_json::json!({ "command-line": command }),
        )
        .await
        .map_err(|err| Error::Engine(format!("QEMU {command}: {err}")))?;
    match reply.as_str().map(str::trim) {
        None | Some("") => Ok(()),
        Some(text) => Err(Error::State(format!("QEMU {command}: {text}"))),
    }
}

/// Where the first serial port goes besides the console hub, from the definition.
fn host_end(def: &pb::DomainDefinition) -> HostEnd {
    let Some(devices) = def.devices.as_ref() else {
        return HostEnd::Hub;
    };
    let port = devices.serials.first().or_else(|| {
        devices.consoles.iter().find(|c| {
            c.target
                .as_ref()
                .is_none_or(|t| t.r#type != pb::CharTargetType::Virtio as i32)
        })
    });
    let Some(port) = port else {
        return HostEnd::Hub;
    };
    let source = port.source.clone().unwrap_or_default();
    match port.r#type() {
        pb::CharSourceType::File => HostEnd::File {
            path: PathBuf::from(source.path),
            append: source.append,
        },
        pb::CharSourceType::Unix => HostEnd::Unix(PathBuf::from(source.path)),
        _ => HostEnd::Hub,
    }
}

/// Blanks what only --security-info shows: graphics passwords.
fn hide_secrets(def: &mut pb::DomainDefinition) {
    if let Some(devices) = def.devices.as_mut() {
        for graphics in &mut devices.graphics {
            graphics.passwd.clear();
        }
    }
}

/// How a guest's engine starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// From its kernel or firmware.
    Fresh,
    /// vireo-vmm: from a saved machine state.
    Restore(PathBuf),
    /// QEMU: from an internal snapshot of its qcow2 disks (-loadvm).
    LoadVm(String),
    /// QEMU: from a saved state file, fed through -incoming.
    Incoming(PathBuf),
    /// From a live migration arriving on this TCP address (QEMU's -incoming tcp:, vireo-vmm
    /// receive --listen).
    IncomingTcp(std::net::SocketAddr),
}

/// A running guest as a request handler sees it.
pub struct RunView<'a> {
    pub id: i32,
    pub taps: &'a mut Vec<String>,
    pub live: &'a mut pb::DomainDefinition,
    pub control: &'a Control,
    pub console: &'a Arc<ConsoleHub>,
    pub cgroup: Option<&'a Group>,
    pub pid: u32,
    pub engine: pb::Engine,
    /// The live definitions of the other running guests that hold host devices.
    pub others_with_hostdevs: Vec<pb::DomainDefinition>,
}

/// The spawned engine, handed to its supervisor for reaping.
struct SpawnedChild(Option<tokio::process::Child>);

impl SpawnedChild {
    fn id(&self) -> Option<u32> {
        self.0.as_ref().and_then(tokio::process::Child::id)
    }
    fn take(&mut self) -> Option<tokio::process::Child> {
        self.0.take()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Poweroff,
    Reboot,
    Crash,
    Destroyed,
    Saved,
    /// Its state went to another host.
    Migrated,
    /// Restart whatever the definition says (virsh reboot, reset on vireo-vmm).
    Restart,
}

fn outcome_of(run: &Run, code: Option<i32>) -> Outcome {
    use engine::vmm::VmmExit;
    if run.intent == Intent::Destroy {
        return Outcome::Destroyed;
    }
    let reported = if run.engine == pb::Engine::Vmm && code.is_some() {
        match engine::vmm::exit_of(code) {
            VmmExit::Poweroff => Some(Outcome::Poweroff),
            VmmExit::Reboot => Some(Outcome::Reboot),
            VmmExit::Crash | VmmExit::Failed => Some(Outcome::Crash),
            VmmExit::Stopped => Some(Outcome::Destroyed),
            VmmExit::Saved => Some(Outcome::Saved),
        }
    } else {
        match &run.last_event {
            Some(EngineEvent::Poweroff) => Some(Outcome::Poweroff),
            Some(EngineEvent::Reboot) => Some(Outcome::Reboot),
            Some(EngineEvent::Crash(_)) => Some(Outcome::Crash),
            _ => None,
        }
    };
    match (run.intent, reported) {
        // virsh reboot: the guest powered off for it, so it starts again.
        (Intent::Reboot, Some(Outcome::Poweroff | Outcome::Reboot)) => Outcome::Restart,
        (_, Some(outcome)) => outcome,
        (Intent::Shutdown, None) => Outcome::Poweroff,
        // The engine died without saying why.
        (_, None) => Outcome::Crash,
    }
}

/// Runtime values of the live definition: aliases, taps, engine.
fn fill_live(live: &mut pb::DomainDefinition, taps: &[String], placement: Placement) {
    live.engine = placement.engine as i32;
    let Some(devices) = live.devices.as_mut() else {
        return;
    };
    for (index, disk) in devices.disks.iter_mut().enumerate() {
        disk.alias = format!("virtio-disk{index}");
    }
    for (index, hostdev) in devices.hostdevs.iter_mut().enumerate() {
        hostdev.alias = format!("hostdev{index}");
    }
    for (index, (interface, tap)) in devices.interfaces.iter_mut().zip(taps).enumerate() {
        interface.alias = format!("net{index}");
        if interface.target_dev.is_empty() && !tap.is_empty() {
            interface.target_dev = tap.clone();
        }
    }
    // A pty serial port has no /dev/pts path here: the guest's port is relayed by the service's
    // console hub (`vireo console`), so the live definition names none rather than a wrong one.
    for (index, device) in devices
        .serials
        .iter_mut()
        .chain(devices.consoles.iter_mut())
        .enumerate()
    {
        device.alias = if index == 0 {
            "serial0".into()
        } else {
            format!("console{}", index - 1)
        };
    }
}

/// Applies <vcpu cpuset> and <cputune><vcpupin> to the vCPU threads.
fn apply_pinning(run: &Run) -> std::io::Result<()> {
    let vcpu = run.live.vcpu.clone().unwrap_or_default();
    let pins = run
        .live
        .cputune
        .as_ref()
        .map(|t| t.vcpupins.clone())
        .unwrap_or_default();
    if vcpu.cpuset.is_empty() && pins.is_empty() {
        return Ok(());
    }
    for thread in process::vcpu_threads(run.pid) {
        let cpuset = pins
            .iter()
            .find(|p| p.vcpu == thread.vcpu)
            .map(|p| p.cpuset.clone())
            .unwrap_or_else(|| vcpu.cpuset.clone());
        if cpuset.is_empty() {
            continue;
        }
        let cpus =
            vireo_conf::domain::parse_cpuset(&cpuset, "cpuset").map_err(std::io::Error::other)?;
        process::set_affinity(thread.tid, &cpus)?;
    }
    Ok(())
}

/// Puts a new engine process in its cgroup and applies the definition's CPU and memory tuning.
/// A definition that asks for limits fails to start without cgroups; one that does not still
/// gets a group for accounting where the host allows.
fn place_in_cgroup(
    uuid: &str,
    pid: u32,
    def: &pb::DomainDefinition,
) -> Result<Option<Group>, Error> {
    let cpu = def
        .cputune
        .as_ref()
        .filter(|t| t.shares.is_some() || t.period_us.is_some() || t.quota_us.is_some());
    let memory = def.memtune.as_ref();
    let wanted = cpu.is_some() || memory.is_some();
    let refuse = |why: String| {
        Error::State(format!(
            "<cputune>/<memtune> need cgroups, and {why}; nothing was started"
        ))
    };
    let Some(layout) = cgroup::detect() else {
        return if wanted {
            Err(refuse(
                "this host has no cgroup hierarchy Vireo can manage".into(),
            ))
        } else {
            Ok(None)
        };
    };
    let group = Group::new(layout, uuid);
    if let Err(err) = group.create(pid) {
        group.remove();
        return if wanted {
            Err(refuse(format!("creating the guest's cgroup failed: {err}")))
        } else {
            tracing::warn!(%uuid, %err, "no cgroup for the guest; running without accounting");
            Ok(None)
        };
    }
    let applied = cpu
        .map(|tune| group.set_cpu(tune))
        .transpose()
        .and_then(|_| memory.map(|tune| group.set_memory(tune)).transpose());
    if let Err(err) = applied {
        group.remove();
        return Err(Error::State(format!(
            "applying <cputune>/<memtune> failed: {err}; nothing was started"
        )));
    }
    Ok(Some(group))
}
