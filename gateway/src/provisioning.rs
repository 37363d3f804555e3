//! Guest installation (virt-install): an InstallRequest becomes the domain's definitions, the
//! install phase's (booting its media, tree or network) and the installed guest's (booting its
//! disk). `install_flow.rs` places, creates, starts and follows them.

use std::path::Path;

use tonic::Status;
use vireo_proto::cluster::v1 as pb;
use vireo_proto::cluster::v1::install_request::InstallSource;
use vireo_proto::compute::v1 as compute;

/// Where an install tree keeps its installer's kernel and initrd.
pub struct TreeLayout {
    pub kernel: &'static str,
    pub initrd: &'static str,
    /// The kernel argument that tells this installer where a tree at a URL is (virt-install
    /// adds it): Fedora, RHEL and CentOS `inst.repo=`, SUSE `install=`.
    pub source_arg: Option<&'static str>,
}

/// The layouts virt-install knows, in the order it looks for them.
pub const TREE_LAYOUTS: &[TreeLayout] = &[
    TreeLayout {
        kernel: "images/pxeboot/vmlinuz",
        initrd: "images/pxeboot/initrd.img",
        source_arg: Some("inst.repo"),
    },
    TreeLayout {
        kernel: "install.amd/vmlinuz",
        initrd: "install.amd/initrd.gz",
        source_arg: None,
    },
    TreeLayout {
        kernel: "current/images/netboot/debian-installer/amd64/linux",
        initrd: "current/images/netboot/debian-installer/amd64/initrd.gz",
        source_arg: None,
    },
    TreeLayout {
        kernel: "casper/vmlinuz",
        initrd: "casper/initrd",
        source_arg: None,
    },
    TreeLayout {
        kernel: "isolinux/vmlinuz",
        initrd: "isolinux/initrd.img",
        source_arg: None,
    },
    TreeLayout {
        kernel: "boot/x86_64/loader/linux",
        initrd: "boot/x86_64/loader/initrd",
        source_arg: Some("install"),
    },
];

/// --os-variant: the memory (MiB) and vCPUs a guest gets when the request leaves them out.
const OS_VARIANTS: &[(&str, u64, u32)] = &[
    ("debian12", 1024, 1),
    ("debian11", 1024, 1),
    ("rhel6.0", 1024, 1),
    ("rhel7.0", 1536, 1),
    ("rhel8.0", 1536, 2),
    ("rhel9.0", 1536, 2),
    ("ubuntu22.04", 2048, 2),
    ("fedora39", 2048, 2),
    ("generic", 1024, 1),
];

/// The XML of the two phases; `install` is None when the guest boots the same way throughout
/// (--import, --boot kernel=).
pub struct Plan {
    pub install: Option<String>,
    pub installed: String,
    /// The domain's, the same in both.
    pub uuid: String,
    /// What placement weighs.
    pub needs: pb::PlacementRequirements,
}

/// Whether a disk asks for a new volume (pool=, or path= with size=).
pub fn is_new_volume(disk: &pb::InstallDisk) -> bool {
    !disk.pool.is_empty() || disk.size_gib != 0.0
}

fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}

fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

/// A host path an option names: absolute, without `..` (the gateway's working directory means
/// nothing to the host, and `..` hides where a path leads).
pub fn host_path<'a>(field: &str, path: &'a str) -> Result<&'a Path, Status> {
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(invalid(
            field,
            format!("`{}` is not an absolute path", path.display()),
        ));
    }
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(invalid(
            field,
            format!("`{}` must not contain `..`", path.display()),
        ));
    }
    Ok(path)
}

/// Whether --location names an ISO image on this machine (its tree is read by
/// `install_flow.rs`), not a directory.
pub fn is_iso_file(location: &str) -> bool {
    !is_url(location) && Path::new(location).is_file()
}

/// Whether --location names a tree at a URL (fetched by `install_flow.rs`), not a directory.
pub fn is_url(location: &str) -> bool {
    location.contains("://") || location.starts_with("nfs:")
}

