//! svc-nodedev owns host devices read from a configurable sysfs root (`[nodedev] sysfs_root`,
//! default `/sys`): the `computer` root, PCI functions (with IOMMU groups and SR-IOV links),
//! net interfaces and disks, listed, described and dumped as libvirt's node device XML; PCI
//! functions detached to vfio-pci (or pci-stub), reattached and reset; SR-IOV VF counts. VF
//! settings, NPIV, SCSI and USB arrive with the rest of issue #8 (UNIMPLEMENTED until then).

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
use crate::core::sriov::Sriov;
use crate::core::sysfs::{Sysfs, cap_types};

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
    };
    let server = ServerBuilder::new().add_service(NodeDeviceServiceServer::new(devices));
    tracing::info!(socket = %context.socket.display(), sysfs = %root.display(), "nodedev serving");
    server.serve(&context.socket, shutdown).await?;
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
        Ok(Response::new(self.sriov.info(&device.name)?))
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
