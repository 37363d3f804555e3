//! `vireo install`: virt-install's options, turned into the gateway's Install call.

use clap::Args;
use tonic::Status;
use vireo_proto::cluster::v1 as cluster;
use vireo_proto::cluster::v1::provisioning_service_client::ProvisioningServiceClient;
use vireo_proto::common::v1::{ObjectRef, object_ref::Key};
use vireo_proto::compute::v1 as compute;
use vireo_proto::compute::v1::domain_service_client::DomainServiceClient;

use crate::connection::Connection;

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The guest's name
    #[arg(long, short = 'n')]
    name: String,
    /// Memory, MiB
    #[arg(long, alias = "ram")]
    memory: Option<u64>,
    #[arg(long)]
    vcpus: Option<u32>,
    /// host-passthrough, host-model or a CPU model name
    #[arg(long)]
    cpu: Option<String>,
    /// path=FILE or pool=POOL, [size=GiB][,sparse=yes|no][,device=disk|cdrom]
    /// [,bus=virtio|sata|ide|scsi][,format=raw|qcow2][,readonly]
    #[arg(long, value_name = "OPTIONS")]
    disk: Vec<String>,
    /// network=NAME|bridge=NAME[,mac=MAC][,model=virtio|e1000|rtl8139]
    #[arg(long, short = 'w', value_name = "OPTIONS")]
    network: Vec<String>,
    /// No network interface
    #[arg(long)]
    nonetworks: bool,
    /// Install from this ISO
    #[arg(long, value_name = "ISO")]
    cdrom: Option<String>,
    /// Install from this tree (a directory with the installer's kernel and initrd)
    #[arg(long, short = 'l', value_name = "TREE")]
    location: Option<String>,
    /// Kernel command line for --location
    #[arg(long, short = 'x', value_name = "ARGS")]
    extra_args: Option<String>,
    /// Boot from the network to install
    #[arg(long)]
    pxe: bool,
    /// Boot the first disk as it is
    #[arg(long)]
    import: bool,
    /// kernel=PATH,initrd=PATH,kernel_args=TEXT, or a boot order (hd,cdrom,network)
    #[arg(long, value_name = "OPTIONS")]
    boot: Option<String>,
    /// debian12, rhel6.0, ...: default memory and vCPUs
    #[arg(long, alias = "os-type")]
    os_variant: Option<String>,
    /// vnc or none
    #[arg(long, value_parser = ["vnc", "none"])]
    graphics: Option<String>,
    /// Same as --graphics none
    #[arg(long)]
    nographics: bool,
    /// Start the guest when the host starts
    #[arg(long)]
    autostart: bool,
    /// Print the domain XML and create nothing: both steps (install, then installed), or
    /// only step 1 or 2
    #[arg(long, value_name = "STEP", num_args = 0..=1, default_missing_value = "all",
          value_parser = ["all", "1", "2"])]
    print_xml: Option<String>,
    /// Check everything and create nothing
    #[arg(long)]
    dry_run: bool,
    /// Do not attach the console
    #[arg(long)]
    noautoconsole: bool,
    /// pty[,target_type=serial]: the guest's console (a serial port on a pty; always present)
    #[arg(long, value_name = "OPTIONS")]
    console: Option<String>,
    /// Follow the install phase until it ends, then start the installed guest; MIN minutes
    /// at most (a negative number: no limit)
    #[arg(long, value_name = "MIN", num_args = 0..=1, default_missing_value = "-1",
          allow_negative_numbers = true)]
    wait: Option<i32>,
    /// kvm, or qemu for software emulation (TCG)
    #[arg(long, value_parser = ["kvm", "qemu"])]
    virt_type: Option<String>,
    /// The engine: vmm or qemu (chosen from the XML when left out)
    #[arg(long, value_parser = ["vmm", "qemu"])]
    engine: Option<String>,
    /// A PCI node device to assign (pci_DDDD_BB_SS_F, see nodedev-list)
    #[arg(long, value_name = "NODEDEV")]
    host_device: Vec<String>,
}

fn invalid(option: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("--{option}: {message}"))
}

/// `key=value,flag,...` of one option.
/// A value with commas goes in double quotes (`kernel_args="console=ttyS0,115200n8"`).
fn pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut items = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (at, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
        .into_iter()
        .filter(|item| !item.is_empty())
        .map(|item| item.split_once('=').unwrap_or((item, "")))
        .map(|(key, value)| (key, value.trim_matches('"')))
}

