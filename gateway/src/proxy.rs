//! Forwarding any per-host call to the owning service, unary or streaming, as raw bytes. Streams
//! flow both ways with HTTP/2 flow control, so a slow reader slows its writer (backpressure).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use http::uri::PathAndQuery;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

use crate::backends::{Backends, HOST_METADATA};
use crate::codec::{RawCodec, leading_host_field};
use crate::metrics::RpcMetrics;
use crate::owner_of_path;

type Reply = Result<Response<BoxStream<'static, Result<Bytes, Status>>>, Status>;

/// The gateway's own routes, with every other path forwarded to its owning service.
pub fn with_fallback(routes: Routes, backends: Arc<Backends>, rpc: Arc<RpcMetrics>) -> Routes {
    let proxy = tower::service_fn(move |request: http::Request<axum::body::Body>| {
        let backends = backends.clone();
        let rpc = rpc.clone();
        async move { Ok::<_, Infallible>(forward_http(backends, rpc, request).await) }
    });
    Routes::from(routes.into_axum_router().fallback_service(proxy))
}

/// How much of a call's first message is read ahead: the host field (tag, length, at most a
/// 1 KiB name) leads every per-host request.
const PEEK_BYTES: usize = 5 + 1 + 10 + 1024;
/// How long the gateway waits for that much.
const PEEK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The start of a call's first message.
struct FirstMessage {
    start: Bytes,
    /// `start` is the whole message.
    whole: bool,
}

impl FirstMessage {
    /// The host the message names: its leading host field, or this gateway's own ("") when a
    /// whole message has none; None when the start read does not tell.
    fn host(&self) -> Option<String> {
        match leading_host_field(&self.start) {
            Some(host) => Some(host.to_string()),
            None if self.whole => Some(String::new()),
            None => None,
        }
    }
}

/// The start of a call's first message, read ahead, and the request rebuilt to carry it still.
async fn read_first_message(
    request: http::Request<axum::body::Body>,
) -> (http::Request<axum::body::Body>, Option<FirstMessage>) {
    let (parts, body) = request.into_parts();
    let mut chunks = body.into_data_stream();
    let mut head = bytes::BytesMut::new();
    let mut failed = None;
    let framed = |head: &[u8]| {
        let length = head.get(1..5)?;
        let length = u32::from_be_bytes(length.try_into().ok()?);
        Some(5 + usize::try_from(length).ok()?)
    };
    // Only the start of the message is read (the host field leads it), for a bounded time: a
    // client announcing a huge message cannot make the gateway hold it.
    let wanted = |head: &[u8]| framed(head).map(|whole| whole.min(PEEK_BYTES));
    let read = async {
        while wanted(&head).is_none_or(|wanted| head.len() < wanted) {
            match chunks.next().await {
                Some(Ok(chunk)) => head.extend_from_slice(&chunk),
                Some(Err(err)) => {
                    failed = Some(err);
                    break;
                }
                None => break,
            }
        }
    };
    let _ = tokio::time::timeout(PEEK_TIMEOUT, read).await;
    let head = head.freeze();
    // Uncompressed (flag 0): compressed calls take the decoding path.
    let first = framed(&head)
        .filter(|_| head.first() == Some(&0) && head.len() > 5)
        .map(|whole| FirstMessage {
            start: head.slice(5..whole.min(head.len())),
            whole: head.len() >= whole,
        });
    let body = futures::stream::iter([Ok(head)])
        .chain(futures::stream::iter(failed.map(Err)))
        .chain(chunks);
    (
        http::Request::from_parts(parts, axum::body::Body::from_stream(body)),
        first,
    )
}

/// The service of this process that a call goes to, when it is one: vireod runs every service
/// beside the gateway, and a call to its own host then skips the socket hop.
async fn in_process_route(
    backends: &Backends,
    request: http::Request<axum::body::Body>,
) -> (http::Request<axum::body::Body>, Option<Routes>) {
    let Some(service) = owner_of_path(request.uri().path())
        .filter(|service| *service != vireo_runtime::Service::Gateway)
    else {
        return (request, None);
    };
    let (request, host) = match request.headers().get(HOST_METADATA) {
        Some(value) => {
            let host = value.to_str().map(str::to_string).ok();
            (request, host)
        }
        None => {
            let (request, first) = read_first_message(request).await;
            let host = first.and_then(|first| first.host());
            (request, host)
        }
    };
    let routes = host
        .and_then(|host| backends.host(&host).ok())
        .filter(|backend| !backend.remote_gateway)
        .and_then(|backend| {
            backend
                .unix_socket(service)
                .and_then(vireo_runtime::server::in_process)
        });
    (request, routes)
}

