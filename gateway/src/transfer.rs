//! The gateway's local transfer socket (`<run>/gateway-transfer.sock`, root only, like
//! `gateway.sock`): a client on this host passes an open file for vol-upload or vol-download;
//! the request goes on, file attached, to this host's storage service, whose replies come back
//! unchanged. Files cannot cross hosts: a request for another host is refused and the client
//! uses the gRPC stream instead.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::UnixStream;
use tonic::Status;
use vireo_proto::storage::v1 as pb;
use vireo_runtime::transfer;
use vireo_runtime::{CancellationToken, ServerError, Service};

use crate::Backends;

pub async fn serve(
    backends: Arc<Backends>,
    socket: PathBuf,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    transfer::serve(&socket, shutdown, move |client| {
        relay(backends.clone(), client)
    })
    .await
}

async fn relay(backends: Arc<Backends>, mut client: UnixStream) {
    if let Err(status) = forward(&backends, &mut client).await {
        let reply = pb::LocalTransferReply {
            reply: Some(pb::local_transfer_reply::Reply::Error(pb::TransferError {
                code: status.code() as i32,
                message: status.message().to_string(),
            })),
        };
        let _ = transfer::send(&mut client, &reply, None).await;
    }
}

async fn forward(backends: &Backends, client: &mut UnixStream) -> Result<(), Status> {
    let (request, file) = transfer::receive::<pb::LocalTransferRequest>(client)
        .await
        .map_err(|err| Status::invalid_argument(format!("request: {err}")))?
        .ok_or_else(|| Status::invalid_argument("request: the client sent nothing"))?;
    let socket = transfer::socket_beside(&backends.socket(&request.host, Service::Storage)?);
    let down = |err: std::io::Error| {
        Status::unavailable(format!(
            "the storage service of host `{}` is unavailable ({}): {err}",
            backends.resolve(&request.host),
            socket.display()
        ))
    };
    let mut service = UnixStream::connect(&socket).await.map_err(down)?;
    transfer::send(&mut service, &request, file.as_ref().map(AsFd::as_fd))
        .await
        .map_err(down)?;
    drop(file);
    // A client that goes away fails the next write here, which closes the service's end: the
    // copy stops there.
    let _ = tokio::io::copy(&mut service, client).await;
    Ok(())
}
