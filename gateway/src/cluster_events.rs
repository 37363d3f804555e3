//! One event stream merged from every host (EventService/WatchEvents): a task per host follows
//! that host's domain events and forwards each, marked with its host and a sequence number of
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

/// Follows `host`'s domain events until the client goes.
async fn follow(
    backends: Arc<Backends>,
    host: String,
    out: mpsc::Sender<Result<cluster::ClusterEvent, Status>>,
    seq: Arc<AtomicU64>,
) {
    let mut broken = false;
    loop {
        let subscribed = async {
            let channel = backends.channel(&host, Service::Compute)?;
            compute::domain_service_client::DomainServiceClient::new(channel)
                .watch_domain_events(compute::WatchDomainEventsRequest::default())
                .await
                .map(tonic::Response::into_inner)
        }
        .await;
        if let Ok(mut events) = subscribed {
            if broken {
                broken = false;
                use cluster::HostEventType::{EventsLost, StateChanged};
                use cluster::HostState::{Unreachable, Up};
                let up = host_event(&host, StateChanged, Up, Unreachable);
                let lost = host_event(&host, EventsLost, Up, Up);
                if !send(&out, &seq, &host, up).await || !send(&out, &seq, &host, lost).await {
                    return;
                }
            }
            while let Ok(Some(event)) = events.message().await {
                let event = compute::DomainEvent {
                    host: host.clone(),
                    ..event
                };
                if !send(
                    &out,
                    &seq,
                    &host,
                    cluster::cluster_event::Event::Domain(event),
                )
                .await
                {
                    return;
                }
            }
        }
        if !broken {
            broken = true;
            use cluster::HostState::{Unreachable, Up};
            let down = host_event(&host, cluster::HostEventType::StateChanged, Unreachable, Up);
            if !send(&out, &seq, &host, down).await {
                return;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = out.closed() => return,
        }
    }
}

#[tonic::async_trait]
impl cluster::event_service_server::EventService for ClusterEvents {
    async fn watch_events(
        &self,
        request: Request<cluster::WatchEventsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<cluster::ClusterEvent>>, Status> {
        let request = request.into_inner();
        for kind in &request.kinds {
            let kind = vireo_runtime::fields::known::<cluster::EventKind>(*kind, "kinds")?;
            if kind != cluster::EventKind::Domain {
                return Err(Status::unimplemented(format!(
                    "kinds: only domain events are merged across hosts so far, not {kind:?}"
                )));
            }
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
            if request.hosts.is_empty() || request.hosts.contains(&host) {
                tokio::spawn(follow(
                    self.backends.clone(),
                    host,
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
