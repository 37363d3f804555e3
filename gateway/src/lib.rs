//! gateway owns the one public API: it serves every `vireo.*.v1` package, routes each per-host call
//! to the owning service of the named host (proxying unary and streaming calls byte for byte),
//! reports the health of every service, and decides who may call what. Cluster-wide calls
//! (`vireo.cluster.v1`) are answered here. Local clients may pass an open file for a volume
//! upload or download on the transfer socket (`transfer.rs`); `/metrics` serves Prometheus
//! text when configured (`metrics.rs`).

mod access;
mod backends;
mod cluster_events;
mod cluster_views;
mod codec;
mod health;
mod install_flow;
mod membership;
mod metrics;
mod provisioning;
mod proxy;
mod registry;
mod transfer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use vireo_proto::cluster::v1 as cluster;
use vireo_runtime::server::{Listener, SocketAccess, serve_routes};
use vireo_runtime::{BoxError, CancellationToken, ServerBuilder, Service, ServiceContext, tls};

pub use backends::Backends;

/// The `[gateway]` section of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The name of the host this gateway runs on; defaults to the system hostname.
    pub host_name: Option<String>,
    /// Where this host's services are when not at `<run-dir>/<service>.sock`: another socket
    /// (`/path` or `unix:///path`), or another machine (`https://HOST:PORT`, mutual TLS).
    #[serde(default)]
    pub backends: BTreeMap<String, String>,
    /// Serve `<run-dir>/gateway-ro.sock` for read-only clients (default true).
    pub readonly_socket: Option<bool>,
    /// Where `/metrics` is served over HTTP (Prometheus text); not served when unset.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Other hosts this gateway routes to, by name (`[gateway.hosts.NAME]`).
    #[serde(default)]
    pub hosts: BTreeMap<String, HostConfig>,
    /// etcd endpoints (`http://127.0.0.1:2379`) holding the cluster registry, shared by every
    /// gateway that names them; `<state-dir>/registry.json` when empty.
    #[serde(default)]
    pub etcd_endpoints: Vec<String>,
}

/// A host of `[gateway.hosts]`: another vireod on this machine, by its run directory, or another
/// machine's gateway by its TLS address (`https://HOST:16514`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub run_dir: Option<PathBuf>,
    pub address: Option<String>,
}

/// The socket of the read-only API, beside the gateway's own.
pub fn readonly_socket(run_dir: &std::path::Path) -> PathBuf {
    run_dir.join("gateway-ro.sock")
}

/// Serves the public API on `<run-dir>/gateway.sock` (root only) and the read-only socket until
/// `shutdown` is cancelled.
pub async fn serve(context: ServiceContext, shutdown: CancellationToken) -> Result<(), BoxError> {
    context.prepare_state_dir()?;
    let config: GatewayConfig = context.section()?;
    let registry = if config.etcd_endpoints.is_empty() {
        registry::Registry::file(context.state_dir.join("registry.json"))
    } else {
        registry::Registry::etcd(&config.etcd_endpoints)
    };
    let backends = Arc::new(Backends::new(
        &context.run_dir,
        &config,
        registry,
        tls::client_tls(&context.file.tls)?,
    )?);
    if let Err(status) = backends.refresh().await {
        tracing::warn!("cluster registry: {}", status.message());
    }
    tokio::spawn(backends::refresh_every(backends.clone(), shutdown.clone()));
    let services = health::ServiceIndex::from_descriptors()?;
    let ca_pem =
        std::fs::read_to_string(context.file.tls.dir().join(tls::CA_CERT)).unwrap_or_default();
    let cluster_views = crate::cluster_views::ClusterViews::new(backends.clone(), ca_pem);

    let server = ServerBuilder::with_health(health::server(backends.clone(), services.clone()))
        .add_service(cluster::host_service_server::HostServiceServer::new(
            cluster_views.clone(),
        ))
        .add_service(
            cluster::provisioning_service_server::ProvisioningServiceServer::new(
                cluster_views.clone(),
            ),
        )
        .add_service(
            cluster::cluster_domain_service_server::ClusterDomainServiceServer::new(cluster_views),
        )
        .add_service(cluster::event_service_server::EventServiceServer::new(
            cluster_events::ClusterEvents::new(backends.clone()),
        ))
        .add_service(cluster::access_service_server::AccessServiceServer::new(
            access::WhoAmI {
                gateway_host: backends.host_name().to_string(),
            },
        ));
    let (routes, advertised, _) = server.into_routes_advertising(&services.proxied_names())?;
    let rpc_metrics = Arc::new(metrics::RpcMetrics::default());
    let routes = proxy::with_fallback(routes, backends.clone(), rpc_metrics.clone());
    let metrics = {
        let backends = backends.clone();
        let shutdown = shutdown.clone();
        async move {
            match config.metrics_address {
                Some(address) => metrics::serve(address, backends, rpc_metrics, shutdown).await,
                None => Ok(()),
            }
        }
    };

    let mut listeners = vec![Listener::Unix(
        context.socket.clone(),
        SocketAccess::RootOnly,
    )];
    if config.readonly_socket.unwrap_or(true) {
        listeners.push(Listener::Unix(
            readonly_socket(&context.run_dir),
            SocketAccess::ReadOnly,
        ));
    }
    listeners.extend(tls::listener(&context.file.tls, Service::Gateway.name())?);
    let audit: Arc<dyn vireo_runtime::access::Audit> = Arc::new(access::AuditLog::open(
        &context.state_dir.join("audit.log"),
    )?);
    tracing::info!(socket = %context.socket.display(), "gateway serving");
    let transfers = transfer::serve(
        backends,
        vireo_runtime::transfer::socket_beside(&context.socket),
        shutdown.clone(),
    );
    let (served, transferred, metered) = tokio::join!(
        serve_routes(
            routes,
            listeners,
            Some(audit),
            None,
            &advertised,
            shutdown.clone()
        ),
        vireo_runtime::transfer::stop_all_on_failure(transfers, &shutdown),
        metrics
    );
    served?;
    transferred?;
    metered?;
    Ok(())
}

/// Which process owns a gRPC path (`/vireo.storage.v1.StoragePoolService/ListPools` -> Storage).
pub fn owner_of_path(path: &str) -> Option<Service> {
    let service = path.trim_start_matches('/').split('/').next()?;
    let package = service.rsplit_once('.')?.0;
    Service::owning(package)
}
