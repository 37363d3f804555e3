//! svc-nodedev owns host devices read from a configurable sysfs root (`[nodedev] sysfs_root`,
//! default `/sys`): the `computer` root, PCI functions (with IOMMU groups and SR-IOV links),
//! net interfaces, disks, SCSI hosts (Fibre Channel, NPIV) and USB devices, listed, described
//! and dumped as libvirt's node device XML; PCI functions detached to vfio-pci (or pci-stub),
//! reattached and reset; SR-IOV VF counts and VF settings (netlink); NPIV vHBAs created and
//! destroyed.

pub mod core;

use std::path::PathBuf;

use serde::Deserialize;
use tonic::{Request, Response, Status};
use vireo_proto::common::v1::{ObjectRef, object_ref::Key};
use vireo_proto::nodedev::v1 as pb;
use vireo_proto::nodedev::v1::node_device_service_server::{
    NodeDeviceService, NodeDeviceServiceServer,
};
use vireo_runtime::{BoxError, CancellationToken, ServerBuilder, ServiceContext};

use crate::core::assign::Assigner;
use crate::core::npiv::Npiv;
use crate::core::sriov::Sriov;
use crate::core::sysfs::{Sysfs, cap_types};
use crate::core::vf_config;

/// The `[nodedev]` section of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where sysfs is read (tests point this at a tree of their own).
    pub sysfs_root: Option<PathBuf>,
}

/// Serves this service's API on `context.socket` until `shutdown` is cancelled.
pub async fn serve(context: ServiceContext, shutdown: CancellationToken) -> Result<(), BoxError> {
    context.prepare_state_dir()?;
    let settings: Settings = context.section()?;
    let root = settings.sysfs_root.unwrap_or_else(|| PathBuf::from("/sys"));
    let devices = Devices {
        sysfs: Sysfs::new(&root),
        assigner: std::sync::Arc::new(Assigner::new(&root)),
        sriov: std::sync::Arc::new(Sriov::new(&root)),
        npiv: std::sync::Arc::new(Npiv::new(&root)),
    };
    let server = ServerBuilder::new().add_service(NodeDeviceServiceServer::new(devices));
    tracing::info!(socket = %context.socket.display(), sysfs = %root.display(), "nodedev serving");
    server.serve(&context, shutdown).await?;
    Ok(())
}

/// Runs a change on a blocking thread: it writes sysfs and waits for the kernel to act.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Status::internal(err.to_string()))?
}

fn by_name(name: &str) -> ObjectRef {
    ObjectRef {
        key: Some(Key::Name(name.to_string())),
    }
}

struct Devices {
    sysfs: Sysfs,
    assigner: std::sync::Arc<Assigner>,
    sriov: std::sync::Arc<Sriov>,
    npiv: std::sync::Arc<Npiv>,
}

/// A VF's sysfs facts with the settings its PF's driver reported.
fn with_settings(vf: &mut pb::VirtualFunction, settings: &pb::VirtualFunction) {
    *vf = pb::VirtualFunction {
        index: vf.index,
        name: std::mem::take(&mut vf.name),
        address: vf.address.take(),
        driver: std::mem::take(&mut vf.driver),
        interface: std::mem::take(&mut vf.interface),
        ..settings.clone()
    };
}

/// The vHBA a typed node device asks for: its parent and its fc_host's WWNs.
fn vhba_of(device: pb::NodeDevice) -> Result<pb::VhbaSpec, Status> {
    use pb::vhba_spec::ParentRef;
    let fc = device
        .caps
        .iter()
        .find_map(|cap| match &cap.cap {
            Some(pb::capability::Cap::ScsiHost(host)) => host.fc_host.clone(),
            _ => None,
        })
        .ok_or_else(|| {
            Status::invalid_argument(
                "definition.caps: a vHBA is a scsi_host capability with an fc_host",
            )
        })?;
    let parent_ref = if !device.parent.is_empty() {
        ParentRef::Parent(device.parent)
    } else if !device.parent_wwnn.is_empty() || !device.parent_wwpn.is_empty() {
        ParentRef::ParentWwns(pb::ParentWwns {
            wwnn: device.parent_wwnn,
            wwpn: device.parent_wwpn,
        })
    } else {
        ParentRef::ParentFabricWwn(device.parent_fabric_wwn)
    };
    Ok(pb::VhbaSpec {
        parent_ref: Some(parent_ref),
        wwnn: fc.wwnn,
        wwpn: fc.wwpn,
    })
}