/// A URL tree of a kind that is fetched: http, https, ftp, nfs:// or nfs:HOST:/PATH.
fn check_url(location: &str) -> Result<(), Status> {
    let fetched = ["http://", "https://", "ftp://", "nfs://"]
        .iter()
        .any(|scheme| location.starts_with(scheme))
        || location
            .strip_prefix("nfs:")
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(host, path)| !host.is_empty() && path.starts_with('/'));
    if fetched {
        Ok(())
    } else {
        Err(invalid(
            "location",
            format!(
                "`{location}`: trees are fetched over http://, https://, ftp:// or nfs:// (nfs:HOST:/PATH), or read from a directory"
            ),
        ))
    }
}

/// The refusal of a tree without an installer where trees keep one.
pub fn no_installer(location: &str) -> Status {
    invalid(
        "location",
        format!(
            "`{location}` has no installer kernel and initrd where install trees keep them ({})",
            TREE_LAYOUTS
                .iter()
                .map(|layout| layout.kernel)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

/// What the plan knows of the chosen host's files.
#[derive(Clone, Copy)]
pub struct HostFiles<'a> {
    /// The host is the gateway's own machine: paths are checked, and directory trees read, here.
    pub local: bool,
    /// Where a --location tree's installer is on the host (fetched from a URL, or a stand-in
    /// before the host is chosen); None: read the directory tree here.
    pub tree: Option<(&'a str, &'a str)>,
}

/// The installer's kernel and initrd of the tree at `location`.
fn tree_boot(location: &str, files: HostFiles<'_>) -> Result<(String, String), Status> {
    if is_url(location) {
        check_url(location)?;
    }
    if let Some((kernel, initrd)) = files.tree {
        return Ok((kernel.to_string(), initrd.to_string()));
    }
    if !files.local && !is_url(location) {
        return Err(invalid(
            "location",
            format!(
                "`{location}` is a directory or an image on the gateway's machine, not on the chosen host; serve the tree over http://, https://, ftp:// or nfs://"
            ),
        ));
    }
    if is_url(location) || is_iso_file(location) {
        return Err(Status::internal(
            "location: the tree at a URL or in an ISO was not read",
        ));
    }
    let root = host_path("location", location)?;
    if !root.is_dir() {
        return Err(invalid(
            "location",
            format!("`{location}` is not a directory or an ISO image on this host"),
        ));
    }
    TREE_LAYOUTS
        .iter()
        .map(|layout| (root.join(layout.kernel), root.join(layout.initrd)))
        .find(|(kernel, initrd)| kernel.is_file() && initrd.is_file())
        .map(|(kernel, initrd)| (kernel.display().to_string(), initrd.display().to_string()))
        .ok_or_else(|| no_installer(location))
}

/// A disk's bus: virtio for disks, sata for CD-ROMs unless bus= says otherwise.
fn bus_of(field: &str, disk: &pb::InstallDisk) -> Result<&'static str, Status> {
    let cdrom = disk.device() == compute::DiskDevice::Cdrom;
    Ok(match disk.bus() {
        compute::DiskBus::Unspecified if cdrom => "sata",
        compute::DiskBus::Unspecified | compute::DiskBus::Virtio => "virtio",
        compute::DiskBus::Sata => "sata",
        compute::DiskBus::Ide => "ide",
        compute::DiskBus::Scsi => "scsi",
        other => return Err(invalid(field, format!("bus {other:?} is not offered"))),
    })
}

/// The target name of the `slot`th disk with `prefix`: vda..vdz, vdaa.. as libvirt names them.
fn target_name(prefix: &str, slot: usize) -> String {
    let mut letters = Vec::new();
    let mut rest = slot;
    loop {
        letters.push(b'a' + u8::try_from(rest % 26).unwrap_or(0));
        if rest < 26 {
            break;
        }
        rest = rest / 26 - 1;
    }
    letters.reverse();
    format!("{prefix}{}", String::from_utf8_lossy(&letters))
}

/// The `<disk>` elements of `disks`, each bus counting its own targets.
fn disks_xml(
    disks: &[pb::InstallDisk],
    field_of: impl Fn(usize) -> String,
) -> Result<Vec<String>, Status> {
    let mut used = std::collections::BTreeMap::new();
    disks
        .iter()
        .enumerate()
        .map(|(index, disk)| {
            let field = field_of(index);
            let prefix = if bus_of(&field, disk)? == "virtio" {
                "vd"
            } else {
                "sd"
            };
            let slot = used.entry(prefix).or_insert(0);
            let dev = target_name(prefix, *slot);
            *slot += 1;
            disk_xml(&field, disk, &dev)
        })
        .collect()
}

fn disk_xml(field: &str, disk: &pb::InstallDisk, dev: &str) -> Result<String, Status> {
    let cdrom = disk.device() == compute::DiskDevice::Cdrom;
    let bus = bus_of(field, disk)?;
    if disk.path.is_empty() {
        if cdrom {
            // A drive without media, for media to be inserted later.
            return Ok(format!(
                "<disk type='file' device='cdrom'><target dev='{dev}' bus='{bus}'/><readonly/></disk>"
            ));
        }
        return Err(invalid(
            field,
            "path= of an image, or pool= and size= of a new one",
        ));
    }
    let format = match disk.format() {
        compute::DiskFormat::Qcow2 => "qcow2",
        _ if disk.path.ends_with(".qcow2") => "qcow2",
        _ => "raw",
    };
    // A device node (an LVM or disk pool's volume, a CD-ROM drive) is a block disk.
    let (kind, source) = if disk.path.starts_with("/dev/") {
        ("block", "dev")
    } else {
        ("file", "file")
    };
    Ok(format!(
        "<disk type='{kind}' device='{device}'><driver name='qemu' type='{format}'/><source {source}='{path}'/><target dev='{dev}' bus='{bus}'/>{readonly}</disk>",
        device = if cdrom { "cdrom" } else { "disk" },
        path = escape(&disk.path),
        readonly = if disk.readonly || cdrom {
            "<readonly/>"
        } else {
            ""
        },
    ))
}

fn interface_xml(index: usize, network: &pb::InstallNetwork) -> Result<String, Status> {
    let field = format!("networks[{index}]");
    let source = match &network.source {
        Some(pb::install_network::Source::Network(name)) if !name.is_empty() => {
            format!("type='network'><source network='{}'/>", escape(name))
        }
        Some(pb::install_network::Source::Bridge(name)) if !name.is_empty() => {
            format!("type='bridge'><source bridge='{}'/>", escape(name))
        }
        _ => return Err(invalid(&field, "network= or bridge= is required")),
    };
    let model = match network.model() {
        compute::InterfaceModel::Unspecified | compute::InterfaceModel::Virtio => "virtio",
        compute::InterfaceModel::E1000 => "e1000",
        compute::InterfaceModel::Rtl8139 => "rtl8139",
        other => return Err(invalid(&field, format!("model {other:?} is not offered"))),
    };
    // Both phases are one guest: the same address in each.
    let mac = if network.mac.is_empty() {
        vireo_conf::domain::random_mac()
    } else {
        network.mac.clone()
    };
    let mac = format!("<mac address='{}'/>", escape(&mac));
    Ok(format!(
        "<interface {source}{mac}<model type='{model}'/></interface>"
    ))
}

/// `<hostdev>` of a --host-device node device name (pci_DDDD_BB_SS_F).
fn hostdev_xml(index: usize, name: &str) -> Result<String, Status> {
    let parts: Vec<&str> = name.strip_prefix("pci_").unwrap_or("").split('_').collect();
    fn hex(text: &str, width: usize) -> Option<&str> {
        (text.len() == width && text.chars().all(|c| c.is_ascii_hexdigit())).then_some(text)
    }
    match parts[..] {
        [domain, bus, slot, function] => {
            match (hex(domain, 4), hex(bus, 2), hex(slot, 2), hex(function, 1)) {
                (Some(domain), Some(bus), Some(slot), Some(function)) => Ok(format!(
                    "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/></source></hostdev>"
                )),
                _ => Err(invalid(
                    &format!("host_devices[{index}]"),
                    format!("`{name}` is not a PCI node device name (pci_DDDD_BB_SS_F)"),
                )),
            }
        }
        _ => Err(invalid(
            &format!("host_devices[{index}]"),
            format!("`{name}` is not a PCI node device name (pci_DDDD_BB_SS_F)"),
        )),
    }
}

/// One phase's boot and lifecycle: `boot` is the OS element's content (kernel or boot order).
struct Phase<'a> {
    boot: &'a str,
    devices: &'a str,
    graphics: bool,
    /// The install phase ends when the guest reboots: it stops instead, and the next start
    /// boots the installed definition.
    ends_at_reboot: bool,
}

