//! The networks of this host: definitions in the crash-safe store, their lifecycle, and the host
//! side each active one needs (bridge, addresses, routes, forwarding, nftables table, dnsmasq).
//! Bringing a network up is idempotent: the same steps start it and, after a crash or kill -9,
//! repair it from the record of active networks in the run directory.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use tokio::sync::{Mutex, broadcast};
use vireo_proto::common::v1::{ObjectRef, object_ref};
use vireo_proto::network::v1 as pb;
use vireo_runtime::store::{DefinitionStore, write_atomically};

use super::dnsmasq::{self, Files};
use super::firewall::{self, Subnet};
use super::netlink::{BridgeSettings, Netlink};
use crate::error::{Error, Result};

/// The `[network]` section of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Make the `default` NAT network on a fresh host, as libvirt does (default true).
    pub default_network: Option<bool>,
}

struct Entry {
    def: pb::NetworkDefinition,
    persistent: bool,
    autostart: bool,
    active: bool,
    /// A persistent definition saved while the network ran: it applies at the next start.
    next: Option<pb::NetworkDefinition>,
}

impl Entry {
    fn info(&self) -> pb::NetworkInfo {
        pb::NetworkInfo {
            name: self.def.name.clone(),
            uuid: self.def.uuid.clone(),
            active: self.active,
            persistent: self.persistent,
            autostart: self.autostart,
            bridge: bridge_name(&self.def).to_string(),
        }
    }

    fn shown(&self, inactive: bool) -> pb::Network {
        let def = match (&self.next, inactive) {
            (Some(next), true) => next.clone(),
            _ => self.def.clone(),
        };
        pb::Network {
            definition: Some(def),
            active: self.active,
            persistent: self.persistent,
            autostart: self.autostart,
        }
    }
}

pub struct Manager {
    table: Mutex<Vec<Entry>>,
    store: DefinitionStore,
    /// `<run>/network/active/<uuid>.xml`: the running definition of each active network.
    active_dir: PathBuf,
    /// dnsmasq's configuration, host files and leases, per network.
    dnsmasq_dir: PathBuf,
    /// dnsmasq's pid files.
    run_dir: PathBuf,
    netlink: Netlink,
    /// `<run>/network/ports/<uuid>.json`: the guest ports, whose taps outlive this process.
    ports_dir: PathBuf,
    events: broadcast::Sender<pb::NetworkEvent>,
    seq: AtomicU64,
}

fn parse_checked(xml: &str) -> Result<pb::NetworkDefinition> {
    Ok(vireo_conf::network::parse(xml)?)
}

fn format(def: &pb::NetworkDefinition) -> Result<String> {
    Ok(vireo_conf::network::format(def)?)
}

fn find(table: &[Entry], network: &ObjectRef) -> Result<usize> {
    let (text, by_uuid, any) = match &network.key {
        Some(object_ref::Key::Name(name)) => (name.as_str(), false, false),
        Some(object_ref::Key::Uuid(uuid)) => (uuid.as_str(), true, false),
        Some(object_ref::Key::Any(any)) => (any.as_str(), false, true),
        Some(object_ref::Key::Id(_)) | None => {
            return Err(Error::field("network", "name a network by name or UUID"));
        }
    };
    table
        .iter()
        .position(|entry| {
            (!by_uuid && entry.def.name == text)
                || ((by_uuid || any) && entry.def.uuid.eq_ignore_ascii_case(text))
        })
        .ok_or_else(|| {
            Error::NotFound(format!(
                "no network with matching {} '{text}'",
                if by_uuid { "uuid" } else { "name" }
            ))
        })
}

fn by_name(name: &str) -> ObjectRef {
    ObjectRef {
        key: Some(object_ref::Key::Name(name.to_string())),
    }
}

pub fn bridge_name(def: &pb::NetworkDefinition) -> &str {
    def.bridge
        .as_ref()
        .map_or("", |bridge| bridge.name.as_str())
}

fn mode_of(def: &pb::NetworkDefinition) -> pb::ForwardMode {
    match &def.forward {
        None => pb::ForwardMode::None,
        Some(forward) => match forward.mode() {
            pb::ForwardMode::Unspecified => pb::ForwardMode::Nat,
            mode => mode,
        },
    }
}

/// The host interfaces a macvtap network puts its guests on (bridge mode with `<interface>`s,
/// private, vepa, passthrough); None for every other network.
fn macvtap_devices(def: &pb::NetworkDefinition) -> Option<&[String]> {
    let forward = def.forward.as_ref()?;
    let macvtap = match forward.mode() {
        pb::ForwardMode::Bridge => !forward.interfaces.is_empty(),
        pb::ForwardMode::Private | pb::ForwardMode::Vepa | pb::ForwardMode::Passthrough => true,
        _ => false,
    };
    macvtap.then_some(forward.interfaces.as_slice())
}

fn macvtap_mode(mode: pb::ForwardMode) -> rtnetlink::packet_route::link::MacVtapMode {
    use rtnetlink::packet_route::link::MacVtapMode;
    match mode {
        pb::ForwardMode::Private => MacVtapMode::Private,
        pb::ForwardMode::Vepa => MacVtapMode::Vepa,
        pb::ForwardMode::Passthrough => MacVtapMode::Passthrough,
        _ => MacVtapMode::Bridge,
    }
}

/// The subnet of one `<ip>` (or of a `<route>` put as one).
pub fn subnet_of(ip: &pb::NetworkIp) -> Result<Subnet> {
    let (address, prefix) = vireo_conf::network::subnet_of(ip)?;
    Ok(Subnet { address, prefix })
}

fn prefix_of(ip: &pb::NetworkIp) -> Result<u8> {
    subnet_of(ip).map(|subnet| subnet.prefix)
}

