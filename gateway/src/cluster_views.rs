//! The cluster calls the gateway answers itself: its hosts (each asked now: its compute service's
//! node facts and domains decide UP, an error UNREACHABLE with the reason), the domains of every
//! host merged (a host that does not answer named in `failed_hosts`, never left out quietly), and
//! placement: a named host if the domain fits there, else the answering host with the most free
//! memory, then the most free vCPUs; DefineDomainPlaced defines it there.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use vireo_proto::cluster::v1 as cluster;
use vireo_proto::compute::v1 as compute;
use vireo_runtime::Service;

use crate::backends::Backends;

/// How long a host may take to answer a cluster view before it counts as not answering.
const HOST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct ClusterViews {
    backends: Arc<Backends>,
    /// The cluster CA a joining host is given to trust the gateway; empty without TLS.
    ca_pem: String,
}

impl ClusterViews {
    pub fn new(backends: Arc<Backends>, ca_pem: String) -> ClusterViews {
        ClusterViews { backends, ca_pem }
    }

    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    pub fn cluster_ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    fn compute(
        &self,
        host: &str,
    ) -> Result<
        compute::domain_service_client::DomainServiceClient<tonic::transport::Channel>,
        Status,
    > {
        Ok(compute::domain_service_client::DomainServiceClient::new(
            self.backends.channel(host, Service::Compute)?,
        ))
    }

    /// The domains of `host` for `request`'s filters, each marked with the host.
    pub async fn domains_of(
        &self,
        host: &str,
        request: &cluster::ListAllDomainsRequest,
    ) -> Result<Vec<compute::DomainSummary>, Status> {
        let mut client = self.compute(host)?;
        let call = client.list_domains(compute::ListDomainsRequest {
            host: String::new(),
            include_inactive: request.include_inactive,
            include_active: request.include_active,
            autostart: request.autostart,
        });
        let domains = tokio::time::timeout(HOST_TIMEOUT, call)
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "host `{host}` did not answer within {} s",
                    HOST_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|status| self.backends.unavailable(host, Service::Compute, status))?
            .into_inner()
            .domains;
        Ok(domains
            .into_iter()
            .map(|domain| compute::DomainSummary {
                host: host.to_string(),
                ..domain
            })
            .collect())
    }

    /// One host as it answers now.
    pub async fn host(&self, name: &str) -> cluster::Host {
        let services = self
            .backends
            .endpoints_of(name)
            .into_iter()
            .map(|(service, address)| cluster::ServiceEndpoint {
                service: service_kind(service) as i32,
                address,
            })
            .collect();
        let backend = self.backends.host(name).ok();
        let mut host = cluster::Host {
            name: name.to_string(),
            address: backend
                .as_ref()
                .map(|backend| backend.address.clone())
                .unwrap_or_default(),
            joined_unix_ms: backend
                .as_ref()
                .and_then(|backend| backend.joined.as_ref())
                .map_or(0, |joined| joined.joined_unix_ms),
            services,
            vireo_version: String::new(),
            ..Default::default()
        };
        let facts = async {
            let channel = self.backends.channel(name, Service::Compute)?;
            let info = compute::node_service_client::NodeServiceClient::new(channel.clone())
                .get_node_info(compute::GetNodeInfoRequest::default())
                .await?
                .into_inner();
            let version = compute::node_service_client::NodeServiceClient::new(channel.clone())
                .get_version(compute::GetVersionRequest::default())
                .await?
                .into_inner();
            let capabilities = compute::node_service_client::NodeServiceClient::new(channel)
                .get_capabilities(compute::GetCapabilitiesRequest::default())
                .await?
                .into_inner();
            let domains = self
                .domains_of(
                    name,
                    &cluster::ListAllDomainsRequest {
                        include_active: true,
                        include_inactive: true,
                        ..Default::default()
                    },
                )
                .await?;
            Ok::<_, Status>((info, version, capabilities, domains))
        };
        match tokio::time::timeout(HOST_TIMEOUT, facts).await {
            Ok(Ok((info, version, capabilities, domains))) => {
                // What placement weighs, shown as host-list's free memory and vCPUs in use.
                let free = self.free(name).await.ok();
                host.set_state(cluster::HostState::Up);
                host.last_seen_unix_ms = now_ms();
                host.vireo_version = version.vireo_version;
                let running = domains.iter().filter(|d| d.id >= 0).count();
                host.capacity = Some(cluster::HostCapacity {
                    cpus: info.cpus,
                    memory_kib: info.memory_kib,
                    running_domains: u32::try_from(running).unwrap_or(u32::MAX),
                    defined_domains: u32::try_from(domains.iter().filter(|d| d.persistent).count())
                        .unwrap_or(u32::MAX),
                    free_memory_kib: free.map_or(0, |free| free.memory_kib),
                    engines: capabilities
                        .engines
                        .iter()
                        .filter(|engine| engine.available)
                        .map(|engine| engine.engine)
                        .collect(),
                    kvm: capabilities.kvm.as_ref().is_some_and(|kvm| kvm.available),
                    vcpus_in_use: free.map_or(0, |free| {
                        u32::try_from((i64::from(info.cpus) - free.vcpus).max(0)).unwrap_or(0)
                    }),
                });
            }
            Ok(Err(status)) => {
                host.set_state(cluster::HostState::Unreachable);
                host.state_reason = self
                    .backends
                    .unavailable(name, Service::Compute, status)
                    .message()
                    .to_string();
            }
            Err(_) => {
                host.set_state(cluster::HostState::Unreachable);
                host.state_reason = format!("no answer within {} s", HOST_TIMEOUT.as_secs());
            }
        }
        host
    }
}