fn disk(text: &str) -> Result<cluster::InstallDisk, Status> {
    let mut disk = cluster::InstallDisk::default();
    for (key, value) in pairs(text) {
        match key {
            "path" => disk.path = value.to_string(),
            "pool" => disk.pool = value.to_string(),
            "size" => {
                disk.size_gib = value.parse().map_err(|_| {
                    invalid("disk", format!("size=`{value}` is not a number of GiB"))
                })?
            }
            "device" => {
                disk.device = match value {
                    "disk" => compute::DiskDevice::Disk,
                    "cdrom" => compute::DiskDevice::Cdrom,
                    _ => return Err(invalid("disk", format!("device=`{value}`: disk or cdrom"))),
                } as i32
            }
            "bus" => {
                disk.bus = match value {
                    "virtio" => compute::DiskBus::Virtio,
                    "sata" => compute::DiskBus::Sata,
                    "ide" => compute::DiskBus::Ide,
                    "scsi" => compute::DiskBus::Scsi,
                    _ => return Err(invalid("disk", format!("bus=`{value}`"))),
                } as i32
            }
            "format" => {
                disk.format = match value {
                    "raw" => compute::DiskFormat::Raw,
                    "qcow2" => compute::DiskFormat::Qcow2,
                    _ => return Err(invalid("disk", format!("format=`{value}`: raw or qcow2"))),
                } as i32
            }
            "readonly" | "ro" => disk.readonly = true,
            "sparse" => {
                disk.sparse = Some(match value {
                    "" | "yes" | "true" | "on" => true,
                    "no" | "false" | "off" => false,
                    _ => return Err(invalid("disk", format!("sparse=`{value}`: yes or no"))),
                })
            }
            // A bare path, as virt-install takes it.
            path if value.is_empty() && path.contains('/') => disk.path = path.to_string(),
            other => return Err(invalid("disk", format!("unknown option `{other}`"))),
        }
    }
    Ok(disk)
}

fn network(text: &str) -> Result<cluster::InstallNetwork, Status> {
    let mut network = cluster::InstallNetwork::default();
    for (key, value) in pairs(text) {
        match key {
            "network" => {
                network.source = Some(cluster::install_network::Source::Network(value.into()))
            }
            "bridge" => {
                network.source = Some(cluster::install_network::Source::Bridge(value.into()))
            }
            "mac" => network.mac = value.to_string(),
            "model" => {
                network.model = match value {
                    "virtio" => compute::InterfaceModel::Virtio,
                    "e1000" => compute::InterfaceModel::E1000,
                    "rtl8139" => compute::InterfaceModel::Rtl8139,
                    _ => return Err(invalid("network", format!("model=`{value}`"))),
                } as i32
            }
            other => return Err(invalid("network", format!("unknown option `{other}`"))),
        }
    }
    Ok(network)
}