fn parse_mac(mac: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    bytes.try_into().ok()
}

/// Runs `nft -f -` on `script`.
async fn nft(script: &str) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| Error::Tool(format!("cannot run nft: {err}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|err| Error::Tool(format!("nft: {err}")))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|err| Error::Tool(format!("nft: {err}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Tool(format!(
            "nft: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// The names of Vireo's nftables tables on this host.
async fn vireo_tables() -> Vec<String> {
    let Ok(output) = tokio::process::Command::new("nft")
        .args(["-j", "list", "tables", "inet"])
        .output()
        .await
    else {
        return Vec::new();
    };
    let listing: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    listing["nftables"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item["table"]["name"].as_str())
                .filter(|name| name.starts_with(firewall::TABLE_PREFIX))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The interface already routing to an overlapping IPv4 subnet, if any (/proc/net/route).
fn route_conflict(subnet: &Subnet, own_bridge: &str) -> Option<String> {
    let IpAddr::V4(ours) = subnet.address else {
        return None;
    };
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    let our_mask = u32::MAX
        .checked_shl(32 - u32::from(subnet.prefix.min(32)))
        .unwrap_or(0);
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [interface, destination, _, _, _, _, _, mask, ..] = fields.as_slice() else {
            continue;
        };
        // The kernel prints addresses as little-endian hex.
        let (Ok(destination), Ok(mask)) = (
            u32::from_str_radix(destination, 16).map(u32::from_be),
            u32::from_str_radix(mask, 16).map(u32::from_be),
        ) else {
            continue;
        };
        if mask == 0 || *interface == own_bridge {
            continue;
        }
        let common = mask & our_mask;
        if destination & common == u32::from(ours) & common {
            return Some((*interface).to_string());
        }
    }
    None
}

fn enable_forwarding(subnets: &[Subnet]) -> Result<()> {
    let mut knobs = vec!["/proc/sys/net/ipv4/ip_forward"];
    if subnets.iter().any(|subnet| subnet.address.is_ipv6()) {
        knobs.push("/proc/sys/net/ipv6/conf/all/forwarding");
    }
    for knob in knobs {
        std::fs::write(knob, "1\n").map_err(Error::io(format!("enabling forwarding ({knob})")))?;
    }
    Ok(())
}

fn already_there(err: &super::netlink::NetlinkError) -> bool {
    err.errno() == Some(libc::EEXIST)
}

impl Manager {
    pub async fn open(
        state_dir: &Path,
        run_dir: &Path,
        settings: &Settings,
    ) -> Result<std::sync::Arc<Manager>> {
        let store = DefinitionStore::open(state_dir, "networks")
            .map_err(Error::io("network definitions"))?;
        let run_dir = run_dir.join("network");
        let active_dir = run_dir.join("active");
        let ports_dir = run_dir.join("ports");
        let dnsmasq_dir = state_dir.join("dnsmasq");
        for dir in [&active_dir, &dnsmasq_dir, &ports_dir] {
            std::fs::create_dir_all(dir)
                .map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        let manager = std::sync::Arc::new(Manager {
            table: Mutex::new(Vec::new()),
            store,
            active_dir,
            dnsmasq_dir,
            run_dir,
            netlink: Netlink::connect().map_err(Error::io("opening a netlink socket"))?,
            ports_dir,
            events: broadcast::channel(256).0,
            seq: AtomicU64::new(0),
        });
        manager.load().await?;
        manager.reconcile().await;
        // A guest's engine removes its tap when it stops; the port's record and ifb device
        // follow at the next look, which this makes happen every few seconds.
        let weak = std::sync::Arc::downgrade(&manager);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                let Some(manager) = weak.upgrade() else { break };
                manager.live_ports(None).await;
            }
        });
        if settings.default_network.unwrap_or(true) {
            manager.ensure_default_network(state_dir).await;
        }
        Ok(manager)
    }

    async fn load(&self) -> Result<()> {
        let mut table = self.table.lock().await;
        let loaded = self
            .store
            .load_checked("network", |xml| parse_checked(xml).ok(), |def| &def.uuid)
            .map_err(Error::io("reading network definitions"))?;
        for (def, autostart) in loaded {
            table.push(Entry {
                def,
                persistent: true,
                autostart,
                active: false,
                next: None,
            });
        }
        table.sort_by(|a, b| a.def.name.cmp(&b.def.name));
        Ok(())
    }

    /// After a restart (or kill -9): every network recorded active is brought up again (each
    /// step is idempotent, so what survived stays and what is missing returns), and whatever
    /// Vireo left that no active network owns (nftables tables, dnsmasq) is removed.
    async fn reconcile(&self) {
        let mut table = self.table.lock().await;
        let records = std::fs::read_dir(&self.active_dir)
            .map(|dir| dir.flatten().map(|entry| entry.path()).collect::<Vec<_>>())
            .unwrap_or_default();
        for path in records {
            let Some(def) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|xml| parse_checked(&xml).ok())
            else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            if let Err(err) = self.bring_up(&def).await {
                tracing::warn!(network = def.name, %err, "could not restore an active network");
                self.tear_down(&def).await;
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let index = match table.iter().position(|e| e.def.uuid == def.uuid) {
                Some(index) => {
                    let persistent = std::mem::replace(&mut table[index].def, def);
                    if persistent != table[index].def {
                        table[index].next = Some(persistent);
                    }
                    index
                }
                None => {
                    table.push(Entry {
                        def,
                        persistent: false,
                        autostart: false,
                        active: false,
                        next: None,
                    });
                    table.len() - 1
                }
            };
            table[index].active = true;
        }
        table.sort_by(|a, b| a.def.name.cmp(&b.def.name));
        let active: Vec<&pb::NetworkDefinition> =
            table.iter().filter(|e| e.active).map(|e| &e.def).collect();
        for name in vireo_tables().await {
            if !active
                .iter()
                .any(|def| firewall::table_name(&def.uuid) == name)
            {
                tracing::info!(table = name, "removing a table no active network owns");
                let _ = nft(&format!("delete table inet {name}\n")).await;
            }
        }
        for entry in std::fs::read_dir(&self.run_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".pid"))
            else {
                continue;
            };
            if !active.iter().any(|def| def.name == name) {
                let files = self.files(name);
                dnsmasq::stop(&files, &self.conf_path(name)).await;
            }
        }
    }

    /// A fresh host gets the `default` NAT network (DESIGN.md), autostarted, as libvirt does.
    async fn ensure_default_network(&self, state_dir: &Path) {
        let marker = state_dir.join("default-network-made");
        if marker.exists() {
            return;
        }
        let xml = "<network><name>default</name><forward mode='nat'/>\
            <bridge name='vireobr0' stp='on' delay='0'/>\
            <ip address='192.168.122.1' netmask='255.255.255.0'>\
            <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp></ip></network>";
        let made = async {
            if find(&self.table.lock().await, &by_name("default")).is_err() {
                self.define(pb::define_network_request::Source::Xml(xml.into()))
                    .await?;
            }
            self.set_autostart(&by_name("default"), true).await
        };
        match made.await {
            Ok(()) => {
                let _ = write_atomically(&marker, b"");
            }
            Err(err) => tracing::warn!(%err, "could not define the default network"),
        }
    }

    /// Starts every autostart network that is not running (when the service starts).
    pub async fn autostart(&self) {
        let names: Vec<String> = self
            .table
            .lock()
            .await
            .iter()
            .filter(|e| e.autostart && !e.active)
            .map(|e| e.def.name.clone())
            .collect();
        for name in names {
            if let Err(err) = self.start(&by_name(&name)).await {
                tracing::warn!(network = name, %err, "autostart failed");
            }
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<pb::NetworkEvent> {
        self.events.subscribe()
    }

    fn emit(&self, def: &pb::NetworkDefinition, what: pb::NetworkEventType) {
        let mut event = pb::NetworkEvent::default();
        event.set_type(what);
        self.emit_event(def, event);
    }

    /// Stamps `event` with the network, the time and the next sequence number, and sends it.
    fn emit_event(&self, def: &pb::NetworkDefinition, mut event: pb::NetworkEvent) {
        event.name = def.name.clone();
        event.uuid = def.uuid.clone();
        event.time_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        event.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = self.events.send(event);
    }

    fn conf_path(&self, name: &str) -> PathBuf {
        self.dnsmasq_dir.join(format!("{name}.conf"))
    }

    fn files(&self, name: &str) -> Files {
        Files {
            pid: self.run_dir.join(format!("{name}.pid")),
            leases: self.dnsmasq_dir.join(format!("{name}.leases")),
        }
    }

    fn subnets(def: &pb::NetworkDefinition) -> Result<Vec<Subnet>> {
        def.ips.iter().map(subnet_of).collect()
    }

    /// Fills what a definition may leave out: UUID, bridge name, bridge MAC.
    fn complete(table: &[Entry], def: &mut pb::NetworkDefinition) {
        if def.uuid.is_empty() {
            def.uuid = vireo_conf::domain::random_uuid();
        }
        def.uuid = def.uuid.to_ascii_lowercase();
        let routed = !matches!(
            mode_of(def),
            pb::ForwardMode::Bridge
                | pb::ForwardMode::Private
                | pb::ForwardMode::Vepa
                | pb::ForwardMode::Passthrough
                | pb::ForwardMode::Hostdev
        );
        if !routed {
            return;
        }
        let bridge = def.bridge.get_or_insert_with(Default::default);
        if bridge.name.is_empty() {
            let taken = |name: &str| {
                table.iter().any(|e| bridge_name(&e.def) == name)
                    || Path::new("/sys/class/net").join(name).exists()
            };
            bridge.name = (0..)
                .map(|n| format!("vireobr{n}"))
                .find(|name| !taken(name))
                .unwrap_or_default();
        }
        if def.mac.is_empty() {
            def.mac = vireo_conf::domain::random_mac();
        }
    }

    fn definition_of(
        table: &[Entry],
        source: pb::define_network_request::Source,
    ) -> Result<pb::NetworkDefinition> {
        let mut def = match source {
            pb::define_network_request::Source::Xml(xml) => parse_checked(&xml)?,
            pb::define_network_request::Source::Definition(def) => {
                // Typed definitions get the same checks as XML ones.
                parse_checked(&format(&def)?)?
            }
        };
        Self::complete(table, &mut def);
        Ok(def)
    }

    /// Names and UUIDs are unique, and no two networks share a bridge.
    fn check_unique(table: &[Entry], def: &pb::NetworkDefinition) -> Result<Option<usize>> {
        let same_uuid = table.iter().position(|e| e.def.uuid == def.uuid);
        if let Some(other) = table.iter().position(|e| e.def.name == def.name)
            && Some(other) != same_uuid
        {
            return Err(Error::AlreadyExists(format!(
                "network '{}' already exists with uuid {}",
                def.name, table[other].def.uuid
            )));
        }
        if let Some(index) = same_uuid
            && table[index].def.name != def.name
        {
            return Err(Error::AlreadyExists(format!(
                "network uuid {} already belongs to network '{}'",
                def.uuid, table[index].def.name
            )));
        }
        let bridge = bridge_name(def);
        let owns_bridge = !matches!(mode_of(def), pb::ForwardMode::Bridge);
        if owns_bridge
            && !bridge.is_empty()
            && let Some(other) = table
                .iter()
                .enumerate()
                .find(|(index, e)| Some(*index) != same_uuid && bridge_name(&e.def) == bridge)
        {
            return Err(Error::AlreadyExists(format!(
                "bridge name '{bridge}' already in use by network '{}'",
                other.1.def.name
            )));
        }
        Ok(same_uuid)
    }

    /// net-define (also net-edit's second half).
    pub async fn define(&self, source: pb::define_network_request::Source) -> Result<pb::Network> {
        let mut table = self.table.lock().await;
        let def = Self::definition_of(&table, source)?;
        let existing = Self::check_unique(&table, &def)?;
        self.store
            .save(&def.uuid, &format(&def)?)
            .map_err(Error::io("saving the network definition"))?;
        let index = match existing {
            Some(index) => {
                let entry = &mut table[index];
                if entry.active {
                    entry.next = Some(def.clone());
                } else {
                    entry.def = def.clone();
                }
                entry.persistent = true;
                index
            }
            None => {
                table.push(Entry {
                    def: def.clone(),
                    persistent: true,
                    autostart: false,
                    active: false,
                    next: None,
                });
                table.sort_by(|a, b| a.def.name.cmp(&b.def.name));
                find(&table, &by_name(&def.name))?
            }
        };
        self.emit(&def, pb::NetworkEventType::Defined);
        Ok(table[index].shown(false))
    }

    /// net-create: a transient network, started.
    pub async fn create(&self, source: pb::define_network_request::Source) -> Result<pb::Network> {
        let mut table = self.table.lock().await;
        let def = Self::definition_of(&table, source)?;
        if Self::check_unique(&table, &def)?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "network '{}' is already defined; use net-start",
                def.name
            )));
        }
        self.activate(&def).await?;
        table.push(Entry {
            def: def.clone(),
            persistent: false,
            autostart: false,
            active: true,
            next: None,
        });
        table.sort_by(|a, b| a.def.name.cmp(&b.def.name));
        let index = find(&table, &by_name(&def.name))?;
        Ok(table[index].shown(false))
    }

    /// net-start.
    pub async fn start(&self, network: &ObjectRef) -> Result<()> {
        let mut table = self.table.lock().await;
        let index = find(&table, network)?;
        if table[index].active {
            return Err(Error::State(format!(
                "network '{}' is already active",
                table[index].def.name
            )));
        }
        let def = table[index].def.clone();
        self.activate(&def).await?;
        table[index].active = true;
        Ok(())
    }

    /// Records the network as active, then brings it up; on failure undoes both.
    async fn activate(&self, def: &pb::NetworkDefinition) -> Result<()> {
        for subnet in Self::subnets(def)? {
            if let Some(interface) = route_conflict(&subnet, bridge_name(def)) {
                return Err(Error::State(format!(
                    "network '{}': subnet {subnet} is already in use by interface {interface}",
                    def.name
                )));
            }
        }
        let owns_bridge = !matches!(mode_of(def), pb::ForwardMode::Bridge);
        if owns_bridge && self.netlink.index_of(bridge_name(def)).await?.is_some() {
            return Err(Error::State(format!(
                "network '{}': bridge {} already exists on this host",
                def.name,
                bridge_name(def)
            )));
        }
        // Recorded first: a crash half-way leaves a record that the next start completes.
        let record = self.active_dir.join(format!("{}.xml", def.uuid));
        write_atomically(&record, format(def)?.as_bytes())
            .map_err(Error::io("recording the active network"))?;
        if let Err(err) = self.bring_up(def).await {
            self.tear_down(def).await;
            let _ = std::fs::remove_file(&record);
            return Err(err);
        }
        self.emit(def, pb::NetworkEventType::Started);
        Ok(())
    }

    /// Every host-side piece of an active network, each step a no-op when already done.
    async fn bring_up(&self, def: &pb::NetworkDefinition) -> Result<()> {
        let mode = mode_of(def);
        let bridge = bridge_name(def).to_string();
        if let Some(devices) = macvtap_devices(def) {
            // Guests get macvtaps on these host interfaces when their ports are made; the
            // network itself has nothing to set up but their presence.
            for dev in devices {
                if self.netlink.index_of(dev).await?.is_none() {
                    return Err(Error::State(format!(
                        "network '{}': forward interface '{dev}' does not exist",
                        def.name
                    )));
                }
            }
            return Ok(());
        }
        match mode {
            pb::ForwardMode::Bridge => {
                return match self.netlink.index_of(&bridge).await? {
                    Some(_) => Ok(()),
                    None => Err(Error::State(format!(
                        "network '{}': host bridge '{bridge}' does not exist",
                        def.name
                    ))),
                };
            }
            pb::ForwardMode::Private
            | pb::ForwardMode::Vepa
            | pb::ForwardMode::Passthrough
            | pb::ForwardMode::Hostdev => {
                return Err(Error::Unsupported(format!(
                    "network '{}': forward mode {} is not built yet",
                    def.name,
                    mode.as_str_name()
                )));
            }
            _ => {}
        }
        let subnets = Self::subnets(def)?;
        let index = match self.netlink.index_of(&bridge).await? {
            Some(index) => index,
            None => {
                let settings = BridgeSettings {
                    mac: parse_mac(&def.mac),
                    mtu: (def.mtu_bytes > 0).then_some(def.mtu_bytes),
                    stp: def.bridge.as_ref().is_none_or(|b| b.stp != Some(false)),
                    delay_s: def.bridge.as_ref().map_or(0, |b| b.delay_s),
                };
                self.netlink.add_bridge(&bridge, &settings).await?
            }
        };
        for ip in &def.ips {
            let address: IpAddr = ip
                .address
                .parse()
                .map_err(|_| Error::field("network/ip@address", "not an IP address"))?;
            match self
                .netlink
                .add_address(index, address, prefix_of(ip)?)
                .await
            {
                Err(err) if !already_there(&err) => return Err(err.into()),
                _ => {}
            }
        }
        for route in &def.routes {
            let route_ip = pb::NetworkIp {
                address: route.address.clone(),
                netmask: route.netmask.clone(),
                prefix: route.prefix,
                ..Default::default()
            };
            let destination = subnet_of(&route_ip)?;
            let gateway: IpAddr = route
                .gateway
                .parse()
                .map_err(|_| Error::field("network/route@gateway", "not an IP address"))?;
            match self
                .netlink
                .add_route(
                    destination.address,
                    destination.prefix,
                    gateway,
                    route.metric,
                )
                .await
            {
                Err(err) if !already_there(&err) => return Err(err.into()),
                _ => {}
            }
        }
        if matches!(
            mode,
            pb::ForwardMode::Nat | pb::ForwardMode::Route | pb::ForwardMode::Open
        ) {
            enable_forwarding(&subnets)?;
        }
        if let Some(script) = firewall::ruleset(def, &bridge, &subnets) {
            nft(&script).await?;
        }
        if !def.ips.is_empty() {
            self.write_dnsmasq_conf(def, &bridge, &subnets)?;
            let conf = self.conf_path(&def.name);
            if dnsmasq::running(&self.files(&def.name), &conf).is_none() {
                dnsmasq::start(&conf).await.map_err(Error::Tool)?;
            }
        }
        Ok(())
    }

    fn write_dnsmasq_conf(
        &self,
        def: &pb::NetworkDefinition,
        bridge: &str,
        subnets: &[Subnet],
    ) -> Result<()> {
        let path = self.conf_path(&def.name);
        let text = dnsmasq::config(def, bridge, subnets, &self.files(&def.name));
        write_atomically(&path, text.as_bytes())
            .map_err(Error::io(format!("writing {}", path.display())))
    }

    /// Removes every host-side piece of a network; what is already gone is skipped.
    async fn tear_down(&self, def: &pb::NetworkDefinition) {
        let conf = self.conf_path(&def.name);
        dnsmasq::stop(&self.files(&def.name), &conf).await;
        if vireo_tables()
            .await
            .contains(&firewall::table_name(&def.uuid))
            && let Err(err) = nft(&firewall::removal(&def.uuid)).await
        {
            tracing::warn!(network = def.name, %err, "removing the nftables table");
        }
        if !matches!(mode_of(def), pb::ForwardMode::Bridge)
            && let Err(err) = self.netlink.delete(bridge_name(def)).await
        {
            tracing::warn!(network = def.name, %err, "removing the bridge");
        }
        let _ = std::fs::remove_file(conf);
    }

    /// net-destroy. A transient network is gone afterwards.
    pub async fn destroy(&self, network: &ObjectRef) -> Result<()> {
        let mut table = self.table.lock().await;
        let index = find(&table, network)?;
        if !table[index].active {
            return Err(Error::State(format!(
                "network '{}' is not active",
                table[index].def.name
            )));
        }
        let def = table[index].def.clone();
        self.tear_down(&def).await;
        let _ = std::fs::remove_file(self.active_dir.join(format!("{}.xml", def.uuid)));
        self.emit(&def, pb::NetworkEventType::Stopped);
        let entry = &mut table[index];
        entry.active = false;
        if let Some(next) = entry.next.take() {
            entry.def = next;
        }
        if !entry.persistent {
            table.remove(index);
        }
        Ok(())
    }

    /// net-undefine: an active network goes on, transient, until destroyed.
    pub async fn undefine(&self, network: &ObjectRef) -> Result<()> {
        let mut table = self.table.lock().await;
        let index = find(&table, network)?;
        if !table[index].persistent {
            return Err(Error::State(format!(
                "network '{}' is transient; destroy it instead",
                table[index].def.name
            )));
        }
        let def = table[index].def.clone();
        self.store
            .remove(&def.uuid)
            .map_err(Error::io("removing the network definition"))?;
        self.emit(&def, pb::NetworkEventType::Undefined);
        let entry = &mut table[index];
        if entry.active {
            entry.persistent = false;
            entry.autostart = false;
            entry.next = None;
        } else {
            table.remove(index);
        }
        Ok(())
    }

    /// net-autostart.
    pub async fn set_autostart(&self, network: &ObjectRef, on: bool) -> Result<()> {
        let mut table = self.table.lock().await;
        let index = find(&table, network)?;
        if !table[index].persistent {
            return Err(Error::State(format!(
                "cannot set autostart for transient network '{}'",
                table[index].def.name
            )));
        }
        self.store
            .set_autostart(&table[index].def.uuid, on)
            .map_err(Error::io("saving autostart"))?;
        table[index].autostart = on;
        Ok(())
    }

    pub async fn list(&self, request: &pb::ListNetworksRequest) -> Vec<pb::NetworkInfo> {
        self.table
            .lock()
            .await
            .iter()
            .filter(|e| request.active.is_none_or(|active| e.active == active))
            .filter(|e| request.persistent.is_none_or(|p| e.persistent == p))
            .filter(|e| request.autostart.is_none_or(|a| e.autostart == a))
            .map(Entry::info)
            .collect()
    }

    pub async fn info(&self, network: &ObjectRef) -> Result<pb::NetworkInfo> {
        let table = self.table.lock().await;
        Ok(table[find(&table, network)?].info())
    }

    pub async fn get(&self, network: &ObjectRef, inactive: bool) -> Result<pb::Network> {
        let table = self.table.lock().await;
        Ok(table[find(&table, network)?].shown(inactive))
    }

    pub async fn xml(&self, network: &ObjectRef, inactive: bool) -> Result<String> {
        let shown = self.get(network, inactive).await?;
        format(&shown.definition.unwrap_or_default())
    }

    /// net-dhcp-leases: what dnsmasq has handed out, optionally for one MAC.
    pub async fn leases(&self, network: &ObjectRef, mac: &str) -> Result<Vec<pb::DhcpLease>> {
        let table = self.table.lock().await;
        let entry = &table[find(&table, network)?];
        if !entry.active {
            return Err(Error::State(format!(
                "network '{}' is not active",
                entry.def.name
            )));
        }
        let text = std::fs::read_to_string(self.files(&entry.def.name).leases).unwrap_or_default();
        let subnets = Self::subnets(&entry.def)?;
        Ok(
            dnsmasq::parse_leases(&text, bridge_name(&entry.def), &subnets)
                .into_iter()
                .filter(|lease| mac.is_empty() || lease.mac.eq_ignore_ascii_case(mac))
                .collect(),
        )
    }

    /// net-update for `<ip><dhcp><host>`: add, modify or delete a static host, live (dnsmasq
    /// re-reads its hosts file) and/or in the persistent definition.
    pub async fn update(&self, request: &pb::UpdateNetworkRequest) -> Result<()> {
        if request.section() != pb::NetworkUpdateSection::IpDhcpHost {
            return Err(Error::Unsupported(format!(
                "section: only ip-dhcp-host can be updated so far, not {}",
                request.section().as_str_name()
            )));
        }
        let host = vireo_conf::network::parse_dhcp_host(&request.xml)?;
        let network = request
            .network
            .clone()
            .ok_or_else(|| Error::field("network", "name the network"))?;
        let mut table = self.table.lock().await;
        let index = find(&table, &network)?;
        let entry = &mut table[index];
        // virsh's --current: the live network when active, else the definition.
        let (live, config) = match (request.live, request.config) {
            (false, false) => (entry.active, !entry.active),
            chosen => chosen,
        };
        if live && !entry.active {
            return Err(Error::State(format!(
                "network '{}' is not active: --live needs a running network",
                entry.def.name
            )));
        }
        let parent = request.parent_index.map(|n| n as usize);
        if live {
            let mut def = entry.def.clone();
            apply_host_update(&mut def, request.command(), &host, parent)?;
            let subnets = Self::subnets(&def)?;
            self.write_dnsmasq_conf(&def, bridge_name(&def), &subnets)?;
            let record = self.active_dir.join(format!("{}.xml", def.uuid));
            write_atomically(&record, format(&def)?.as_bytes())
                .map_err(Error::io("recording the active network"))?;
            // The hosts are in dnsmasq's configuration, read once as root: a restart reads the
            // new one; the leases stay in the lease file.
            let conf = self.conf_path(&def.name);
            dnsmasq::stop(&self.files(&def.name), &conf).await;
            dnsmasq::start(&conf).await.map_err(Error::Tool)?;
            entry.def = def;
        }
        if config && entry.persistent {
            let mut def = entry.next.clone().unwrap_or_else(|| entry.def.clone());
            if !live || entry.next.is_some() || !entry.active {
                apply_host_update(&mut def, request.command(), &host, parent)?;
            }
            self.store
                .save(&def.uuid, &format(&def)?)
                .map_err(Error::io("saving the network definition"))?;
            if entry.active {
                entry.next = Some(def);
            } else {
                entry.def = def;
            }
        }
        Ok(())
    }
}