/// Memory is compared in steps of this size, so that noise in free memory does not decide
/// between hosts that are alike.
const MEMORY_STEP_KIB: u64 = 256 * 1024;

/// What a host has free now.
#[derive(Debug, Clone, Copy)]
struct Free {
    memory_kib: u64,
    /// CPUs less the vCPUs of its running domains (may be negative: overcommitted).
    vcpus: i64,
}

impl ClusterViews {
    async fn free(&self, host: &str) -> Result<Free, Status> {
        let channel = self.backends.channel(host, Service::Compute)?;
        let facts = async {
            let mut node = compute::node_service_client::NodeServiceClient::new(channel.clone());
            let info = node
                .get_node_info(compute::GetNodeInfoRequest::default())
                .await?
                .into_inner();
            let memory = node
                .get_node_memory_stats(compute::GetNodeMemoryStatsRequest::default())
                .await?
                .into_inner();
            let stats = compute::domain_service_client::DomainServiceClient::new(channel)
                .get_domain_stats(compute::GetDomainStatsRequest {
                    groups: vec![compute::DomainStatsGroup::Vcpu as i32],
                    list_active: true,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let in_use: i64 = stats
                .records
                .iter()
                .filter_map(|r| r.vcpu.as_ref())
                .map(|v| i64::from(v.current))
                .sum();
            Ok::<_, Status>(Free {
                memory_kib: memory.free_kib + memory.cached_kib,
                vcpus: i64::from(info.cpus) - in_use,
            })
        };
        tokio::time::timeout(HOST_TIMEOUT, facts)
            .await
            .map_err(|_| Status::deadline_exceeded(format!("host `{host}` did not answer")))?
            .map_err(|status| self.backends.unavailable(host, Service::Compute, status))
    }

    /// Where a domain with `needs` goes: `named` if it fits there, else the best host.
    pub(crate) async fn place(
        &self,
        needs: &cluster::PlacementRequirements,
        named: &str,
    ) -> Result<cluster::Placement, Status> {
        let fits = |free: &Free| free.memory_kib >= needs.memory_kib;
        if !named.is_empty() {
            if !self.backends.knows(named) {
                return Err(Status::not_found(format!(
                    "host: host `{named}` is not known to this gateway"
                )));
            }
            let free = self.free(named).await?;
            if !fits(&free) {
                return Err(Status::resource_exhausted(format!(
                    "host: `{named}` has {} MiB free; the domain needs {} MiB",
                    free.memory_kib / 1024,
                    needs.memory_kib / 1024
                )));
            }
            return Ok(cluster::Placement {
                host: named.to_string(),
                reason: "named by the request".into(),
            });
        }
        let names: Vec<String> = self
            .backends
            .host_names()
            .into_iter()
            .filter(|name| !needs.exclude_hosts.contains(name))
            .collect();
        let answers = futures::future::join_all(names.iter().map(|name| self.free(name))).await;
        let best = names
            .into_iter()
            .zip(answers)
            .filter_map(|(name, free)| free.ok().filter(fits).map(|free| (name, free)))
            .max_by(|(a_name, a), (b_name, b)| {
                (a.memory_kib / MEMORY_STEP_KIB, a.vcpus)
                    .cmp(&(b.memory_kib / MEMORY_STEP_KIB, b.vcpus))
                    .then_with(|| b_name.cmp(a_name))
            });
        let (host, free) = best.ok_or_else(|| {
            Status::resource_exhausted(format!(
                "no answering host has {} MiB free for the domain",
                needs.memory_kib / 1024
            ))
        })?;
        Ok(cluster::Placement {
            reason: format!(
                "most free memory ({} MiB), then most free vCPUs ({})",
                free.memory_kib / 1024,
                free.vcpus
            ),
            host,
        })
    }
}

/// The definition a placed define or create carries (parsed from its XML, which is kept to
/// be sent on as it came).
fn definition_of(
    source: Option<cluster::define_domain_placed_request::Source>,
) -> Result<(compute::DomainDefinition, Option<String>), Status> {
    use cluster::define_domain_placed_request::Source;
    match source {
        Some(Source::Xml(xml)) => Ok((
            vireo_conf::domain::parse_definition(&xml)
                .map_err(|err| Status::invalid_argument(err.to_string()))?,
            Some(xml),
        )),
        Some(Source::Definition(definition)) => Ok((definition, None)),
        None => Err(Status::invalid_argument("source: give the domain's XML")),
    }
}

/// What a definition needs from a host.
fn requirements_of(def: &compute::DomainDefinition) -> cluster::PlacementRequirements {
    let vcpu = def.vcpu.clone().unwrap_or_default();
    cluster::PlacementRequirements {
        memory_kib: def.memory_kib,
        vcpus: vcpu.current.unwrap_or(vcpu.count),
        engine: def.engine,
        exclude_hosts: Vec::new(),
    }
}

/// Milliseconds since the Unix epoch, as the cluster messages carry times.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn service_kind(service: Service) -> cluster::ServiceKind {
    match service {
        Service::Compute => cluster::ServiceKind::Compute,
        Service::Storage => cluster::ServiceKind::Storage,
        Service::Network => cluster::ServiceKind::Network,
        Service::Nodedev => cluster::ServiceKind::Nodedev,
        Service::Migrate => cluster::ServiceKind::Migrate,
        Service::Gateway => cluster::ServiceKind::Gateway,
    }
}

#[tonic::async_trait]
impl cluster::host_service_server::HostService for ClusterViews {
    async fn list_hosts(
        &self,
        request: Request<cluster::ListHostsRequest>,
    ) -> Result<Response<cluster::ListHostsResponse>, Status> {
        let states = request.into_inner().states;
        for state in &states {
            vireo_runtime::fields::known::<cluster::HostState>(*state, "states")?;
        }
        // Hosts another gateway joined are served here too.
        self.backends.refresh().await?;
        let names = self.backends.host_names();
        let hosts = futures::future::join_all(names.iter().map(|name| self.host(name))).await;
        let hosts = hosts
            .into_iter()
            .filter(|host| states.is_empty() || states.contains(&host.state))
            .collect();
        Ok(Response::new(cluster::ListHostsResponse { hosts }))
    }