/// The domain XML for one phase.
fn domain_xml(
    request: &pb::InstallRequest,
    uuid: &str,
    memory_mib: u64,
    vcpus: u32,
    phase: &Phase<'_>,
) -> String {
    let cpu = match request.cpu_model.as_str() {
        "" => String::new(),
        "host-passthrough" | "host-model" => format!("<cpu mode='{}'/>", request.cpu_model),
        model => format!("<cpu mode='custom'><model>{}</model></cpu>", escape(model)),
    };
    format!(
        "<domain type='{virt_type}'><name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>{memory_mib}</memory><vcpu>{vcpus}</vcpu>{cpu}<os><type arch='x86_64'>hvm</type>{boot}</os><features><acpi/></features>{on_reboot}<devices>{devices}<serial type='pty'/><console type='pty'/>{graphics}</devices></domain>",
        virt_type = if request.virt_type.is_empty() {
            "kvm"
        } else {
            &request.virt_type
        },
        name = escape(&request.name),
        boot = phase.boot,
        devices = phase.devices,
        on_reboot = if phase.ends_at_reboot {
            "<on_reboot>destroy</on_reboot>"
        } else {
            ""
        },
        graphics = if phase.graphics {
            "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>"
        } else {
            ""
        },
    )
}

fn boot_order(order: &[compute::BootDevice]) -> String {
    order
        .iter()
        .filter_map(|device| match device {
            compute::BootDevice::Hd => Some("hd"),
            compute::BootDevice::Cdrom => Some("cdrom"),
            compute::BootDevice::Network => Some("network"),
            compute::BootDevice::Fd => Some("fd"),
            compute::BootDevice::Unspecified => None,
        })
        .map(|device| format!("<boot dev='{device}'/>"))
        .collect()
}