/// Guest ports: a persistent tap per guest interface, attached to the network's bridge. The
/// record in the run directory names it; a port whose tap has gone (the guest's engine or an
/// admin removed it) is forgotten the next time ports are looked at.
impl Manager {
    fn port_record(&self, uuid: &str) -> PathBuf {
        self.ports_dir.join(format!("{uuid}.json"))
    }

    /// The recorded ports of `network` (all networks when None) whose taps still exist.
    async fn live_ports(&self, network: Option<&str>) -> Vec<pb::NetworkPort> {
        let mut ports = Vec::new();
        for entry in std::fs::read_dir(&self.ports_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            let Some(port) = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<pb::NetworkPort>(&bytes).ok())
            else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let tap = port
                .definition
                .as_ref()
                .and_then(|d| d.plug.as_ref())
                .map_or("", |plug| plug.tap_device.as_str());
            if !matches!(self.netlink.index_of(tap).await, Ok(Some(_))) {
                // The tap went with its guest; so do the port's record and ifb device.
                if let Some(uuid) = port.definition.as_ref().map(|d| d.uuid.as_str()) {
                    let _ = self.netlink.delete(&super::qos::ifb_name(uuid)).await;
                }
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if network.is_none_or(|uuid| port.network_uuid == uuid) {
                ports.push(port);
            }
        }
        ports.sort_by(|a, b| {
            a.definition
                .as_ref()
                .map(|d| d.uuid.clone())
                .cmp(&b.definition.as_ref().map(|d| d.uuid.clone()))
        });
        ports
    }