async fn forward_http(
    backends: Arc<Backends>,
    rpc: Arc<RpcMetrics>,
    request: http::Request<axum::body::Body>,
) -> http::Response<tonic::body::Body> {
    let path = request.uri().path().to_owned();
    let started = std::time::Instant::now();
    let (request, routes) = in_process_route(&backends, request).await;
    if let Some(routes) = routes {
        use tower::ServiceExt;
        let response = match routes.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let code =
            Status::from_header_map(response.headers()).map_or(tonic::Code::Ok, |s| s.code());
        rpc.record(&path, code, started.elapsed());
        return response;
    }
    let mut grpc = tonic::server::Grpc::new(RawCodec);
    let method = tower::service_fn(move |call: Request<Streaming<Bytes>>| {
        let backends = backends.clone();
        let rpc = rpc.clone();
        let path = path.clone();
        async move {
            let reply = forward(&backends, &path, call).await;
            let code = reply
                .as_ref()
                .map_or_else(Status::code, |_| tonic::Code::Ok);
            rpc.record(&path, code, started.elapsed());
            reply
        }
    });
    grpc.streaming(method, request).await
}

async fn forward(backends: &Backends, path: &str, call: Request<Streaming<Bytes>>) -> Reply {
    let method = path.trim_start_matches('/');
    let service = owner_of_path(path)
        .filter(|service| *service != vireo_runtime::Service::Gateway)
        .ok_or_else(|| Status::unimplemented(format!("unknown method {method}")))?;
    let path_and_query = PathAndQuery::try_from(path)
        .map_err(|_| Status::invalid_argument(format!("malformed method path {path}")))?;

    let (metadata, extensions, mut inbound) = call.into_parts();
    // The first request message names the host; read it before choosing where to send the call.
    let first = inbound.message().await?;
    let host = match metadata.get(HOST_METADATA) {
        Some(value) => value
            .to_str()
            .map_err(|_| Status::invalid_argument(format!("{HOST_METADATA}: not valid text")))?
            .to_string(),
        None => first
            .as_deref()
            .and_then(leading_host_field)
            .unwrap_or_default()
            .to_string(),
    };
    let backend = backends.host_fresh(&host).await?;
    let channel = Backends::channel_of(&backend, service)?;
    let mut metadata = metadata;
    // A caller's token is for this gateway: no backend or other host ever sees it.
    metadata.remove("authorization");
    if backend.remote_gateway {
        // That gateway serves the call on its own host, whatever name this cluster gives it.
        metadata.insert(
            HOST_METADATA,
            tonic::metadata::MetadataValue::from_static(""),
        );
    }

    // A client-side stream error must not look like a clean end to a backend still reading a
    // client stream (an upload cut short would pass as complete): the forwarded stream stalls and
    // the call is dropped below, which resets the backend's stream.
    let (abort_tx, abort_rx) = tokio::sync::oneshot::channel::<Status>();
    let outbound = futures::stream::iter(first).chain(futures::stream::unfold(
        (inbound, Some(abort_tx)),
        |(mut inbound, mut abort)| async move {
            match inbound.next().await {
                Some(Ok(message)) => Some((message, (inbound, abort))),
                Some(Err(status)) => {
                    // While the reply is awaited (client streams: uploads) the call is dropped,
                    // resetting the backend; once it has come (bidi streams: consoles) the
                    // backend simply sees the end, as it would from the client.
                    match abort.take().map(|abort| abort.send(status)) {
                        Some(Ok(())) => std::future::pending().await,
                        _ => None,
                    }
                }
                None => None,
            }
        },
    ));
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.map_err(|err| {
        backends.unavailable(&host, service, Status::unavailable(err.to_string()))
    })?;
    let call = client.streaming(
        Request::from_parts(metadata, extensions, outbound),
        path_and_query,
        RawCodec,
    );
    let response = tokio::select! {
        response = call => response.map_err(|status| backends.unavailable(&host, service, status))?,
        Ok(status) = abort_rx => return Err(status),
    };
    let (metadata, replies, extensions) = response.into_parts();
    Ok(Response::from_parts(metadata, replies.boxed(), extensions))
}
