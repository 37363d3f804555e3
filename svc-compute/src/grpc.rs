//! NodeService: proto in, host facts, proto out.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use vireo_proto::compute::v1 as pb;
use vireo_proto::compute::v1::node_service_server::{NodeService, NodeServiceServer};

use crate::Error;
use crate::core::engines::{EngineFacts, Engines};
use crate::core::host::{CellMemory, Host, NodeFacts};

pub fn node_server(host: Arc<Host>, engines: Arc<Engines>) -> NodeServiceServer<Node> {
    NodeServiceServer::new(Node { host, engines })
}

pub struct Node {
    host: Arc<Host>,
    engines: Arc<Engines>,
}

fn node_info(facts: NodeFacts) -> pb::NodeInfo {
    pb::NodeInfo {
        arch: facts.arch,
        cpu_model_name: facts.cpu_model_name,
        cpus: facts.cpus,
        cpu_mhz: facts.cpu_mhz,
        numa_cells: facts.numa_cells,
        sockets_per_cell: facts.sockets_per_cell,
        cores_per_socket: facts.cores_per_socket,
        threads_per_core: facts.threads_per_core,
        memory_kib: facts.memory_kib,
    }
}

fn free_cell(cell: &CellMemory) -> pb::FreeCell {
    pb::FreeCell {
        cell: cell.cell,
        free_kib: cell.free_kib,
        total_kib: cell.total_kib,
    }
}

fn engine_info(engine: pb::Engine, facts: &EngineFacts) -> pb::EngineInfo {
    pb::EngineInfo {
        engine: engine as i32,
        available: facts.available,
        unavailable_reason: facts.unavailable_reason.clone(),
        binary: facts
            .binary
            .as_ref()
            .map(|path| path.display().to_string())
            .unwrap_or_default(),
        version: facts.version.clone(),
        accelerators: facts.accelerators.iter().map(ToString::to_string).collect(),
        stock_guests_on_kvm: facts.stock_guests_on_kvm,
    }
}

impl Node {
    fn capabilities(&self) -> Result<pb::Capabilities, Error> {
        let node = node_info(self.host.node_facts()?);
        let cells: Vec<pb::FreeCell> = self.host.cells()?.iter().map(free_cell).collect();
        let kvm = &self.engines.kvm;
        let mut caps = pb::Capabilities {
            host_uuid: self.host.uuid(),
            arch: node.arch.clone(),
            cpu_model_name: node.cpu_model_name.clone(),
            kvm: Some(pb::KvmInfo {
                available: kvm.available,
                unavailable_reason: kvm.unavailable_reason.clone(),
                api_version: kvm.api_version,
                module: kvm.module.clone(),
                max_vcpus: kvm.max_vcpus,
                extensions: kvm.extensions.iter().map(ToString::to_string).collect(),
            }),
            engines: vec![
                engine_info(pb::Engine::Vmm, &self.engines.vmm),
                engine_info(pb::Engine::Qemu, &self.engines.qemu),
            ],
            xml: String::new(),
        };
        caps.xml = vireo_conf::capabilities::format(&caps, &node, &cells)?;
        Ok(caps)
    }
}

#[tonic::async_trait]
impl NodeService for Node {
    async fn get_version(
        &self,
        _: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::VersionInfo>, Status> {
        Ok(Response::new(pb::VersionInfo {
            vireo_version: env!("CARGO_PKG_VERSION").to_string(),
            api_version: "v1".to_string(),
            kvm_api_version: self.engines.kvm.api_version,
            qemu_version: self.engines.qemu.version.clone(),
            vmm_version: self.engines.vmm.version.clone(),
        }))
    }

    async fn get_hostname(
        &self,
        _: Request<pb::GetHostnameRequest>,
    ) -> Result<Response<pb::HostnameInfo>, Status> {
        let hostname = nix::unistd::gethostname()
            .map_err(|err| Status::internal(format!("gethostname: {err}")))?
            .to_string_lossy()
            .into_owned();
        Ok(Response::new(pb::HostnameInfo { hostname }))
    }

    async fn get_node_info(
        &self,
        _: Request<pb::GetNodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfo>, Status> {
        let facts = self.host.node_facts().map_err(Error::from)?;
        Ok(Response::new(node_info(facts)))
    }

    async fn get_capabilities(
        &self,
        _: Request<pb::GetCapabilitiesRequest>,
    ) -> Result<Response<pb::Capabilities>, Status> {
        Ok(Response::new(self.capabilities()?))
    }

    async fn get_free_cells(
        &self,
        request: Request<pb::GetFreeCellsRequest>,
    ) -> Result<Response<pb::FreeCells>, Status> {
        let wanted = request.into_inner().cell;
        let cells = self.host.cells().map_err(Error::from)?;
        let total_free_kib = cells.iter().map(|cell| cell.free_kib).sum();
        let cells: Vec<pb::FreeCell> = match wanted {
            None => cells.iter().map(free_cell).collect(),
            Some(wanted) => {
                let cell = cells
                    .iter()
                    .find(|cell| cell.cell == wanted)
                    .ok_or_else(|| Error::InvalidField {
                        field: "cell",
                        message: format!(
                            "NUMA cell {wanted} does not exist; this host has cells {}",
                            cells
                                .iter()
                                .map(|cell| cell.cell.to_string())
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                    })?;
                vec![free_cell(cell)]
            }
        };
        Ok(Response::new(pb::FreeCells {
            cells,
            total_free_kib,
        }))
    }

    async fn get_sysinfo(
        &self,
        _: Request<pb::GetSysinfoRequest>,
    ) -> Result<Response<pb::Sysinfo>, Status> {
        let xml = vireo_conf::sysinfo::format(&self.host.smbios()).map_err(Error::from)?;
        Ok(Response::new(pb::Sysinfo { xml }))
    }

    async fn get_node_memory_stats(
        &self,
        _: Request<pb::GetNodeMemoryStatsRequest>,
    ) -> Result<Response<pb::NodeMemoryStats>, Status> {
        let stats = self.host.memory_stats().map_err(Error::from)?;
        Ok(Response::new(pb::NodeMemoryStats {
            total_kib: stats.total_kib,
            free_kib: stats.free_kib,
            buffers_kib: stats.buffers_kib,
            cached_kib: stats.cached_kib,
        }))
    }

    async fn get_node_cpu_stats(
        &self,
        request: Request<pb::GetNodeCpuStatsRequest>,
    ) -> Result<Response<pb::NodeCpuStats>, Status> {
        let cpu = request.into_inner().cpu;
        let times = self.host.cpu_times(cpu).map_err(|err| match cpu {
            Some(cpu) => Error::InvalidField {
                field: "cpu",
                message: format!("CPU {cpu} does not exist: {err}"),
            },
            None => Error::Host(err),
        })?;
        Ok(Response::new(pb::NodeCpuStats {
            user_ns: times.user_ns,
            system_ns: times.system_ns,
            idle_ns: times.idle_ns,
            iowait_ns: times.iowait_ns,
        }))
    }
}
