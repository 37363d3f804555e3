//! virsh's domain commands: options, the DomainService call each makes, virsh's wording.

use std::io::Write;

use crate::connection::GatewayChannel as Channel;
use clap::{Args, Subcommand};
use vireo_proto::common::v1::{ObjectRef, object_ref::Key};
use vireo_proto::compute::v1 as pb;
use vireo_proto::compute::v1::domain_service_client::DomainServiceClient;
use vireo_proto::migrate::v1 as migrate;
use vireo_proto::migrate::v1::save_restore_service_client::SaveRestoreServiceClient;

use vireo_conf::domain::{
    DISK_BUSES, DISK_CACHES, DISK_DEVICES, DISK_FORMATS, INTERFACE_MODELS, INTERFACE_TYPES, Table,
    name_of, parse_cpuset,
};

use crate::commands::{Call, fail, read_file, state_name};
use crate::connection::Connection;
use crate::edit::edit_xml;
use crate::output::{Format, print_fields_at, print_json, print_table, print_xml};

/// --config / --live / --current, as virsh's domain commands take them.
#[derive(Debug, Clone, Copy, Args)]
pub struct ScopeArgs {
    /// Change the persistent definition (next boot)
    #[arg(long)]
    config: bool,
    /// Change the running guest
    #[arg(long)]
    live: bool,
    /// Change whichever is current (the running guest when it runs)
    #[arg(long, conflicts_with_all = ["config", "live"])]
    current: bool,
}