    /// net-port-create (svc-compute, for an `<interface type='network'>`): a tap named
    /// `tap_name` (or a free `vnetN`) on the network's bridge, with a MAC the bridge will not
    /// confuse with the guest's.
    pub async fn create_port(
        &self,
        network: &ObjectRef,
        mut def: pb::NetworkPortDefinition,
        tap_name: &str,
    ) -> Result<pb::NetworkPort> {
        let table = self.table.lock().await;
        let entry = &table[find(&table, network)?];
        if !entry.active {
            return Err(Error::State(format!(
                "network '{}' is not active",
                entry.def.name
            )));
        }
        let mode = mode_of(&entry.def);
        if let Some(devices) = macvtap_devices(&entry.def) {
            let devices = devices.to_vec();
            let network = entry.def.clone();
            drop(table);
            return self
                .create_macvtap_port(&network, &devices, def, tap_name)
                .await;
        }
        if !matches!(
            mode,
            pb::ForwardMode::Nat
                | pb::ForwardMode::Route
                | pb::ForwardMode::None
                | pb::ForwardMode::Open
                | pb::ForwardMode::Bridge
        ) {
            return Err(Error::Unsupported(format!(
                "network '{}': ports of forward mode {} are not built yet",
                entry.def.name,
                mode.as_str_name()
            )));
        }
        let guest_mac = parse_mac(&def.mac).ok_or_else(|| {
            Error::field(
                "definition/mac",
                format!("'{}' is not a MAC address", def.mac),
            )
        })?;
        let bridge = bridge_name(&entry.def).to_string();
        let bridge_index = self.netlink.index_of(&bridge).await?.ok_or_else(|| {
            Error::State(format!(
                "network '{}': its bridge {bridge} is gone",
                entry.def.name
            ))
        })?;
        let tap = self.port_device_name(tap_name, "vnet").await?;
        if def.uuid.is_empty() {
            def.uuid = vireo_conf::domain::random_uuid();
        }
        super::tap::create(&tap).map_err(Error::io(format!("creating tap {tap}")))?;
        let attached = async {
            let index = self.netlink.index_of(&tap).await?.ok_or_else(|| {
                Error::State(format!("tap {tap} vanished right after its creation"))
            })?;
            // libvirt's rule: the host side's MAC starts with 0xfe, so that the bridge never
            // takes the guest's address as its own.
            let mut host_mac = guest_mac;
            host_mac[0] = 0xfe;
            self.netlink.set_mac(index, host_mac).await?;
            self.netlink.attach(index, bridge_index).await?;
            if let Some(bandwidth) = &def.bandwidth {
                super::qos::apply(&self.netlink, &tap, &def.uuid, bandwidth).await?;
            }
            Ok::<(), Error>(())
        }
        .await;
        if let Err(err) = attached {
            super::qos::clear(&self.netlink, &tap, &def.uuid).await;
            let _ = self.netlink.delete(&tap).await;
            return Err(err);
        }
        def.plug = Some(pb::PortPlug {
            r#type: pb::PortPlugType::Network as i32,
            bridge: bridge.clone(),
            tap_device: tap.clone(),
            ..Default::default()
        });
        let port = pb::NetworkPort {
            network: entry.def.name.clone(),
            network_uuid: entry.def.uuid.clone(),
            definition: Some(def.clone()),
        };
        self.record_port(&port, &tap).await?;
        let mut event = pb::NetworkEvent {
            port_uuid: def.uuid.clone(),
            port_owner: def.owner.clone(),
            ..Default::default()
        };
        event.set_type(pb::NetworkEventType::PortCreated);
        self.emit_event(&entry.def, event);
        Ok(port)
    }

