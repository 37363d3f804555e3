//! virsh's commands: their options (clap), the RPC each calls, and virsh's output layout.

use clap::Subcommand;
use tonic::{Code, Status};
use vireo_proto::cluster::v1 as cluster;
use vireo_proto::cluster::v1::cluster_domain_service_client::ClusterDomainServiceClient;
use vireo_proto::cluster::v1::host_service_client::HostServiceClient;
use vireo_proto::compute::v1 as compute;
use vireo_proto::compute::v1::node_service_client::NodeServiceClient;

use crate::Failed;
use crate::connection::Connection;
use crate::output::{Format, print_error, print_fields, print_json, print_status, print_table};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the client, library and hypervisor versions
    Version,
    /// Print the URI this client is connected to
    Uri,
    /// Print the host's name
    Hostname,
    /// Show the host's CPUs, NUMA cells and memory
    Nodeinfo,
    /// Show what this host and its engines can run (libvirt capabilities XML)
    Capabilities,
    /// Show free memory per NUMA cell
    Freecell {
        /// Every NUMA cell, and the total
        #[arg(long)]
        all: bool,
        /// Only this NUMA cell
        #[arg(long, value_name = "CELL")]
        cellno: Option<u32>,
    },
    /// Show the host's SMBIOS facts (libvirt sysinfo XML)
    Sysinfo,
    /// Show the host's memory statistics
    Nodememstats,
    /// Show the host's CPU time statistics
    Nodecpustats {
        /// One CPU instead of all
        #[arg(long)]
        cpu: Option<u32>,
    },
    /// List domains (running ones unless told otherwise)
    List {
        /// Active and inactive domains
        #[arg(long)]
        all: bool,
        /// Only inactive domains
        #[arg(long)]
        inactive: bool,
        /// Only domains marked to autostart
        #[arg(long)]
        autostart: bool,
        /// Print only names
        #[arg(long, conflicts_with = "uuid")]
        name: bool,
        /// Print only UUIDs
        #[arg(long)]
        uuid: bool,
    },
    /// Create a guest and install it, as virt-install does (--print-xml and --dry-run so far)
    Install(Box<crate::install::InstallArgs>),
    /// List the hosts behind the gateway, as each answers now
    HostList,
    /// Make a single-use token with which a host joins the cluster (admin)
    HostJoinToken {
        /// Seconds the token stays valid (1 hour by default)
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Only a host of this name may join with it
        #[arg(long)]
        name: Option<String>,
    },
    /// Add a host to the cluster with a join token: its services at ADDRESS
    /// (https://HOST:PORT, its gateway over TLS) or in the run directory of a vireod on the
    /// gateway's machine (unix:///run/DIR)
    HostJoin {
        name: String,
        address: String,
        #[arg(long)]
        token: String,
    },
    /// Remove a host from the cluster
    HostRemove {
        name: String,
        /// Even with running domains there, or while it cannot be reached
        #[arg(long)]
        force: bool,
    },
    /// Show who the gateway takes this client for, and its role
    Whoami,
    /// Create a CA, server and client certificates, and bearer tokens
    Pki {
        #[command(subcommand)]
        action: crate::pki::PkiAction,
    },
    /// (shell) Connect to another gateway
    Connect {
        uri: String,
        #[arg(long)]
        readonly: bool,
    },
    /// Print help for all commands or one
    Help { command: Option<String> },
    /// (shell) Leave the interactive shell
    #[command(alias = "exit")]
    Quit,
    #[command(flatten)]
    Domain(Box<crate::domain::DomainCommand>),
    #[command(flatten)]
    Storage(Box<crate::storage::StorageCommand>),
    #[command(flatten)]
    Network(Box<crate::network::NetworkCommand>),
    #[command(flatten)]
    Nodedev(Box<crate::nodedev::NodedevCommand>),
}

/// What the shell should do after a command.
pub enum Next {
    Continue,
    Quit,
}