impl Devices {
    /// The device `reference` names (by name; `any` too), read now.
    fn find(&self, reference: Option<ObjectRef>) -> Result<pb::NodeDevice, Status> {
        let name = match reference.and_then(|r| r.key) {
            Some(Key::Name(name) | Key::Any(name)) => name,
            _ => return Err(Status::invalid_argument("device: name the device")),
        };
        self.sysfs
            .devices()
            .into_iter()
            .find(|device| device.name == name)
            .ok_or_else(|| Status::not_found(format!("no node device with matching name '{name}'")))
    }
}

#[tonic::async_trait]
impl NodeDeviceService for Devices {
    async fn list_node_devices(
        &self,
        request: Request<pb::ListNodeDevicesRequest>,
    ) -> Result<Response<pb::ListNodeDevicesResponse>, Status> {
        let wanted = request.into_inner().caps;
        for cap in &wanted {
            vireo_runtime::fields::known::<pb::CapabilityType>(*cap, "caps")?;
        }
        let devices = self
            .sysfs
            .devices()
            .into_iter()
            .map(|device| pb::NodeDeviceSummary {
                caps: cap_types(&device).into_iter().map(|c| c as i32).collect(),
                name: device.name,
                parent: device.parent,
                driver: device.driver,
            })
            .filter(|summary| wanted.is_empty() || summary.caps.iter().any(|c| wanted.contains(c)))
            .collect();
        Ok(Response::new(pb::ListNodeDevicesResponse { devices }))
    }

    async fn get_node_device(
        &self,
        request: Request<pb::GetNodeDeviceRequest>,
    ) -> Result<Response<pb::NodeDevice>, Status> {
        Ok(Response::new(self.find(request.into_inner().device)?))
    }

    async fn get_node_device_xml(
        &self,
        request: Request<pb::GetNodeDeviceXmlRequest>,
    ) -> Result<Response<pb::NodeDeviceXml>, Status> {
        let device = self.find(request.into_inner().device)?;
        let xml = vireo_conf::nodedev::format(&device)
            .map_err(|err| Status::internal(format!("formatting XML: {err}")))?;
        Ok(Response::new(pb::NodeDeviceXml { xml }))
    }

    async fn detach_node_device(
        &self,
        request: Request<pb::DetachNodeDeviceRequest>,
    ) -> Result<Response<pb::NodeDevice>, Status> {
        let request = request.into_inner();
        let device = self.find(request.device)?;
        let name = device.name.clone();
        let assigner = self.assigner.clone();
        blocking(move || assigner.detach(&name, &request.driver)).await?;
        Ok(Response::new(self.find(Some(by_name(&device.name)))?))
    }

    async fn reattach_node_device(
        &self,
        request: Request<pb::ReattachNodeDeviceRequest>,
    ) -> Result<Response<pb::NodeDevice>, Status> {
        let device = self.find(request.into_inner().device)?;
        let name = device.name.clone();
        let assigner = self.assigner.clone();
        blocking(move || assigner.reattach(&name)).await?;
        Ok(Response::new(self.find(Some(by_name(&device.name)))?))
    }

    async fn reset_node_device(
        &self,
        request: Request<pb::ResetNodeDeviceRequest>,
    ) -> Result<Response<vireo_proto::common::v1::Empty>, Status> {
        let device = self.find(request.into_inner().device)?;
        self.assigner.reset(&device.name)?;
        Ok(Response::new(vireo_proto::common::v1::Empty {}))
    }