/// The request these options ask for.
fn request(args: InstallArgs, host: String) -> Result<cluster::InstallRequest, Status> {
    use cluster::install_request::InstallSource;
    let mut kernel_boot = None;
    let mut boot_order = Vec::new();
    if let Some(boot) = &args.boot {
        for (key, value) in pairs(boot) {
            let kernel = kernel_boot.get_or_insert_with(cluster::KernelBoot::default);
            match key {
                "kernel" => kernel.kernel = value.to_string(),
                "initrd" => kernel.initrd = value.to_string(),
                "kernel_args" => kernel.kernel_args = value.to_string(),
                order => {
                    boot_order.push(match order {
                        "hd" => compute::BootDevice::Hd,
                        "cdrom" => compute::BootDevice::Cdrom,
                        "network" => compute::BootDevice::Network,
                        "fd" => compute::BootDevice::Fd,
                        _ => return Err(invalid("boot", format!("unknown option `{order}`"))),
                    } as i32);
                }
            }
        }
        if kernel_boot.as_ref().is_some_and(|k| k.kernel.is_empty()) {
            kernel_boot = None;
        }
    }
    // --import --boot kernel=... boots the imported disks with that kernel: one source.
    let import = args.import && kernel_boot.is_none();
    let sources = [
        args.cdrom.clone().map(InstallSource::Cdrom),
        args.location.clone().map(InstallSource::Location),
        args.pxe.then_some(InstallSource::Pxe(true)),
        import.then_some(InstallSource::Import(true)),
        kernel_boot.map(InstallSource::KernelBoot),
    ];
    let mut given = sources.into_iter().flatten();
    let install_source = given.next();
    if given.next().is_some() {
        return Err(Status::invalid_argument(
            "give one of --cdrom, --location, --pxe, --import or --boot kernel=",
        ));
    }
    if let Some(console) = &args.console {
        for (key, value) in pairs(console) {
            match (key, value) {
                ("pty", "") | ("target_type", "serial") => {}
                _ => {
                    return Err(invalid(
                        "console",
                        format!(
                            "`{console}`: the console is a serial port on a pty (pty,target_type=serial)"
                        ),
                    ));
                }
            }
        }
    }
    let graphics = match (args.nographics, args.graphics.as_deref()) {
        (true, _) | (_, Some("none")) => cluster::InstallGraphics::None,
        (_, Some("vnc")) => cluster::InstallGraphics::Vnc,
        _ => cluster::InstallGraphics::Unspecified,
    };
    Ok(cluster::InstallRequest {
        name: args.name,
        memory_mib: args.memory.unwrap_or(0),
        vcpus: args.vcpus.unwrap_or(0),
        cpu_model: args.cpu.unwrap_or_default(),
        disks: args
            .disk
            .iter()
            .filter(|text| *text != "none")
            .map(|text| disk(text))
            .collect::<Result<_, _>>()?,
        networks: args
            .network
            .iter()
            .filter(|text| *text != "none")
            .map(|text| network(text))
            .collect::<Result<_, _>>()?,
        no_networks: args.nonetworks || args.network.iter().any(|text| text == "none"),
        install_source,
        extra_args: args.extra_args.unwrap_or_default(),
        os_variant: args.os_variant.unwrap_or_default(),
        graphics: graphics as i32,
        boot_order,
        autostart: args.autostart,
        print_xml: args.print_xml.is_some(),
        dry_run: args.dry_run,
        wait_minutes: args.wait,
        virt_type: args.virt_type.unwrap_or_default(),
        engine: match args.engine.as_deref() {
            Some("vmm") => compute::Engine::Vmm,
            Some("qemu") => compute::Engine::Qemu,
            _ => compute::Engine::Unspecified,
        } as i32,
        host_devices: args.host_device,
        host,
    })
}

pub async fn run(
    connection: &mut Connection,
    args: InstallArgs,
) -> Result<(), crate::commands::Call> {
    let step = args.print_xml.clone();
    let console = !args.noautoconsole;
    // With --wait the gateway follows the install phase and restarts the guest; the console
    // shows it meanwhile.
    let followed = args.wait.is_some_and(|minutes| minutes != 0);
    let request = request(args, connection.host.clone().unwrap_or_default())?;
    let (name, printing) = (request.name.clone(), request.print_xml || request.dry_run);
    if !printing {
        println!("Starting install...");
    }
    let mut xmls = Vec::new();
    let mut result = None;
    let mut updates = ProvisioningServiceClient::new(connection.channel().await?)
        .install(request)
        .await?
        .into_inner();
    while let Some(update) = updates.message().await? {
        match update.update {
            Some(cluster::install_update::Update::Xml(xml)) => xmls.push(xml),
            Some(cluster::install_update::Update::Host(host)) => on_host(connection, host),
            Some(cluster::install_update::Update::Progress(progress)) => {
                println!("{}", progress.message);
                if console && followed && progress.phase == "start" && !printing {
                    // Ends when the install phase does (or the user leaves); the stream goes on.
                    let _ = crate::domain::run_console(connection, &name, None, false).await;
                }
            }
            Some(cluster::install_update::Update::Done(done)) => result = Some(done),
            None => {}
        }
    }
    let Some(result) = result else {
        return Err(Status::unavailable("the install ended without a result").into());
    };
    // Step 1 is the install phase's XML, step 2 the installed guest's; a guest that boots the
    // same way throughout has only one, step 1.
    let chosen: Vec<&String> = match step.as_deref() {
        Some("1") => xmls.first().into_iter().collect(),
        Some("2") if xmls.len() < 2 => {
            return Err(Status::invalid_argument(
                "--print-xml 2: this install boots one way throughout; its XML is step 1",
            )
            .into());
        }
        Some("2") => xmls.last().into_iter().collect(),
        _ => xmls.iter().collect(),
    };
    for xml in chosen {
        print!("{xml}");
    }
    if printing {
        return Ok(());
    }
    on_host(connection, result.host.clone());
    let running = result
        .domain
        .as_ref()
        .is_some_and(|d| d.state() == compute::DomainState::Running);
    if followed && console && running {
        return crate::domain::run_console(connection, &name, None, false).await;
    }
    if !console || followed {
        if result.installing {
            println!(
                "Domain installation still in progress. `vireo console {name}` follows it; once the guest powers off, `vireo start {name}` boots the installed guest."
            );
        } else {
            println!("Domain creation completed.");
        }
        return Ok(());
    }
    let attached = crate::domain::run_console(connection, &name, None, false).await;
    if !result.installing {
        return attached;
    }
    restart_installed(connection, &name, attached).await
}

