//! A sysfs tree for svc-nodedev's tests, laid out as the kernel lays it out, with a small
//! "kernel" thread that gives its control files their effect: a write to a driver's `unbind`
//! releases the device, and a write to `bus/pci/drivers_probe` binds the driver that the
//! device's `driver_override` names, or its host driver when the override is empty, a PF's
//! `sriov_numvfs` makes (or removes) its VFs, each in an IOMMU group of its own, and an FC
//! HBA's `vport_create` (`wwpn:wwnn`) makes an NPIV vport with a SCSI host of its own, which
//! `vport_delete` removes. SCSI hosts and USB devices can be added too. Only hardware no
//! machine here has (IOMMU groups, stub drivers, SR-IOV, Fibre Channel, USB) is simulated
//! this way. The real kernel refuses a bad vport write with an errno; a file cannot, so the
//! fake kernel simply makes no vport and the product's bounded wait reports it.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One PCI function of the fake tree.
#[derive(Default)]
pub struct FakePci {
    pub address: &'static str,
    pub vendor: u32,
    pub device: u32,
    pub class: u32,
    /// The host driver, bound at the start and after a reattach.
    pub driver: Option<&'static str>,
    pub iommu_group: Option<u32>,
    /// An SR-IOV physical function with this many VFs (0: not SR-IOV capable).
    pub total_vfs: u32,
    /// The host driver of its VFs.
    pub vf_driver: Option<&'static str>,
    /// Its network interface (`net/NAME`, in `class/net`), as a NIC driver shows it.
    pub net_interface: Option<&'static str>,
}

/// A Fibre Channel HBA port: SCSI host `host` on PCI function `pci`.
pub struct FakeFcHost {
    pub pci: &'static str,
    pub host: u32,
    /// 16 hex digits each.
    pub wwnn: &'static str,
    pub wwpn: &'static str,
    pub fabric_wwn: &'static str,
    /// NPIV vports it can make; 0: no vport_create (not NPIV capable).
    pub max_vports: u32,
}

/// A USB device on port `port` (`1-1`) of root hub `usbBUS`, under controller `pci`.
pub struct FakeUsb {
    pub pci: &'static str,
    pub bus: u32,
    pub port: &'static str,
    pub device: u32,
    pub vendor: u16,
    pub product: u16,
    pub manufacturer: &'static str,
    pub product_name: &'static str,
}

pub struct FakeSysfs {
    dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    kernel: Option<std::thread::JoinHandle<()>>,
}

fn bind(root: &Path, address: &str, driver: &str) {
    let device = root.join("devices/pci0000:00").join(address);
    let drivers = root.join("bus/pci/drivers").join(driver);
    if !drivers.exists() {
        return;
    }
    let _ = symlink(&drivers, device.join("driver"));
    let _ = symlink(&device, drivers.join(address));
}

fn unbind(root: &Path, address: &str) {
    let device = root.join("devices/pci0000:00").join(address);
    if let Ok(driver) = std::fs::read_link(device.join("driver")) {
        let _ = std::fs::remove_file(driver.join(address));
    }
    let _ = std::fs::remove_file(device.join("driver"));
}

/// `hostN` under `parent`, with its scsi_host class directory and link.
fn scsi_host(root: &Path, parent: &Path, host: u32) -> PathBuf {
    let device = parent.join(format!("host{host}"));
    let class = device.join("scsi_host").join(format!("host{host}"));
    std::fs::create_dir_all(&class).expect("building the fake sysfs tree");
    std::fs::write(class.join("unique_id"), format!("{}\n", host + 1))
        .expect("building the fake sysfs tree");
    let _ = std::fs::create_dir_all(root.join("class/scsi_host"));
    let _ = symlink(
        &class,
        root.join("class/scsi_host").join(format!("host{host}")),
    );
    device
}