impl ScopeArgs {
    fn scope(self) -> Option<pb::ModifyScope> {
        Some(pb::ModifyScope {
            config: self.config,
            live: self.live,
            current: self.current,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Define (but do not start) a domain from an XML file
    Define {
        file: String,
        #[arg(long)]
        validate: bool,
    },
    /// Remove a domain's persistent definition
    Undefine {
        domain: String,
        /// Also delete the storage volumes its disks use
        #[arg(long)]
        remove_all_storage: bool,
    },
    /// Create and start a transient domain from an XML file
    Create {
        file: String,
        /// Attach to the console after creation
        #[arg(long)]
        console: bool,
        #[arg(long)]
        paused: bool,
    },
    /// Start a defined domain
    Start {
        domain: String,
        /// Attach to the console after start
        #[arg(long)]
        console: bool,
        #[arg(long)]
        paused: bool,
        /// Boot fresh, discarding a managed save image
        #[arg(long)]
        force_boot: bool,
    },
    /// Ask a guest to shut down (ACPI power button: the guest decides)
    Shutdown {
        domain: String,
        #[arg(long)]
        mode: Option<String>,
    },
    /// Ask a guest to reboot
    Reboot {
        domain: String,
        #[arg(long)]
        mode: Option<String>,
    },
    /// Reset a guest at once, as a reset button does
    Reset { domain: String },
    /// Stop a guest at once (power cut)
    Destroy {
        domain: String,
        /// Only ask the engine to end; never kill it
        #[arg(long)]
        graceful: bool,
    },
    /// Pause a running guest
    Suspend { domain: String },
    /// Continue a paused guest
    Resume { domain: String },
    /// Save a running guest's state to a file and stop it
    Save { domain: String, file: String },
    /// Start a guest again from a saved state file
    Restore { file: String },
    /// Save a guest's state to its managed image and stop it
    Managedsave { domain: String },
    /// Show the domain's migration job
    Domjobinfo {
        domain: String,
        /// The last finished job instead of the running one
        #[arg(long)]
        completed: bool,
    },
    /// Abort the domain's running migration; the guest goes on where it was
    Domjobabort { domain: String },
    /// Set the longest pause a live migration of the domain may cause, ms
    MigrateSetmaxdowntime { domain: String, downtime: u64 },
    /// Show the longest pause a live migration of the domain may cause
    MigrateGetmaxdowntime { domain: String },
    /// Cap a live migration's data rate, MiB/s (0: unlimited)
    MigrateSetspeed {
        domain: String,
        #[arg(value_name = "BANDWIDTH")]
        bandwidth: u64,
    },
    /// Show the cap on a live migration's data rate, MiB/s (0: unlimited)
    MigrateGetspeed { domain: String },
    /// Move a domain to another host: DEST is a host name (host-list) or a URI
    Migrate {
        domain: String,
        dest: String,
        /// Keep the guest running while its memory is copied
        #[arg(long)]
        live: bool,
        /// Move only the persistent definition of an inactive domain
        #[arg(long)]
        offline: bool,
        /// Define the domain on the destination
        #[arg(long)]
        persistent: bool,
        /// Undefine the domain on the source after success
        #[arg(long)]
        undefinesource: bool,
        /// Copy every writable disk to the destination
        #[arg(long)]
        copy_storage_all: bool,
        /// Leave the domain paused on the destination
        #[arg(long)]
        suspend: bool,
        /// Definition to use on the destination with --persistent
        #[arg(long, value_name = "FILE")]
        persistent_xml: Option<String>,
        /// Cap on the migration data rate, MiB/s
        #[arg(long, value_name = "MiB/s")]
        bandwidth: Option<u64>,
        /// Longest pause allowed at the switch, ms
        #[arg(long, value_name = "MS")]
        max_downtime: Option<u64>,
        /// Throttle the guest's vCPUs when the copy does not converge
        #[arg(long)]
        auto_converge: bool,
        /// Encrypt the migration data with TLS (the hosts' certificates)
        #[arg(long)]
        tls: bool,
        /// Checksum all guest memory on both hosts at the switch (vmm engine; longer downtime)
        #[arg(long)]
        verify_memory: bool,
        /// Print each phase
        #[arg(long)]
        verbose: bool,
    },
    /// Print a domain's XML
    Dumpxml {
        domain: String,
        /// The persistent definition instead of the running one
        #[arg(long)]
        inactive: bool,
        #[arg(long)]
        security_info: bool,
    },
    /// Edit a domain's XML in $EDITOR
    Edit { domain: String },
    /// Show a domain's basic information
    Dominfo { domain: String },
    /// Show a domain's state
    Domstate {
        domain: String,
        #[arg(long)]
        reason: bool,
    },
    /// Show a running domain's id
    Domid { domain: String },
    /// Show a domain's name
    Domname { domain: String },
    /// Show a domain's UUID
    Domuuid { domain: String },
    /// Start a domain when the host starts
    Autostart {
        domain: String,
        #[arg(long)]
        disable: bool,
    },
    /// Attach to a guest's serial console (Ctrl-] leaves)
    Console {
        domain: String,
        #[arg(long)]
        devname: Option<String>,
        /// Take the console over from another client
        #[arg(long)]
        force: bool,
        #[arg(long)]
        safe: bool,
    },
    /// Show each vCPU's host CPU, time and affinity
    Vcpuinfo { domain: String },
    /// Show or set vCPU pinning
    Vcpupin {
        domain: String,
        vcpu: Option<u32>,
        cpulist: Option<String>,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Change the number of vCPUs
    Setvcpus {
        domain: String,
        count: u32,
        #[arg(long)]
        maximum: bool,
        #[arg(long)]
        guest: bool,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Change the memory a guest has (through the balloon when running); size in KiB or with a unit
    Setmem {
        domain: String,
        size: String,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Change a domain's maximum memory; size in KiB or with a unit
    Setmaxmem {
        domain: String,
        size: String,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Show a disk's I/O counters
    Domblkstat { domain: String, device: String },
    /// Show an interface's traffic counters
    Domifstat { domain: String, interface: String },
    /// List a domain's disks
    Domblklist {
        domain: String,
        #[arg(long)]
        inactive: bool,
        #[arg(long)]
        details: bool,
    },
    /// List a domain's network interfaces
    Domiflist {
        domain: String,
        #[arg(long)]
        inactive: bool,
    },
    /// Show a guest's memory statistics
    Dommemstat { domain: String },
    /// Add a device from an XML file
    AttachDevice {
        domain: String,
        file: String,
        #[arg(long)]
        persistent: bool,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Remove a device described by an XML file
    DetachDevice {
        domain: String,
        file: String,
        #[arg(long)]
        persistent: bool,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Add a disk
    AttachDisk {
        domain: String,
        source: String,
        target: String,
        /// disk, cdrom or floppy
        #[arg(long = "type")]
        device: Option<String>,
        /// readonly or shareable
        #[arg(long)]
        mode: Option<String>,
        #[arg(long)]
        driver: Option<String>,
        /// raw or qcow2
        #[arg(long)]
        subdriver: Option<String>,
        /// virtio, ide, sata, scsi, usb or fdc
        #[arg(long)]
        targetbus: Option<String>,
        #[arg(long)]
        cache: Option<String>,
        #[arg(long)]
        serial: Option<String>,
        #[arg(long)]
        persistent: bool,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Remove a disk by target (vdb) or source path
    DetachDisk {
        domain: String,
        target: String,
        #[arg(long)]
        persistent: bool,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Add a network interface: TYPE is network, bridge or direct
    AttachInterface {
        domain: String,
        #[arg(value_name = "TYPE")]
        kind: String,
        source: String,
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        persistent: bool,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Remove a network interface by type (and MAC)
    DetachInterface {
        domain: String,
        #[arg(value_name = "TYPE")]
        kind: String,
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        persistent: bool,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Show or set CPU scheduler parameters (cgroup CPU shares and quota)
    Schedinfo {
        domain: String,
        /// cpu_shares=N, vcpu_period=US or vcpu_quota=US (repeatable)
        #[arg(long)]
        set: Vec<String>,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Show or set memory limits (cgroup); sizes in KiB or with a unit, -1 for unlimited
    Memtune {
        domain: String,
        #[arg(long, allow_hyphen_values = true)]
        hard_limit: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        soft_limit: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        swap_hard_limit: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        min_guarantee: Option<String>,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Show a guest's CPU time per host CPU and in total
    CpuStats {
        domain: String,
        #[arg(long)]
        start: Option<u32>,
        #[arg(long)]
        count: Option<u32>,
        #[arg(long)]
        total: bool,
    },
    /// Show statistics of domains (all when none is named)
    Domstats {
        domains: Vec<String>,
        #[arg(long)]
        state: bool,
        #[arg(long)]
        cpu_total: bool,
        #[arg(long)]
        balloon: bool,
        #[arg(long)]
        vcpu: bool,
        #[arg(long)]
        interface: bool,
        #[arg(long)]
        block: bool,
    },
    /// Show the addresses of a guest's interfaces
    Domifaddr {
        domain: String,
        #[arg(long)]
        interface: Option<String>,
        /// lease, agent or arp
        #[arg(long)]
        source: Option<String>,
    },
    /// Take a snapshot of a domain
    SnapshotCreateAs {
        domain: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        disk_only: bool,
    },
    /// List a domain's snapshots
    SnapshotList { domain: String },
    /// Print a snapshot's XML
    SnapshotDumpxml { domain: String, snapshot: String },
    /// Return a domain to a snapshot
    SnapshotRevert {
        domain: String,
        snapshotname: Option<String>,
        #[arg(long)]
        current: bool,
        /// Leave the guest paused after reverting
        #[arg(long)]
        paused: bool,
        /// Run the guest after reverting (the default for a snapshot of a running guest)
        #[arg(long)]
        running: bool,
    },
    /// Delete a snapshot
    SnapshotDelete {
        domain: String,
        snapshotname: Option<String>,
        #[arg(long)]
        current: bool,
    },
    /// Write a guest's memory to a file (core dump)
    Dump {
        domain: String,
        file: String,
        #[arg(long)]
        memory_only: bool,
        #[arg(long)]
        live: bool,
    },
    /// Print domain lifecycle events
    Event {
        domain: Option<String>,
        /// Only this event (lifecycle)
        #[arg(long)]
        event: Option<String>,
        /// Keep printing events instead of stopping after the first
        #[arg(long = "loop")]
        keep: bool,
        /// Every event (the default)
        #[arg(long)]
        all: bool,
        /// Stop after this many seconds
        #[arg(long)]
        timeout: Option<u64>,
    },
}

pub fn object(name: &str) -> Option<ObjectRef> {
    Some(ObjectRef {
        key: Some(Key::Any(name.to_string())),
    })
}

/// An object by name only (virsh's *-uuid commands take a name).
pub fn object_named(name: &str) -> Option<ObjectRef> {
    Some(ObjectRef {
        key: Some(Key::Name(name.to_string())),
    })
}

/// An object by UUID only (virsh's *-name commands take a UUID).
pub fn object_with_uuid(uuid: &str) -> Option<ObjectRef> {
    Some(ObjectRef {
        key: Some(Key::Uuid(uuid.to_string())),
    })
}

async fn client(connection: &mut Connection) -> Result<DomainServiceClient<Channel>, Call> {
    Ok(DomainServiceClient::new(connection.channel().await?))
}

/// "1024", "1024KiB", "512M", "2G": virsh's scaled sizes, KiB by default.
pub fn parse_kib(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("invalid size '{text}': expected a number with an optional unit"))?;
    let bytes_per_unit: u64 = match unit {
        "" | "k" | "K" | "KiB" => 1024,
        "b" | "B" | "bytes" => 1,
        "KB" => 1000,
        "m" | "M" | "MiB" => 1 << 20,
        "MB" => 1_000_000,
        "g" | "G" | "GiB" => 1 << 30,
        "GB" => 1_000_000_000,
        "t" | "T" | "TiB" => 1 << 40,
        "TB" => 1_000_000_000_000,
        other => return Err(format!("invalid size unit '{other}'")),
    };
    value
        .checked_mul(bytes_per_unit)
        .map(|bytes| bytes.div_ceil(1024))
        .ok_or_else(|| format!("size '{text}' is too large"))
}

fn reason_name(reason: i32) -> &'static str {
    use pb::DomainStateReason as R;
    match R::try_from(reason).unwrap_or(R::Unspecified) {
        R::RunningBooted => "booted",
        R::RunningMigrated => "migrated",
        R::RunningRestored => "restored",
        R::RunningFromSnapshot => "from snapshot",
        R::RunningUnpaused => "unpaused",
        R::RunningCrashed => "crashed",
        R::PausedUser => "user",
        R::PausedMigration => "migrating",
        R::PausedSave => "saving",
        R::PausedIoerror => "I/O error",
        R::PausedStartingUp => "starting up",
        R::PausedCrashed => "crashed",
        R::ShutdownUser => "user",
        R::ShutoffShutdown => "shutdown",
        R::ShutoffDestroyed => "destroyed",
        R::ShutoffCrashed => "crashed",
        R::ShutoffMigrated => "migrated",
        R::ShutoffSaved => "saved",
        R::ShutoffFailed => "failed",
        R::ShutoffFromSnapshot => "from snapshot",
        R::ShutoffDaemon => "daemon",
        R::CrashedPanicked => "panicked",
        _ => "unknown",
    }
}

fn cpu_list(cpus: &[u32]) -> String {
    let mut ranges: Vec<String> = Vec::new();
    let mut index = 0;
    while index < cpus.len() {
        let start = cpus[index];
        let mut end = start;
        while index + 1 < cpus.len() && cpus[index + 1] == end + 1 {
            index += 1;
            end = cpus[index];
        }
        ranges.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        index += 1;
    }
    ranges.join(",")
}

/// A CLI option's libvirt word as its proto value (0 when not given).
fn word<T: Copy + Into<i32>>(text: Option<&str>, table: Table<T>, what: &str) -> Result<i32, Call> {
    match text {
        None => Ok(0),
        Some(text) => vireo_conf::domain::lookup(table, text, what.to_string())
            .map(Into::into)
            .map_err(|err| fail(err.to_string())),
    }
}

/// virsh's "-" for a value without a word.
fn word_or_dash<T: Copy + PartialEq + TryFrom<i32>>(table: Table<T>, value: i32) -> &'static str {
    match name_of(table, value) {
        "" => "-",
        word => word,
    }
}

fn seconds(ns: u64) -> String {
    format!("{:.1}s", ns as f64 / 1e9)
}

pub async fn run(
    connection: &mut Connection,
    format: Format,
    command: DomainCommand,
) -> Result<(), Call> {
    use DomainCommand as C;
    match command {
        C::Define { file, validate } => {
            let xml = read_file(&file)?;
            let domain = client(connection)
                .await?
                .define_domain(pb::DefineDomainRequest {
                    source: Some(pb::define_domain_request::Source::Xml(xml)),
                    validate,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let name = domain
                .summary
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            match format {
                Format::Json => print_json(&domain),
                Format::Table => println!("Domain '{name}' defined from {file}\n"),
            }
        }
        C::Undefine {
            domain,
            remove_all_storage,
        } => {
            let mut client = client(connection).await?;
            let name = client
                .lookup_domain(pb::LookupDomainRequest {
                    host: String::new(),
                    domain: object(&domain),
                })
                .await?
                .into_inner()
                .name;
            client
                .undefine_domain(pb::UndefineDomainRequest {
                    domain: object(&domain),
                    remove_all_storage,
                    ..Default::default()
                })
                .await?;
            println!("Domain '{name}' has been undefined\n");
        }
        C::Create {
            file,
            console,
            paused,
        } => {
            let xml = read_file(&file)?;
            let mut stream = client(connection)
                .await?
                .create_domain(pb::CreateDomainRequest {
                    source: Some(pb::create_domain_request::Source::Xml(xml)),
                    paused,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut name = String::new();
            while let Some(update) = stream.message().await? {
                if let Some(pb::create_domain_update::Update::Done(domain)) = update.update {
                    name = domain.summary.map(|s| s.name).unwrap_or_default();
                }
            }
            println!("Domain '{name}' created from {file}\n");
            if console {
                run_console(connection, &name, None, false).await?;
            }
        }
        C::Start {
            domain,
            console,
            paused,
            force_boot,
        } => {
            let mut stream = client(connection)
                .await?
                .start_domain(pb::StartDomainRequest {
                    domain: object(&domain),
                    paused,
                    force_boot,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut name = domain.clone();
            while let Some(update) = stream.message().await? {
                if let Some(pb::start_domain_update::Update::Done(done)) = update.update {
                    name = done.summary.map(|s| s.name).unwrap_or(name);
                }
            }
            println!("Domain '{name}' started\n");
            if console {
                run_console(connection, &name, None, false).await?;
            }
        }
        C::Shutdown { domain, mode } | C::Reboot { domain, mode }
            if mode.as_deref().is_some_and(|m| m != "acpi") =>
        {
            let _ = domain;
            return Err(fail(format!(
                "--mode {}: only acpi is supported (the power button; no guest agent yet)",
                mode.unwrap_or_default()
            )));
        }
        C::Shutdown { domain, .. } => {
            let name = lookup_name(connection, &domain).await?;
            client(connection)
                .await?
                .shutdown_domain(pb::ShutdownDomainRequest {
                    domain: object(&domain),
                    ..Default::default()
                })
                .await?;
            println!("Domain '{name}' is being shutdown\n");
        }
        C::Reboot { domain, .. } => {
            let name = lookup_name(connection, &domain).await?;
            client(connection)
                .await?
                .reboot_domain(pb::RebootDomainRequest {
                    domain: object(&domain),
                    ..Default::default()
                })
                .await?;
            println!("Domain '{name}' is being rebooted\n");
        }
        C::Reset { domain } => {
            let name = lookup_name(connection, &domain).await?;
            client(connection)
                .await?
                .reset_domain(pb::ResetDomainRequest {
                    domain: object(&domain),
                    ..Default::default()
                })
                .await?;
            println!("Domain '{name}' was reset\n");
        }
        C::Destroy { domain, graceful } => {
            let name = lookup_name(connection, &domain).await?;
            client(connection)
                .await?
                .destroy_domain(pb::DestroyDomainRequest {
                    domain: object(&domain),
                    graceful,
                    ..Default::default()
                })
                .await?;
            println!("Domain '{name}' destroyed\n");
        }
        C::Suspend { domain } => {
            let name = lookup_name(connection, &domain).await?;
            client(connection)
                .await?
                .suspend_domain(pb::SuspendDomainRequest {
                    domain: object(&domain),
                    ..Default::default()
                })
                .await?;
            println!("Domain '{name}' suspended\n");
        }
        C::Resume { domain } => {
            let name = lookup_name(connection, &domain).await?;
            client(connection)
                .await?
                .resume_domain(pb::ResumeDomainRequest {
                    domain: object(&domain),
                    ..Default::default()
                })
                .await?;
            println!("Domain '{name}' resumed\n");
        }
        C::Domjobinfo { domain, completed } => {
            let info =
                vireo_proto::migrate::v1::migration_service_client::MigrationServiceClient::new(
                    connection.channel().await?,
                )
                .get_job_info(migrate::GetJobInfoRequest {
                    domain: object(&domain),
                    completed,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if format == Format::Json {
                print_json(&info);
                return Ok(());
            }
            print_job(&info);
        }
        C::MigrateSetmaxdowntime { domain, downtime } => {
            migration_client(connection)
                .await?
                .set_max_downtime(migrate::SetMaxDowntimeRequest {
                    domain: object(&domain),
                    max_downtime_ms: downtime,
                    ..Default::default()
                })
                .await?;
        }
        C::MigrateGetmaxdowntime { domain } => {
            let downtime = migration_client(connection)
                .await?
                .get_max_downtime(migrate::GetMaxDowntimeRequest {
                    domain: object(&domain),
                    ..Default::default()
                })
                .await?
                .into_inner();
            println!("{}", downtime.max_downtime_ms);
        }
        C::MigrateSetspeed { domain, bandwidth } => {
            migration_client(connection)
                .await?
                .set_max_speed(migrate::SetMaxSpeedRequest {
                    domain: object(&domain),
                    bandwidth_mib_s: bandwidth,
                    ..Default::default()
                })
                .await?;
        }
        C::MigrateGetspeed { domain } => {
            let speed = migration_client(connection)
                .await?
                .get_max_speed(migrate::GetMaxSpeedRequest {
                    domain: object(&domain),
                    ..Default::default()
                })
                .await?
                .into_inner();
            println!("{}", speed.bandwidth_mib_s);
        }
        C::Domjobabort { domain } => {
            migration_client(connection)
                .await?
                .abort_job(migrate::AbortJobRequest {
                    domain: object(&domain),
                    ..Default::default()
                })
                .await?;
        }
        C::Migrate {
            domain,
            dest,
            live,
            offline,
            persistent,
            undefinesource,
            copy_storage_all,
            suspend,
            persistent_xml,
            bandwidth,
            max_downtime,
            auto_converge,
            tls,
            verify_memory,
            verbose,
        } => {
            let persistent_xml = match persistent_xml {
                Some(file) => std::fs::read_to_string(&file).map_err(|err| {
                    tonic::Status::invalid_argument(format!(
                        "--persistent-xml: cannot read {file}: {err}"
                    ))
                })?,
                None => String::new(),
            };
            let destination = if dest.contains("://") {
                migrate::migrate_request::Destination::DestUri(dest)
            } else {
                migrate::migrate_request::Destination::DestHost(dest)
            };
            let mut client =
                vireo_proto::migrate::v1::migration_service_client::MigrationServiceClient::new(
                    connection.channel().await?,
                );
            let mut stream = client
                .migrate(migrate::MigrateRequest {
                    domain: object(&domain),
                    destination: Some(destination),
                    flags: Some(migrate::MigrationFlags {
                        live,
                        offline,
                        persistent,
                        undefine_source: undefinesource,
                        copy_storage_all,
                        suspend,
                        auto_converge,
                        ..Default::default()
                    }),
                    options: Some(migrate::MigrationOptions {
                        persistent_xml,
                        bandwidth_mib_s: bandwidth,
                        max_downtime_ms: max_downtime,
                        tls,
                        verify_memory,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await?
                .into_inner();
            while let Some(update) = stream.message().await? {
                match update.update {
                    Some(migrate::migration_update::Update::Progress(progress)) if verbose => {
                        println!("{}: {}", progress.phase, progress.message);
                    }
                    Some(migrate::migration_update::Update::Job(job)) if verbose => {
                        let percent = (job.memory_processed_bytes * 100)
                            .checked_div(job.memory_total_bytes)
                            .unwrap_or(0)
                            .min(99);
                        eprint!("\rMigration: [{percent:>3} %]");
                    }
                    Some(migrate::migration_update::Update::Done(_)) if verbose => {
                        eprint!("\r");
                        println!("Migration: [100 %]");
                    }
                    _ => {}
                }
            }
        }
        C::Save { domain, file } => {
            let mut client = SaveRestoreServiceClient::new(connection.channel().await?);
            let mut stream = client
                .save_domain(migrate::SaveDomainRequest {
                    domain: object(&domain),
                    file: file.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            while stream.message().await?.is_some() {}
            println!("\nDomain '{domain}' saved to {file}\n");
        }
        C::Restore { file } => {
            let mut client = SaveRestoreServiceClient::new(connection.channel().await?);
            let mut stream = client
                .restore_domain(migrate::RestoreDomainRequest {
                    file: file.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            while stream.message().await?.is_some() {}
            println!("Domain restored from {file}\n");
        }
        C::Managedsave { domain } => {
            let mut client = SaveRestoreServiceClient::new(connection.channel().await?);
            let mut stream = client
                .managed_save(migrate::ManagedSaveRequest {
                    domain: object(&domain),
                    ..Default::default()
                })
                .await?
                .into_inner();
            while stream.message().await?.is_some() {}
            println!("\nDomain '{domain}' state saved\n");
        }
        C::Dumpxml {
            domain,
            inactive,
            security_info,
        } => {
            let xml = client(connection)
                .await?
                .get_domain_xml(pb::GetDomainXmlRequest {
                    domain: object(&domain),
                    inactive,
                    security_info,
                    ..Default::default()
                })
                .await?
                .into_inner();
            print_xml(format, &xml, &xml.xml);
        }
        C::Edit { domain } => edit(connection, &domain).await?,
        C::Dominfo { domain } => {
            let info = client(connection)
                .await?
                .get_domain_info(pb::GetDomainInfoRequest {
                    domain: object(&domain),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if format == Format::Json {
                print_json(&info);
                return Ok(());
            }
            let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
            print_fields_at(
                16,
                &[
                    (
                        "Id",
                        if info.id < 0 {
                            "-".into()
                        } else {
                            info.id.to_string()
                        },
                    ),
                    ("Name", info.name.clone()),
                    ("UUID", info.uuid.clone()),
                    ("OS Type", "hvm".into()),
                    ("State", state_name(info.state).into()),
                    ("CPU(s)", info.cpus.to_string()),
                    ("CPU time", seconds(info.cpu_time_ns)),
                    ("Max memory", format!("{} KiB", info.max_memory_kib)),
                    ("Used memory", format!("{} KiB", info.used_memory_kib)),
                    ("Persistent", yes(info.persistent)),
                    (
                        "Autostart",
                        if info.autostart { "enable" } else { "disable" }.into(),
                    ),
                    ("Managed save", yes(info.managed_save)),
                    ("Security model", info.security_model.clone()),
                    ("Security DOI", info.security_doi.clone()),
                    ("Engine", engine_name(info.engine).into()),
                ],
            );
            println!();
        }
        C::Domstate { domain, reason } => {
            let state = client(connection)
                .await?
                .get_domain_state(pb::GetDomainStateRequest {
                    domain: object(&domain),
                    ..Default::default()
                })
                .await?
                .into_inner();
            match format {
                Format::Json => print_json(&state),
                Format::Table if reason => {
                    println!(
                        "{} ({})\n",
                        state_name(state.state),
                        reason_name(state.reason)
                    );
                }
                Format::Table => println!("{}\n", state_name(state.state)),
            }
        }
        C::Domid { domain } | C::Domname { domain } | C::Domuuid { domain }
            if format == Format::Json =>
        {
            let summary = lookup(connection, &domain).await?;
            print_json(&summary);
        }
        C::Domid { domain } => {
            let summary = lookup(connection, &domain).await?;
            if summary.id < 0 {
                println!("-\n");
            } else {
                println!("{}\n", summary.id);
            }
        }
        C::Domname { domain } => println!("{}\n", lookup(connection, &domain).await?.name),
        C::Domuuid { domain } => println!("{}\n", lookup(connection, &domain).await?.uuid),
        C::Autostart { domain, disable } => {
            let name = lookup_name(connection, &domain).await?;
            client(connection)
                .await?
                .set_autostart(pb::SetAutostartRequest {
                    domain: object(&domain),
                    autostart: !disable,
                    ..Default::default()
                })
                .await?;
            if disable {
                println!("Domain '{name}' unmarked as autostarted\n");
            } else {
                println!("Domain '{name}' marked as autostarted\n");
            }
        }
        C::Console {
            domain,
            devname,
            force,
            safe: _,
        } => run_console(connection, &domain, devname, force).await?,
        C::Vcpuinfo { domain } => {
            let list = client(connection)
                .await?
                .get_vcpu_info(pb::GetVcpuInfoRequest {
                    domain: object(&domain),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if format == Format::Json {
                print_json(&list);
                return Ok(());
            }
            let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            for vcpu in &list.vcpus {
                let map: String = (0..host_cpus)
                    .map(|cpu| {
                        if vcpu
                            .affinity
                            .contains(&u32::try_from(cpu).unwrap_or(u32::MAX))
                        {
                            'y'
                        } else {
                            '-'
                        }
                    })
                    .collect();
                print_fields_at(
                    15,
                    &[
                        ("VCPU", vcpu.number.to_string()),
                        ("CPU", vcpu.cpu.to_string()),
                        ("State", "running".into()),
                        ("CPU time", seconds(vcpu.cpu_time_ns)),
                        ("CPU Affinity", map),
                    ],
                );
                println!();
            }
        }
        C::Vcpupin {
            domain,
            vcpu,
            cpulist,
            scope,
        } => match (vcpu, cpulist) {
            (Some(vcpu), Some(list)) => {
                let cpus = parse_cpuset(&list, "cpulist").map_err(|err| fail(err.to_string()))?;
                client(connection)
                    .await?
                    .pin_vcpu(pb::PinVcpuRequest {
                        domain: object(&domain),
                        vcpu,
                        cpus,
                        scope: scope.scope(),
                        ..Default::default()
                    })
                    .await?;
            }
            (wanted, _) => {
                let list = client(connection)
                    .await?
                    .get_vcpu_info(pb::GetVcpuInfoRequest {
                        domain: object(&domain),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                let rows: Vec<Vec<String>> = list
                    .vcpus
                    .iter()
                    .filter(|v| wanted.is_none_or(|w| w == v.number))
                    .map(|v| vec![v.number.to_string(), cpu_list(&v.affinity)])
                    .collect();
                match format {
                    Format::Json => print_json(&list),
                    Format::Table => print_table(&["VCPU", "CPU Affinity"], &rows),
                }
            }
        },
        C::Setvcpus {
            domain,
            count,
            maximum,
            guest,
            scope,
        } => {
            client(connection)
                .await?
                .set_vcpus(pb::SetVcpusRequest {
                    domain: object(&domain),
                    count,
                    maximum,
                    guest,
                    scope: scope.scope(),
                    ..Default::default()
                })
                .await?;
        }
        C::Setmem {
            domain,
            size,
            scope,
        } => {
            let kib = parse_kib(&size).map_err(fail)?;
            client(connection)
                .await?
                .set_memory(pb::SetMemoryRequest {
                    domain: object(&domain),
                    memory_kib: kib,
                    scope: scope.scope(),
                    ..Default::default()
                })
                .await?;
        }
        C::Setmaxmem {
            domain,
            size,
            scope,
        } => {
            let kib = parse_kib(&size).map_err(fail)?;
            client(connection)
                .await?
                .set_max_memory(pb::SetMaxMemoryRequest {
                    domain: object(&domain),
                    memory_kib: kib,
                    scope: scope.scope(),
                    ..Default::default()
                })
                .await?;
        }
        C::Domblkstat { domain, device } => {
            let stats = client(connection)
                .await?
                .get_block_stats(pb::GetBlockStatsRequest {
                    domain: object(&domain),
                    device,
                    ..Default::default()
                })
                .await?
                .into_inner();
            print_counters(
                format,
                &stats,
                &stats.device,
                &[
                    ("rd_req", stats.rd_req),
                    ("rd_bytes", stats.rd_bytes),
                    ("wr_req", stats.wr_req),
                    ("wr_bytes", stats.wr_bytes),
                    ("flush_operations", stats.flush_req),
                ],
            );
        }
        C::Domifstat { domain, interface } => {
            let stats = client(connection)
                .await?
                .get_interface_stats(pb::GetInterfaceStatsRequest {
                    domain: object(&domain),
                    interface,
                    ..Default::default()
                })
                .await?
                .into_inner();
            print_counters(
                format,
                &stats,
                &stats.interface,
                &[
                    ("rx_bytes", stats.rx_bytes),
                    ("rx_packets", stats.rx_packets),
                    ("rx_errs", stats.rx_errs),
                    ("rx_drop", stats.rx_drop),
                    ("tx_bytes", stats.tx_bytes),
                    ("tx_packets", stats.tx_packets),
                    ("tx_errs", stats.tx_errs),
                    ("tx_drop", stats.tx_drop),
                ],
            );
        }
        C::Domblklist {
            domain,
            inactive,
            details,
        } => {
            let list = client(connection)
                .await?
                .list_block_devices(pb::ListBlockDevicesRequest {
                    domain: object(&domain),
                    inactive,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if format == Format::Json {
                print_json(&list);
                return Ok(());
            }
            let source = |s: &str| {
                if s.is_empty() {
                    "-".to_string()
                } else {
                    s.to_string()
                }
            };
            if details {
                let rows: Vec<Vec<String>> = list
                    .devices
                    .iter()
                    .map(|d| {
                        vec![
                            match pb::DiskType::try_from(d.r#type) {
                                Ok(pb::DiskType::Block) => "block",
                                Ok(pb::DiskType::Volume) => "volume",
                                _ => "file",
                            }
                            .into(),
                            word_or_dash(DISK_DEVICES, d.device).into(),
                            d.target.clone(),
                            source(&d.source),
                        ]
                    })
                    .collect();
                print_table(&["Type", "Device", "Target", "Source"], &rows);
            } else {
                let rows: Vec<Vec<String>> = list
                    .devices
                    .iter()
                    .map(|d| vec![d.target.clone(), source(&d.source)])
                    .collect();
                print_table(&["Target", "Source"], &rows);
            }
        }
        C::Domiflist { domain, inactive } => {
            let list = client(connection)
                .await?
                .list_interfaces(pb::ListInterfacesRequest {
                    domain: object(&domain),
                    inactive,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if format == Format::Json {
                print_json(&list);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .interfaces
                .iter()
                .map(|i| {
                    vec![
                        if i.target_dev.is_empty() {
                            "-".into()
                        } else {
                            i.target_dev.clone()
                        },
                        word_or_dash(INTERFACE_TYPES, i.r#type).into(),
                        if i.source.is_empty() {
                            "-".into()
                        } else {
                            i.source.clone()
                        },
                        word_or_dash(INTERFACE_MODELS, i.model).into(),
                        i.mac.clone(),
                    ]
                })
                .collect();
            print_table(&["Interface", "Type", "Source", "Model", "MAC"], &rows);
        }
        C::Dommemstat { domain } => {
            let stats = client(connection)
                .await?
                .get_memory_stats(pb::GetMemoryStatsRequest {
                    domain: object(&domain),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if format == Format::Json {
                print_json(&stats);
                return Ok(());
            }
            for (name, value) in [
                ("actual", stats.actual_kib),
                ("swap_in", stats.swap_in_kib),
                ("swap_out", stats.swap_out_kib),
                ("major_fault", stats.major_fault),
                ("minor_fault", stats.minor_fault),
                ("unused", stats.unused_kib),
                ("available", stats.available_kib),
                ("usable", stats.usable_kib),
                ("disk_caches", stats.disk_caches_kib),
                ("rss", stats.rss_kib),
            ] {
                if let Some(value) = value {
                    println!("{name} {value}");
                }
            }
            println!();
        }
        C::AttachDevice {
            domain,
            file,
            persistent,
            scope,
        } => {
            let xml = read_file(&file)?;
            client(connection)
                .await?
                .attach_device(pb::AttachDeviceRequest {
                    domain: object(&domain),
                    device: Some(pb::attach_device_request::Device::Xml(xml)),
                    scope: scope.scope(),
                    persistent,
                    ..Default::default()
                })
                .await?;
            println!("Device attached successfully\n");
        }
        C::DetachDevice {
            domain,
            file,
            persistent,
            scope,
        } => {
            let xml = read_file(&file)?;
            client(connection)
                .await?
                .detach_device(pb::DetachDeviceRequest {
                    domain: object(&domain),
                    device: Some(pb::detach_device_request::Device::Xml(xml)),
                    scope: scope.scope(),
                    persistent,
                    ..Default::default()
                })
                .await?;
            println!("Device detached successfully\n");
        }
        C::AttachDisk {
            domain,
            source,
            target,
            device,
            mode,
            driver,
            subdriver,
            targetbus,
            cache,
            serial,
            persistent,
            scope,
        } => {
            if driver.as_deref().is_some_and(|d| d != "qemu") {
                return Err(fail("--driver: only qemu is supported".into()));
            }
            let (readonly, shareable) = match mode.as_deref() {
                None => (false, false),
                Some("readonly") => (true, false),
                Some("shareable") => (false, true),
                Some(other) => {
                    return Err(fail(format!(
                        "invalid --mode '{other}' (readonly or shareable)"
                    )));
                }
            };
            client(connection)
                .await?
                .attach_disk(pb::AttachDiskRequest {
                    domain: object(&domain),
                    source,
                    target,
                    target_bus: word(targetbus.as_deref(), DISK_BUSES, "--targetbus")?,
                    subdriver: word(subdriver.as_deref(), DISK_FORMATS, "--subdriver")?,
                    cache: word(cache.as_deref(), DISK_CACHES, "--cache")?,
                    device: word(device.as_deref(), DISK_DEVICES, "--type")?,
                    readonly,
                    shareable,
                    serial: serial.unwrap_or_default(),
                    scope: scope.scope(),
                    persistent,
                    ..Default::default()
                })
                .await?;
            println!("Disk attached successfully\n");
        }
        C::DetachDisk {
            domain,
            target,
            persistent,
            scope,
        } => {
            client(connection)
                .await?
                .detach_disk(pb::DetachDiskRequest {
                    domain: object(&domain),
                    target,
                    scope: scope.scope(),
                    persistent,
                    ..Default::default()
                })
                .await?;
            println!("Disk detached successfully\n");
        }
        C::AttachInterface {
            domain,
            kind,
            source,
            mac,
            model,
            target,
            persistent,
            scope,
        } => {
            client(connection)
                .await?
                .attach_interface(pb::AttachInterfaceRequest {
                    domain: object(&domain),
                    r#type: word(Some(&kind), INTERFACE_TYPES, "interface type")?,
                    source,
                    mac: mac.unwrap_or_default(),
                    model: word(model.as_deref(), INTERFACE_MODELS, "--model")?,
                    target: target.unwrap_or_default(),
                    scope: scope.scope(),
                    persistent,
                    ..Default::default()
                })
                .await?;
            println!("Interface attached successfully\n");
        }
        C::DetachInterface {
            domain,
            kind,
            mac,
            persistent,
            scope,
        } => {
            client(connection)
                .await?
                .detach_interface(pb::DetachInterfaceRequest {
                    domain: object(&domain),
                    r#type: word(Some(&kind), INTERFACE_TYPES, "interface type")?,
                    mac: mac.unwrap_or_default(),
                    scope: scope.scope(),
                    persistent,
                    ..Default::default()
                })
                .await?;
            println!("Interface detached successfully\n");
        }
        C::Event {
            domain,
            event,
            keep,
            all: _,
            timeout,
        } => events(connection, format, domain, event, keep, timeout).await?,
        C::Schedinfo { domain, set, scope } => {
            schedinfo(connection, format, &domain, &set, scope).await?
        }
        C::Memtune {
            domain,
            hard_limit,
            soft_limit,
            swap_hard_limit,
            min_guarantee,
            scope,
        } => {
            let limit = |text: Option<String>| -> Result<Option<pb::MemoryLimit>, Call> {
                let Some(text) = text else { return Ok(None) };
                let value = if text == "-1" || text == "unlimited" {
                    pb::memory_limit::Value::Unlimited(true)
                } else {
                    pb::memory_limit::Value::Kib(parse_kib(&text).map_err(fail)?)
                };
                Ok(Some(pb::MemoryLimit { value: Some(value) }))
            };
            let params = pb::MemoryParams {
                hard_limit: limit(hard_limit)?,
                soft_limit: limit(soft_limit)?,
                swap_hard_limit: limit(swap_hard_limit)?,
                min_guarantee: limit(min_guarantee)?,
            };
            let mut client = client(connection).await?;
            if params != pb::MemoryParams::default() {
                client
                    .set_memory_params(pb::SetMemoryParamsRequest {
                        domain: object(&domain),
                        params: Some(params),
                        scope: scope.scope(),
                        ..Default::default()
                    })
                    .await?;
                return Ok(());
            }
            let params = client
                .get_memory_params(pb::GetMemoryParamsRequest {
                    domain: object(&domain),
                    config: scope.config,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if format == Format::Json {
                print_json(&params);
                return Ok(());
            }
            let show = |limit: &Option<pb::MemoryLimit>| match limit
                .as_ref()
                .and_then(|l| l.value.as_ref())
            {
                Some(pb::memory_limit::Value::Kib(kib)) => kib.to_string(),
                _ => "unlimited".to_string(),
            };
            println!("{:<15}: {}", "hard_limit", show(&params.hard_limit));
            println!("{:<15}: {}", "soft_limit", show(&params.soft_limit));
            println!(
                "{:<15}: {}",
                "swap_hard_limit",
                show(&params.swap_hard_limit)
            );
            println!();
        }
        C::CpuStats {
            domain,
            start,
            count,
            total,
        } => {
            let stats = client(connection)
                .await?
                .get_cpu_stats(pb::GetCpuStatsRequest {
                    domain: object(&domain),
                    start_cpu: start,
                    count,
                    total_only: total,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if format == Format::Json {
                print_json(&stats);
                return Ok(());
            }
            let secs = |ns: u64| format!("{:>12.9} seconds", ns as f64 / 1e9);
            for cpu in &stats.per_cpu {
                println!("CPU{}:", cpu.cpu);
                println!("\t{:<15}{}", "cpu_time", secs(cpu.cpu_time_ns));
                println!(
                    "\t{:<15}{}",
                    "vcpu_time",
                    secs(cpu.vcpu_time_ns.unwrap_or(0))
                );
            }
            let t = stats.total.unwrap_or_default();
            println!("Total:");
            println!("\t{:<15}{}", "cpu_time", secs(t.cpu_time_ns));
            println!("\t{:<15}{}", "user_time", secs(t.user_time_ns));
            println!("\t{:<15}{}", "system_time", secs(t.system_time_ns));
        }
        C::Domstats {
            domains,
            state,
            cpu_total,
            balloon,
            vcpu,
            interface,
            block,
        } => {
            use pb::DomainStatsGroup as G;
            let groups: Vec<i32> = [
                (state, G::State),
                (cpu_total, G::CpuTotal),
                (balloon, G::Balloon),
                (vcpu, G::Vcpu),
                (interface, G::Interface),
                (block, G::Block),
            ]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, g)| g as i32)
            .collect();
            let list = client(connection)
                .await?
                .get_domain_stats(pb::GetDomainStatsRequest {
                    domains: domains.iter().filter_map(|d| object(d)).collect(),
                    groups,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if format == Format::Json {
                print_json(&list);
                return Ok(());
            }
            for record in &list.records {
                print_domstats(record);
            }
        }
        C::Domifaddr {
            domain,
            interface,
            source,
        } => {
            let source = match source.as_deref() {
                None | Some("lease") => pb::InterfaceAddressSource::Lease,
                Some("agent") => pb::InterfaceAddressSource::Agent,
                Some("arp") => pb::InterfaceAddressSource::Arp,
                Some(other) => {
                    return Err(fail(format!(
                        "invalid --source '{other}' (lease, agent or arp)"
                    )));
                }
            };
            let list = client(connection)
                .await?
                .get_interface_addresses(pb::GetInterfaceAddressesRequest {
                    domain: object(&domain),
                    interface: interface.unwrap_or_default(),
                    source: source as i32,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if format == Format::Json {
                print_json(&list);
                return Ok(());
            }
            let mut rows = Vec::new();
            for i in &list.interfaces {
                if i.addresses.is_empty() {
                    rows.push(vec![
                        i.name.clone(),
                        i.hwaddr.clone(),
                        "N/A".into(),
                        "N/A".into(),
                    ]);
                }
                for a in &i.addresses {
                    let protocol = if a.r#type == pb::IpAddressType::Ipv6 as i32 {
                        "ipv6"
                    } else {
                        "ipv4"
                    };
                    let address = if a.prefix == 0 {
                        a.address.clone()
                    } else {
                        format!("{}/{}", a.address, a.prefix)
                    };
                    rows.push(vec![
                        i.name.clone(),
                        i.hwaddr.clone(),
                        protocol.into(),
                        address,
                    ]);
                }
            }
            print_table(&["Name", "MAC address", "Protocol", "Address"], &rows);
        }
        C::SnapshotCreateAs {
            domain,
            name,
            description,
            disk_only,
        } => {
            let snapshot = client(connection)
                .await?
                .create_snapshot(pb::CreateSnapshotRequest {
                    domain: object(&domain),
                    source: Some(pb::create_snapshot_request::Source::Definition(
                        pb::SnapshotDefinition {
                            name: name.unwrap_or_default(),
                            description: description.unwrap_or_default(),
                            ..Default::default()
                        },
                    )),
                    disk_only,
                    ..Default::default()
                })
                .await?
                .into_inner();
            println!("Domain snapshot {} created\n", snapshot.name);
        }
        C::SnapshotList { domain } => {
            let list = client(connection)
                .await?
                .list_snapshots(pb::ListSnapshotsRequest {
                    domain: object(&domain),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if format == Format::Json {
                print_json(&list);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .snapshots
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        utc_time(s.creation_time_unix_s),
                        state_name(s.state).into(),
                    ]
                })
                .collect();
            print_table(&["Name", "Creation Time", "State"], &rows);
        }
        C::SnapshotDumpxml { domain, snapshot } => {
            let xml = client(connection)
                .await?
                .get_snapshot_xml(pb::GetSnapshotXmlRequest {
                    domain: object(&domain),
                    snapshot,
                    ..Default::default()
                })
                .await?
                .into_inner();
            print_xml(format, &xml, &xml.xml);
        }
        C::SnapshotRevert {
            domain,
            snapshotname,
            current,
            paused,
            running,
        } => {
            client(connection)
                .await?
                .revert_to_snapshot(pb::RevertToSnapshotRequest {
                    domain: object(&domain),
                    snapshot: snapshotname.unwrap_or_default(),
                    current,
                    paused,
                    running,
                    ..Default::default()
                })
                .await?;
        }
        C::SnapshotDelete {
            domain,
            snapshotname,
            current,
        } => {
            let mut client = client(connection).await?;
            let name = match snapshotname {
                Some(name) => name,
                None => {
                    client
                        .get_snapshot(pb::GetSnapshotRequest {
                            domain: object(&domain),
                            current: true,
                            ..Default::default()
                        })
                        .await?
                        .into_inner()
                        .name
                }
            };
            client
                .delete_snapshot(pb::DeleteSnapshotRequest {
                    domain: object(&domain),
                    snapshot: name.clone(),
                    current,
                    ..Default::default()
                })
                .await?;
            println!("Domain snapshot {name} deleted\n");
        }
        C::Dump {
            domain,
            file,
            memory_only,
            live,
        } => {
            let mut stream = client(connection)
                .await?
                .core_dump(pb::CoreDumpRequest {
                    domain: object(&domain),
                    file: file.clone(),
                    memory_only,
                    live,
                    ..Default::default()
                })
                .await?
                .into_inner();
            while stream.message().await?.is_some() {}
            println!("\nDomain '{domain}' dumped to {file}\n");
        }
    }
    Ok(())
}

async fn schedinfo(
    connection: &mut Connection,
    format: Format,
    domain: &str,
    set: &[String],
    scope: ScopeArgs,
) -> Result<(), Call> {
    let mut client = client(connection).await?;
    if !set.is_empty() {
        let mut params = pb::SchedulerParams::default();
        for item in set.iter().flat_map(|s| s.split(',')) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| fail(format!("--set {item}: expected NAME=VALUE")))?;
            let bad = || fail(format!("--set {item}: '{value}' is not a number"));
            match key {
                "cpu_shares" => params.cpu_shares = Some(value.parse().map_err(|_| bad())?),
                "vcpu_period" => params.period_us = Some(value.parse().map_err(|_| bad())?),
                "vcpu_quota" => params.quota_us = Some(value.parse().map_err(|_| bad())?),
                other => {
                    return Err(fail(format!(
                        "--set {other}: unknown parameter (cpu_shares, vcpu_period, vcpu_quota)"
                    )));
                }
            }
        }
        client
            .set_scheduler_params(pb::SetSchedulerParamsRequest {
                domain: object(domain),
                params: Some(params),
                scope: scope.scope(),
                ..Default::default()
            })
            .await?;
    }
    let params = client
        .get_scheduler_params(pb::GetSchedulerParamsRequest {
            domain: object(domain),
            config: scope.config,
            ..Default::default()
        })
        .await?
        .into_inner();
    if format == Format::Json {
        print_json(&params);
        return Ok(());
    }
    let show = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!("{:<15}: posix", "Scheduler");
    println!(
        "{:<15}: {}",
        "cpu_shares",
        show(params.cpu_shares.map(|v| v.to_string()))
    );
    println!(
        "{:<15}: {}",
        "vcpu_period",
        show(params.period_us.map(|v| v.to_string()))
    );
    println!(
        "{:<15}: {}",
        "vcpu_quota",
        show(params.quota_us.map(|v| v.to_string()))
    );
    println!();
    Ok(())
}

fn print_domstats(record: &pb::DomainStatsRecord) {
    println!("Domain: '{}'", record.name);
    if let Some(state) = &record.state {
        println!("  state.state={}", state_number(state.state));
        println!("  state.reason={}", state.reason % 10);
    }
    if let Some(cpu) = &record.cpu {
        println!("  cpu.time={}", cpu.time_ns);
        println!("  cpu.user={}", cpu.user_ns);
        println!("  cpu.system={}", cpu.system_ns);
    }
    if let Some(balloon) = &record.balloon {
        println!("  balloon.current={}", balloon.current_kib);
        println!("  balloon.maximum={}", balloon.maximum_kib);
    }
    if let Some(vcpu) = &record.vcpu {
        println!("  vcpu.current={}", vcpu.current);
        println!("  vcpu.maximum={}", vcpu.maximum);
        for v in &vcpu.vcpus {
            println!("  vcpu.{}.state=1", v.number);
            println!("  vcpu.{}.time={}", v.number, v.time_ns);
        }
    }
    if !record.interfaces.is_empty() {
        println!("  net.count={}", record.interfaces.len());
        for (i, n) in record.interfaces.iter().enumerate() {
            println!("  net.{i}.name={}", n.interface);
            println!("  net.{i}.rx.bytes={}", n.rx_bytes);
            println!("  net.{i}.rx.pkts={}", n.rx_packets);
            println!("  net.{i}.tx.bytes={}", n.tx_bytes);
            println!("  net.{i}.tx.pkts={}", n.tx_packets);
        }
    }
    if !record.blocks.is_empty() {
        println!("  block.count={}", record.blocks.len());
        for (i, b) in record.blocks.iter().enumerate() {
            println!("  block.{i}.name={}", b.name);
            println!("  block.{i}.path={}", b.path);
            if let Some(s) = &b.stats {
                println!("  block.{i}.rd.reqs={}", s.rd_req);
                println!("  block.{i}.rd.bytes={}", s.rd_bytes);
                println!("  block.{i}.wr.reqs={}", s.wr_req);
                println!("  block.{i}.wr.bytes={}", s.wr_bytes);
                println!("  block.{i}.fl.reqs={}", s.flush_req);
            }
        }
    }
    println!();
}

/// libvirt's numeric virDomainState, as domstats prints it.
fn state_number(state: i32) -> i32 {
    (state - 1).max(0)
}

/// "2026-11-26 17:59:50 +0000", as virsh prints times (civil date from days since 1970).
pub(crate) fn utc_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// virsh's "DEVICE name value" counter lines (domblkstat, domifstat).
fn print_counters<T: serde::Serialize>(
    format: Format,
    message: &T,
    device: &str,
    counters: &[(&str, u64)],
) {
    if format == Format::Json {
        print_json(message);
        return;
    }
    for (name, value) in counters {
        println!("{device} {name} {value}");
    }
    println!();
}

fn engine_name(engine: i32) -> &'static str {
    match pb::Engine::try_from(engine) {
        Ok(pb::Engine::Vmm) => "vmm",
        Ok(pb::Engine::Qemu) => "qemu",
        _ => "-",
    }
}

async fn lookup(connection: &mut Connection, domain: &str) -> Result<pb::DomainSummary, Call> {
    Ok(client(connection)
        .await?
        .lookup_domain(pb::LookupDomainRequest {
            host: String::new(),
            domain: object(domain),
        })
        .await?
        .into_inner())
}

async fn lookup_name(connection: &mut Connection, domain: &str) -> Result<String, Call> {
    Ok(lookup(connection, domain).await?.name)
}

async fn edit(connection: &mut Connection, domain: &str) -> Result<(), Call> {
    let mut client = client(connection).await?;
    let xml = client
        .get_domain_xml(pb::GetDomainXmlRequest {
            domain: object(domain),
            inactive: true,
            // As virsh edit: a graphics password survives the edit.
            security_info: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .xml;
    let name = lookup_name(connection, domain).await?;
    let Some(edited) = edit_xml(&name, &xml)? else {
        println!("Domain '{name}' XML configuration not changed.\n");
        return Ok(());
    };
    client
        .define_domain(pb::DefineDomainRequest {
            source: Some(pb::define_domain_request::Source::Xml(edited)),
            ..Default::default()
        })
        .await?;
    println!("Domain '{name}' XML configuration edited.\n");
    Ok(())
}

/// The escape byte that leaves a console: Ctrl-].
const ESCAPE: u8 = 0x1d;

/// Puts a terminal in raw mode and restores it when dropped.
struct RawTerminal(Option<nix::sys::termios::Termios>);

impl RawTerminal {
    fn enter() -> RawTerminal {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(&stdin) else {
            return RawTerminal(None);
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw);
        RawTerminal(Some(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

pub(crate) async fn run_console(
    connection: &mut Connection,
    domain: &str,
    devname: Option<String>,
    force: bool,
) -> Result<(), Call> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let name = lookup_name(connection, domain).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ConsoleInput>(16);
    tx.send(pb::ConsoleInput {
        domain: object(domain),
        device: devname.unwrap_or_default(),
        force,
        ..Default::default()
    })
    .await
    .map_err(|_| fail("console closed".into()))?;
    let mut output = client(connection)
        .await?
        .console(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    println!("Connected to domain '{name}'\nEscape character is ^] (Ctrl + ])");
    let _raw = std::io::IsTerminal::is_terminal(&std::io::stdin()).then(RawTerminal::enter);
    let input = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buffer = [0u8; 1024];
        loop {
            let n = match stdin.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let bytes = &buffer[..n];
            let (data, leave) = match bytes.iter().position(|b| *b == ESCAPE) {
                Some(at) => (&bytes[..at], true),
                None => (bytes, false),
            };
            if !data.is_empty()
                && tx
                    .send(pb::ConsoleInput {
                        data: data.to_vec(),
                        ..Default::default()
                    })
                    .await
                    .is_err()
            {
                break;
            }
            if leave {
                break;
            }
        }
    });
    let mut stdout = tokio::io::stdout();
    let mut input = input;
    let ended = loop {
        tokio::select! {
            _ = &mut input => break Ok(()),
            message = output.message() => match message {
                Ok(Some(chunk)) => {
                    let _ = stdout.write_all(&chunk.data).await;
                    let _ = stdout.flush().await;
                }
                Ok(None) => break Ok(()),
                Err(status) => break Err(status),
            }
        }
    };
    drop(_raw);
    println!();
    ended.map_err(Call::Status)
}

fn event_words(event: &pb::DomainEvent) -> (&'static str, &'static str) {
    use pb::DomainEventType as T;
    use pb::DomainStateReason as R;
    let reason = R::try_from(event.reason).unwrap_or(R::Unspecified);
    match T::try_from(event.r#type).unwrap_or(T::Unspecified) {
        T::Defined => (
            "Defined",
            if event.detail == pb::DomainEventDetail::DefinedUpdated as i32 {
                "Updated"
            } else {
                "Added"
            },
        ),
        T::Undefined => ("Undefined", "Removed"),
        T::Started => ("Started", "Booted"),
        T::Suspended => ("Suspended", "Paused"),
        T::Resumed => ("Resumed", "Unpaused"),
        T::Shutdown => ("Shutdown", "Finished"),
        T::Crashed => ("Crashed", "Panicked"),
        T::Stopped => (
            "Stopped",
            match reason {
                R::ShutoffDestroyed => "Destroyed",
                R::ShutoffCrashed => "Crashed",
                R::ShutoffFailed => "Failed",
                R::ShutoffSaved => "Saved",
                R::ShutoffMigrated => "Migrated",
                _ => "Shutdown",
            },
        ),
        _ => ("Unknown", "Unknown"),
    }
}

async fn events(
    connection: &mut Connection,
    format: Format,
    domain: Option<String>,
    event: Option<String>,
    keep: bool,
    timeout: Option<u64>,
) -> Result<(), Call> {
    if let Some(event) = event.as_deref()
        && event != "lifecycle"
    {
        return Err(fail(format!(
            "--event {event}: only lifecycle events are published"
        )));
    }
    let mut stream = client(connection)
        .await?
        .watch_domain_events(pb::WatchDomainEventsRequest {
            domain: domain.as_deref().and_then(object),
            ..Default::default()
        })
        .await?
        .into_inner();
    let deadline = timeout.map(|s| tokio::time::Instant::now() + std::time::Duration::from_secs(s));
    let mut count = 0u64;
    loop {
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => stream.message().await,
        };
        let Some(event) = next? else { break };
        count += 1;
        match format {
            Format::Json => print_json(&event),
            Format::Table => {
                let (kind, detail) = event_words(&event);
                println!(
                    "event 'lifecycle' for domain '{}': {kind} {detail}",
                    event.name
                );
            }
        }
        let _ = std::io::stdout().flush();
        if !keep {
            break;
        }
    }
    if format == Format::Table {
        println!("events received: {count}\n");
    }
    Ok(())
}

async fn migration_client(
    connection: &mut Connection,
) -> Result<
    vireo_proto::migrate::v1::migration_service_client::MigrationServiceClient<
        crate::connection::GatewayChannel,
    >,
    crate::Failed,
> {
    Ok(
        vireo_proto::migrate::v1::migration_service_client::MigrationServiceClient::new(
            connection.channel().await?,
        ),
    )
}

/// domjobinfo's layout, as virsh prints it.
fn print_job(info: &migrate::JobInfo) {
    use migrate::{JobOperation, JobType};
    let kind = match info.r#type() {
        JobType::None | JobType::Unspecified => "None",
        JobType::Bounded => "Bounded",
        JobType::Unbounded => "Unbounded",
        JobType::Completed => "Completed",
        JobType::Failed => "Failed",
        JobType::Cancelled => "Cancelled",
    };
    let mut fields = vec![("Job type", kind.to_string())];
    if matches!(info.r#type(), JobType::None | JobType::Unspecified) {
        crate::output::print_fields_at(17, &fields);
        return;
    }
    let operation = match info.operation() {
        JobOperation::MigrationOut => "Outgoing migration",
        JobOperation::MigrationIn => "Incoming migration",
        JobOperation::Save => "Save",
        JobOperation::Restore => "Restore",
        JobOperation::Dump => "Dump",
        JobOperation::Unspecified => "Unknown",
    };
    let mib = |bytes: u64| format!("{:.3} MiB", bytes as f64 / 1048576.0);
    fields.extend([
        ("Operation", operation.to_string()),
        (
            "Time elapsed",
            format!("{}         ms", info.time_elapsed_ms),
        ),
        ("Data processed", mib(info.data_processed_bytes)),
        ("Data remaining", mib(info.data_remaining_bytes)),
        ("Data total", mib(info.data_total_bytes)),
        ("Memory processed", mib(info.memory_processed_bytes)),
        ("Memory remaining", mib(info.memory_remaining_bytes)),
        ("Memory total", mib(info.memory_total_bytes)),
        (
            "Memory bandwidth",
            format!("{}/s", mib(info.memory_bandwidth_bytes_s)),
        ),
        (
            "Dirty rate",
            format!("{}        pages/s", info.dirty_rate_pages_s),
        ),
        ("Iteration", info.memory_iteration.to_string()),
        (
            "Page size",
            format!("{}         bytes", info.memory_page_size_bytes),
        ),
        (
            "Expected downtime",
            format!("{}         ms", info.expected_downtime_ms),
        ),
    ]);
    if info.auto_converge_throttle_percent > 0 {
        fields.push((
            "Auto converge throttle",
            info.auto_converge_throttle_percent.to_string(),
        ));
    }
    if info.r#type() == JobType::Completed {
        fields.push(("Total downtime", format!("{}         ms", info.downtime_ms)));
    }
    if let Some(crc) = info.memory_crc32 {
        fields.push((
            "Memory checksum",
            format!("{crc:08x} (CRC32, equal on both hosts)"),
        ));
    }
    if !info.error_message.is_empty() {
        fields.push(("Error message", info.error_message.clone()));
    }
    crate::output::print_fields_at(17, &fields);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_cpu_lists() {
        assert_eq!(parse_kib("1024").unwrap(), 1024);
        assert_eq!(parse_kib("512M").unwrap(), 512 * 1024);
        assert_eq!(parse_kib("1GiB").unwrap(), 1024 * 1024);
        assert!(parse_kib("12Q").is_err());
        assert!(parse_kib("99999999999999999999T").is_err());
        assert_eq!(cpu_list(&[0, 1, 3, 5, 6]), "0-1,3,5-6");
        assert_eq!(utc_time(1_795_715_990), "2026-11-26 17:59:50 +0000");
    }
}