/// Later calls go to the host the guest was placed on.
fn on_host(connection: &mut Connection, host: String) {
    if connection.host.as_deref() != Some(host.as_str()) {
        let (uri, readonly) = (connection.uri.clone(), connection.readonly);
        *connection = Connection::new(&uri, readonly, Some(host));
    }
}

/// After the console of an install phase closes (`attached`: how): a guest that has stopped
/// is started again, now from its installed definition, as virt-install does.
async fn restart_installed(
    connection: &mut Connection,
    name: &str,
    attached: Result<(), crate::commands::Call>,
) -> Result<(), crate::commands::Call> {
    let mut domains = DomainServiceClient::new(connection.channel().await?);
    let domain = Some(ObjectRef {
        key: Some(Key::Name(name.to_string())),
    });
    let state = domains
        .get_domain_state(compute::GetDomainStateRequest {
            domain: domain.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    if state.state() != compute::DomainState::Shutoff {
        // The console ended while the guest runs: left, or taken over.
        attached?;
        println!("Domain installation still in progress.");
        return Ok(());
    }
    if state.reason() != compute::DomainStateReason::ShutoffShutdown {
        println!("The install phase was stopped; the installed guest is not started.");
        return Ok(());
    }
    println!("Domain has shut down. Restarting the installed guest.");
    let mut started = domains
        .start_domain(compute::StartDomainRequest {
            domain,
            ..Default::default()
        })
        .await?
        .into_inner();
    while started.message().await?.is_some() {}
    println!("Domain creation completed.");
    crate::domain::run_console(connection, name, None, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virt_install_option_lists() {
        let parsed = disk("path=/var/lib/a.qcow2,bus=sata,readonly").unwrap();
        assert_eq!(parsed.path, "/var/lib/a.qcow2");
        assert_eq!(parsed.bus(), compute::DiskBus::Sata);
        assert!(parsed.readonly);
        assert_eq!(disk("/images/b.img").unwrap().path, "/images/b.img");
        assert!(
            disk("size=ten")
                .unwrap_err()
                .message()
                .contains("size=`ten`")
        );
        let quoted: Vec<_> =
            pairs("kernel=/k,kernel_args=\"console=ttyS0,115200n8 quiet\",initrd=/i").collect();
        assert_eq!(
            quoted,
            [
                ("kernel", "/k"),
                ("kernel_args", "console=ttyS0,115200n8 quiet"),
                ("initrd", "/i")
            ]
        );
        let nic = network("bridge=br0,mac=52:54:00:00:00:01").unwrap();
        assert_eq!(
            nic.source,
            Some(cluster::install_network::Source::Bridge("br0".into()))
        );
        assert!(
            network("color=red")
                .unwrap_err()
                .message()
                .contains("color")
        );
    }

    #[test]
    fn import_with_a_kernel_boots_the_disks_with_it() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            install: InstallArgs,
        }
        let args = Cli::parse_from([
            "vireo",
            "--name",
            "g",
            "--import",
            "--disk",
            "/images/root.img",
            "--boot",
            "kernel=/k,initrd=/i,kernel_args=root=/dev/vda",
            "--wait",
            "--virt-type",
            "qemu",
        ])
        .install;
        let request = request(args, String::new()).unwrap();
        let Some(cluster::install_request::InstallSource::KernelBoot(boot)) =
            request.install_source
        else {
            panic!("{:?}", request.install_source);
        };
        assert_eq!(boot.kernel_args, "root=/dev/vda");
        assert_eq!(request.disks.len(), 1);
        assert_eq!(
            request.wait_minutes,
            Some(-1),
            "--wait alone waits without limit"
        );
        assert_eq!(request.virt_type, "qemu");
    }
}