/// Runs one command. Failures are printed here.
pub async fn run(
    connection: &mut Connection,
    format: Format,
    command: Command,
) -> Result<Next, Failed> {
    let outcome = match command {
        Command::Quit => return Ok(Next::Quit),
        Command::Help { command } => {
            crate::shell::print_help(command.as_deref());
            return Ok(Next::Continue);
        }
        Command::Connect { uri, readonly } => {
            connection.reconnect(&uri, readonly);
            connection.channel().await?;
            return Ok(Next::Continue);
        }
        Command::Uri => {
            match format {
                Format::Json => print_json(&serde_json::json!({ "uri": connection.uri })),
                Format::Table => println!("{}", connection.uri),
            }
            return Ok(Next::Continue);
        }
        Command::Version => version(connection, format).await,
        Command::Hostname => hostname(connection, format).await,
        Command::Nodeinfo => nodeinfo(connection, format).await,
        Command::Capabilities => capabilities(connection, format).await,
        Command::Freecell { all, cellno } => freecell(connection, format, all, cellno).await,
        Command::Sysinfo => sysinfo(connection, format).await,
        Command::Nodememstats => nodememstats(connection, format).await,
        Command::Nodecpustats { cpu } => nodecpustats(connection, format, cpu).await,
        Command::Domain(command) => crate::domain::run(connection, format, *command).await,
        Command::Storage(command) => crate::storage::run(connection, format, *command).await,
        Command::Network(command) => crate::network::run(connection, format, *command).await,
        Command::Nodedev(command) => crate::nodedev::run(connection, format, *command).await,
        Command::Install(args) => crate::install::run(connection, *args).await,
        Command::HostList => host_list(connection, format).await,
        Command::HostJoinToken { ttl, name } => {
            host_join_token(connection, format, ttl, name).await
        }
        Command::HostJoin {
            name,
            address,
            token,
        } => host_join(connection, format, name, address, token).await,
        Command::HostRemove { name, force } => host_remove(connection, name, force).await,
        Command::Whoami => whoami(connection, format).await,
        Command::Pki { action } => crate::pki::run(action).map_err(|message| {
            print_error(&message);
            Call::Failed
        }),
        Command::List {
            all,
            inactive,
            autostart,
            name,
            uuid,
        } => {
            list(
                connection,
                format,
                ListOptions {
                    all,
                    inactive,
                    autostart,
                    name,
                    uuid,
                },
            )
            .await
        }
    };
    match outcome {
        Ok(()) => Ok(Next::Continue),
        Err(Call::Failed) => Err(Failed),
        Err(Call::Status(status)) => {
            print_status(&status);
            Err(Failed)
        }
    }
}

/// Why a command failed: already reported (connection), or a gRPC status to print.
pub(crate) enum Call {
    Failed,
    Status(Status),
}

impl From<Status> for Call {
    fn from(status: Status) -> Call {
        Call::Status(status)
    }
}

impl From<Failed> for Call {
    fn from(_: Failed) -> Call {
        Call::Failed
    }
}

/// A user mistake found before any call, reported as the server reports one.
/// virsh's first error line before the server's: what could not be found (on NotFound), or
/// else what failed.
pub(crate) fn failed(
    not_found: Option<String>,
    action: Option<String>,
) -> impl FnOnce(Status) -> Call {
    move |status| {
        match (status.code(), not_found, action) {
            (Code::NotFound, Some(line), _) | (_, _, Some(line)) => print_error(&line),
            _ => {}
        }
        Call::Status(status)
    }
}

/// The end of a lifecycle call on a pool, network, ...: virsh's "Network X started", or its two
/// error lines ("failed to get network 'X'" when there is none, else "Failed to start network X").
pub(crate) fn object_step<T>(
    kind: &str,
    name: &str,
    verb: &str,
    done: &str,
    call: Result<tonic::Response<T>, Status>,
) -> Result<(), Call> {
    let noun = kind.to_lowercase();
    call.map_err(failed(
        Some(format!("failed to get {noun} '{name}'")),
        Some(format!("Failed to {verb} {noun} {name}")),
    ))?;
    println!("{kind} {name} {done}\n");
    Ok(())
}

pub(crate) fn fail(message: String) -> Call {
    Call::Status(Status::invalid_argument(message))
}

/// An XML (or other) file named on the command line.
pub(crate) fn read_file(path: &str) -> Result<String, Call> {
    std::fs::read_to_string(path).map_err(|err| fail(format!("cannot read {path}: {err}")))
}

async fn node(
    connection: &mut Connection,
) -> Result<NodeServiceClient<crate::connection::GatewayChannel>, Call> {
    Ok(NodeServiceClient::new(connection.channel().await?))
}

