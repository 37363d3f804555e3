//! Detaching a PCI function from its host driver for guest assignment, and giving it back, the
//! kernel's way: `driver_override` names the stub driver, the current driver lets go (`unbind`),
//! and `drivers_probe` binds what the override says (or, with the override cleared, the host
//! driver). Detaching needs an IOMMU group whose other members are detached already or bridges.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::Status;

use super::sysfs::{link_name, parse_pci_address};

/// How long the kernel (or a test's tree) may take to show a new binding.
const BIND_WAIT: Duration = Duration::from_secs(3);

/// Drivers that hold a device for assignment rather than use it.
pub const STUB_DRIVERS: [&str; 2] = ["vfio-pci", "pci-stub"];

/// The sysfs address ("0000:00:03.0") of a `pci_0000_00_03_0` name.
pub fn pci_address_of(name: &str) -> Result<String, Status> {
    let parts: Vec<&str> = name.strip_prefix("pci_").unwrap_or("").split('_').collect();
    let [domain, bus, slot, function] = parts.as_slice() else {
        return Err(Status::invalid_argument(format!(
            "device: '{name}' is not a PCI device (pci_DDDD_BB_SS_F)"
        )));
    };
    let address = format!("{domain}:{bus}:{slot}.{function}");
    parse_pci_address(&address)
        .map(|_| address)
        .ok_or_else(|| Status::invalid_argument(format!("device: '{name}' is not a PCI address")))
}

fn driver_of(device: &Path) -> Option<String> {
    link_name(&device.join("driver"))
}

fn write(path: &Path, text: &str) -> Result<(), Status> {
    std::fs::write(path, text)
        .map_err(|err| Status::failed_precondition(format!("writing {}: {err}", path.display())))
}

/// Waits (bounded) until `device`'s driver satisfies `done`.
fn wait_for_driver(device: &Path, done: impl Fn(Option<&str>) -> bool) -> Option<String> {
    let started = Instant::now();
    loop {
        let driver = driver_of(device);
        if done(driver.as_deref()) || started.elapsed() > BIND_WAIT {
            return driver;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct Assigner {
    root: PathBuf,
}

impl Assigner {
    pub fn new(root: &Path) -> Assigner {
        Assigner {
            root: root.to_path_buf(),
        }
    }

    fn device(&self, address: &str) -> Result<PathBuf, Status> {
        let device = self.root.join("bus/pci/devices").join(address);
        if device.exists() {
            Ok(device)
        } else {
            Err(Status::not_found(format!("no PCI device {address}")))
        }
    }

    /// nodedev-detach: bind `driver` (vfio-pci unless pci-stub is asked for).
    pub fn detach(&self, name: &str, driver: &str) -> Result<(), Status> {
        let target = match driver {
            "" | "vfio" | "vfio-pci" => "vfio-pci",
            "pci-stub" | "kvm" => "pci-stub",
            other => {
                return Err(Status::invalid_argument(format!(
                    "driver: '{other}' is not vfio-pci or pci-stub"
                )));
            }
        };
        let address = pci_address_of(name)?;
        let device = self.device(&address)?;
        if driver_of(&device).as_deref() == Some(target) {
            return Ok(());
        }
        let group = std::fs::read_link(device.join("iommu_group")).map_err(|_| {
            Status::failed_precondition(format!(
                "{name} has no IOMMU group: the host has no IOMMU, or it is off (intel_iommu=on / amd_iommu=on)"
            ))
        })?;
        let members =
            std::fs::read_dir(device.join("iommu_group").join("devices")).map_err(|err| {
                Status::failed_precondition(format!(
                    "reading IOMMU group {}: {err}",
                    group.display()
                ))
            })?;
        for member in members.flatten() {
            let member_address = member.file_name().to_string_lossy().into_owned();
            if member_address == address {
                continue;
            }
            let member_device = self.root.join("bus/pci/devices").join(&member_address);
            let class = std::fs::read_to_string(member_device.join("class")).unwrap_or_default();
            let bridge = class.trim().trim_start_matches("0x").starts_with("0604");
            let held = driver_of(&member_device)
                .is_none_or(|driver| STUB_DRIVERS.contains(&driver.as_str()));
            if !bridge && !held {
                return Err(Status::failed_precondition(format!(
                    "{name} shares its IOMMU group with {member_address}, which the host still uses: detach it first"
                )));
            }
        }
        let vfs: u32 = std::fs::read_to_string(device.join("sriov_numvfs"))
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        if vfs > 0 {
            return Err(Status::failed_precondition(format!(
                "{name} has {vfs} virtual functions enabled: set their count to 0 first"
            )));
        }
        write(&device.join("driver_override"), target)?;
        if driver_of(&device).is_some() {
            write(&device.join("driver/unbind"), &address)?;
        }
        write(&self.root.join("bus/pci/drivers_probe"), &address)?;
        match wait_for_driver(&device, |driver| driver == Some(target)) {
            Some(bound) if bound == target => Ok(()),
            other => Err(Status::failed_precondition(format!(
                "{name} did not bind to {target} (bound: {}); is the {target} module loaded?",
                other.as_deref().unwrap_or("nothing")
            ))),
        }
    }

    /// nodedev-reattach: the override goes and the host driver probes the device again.
    pub fn reattach(&self, name: &str) -> Result<(), Status> {
        let address = pci_address_of(name)?;
        let device = self.device(&address)?;
        let current = driver_of(&device);
        if !current
            .as_deref()
            .is_some_and(|driver| STUB_DRIVERS.contains(&driver))
            && std::fs::read_to_string(device.join("driver_override"))
                .map(|text| text.trim().is_empty() || text.trim() == "(null)")
                .unwrap_or(true)
        {
            return Err(Status::failed_precondition(format!(
                "{name} is not detached (driver: {})",
                current.as_deref().unwrap_or("none")
            )));
        }
        write(&device.join("driver_override"), "\n")?;
        if current.is_some() {
            write(&device.join("driver/unbind"), &address)?;
        }
        write(&self.root.join("bus/pci/drivers_probe"), &address)?;
        wait_for_driver(&device, |driver| {
            driver.is_some_and(|driver| !STUB_DRIVERS.contains(&driver))
        });
        Ok(())
    }

    /// nodedev-reset: a function-level reset of a detached device.
    pub fn reset(&self, name: &str) -> Result<(), Status> {
        let address = pci_address_of(name)?;
        let device = self.device(&address)?;
        if !driver_of(&device).is_some_and(|driver| STUB_DRIVERS.contains(&driver.as_str())) {
            return Err(Status::failed_precondition(format!(
                "{name} is not detached: resetting a device the host uses is refused"
            )));
        }
        if !device.join("reset").exists() {
            return Err(Status::failed_precondition(format!(
                "{name} offers no reset (no sysfs reset file)"
            )));
        }
        write(&device.join("reset"), "1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_to_addresses() {
        assert_eq!(pci_address_of("pci_0000_00_1f_2").unwrap(), "0000:00:1f.2");
        assert!(pci_address_of("net_eth0").is_err());
        assert!(pci_address_of("pci_0000_zz_1f_2").is_err());
    }
}
