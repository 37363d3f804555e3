//! NPIV vHBAs: a virtual port on a Fibre Channel HBA that can make them (vport_ops), created by
//! writing `wwpn:wwnn` to the HBA's `fc_host/hostN/vport_create` and deleted through
//! `vport_delete`. The kernel then shows (or removes) a new `scsi_hostM` with its own fc_host;
//! we wait, bounded, for that to happen.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::Status;
use vireo_proto::nodedev::v1 as pb;

use super::sysfs::{host_number, wwn};

/// How long the kernel (or a test's tree) may take to show or remove a vport's host.
const VPORT_WAIT: Duration = Duration::from_secs(5);

/// libvirt's prefix for the WWNs it makes up (its IEEE OUI, as libvirt uses for vHBAs).
const GENERATED_WWN_PREFIX: &str = "5001a4a";

/// One Fibre Channel host as its fc_host class directory shows it.
struct FcHost {
    number: u32,
    dir: PathBuf,
    wwnn: String,
    wwpn: String,
    fabric_wwn: String,
}

impl FcHost {
    fn name(&self) -> String {
        format!("scsi_host{}", self.number)
    }

    fn can_make_vports(&self) -> bool {
        self.dir.join("vport_create").exists()
    }

    fn number_in(&self, file: &str) -> u32 {
        std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

pub struct Npiv {
    root: PathBuf,
    /// One create at a time: its duplicate check and its wait must see only its own vport.
    creating: std::sync::Mutex<()>,
}

/// 16 hex digits: `GENERATED_WWN_PREFIX` and random ones.
fn generated_wwn() -> Result<String, Status> {
    use std::io::Read;
    let mut random = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut random))
        .map_err(|err| Status::internal(format!("reading /dev/urandom: {err}")))?;
    let digits: String = random.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{GENERATED_WWN_PREFIX}{}",
        &digits[..16 - GENERATED_WWN_PREFIX.len()]
    ))
}

impl Npiv {
    pub fn new(root: &Path) -> Npiv {
        Npiv {
            root: root.to_path_buf(),
            creating: std::sync::Mutex::new(()),
        }
    }

    fn hosts(&self) -> Vec<FcHost> {
        std::fs::read_dir(self.root.join("class/fc_host"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let number = host_number(&entry.file_name().to_string_lossy())?;
                let dir = entry.path();
                Some(FcHost {
                    number,
                    wwnn: wwn(&dir.join("node_name")),
                    wwpn: wwn(&dir.join("port_name")),
                    fabric_wwn: wwn(&dir.join("fabric_name")),
                    dir,
                })
            })
            .collect()
    }

    /// The HBA the spec names, which must be able to make vports.
    fn parent(&self, spec: &pb::VhbaSpec) -> Result<FcHost, Status> {
        use pb::vhba_spec::ParentRef;
        if let Some(ParentRef::Parent(name)) = &spec.parent_ref
            && let Some(number) = name.strip_prefix("scsi_host")
            && self
                .root
                .join("class/scsi_host")
                .join(format!("host{number}"))
                .exists()
            && !self
                .root
                .join("class/fc_host")
                .join(format!("host{number}"))
                .exists()
        {
            return Err(Status::failed_precondition(format!(
                "parent: {name} is not a Fibre Channel HBA (it has no fc_host), so it makes no vports"
            )));
        }
        let hosts = self.hosts();
        let (field, described, found) = match &spec.parent_ref {
            Some(ParentRef::Parent(name)) => (
                "parent",
                format!("'{name}'"),
                hosts.into_iter().find(|h| h.name() == *name),
            ),
            Some(ParentRef::ParentWwns(wwns)) => (
                "parent_wwns",
                format!("wwnn {} wwpn {}", wwns.wwnn, wwns.wwpn),
                hosts
                    .into_iter()
                    .find(|h| h.wwnn == wwns.wwnn && h.wwpn == wwns.wwpn),
            ),
            Some(ParentRef::ParentFabricWwn(fabric)) => (
                "parent_fabric_wwn",
                format!("fabric {fabric}"),
                hosts
                    .into_iter()
                    .filter(|h| h.fabric_wwn == *fabric && h.can_make_vports())
                    .find(|h| h.number_in("npiv_vports_inuse") < h.number_in("max_npiv_vports")),
            ),
            None => {
                return Err(Status::invalid_argument(
                    "parent: name the HBA to create the vHBA on",
                ));
            }
        };
        let host = found.ok_or_else(|| {
            Status::not_found(format!(
                "{field}: no Fibre Channel HBA with {described} that can create vports"
            ))
        })?;
        if !host.can_make_vports() {
            return Err(Status::failed_precondition(format!(
                "{field}: {} cannot create vports (it has no vport_ops)",
                host.name()
            )));
        }
        Ok(host)
    }