    /// A port of a macvtap network: a macvtap with the guest's own MAC on the forward interface
    /// with the fewest ports (passthrough: a free one, each takes a whole interface).
    async fn create_macvtap_port(
        &self,
        network: &pb::NetworkDefinition,
        devices: &[String],
        mut def: pb::NetworkPortDefinition,
        tap_name: &str,
    ) -> Result<pb::NetworkPort> {
        let guest_mac = parse_mac(&def.mac).ok_or_else(|| {
            Error::field(
                "definition/mac",
                format!("'{}' is not a MAC address", def.mac),
            )
        })?;
        if def.bandwidth.is_some() {
            return Err(Error::Unsupported(format!(
                "network '{}': <bandwidth> on macvtap ports is not built yet",
                network.name
            )));
        }
        let used: Vec<String> = self
            .live_ports(Some(&network.uuid))
            .await
            .into_iter()
            .filter_map(|port| port.definition.and_then(|d| d.plug).map(|p| p.link_device))
            .collect();
        let passthrough = mode_of(network) == pb::ForwardMode::Passthrough;
        let dev = devices
            .iter()
            .filter(|dev| !passthrough || !used.contains(dev))
            .min_by_key(|dev| used.iter().filter(|u| u == dev).count())
            .ok_or_else(|| {
                Error::State(format!(
                    "network '{}': every forward interface is in use by a passthrough port",
                    network.name
                ))
            })?
            .clone();
        let base = self.netlink.index_of(&dev).await?.ok_or_else(|| {
            Error::State(format!(
                "network '{}': forward interface {dev} is gone",
                network.name
            ))
        })?;
        let name = self.port_device_name(tap_name, "macvtap").await?;
        if def.uuid.is_empty() {
            def.uuid = vireo_conf::domain::random_uuid();
        }
        let mode = mode_of(network);
        let index = self
            .netlink
            .add_macvtap(&name, base, macvtap_mode(mode), guest_mac)
            .await?;
        let mut plug = pb::PortPlug {
            r#type: pb::PortPlugType::Direct as i32,
            link_device: dev,
            tap_device: name.clone(),
            macvtap_device: name.clone(),
            macvtap_ifindex: index,
            ..Default::default()
        };
        plug.set_macvtap_mode(match mode {
            pb::ForwardMode::Private => pb::MacvtapMode::Private,
            pb::ForwardMode::Vepa => pb::MacvtapMode::Vepa,
            pb::ForwardMode::Passthrough => pb::MacvtapMode::Passthrough,
            _ => pb::MacvtapMode::Bridge,
        });
        def.plug = Some(plug);
        let port = pb::NetworkPort {
            network: network.name.clone(),
            network_uuid: network.uuid.clone(),
            definition: Some(def.clone()),
        };
        self.record_port(&port, &name).await?;
        Ok(port)
    }