async fn version(connection: &mut Connection, format: Format) -> Result<(), Call> {
    let info = node(connection)
        .await?
        .get_version(compute::GetVersionRequest::default())
        .await?
        .into_inner();
    let client = env!("CARGO_PKG_VERSION");
    match format {
        Format::Json => {
            print_json(&serde_json::json!({ "client_version": client, "server": info }))
        }
        Format::Table => {
            println!("Compiled against library: vireo {client}");
            println!("Using library: vireo {}", info.vireo_version);
            println!("Using API: vireo {}", info.api_version);
            let mut hypervisors = Vec::new();
            if !info.qemu_version.is_empty() {
                hypervisors.push(format!("QEMU {}", info.qemu_version));
            }
            if info.kvm_api_version != 0 {
                hypervisors.push(format!(
                    "vireo-vmm {} (KVM API {})",
                    info.vmm_version, info.kvm_api_version
                ));
            }
            if hypervisors.is_empty() {
                hypervisors.push("none".to_string());
            }
            println!("Running hypervisor: {}", hypervisors.join(", "));
        }
    }
    Ok(())
}

async fn hostname(connection: &mut Connection, format: Format) -> Result<(), Call> {
    let info = node(connection)
        .await?
        .get_hostname(compute::GetHostnameRequest::default())
        .await?
        .into_inner();
    match format {
        Format::Json => print_json(&info),
        Format::Table => println!("{}", info.hostname),
    }
    Ok(())
}

async fn nodeinfo(connection: &mut Connection, format: Format) -> Result<(), Call> {
    let info = node(connection)
        .await?
        .get_node_info(compute::GetNodeInfoRequest::default())
        .await?
        .into_inner();
    match format {
        Format::Json => print_json(&info),
        Format::Table => print_fields(&[
            ("CPU model", info.arch.clone()),
            ("CPU(s)", info.cpus.to_string()),
            ("CPU frequency", format!("{} MHz", info.cpu_mhz)),
            ("CPU socket(s)", info.sockets_per_cell.to_string()),
            ("Core(s) per socket", info.cores_per_socket.to_string()),
            ("Thread(s) per core", info.threads_per_core.to_string()),
            ("NUMA cell(s)", info.numa_cells.to_string()),
            ("Memory size", format!("{} KiB", info.memory_kib)),
            // virsh's "CPU model" is the architecture; the processor's name follows on its own line.
            ("CPU model name", info.cpu_model_name.clone()),
        ]),
    }
    Ok(())
}

async fn capabilities(connection: &mut Connection, format: Format) -> Result<(), Call> {
    let caps = node(connection)
        .await?
        .get_capabilities(compute::GetCapabilitiesRequest::default())
        .await?
        .into_inner();
    match format {
        Format::Json => print_json(&caps),
        Format::Table => print!("{}", caps.xml),
    }
    Ok(())
}

async fn freecell(
    connection: &mut Connection,
    format: Format,
    all: bool,
    cellno: Option<u32>,
) -> Result<(), Call> {
    let request = compute::GetFreeCellsRequest {
        host: String::new(),
        cell: cellno,
    };
    let cells = node(connection)
        .await?
        .get_free_cells(request)
        .await?
        .into_inner();
    match format {
        Format::Json => print_json(&cells),
        Format::Table if cellno.is_some() => {
            for cell in &cells.cells {
                println!("{}: {} KiB", cell.cell, cell.free_kib);
            }
        }
        Format::Table if all => {
            for cell in &cells.cells {
                println!("{:>5}: {:>10} KiB", cell.cell, cell.free_kib);
            }
            println!("--------------------");
            println!("{:>5}: {:>10} KiB", "Total", cells.total_free_kib);
        }
        Format::Table => println!("Total: {} KiB", cells.total_free_kib),
    }
    Ok(())
}

async fn sysinfo(connection: &mut Connection, format: Format) -> Result<(), Call> {
    let info = node(connection)
        .await?
        .get_sysinfo(compute::GetSysinfoRequest::default())
        .await?
        .into_inner();
    match format {
        Format::Json => print_json(&info),
        Format::Table => print!("{}", info.xml),
    }
    Ok(())
}