/// Checks the XML through the same parser `define` uses, and writes it as `dumpxml` would.
fn checked(xml: &str, engine: i32) -> Result<String, Status> {
    let mut def =
        vireo_conf::domain::parse(xml).map_err(|err| Status::invalid_argument(err.to_string()))?;
    def.engine = engine;
    vireo_conf::domain::fill_defaults(&mut def);
    vireo_conf::domain::validate(&def).map_err(|err| Status::invalid_argument(err.to_string()))?;
    vireo_conf::domain::format(&def, None).map_err(|err| Status::internal(err.to_string()))
}

/// The definitions an install request asks for, or the first thing wrong with it, named.
pub fn plan(request: &pb::InstallRequest, files: HostFiles<'_>) -> Result<Plan, Status> {
    vireo_conf::domain::check_name(&request.name, "name")
        .map_err(|err| Status::invalid_argument(err.to_string()))?;
    if !matches!(request.virt_type.as_str(), "" | "kvm" | "qemu") {
        return Err(invalid(
            "virt_type",
            format!("`{}`: kvm or qemu", request.virt_type),
        ));
    }
    let variant = if request.os_variant.is_empty() {
        None
    } else {
        Some(
            OS_VARIANTS
                .iter()
                .find(|(name, _, _)| *name == request.os_variant)
                .ok_or_else(|| {
                    invalid(
                        "os_variant",
                        format!(
                            "`{}` is not known; known: {}",
                            request.os_variant,
                            OS_VARIANTS
                                .iter()
                                .map(|(name, _, _)| *name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?,
        )
    };
    let memory_mib = match (request.memory_mib, variant) {
        (0, Some((_, memory, _))) => *memory,
        (0, None) => {
            return Err(invalid(
                "memory_mib",
                "required (--memory) without --os-variant",
            ));
        }
        (memory, _) => memory,
    };
    let vcpus = match (request.vcpus, variant) {
        (0, Some((_, _, vcpus))) => *vcpus,
        (0, None) => 1,
        (vcpus, _) => vcpus,
    };
    let field_of = |index: usize| {
        if index < request.disks.len() {
            format!("disks[{index}]")
        } else {
            "cdrom".to_string()
        }
    };
    let disks = disks_xml(&request.disks, field_of)?;
    // The installed guest's disks, when they are not `disks`.
    let mut installed_disks = Vec::new();
    let host_devices = request
        .host_devices
        .iter()
        .enumerate()
        .map(|(index, name)| hostdev_xml(index, name))
        .collect::<Result<Vec<_>, _>>()?;
    let mut interfaces = Vec::new();
    if !request.no_networks {
        let default_network = [pb::InstallNetwork {
            source: Some(pb::install_network::Source::Network("default".into())),
            ..Default::default()
        }];
        let networks = if request.networks.is_empty() {
            &default_network[..]
        } else {
            &request.networks[..]
        };
        for (index, network) in networks.iter().enumerate() {
            interfaces.push(interface_xml(index, network)?);
        }
    }
    let installed_order = if request.boot_order.is_empty() {
        boot_order(&[compute::BootDevice::Hd])
    } else {
        boot_order(&request.boot_order().collect::<Vec<_>>())
    };
    let kernel_boot = |kernel: &str, initrd: &str, args: &str| {
        format!(
            "<kernel>{}</kernel>{}<cmdline>{}</cmdline>",
            escape(kernel),
            if initrd.is_empty() {
                String::new()
            } else {
                format!("<initrd>{}</initrd>", escape(initrd))
            },
            escape(args)
        )
    };
    let graphics_for = |direct_kernel: bool| match request.graphics() {
        pb::InstallGraphics::None => false,
        pb::InstallGraphics::Vnc => true,
        pb::InstallGraphics::Unspecified => !direct_kernel,
    };
    let first_disk_is_media = |source: &Option<InstallSource>| {
        matches!(source, Some(InstallSource::Import(true))) && request.disks.is_empty()
    };
    if first_disk_is_media(&request.install_source) {
        return Err(invalid("disks", "--import needs a --disk to boot"));
    }
    // The disks with an ISO in a CD-ROM drive, and with the drive left empty, as virt-install
    // leaves it in the installed guest.
    let media_disks = |iso: &str| -> Result<(Vec<String>, Vec<String>), Status> {
        let mut with_media = request.disks.clone();
        with_media.push(pb::InstallDisk {
            path: iso.to_string(),
            device: compute::DiskDevice::Cdrom as i32,
            ..Default::default()
        });
        let mut emptied = with_media.clone();
        if let Some(drive) = emptied.last_mut() {
            drive.path.clear();
        }
        Ok((
            disks_xml(&with_media, field_of)?,
            disks_xml(&emptied, field_of)?,
        ))
    };
    // Without a disk, the installed guest boots what the install phase booted (a live CD, a
    // network-booted guest), as virt-install does.
    let diskless = request.disks.is_empty() && request.boot_order.is_empty();
    let (install_boot, install_disks, installed_boot, direct_kernel) = match &request.install_source
    {
        Some(InstallSource::Cdrom(iso)) => {
            if files.local && !host_path("cdrom", iso)?.exists() {
                return Err(invalid(
                    "cdrom",
                    format!("`{iso}` does not exist on this host"),
                ));
            }
            let (with_media, emptied) = media_disks(iso)?;
            let media_boot = boot_order(&[compute::BootDevice::Cdrom, compute::BootDevice::Hd]);
            if diskless {
                (
                    Some(media_boot.clone()),
                    with_media.clone(),
                    media_boot,
                    false,
                )
            } else {
                installed_disks = emptied;
                (Some(media_boot), with_media, installed_order, false)
            }
        }
        Some(InstallSource::Location(location)) => {
            let (kernel, initrd) = tree_boot(location, files)?;
            let boot = Some(kernel_boot(&kernel, &initrd, &request.extra_args));
            if is_iso_file(location) {
                // The installer finds the rest of itself on the ISO, as virt-install gives it.
                let (with_media, emptied) = media_disks(location)?;
                installed_disks = emptied;
                (boot, with_media, installed_order, false)
            } else {
                (boot, disks.clone(), installed_order, false)
            }
        }
        Some(InstallSource::Pxe(true)) => {
            let network_boot = boot_order(&[compute::BootDevice::Network, compute::BootDevice::Hd]);
            let installed_boot = if diskless {
                network_boot.clone()
            } else {
                installed_order
            };
            (Some(network_boot), disks.clone(), installed_boot, false)
        }
        Some(InstallSource::Import(true)) => (None, Vec::new(), installed_order, false),
        Some(InstallSource::KernelBoot(boot)) => {
            if boot.kernel.is_empty() {
                return Err(invalid("kernel_boot.kernel", "required"));
            }
            (
                None,
                Vec::new(),
                kernel_boot(&boot.kernel, &boot.initrd, &boot.kernel_args),
                true,
            )
        }
        _ => {
            return Err(invalid(
                "install_source",
                "one of --cdrom, --location, --pxe, --import or --boot kernel= is required",
            ));
        }
    };
    if !request.extra_args.is_empty()
        && !matches!(request.install_source, Some(InstallSource::Location(_)))
    {
        return Err(invalid("extra_args", "--extra-args goes with --location"));
    }
    if install_boot.is_some() && request.engine() == compute::Engine::Vmm {
        return Err(invalid(
            "engine",
            "vmm boots a kernel directly, and this guest boots its disk once installed: install it on qemu (--cdrom, --location and --pxe), or use --import with --boot kernel=",
        ));
    }
    let devices = |disks: &[String]| {
        format!(
            "{}{}{}",
            disks.join(""),
            host_devices.join(""),
            interfaces.join("")
        )
    };
    // One domain through both phases.
    let uuid = vireo_conf::domain::random_uuid();
    let phase_xml = |phase: &Phase<'_>| {
        checked(
            &domain_xml(request, &uuid, memory_mib, vcpus, phase),
            request.engine,
        )
    };
    let install = match install_boot {
        Some(boot) => Some(phase_xml(&Phase {
            boot: &boot,
            devices: &devices(&install_disks),
            graphics: graphics_for(false),
            ends_at_reboot: true,
        })?),
        None => None,
    };
    // A live CD (no disk) keeps its media.
    let keeps_media = diskless && matches!(request.install_source, Some(InstallSource::Cdrom(_)));
    let installed = phase_xml(&Phase {
        boot: &installed_boot,
        devices: &devices(if keeps_media {
            &install_disks
        } else if installed_disks.is_empty() {
            &disks
        } else {
            &installed_disks
        }),
        graphics: graphics_for(direct_kernel),
        ends_at_reboot: false,
    })?;
    Ok(Plan {
        install,
        installed,
        uuid,
        needs: pb::PlacementRequirements {
            memory_kib: memory_mib.saturating_mul(1024),
            vcpus,
            engine: request.engine,
            exclude_hosts: Vec::new(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: HostFiles<'static> = HostFiles {
        local: true,
        tree: None,
    };

    fn base(source: InstallSource) -> pb::InstallRequest {
        pb::InstallRequest {
            name: "guest".into(),
            memory_mib: 256,
            no_networks: true,
            install_source: Some(source),
            ..Default::default()
        }
    }

    #[test]
    fn an_install_tree_boots_its_installer_then_the_disk() {
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tree.path().join("images/pxeboot")).unwrap();
        for file in ["images/pxeboot/vmlinuz", "images/pxeboot/initrd.img"] {
            std::fs::write(tree.path().join(file), b"x").unwrap();
        }
        let mut request = base(InstallSource::Location(tree.path().display().to_string()));
        request.extra_args = "console=ttyS0 ks=http://h/ks.cfg".into();
        request.disks.push(pb::InstallDisk {
            path: "/var/lib/vireo/images/guest.qcow2".into(),
            ..Default::default()
        });
        let plan = plan(&request, HERE).unwrap();
        let install = plan.install.unwrap();
        assert!(
            install.contains("images/pxeboot/vmlinuz</kernel>"),
            "{install}"
        );
        assert!(install.contains("<cmdline>console=ttyS0 ks=http://h/ks.cfg</cmdline>"));
        // The install phase ends when the installer reboots; the installed guest restarts.
        assert!(
            install.contains("<on_reboot>destroy</on_reboot>"),
            "{install}"
        );
        assert!(plan.installed.contains("<on_reboot>restart</on_reboot>"));
        assert!(!plan.installed.contains("<kernel>"), "{}", plan.installed);
        assert!(plan.installed.contains("<boot dev='hd'/>"));
        assert!(plan.installed.contains("type='qcow2'"));
        let uuid = |xml: &str| xml.split("<uuid>").nth(1).unwrap()[..36].to_string();
        assert_eq!(uuid(&install), uuid(&plan.installed), "one domain");

        request.install_source = Some(InstallSource::Location("/srv/../etc".into()));
        assert!(plan_err(&request).contains("location: `/srv/../etc` must not contain `..`"));
        request.install_source = Some(InstallSource::Location("trees/debian".into()));
        assert!(plan_err(&request).contains("location: `trees/debian` is not an absolute path"));
        request.install_source = Some(InstallSource::Location("/nonexistent".into()));
        assert!(plan_err(&request).contains("location: `/nonexistent` is not a directory"));
        let empty = tempfile::tempdir().unwrap();
        request.install_source = Some(InstallSource::Location(empty.path().display().to_string()));
        assert!(plan_err(&request).contains("no installer kernel"));
    }

    fn plan_err(request: &pb::InstallRequest) -> String {
        match plan(request, HERE) {
            Ok(_) => panic!("planned"),
            Err(status) => status.message().to_string(),
        }
    }

    #[test]
    fn disks_are_named_per_bus_past_z_and_diskless_guests_keep_their_boot() {
        assert_eq!(target_name("vd", 0), "vda");
        assert_eq!(target_name("vd", 25), "vdz");
        assert_eq!(target_name("vd", 26), "vdaa");
        assert_eq!(target_name("sd", 27), "sdab");
        let iso = tempfile::NamedTempFile::new().unwrap();
        let mut request = base(InstallSource::Cdrom(iso.path().display().to_string()));
        request.disks = (0..27)
            .map(|n| pb::InstallDisk {
                path: format!("/images/{n}.img"),
                ..Default::default()
            })
            .collect();
        let phases = plan(&request, HERE).unwrap();
        let install = phases.install.unwrap();
        assert!(
            install.contains("<target dev='vdaa' bus='virtio'/>"),
            "{install}"
        );
        assert!(
            install.contains("<target dev='sda' bus='sata'/>"),
            "the media is the first SATA disk"
        );
        request.disks[0].path = "/dev/vg0/guest".into();
        let block = plan(&request, HERE).unwrap().installed;
        assert!(
            block.contains("<disk type='block' device='disk'>")
                && block.contains("<source dev='/dev/vg0/guest'/>"),
            "{block}"
        );

        // A live CD, and a network-booted guest without a disk, boot the same way afterwards.
        request.disks.clear();
        let live = plan(&request, HERE).unwrap();
        assert!(
            live.installed.contains("device='cdrom'")
                && live.installed.contains("<boot dev='cdrom'/>")
        );
        let mut pxe = base(InstallSource::Pxe(true));
        pxe.no_networks = false;
        assert!(
            plan(&pxe, HERE)
                .unwrap()
                .installed
                .contains("<boot dev='network'/>")
        );

        // vmm cannot boot the disk the guest is installed to; other URL schemes are not fetched.
        pxe.engine = compute::Engine::Vmm as i32;
        assert!(plan_err(&pxe).contains("engine: vmm boots a kernel directly"));
        let file_tree = base(InstallSource::Location("file:///srv/tree".into()));
        assert!(plan_err(&file_tree).contains("trees are fetched over http://"));
    }

    #[test]
    fn a_cdrom_install_boots_the_media_then_leaves_it_out() {
        let iso = tempfile::NamedTempFile::new().unwrap();
        let mut request = base(InstallSource::Cdrom(iso.path().display().to_string()));
        request.disks.push(pb::InstallDisk {
            path: "/images/disk.img".into(),
            ..Default::default()
        });
        let phases = plan(&request, HERE).unwrap();
        let install = phases.install.unwrap();
        assert!(install.contains("device='cdrom'") && install.contains("<boot dev='cdrom'/>"));
        assert!(
            phases.installed.contains("device='cdrom'")
                && phases.installed.contains("<target dev='sda' bus='sata'/>"),
            "an empty drive stays: {}",
            phases.installed
        );
        assert!(
            !phases.installed.contains(&iso.path().display().to_string()),
            "{}",
            phases.installed
        );
        assert!(!phases.installed.contains("<boot dev='cdrom'/>"));

        // Another host's files are not looked for here: its own start reports a missing one.
        let elsewhere = HostFiles {
            local: false,
            tree: None,
        };
        request.install_source = Some(InstallSource::Cdrom("/only/there.iso".into()));
        assert!(plan(&request, elsewhere).is_ok());
        request.install_source = Some(InstallSource::Location("/srv/tree".into()));
        let refused = plan(&request, elsewhere).err().unwrap();
        assert!(
            refused.message().contains("serve the tree over http://"),
            "{refused:?}"
        );
    }

    #[test]
    fn single_phase_sources_and_refusals_name_the_field() {
        let kernel = base(InstallSource::KernelBoot(pb::KernelBoot {
            kernel: "/boot/vmlinuz".into(),
            initrd: String::new(),
            kernel_args: "console=ttyS0".into(),
        }));
        let plan_k = plan(&kernel, HERE).unwrap();
        assert!(plan_k.install.is_none());
        assert!(
            !plan_k.installed.contains("<graphics"),
            "no display for a kernel boot"
        );
        let mut import = base(InstallSource::Import(true));
        assert!(plan_err(&import).contains("--import needs a --disk"));
        import.disks.push(pb::InstallDisk {
            path: "/images/root.img".into(),
            ..Default::default()
        });
        assert!(plan(&import, HERE).unwrap().install.is_none());
        let mut pxe = base(InstallSource::Pxe(true));
        pxe.no_networks = false;
        let plan_p = plan(&pxe, HERE).unwrap();
        assert!(plan_p.install.unwrap().contains("<boot dev='network'/>"));
        assert!(plan_p.installed.contains("<source network='default'/>"));

        let mut wrong = base(InstallSource::Pxe(true));
        wrong.memory_mib = 0;
        assert!(plan_err(&wrong).contains("memory_mib: required"));
        wrong.os_variant = "beos5".into();
        assert!(plan_err(&wrong).contains("os_variant: `beos5` is not known; known: debian12"));
        wrong.os_variant = "debian12".into();
        assert!(
            plan(&wrong, HERE)
                .unwrap()
                .installed
                .contains("<memory unit='KiB'>1048576</memory>")
        );
        wrong.extra_args = "x".into();
        assert!(plan_err(&wrong).contains("extra_args"));
        let mut devices = base(InstallSource::Pxe(true));
        devices.host_devices = vec!["pci_0000_03_00_1".into()];
        devices.virt_type = "qemu".into();
        let plan_d = plan(&devices, HERE).unwrap();
        for xml in [plan_d.install.unwrap(), plan_d.installed] {
            assert!(xml.contains("<domain type='qemu'>"), "{xml}");
            assert!(
                xml.contains("bus='0x03' slot='0x00' function='0x1'"),
                "{xml}"
            );
        }
        devices.host_devices = vec!["usb_1_2".into()];
        assert!(plan_err(&devices).contains("host_devices[0]: `usb_1_2` is not a PCI node device"));
        devices.host_devices.clear();
        devices.virt_type = "xen".into();
        assert!(plan_err(&devices).contains("virt_type: `xen`"));
        let mut named = base(InstallSource::Pxe(true));
        named.name = "../etc".into();
        assert!(plan_err(&named).contains("name"));
        let mut none = base(InstallSource::Pxe(true));
        none.install_source = None;
        assert!(plan_err(&none).contains("install_source"));
    }
}