    async fn network_uuid(&self, network: &ObjectRef) -> Result<String> {
        let table = self.table.lock().await;
        Ok(table[find(&table, network)?].def.uuid.clone())
    }

    /// The device name of a new port: `requested` (a valid name no link has yet), or the first
    /// free `<prefix>N`.
    async fn port_device_name(&self, requested: &str, prefix: &str) -> Result<String> {
        if !requested.is_empty() {
            vireo_conf::network::check_interface_name(requested, "tap_name")?;
            if self.netlink.index_of(requested).await?.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "tap_name: {requested} already exists"
                )));
            }
            return Ok(requested.to_string());
        }
        let mut n = 0;
        loop {
            let name = format!("{prefix}{n}");
            if self.netlink.index_of(&name).await?.is_none() {
                return Ok(name);
            }
            n += 1;
        }
    }

    /// Writes a port's record; on failure its device goes again.
    async fn record_port(&self, port: &pb::NetworkPort, device: &str) -> Result<()> {
        let uuid = port.definition.as_ref().map_or("", |d| d.uuid.as_str());
        let recorded = serde_json::to_vec(port)
            .map_err(std::io::Error::other)
            .and_then(|record| write_atomically(&self.port_record(uuid), &record));
        if let Err(err) = recorded {
            let _ = self.netlink.delete(device).await;
            return Err(Error::io("recording the port")(err));
        }
        Ok(())
    }

    /// net-port-delete: the tap goes, then the record.
    pub async fn delete_port(&self, network: &ObjectRef, uuid: &str) -> Result<()> {
        let network_uuid = self.network_uuid(network).await?;
        let port = self
            .live_ports(Some(&network_uuid))
            .await
            .into_iter()
            .find(|port| port.definition.as_ref().is_some_and(|d| d.uuid == uuid))
            .ok_or_else(|| {
                Error::NotFound(format!("no port with uuid '{uuid}' on this network"))
            })?;
        let tap = port
            .definition
            .as_ref()
            .and_then(|d| d.plug.as_ref())
            .map(|plug| plug.tap_device.clone())
            .unwrap_or_default();
        super::qos::clear(&self.netlink, &tap, uuid).await;
        self.netlink.delete(&tap).await?;
        let _ = std::fs::remove_file(self.port_record(uuid));
        Ok(())
    }

    /// net-port-list, optionally only the ports of one owner (a domain's name or UUID).
    pub async fn ports(
        &self,
        network: &ObjectRef,
        owner: Option<&str>,
    ) -> Result<Vec<pb::NetworkPort>> {
        let network_uuid = self.network_uuid(network).await?;
        Ok(self
            .live_ports(Some(&network_uuid))
            .await
            .into_iter()
            .filter(|port| {
                owner.is_none_or(|owner| {
                    port.definition
                        .as_ref()
                        .and_then(|d| d.owner.as_ref())
                        .is_some_and(|o| o.name == owner || o.uuid.eq_ignore_ascii_case(owner))
                })
            })
            .collect())
    }
}