async fn nodememstats(connection: &mut Connection, format: Format) -> Result<(), Call> {
    let stats = node(connection)
        .await?
        .get_node_memory_stats(compute::GetNodeMemoryStatsRequest::default())
        .await?
        .into_inner();
    match format {
        Format::Json => print_json(&stats),
        Format::Table => {
            println!("{:<8}: {} KiB", "total", stats.total_kib);
            println!("{:<8}: {} KiB", "free", stats.free_kib);
            println!("{:<8}: {} KiB", "buffers", stats.buffers_kib);
            println!("{:<8}: {} KiB", "cached", stats.cached_kib);
        }
    }
    Ok(())
}

async fn nodecpustats(
    connection: &mut Connection,
    format: Format,
    cpu: Option<u32>,
) -> Result<(), Call> {
    let request = compute::GetNodeCpuStatsRequest {
        host: String::new(),
        cpu,
    };
    let stats = node(connection)
        .await?
        .get_node_cpu_stats(request)
        .await?
        .into_inner();
    match format {
        Format::Json => print_json(&stats),
        Format::Table => {
            println!("{:<8}: {:>20}", "user", stats.user_ns);
            println!("{:<8}: {:>20}", "system", stats.system_ns);
            println!("{:<8}: {:>20}", "idle", stats.idle_ns);
            println!("{:<8}: {:>20}", "iowait", stats.iowait_ns);
        }
    }
    Ok(())
}

struct ListOptions {
    all: bool,
    inactive: bool,
    autostart: bool,
    name: bool,
    uuid: bool,
}

/// libvirt's words for a domain state, as `virsh list` prints them.
pub(crate) fn state_name(state: i32) -> &'static str {
    match compute::DomainState::try_from(state) {
        Ok(compute::DomainState::Running) => "running",
        Ok(compute::DomainState::Blocked) => "idle",
        Ok(compute::DomainState::Paused) => "paused",
        Ok(compute::DomainState::Shutdown) => "in shutdown",
        Ok(compute::DomainState::Shutoff) => "shut off",
        Ok(compute::DomainState::Crashed) => "crashed",
        Ok(compute::DomainState::Pmsuspended) => "pmsuspended",
        Ok(compute::DomainState::Nostate | compute::DomainState::Unspecified) | Err(_) => {
            "no state"
        }
    }
}

async fn list(
    connection: &mut Connection,
    format: Format,
    options: ListOptions,
) -> Result<(), Call> {
    // Every host's domains: the gateway merges them and names the hosts that did not answer.
    let request = cluster::ListAllDomainsRequest {
        include_active: options.all || !options.inactive,
        include_inactive: options.all || options.inactive,
        autostart: options.autostart.then_some(true),
        // `--host NAME list` lists that host only.
        hosts: connection.host.iter().cloned().collect(),
    };
    let mut client = ClusterDomainServiceClient::new(connection.channel().await?);
    let domains = client.list_all_domains(request).await?.into_inner();
    for failed in &domains.failed_hosts {
        eprintln!(
            "warning: host `{}` did not answer; its domains are not listed: {}",
            failed.host, failed.message
        );
    }
    if format == Format::Json {
        print_json(&domains);
        return Ok(());
    }
    // One host (the usual case) looks exactly as virsh's list; more get a Host column.
    let mut hosts: Vec<&str> = domains
        .domains
        .iter()
        .map(|d| d.host.as_str())
        .chain(domains.failed_hosts.iter().map(|f| f.host.as_str()))
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    let many_hosts = hosts.len() > 1;
    if options.name || options.uuid {
        for domain in &domains.domains {
            println!(
                "{}",
                if options.name {
                    &domain.name
                } else {
                    &domain.uuid
                }
            );
        }
        println!();
        return Ok(());
    }
    let rows: Vec<Vec<String>> = domains
        .domains
        .iter()
        .map(|domain| {
            let id = if domain.id < 0 {
                "-".to_string()
            } else {
                domain.id.to_string()
            };
            let row = vec![
                id,
                domain.name.clone(),
                state_name(domain.state).to_string(),
            ];
            if many_hosts {
                std::iter::once(domain.host.clone()).chain(row).collect()
            } else {
                row
            }
        })
        .collect();
    if many_hosts {
        print_table(&["Host", "Id", "Name", "State"], &rows);
    } else {
        print_table(&["Id", "Name", "State"], &rows);
    }
    Ok(())
}

