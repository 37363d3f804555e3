//! vol-upload and vol-download through the gateway's local transfer socket: on the gateway's
//! host a root client passes its open file and the service copies in the kernel, far faster than
//! a gRPC stream. Anywhere else (read-only, no socket, a pipe or terminal) the stream is used.

use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;

use tonic::{Code, Status};
use vireo_proto::storage::v1 as pb;
use vireo_proto::storage::v1::local_transfer_reply::Reply;
use vireo_runtime::transfer;

use crate::connection::Connection;
use crate::output::ProgressLine;

/// A file the service can copy to or from by offset: a regular file or a block device.
fn seekable(file: &std::fs::File) -> bool {
    file.metadata()
        .is_ok_and(|meta| meta.is_file() || meta.file_type().is_block_device())
}

/// Runs `request` with `file` attached, showing progress as `label`. None: no local transfer
/// here (the caller streams instead).
pub async fn run(
    connection: &Connection,
    request: pb::local_transfer_request::Transfer,
    file: &std::fs::File,
    label: &str,
) -> Option<Result<Reply, Status>> {
    let socket = connection.transfer_socket()?;
    if !seekable(file) {
        return None;
    }
    let mut stream = tokio::net::UnixStream::connect(&socket).await.ok()?;
    let request = pb::LocalTransferRequest {
        host: connection.host.clone().unwrap_or_default(),
        transfer: Some(request),
    };
    if let Err(err) = transfer::send(&mut stream, &request, Some(file.as_fd())).await {
        return Some(Err(Status::unavailable(format!(
            "the gateway's transfer socket {}: {err}",
            socket.display()
        ))));
    }
    let mut progress = ProgressLine::new(label);
    let mut last = (0, 0);
    loop {
        let reply = match transfer::receive::<pb::LocalTransferReply>(&mut stream).await {
            Ok(Some((reply, _))) => reply.reply,
            Ok(None) => None,
            Err(err) => {
                return Some(Err(Status::unavailable(format!(
                    "the transfer broke off: {err}"
                ))));
            }
        };
        match reply {
            Some(Reply::Progress(step)) => {
                last = (step.done_bytes, step.total_bytes);
                progress.update(last.0, last.1);
            }
            Some(Reply::Error(error)) => {
                return Some(Err(Status::new(Code::from(error.code), error.message)));
            }
            Some(done) => {
                progress.finish(last.1, last.1);
                return Some(Ok(done));
            }
            None => {
                return Some(Err(Status::unavailable(
                    "the gateway ended the transfer without a result",
                )));
            }
        }
    }
}