/// The fc_host class directory of SCSI host `device`, with its WWNs and link.
fn fc_host(root: &Path, device: &Path, host: u32, wwnn: &str, wwpn: &str, fabric: &str) -> PathBuf {
    let dir = device.join("fc_host").join(format!("host{host}"));
    std::fs::create_dir_all(&dir).expect("building the fake sysfs tree");
    for (file, value) in [
        ("node_name", format!("0x{wwnn}")),
        ("port_name", format!("0x{wwpn}")),
        ("fabric_name", format!("0x{fabric}")),
        ("port_state", "Online".into()),
    ] {
        std::fs::write(dir.join(file), format!("{value}\n")).expect("building the fake sysfs tree");
    }
    let _ = std::fs::create_dir_all(root.join("class/fc_host"));
    let _ = symlink(&dir, root.join("class/fc_host").join(format!("host{host}")));
    dir
}

/// Takes what was written to a control file, leaving it empty.
fn take(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return None;
    }
    std::fs::write(path, "").ok()?;
    Some(text)
}

impl FakeSysfs {
    pub fn build(devices: &[FakePci]) -> FakeSysfs {
        let dir = tempfile::tempdir().expect("building the fake sysfs tree");
        let root = dir.path().to_path_buf();
        for path in [
            "devices/pci0000:00",
            "bus/pci/devices",
            "kernel/iommu_groups",
            "class/net",
        ] {
            std::fs::create_dir_all(root.join(path)).expect("building the fake sysfs tree");
        }
        std::fs::write(root.join("bus/pci/drivers_probe"), "")
            .expect("building the fake sysfs tree");
        let mut drivers: Vec<&str> = vec!["vfio-pci", "pci-stub"];
        drivers.extend(devices.iter().filter_map(|d| d.driver));
        drivers.extend(devices.iter().filter_map(|d| d.vf_driver));
        for driver in drivers {
            let dir = root.join("bus/pci/drivers").join(driver);
            std::fs::create_dir_all(&dir).expect("building the fake sysfs tree");
            std::fs::write(dir.join("unbind"), "").expect("building the fake sysfs tree");
        }
        for pci in devices {
            let device = root.join("devices/pci0000:00").join(pci.address);
            std::fs::create_dir_all(&device).expect("building the fake sysfs tree");
            std::fs::write(device.join("vendor"), format!("0x{:04x}\n", pci.vendor))
                .expect("building the fake sysfs tree");
            std::fs::write(device.join("device"), format!("0x{:04x}\n", pci.device))
                .expect("building the fake sysfs tree");
            std::fs::write(device.join("class"), format!("0x{:06x}\n", pci.class))
                .expect("building the fake sysfs tree");
            std::fs::write(device.join("driver_override"), "(null)\n")
                .expect("building the fake sysfs tree");
            std::fs::write(device.join("reset"), "").expect("building the fake sysfs tree");
            // Where the kernel would keep it: the host driver to bind when no override says.
            std::fs::write(device.join(".host_driver"), pci.driver.unwrap_or(""))
                .expect("building the fake sysfs tree");
            symlink(&device, root.join("bus/pci/devices").join(pci.address))
                .expect("building the fake sysfs tree");
            if let Some(group) = pci.iommu_group {
                let group_dir = root.join("kernel/iommu_groups").join(group.to_string());
                std::fs::create_dir_all(group_dir.join("devices"))
                    .expect("building the fake sysfs tree");
                symlink(&device, group_dir.join("devices").join(pci.address))
                    .expect("building the fake sysfs tree");
                symlink(&group_dir, device.join("iommu_group"))
                    .expect("building the fake sysfs tree");
            }
            if let Some(driver) = pci.driver {
                bind(&root, pci.address, driver);
            }
            if let Some(interface) = pci.net_interface {
                let net = device.join("net").join(interface);
                std::fs::create_dir_all(&net).expect("building the fake sysfs tree");
                std::fs::write(net.join("address"), "52:54:00:00:00:01\n")
                    .expect("building the fake sysfs tree");
                std::fs::write(net.join("operstate"), "up\n")
                    .expect("building the fake sysfs tree");
                symlink(&device, net.join("device")).expect("building the fake sysfs tree");
                symlink(&net, root.join("class/net").join(interface))
                    .expect("building the fake sysfs tree");
            }
            if pci.total_vfs > 0 {
                std::fs::write(device.join("sriov_totalvfs"), pci.total_vfs.to_string())
                    .expect("building the fake sysfs tree");
                std::fs::write(device.join("sriov_numvfs"), "0")
                    .expect("building the fake sysfs tree");
                std::fs::write(device.join(".vf_driver"), pci.vf_driver.unwrap_or(""))
                    .expect("building the fake sysfs tree");
                std::fs::write(
                    device.join(".ids"),
                    format!("{} {}", pci.vendor, pci.device),
                )
                .expect("building the fake sysfs tree");
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let kernel_root = root.clone();
        let kernel = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                FakeSysfs::react(&kernel_root);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        FakeSysfs {
            dir,
            stop,
            kernel: Some(kernel),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// vireod whose svc-nodedev reads this tree, under `wrapper` (e.g. `ip netns exec NS`), with
    /// no default network; the directory holds its config.
    pub fn vireod(&self, wrapper: &[&str]) -> (crate::Server, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("config directory");
        let config = dir.path().join("vireo.toml");
        std::fs::write(
            &config,
            format!(
                "[network]\ndefault_network = false\n[nodedev]\nsysfs_root = \"{}\"\n",
                self.root().display()
            ),
        )
        .expect("writing the config");
        let config = config.to_str().expect("a UTF-8 temporary path").to_string();
        let server = crate::Server::vireod_with(wrapper, &["--config", &config]);
        (server, dir)
    }

    /// Adds a SCSI host (`hostN` under PCI function `pci`), as a SCSI/SAS driver would.
    pub fn add_scsi_host(&self, pci: &str, host: u32) -> PathBuf {
        scsi_host(
            &self.root(),
            &self.root().join("devices/pci0000:00").join(pci),
            host,
        )
    }

    /// Adds an FC HBA port: its SCSI host and its fc_host, with vport_create and vport_delete
    /// when it is NPIV capable.
    pub fn add_fc_host(&self, fc: &FakeFcHost) {
        let root = self.root();
        let device = self.add_scsi_host(fc.pci, fc.host);
        let dir = fc_host(&root, &device, fc.host, fc.wwnn, fc.wwpn, fc.fabric_wwn);
        if fc.max_vports > 0 {
            for (file, value) in [
                ("max_npiv_vports", fc.max_vports.to_string()),
                ("npiv_vports_inuse", "0".to_string()),
                ("vport_create", String::new()),
                ("vport_delete", String::new()),
            ] {
                std::fs::write(dir.join(file), value).expect("building the fake sysfs tree");
            }
        }
    }

    /// Adds a USB device behind its root hub (made with the first device on that bus).
    pub fn add_usb(&self, usb: &FakeUsb) {
        let root = self.root();
        let hub_name = format!("usb{}", usb.bus);
        let hub = root
            .join("devices/pci0000:00")
            .join(usb.pci)
            .join(&hub_name);
        let make = |dir: &Path, name: &str, fields: &[(&str, String)]| {
            std::fs::create_dir_all(dir).expect("building the fake sysfs tree");
            for (file, value) in fields {
                std::fs::write(dir.join(file), format!("{value}\n"))
                    .expect("building the fake sysfs tree");
            }
            let _ = std::fs::create_dir_all(root.join("bus/usb/devices"));
            let _ = symlink(dir, root.join("bus/usb/devices").join(name));
        };
        if !hub.exists() {
            make(
                &hub,
                &hub_name,
                &[
                    ("busnum", usb.bus.to_string()),
                    ("devnum", "1".into()),
                    ("idVendor", "1d6b".into()),
                    ("idProduct", "0002".into()),
                    ("manufacturer", "Linux Foundation".into()),
                    ("product", "2.0 root hub".into()),
                ],
            );
        }
        make(
            &hub.join(usb.port),
            usb.port,
            &[
                ("busnum", usb.bus.to_string()),
                ("devnum", usb.device.to_string()),
                ("idVendor", format!("{:04x}", usb.vendor)),
                ("idProduct", format!("{:04x}", usb.product)),
                ("manufacturer", usb.manufacturer.into()),
                ("product", usb.product_name.into()),
            ],
        );
    }

    /// The driver a device is bound to now.
    pub fn driver_of(&self, address: &str) -> Option<String> {
        std::fs::read_link(
            self.dir
                .path()
                .join("devices/pci0000:00")
                .join(address)
                .join("driver"),
        )
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    /// A PF's VFs to match what was written to its `sriov_numvfs`.
    fn sriov(root: &Path, pf: &Path) {
        let Some(wanted) = std::fs::read_to_string(pf.join("sriov_numvfs"))
            .ok()
            .and_then(|n| n.trim().parse::<u32>().ok())
        else {
            return;
        };
        let existing = (0u32..)
            .take_while(|i| pf.join(format!("virtfn{i}")).exists())
            .last()
            .map_or(0, |last| last + 1);
        if existing == wanted || (existing > 0 && wanted > 0) {
            return;
        }
        let pf_address = pf
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (prefix, _) = pf_address.rsplit_once(':').unwrap_or(("0000:00", ""));
        let vf_address = |i: u32| format!("{prefix}:{:02x}.{:x}", 0x10 + i / 8, i % 8);
        for i in 0..existing {
            let address = vf_address(i);
            unbind(root, &address);
            let _ = std::fs::remove_file(pf.join(format!("virtfn{i}")));
            let _ = std::fs::remove_file(root.join("bus/pci/devices").join(&address));
            let _ = std::fs::remove_dir_all(
                root.join("kernel/iommu_groups").join((100 + i).to_string()),
            );
            let _ = std::fs::remove_dir_all(root.join("devices/pci0000:00").join(&address));
        }
        let driver = std::fs::read_to_string(pf.join(".vf_driver")).unwrap_or_default();
        for i in 0..wanted {
            let address = vf_address(i);
            let vf = root.join("devices/pci0000:00").join(&address);
            let _ = std::fs::create_dir_all(&vf);
            let _ = std::fs::write(vf.join("vendor"), "0x8086\n");
            let _ = std::fs::write(vf.join("device"), "0x10ca\n");
            let _ = std::fs::write(vf.join("class"), "0x020000\n");
            let _ = std::fs::write(vf.join("driver_override"), "(null)\n");
            let _ = std::fs::write(vf.join(".host_driver"), &driver);
            let _ = symlink(&vf, root.join("bus/pci/devices").join(&address));
            let _ = symlink(&vf, pf.join(format!("virtfn{i}")));
            let _ = symlink(pf, vf.join("physfn"));
            let group = root.join("kernel/iommu_groups").join((100 + i).to_string());
            let _ = std::fs::create_dir_all(group.join("devices"));
            let _ = symlink(&vf, group.join("devices").join(&address));
            let _ = symlink(&group, vf.join("iommu_group"));
            if !driver.is_empty() {
                bind(root, &address, &driver);
            }
        }
    }

    /// An NPIV HBA's vport_create and vport_delete: `wwpn:wwnn`, 16 hex digits each.
    fn vports(root: &Path, fc_dir: &Path) {
        let parse = |text: &str| {
            let (wwpn, wwnn) = text.split_once(':')?;
            let ok = |w: &str| w.len() == 16 && w.bytes().all(|b| b.is_ascii_hexdigit());
            (ok(wwpn) && ok(wwnn)).then(|| (wwpn.to_lowercase(), wwnn.to_lowercase()))
        };
        let Some(hba) = fc_dir.parent().and_then(Path::parent) else {
            return;
        };
        let hba_host = hba
            .file_name()
            .and_then(|n| {
                n.to_string_lossy()
                    .strip_prefix("host")?
                    .parse::<u32>()
                    .ok()
            })
            .unwrap_or(0);
        let read = |file: &str| std::fs::read_to_string(fc_dir.join(file)).unwrap_or_default();
        let in_use: u32 = read("npiv_vports_inuse").trim().parse().unwrap_or(0);
        let max: u32 = read("max_npiv_vports").trim().parse().unwrap_or(0);
        let fabric = read("fabric_name")
            .trim()
            .trim_start_matches("0x")
            .to_string();
        let port_names = || {
            std::fs::read_dir(root.join("class/fc_host"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| {
                    let dir = e.path();
                    let name = std::fs::read_to_string(dir.join("port_name")).unwrap_or_default();
                    (name.trim().trim_start_matches("0x").to_string(), dir)
                })
                .collect::<Vec<_>>()
        };
        if let Some((wwpn, wwnn)) = take(&fc_dir.join("vport_create"))
            .as_deref()
            .and_then(parse)
            && in_use < max
            && !port_names().iter().any(|(name, _)| *name == wwpn)
        {
            // The kernel gives a new SCSI host the lowest free number (an IDA).
            let host = (0..)
                .find(|n| {
                    !root
                        .join("class/scsi_host")
                        .join(format!("host{n}"))
                        .exists()
                })
                .unwrap_or(0);
            let vport = (0..)
                .map(|k| hba.join(format!("vport-{hba_host}:0-{k}")))
                .find(|vport| !vport.exists())
                .unwrap_or_else(|| hba.join("vport"));
            let device = scsi_host(root, &vport, host);
            let dir = fc_host(root, &device, host, &wwnn, &wwpn, &fabric);
            let _ = std::fs::write(dir.join("port_type"), "NPIV VPORT\n");
            let _ = std::fs::write(fc_dir.join("npiv_vports_inuse"), (in_use + 1).to_string());
        }
        if let Some((wwpn, _)) = take(&fc_dir.join("vport_delete"))
            .as_deref()
            .and_then(parse)
            && let Some((_, dir)) = port_names().into_iter().find(|(name, _)| *name == wwpn)
            && let Ok(class_dir) = std::fs::canonicalize(&dir)
            && let Some(device) = class_dir.parent().and_then(Path::parent)
            && let Some(vport) = device.parent().filter(|v| v.starts_with(hba))
        {
            if let Some(name) = device.file_name() {
                let _ = std::fs::remove_file(root.join("class/scsi_host").join(name));
                let _ = std::fs::remove_file(root.join("class/fc_host").join(name));
            }
            let _ = std::fs::remove_dir_all(vport);
            let _ = std::fs::write(
                fc_dir.join("npiv_vports_inuse"),
                in_use.saturating_sub(1).to_string(),
            );
        }
    }

    /// One pass of the fake kernel over the control files.
    fn react(root: &Path) {
        for host in std::fs::read_dir(root.join("class/fc_host"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(dir) = std::fs::canonicalize(host.path())
                && dir.join("vport_create").exists()
            {
                FakeSysfs::vports(root, &dir);
            }
        }
        for pf in std::fs::read_dir(root.join("devices/pci0000:00"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if pf.path().join("sriov_totalvfs").exists() {
                FakeSysfs::sriov(root, &pf.path());
            }
        }
        for driver in std::fs::read_dir(root.join("bus/pci/drivers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some(address) = take(&driver.path().join("unbind")) {
                unbind(root, &address);
            }
        }
        if let Some(address) = take(&root.join("bus/pci/drivers_probe")) {
            let device = root.join("devices/pci0000:00").join(&address);
            if device.join("driver").exists() {
                return;
            }
            let wanted =
                std::fs::read_to_string(device.join("driver_override")).unwrap_or_default();
            let wanted = wanted.trim();
            let driver = if wanted.is_empty() || wanted == "(null)" {
                std::fs::read_to_string(device.join(".host_driver")).unwrap_or_default()
            } else {
                wanted.to_string()
            };
            if !driver.is_empty() {
                bind(root, &address, &driver);
            }
        }
    }
}

impl Drop for FakeSysfs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(kernel) = self.kernel.take() {
            let _ = kernel.join();
        }
    }
}
