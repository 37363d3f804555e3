//! DomainService: proto in, the domain table, proto out. Snapshots, core dumps and domain
//! statistics beyond the per-device calls answer UNIMPLEMENTED (named by vireo-runtime).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};
use vireo_proto::common::v1::{Empty, ObjectRef};
use vireo_proto::compute::v1 as pb;
use vireo_proto::compute::v1::domain_service_server::{DomainService, DomainServiceServer};

use crate::Error;
use crate::core::domains::Manager;
use crate::core::engine::qemu::Hotplug;
use crate::core::process;

pub fn domain_server(manager: Arc<Manager>) -> DomainServiceServer<Domains> {
    DomainServiceServer::new(Domains { manager })
}

pub struct Domains {
    manager: Arc<Manager>,
}

fn definition_from(
    xml: Option<String>,
    definition: Option<pb::DomainDefinition>,
) -> Result<pb::DomainDefinition, Error> {
    match (xml, definition) {
        (Some(xml), _) => Ok(vireo_conf::domain::parse(&xml)?),
        (None, Some(def)) => Ok(def),
        (None, None) => Err(Error::InvalidField {
            field: "source",
            message: "give the domain as XML or as a definition".into(),
        }),
    }
}

fn one<T: Send + 'static>(value: T) -> Response<BoxStream<T>> {
    Response::new(Box::pin(tokio_stream::once(Ok(value))))
}

fn empty() -> Response<Empty> {
    Response::new(Empty {})
}

/// Where a change applies, as virsh decides: --config, --live, both, or the current state.
#[derive(Debug, Clone, Copy)]
struct Scope {
    config: bool,
    live: bool,
}

fn scope_of(scope: Option<&pb::ModifyScope>, persistent: bool, running: bool) -> Scope {
    let scope = scope.cloned().unwrap_or_default();
    if persistent {
        return Scope {
            config: true,
            live: running,
        };
    }
    if scope.config || scope.live {
        return Scope {
            config: scope.config,
            live: scope.live,
        };
    }
    Scope {
        config: !running,
        live: running,
    }
}

impl Domains {
    async fn running(&self, domain: Option<&ObjectRef>) -> Result<bool, Error> {
        Ok(self.manager.get(domain, true).await?.live.is_some())
    }

    fn live_change_unsupported(&self, what: &str, engine: i32) -> Error {
        let engine = if engine == pb::Engine::Vmm as i32 {
            "vmm"
        } else {
            "qemu"
        };
        Error::Unsupported(format!(
            "{what} on a running guest is not supported by the {engine} engine yet; use --config to change the persistent definition"
        ))
    }

    /// Adds or removes a device in the persistent definition, refusing live changes by name.
    async fn change_device(
        &self,
        domain: Option<&ObjectRef>,
        scope: Option<&pb::ModifyScope>,
        persistent: bool,
        what: &str,
        hotplug: Option<Hotplug>,
        change: impl Fn(&mut pb::DomainDevices) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let current = self.manager.get(domain, true).await?;
        let scope = scope_of(scope, persistent, current.live.is_some());
        if scope.live {
            if current.live.is_none() {
                return Err(Error::State(format!(
                    "domain '{}' is not running",
                    current.summary.map(|s| s.name).unwrap_or_default()
                )));
            }
            let engine = current.summary.as_ref().map_or(0, |s| s.engine);
            let Some(mut hotplug) = hotplug.filter(|_| engine == pb::Engine::Qemu as i32) else {
                return Err(self.live_change_unsupported(what, engine));
            };
            if let Hotplug::AddDisk(disk) = &mut hotplug {
                self.manager.storage().resolve_disk(disk).await?;
            }
            // Check the persistent change first, so a refused one leaves the guest untouched.
            if scope.config {
                let mut check = current.persistent.clone().unwrap_or_default();
                change(check.devices.get_or_insert_default())?;
            }
            self.manager
                .with_run(domain, async |run| {
                    let mut devices = run.live.devices.clone().unwrap_or_default();
                    change(&mut devices)?;
                    // The running definition is held to the same rules as a persistent one.
                    let mut check = run.live.clone();
                    check.devices = Some(devices.clone());
                    vireo_conf::domain::validate(&check)?;
                    let crate::core::engine::Control::Qemu(qmp) = run.control else {
                        return Err(self.live_change_unsupported(what, engine));
                    };
                    // A disk may be named by its source path; QEMU knows it by target.
                    let hotplug = match hotplug {
                        Hotplug::RemoveDisk(name) => Hotplug::RemoveDisk(
                            run.live
                                .devices
                                .iter()
                                .flat_map(|d| &d.disks)
                                .find(|d| {
                                    crate::core::engine::disk_source(d) == Some(name.as_str())
                                })
                                .and_then(|d| d.target.as_ref().map(|t| t.dev.clone()))
                                .unwrap_or(name),
                        ),
                        other => other,
                    };
                    match hotplug {
                        Hotplug::AddInterface(_) => {
                            // The interface the change added is the last; give it a host end.
                            let index = devices.interfaces.len() - 1;
                            let interface = &mut devices.interfaces[index];
                            let taken: Vec<String> = run
                                .live
                                .devices
                                .iter()
                                .flat_map(|d| &d.interfaces)
                                .map(|i| i.alias.clone())
                                .collect();
                            let free = (0..)
                                .map(|n| format!("net{n}"))
                                .find(|alias| !taken.contains(alias))
                                .unwrap_or_default();
                            interface.alias.clone_from(&free);
                            if interface.target_dev.is_empty()
                                && matches!(
                                    interface.r#type(),
                                    pb::InterfaceType::Bridge | pb::InterfaceType::Network
                                )
                            {
                                interface.target_dev = format!("vireo{}h{}", run.id, &free[3..]);
                            }
                            let single = pb::DomainDefinition {
                                name: run.live.name.clone(),
                                uuid: run.live.uuid.clone(),
                                devices: Some(pb::DomainDevices {
                                    interfaces: vec![interface.clone()],
                                    ..Default::default()
                                }),
                                ..Default::default()
                            };
                            let taps = crate::core::network::prepare_taps(
                                &single,
                                run.id,
                                self.manager.networks(),
                            )
                            .await?;
                            let tap = taps.first().cloned().unwrap_or_default();
                            if let Err(err) =
                                crate::core::engine::qemu::plug_interface(qmp, interface, &tap)
                                    .await
                            {
                                crate::core::network::remove_taps(&taps).await;
                                return Err(err);
                            }
                            if !tap.is_empty() {
                                interface.target_dev.clone_from(&tap);
                                run.taps.push(tap);
                            }
                        }
                        Hotplug::RemoveInterface(mac) => {
                            let gone = run
                                .live
                                .devices
                                .iter()
                                .flat_map(|d| &d.interfaces)
                                .find(|i| i.mac == mac)
                                .cloned()
                                .ok_or_else(|| {
                                    Error::NotFound(format!("no interface with MAC {mac}"))
                                })?;
                            crate::core::engine::qemu::unplug_interface(qmp, &gone.alias).await?;
                            if run.taps.contains(&gone.target_dev) {
                                crate::core::network::remove_taps(std::slice::from_ref(
                                    &gone.target_dev,
                                ))
                                .await;
                                run.taps.retain(|t| *t != gone.target_dev);
                            }
                        }
                        Hotplug::AddHostdev(_) => {
                            // The host device the change added is the last.
                            let index = devices.hostdevs.len() - 1;
                            let taken: Vec<String> = run
                                .live
                                .devices
                                .iter()
                                .flat_map(|d| &d.hostdevs)
                                .map(|h| h.alias.clone())
                                .collect();
                            let hostdev = &mut devices.hostdevs[index];
                            hostdev.alias = (0..)
                                .map(|n| format!("hostdev{n}"))
                                .find(|alias| !taken.contains(alias))
                                .unwrap_or_default();
                            let single = pb::DomainDefinition {
                                name: run.live.name.clone(),
                                uuid: run.live.uuid.clone(),
                                devices: Some(pb::DomainDevices {
                                    hostdevs: vec![hostdev.clone()],
                                    ..Default::default()
                                }),
                                ..Default::default()
                            };
                            crate::core::hostdev::check_not_in_use(
                                &single,
                                run.others_with_hostdevs.iter(),
                            )?;
                            let host_devices = self.manager.host_devices();
                            let paths = host_devices.prepare(&single).await?;
                            let path = paths.first().cloned().unwrap_or_default();
                            if let Err(err) =
                                crate::core::engine::qemu::plug_hostdev(qmp, hostdev, &path).await
                            {
                                host_devices.release(&single).await;
                                return Err(err);
                            }
                        }
                        Hotplug::RemoveHostdev(address) => {
                            let gone = crate::core::hostdev::pci_hostdevs(run.live)
                                .find(|(_, pci)| **pci == address)
                                .map(|(hostdev, _)| hostdev.clone())
                                .ok_or_else(|| {
                                    Error::NotFound(format!(
                                        "no host device {}",
                                        crate::core::hostdev::host_address(&address)
                                    ))
                                })?;
                            crate::core::engine::qemu::unplug_hostdev(qmp, &gone.alias).await?;
                            if gone.managed {
                                self.manager.host_devices().reattach(&address).await;
                            }
                        }
                        disk => crate::core::engine::qemu::hotplug(qmp, &disk).await?,
                    }
                    run.live.devices = Some(devices);
                    Ok(())
                })
                .await?;
            self.manager.save_status(domain).await;
        }
        if scope.config {
            self.manager
                .update_persistent(domain, |def| change(def.devices.get_or_insert_default()))
                .await?;
        }
        Ok(())
    }
}

