//! The services behind the gateway, per host: this one, reached over the unix sockets of its
//! services; the hosts `[gateway.hosts.NAME]` names; and the hosts that joined (the registry). A
//! host is a vireod on this machine, by its run directory (`unix:///RUN-DIR`), or another
//! machine's gateway over TCP with mutual TLS (`https://HOST:PORT`), which routes to its own
//! services.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tonic::Status;
use tonic::transport::{Channel, ClientTlsConfig};
use vireo_runtime::Service;

use crate::GatewayConfig;
use crate::registry::{JoinedHost, Registry};

pub use vireo_runtime::client::HOST_METADATA;

/// How one host is reached.
pub struct HostBackend {
    /// `unix:///RUN-DIR` or `https://HOST:PORT`.
    pub address: String,
    /// Each service's address and channel.
    services: HashMap<Service, (String, Channel)>,
    /// The host is another gateway, which routes each call to its own services.
    pub remote_gateway: bool,
    /// Set for hosts that joined (not from the config file).
    pub joined: Option<JoinedHost>,
}

/// A lazy TLS channel to `address` (`https://HOST:PORT`).
fn tls_channel(address: &str, tls: Option<&ClientTlsConfig>) -> Result<Channel, String> {
    let tls = tls.ok_or_else(|| {
        format!("`{address}`: reaching it over TLS needs a client certificate (clientcert.pem in [tls] pki_dir)")
    })?;
    Ok(tonic::transport::Endpoint::from_shared(address.to_string())
        .map_err(|err| format!("`{address}`: {err}"))?
        .tls_config(tls.clone())
        .map_err(|err| format!("`{address}`: {err}"))?
        .initial_stream_window_size(vireo_runtime::server::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(vireo_runtime::server::CONNECTION_WINDOW_BYTES)
        .connect_lazy())
}

impl HostBackend {
    /// The services of a vireod whose sockets are `<run_dir>/<service>.sock`, but for
    /// `overrides`: another socket (`/path`, `unix:///path`) or a service on another machine
    /// (`https://HOST:PORT`).
    fn local(
        run_dir: &Path,
        overrides: &BTreeMap<String, String>,
        tls: Option<&ClientTlsConfig>,
    ) -> Result<HostBackend, String> {
        let mut services = HashMap::new();
        for service in Service::HOST_SERVICES {
            let backend = match overrides.get(service.name()) {
                Some(address) if address.starts_with("https://") => {
                    (address.clone(), tls_channel(address, tls)?)
                }
                Some(address) => {
                    let socket = PathBuf::from(address.strip_prefix("unix://").unwrap_or(address));
                    if !socket.is_absolute() {
                        return Err(format!(
                            "{}: `{address}` is neither an absolute socket path nor https://HOST:PORT",
                            service.name()
                        ));
                    }
                    let channel = vireo_runtime::client::lazy_unix(&socket);
                    (format!("unix://{}", socket.display()), channel)
                }
                None => {
                    let socket = service.socket_in(run_dir);
                    let channel = vireo_runtime::client::lazy_unix(&socket);
                    (format!("unix://{}", socket.display()), channel)
                }
            };
            services.insert(service, backend);
        }
        Ok(HostBackend {
            address: format!("unix://{}", run_dir.display()),
            services,
            remote_gateway: false,
            joined: None,
        })
    }

    /// A host at `address`: `unix:///RUN-DIR` or `https://HOST:PORT` (its gateway).
    pub fn at(address: &str, tls: Option<&ClientTlsConfig>) -> Result<HostBackend, String> {
        if let Some(run_dir) = address.strip_prefix("unix://") {
            let run_dir = Path::new(run_dir);
            if !run_dir.is_absolute() || run_dir.components().any(|c| c.as_os_str() == "..") {
                return Err(format!(
                    "`{address}`: unix:// needs an absolute run directory without `..`"
                ));
            }
            return HostBackend::local(run_dir, &BTreeMap::new(), tls);
        }
        if address.starts_with("https://") {
            let channel = tls_channel(address, tls)?;
            let services = Service::HOST_SERVICES
                .into_iter()
                .map(|service| (service, (address.to_string(), channel.clone())))
                .collect();
            return Ok(HostBackend {
                address: address.to_string(),
                services,
                remote_gateway: true,
                joined: None,
            });
        }
        Err(format!(
            "`{address}`: expected unix:///RUN-DIR or https://HOST:PORT"
        ))
    }
}

impl HostBackend {
    /// The unix socket of `service` when this host is on this machine.
    pub fn unix_socket(&self, service: Service) -> Option<&Path> {
        self.services
            .get(&service)
            .and_then(|(address, _)| address.strip_prefix("unix://"))
            .map(Path::new)
    }
}

pub struct Backends {
    host_name: String,
    /// Every host, this one included, by name.
    hosts: RwLock<BTreeMap<String, Arc<HostBackend>>>,
    /// The client side of TLS, for hosts reached over TCP.
    tls: Option<ClientTlsConfig>,
    pub registry: Registry,
    /// Held while the registry is read and applied, or changed: a refresh never applies a view
    /// older than a join or removal made meanwhile.
    pub membership: tokio::sync::Mutex<()>,
}

impl Backends {
    /// This host's services at `<run-dir>/<service>.sock`, or where `[gateway.backends]` says,
    /// and the other hosts of `[gateway.hosts]`. Joined hosts come with `refresh`.
    pub fn new(
        run_dir: &Path,
        config: &GatewayConfig,
        registry: Registry,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Backends, String> {
        let host_name = match &config.host_name {
            Some(name) => name.clone(),
            None => nix::unistd::gethostname()
                .map_err(|err| format!("gethostname: {err}"))?
                .to_string_lossy()
                .into_owned(),
        };
        for name in config.backends.keys() {
            if !Service::HOST_SERVICES
                .iter()
                .any(|service| service.name() == name)
            {
                return Err(format!("[gateway.backends]: unknown service `{name}`"));
            }
        }
        let mut hosts = BTreeMap::new();
        let own = HostBackend::local(run_dir, &config.backends, tls.as_ref())
            .map_err(|err| format!("[gateway.backends] {err}"))?;
        hosts.insert(host_name.clone(), Arc::new(own));
        for (name, host) in &config.hosts {
            if *name == host_name {
                return Err(format!(
                    "[gateway.hosts.{name}]: that is this gateway's own host"
                ));
            }
            let address = match (&host.run_dir, &host.address) {
                (Some(run_dir), None) => format!("unix://{}", run_dir.display()),
                (None, Some(address)) => address.clone(),
                _ => {
                    return Err(format!(
                        "[gateway.hosts.{name}]: give either run_dir or address"
                    ));
                }
            };
            let backend = HostBackend::at(&address, tls.as_ref())
                .map_err(|err| format!("[gateway.hosts.{name}]: {err}"))?;
            hosts.insert(name.clone(), Arc::new(backend));
        }
        Ok(Backends {
            host_name,
            hosts: RwLock::new(hosts),
            tls,
            registry,
            membership: tokio::sync::Mutex::new(()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<HostBackend>>> {
        self.hosts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<HostBackend>>> {
        self.hosts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Brings the joined hosts in line with the registry (another gateway may have added or
    /// removed some).
    pub async fn refresh(&self) -> Result<(), Status> {
        let _membership = self.membership.lock().await;
        let joined = self.registry.hosts().await?;
        let mut hosts = self.write();
        hosts.retain(|name, backend| {
            backend.joined.is_none() || joined.iter().any(|host| host.name == *name)
        });
        for host in joined {
            let current = hosts.get(&host.name);
            if current.is_some_and(|backend| backend.joined.as_ref() == Some(&host))
                || current.is_some_and(|backend| backend.joined.is_none())
            {
                continue;
            }
            match HostBackend::at(&host.address, self.tls.as_ref()) {
                Ok(mut backend) => {
                    backend.joined = Some(host.clone());
                    hosts.insert(host.name.clone(), Arc::new(backend));
                }
                Err(err) => tracing::warn!(host = host.name, "registry: {err}"),
            }
        }
        Ok(())
    }

    /// Adds a joined host to this gateway's view (after the registry has it).
    pub fn insert_joined(&self, host: JoinedHost, mut backend: HostBackend) {
        backend.joined = Some(host.clone());
        self.write().insert(host.name, Arc::new(backend));
    }

    pub fn remove_joined(&self, name: &str) {
        self.write()
            .retain(|known, backend| known != name || backend.joined.is_none());
    }

    pub fn tls(&self) -> Option<&ClientTlsConfig> {
        self.tls.as_ref()
    }

    /// Every host's name, sorted.
    pub fn host_names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    pub fn knows(&self, host: &str) -> bool {
        self.read().contains_key(host)
    }

    /// How `host` is reached, or NotFound naming the hosts there are.
    pub fn host(&self, host: &str) -> Result<Arc<HostBackend>, Status> {
        let host = self.resolve(host);
        let hosts = self.read();
        hosts.get(host).cloned().ok_or_else(|| {
            Status::not_found(format!(
                "host `{host}` is not known to this gateway (it knows {})",
                hosts
                    .keys()
                    .map(|name| format!("`{name}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// As `host`, first asking the registry when the name is new here (another gateway may
    /// have just joined it).
    pub async fn host_fresh(&self, host: &str) -> Result<Arc<HostBackend>, Status> {
        if let Ok(backend) = self.host(host) {
            return Ok(backend);
        }
        self.refresh().await?;
        self.host(host)
    }

    /// Each service's address on `host`, sorted by service.
    pub fn endpoints_of(&self, host: &str) -> Vec<(Service, String)> {
        let mut endpoints: Vec<(Service, String)> = self
            .host(host)
            .map(|backend| {
                backend
                    .services
                    .iter()
                    .map(|(service, (address, _))| (*service, address.clone()))
                    .collect()
            })
            .unwrap_or_default();
        endpoints.sort_by_key(|(service, _)| service.name());
        endpoints
    }

    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// The channel to `service` on `host` (empty means this gateway's own host).
    pub fn channel(&self, host: &str, service: Service) -> Result<Channel, Status> {
        Self::channel_of(&self.host(host)?, service)
    }

    pub fn channel_of(backend: &Arc<HostBackend>, service: Service) -> Result<Channel, Status> {
        backend
            .services
            .get(&service)
            .map(|(_, channel)| channel.clone())
            .ok_or_else(|| {
                Status::unimplemented(format!(
                    "the gateway does not route to the {} service",
                    service.name()
                ))
            })
    }

    /// The gRPC socket of `service` on `host`, which must be on this machine.
    pub fn socket(&self, host: &str, service: Service) -> Result<PathBuf, Status> {
        let backend = self.host(host)?;
        let address = backend
            .services
            .get(&service)
            .map(|(address, _)| address.clone())
            .unwrap_or_default();
        address
            .strip_prefix("unix://")
            .map(PathBuf::from)
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "host `{}` is on another machine ({address}); local transfers reach only this machine's hosts",
                    self.resolve(host)
                ))
            })
    }

    /// The name a call's `host` means: this host when empty.
    pub fn resolve<'a>(&'a self, host: &'a str) -> &'a str {
        if host.is_empty() {
            &self.host_name
        } else {
            host
        }
    }

    /// Adds which service and host failed to a transport error, so a client knows what is down.
    pub fn unavailable(&self, host: &str, service: Service, status: Status) -> Status {
        if status.code() != tonic::Code::Unavailable {
            return status;
        }
        let host = self.resolve(host);
        let address = self
            .host(host)
            .ok()
            .and_then(|backend| backend.services.get(&service).map(|(a, _)| a.clone()))
            .unwrap_or_default();
        Status::unavailable(format!(
            "the {} service of host `{host}` is unavailable ({address}): {}",
            service.name(),
            status.message()
        ))
    }
}

/// How often the joined hosts are re-read from the registry, for hosts other gateways add.
const REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Re-reads the registry until `shutdown`.
pub async fn refresh_every(backends: Arc<Backends>, shutdown: vireo_runtime::CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(REFRESH_INTERVAL) => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(status) = backends.refresh().await {
            tracing::debug!("cluster registry: {}", status.message());
        }
    }
}
