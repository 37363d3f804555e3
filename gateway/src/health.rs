//! gRPC health through the gateway: a vireo service is SERVING when the process that owns it says
//! so; the gateway's own services and the empty name are SERVING while the gateway runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use prost::Message;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use vireo_runtime::Service;

use crate::backends::Backends;

/// How often a Watch re-checks a backend.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Every service in the descriptor set, with the process that answers it.
#[derive(Debug, Clone)]
pub struct ServiceIndex {
    owners: BTreeMap<String, Service>,
}

impl ServiceIndex {
    pub fn from_descriptors() -> Result<ServiceIndex, String> {
        let set = prost_types::FileDescriptorSet::decode(vireo_proto::FILE_DESCRIPTOR_SET)
            .map_err(|err| format!("decoding the API descriptors: {err}"))?;
        let mut owners = BTreeMap::new();
        for file in set.file {
            let package = file.package().to_string();
            let Some(owner) = Service::owning(&package) else {
                continue;
            };
            for service in file.service {
                owners.insert(format!("{package}.{}", service.name()), owner);
            }
        }
        Ok(ServiceIndex { owners })
    }

    /// Fully qualified names of the services the gateway forwards to other processes.
    pub fn proxied_names(&self) -> Vec<String> {
        self.owners
            .iter()
            .filter(|(_, owner)| **owner != Service::Gateway)
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn owner(&self, name: &str) -> Option<Service> {
        self.owners.get(name).copied()
    }
}

pub fn server(backends: Arc<Backends>, services: ServiceIndex) -> HealthServer<GatewayHealth> {
    HealthServer::new(GatewayHealth { backends, services })
}

#[derive(Clone)]
pub struct GatewayHealth {
    backends: Arc<Backends>,
    services: ServiceIndex,
}

impl GatewayHealth {
    async fn status_of(&self, name: &str) -> Result<ServingStatus, Status> {
        let owner = match name {
            "" | "grpc.health.v1.Health" => return Ok(ServingStatus::Serving),
            _ => self
                .services
                .owner(name)
                .ok_or_else(|| Status::not_found(format!("unknown service `{name}`")))?,
        };
        if owner == Service::Gateway {
            return Ok(ServingStatus::Serving);
        }
        let channel = self.backends.channel("", owner)?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: name.to_string(),
            })
            .await;
        Ok(match reply {
            Ok(reply) => reply.into_inner().status(),
            Err(status) => {
                tracing::debug!(service = name, %status, "backend health check failed");
                ServingStatus::NotServing
            }
        })
    }
}

#[tonic::async_trait]
impl Health for GatewayHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let status = self.status_of(&request.into_inner().service).await?;
        Ok(Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }

    type WatchStream = BoxStream<'static, Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let name = request.into_inner().service;
        let first = self.status_of(&name).await?;
        let health = self.clone();
        let updates = futures::stream::unfold(
            (health, name, None::<ServingStatus>, Some(first)),
            |state| async move {
                let (health, name, mut last, mut next) = state;
                loop {
                    let status = match next.take() {
                        Some(status) => status,
                        None => {
                            tokio::time::sleep(WATCH_INTERVAL).await;
                            health
                                .status_of(&name)
                                .await
                                .unwrap_or(ServingStatus::ServiceUnknown)
                        }
                    };
                    if last != Some(status) {
                        last = Some(status);
                        let reply = Ok(HealthCheckResponse {
                            status: status as i32,
                        });
                        return Some((reply, (health, name, last, None)));
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(updates)))
    }
}