fn info_of(domain: &pb::Domain) -> pb::DomainInfo {
    let summary = domain.summary.clone().unwrap_or_default();
    let def = domain
        .live
        .as_ref()
        .or(domain.persistent.as_ref())
        .cloned()
        .unwrap_or_default();
    let vcpu = def.vcpu.clone().unwrap_or_default();
    pb::DomainInfo {
        id: summary.id,
        name: summary.name,
        uuid: summary.uuid,
        os_type: pb::OsType::Hvm as i32,
        state: summary.state,
        reason: summary.reason,
        cpus: vcpu.current.unwrap_or(vcpu.count),
        cpu_time_ns: domain.cpu_time_ns,
        max_memory_kib: def.memory_kib,
        used_memory_kib: def.current_memory_kib,
        persistent: summary.persistent,
        autostart: summary.autostart,
        managed_save: domain.has_managed_save,
        security_model: "none".into(),
        security_doi: "0".into(),
        security_label: String::new(),
        engine: summary.engine,
    }
}

#[tonic::async_trait]
impl DomainService for Domains {
    async fn list_domains(
        &self,
        request: Request<pb::ListDomainsRequest>,
    ) -> Result<Response<pb::ListDomainsResponse>, Status> {
        let domains = self.manager.list(request.get_ref()).await;
        Ok(Response::new(pb::ListDomainsResponse { domains }))
    }

    async fn lookup_domain(
        &self,
        request: Request<pb::LookupDomainRequest>,
    ) -> Result<Response<pb::DomainSummary>, Status> {
        let domain = self
            .manager
            .get(request.get_ref().domain.as_ref(), true)
            .await?;
        Ok(Response::new(domain.summary.unwrap_or_default()))
    }

    async fn define_domain(
        &self,
        request: Request<pb::DefineDomainRequest>,
    ) -> Result<Response<pb::Domain>, Status> {
        use pb::define_domain_request::Source;
        let (xml, def) = match request.into_inner().source {
            Some(Source::Xml(xml)) => (Some(xml), None),
            Some(Source::Definition(def)) => (None, Some(def)),
            None => (None, None),
        };
        let def = definition_from(xml, def)?;
        Ok(Response::new(self.manager.define(def).await?))
    }

    async fn undefine_domain(
        &self,
        request: Request<pb::UndefineDomainRequest>,
    ) -> Result<Response<pb::UndefineDomainResponse>, Status> {
        let request = request.into_inner();
        if request.remove_all_storage || !request.storage.is_empty() || request.wipe_storage {
            return Err(Error::Unsupported(
                "removing storage with undefine needs svc-storage (issue #6); nothing was undefined".into(),
            )
            .into());
        }
        self.manager
            .undefine(request.domain.as_ref(), request.snapshots_metadata)
            .await?;
        Ok(Response::new(pb::UndefineDomainResponse {
            removed_volumes: Vec::new(),
        }))
    }

    async fn get_domain(
        &self,
        request: Request<pb::GetDomainRequest>,
    ) -> Result<Response<pb::Domain>, Status> {
        refuse_secrets_to_readonly(&request, request.get_ref().security_info)?;
        Ok(Response::new(
            self.manager
                .get(
                    request.get_ref().domain.as_ref(),
                    request.get_ref().security_info,
                )
                .await?,
        ))
    }

    async fn get_domain_xml(
        &self,
        request: Request<pb::GetDomainXmlRequest>,
    ) -> Result<Response<pb::DomainXml>, Status> {
        refuse_secrets_to_readonly(&request, request.get_ref().security_info)?;
        let request = request.into_inner();
        let xml = self
            .manager
            .xml(
                request.domain.as_ref(),
                request.inactive,
                request.security_info,
            )
            .await?;
        Ok(Response::new(pb::DomainXml { xml }))
    }

    async fn set_autostart(
        &self,
        request: Request<pb::SetAutostartRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        self.manager
            .set_autostart(request.domain.as_ref(), request.autostart)
            .await?;
        Ok(empty())
    }

    async fn create_domain(
        &self,
        request: Request<pb::CreateDomainRequest>,
    ) -> Result<Response<BoxStream<pb::CreateDomainUpdate>>, Status> {
        use pb::create_domain_request::Source;
        let request = request.into_inner();
        if request.autodestroy {
            return Err(Error::Unsupported("--autodestroy is not supported yet".into()).into());
        }
        let (xml, def) = match request.source {
            Some(Source::Xml(xml)) => (Some(xml), None),
            Some(Source::Definition(def)) => (None, Some(def)),
            None => (None, None),
        };
        let def = definition_from(xml, def)?;
        let domain = self.manager.create(def, request.paused).await?;
        Ok(one(pb::CreateDomainUpdate {
            update: Some(pb::create_domain_update::Update::Done(domain)),
        }))
    }

    async fn start_domain(
        &self,
        request: Request<pb::StartDomainRequest>,
    ) -> Result<Response<BoxStream<pb::StartDomainUpdate>>, Status> {
        let request = request.into_inner();
        if request.autodestroy {
            return Err(Error::Unsupported("--autodestroy is not supported yet".into()).into());
        }
        let domain = self
            .manager
            .start(request.domain.as_ref(), request.paused, request.force_boot)
            .await?;
        Ok(one(pb::StartDomainUpdate {
            update: Some(pb::start_domain_update::Update::Done(domain)),
        }))
    }

    async fn shutdown_domain(
        &self,
        request: Request<pb::ShutdownDomainRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        check_modes(&request.modes)?;
        self.manager
            .shutdown(request.domain.as_ref(), false)
            .await?;
        Ok(empty())
    }

    async fn reboot_domain(
        &self,
        request: Request<pb::RebootDomainRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        check_modes(&request.modes)?;
        self.manager.shutdown(request.domain.as_ref(), true).await?;
        Ok(empty())
    }

    async fn reset_domain(
        &self,
        request: Request<pb::ResetDomainRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.manager
            .reset(request.get_ref().domain.as_ref())
            .await?;
        Ok(empty())
    }

    async fn destroy_domain(
        &self,
        request: Request<pb::DestroyDomainRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        self.manager
            .destroy(request.domain.as_ref(), request.graceful)
            .await?;
        Ok(empty())
    }

    async fn suspend_domain(
        &self,
        request: Request<pb::SuspendDomainRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.manager
            .suspend(request.get_ref().domain.as_ref(), true)
            .await?;
        Ok(empty())
    }

    async fn resume_domain(
        &self,
        request: Request<pb::ResumeDomainRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.manager
            .suspend(request.get_ref().domain.as_ref(), false)
            .await?;
        Ok(empty())
    }

    async fn get_domain_info(
        &self,
        request: Request<pb::GetDomainInfoRequest>,
    ) -> Result<Response<pb::DomainInfo>, Status> {
        let domain = self
            .manager
            .get(request.get_ref().domain.as_ref(), true)
            .await?;
        Ok(Response::new(info_of(&domain)))
    }

    async fn get_domain_state(
        &self,
        request: Request<pb::GetDomainStateRequest>,
    ) -> Result<Response<pb::DomainStateInfo>, Status> {
        let summary = self
            .manager
            .get(request.get_ref().domain.as_ref(), true)
            .await?
            .summary
            .unwrap_or_default();
        Ok(Response::new(pb::DomainStateInfo {
            state: summary.state,
            reason: summary.reason,
        }))
    }

    async fn get_vcpu_info(
        &self,
        request: Request<pb::GetVcpuInfoRequest>,
    ) -> Result<Response<pb::VcpuInfoList>, Status> {
        let vcpus = self
            .manager
            .with_run(request.get_ref().domain.as_ref(), async |run| {
                Ok(process::vcpu_threads(run.pid)
                    .into_iter()
                    .map(|thread| {
                        let (time, cpu) =
                            process::thread_cpu(run.pid, thread.tid).unwrap_or((0, 0));
                        pb::VcpuInfo {
                            number: thread.vcpu,
                            state: pb::VcpuState::Running as i32,
                            cpu: i32::try_from(cpu).unwrap_or(-1),
                            cpu_time_ns: time,
                            affinity: process::affinity(thread.tid).unwrap_or_default(),
                        }
                    })
                    .collect())
            })
            .await?;
        Ok(Response::new(pb::VcpuInfoList { vcpus }))
    }