    async fn get_host(
        &self,
        request: Request<cluster::GetHostRequest>,
    ) -> Result<Response<cluster::Host>, Status> {
        let name = request.into_inner().name;
        if !self.backends.knows(&name) {
            return Err(Status::not_found(format!(
                "name: host `{name}` is not known to this gateway"
            )));
        }
        Ok(Response::new(self.host(&name).await))
    }

    async fn join_host(
        &self,
        request: Request<cluster::JoinHostRequest>,
    ) -> Result<Response<cluster::JoinHostResponse>, Status> {
        Ok(Response::new(self.join_host(request.into_inner()).await?))
    }

    async fn remove_host(
        &self,
        request: Request<cluster::RemoveHostRequest>,
    ) -> Result<Response<vireo_proto::common::v1::Empty>, Status> {
        self.remove_host(request.into_inner()).await?;
        Ok(Response::new(vireo_proto::common::v1::Empty {}))
    }

    async fn create_join_token(
        &self,
        request: Request<cluster::CreateJoinTokenRequest>,
    ) -> Result<Response<cluster::JoinToken>, Status> {
        Ok(Response::new(
            self.create_join_token(request.into_inner()).await?,
        ))
    }
}

#[tonic::async_trait]
impl cluster::cluster_domain_service_server::ClusterDomainService for ClusterViews {
    async fn list_all_domains(
        &self,
        request: Request<cluster::ListAllDomainsRequest>,
    ) -> Result<Response<cluster::ListAllDomainsResponse>, Status> {
        let request = request.into_inner();
        for host in &request.hosts {
            if !self.backends.knows(host) {
                return Err(Status::not_found(format!(
                    "hosts: host `{host}` is not known to this gateway"
                )));
            }
        }
        let names: Vec<String> = self
            .backends
            .host_names()
            .into_iter()
            .filter(|name| request.hosts.is_empty() || request.hosts.contains(name))
            .collect();
        let answers =
            futures::future::join_all(names.iter().map(|name| self.domains_of(name, &request)))
                .await;
        let mut response = cluster::ListAllDomainsResponse::default();
        for (name, answer) in names.into_iter().zip(answers) {
            match answer {
                Ok(domains) => response.domains.extend(domains),
                Err(status) => response.failed_hosts.push(cluster::HostError {
                    host: name,
                    code: status.code() as i32,
                    message: status.message().to_string(),
                }),
            }
        }
        Ok(Response::new(response))
    }