async fn host_join_token(
    connection: &mut Connection,
    format: Format,
    ttl: u64,
    name: Option<String>,
) -> Result<(), Call> {
    let token = HostServiceClient::new(connection.channel().await?)
        .create_join_token(cluster::CreateJoinTokenRequest {
            ttl_s: ttl,
            host_name: name.unwrap_or_default(),
        })
        .await?
        .into_inner();
    match format {
        Format::Json => print_json(&token),
        Format::Table => println!("{}", token.token),
    }
    Ok(())
}

async fn host_join(
    connection: &mut Connection,
    format: Format,
    name: String,
    address: String,
    token: String,
) -> Result<(), Call> {
    let joined = HostServiceClient::new(connection.channel().await?)
        .join_host(cluster::JoinHostRequest {
            join_token: token,
            name,
            address,
            vireo_version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    match format {
        Format::Json => print_json(&joined),
        Format::Table => {
            let host = joined.host.unwrap_or_default();
            println!("Host {} joined ({})", host.name, host.address);
        }
    }
    Ok(())
}

async fn host_remove(connection: &mut Connection, name: String, force: bool) -> Result<(), Call> {
    HostServiceClient::new(connection.channel().await?)
        .remove_host(cluster::RemoveHostRequest {
            name: name.clone(),
            force,
        })
        .await?;
    println!("Host {name} removed");
    Ok(())
}

async fn whoami(connection: &mut Connection, format: Format) -> Result<(), Call> {
    use vireo_proto::cluster::v1::access_service_client::AccessServiceClient;
    let identity = AccessServiceClient::new(connection.channel().await?)
        .who_am_i(cluster::WhoAmIRequest {})
        .await?
        .into_inner();
    if format == Format::Json {
        print_json(&identity);
        return Ok(());
    }
    let role = match identity.role() {
        cluster::Role::Readonly => "readonly",
        cluster::Role::Operator => "operator",
        cluster::Role::Admin => "admin",
        cluster::Role::Unspecified => "none",
    };
    let method = match identity.auth_method() {
        cluster::AuthMethod::UnixSocket => "unix socket",
        cluster::AuthMethod::TlsClientCert => "TLS client certificate",
        cluster::AuthMethod::BearerToken => "bearer token",
        cluster::AuthMethod::Unspecified => "unknown",
    };
    print_fields(&[
        ("Subject", identity.subject.clone()),
        ("Role", role.to_string()),
        ("Authenticated by", method.to_string()),
        (
            "Read-only",
            if identity.readonly_connection {
                "yes"
            } else {
                "no"
            }
            .to_string(),
        ),
        ("Gateway host", identity.gateway_host.clone()),
    ]);
    Ok(())
}

async fn host_list(connection: &mut Connection, format: Format) -> Result<(), Call> {
    let hosts = HostServiceClient::new(connection.channel().await?)
        .list_hosts(cluster::ListHostsRequest::default())
        .await?
        .into_inner();
    if format == Format::Json {
        print_json(&hosts);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = hosts
        .hosts
        .iter()
        .map(|host| {
            let capacity = host.capacity.clone().unwrap_or_default();
            let up = host.state == cluster::HostState::Up as i32;
            let or_dash = |value: String| if up { value } else { "-".into() };
            vec![
                host.name.clone(),
                match host.state() {
                    cluster::HostState::Up => "up",
                    cluster::HostState::Down => "down",
                    cluster::HostState::Joining => "joining",
                    cluster::HostState::Unreachable => "unreachable",
                    cluster::HostState::Unspecified => "unknown",
                }
                .to_string(),
                or_dash(capacity.cpus.to_string()),
                or_dash(format!("{} MiB", capacity.memory_kib / 1024)),
                or_dash(format!("{} MiB", capacity.free_memory_kib / 1024)),
                or_dash(capacity.vcpus_in_use.to_string()),
                or_dash(capacity.running_domains.to_string()),
                or_dash(capacity.defined_domains.to_string()),
                host.state_reason.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "Name",
            "State",
            "CPUs",
            "Memory",
            "Free",
            "vCPUs used",
            "Running",
            "Defined",
            "Reason",
        ],
        &rows,
    );
    Ok(())
}