    async fn list_block_devices(
        &self,
        request: Request<pb::ListBlockDevicesRequest>,
    ) -> Result<Response<pb::BlockDeviceList>, Status> {
        let request = request.into_inner();
        let domain = self.manager.get(request.domain.as_ref(), true).await?;
        let def = pick(&domain, request.inactive);
        let devices = def
            .devices
            .iter()
            .flat_map(|d| &d.disks)
            .map(|disk| {
                let source = disk.source.clone().unwrap_or_default();
                pb::BlockDeviceEntry {
                    r#type: disk.r#type,
                    device: disk.device,
                    target: disk
                        .target
                        .as_ref()
                        .map(|t| t.dev.clone())
                        .unwrap_or_default(),
                    source: match disk.r#type() {
                        pb::DiskType::Block => source.dev,
                        pb::DiskType::Volume => format!("{}/{}", source.pool, source.volume),
                        _ => source.file,
                    },
                }
            })
            .collect();
        Ok(Response::new(pb::BlockDeviceList { devices }))
    }

    async fn list_interfaces(
        &self,
        request: Request<pb::ListInterfacesRequest>,
    ) -> Result<Response<pb::InterfaceList>, Status> {
        let request = request.into_inner();
        let domain = self.manager.get(request.domain.as_ref(), true).await?;
        let def = pick(&domain, request.inactive);
        let interfaces = def
            .devices
            .iter()
            .flat_map(|d| &d.interfaces)
            .map(|interface| {
                let source = interface.source.clone().unwrap_or_default();
                pb::InterfaceListEntry {
                    target_dev: interface.target_dev.clone(),
                    r#type: interface.r#type,
                    source: match interface.r#type() {
                        pb::InterfaceType::Network => source.network,
                        pb::InterfaceType::Bridge => source.bridge,
                        pb::InterfaceType::Direct => source.dev,
                        _ => String::new(),
                    },
                    model: interface.model,
                    mac: interface.mac.clone(),
                }
            })
            .collect();
        Ok(Response::new(pb::InterfaceList { interfaces }))
    }

    async fn pin_vcpu(
        &self,
        request: Request<pb::PinVcpuRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        let domain = request.domain.as_ref();
        if request.cpus.is_empty() {
            return Err(Error::InvalidField {
                field: "cpus",
                message: "name at least one host CPU".into(),
            }
            .into());
        }
        let host_cpus =
            u32::try_from(std::thread::available_parallelism().map_or(1, |n| n.get())).unwrap_or(1);
        if let Some(cpu) = request.cpus.iter().find(|cpu| **cpu >= host_cpus) {
            return Err(Error::InvalidField {
                field: "cpus",
                message: format!("host CPU {cpu} does not exist (this host has {host_cpus})"),
            }
            .into());
        }
        let scope = scope_of(request.scope.as_ref(), false, self.running(domain).await?);
        let cpuset = request
            .cpus
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if scope.live {
            let vcpu = request.vcpu;
            let cpus = request.cpus.clone();
            let set = cpuset.clone();
            self.manager
                .with_run(domain, async |run| {
                    let thread = process::vcpu_threads(run.pid)
                        .into_iter()
                        .find(|t| t.vcpu == vcpu)
                        .ok_or_else(|| Error::InvalidField {
                            field: "vcpu",
                            message: format!("vCPU {vcpu} does not exist in the running guest"),
                        })?;
                    process::set_affinity(thread.tid, &cpus)
                        .map_err(Error::io(format!("pinning vCPU {vcpu}")))?;
                    set_pin(run.live, vcpu, &set);
                    Ok(())
                })
                .await?;
            self.manager.save_status(domain).await;
        }
        if scope.config {
            let vcpu = request.vcpu;
            self.manager
                .update_persistent(domain, |def| {
                    set_pin(def, vcpu, &cpuset);
                    Ok(())
                })
                .await?;
        }
        Ok(empty())
    }

    async fn set_vcpus(
        &self,
        request: Request<pb::SetVcpusRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        let domain = request.domain.as_ref();
        let scope = scope_of(request.scope.as_ref(), false, self.running(domain).await?);
        if request.guest {
            return Err(Error::Unsupported(
                "setvcpus --guest needs a guest agent, which Vireo does not talk to yet".into(),
            )
            .into());
        }
        let count = request.count;
        let maximum = request.maximum;
        if scope.live {
            if maximum {
                return Err(Error::InvalidField {
                    field: "maximum",
                    message:
                        "the maximum vCPU count changes only the persistent definition (--config)"
                            .into(),
                }
                .into());
            }
            self.manager
                .with_run(domain, async |run| {
                    let crate::core::engine::Control::Qemu(qmp) = run.control else {
                        return Err(self.live_change_unsupported(
                            "changing the vCPU count (CPU hotplug)",
                            run.engine as i32,
                        ));
                    };
                    let vcpu = run.live.vcpu.get_or_insert_default();
                    if count == 0 || count > vcpu.count {
                        return Err(Error::InvalidField {
                            field: "count",
                            message: format!("must be 1-{} (the domain's maximum)", vcpu.count),
                        });
                    }
                    crate::core::engine::qemu::set_vcpus(qmp, count).await?;
                    vcpu.current = (count != vcpu.count).then_some(count);
                    Ok(())
                })
                .await?;
            self.manager.save_status(domain).await;
            if !scope.config {
                return Ok(empty());
            }
        }
        self.manager
            .update_persistent(domain, |def| {
                let vcpu = def.vcpu.get_or_insert_default();
                if maximum {
                    vcpu.count = count;
                    if vcpu.current.is_some_and(|c| c > count) {
                        vcpu.current = Some(count);
                    }
                } else if count > vcpu.count {
                    return Err(Error::InvalidField {
                        field: "count",
                        message: format!(
                            "{count} is more than the maximum of {} vCPUs (use --maximum to raise it)",
                            vcpu.count
                        ),
                    });
                } else {
                    vcpu.current = (count != vcpu.count).then_some(count);
                }
                Ok(())
            })
            .await?;
        Ok(empty())
    }

    async fn set_memory(
        &self,
        request: Request<pb::SetMemoryRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        let domain = request.domain.as_ref();
        let kib = request.memory_kib;
        if kib < 1024 {
            return Err(Error::InvalidField {
                field: "memory_kib",
                message: format!("{kib} KiB is less than the 1 MiB minimum"),
            }
            .into());
        }
        let scope = scope_of(request.scope.as_ref(), false, self.running(domain).await?);
        if scope.live {
            self.manager
                .with_run(domain, async |run| {
                    if kib > run.live.memory_kib {
                        return Err(Error::InvalidField {
                            field: "memory_kib",
                            message: format!(
                                "{kib} KiB is more than the domain's maximum of {} KiB",
                                run.live.memory_kib
                            ),
                        });
                    }
                    let balloon = run
                        .live
                        .devices
                        .as_ref()
                        .and_then(|d| d.memballoon.as_ref());
                    if balloon.is_none_or(|b| b.model != pb::MemballoonModel::Virtio as i32) {
                        return Err(Error::Unsupported(
                            "setmem on a running guest needs a virtio memballoon".into(),
                        ));
                    }
                    run.control.set_balloon(kib).await?;
                    run.live.current_memory_kib = kib;
                    Ok(())
                })
                .await?;
            self.manager.save_status(domain).await;
        }
        if scope.config {
            self.manager
                .update_persistent(domain, |def| {
                    if kib > def.memory_kib {
                        return Err(Error::InvalidField {
                            field: "memory_kib",
                            message: format!(
                                "{kib} KiB is more than the domain's maximum of {} KiB",
                                def.memory_kib
                            ),
                        });
                    }
                    def.current_memory_kib = kib;
                    Ok(())
                })
                .await?;
        }
        Ok(empty())
    }

    async fn set_max_memory(
        &self,
        request: Request<pb::SetMaxMemoryRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        let domain = request.domain.as_ref();
        let kib = request.memory_kib;
        let scope = scope_of(request.scope.as_ref(), false, self.running(domain).await?);
        if scope.live {
            let engine = self
                .manager
                .get(domain, true)
                .await?
                .summary
                .map_or(0, |s| s.engine);
            return Err(self
                .live_change_unsupported("changing the maximum memory", engine)
                .into());
        }
        self.manager
            .update_persistent(domain, |def| {
                def.memory_kib = kib;
                if def.current_memory_kib > kib {
                    def.current_memory_kib = kib;
                }
                Ok(())
            })
            .await?;
        Ok(empty())
    }

    async fn get_block_stats(
        &self,
        request: Request<pb::GetBlockStatsRequest>,
    ) -> Result<Response<pb::BlockStats>, Status> {
        let request = request.into_inner();
        let device = request.device.clone();
        let stats = self
            .manager
            .with_run(request.domain.as_ref(), async |run| {
                let counters = run.control.disk_counters(run.live).await?;
                let targets: Vec<(String, String)> = run
                    .live
                    .devices
                    .iter()
                    .flat_map(|d| &d.disks)
                    .map(|d| {
                        (
                            d.target.as_ref().map(|t| t.dev.clone()).unwrap_or_default(),
                            crate::core::engine::disk_source(d)
                                .unwrap_or("")
                                .to_string(),
                        )
                    })
                    .collect();
                let target = targets
                    .iter()
                    .find(|(target, source)| {
                        *target == device || (!source.is_empty() && *source == device)
                    })
                    .map(|(target, _)| target.clone())
                    .ok_or_else(|| Error::InvalidField {
                        field: "device",
                        message: format!("the domain has no disk '{device}'"),
                    })?;
                let (_, c) = counters
                    .into_iter()
                    .find(|(t, _)| *t == target)
                    .ok_or_else(|| Error::Engine(format!("no counters for disk {target}")))?;
                let u = |v: i64| u64::try_from(v).unwrap_or(0);
                Ok(pb::BlockStats {
                    device: target,
                    rd_req: u(c.rd_req),
                    rd_bytes: u(c.rd_bytes),
                    wr_req: u(c.wr_req),
                    wr_bytes: u(c.wr_bytes),
                    flush_req: u(c.flush_req),
                    ..Default::default()
                })
            })
            .await?;
        Ok(Response::new(stats))
    }

    async fn get_interface_stats(
        &self,
        request: Request<pb::GetInterfaceStatsRequest>,
    ) -> Result<Response<pb::InterfaceStats>, Status> {
        let request = request.into_inner();
        let wanted = request.interface.clone();
        let stats = self
            .manager
            .with_run(request.domain.as_ref(), async |run| {
                let interface = run
                    .live
                    .devices
                    .iter()
                    .flat_map(|d| &d.interfaces)
                    .find(|i| i.target_dev == wanted || i.mac == wanted.to_ascii_lowercase())
                    .ok_or_else(|| Error::InvalidField {
                        field: "interface",
                        message: format!("the domain has no interface '{wanted}'"),
                    })?;
                tap_stats(&interface.target_dev)
            })
            .await?;
        Ok(Response::new(stats))
    }

    async fn get_memory_stats(
        &self,
        request: Request<pb::GetMemoryStatsRequest>,
    ) -> Result<Response<pb::MemoryStats>, Status> {
        let stats = self
            .manager
            .with_run(request.get_ref().domain.as_ref(), async |run| {
                let memory = run.control.memory().await?;
                Ok(pb::MemoryStats {
                    actual_kib: memory.actual_kib,
                    swap_in_kib: memory.swap_in_kib,
                    swap_out_kib: memory.swap_out_kib,
                    major_fault: memory.major_faults,
                    minor_fault: memory.minor_faults,
                    unused_kib: memory.unused_kib,
                    available_kib: memory.available_kib,
                    usable_kib: memory.usable_kib,
                    disk_caches_kib: memory.disk_caches_kib,
                    rss_kib: rss_kib(run.pid),
                    last_update_unix_s: None,
                })
            })
            .await?;
        Ok(Response::new(stats))
    }

    async fn attach_device(
        &self,
        request: Request<pb::AttachDeviceRequest>,
    ) -> Result<Response<pb::AttachDeviceResponse>, Status> {
        use pb::attach_device_request::Device;
        let request = request.into_inner();
        let device = match request.device.clone() {
            Some(Device::Xml(xml)) => {
                vireo_conf::domain::parse_device(&xml).map_err(Error::from)?
            }
            Some(Device::Definition(device)) => device,
            None => {
                return Err(Error::InvalidField {
                    field: "device",
                    message: "give the device as XML or as a definition".into(),
                }
                .into());
            }
        };
        let mut device = device;
        vireo_conf::domain::fill_device_defaults(&mut device);
        let added = device.clone();
        self.change_device(
            request.domain.as_ref(),
            request.scope.as_ref(),
            request.persistent,
            "attaching a device",
            disk_of(&device)
                .map(|disk| Hotplug::AddDisk(Box::new(disk)))
                .or_else(|| device_interface(&device).map(|i| Hotplug::AddInterface(Box::new(i))))
                .or_else(|| pci_hostdev_of(&device).map(|(h, _)| Hotplug::AddHostdev(Box::new(h)))),
            move |devices| add_device(devices, added.clone()),
        )
        .await?;
        Ok(Response::new(pb::AttachDeviceResponse {
            device: Some(device),
        }))
    }

    async fn detach_device(
        &self,
        request: Request<pb::DetachDeviceRequest>,
    ) -> Result<Response<Empty>, Status> {
        use pb::detach_device_request::Device;
        let request = request.into_inner();
        let device = match request.device.clone() {
            Some(Device::Xml(xml)) => {
                vireo_conf::domain::parse_device(&xml).map_err(Error::from)?
            }
            Some(Device::Definition(device)) => device,
            None => {
                return Err(Error::InvalidField {
                    field: "device",
                    message: "give the device as XML or as a definition".into(),
                }
                .into());
            }
        };
        self.change_device(
            request.domain.as_ref(),
            request.scope.as_ref(),
            request.persistent,
            "detaching a device",
            disk_of(&device)
                .map(|d| Hotplug::RemoveDisk(d.target.unwrap_or_default().dev))
                .or_else(|| device_interface(&device).map(|i| Hotplug::RemoveInterface(i.mac)))
                .or_else(|| pci_hostdev_of(&device).map(|(_, pci)| Hotplug::RemoveHostdev(pci))),
            move |devices| remove_device(devices, &device),
        )
        .await?;
        Ok(empty())
    }

    async fn attach_disk(
        &self,
        request: Request<pb::AttachDiskRequest>,
    ) -> Result<Response<pb::AttachDeviceResponse>, Status> {
        let request = request.into_inner();
        let source_type = if request.source_type == 0 {
            if std::fs::metadata(&request.source).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_block_device()
            }) {
                pb::DiskType::Block
            } else {
                pb::DiskType::File
            }
        } else {
            request.source_type()
        };
        let disk = pb::Disk {
            r#type: source_type as i32,
            device: if request.device == 0 {
                pb::DiskDevice::Disk as i32
            } else {
                request.device
            },
            driver: Some(pb::DiskDriver {
                name: pb::DiskDriverName::Qemu as i32,
                r#type: if request.subdriver == 0 {
                    pb::DiskFormat::Raw as i32
                } else {
                    request.subdriver
                },
                cache: request.cache,
                io: request.io,
                discard: 0,
            }),
            source: Some(match source_type {
                pb::DiskType::Block => pb::DiskSource {
                    dev: request.source.clone(),
                    ..Default::default()
                },
                _ => pb::DiskSource {
                    file: request.source.clone(),
                    ..Default::default()
                },
            }),
            target: Some(pb::DiskTarget {
                dev: request.target.clone(),
                bus: request.target_bus,
            }),
            readonly: request.readonly || request.device == pb::DiskDevice::Cdrom as i32,
            shareable: request.shareable,
            serial: request.serial.clone(),
            address: request.address.clone(),
            ..Default::default()
        };
        let mut device = pb::DomainDevice {
            kind: Some(pb::domain_device::Kind::Disk(disk)),
        };
        vireo_conf::domain::fill_device_defaults(&mut device);
        let disk = disk_of(&device).unwrap_or_default();
        let reply = device.clone();
        self.change_device(
            request.domain.as_ref(),
            request.scope.as_ref(),
            request.persistent,
            "attaching a disk",
            Some(Hotplug::AddDisk(Box::new(disk.clone()))),
            move |devices| add_device(devices, device.clone()),
        )
        .await?;
        Ok(Response::new(pb::AttachDeviceResponse {
            device: Some(reply),
        }))
    }

    async fn detach_disk(
        &self,
        request: Request<pb::DetachDiskRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        let target = request.target.clone();
        self.change_device(
            request.domain.as_ref(),
            request.scope.as_ref(),
            request.persistent,
            "detaching a disk",
            Some(Hotplug::RemoveDisk(request.target.clone())),
            move |devices| {
                let before = devices.disks.len();
                devices.disks.retain(|d| {
                    d.target.as_ref().is_none_or(|t| t.dev != target)
                        && crate::core::engine::disk_source(d) != Some(target.as_str())
                });
                if devices.disks.len() == before {
                    return Err(Error::NotFound(format!(
                        "no disk with target or source '{target}'"
                    )));
                }
                Ok(())
            },
        )
        .await?;
        Ok(empty())
    }

    async fn attach_interface(
        &self,
        request: Request<pb::AttachInterfaceRequest>,
    ) -> Result<Response<pb::AttachDeviceResponse>, Status> {
        let request = request.into_inner();
        let source = match request.r#type() {
            pb::InterfaceType::Network => pb::InterfaceSource {
                network: request.source.clone(),
                ..Default::default()
            },
            pb::InterfaceType::Bridge => pb::InterfaceSource {
                bridge: request.source.clone(),
                ..Default::default()
            },
            pb::InterfaceType::Direct => pb::InterfaceSource {
                dev: request.source.clone(),
                mode: request.source_mode,
                ..Default::default()
            },
            _ => pb::InterfaceSource::default(),
        };
        let mut device = pb::DomainDevice {
            kind: Some(pb::domain_device::Kind::Interface(pb::Interface {
                r#type: request.r#type,
                source: Some(source),
                mac: request.mac.to_ascii_lowercase(),
                model: request.model,
                target_dev: request.target.clone(),
                ..Default::default()
            })),
        };
        vireo_conf::domain::fill_device_defaults(&mut device);
        let added = device.clone();
        self.change_device(
            request.domain.as_ref(),
            request.scope.as_ref(),
            request.persistent,
            "attaching an interface",
            device_interface(&device).map(|i| Hotplug::AddInterface(Box::new(i))),
            move |devices| add_device(devices, added.clone()),
        )
        .await?;
        Ok(Response::new(pb::AttachDeviceResponse {
            device: Some(device),
        }))
    }

    async fn detach_interface(
        &self,
        request: Request<pb::DetachInterfaceRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        let kind = request.r#type;
        let mut mac = request.mac.to_ascii_lowercase();
        if mac.is_empty() {
            // One interface of the type may be named by its type alone.
            let current = self.manager.get(request.domain.as_ref(), true).await?;
            let def = current.live.or(current.persistent).unwrap_or_default();
            let found: Vec<String> = def
                .devices
                .iter()
                .flat_map(|d| &d.interfaces)
                .filter(|i| i.r#type == kind)
                .map(|i| i.mac.clone())
                .collect();
            if let [only] = found.as_slice() {
                mac.clone_from(only);
            }
        }
        let unplug = (!mac.is_empty()).then(|| Hotplug::RemoveInterface(mac.clone()));
        self.change_device(
            request.domain.as_ref(),
            request.scope.as_ref(),
            request.persistent,
            "detaching an interface",
            unplug,
            move |devices| {
                let matching: Vec<usize> = devices
                    .interfaces
                    .iter()
                    .enumerate()
                    .filter(|(_, i)| i.r#type == kind && (mac.is_empty() || i.mac == mac))
                    .map(|(index, _)| index)
                    .collect();
                match matching.as_slice() {
                    [] => Err(Error::NotFound("no interface of that type and MAC".into())),
                    [index] => {
                        devices.interfaces.remove(*index);
                        Ok(())
                    }
                    _ => Err(Error::InvalidField {
                        field: "mac",
                        message: "several interfaces of that type: name one with --mac".into(),
                    }),
                }
            },
        )
        .await?;
        Ok(empty())
    }

    async fn get_scheduler_params(
        &self,
        request: Request<pb::GetSchedulerParamsRequest>,
    ) -> Result<Response<pb::SchedulerParams>, Status> {
        let request = request.into_inner();
        let domain = self.manager.get(request.domain.as_ref(), true).await?;
        let tune = if request.config || domain.live.is_none() {
            pick(&domain, true).cputune.unwrap_or_default()
        } else {
            self.manager
                .with_run(request.domain.as_ref(), async |run| match run.cgroup {
                    Some(group) => group.cpu().map_err(Error::io("reading the guest's cgroup")),
                    None => Ok(run.live.cputune.clone().unwrap_or_default()),
                })
                .await?
        };
        Ok(Response::new(pb::SchedulerParams {
            cpu_shares: tune.shares,
            period_us: tune.period_us,
            quota_us: tune.quota_us,
        }))
    }

    async fn set_scheduler_params(
        &self,
        request: Request<pb::SetSchedulerParamsRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        let domain = request.domain.as_ref();
        let params = request.params.unwrap_or_default();
        let change = |tune: &mut pb::CpuTune| {
            if params.cpu_shares.is_some() {
                tune.shares = params.cpu_shares;
            }
            if params.period_us.is_some() {
                tune.period_us = params.period_us;
            }
            if params.quota_us.is_some() {
                tune.quota_us = params.quota_us;
            }
        };
        let scope = scope_of(request.scope.as_ref(), false, self.running(domain).await?);
        if scope.config {
            self.manager
                .update_persistent(domain, |def| {
                    change(def.cputune.get_or_insert_default());
                    Ok(())
                })
                .await?;
        }
        if scope.live {
            self.manager
                .with_run(domain, async |run| {
                    let mut tune = run.live.cputune.clone().unwrap_or_default();
                    change(&mut tune);
                    let mut check = run.live.clone();
                    check.cputune = Some(tune.clone());
                    vireo_conf::domain::validate(&check)?;
                    let group = run.cgroup.ok_or_else(|| {
                        Error::Unsupported("the guest has no cgroup on this host to tune".into())
                    })?;
                    group
                        .set_cpu(&tune)
                        .map_err(Error::io("setting the guest's CPU tuning"))?;
                    run.live.cputune = Some(tune);
                    Ok(())
                })
                .await?;
            self.manager.save_status(domain).await;
        }
        Ok(empty())
    }

    async fn get_memory_params(
        &self,
        request: Request<pb::GetMemoryParamsRequest>,
    ) -> Result<Response<pb::MemoryParams>, Status> {
        let request = request.into_inner();
        let domain = self.manager.get(request.domain.as_ref(), true).await?;
        let tune = if request.config || domain.live.is_none() {
            pick(&domain, true).memtune.unwrap_or_default()
        } else {
            self.manager
                .with_run(request.domain.as_ref(), async |run| match run.cgroup {
                    Some(group) => group
                        .memory()
                        .map_err(Error::io("reading the guest's cgroup")),
                    None => Ok(run.live.memtune.unwrap_or_default()),
                })
                .await?
        };
        Ok(Response::new(pb::MemoryParams {
            hard_limit: tune.hard_limit,
            soft_limit: tune.soft_limit,
            swap_hard_limit: tune.swap_hard_limit,
            min_guarantee: tune.min_guarantee,
        }))
    }

    async fn set_memory_params(
        &self,
        request: Request<pb::SetMemoryParamsRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        let domain = request.domain.as_ref();
        let params = request.params.unwrap_or_default();
        vireo_conf::domain::check_memory_limits(
            &pb::MemoryTune {
                hard_limit: params.hard_limit,
                soft_limit: params.soft_limit,
                swap_hard_limit: params.swap_hard_limit,
                min_guarantee: params.min_guarantee,
            },
            "params",
        )
        .map_err(Error::from)?;
        let change = |tune: &mut pb::MemoryTune| {
            for (field, value) in [
                (&mut tune.hard_limit, &params.hard_limit),
                (&mut tune.soft_limit, &params.soft_limit),
                (&mut tune.swap_hard_limit, &params.swap_hard_limit),
                (&mut tune.min_guarantee, &params.min_guarantee),
            ] {
                if value.is_some() {
                    field.clone_from(value);
                }
            }
        };
        let scope = scope_of(request.scope.as_ref(), false, self.running(domain).await?);
        if scope.config {
            self.manager
                .update_persistent(domain, |def| {
                    change(def.memtune.get_or_insert_default());
                    Ok(())
                })
                .await?;
        }
        if scope.live {
            self.manager
                .with_run(domain, async |run| {
                    let group = run.cgroup.ok_or_else(|| {
                        Error::Unsupported("the guest has no cgroup on this host to tune".into())
                    })?;
                    let mut wanted = pb::MemoryTune::default();
                    change(&mut wanted);
                    group
                        .set_memory(&wanted)
                        .map_err(Error::io("setting the guest's memory limits"))?;
                    change(run.live.memtune.get_or_insert_default());
                    Ok(())
                })
                .await?;
            self.manager.save_status(domain).await;
        }
        Ok(empty())
    }

    async fn set_ksm(
        &self,
        request: Request<pb::SetKsmRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        let domain = request.domain.as_ref();
        let scope = scope_of(request.scope.as_ref(), false, self.running(domain).await?);
        if scope.live {
            let engine = self
                .manager
                .get(domain, true)
                .await?
                .summary
                .map_or(0, |s| s.engine);
            return Err(self
                .live_change_unsupported("turning KSM on or off", engine)
                .into());
        }
        let enabled = request.enabled;
        self.manager
            .update_persistent(domain, |def| {
                def.memory_backing.get_or_insert_default().nosharepages = !enabled;
                Ok(())
            })
            .await?;
        Ok(empty())
    }

    async fn get_cpu_stats(
        &self,
        request: Request<pb::GetCpuStatsRequest>,
    ) -> Result<Response<pb::DomainCpuStats>, Status> {
        let request = request.into_inner();
        let stats = self
            .manager
            .with_run(request.domain.as_ref(), async |run| {
                let (user_ns, system_ns) = process::process_user_system_ns(run.pid);
                let total = run
                    .cgroup
                    .and_then(|g| g.cpu_time_ns())
                    .unwrap_or(user_ns + system_ns);
                let mut per_cpu = Vec::new();
                if !request.total_only {
                    let mut by_cpu: std::collections::BTreeMap<u32, (u64, u64)> =
                        Default::default();
                    for (tid, vcpu) in process::threads(run.pid) {
                        if let Some((time, cpu)) = process::thread_cpu(run.pid, tid) {
                            let slot = by_cpu.entry(cpu).or_default();
                            slot.0 += time;
                            if vcpu {
                                slot.1 += time;
                            }
                        }
                    }
                    let host_cpus =
                        u32::try_from(std::thread::available_parallelism().map_or(1, |n| n.get()))
                            .unwrap_or(1);
                    let start = request.start_cpu.unwrap_or(0);
                    let end = request
                        .count
                        .map_or(host_cpus, |c| start.saturating_add(c).min(host_cpus));
                    for cpu in start..end {
                        let (time, vcpu_time) = by_cpu.get(&cpu).copied().unwrap_or((0, 0));
                        per_cpu.push(pb::DomainPerCpuStats {
                            cpu,
                            cpu_time_ns: time,
                            vcpu_time_ns: Some(vcpu_time),
                        });
                    }
                }
                Ok(pb::DomainCpuStats {
                    per_cpu,
                    total: Some(pb::DomainCpuTotal {
                        cpu_time_ns: total,
                        user_time_ns: user_ns,
                        system_time_ns: system_ns,
                    }),
                })
            })
            .await?;
        Ok(Response::new(stats))
    }

    async fn get_domain_stats(
        &self,
        request: Request<pb::GetDomainStatsRequest>,
    ) -> Result<Response<pb::DomainStatsList>, Status> {
        let request = request.into_inner();
        let summaries: Vec<pb::DomainSummary> = if request.domains.is_empty() {
            self.manager
                .list(&pb::ListDomainsRequest {
                    include_active: true,
                    include_inactive: !request.list_active && !request.list_running,
                    ..Default::default()
                })
                .await
        } else {
            let mut found = Vec::new();
            for domain in &request.domains {
                found.push(
                    self.manager
                        .get(Some(domain), true)
                        .await?
                        .summary
                        .unwrap_or_default(),
                );
            }
            found
        };
        let wants = |group: pb::DomainStatsGroup| {
            request.groups.is_empty() || request.groups.contains(&(group as i32))
        };
        let mut records = Vec::new();
        for summary in summaries {
            let reference = Some(ObjectRef {
                key: Some(vireo_proto::common::v1::object_ref::Key::Uuid(
                    summary.uuid.clone(),
                )),
            });
            let domain = self.manager.get(reference.as_ref(), true).await?;
            let def = pick(&domain, false);
            let mut record = pb::DomainStatsRecord {
                host: String::new(),
                name: summary.name.clone(),
                uuid: summary.uuid.clone(),
                ..Default::default()
            };
            if wants(pb::DomainStatsGroup::State) {
                record.state = Some(pb::DomainStateInfo {
                    state: summary.state,
                    reason: summary.reason,
                });
            }
            let vcpu = def.vcpu.clone().unwrap_or_default();
            if wants(pb::DomainStatsGroup::Vcpu) {
                let threads = if domain.pid != 0 {
                    process::vcpu_threads(domain.pid)
                } else {
                    Vec::new()
                };
                record.vcpu = Some(pb::DomainStatsVcpus {
                    current: vcpu.current.unwrap_or(vcpu.count),
                    maximum: vcpu.count,
                    vcpus: threads
                        .iter()
                        .map(|t| pb::DomainStatsVcpu {
                            number: t.vcpu,
                            state: pb::VcpuState::Running as i32,
                            time_ns: process::thread_cpu(domain.pid, t.tid)
                                .map_or(0, |(time, _)| time),
                            wait_ns: None,
                        })
                        .collect(),
                });
            }
            if domain.live.is_some() {
                if wants(pb::DomainStatsGroup::CpuTotal) {
                    let (user_ns, system_ns) = process::process_user_system_ns(domain.pid);
                    record.cpu = Some(pb::DomainStatsCpu {
                        time_ns: domain.cpu_time_ns,
                        user_ns,
                        system_ns,
                    });
                }
                if wants(pb::DomainStatsGroup::Balloon) {
                    record.balloon = Some(pb::DomainStatsBalloon {
                        current_kib: def.current_memory_kib,
                        maximum_kib: def.memory_kib,
                        memory: None,
                    });
                }
                if wants(pb::DomainStatsGroup::Interface) {
                    record.interfaces = def
                        .devices
                        .iter()
                        .flat_map(|d| &d.interfaces)
                        .filter_map(|i| tap_stats(&i.target_dev).ok())
                        .collect();
                }
                if wants(pb::DomainStatsGroup::Block) {
                    for disk in def.devices.iter().flat_map(|d| &d.disks) {
                        let target = disk
                            .target
                            .as_ref()
                            .map(|t| t.dev.clone())
                            .unwrap_or_default();
                        let stats = self
                            .get_block_stats(Request::new(pb::GetBlockStatsRequest {
                                host: String::new(),
                                domain: reference.clone(),
                                device: target.clone(),
                            }))
                            .await
                            .ok()
                            .map(Response::into_inner);
                        record.blocks.push(pb::DomainStatsBlock {
                            name: target,
                            path: crate::core::engine::disk_source(disk)
                                .unwrap_or("")
                                .to_string(),
                            stats,
                            ..Default::default()
                        });
                    }
                }
            }
            records.push(record);
        }
        Ok(Response::new(pb::DomainStatsList { records }))
    }

    async fn get_interface_addresses(
        &self,
        request: Request<pb::GetInterfaceAddressesRequest>,
    ) -> Result<Response<pb::InterfaceAddressList>, Status> {
        let request = request.into_inner();
        let from_leases = match request.source() {
            pb::InterfaceAddressSource::Arp => false,
            pb::InterfaceAddressSource::Agent => {
                return Err(Error::Unsupported(
                    "--source agent needs a guest agent, which Vireo does not talk to yet".into(),
                )
                .into());
            }
            // virsh's default: the leases of the networks the interfaces are on.
            _ => true,
        };
        let domain = self.manager.get(request.domain.as_ref(), true).await?;
        let def = domain
            .live
            .ok_or_else(|| Error::State("the domain is not running".into()))?;
        if from_leases {
            let mut interfaces = Vec::new();
            for interface in def.devices.iter().flat_map(|d| &d.interfaces) {
                let network = interface
                    .source
                    .as_ref()
                    .map_or("", |source| source.network.as_str());
                if interface.r#type() != pb::InterfaceType::Network
                    || !(request.interface.is_empty() || interface.target_dev == request.interface)
                {
                    continue;
                }
                let leases = self
                    .manager
                    .networks()
                    .leases(network, &interface.mac)
                    .await?;
                interfaces.push(pb::InterfaceAddresses {
                    name: interface.target_dev.clone(),
                    hwaddr: interface.mac.clone(),
                    addresses: leases
                        .into_iter()
                        .map(|(v6, address, prefix)| pb::IpAddress {
                            r#type: if v6 {
                                pb::IpAddressType::Ipv6
                            } else {
                                pb::IpAddressType::Ipv4
                            } as i32,
                            address,
                            prefix,
                        })
                        .collect(),
                });
            }
            return Ok(Response::new(pb::InterfaceAddressList { interfaces }));
        }
        let arp = std::fs::read_to_string("/proc/net/arp").unwrap_or_default();
        let interfaces = def
            .devices
            .iter()
            .flat_map(|d| &d.interfaces)
            .filter(|i| request.interface.is_empty() || i.target_dev == request.interface)
            .map(|i| pb::InterfaceAddresses {
                name: i.target_dev.clone(),
                hwaddr: i.mac.clone(),
                addresses: arp
                    .lines()
                    .skip(1)
                    .filter_map(|line| {
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        (fields.get(3)?.eq_ignore_ascii_case(&i.mac)).then(|| pb::IpAddress {
                            r#type: pb::IpAddressType::Ipv4 as i32,
                            address: fields[0].to_string(),
                            prefix: 0,
                        })
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::InterfaceAddressList { interfaces }))
    }

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        use pb::create_snapshot_request::Source;
        let request = request.into_inner();
        let definition = match request.source {
            Some(Source::Definition(def)) => def,
            Some(Source::Xml(_)) => {
                return Err(Error::Unsupported(
                    "snapshot XML is not read yet; give the name and description (snapshot-create-as)".into(),
                )
                .into());
            }
            None => pb::SnapshotDefinition::default(),
        };
        if definition.memory.is_some() || !definition.disks.is_empty() {
            return Err(Error::Unsupported(
                "per-disk and memory locations are not chosen yet: snapshots are internal".into(),
            )
            .into());
        }
        let snapshot = self
            .manager
            .create_snapshot(
                request.domain.as_ref(),
                definition.name,
                definition.description,
                request.disk_only,
            )
            .await?;
        Ok(Response::new(snapshot))
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::SnapshotList>, Status> {
        let request = request.into_inner();
        let mut snapshots = self.manager.list_snapshots(request.domain.as_ref()).await?;
        if request.current {
            snapshots.retain(|s| s.current);
        }
        if request.roots {
            snapshots.retain(|s| s.parent.is_empty());
        }
        if request.leaves {
            snapshots.retain(|s| s.children == 0);
        }
        Ok(Response::new(pb::SnapshotList { snapshots }))
    }

    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let request = request.into_inner();
        let (snapshot, _, _) = self
            .manager
            .get_snapshot(request.domain.as_ref(), &request.snapshot, request.current)
            .await?;
        Ok(Response::new(snapshot))
    }

    async fn get_snapshot_xml(
        &self,
        request: Request<pb::GetSnapshotXmlRequest>,
    ) -> Result<Response<pb::SnapshotXml>, Status> {
        let request = request.into_inner();
        let (snapshot, domain_xml, memory_file) = self
            .manager
            .get_snapshot(request.domain.as_ref(), &request.snapshot, false)
            .await?;
        let xml = vireo_conf::snapshot::format(&snapshot, memory_file.as_deref(), &domain_xml)
            .map_err(Error::from)?;
        Ok(Response::new(pb::SnapshotXml { xml }))
    }

    async fn revert_to_snapshot(
        &self,
        request: Request<pb::RevertToSnapshotRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        self.manager
            .revert_snapshot(
                request.domain.as_ref(),
                &request.snapshot,
                request.current,
                request.paused,
            )
            .await?;
        Ok(empty())
    }

    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        if request.children || request.children_only {
            return Err(Error::Unsupported(
                "--children/--children-only are not built; delete snapshots one by one".into(),
            )
            .into());
        }
        self.manager
            .delete_snapshot(
                request.domain.as_ref(),
                &request.snapshot,
                request.current,
                request.metadata_only,
            )
            .await?;
        Ok(empty())
    }

    async fn save_domain_state(
        &self,
        request: Request<pb::SaveDomainStateRequest>,
    ) -> Result<Response<pb::SaveDomainStateResponse>, Status> {
        let request = request.into_inner();
        let (file, size_bytes, name, uuid) = self
            .manager
            .save_state(
                request.domain.as_ref(),
                &request.file,
                request.managed,
                request.restore_paused,
            )
            .await?;
        Ok(Response::new(pb::SaveDomainStateResponse {
            file: file.display().to_string(),
            size_bytes,
            name,
            uuid,
        }))
    }

    async fn restore_domain_state(
        &self,
        request: Request<pb::RestoreDomainStateRequest>,
    ) -> Result<Response<pb::Domain>, Status> {
        let request = request.into_inner();
        vireo_conf::domain::check_host_path(&request.file, "file").map_err(Error::from)?;
        let domain = self
            .manager
            .restore_state(std::path::Path::new(&request.file), request.paused)
            .await?;
        Ok(Response::new(domain))
    }

    async fn core_dump(
        &self,
        request: Request<pb::CoreDumpRequest>,
    ) -> Result<Response<BoxStream<pb::CoreDumpUpdate>>, Status> {
        let request = request.into_inner();
        vireo_conf::domain::check_host_path(&request.file, "file").map_err(Error::from)?;
        let format = match request.format() {
            pb::CoreDumpFormat::Unspecified | pb::CoreDumpFormat::Elf => "elf",
            pb::CoreDumpFormat::KdumpZlib => "kdump-zlib",
            pb::CoreDumpFormat::KdumpLzo => "kdump-lzo",
            pb::CoreDumpFormat::KdumpSnappy => "kdump-snappy",
        };
        let file = request.file.clone();
        self.manager
            .with_run(request.domain.as_ref(), async |run| match run.control {
                crate::core::engine::Control::Qemu(qmp) => qmp
                    .execute(
                        "dump-guest-memory",
                        serde_json::json!({
                            "paging": false,
                            "protocol": format!("file:{file}"),
                            "format": format,
                        }),
                    )
                    .await
                    .map(drop)
                    .map_err(|err| Error::Engine(format!("QEMU dump-guest-memory: {err}"))),
                crate::core::engine::Control::Vmm(_) => Err(Error::Unsupported(
                    "the vmm engine cannot write a core dump of guest memory; save keeps a guest's whole state".into(),
                )),
            })
            .await?;
        if request.crash {
            self.manager.destroy(request.domain.as_ref(), false).await?;
        } else if request.reset {
            self.manager.reset(request.domain.as_ref()).await?;
        }
        let size_bytes = std::fs::metadata(&request.file).map_or(0, |m| m.len());
        Ok(one(pb::CoreDumpUpdate {
            update: Some(pb::core_dump_update::Update::Done(pb::CoreDumpResult {
                file: request.file,
                size_bytes,
            })),
        }))
    }

    async fn start_incoming_domain(
        &self,
        request: Request<pb::StartIncomingDomainRequest>,
    ) -> Result<Response<pb::StartIncomingDomainResponse>, Status> {
        let request = request.into_inner();
        let (name, uuid, port) = self
            .manager
            .start_incoming(&request.xml, &request.listen_address, request.tls)
            .await?;
        Ok(Response::new(pb::StartIncomingDomainResponse {
            name,
            uuid,
            port: u32::from(port),
        }))
    }

    async fn send_domain_state(
        &self,
        request: Request<pb::SendDomainStateRequest>,
    ) -> Result<Response<BoxStream<pb::SendDomainStateUpdate>>, Status> {
        let request = request.into_inner();
        let (updates, received) = tokio::sync::mpsc::channel(16);
        let (out, replies) = tokio::sync::mpsc::channel(16);
        let manager = self.manager.clone();
        tokio::spawn(async move {
            // Progress goes out as it comes; the end (or the failure) last.
            let forward = {
                let out = out.clone();
                let mut received = received;
                async move {
                    while let Some(update) = received.recv().await {
                        if out.send(Ok(update)).await.is_err() {
                            return;
                        }
                    }
                }
            };
            let send = manager.send_state(request.domain.as_ref(), &request, updates);
            let (sent, ()) = tokio::join!(send, forward);
            if let Err(err) = sent {
                let _ = out.send(Err(Status::from(err))).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(replies),
        )))
    }

    async fn tune_domain_migration(
        &self,
        request: Request<pb::TuneDomainMigrationRequest>,
    ) -> Result<Response<vireo_proto::common::v1::Empty>, Status> {
        let request = request.into_inner();
        self.manager
            .tune_migration(
                request.domain.as_ref(),
                request.max_downtime_ms,
                request.bandwidth_mib_s,
            )
            .await?;
        Ok(Response::new(vireo_proto::common::v1::Empty {}))
    }

    async fn finish_incoming_domain(
        &self,
        request: Request<pb::FinishIncomingDomainRequest>,
    ) -> Result<Response<pb::Domain>, Status> {
        let request = request.into_inner();
        let domain = self
            .manager
            .finish_incoming(request.domain.as_ref(), request.paused)
            .await?;
        Ok(Response::new(domain))
    }

    async fn confirm_domain_migration(
        &self,
        request: Request<pb::ConfirmDomainMigrationRequest>,
    ) -> Result<Response<pb::Domain>, Status> {
        let request = request.into_inner();
        let domain = self
            .manager
            .confirm_migration(request.domain.as_ref(), request.succeeded)
            .await?;
        Ok(Response::new(domain))
    }

    async fn console(
        &self,
        request: Request<Streaming<pb::ConsoleInput>>,
    ) -> Result<Response<BoxStream<pb::ConsoleOutput>>, Status> {
        let mut input = request.into_inner();
        let first = input.message().await?.ok_or_else(|| {
            Status::invalid_argument("domain: the first message names the domain")
        })?;
        if !first.device.is_empty() && first.device != "serial0" && first.device != "console0" {
            return Err(Error::InvalidField {
                field: "device",
                message: format!(
                    "'{}' is not a console of the domain (serial0)",
                    first.device
                ),
            }
            .into());
        }
        let force = first.force;
        let attachment = self
            .manager
            .with_run(first.domain.as_ref(), async |run| {
                let has_console = run
                    .live
                    .devices
                    .as_ref()
                    .is_some_and(|d| !d.serials.is_empty() || !d.consoles.is_empty());
                if !has_console {
                    return Err(Error::State(format!(
                        "domain '{}' has no serial console",
                        run.live.name
                    )));
                }
                let hub = run.console.clone();
                hub.attach(force)
                    .map(|attachment| (hub.clone(), attachment))
                    .map_err(|msg| Error::State(msg.to_string()))
            })
            .await?;
        let (hub, mut attachment) = attachment;
        if !first.data.is_empty() {
            let _ = attachment.input.send(first.data.clone()).await;
        }
        let (tx, rx) = mpsc::channel::<Result<pb::ConsoleOutput, Status>>(64);
        let token = attachment.token;
        let writer = attachment.input.clone();
        // Client input to the guest.
        tokio::spawn(async move {
            while let Ok(Some(message)) = input.message().await {
                if !message.data.is_empty() && writer.send(message.data).await.is_err() {
                    break;
                }
            }
        });
        // Guest output to the client, until it leaves, another client forces it off, or the guest stops.
        tokio::spawn(async move {
            if !attachment.backlog.is_empty() {
                let _ = tx
                    .send(Ok(pb::ConsoleOutput {
                        data: std::mem::take(&mut attachment.backlog),
                    }))
                    .await;
            }
            loop {
                // Output first: the hub closes only after publishing the guest's last output.
                tokio::select! {
                    biased;
                    output = attachment.output.recv() => match output {
                        Ok(data) => {
                            if tx.send(Ok(pb::ConsoleOutput { data })).await.is_err() { break }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    },
                    () = tx.closed() => break,
                    changed = attachment.holder.changed() => {
                        if changed.is_err() || *attachment.holder.borrow() != token {
                            let _ = tx.send(Err(Status::aborted("the console was taken over by another client or the guest stopped"))).await;
                            break;
                        }
                    }
                }
            }
            hub.detach(token);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn watch_domain_events(
        &self,
        request: Request<pb::WatchDomainEventsRequest>,
    ) -> Result<Response<BoxStream<pb::DomainEvent>>, Status> {
        let request = request.into_inner();
        let uuid = match request.domain.as_ref() {
            Some(domain) => Some(
                self.manager
                    .get(Some(domain), true)
                    .await?
                    .summary
                    .unwrap_or_default()
                    .uuid,
            ),
            None => None,
        };
        let types = request.types.clone();
        let mut events = self.manager.subscribe();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                };
                if uuid.as_ref().is_some_and(|u| *u != event.uuid)
                    || (!types.is_empty() && !types.contains(&event.r#type))
                {
                    continue;
                }
                if tx.send(Ok(event)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn check_modes(modes: &[i32]) -> Result<(), Error> {
    if modes
        .iter()
        .any(|m| *m != pb::ShutdownMode::Acpi as i32 && *m != 0)
    {
        return Err(Error::Unsupported(
            "only --mode acpi is supported (the power button; no guest agent yet)".into(),
        ));
    }
    Ok(())
}

fn pick(domain: &pb::Domain, inactive: bool) -> pb::DomainDefinition {
    if inactive {
        domain.persistent.clone().or(domain.live.clone())
    } else {
        domain.live.clone().or(domain.persistent.clone())
    }
    .unwrap_or_default()
}

fn set_pin(def: &mut pb::DomainDefinition, vcpu: u32, cpuset: &str) {
    let tune = def.cputune.get_or_insert_default();
    tune.vcpupins.retain(|p| p.vcpu != vcpu);
    tune.vcpupins.push(pb::VcpuPin {
        vcpu,
        cpuset: cpuset.to_string(),
    });
    tune.vcpupins.sort_by_key(|p| p.vcpu);
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Counters of a guest's tap, seen from the guest (the host's rx is the guest's tx), as virsh
/// domifstat reports them.
fn tap_stats(tap: &str) -> Result<pb::InterfaceStats, Error> {
    if tap.is_empty() {
        return Err(Error::Unsupported(
            "this interface has no host tap (user networking) to count".into(),
        ));
    }
    let read = |name: &str| -> u64 {
        std::fs::read_to_string(format!("/sys/class/net/{tap}/statistics/{name}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(pb::InterfaceStats {
        interface: tap.to_string(),
        rx_bytes: read("tx_bytes"),
        rx_packets: read("tx_packets"),
        rx_errs: read("tx_errors"),
        rx_drop: read("tx_dropped"),
        tx_bytes: read("rx_bytes"),
        tx_packets: read("rx_packets"),
        tx_errs: read("rx_errors"),
        tx_drop: read("rx_dropped"),
    })
}

fn device_interface(device: &pb::DomainDevice) -> Option<pb::Interface> {
    match &device.kind {
        Some(pb::domain_device::Kind::Interface(interface)) => Some(interface.clone()),
        _ => None,
    }
}

/// A PCI `<hostdev>` and its host address (the only host devices that hotplug).
fn pci_hostdev_of(device: &pb::DomainDevice) -> Option<(pb::Hostdev, pb::PciAddress)> {
    match &device.kind {
        Some(pb::domain_device::Kind::Hostdev(hostdev)) => match &hostdev.source {
            Some(pb::hostdev::Source::Pci(pci)) => Some((hostdev.clone(), *pci)),
            _ => None,
        },
        _ => None,
    }
}

fn disk_of(device: &pb::DomainDevice) -> Option<pb::Disk> {
    match &device.kind {
        Some(pb::domain_device::Kind::Disk(disk)) => Some(disk.clone()),
        _ => None,
    }
}

fn add_device(devices: &mut pb::DomainDevices, device: pb::DomainDevice) -> Result<(), Error> {
    use pb::domain_device::Kind;
    match device.kind {
        Some(Kind::Disk(disk)) => {
            let target = disk
                .target
                .as_ref()
                .map(|t| t.dev.clone())
                .unwrap_or_default();
            if devices
                .disks
                .iter()
                .any(|d| d.target.as_ref().is_some_and(|t| t.dev == target))
            {
                return Err(Error::AlreadyExists(format!(
                    "target {target} is already in use"
                )));
            }
            devices.disks.push(disk);
        }
        Some(Kind::Interface(interface)) => {
            if devices.interfaces.iter().any(|i| i.mac == interface.mac) {
                return Err(Error::AlreadyExists(format!(
                    "an interface with MAC {} already exists",
                    interface.mac
                )));
            }
            devices.interfaces.push(interface);
        }
        Some(Kind::Controller(c)) => devices.controllers.push(c),
        Some(Kind::Serial(s)) => devices.serials.push(s),
        Some(Kind::Console(c)) => devices.consoles.push(c),
        Some(Kind::Graphics(g)) => devices.graphics.push(g),
        Some(Kind::Video(v)) => devices.videos.push(v),
        Some(Kind::Input(i)) => devices.inputs.push(i),
        Some(Kind::Memballoon(b)) => devices.memballoon = Some(b),
        Some(Kind::Rng(r)) => devices.rngs.push(r),
        Some(Kind::Hostdev(hostdev)) => {
            if devices.hostdevs.iter().any(|h| h.source == hostdev.source) {
                return Err(Error::AlreadyExists(
                    "the domain already has this host device".into(),
                ));
            }
            devices.hostdevs.push(hostdev);
        }
        _ => {
            return Err(Error::Unsupported(
                "this kind of device cannot be attached".into(),
            ));
        }
    }
    Ok(())
}

fn remove_device(devices: &mut pb::DomainDevices, device: &pb::DomainDevice) -> Result<(), Error> {
    use pb::domain_device::Kind;
    let found = match &device.kind {
        Some(Kind::Disk(disk)) => {
            let target = disk
                .target
                .as_ref()
                .map(|t| t.dev.clone())
                .unwrap_or_default();
            let before = devices.disks.len();
            devices
                .disks
                .retain(|d| d.target.as_ref().is_none_or(|t| t.dev != target));
            before != devices.disks.len()
        }
        Some(Kind::Interface(interface)) => {
            let before = devices.interfaces.len();
            devices.interfaces.retain(|i| i.mac != interface.mac);
            before != devices.interfaces.len()
        }
        Some(Kind::Hostdev(hostdev)) => {
            let before = devices.hostdevs.len();
            devices.hostdevs.retain(|h| h.source != hostdev.source);
            before != devices.hostdevs.len()
        }
        Some(Kind::Rng(_)) => devices.rngs.pop().is_some(),
        Some(Kind::Memballoon(_)) => devices.memballoon.take().is_some(),
        _ => false,
    };
    if found {
        Ok(())
    } else {
        Err(Error::NotFound(
            "no matching device in the definition".into(),
        ))
    }
}

/// --security-info needs a read-write caller, as in libvirt.
fn refuse_secrets_to_readonly<T>(request: &Request<T>, security_info: bool) -> Result<(), Status> {
    if security_info && vireo_runtime::access::readonly_caller(request.metadata()) {
        return Err(Status::permission_denied(
            "security_info: graphics passwords are not shown to a read-only caller",
        ));
    }
    Ok(())
}