    async fn place_domain(
        &self,
        request: Request<cluster::PlaceDomainRequest>,
    ) -> Result<Response<cluster::Placement>, Status> {
        let request = request.into_inner();
        let needs = request.requirements.unwrap_or_default();
        Ok(Response::new(self.place(&needs, &request.host).await?))
    }

    async fn define_domain_placed(
        &self,
        request: Request<cluster::DefineDomainPlacedRequest>,
    ) -> Result<Response<cluster::PlacedDomain>, Status> {
        let request = request.into_inner();
        let (definition, xml) = definition_of(request.source)?;
        let source = match xml {
            Some(xml) => compute::define_domain_request::Source::Xml(xml),
            None => compute::define_domain_request::Source::Definition(definition.clone()),
        };
        let placement = self
            .place(&requirements_of(&definition), &request.host)
            .await?;
        let domain = self
            .compute(&placement.host)?
            .define_domain(compute::DefineDomainRequest {
                host: placement.host.clone(),
                source: Some(source),
                ..Default::default()
            })
            .await
            .map_err(|status| {
                self.backends
                    .unavailable(&placement.host, Service::Compute, status)
            })?
            .into_inner();
        Ok(Response::new(cluster::PlacedDomain {
            domain: domain.summary.map(|summary| compute::DomainSummary {
                host: placement.host.clone(),
                ..summary
            }),
            host: placement.host,
        }))
    }

    async fn create_domain_placed(
        &self,
        request: Request<cluster::CreateDomainPlacedRequest>,
    ) -> Result<Response<cluster::PlacedDomain>, Status> {
        use cluster::create_domain_placed_request::Source;
        use cluster::define_domain_placed_request::Source as Placed;
        let request = request.into_inner();
        let (definition, xml) = definition_of(request.source.map(|source| match source {
            Source::Xml(xml) => Placed::Xml(xml),
            Source::Definition(definition) => Placed::Definition(definition),
        }))?;
        let placement = self
            .place(&requirements_of(&definition), &request.host)
            .await?;
        let source = match xml {
            Some(xml) => compute::create_domain_request::Source::Xml(xml),
            None => compute::create_domain_request::Source::Definition(definition),
        };
        let down = |status| {
            self.backends
                .unavailable(&placement.host, Service::Compute, status)
        };
        let mut updates = self
            .compute(&placement.host)?
            .create_domain(compute::CreateDomainRequest {
                host: placement.host.clone(),
                source: Some(source),
                paused: request.paused,
                ..Default::default()
            })
            .await
            .map_err(down)?
            .into_inner();
        let mut created = None;
        while let Some(update) = updates.message().await.map_err(down)? {
            if let Some(compute::create_domain_update::Update::Done(domain)) = update.update {
                created = domain.summary;
            }
        }
        Ok(Response::new(cluster::PlacedDomain {
            domain: created.map(|summary| compute::DomainSummary {
                host: placement.host.clone(),
                ..summary
            }),
            host: placement.host,
        }))
    }
}