    async fn set_sriov_vf_count(
        &self,
        request: Request<pb::SetSriovVfCountRequest>,
    ) -> Result<Response<pb::SriovInfo>, Status> {
        let request = request.into_inner();
        let device = self.find(request.device)?;
        let sriov = self.sriov.clone();
        let info = blocking(move || sriov.set_count(&device.name, request.num_vfs)).await?;
        Ok(Response::new(info))
    }

    async fn list_virtual_functions(
        &self,
        request: Request<pb::ListVirtualFunctionsRequest>,
    ) -> Result<Response<pb::SriovInfo>, Status> {
        let device = self.find(request.into_inner().device)?;
        let mut info = self.sriov.info(&device.name)?;
        // The settings come from the PF's driver; one that reports none leaves them unset.
        if !info.pf_interface.is_empty()
            && let Ok((_, settings)) = vf_config::read(&info.pf_interface).await
        {
            for vf in &mut info.vfs {
                if let Some(set) = settings.iter().find(|s| s.index == vf.index) {
                    with_settings(vf, set);
                }
            }
        }
        Ok(Response::new(info))
    }

    async fn set_vf_config(
        &self,
        request: Request<pb::SetVfConfigRequest>,
    ) -> Result<Response<pb::VirtualFunction>, Status> {
        let request = request.into_inner();
        vf_config::check(&request)?;
        let device = self.find(request.device.clone())?;
        let interface = self
            .sriov
            .vf_settings_interface(&device.name, request.vf_index)?;
        let (index, settings) = vf_config::read(&interface).await?;
        let current = settings
            .iter()
            .find(|s| s.index == request.vf_index)
            .cloned()
            .unwrap_or_default();
        vf_config::apply(&interface, vf_config::message(index, &request, &current)?).await?;
        let (_, settings) = vf_config::read(&interface).await?;
        let mut vf = self
            .sriov
            .info(&device.name)?
            .vfs
            .into_iter()
            .find(|vf| vf.index == request.vf_index)
            .unwrap_or_default();
        if let Some(set) = settings.iter().find(|s| s.index == request.vf_index) {
            with_settings(&mut vf, set);
        }
        Ok(Response::new(vf))
    }

    async fn create_node_device(
        &self,
        request: Request<pb::CreateNodeDeviceRequest>,
    ) -> Result<Response<pb::NodeDevice>, Status> {
        use pb::create_node_device_request::Source;
        let spec = match request.into_inner().source {
            Some(Source::Xml(xml)) => vireo_conf::nodedev::parse_vhba(&xml)
                .map_err(|err| Status::invalid_argument(err.to_string()))?,
            Some(Source::Vhba(spec)) => spec,
            Some(Source::Definition(device)) => vhba_of(device)?,
            None => {
                return Err(Status::invalid_argument(
                    "source: give the device as XML, a definition or a vHBA",
                ));
            }
        };
        let npiv = self.npiv.clone();
        let name = blocking(move || npiv.create(spec)).await?;
        Ok(Response::new(self.find(Some(by_name(&name)))?))
    }

    async fn destroy_node_device(
        &self,
        request: Request<pb::DestroyNodeDeviceRequest>,
    ) -> Result<Response<vireo_proto::common::v1::Empty>, Status> {
        let device = self.find(request.into_inner().device)?;
        let npiv = self.npiv.clone();
        blocking(move || npiv.destroy(&device.name, &device.parent)).await?;
        Ok(Response::new(vireo_proto::common::v1::Empty {}))
    }

    async fn get_node_device_info(
        &self,
        request: Request<pb::GetNodeDeviceInfoRequest>,
    ) -> Result<Response<pb::NodeDeviceInfo>, Status> {
        let device = self.find(request.into_inner().device)?;
        Ok(Response::new(pb::NodeDeviceInfo {
            caps: cap_types(&device).into_iter().map(|c| c as i32).collect(),
            detached: matches!(device.driver.as_str(), "vfio-pci" | "pci-stub"),
            name: device.name,
            parent: device.parent,
            active: true,
            persistent: false,
            autostart: false,
            driver: device.driver,
        }))
    }
}
