//! SR-IOV on a physical function: how many virtual functions it has enabled (`sriov_numvfs`,
//! changed through 0 as the kernel requires) and which they are (`virtfnN` links).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::Status;
use vireo_proto::nodedev::v1 as pb;

use super::assign::{STUB_DRIVERS, pci_address_of};
use super::sysfs::{link_name, parse_pci_address, pci_name};

/// How long the kernel (or a test's tree) may take to show new VFs.
const VF_WAIT: Duration = Duration::from_secs(3);

fn read_number(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The network interface a PCI function has while a host net driver holds it.
fn interface_of(device: &Path) -> String {
    std::fs::read_dir(device.join("net"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .unwrap_or_default()
}

pub struct Sriov {
    root: PathBuf,
}

impl Sriov {
    pub fn new(root: &Path) -> Sriov {
        Sriov {
            root: root.to_path_buf(),
        }
    }

    fn pf(&self, name: &str) -> Result<(String, PathBuf), Status> {
        let address = pci_address_of(name)?;
        let device = self.root.join("bus/pci/devices").join(&address);
        if !device.join("sriov_totalvfs").exists() {
            return Err(Status::failed_precondition(format!(
                "{name} is not an SR-IOV physical function (no sriov_totalvfs)"
            )));
        }
        Ok((address, device))
    }

    /// The PF's VFs as they are now.
    pub fn info(&self, name: &str) -> Result<pb::SriovInfo, Status> {
        let (address, device) = self.pf(name)?;
        let num_vfs = read_number(&device.join("sriov_numvfs"));
        let mut vfs = Vec::new();
        for index in 0..num_vfs {
            let Some(vf_address) = link_name(&device.join(format!("virtfn{index}"))) else {
                continue;
            };
            let Some(parsed) = parse_pci_address(&vf_address) else {
                continue;
            };
            let vf_device = self.root.join("bus/pci/devices").join(&vf_address);
            let interface = interface_of(&vf_device);
            vfs.push(pb::VirtualFunction {
                index,
                name: pci_name(&parsed),
                address: Some(parsed),
                driver: link_name(&vf_device.join("driver")).unwrap_or_default(),
                interface,
                ..Default::default()
            });
        }
        let pf_interface = interface_of(&device);
        Ok(pb::SriovInfo {
            pf_name: name.to_string(),
            pf_address: parse_pci_address(&address),
            pf_interface,
            num_vfs,
            total_vfs: read_number(&device.join("sriov_totalvfs")),
            vfs,
        })
    }

    /// The PF's network interface, through which VF `index`'s settings are made; the VF must
    /// exist.
    pub fn vf_settings_interface(&self, name: &str, index: u32) -> Result<String, Status> {
        let info = self.info(name)?;
        if !info.vfs.iter().any(|vf| vf.index == index) {
            return Err(Status::not_found(format!(
                "vf_index: {name} has no VF {index} ({} enabled)",
                info.num_vfs
            )));
        }
        if info.pf_interface.is_empty() {
            return Err(Status::failed_precondition(format!(
                "{name} has no network interface (no net driver holds it), through which VF settings are made"
            )));
        }
        Ok(info.pf_interface)
    }

    /// Enables `count` VFs (0 disables SR-IOV). Refused while a VF is held for a guest.
    pub fn set_count(&self, name: &str, count: u32) -> Result<pb::SriovInfo, Status> {
        let (_, device) = self.pf(name)?;
        let total = read_number(&device.join("sriov_totalvfs"));
        if count > total {
            return Err(Status::invalid_argument(format!(
                "num_vfs: {count} is more than {name}'s {total} virtual functions"
            )));
        }
        let current = self.info(name)?;
        if let Some(held) = current
            .vfs
            .iter()
            .find(|vf| STUB_DRIVERS.contains(&vf.driver.as_str()))
        {
            return Err(Status::failed_precondition(format!(
                "{} (VF {}) is detached for a guest: reattach it before changing the VF count",
                held.name, held.index
            )));
        }
        if current.num_vfs == count {
            return Ok(current);
        }
        let numvfs = device.join("sriov_numvfs");
        let write = |value: u32| {
            std::fs::write(&numvfs, value.to_string()).map_err(|err| {
                Status::failed_precondition(format!("writing {}: {err}", numvfs.display()))
            })
        };
        // The kernel takes a new nonzero count only from 0.
        if current.num_vfs > 0 {
            write(0)?;
            self.wait_for(&device, 0);
        }
        if count > 0 {
            write(count)?;
            if !self.wait_for(&device, count) {
                return Err(Status::failed_precondition(format!(
                    "{name} did not create {count} virtual functions"
                )));
            }
        }
        self.info(name)
    }

    /// Waits (bounded) until the PF shows exactly `count` virtfn links.
    fn wait_for(&self, device: &Path, count: u32) -> bool {
        let started = Instant::now();
        loop {
            let links = std::fs::read_dir(device)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("virtfn"))
                .count();
            if links == count as usize {
                return true;
            }
            if started.elapsed() > VF_WAIT {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
