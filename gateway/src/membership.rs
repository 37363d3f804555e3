//! Cluster membership: join tokens, hosts joining with one, and hosts leaving. A join either
//! completes (token used up, host in the registry and served) or leaves nothing behind.

use std::time::Duration;

use tonic::Status;
use vireo_proto::cluster::v1 as cluster;
use vireo_proto::compute::v1 as compute;
use vireo_runtime::Service;
use vireo_runtime::access::{random_token, token_sha256};

use crate::backends::{Backends, HostBackend};
use crate::cluster_views::{ClusterViews, now_ms};
use crate::registry::{JoinedHost, StoredToken};

/// A join token's lifetime when the request gives none, and the longest allowed.
const DEFAULT_TOKEN_TTL_S: u64 = 3600;
const MAX_TOKEN_TTL_S: u64 = 7 * 24 * 3600;

/// How long a joining host has to answer before the join is refused.
const JOIN_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A host name as clusters use it: letters, digits, `-`, `_`, `.`, at most 63 characters.
fn check_host_name(name: &str, field: &str) -> Result<(), Status> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{field}: `{name}` is not a valid host name (letters, digits, -, _ and ., at most 63)"
        )))
    }
}

impl ClusterViews {
    pub async fn create_join_token(
        &self,
        request: cluster::CreateJoinTokenRequest,
    ) -> Result<cluster::JoinToken, Status> {
        if !request.host_name.is_empty() {
            check_host_name(&request.host_name, "host_name")?;
        }
        let ttl_s = match request.ttl_s {
            0 => DEFAULT_TOKEN_TTL_S,
            ttl if ttl > MAX_TOKEN_TTL_S => {
                return Err(Status::invalid_argument(format!(
                    "ttl_s: {ttl} is longer than the longest allowed, {MAX_TOKEN_TTL_S} s (7 days)"
                )));
            }
            ttl => ttl,
        };
        let token = random_token().map_err(Status::internal)?;
        let expires_unix_ms = now_ms().saturating_add(i64::try_from(ttl_s * 1000).unwrap_or(0));
        let stored = StoredToken {
            expires_unix_ms,
            host_name: request.host_name,
        };
        self.backends()
            .registry
            .add_token(&token_sha256(&token), &stored, ttl_s)
            .await?;
        Ok(cluster::JoinToken {
            token,
            expires_unix_ms,
        })
    }

    pub async fn join_host(
        &self,
        request: cluster::JoinHostRequest,
    ) -> Result<cluster::JoinHostResponse, Status> {
        let backends = self.backends();
        let hash = token_sha256(request.join_token.trim());
        let token = backends.registry.peek_token(&hash).await?;
        let token = token
            .filter(|token| token.expires_unix_ms > now_ms())
            .ok_or_else(|| {
                Status::unauthenticated("join_token: unknown, already used or expired")
            })?;
        check_host_name(&request.name, "name")?;
        if !token.host_name.is_empty() && token.host_name != request.name {
            return Err(Status::permission_denied(format!(
                "join_token: it is for host `{}`, not `{}`",
                token.host_name, request.name
            )));
        }
        if !request.services.is_empty() {
            return Err(Status::invalid_argument(
                "services: a host joins by one address (its run directory or its gateway); per-service addresses are not supported",
            ));
        }
        if request
            .tls
            .as_ref()
            .is_some_and(|tls| !tls.csr_pem.is_empty())
        {
            return Err(Status::invalid_argument(
                "tls.csr_pem: the gateway does not sign certificates; issue the host's with `vireo pki server`",
            ));
        }
        if backends.host_fresh(&request.name).await.is_ok() {
            return Err(Status::already_exists(format!(
                "name: host `{}` already exists",
                request.name
            )));
        }
        let backend = std::sync::Arc::new(
            HostBackend::at(&request.address, backends.tls())
                .map_err(|err| Status::invalid_argument(format!("address: {err}")))?,
        );
        // A host that does not answer is not added: it would only show as unreachable.
        let probe = async {
            compute::node_service_client::NodeServiceClient::new(Backends::channel_of(
                &backend,
                Service::Compute,
            )?)
            .get_version(compute::GetVersionRequest::default())
            .await
        };
        let version = match tokio::time::timeout(JOIN_PROBE_TIMEOUT, probe).await {
            Ok(Ok(version)) => version.into_inner().vireo_version,
            Ok(Err(status)) => {
                return Err(Status::unavailable(format!(
                    "address: host `{}` at {} does not answer: {}",
                    request.name,
                    request.address,
                    status.message()
                )));
            }
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "address: host `{}` at {} did not answer within {} s",
                    request.name,
                    request.address,
                    JOIN_PROBE_TIMEOUT.as_secs()
                )));
            }
        };
        // Recorded first, then the token used up: a token lost to a failure would strand the
        // joining host; a host recorded with a token another join took is removed again.
        let joined = JoinedHost {
            name: request.name.clone(),
            address: request.address.clone(),
            joined_unix_ms: now_ms(),
            vireo_version: version,
        };
        let _membership = backends.membership.lock().await;
        backends.registry.add_host(&joined).await?;
        let taken = backends.registry.take_token(&hash).await;
        if !matches!(taken, Ok(true)) {
            let _ = backends.registry.remove_host(&joined.name).await;
            taken?;
            return Err(Status::unauthenticated(
                "join_token: unknown, already used or expired",
            ));
        }
        let backend = HostBackend::at(&request.address, backends.tls())
            .map_err(|err| Status::invalid_argument(format!("address: {err}")))?;
        backends.insert_joined(joined, backend);
        tracing::info!(
            host = request.name,
            address = request.address,
            "host joined"
        );
        Ok(cluster::JoinHostResponse {
            host: Some(self.host(&request.name).await),
            cluster_ca_pem: self.cluster_ca_pem(),
            certificate_pem: String::new(),
        })
    }

    pub async fn remove_host(&self, request: cluster::RemoveHostRequest) -> Result<(), Status> {
        let backends = self.backends();
        let name = request.name;
        let backend = backends.host_fresh(&name).await?;
        if name == backends.host_name() || name.is_empty() {
            return Err(Status::failed_precondition(format!(
                "name: `{}` is this gateway's own host",
                backends.host_name()
            )));
        }
        if backend.joined.is_none() {
            return Err(Status::failed_precondition(format!(
                "name: host `{name}` comes from [gateway.hosts.{name}] in the config file; remove it there"
            )));
        }
        if !request.force {
            let running = self
                .domains_of(
                    &name,
                    &cluster::ListAllDomainsRequest {
                        include_active: true,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|status| {
                    Status::failed_precondition(format!(
                        "cannot check host `{name}` for running domains ({}); use force to remove it anyway",
                        status.message()
                    ))
                })?;
            if !running.is_empty() {
                let names: Vec<&str> = running.iter().map(|d| d.name.as_str()).collect();
                return Err(Status::failed_precondition(format!(
                    "host `{name}` runs {} domain(s): {}; stop or migrate them, or use force",
                    names.len(),
                    names.join(", ")
                )));
            }
        }
        let _membership = backends.membership.lock().await;
        backends.registry.remove_host(&name).await?;
        backends.remove_joined(&name);
        tracing::info!(host = name, "host removed");
        Ok(())
    }
}
