//! One event stream merged from every host (EventService/WatchEvents): a task per host and kind
//! (domain, storage, network) follows that host's events and forwards each, marked with its host and a sequence number of
//! this stream. A host whose stream breaks is reported (state change to UNREACHABLE), retried
//! every second, and reported again when it answers (UP, then EVENTS_LOST: what happened in
//! between is not replayed). The stream ends when the client goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use vireo_proto::cluster::v1 as cluster;
use vireo_proto::compute::v1 as compute;
use vireo_proto::network::v1 as network;
use vireo_proto::storage::v1 as storage;
use vireo_runtime::Service;

use crate::backends::Backends;
use crate::cluster_views::now_ms;

/// How long a broken host stream waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct ClusterEvents {
    backends: Arc<Backends>,
}

impl ClusterEvents {
    pub fn new(backends: Arc<Backends>) -> ClusterEvents {
        ClusterEvents { backends }
    }
}

/// Sends one event of `host`; false when the client has gone.
async fn send(
    out: &mpsc::Sender<Result<cluster::ClusterEvent, Status>>,
    seq: &AtomicU64,
    host: &str,
    event: cluster::cluster_event::Event,
) -> bool {
    out.send(Ok(cluster::ClusterEvent {
        host: host.to_string(),
        seq: seq.fetch_add(1, Ordering::Relaxed) + 1,
        time_unix_ms: now_ms(),
        event: Some(event),
    }))
    .await
    .is_ok()
}

fn host_event(
    host: &str,
    kind: cluster::HostEventType,
    state: cluster::HostState,
    previous: cluster::HostState,
) -> cluster::cluster_event::Event {
    cluster::cluster_event::Event::HostEvent(cluster::HostEvent {
        name: host.to_string(),
        r#type: kind as i32,
        state: state as i32,
        previous_state: previous as i32,
        ..Default::default()
    })
}

type HostEvents =
    futures::stream::BoxStream<'static, Result<cluster::cluster_event::Event, Status>>;

/// Subscribes to one kind of `host`'s events, each turned into a cluster event.
async fn subscribe(
    backends: &Backends,
    host: &str,
    kind: cluster::EventKind,
) -> Result<HostEvents, Status> {
    use cluster::cluster_event::Event;
    use futures::StreamExt;
    let events: HostEvents = match kind {
        cluster::EventKind::Domain => {
            let channel = backends.channel(host, Service::Compute)?;
            let host = host.to_string();
            compute::domain_service_client::DomainServiceClient::new(channel)
                .watch_domain_events(compute::WatchDomainEventsRequest::default())
                .await?
                .into_inner()
                .map(move |event| {
                    event.map(|event| {
                        Event::Domain(compute::DomainEvent {
                            host: host.clone(),
                            ..event
                        })
                    })
                })
                .boxed()
        }
        cluster::EventKind::Storage => {
            let channel = backends.channel(host, Service::Storage)?;
            storage::storage_pool_service_client::StoragePoolServiceClient::new(channel)
                .watch_storage_events(storage::WatchStorageEventsRequest::default())
                .await?
                .into_inner()
                .map(|event| event.map(Event::Storage))
                .boxed()
        }
        cluster::EventKind::Network => {
            let channel = backends.channel(host, Service::Network)?;
            network::network_service_client::NetworkServiceClient::new(channel)
                .watch_network_events(network::WatchNetworkEventsRequest::default())
                .await?
                .into_inner()
                .map(|event| event.map(Event::Network))
                .boxed()
        }
        other => {
            return Err(Status::unimplemented(format!(
                "kinds: {other:?} events are not merged across hosts"
            )));
        }
    };
    Ok(events)
}

/// What one follower does: which kind of a host's events it follows, whether it forwards them,
/// and whether it tells when the host's stream breaks and comes back.
#[derive(Debug, Clone, Copy)]
struct Follower {
    kind: cluster::EventKind,
    forwards: bool,
    reports_host: bool,
}

/// Follows one kind of `host`'s events until the client goes.
async fn follow(
    backends: Arc<Backends>,
    host: String,
    follower: Follower,
    out: mpsc::Sender<Result<cluster::ClusterEvent, Status>>,
    seq: Arc<AtomicU64>,
) {
    let Follower {
        kind,
        forwards,
        reports_host,
    } = follower;
    let mut broken = false;
    loop {
        if let Ok(mut events) = subscribe(&backends, &host, kind).await {
            if broken && reports_host {
                use cluster::HostEventType::{EventsLost, StateChanged};
                use cluster::HostState::{Unreachable, Up};
                let up = host_event(&host, StateChanged, Up, Unreachable);
                let lost = host_event(&host, EventsLost, Up, Up);
                if !send(&out, &seq, &host, up).await || !send(&out, &seq, &host, lost).await {
                    return;
                }
            }
            broken = false;
            while let Some(Ok(event)) = futures::StreamExt::next(&mut events).await {
                if forwards && !send(&out, &seq, &host, event).await {
                    return;
                }
            }
        }
        if !broken {
            broken = true;
            use cluster::HostState::{Unreachable, Up};
            let down = host_event(&host, cluster::HostEventType::StateChanged, Unreachable, Up);
            if reports_host && !send(&out, &seq, &host, down).await {
                return;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = out.closed() => return,
        }
    }
}

/// The kinds merged when a client names none, in the order their followers start.
const MERGED_KINDS: [cluster::EventKind; 3] = [
    cluster::EventKind::Domain,
    cluster::EventKind::Storage,
    cluster::EventKind::Network,
];

#[tonic::async_trait]
impl cluster::event_service_server::EventService for ClusterEvents {
    async fn watch_events(
        &self,
        request: Request<cluster::WatchEventsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<cluster::ClusterEvent>>, Status> {
        let request = request.into_inner();
        let mut kinds = Vec::new();
        for kind in &request.kinds {
            let kind = vireo_runtime::fields::known::<cluster::EventKind>(*kind, "kinds")?;
            if !MERGED_KINDS.contains(&kind) && kind != cluster::EventKind::Host {
                return Err(Status::unimplemented(format!(
                    "kinds: {kind:?} events are not merged across hosts (node device and migration events are not built yet)"
                )));
            }
            kinds.push(kind);
        }
        let host_events = kinds.is_empty() || kinds.contains(&cluster::EventKind::Host);
        let mut followers: Vec<Follower> = MERGED_KINDS
            .into_iter()
            .filter(|kind| kinds.is_empty() || kinds.contains(kind))
            .enumerate()
            .map(|(index, kind)| Follower {
                kind,
                forwards: true,
                reports_host: host_events && index == 0,
            })
            .collect();
        if followers.is_empty() {
            // Only host events: the domain stream tells whether the host answers.
            followers.push(Follower {
                kind: cluster::EventKind::Domain,
                forwards: false,
                reports_host: true,
            });
        }
        for host in &request.hosts {
            if !self.backends.knows(host) {
                return Err(Status::not_found(format!(
                    "hosts: host `{host}` is not known to this gateway"
                )));
            }
        }
        let (out, events) = mpsc::channel(256);
        let seq = Arc::new(AtomicU64::new(0));
        for host in self.backends.host_names() {
            if !request.hosts.is_empty() && !request.hosts.contains(&host) {
                continue;
            }
            for follower in &followers {
                tokio::spawn(follow(
                    self.backends.clone(),
                    host.clone(),
                    *follower,
                    out.clone(),
                    seq.clone(),
                ));
            }
        }
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(events),
        )))
    }
}