    /// Creates the vHBA and answers its `scsi_hostM` name.
    pub fn create(&self, mut spec: pb::VhbaSpec) -> Result<String, Status> {
        let _one_at_a_time = self
            .creating
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // WWNs as sysfs shows them (16 lower-case hex digits), whichever way they came.
        let normal = |value: &str, field: &str| {
            vireo_conf::nodedev::check_wwn(value, field)
                .map_err(|err| Status::invalid_argument(err.to_string()))
        };
        match &mut spec.parent_ref {
            Some(pb::vhba_spec::ParentRef::ParentWwns(wwns)) => {
                wwns.wwnn = normal(&wwns.wwnn, "parent_wwns.wwnn")?;
                wwns.wwpn = normal(&wwns.wwpn, "parent_wwns.wwpn")?;
            }
            Some(pb::vhba_spec::ParentRef::ParentFabricWwn(fabric)) => {
                *fabric = normal(fabric, "parent_fabric_wwn")?;
            }
            _ => {}
        }
        let parent = self.parent(&spec)?;
        if spec.wwnn.is_empty() && spec.wwpn.is_empty() {
            spec.wwnn = generated_wwn()?;
            spec.wwpn = generated_wwn()?;
        }
        spec.wwnn = normal(&spec.wwnn, "wwnn")?;
        spec.wwpn = normal(&spec.wwpn, "wwpn")?;
        if let Some(taken) = self.hosts().into_iter().find(|h| h.wwpn == spec.wwpn) {
            return Err(Status::already_exists(format!(
                "wwpn: {} is already the port name of {}",
                spec.wwpn,
                taken.name()
            )));
        }
        let (used, max) = (
            parent.number_in("npiv_vports_inuse"),
            parent.number_in("max_npiv_vports"),
        );
        if used >= max {
            return Err(Status::failed_precondition(format!(
                "parent: {} already has its {max} vports",
                parent.name()
            )));
        }
        std::fs::write(
            parent.dir.join("vport_create"),
            format!("{}:{}", spec.wwpn, spec.wwnn),
        )
        .map_err(|err| {
            Status::failed_precondition(format!(
                "{} refused the vport {}:{}: {err}",
                parent.name(),
                spec.wwpn,
                spec.wwnn
            ))
        })?;
        let started = Instant::now();
        loop {
            if let Some(host) = self.hosts().into_iter().find(|h| h.wwpn == spec.wwpn) {
                return Ok(host.name());
            }
            if started.elapsed() > VPORT_WAIT {
                // Whatever half of it exists goes again.
                let _ = std::fs::write(
                    parent.dir.join("vport_delete"),
                    format!("{}:{}", spec.wwpn, spec.wwnn),
                );
                return Err(Status::deadline_exceeded(format!(
                    "{} showed no vport with wwpn {} within {} s",
                    parent.name(),
                    spec.wwpn,
                    VPORT_WAIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Deletes vHBA `name` (a `scsi_hostM` made by `create`) through its HBA's vport_delete.
    pub fn destroy(&self, name: &str, parent: &str) -> Result<(), Status> {
        let hosts = self.hosts();
        let vport = hosts.iter().find(|h| h.name() == name).ok_or_else(|| {
            Status::failed_precondition(format!(
                "device: {name} is not a Fibre Channel host; only vHBAs can be destroyed"
            ))
        })?;
        let hba = hosts
            .iter()
            .find(|h| h.name() == parent && h.can_make_vports())
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "device: {name} is not a vHBA (its parent {parent} makes no vports); only vHBAs made by nodedev-create can be destroyed"
                ))
            })?;
        std::fs::write(
            hba.dir.join("vport_delete"),
            format!("{}:{}", vport.wwpn, vport.wwnn),
        )
        .map_err(|err| {
            Status::failed_precondition(format!("{parent} refused to delete {name}: {err}"))
        })?;
        let started = Instant::now();
        while self.hosts().iter().any(|h| h.name() == name) {
            if started.elapsed() > VPORT_WAIT {
                return Err(Status::deadline_exceeded(format!(
                    "{name} was still there {} s after its deletion",
                    VPORT_WAIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_wwns_carry_the_prefix_and_differ() {
        let first = generated_wwn().expect("urandom");
        let second = generated_wwn().expect("urandom");
        assert_eq!(first.len(), 16);
        assert!(first.starts_with(GENERATED_WWN_PREFIX), "{first}");
        assert!(vireo_conf::nodedev::check_wwn(&first, "wwnn").is_ok());
        assert_ne!(first, second);
    }
}
