//! Answers RPCs whose behaviour has not been built yet. Generated servers answer such calls with a
//! bare UNIMPLEMENTED; this layer rewrites the message to name the method and the work that brings
//! it, so a client learns what is missing instead of seeing a generic error. It never turns a
//! failure into success.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::{Code, Status};
use tower::{Layer, Service};

/// The message tonic's generated default handlers answer with.
const GENERATED_STUB_MESSAGE: &str = "Not yet implemented";

/// Which piece of planned work brings each part of the API, by gRPC path prefix (first match wins).
const PLANNED: &[(&str, &str)] = &[
    (
        "/vireo.storage.v1.",
        "storage pools and volumes arrive with svc-storage (issue #6)",
    ),
    (
        "/vireo.network.v1.",
        "network port XML and QoS arrive with the rest of svc-network (issue #7)",
    ),
    (
        "/vireo.nodedev.v1.",
        "node device events (nodedev-event) are not built yet",
    ),
    (
        "/vireo.migrate.v1.",
        "migration events, the save-image XML calls and the migration peer service are not built",
    ),
];

/// The status a not-yet-built method answers with.
pub fn planned_status(path: &str) -> Status {
    let method = path.trim_start_matches('/');
    let plan = PLANNED
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix))
        .map_or("it is not part of this release", |(_, plan)| plan);
    Status::unimplemented(format!("{method} is not implemented yet: {plan}"))
}

#[derive(Debug, Clone, Default)]
pub struct PendingLayer;

impl<S> Layer<S> for PendingLayer {
    type Service = Pending<S>;

    fn layer(&self, inner: S) -> Pending<S> {
        Pending { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Pending<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Pending<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            let is_stub = Status::from_header_map(headers).is_some_and(|status| {
                status.code() == Code::Unimplemented && status.message() == GENERATED_STUB_MESSAGE
            });
            if is_stub {
                // Status::add_header only fails on a message that cannot be encoded; ours always can.
                let _ = planned_status(&path).add_header(headers);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_method_and_plan() {
        let status = planned_status("/vireo.storage.v1.StoragePoolService/BuildPool");
        assert_eq!(status.code(), Code::Unimplemented);
        assert!(
            status.message().starts_with(
                "vireo.storage.v1.StoragePoolService/BuildPool is not implemented yet"
            )
        );
        assert!(status.message().contains("issue #6"));
        let status = planned_status("/vireo.cluster.v1.SomeService/Method");
        assert!(status.message().contains("it is not part of this release"));
    }
}
