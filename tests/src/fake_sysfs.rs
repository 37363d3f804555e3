//! A sysfs tree for svc-nodedev's tests, laid out as the kernel lays it out, with a small
//! "kernel" thread that gives its control files their effect: a write to a driver's `unbind`
//! releases the device, and a write to `bus/pci/drivers_probe` binds the driver that the
//! device's `driver_override` names, or its host driver when the override is empty, and a
//! PF's `sriov_numvfs` makes (or removes) its VFs, each in an IOMMU group of its own. Only
//! hardware no machine here has (IOMMU groups, stub drivers, SR-IOV) is simulated this way.

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

    /// One pass of the fake kernel over the control files.
    fn react(root: &Path) {
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