/// One dhcp-host change on a definition: into the `<ip>` whose subnet holds the host's address
/// (or the one `parent` names).
fn apply_host_update(
    def: &mut pb::NetworkDefinition,
    command: pb::NetworkUpdateCommand,
    host: &pb::DhcpHost,
    parent: Option<usize>,
) -> Result<()> {
    let index = match parent {
        Some(index) if index < def.ips.len() => index,
        Some(index) => {
            return Err(Error::field(
                "parent_index",
                format!(
                    "the network has {} <ip> elements, not {}",
                    def.ips.len(),
                    index + 1
                ),
            ));
        }
        None => {
            let address: Option<IpAddr> = host.ip.parse().ok();
            def.ips
                .iter()
                .position(|ip| match (address, subnet_of(ip)) {
                    (Some(address), Ok(subnet)) => subnet_of(&pb::NetworkIp {
                        address: address.to_string(),
                        prefix: u32::from(subnet.prefix),
                        ..Default::default()
                    })
                    .is_ok_and(|own| own == subnet),
                    _ => ip.dhcp.is_some(),
                })
                .ok_or_else(|| Error::field("xml", "no <ip> of the network holds this host"))?
        }
    };
    let dhcp = def.ips[index].dhcp.get_or_insert_with(Default::default);
    let same = |other: &pb::DhcpHost| {
        (!host.mac.is_empty() && other.mac.eq_ignore_ascii_case(&host.mac))
            || (!host.id.is_empty() && other.id == host.id)
    };
    let existing = dhcp.hosts.iter().position(same);
    match command {
        pb::NetworkUpdateCommand::AddLast | pb::NetworkUpdateCommand::AddFirst => {
            if existing.is_some()
                || dhcp
                    .hosts
                    .iter()
                    .any(|other| !host.ip.is_empty() && other.ip == host.ip)
            {
                return Err(Error::AlreadyExists(format!(
                    "there is already a dhcp host entry for {}",
                    if host.mac.is_empty() {
                        &host.ip
                    } else {
                        &host.mac
                    }
                )));
            }
            if command == pb::NetworkUpdateCommand::AddFirst {
                dhcp.hosts.insert(0, host.clone());
            } else {
                dhcp.hosts.push(host.clone());
            }
        }
        pb::NetworkUpdateCommand::Modify => {
            let index = existing.ok_or_else(|| {
                Error::NotFound(format!("no dhcp host entry matches {}", host.mac))
            })?;
            dhcp.hosts[index] = host.clone();
        }
        pb::NetworkUpdateCommand::Delete => {
            let index = existing.ok_or_else(|| {
                Error::NotFound(format!("no dhcp host entry matches {}", host.mac))
            })?;
            dhcp.hosts.remove(index);
        }
        pb::NetworkUpdateCommand::Unspecified => {
            return Err(Error::field("command", "say add, modify or delete"));
        }
    }
    Ok(())
}
