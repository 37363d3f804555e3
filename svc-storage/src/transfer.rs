//! The local transfer socket (`<run>/storage-transfer.sock`, root only): vol-upload and
//! vol-download of a file that a client on this host passes open, copied by the kernel between
//! that file and the volume. The gateway relays its clients here; remote and read-only clients
//! use the gRPC streams. The protocol is `LocalTransferRequest`/`LocalTransferReply` in
//! storage.proto.

use std::fs::File;
use std::path::PathBuf;

use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tonic::Status;
use vireo_proto::storage::v1 as pb;
use vireo_proto::storage::v1::local_transfer_reply::Reply;
use vireo_proto::storage::v1::local_transfer_request::Transfer;
use vireo_runtime::transfer;
use vireo_runtime::{CancellationToken, ServerError};

use crate::core::backend::volume_path;
use crate::core::data;
use crate::core::pools::Manager;
use crate::error::Error;
use crate::grpc::{download_failed, volume_of};

/// Progress frames per transfer: one per percent at most.
const PROGRESS_STEPS: u64 = 100;

pub async fn serve(
    manager: std::sync::Arc<Manager>,
    socket: PathBuf,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    transfer::serve(&socket, shutdown, move |stream| {
        handle(manager.clone(), stream)
    })
    .await
}

async fn handle(manager: std::sync::Arc<Manager>, mut stream: UnixStream) {
    let reply = match run(&manager, &mut stream).await {
        Ok(reply) => reply,
        Err(status) => Reply::Error(pb::TransferError {
            code: status.code() as i32,
            message: status.message().to_string(),
        }),
    };
    let reply = pb::LocalTransferReply { reply: Some(reply) };
    let _ = transfer::send(&mut stream, &reply, None).await;
}

async fn run(manager: &Manager, stream: &mut UnixStream) -> Result<Reply, Status> {
    let (request, file) = transfer::receive::<pb::LocalTransferRequest>(stream)
        .await
        .map_err(|err| Status::invalid_argument(format!("request: {err}")))?
        .ok_or_else(|| Status::invalid_argument("request: the client sent nothing"))?;
    let file = File::from(file.ok_or_else(|| {
        Status::invalid_argument("file: the request must carry an open file (SCM_RIGHTS)")
    })?);
    match request.transfer {
        Some(Transfer::Upload(header)) => {
            let reference = volume_of(header.volume)?;
            let (found, mark) = manager.upload_target(&reference).await?;
            let path = volume_path(&found.volume);
            let written = copy_with_progress(stream, move |progress| {
                let _mark = mark;
                data::upload_from(
                    file,
                    &path,
                    header.offset_bytes,
                    header.length_bytes,
                    header.sparse,
                    progress,
                )
                .map_err(|err| copy_failed(err, format!("writing {}", path.display())))
            })
            .await?;
            Ok(Reply::Uploaded(pb::UploadVolumeResult {
                bytes_written: written,
                volume: Some(manager.after_upload(&found).await?),
            }))
        }
        Some(Transfer::Download(request)) => {
            let reference = volume_of(request.volume)?;
            let (found, mark) = manager.download_source(&reference).await?;
            let info = Manager::info_of(&found.pool.name, &found.volume);
            let path = volume_path(&found.volume);
            let total = copy_with_progress(stream, move |progress| {
                let _mark = mark;
                data::download_into(
                    &path,
                    request.offset_bytes,
                    request.length_bytes,
                    request.sparse,
                    file,
                    progress,
                )
                .map_err(|err| match err.kind() {
                    std::io::ErrorKind::Interrupted => Status::cancelled(err.to_string()),
                    _ => download_failed(&path, err),
                })
            })
            .await?;
            Ok(Reply::Downloaded(pb::VolumeDownloadHeader {
                total_bytes: total,
                volume: Some(info),
            }))
        }
        None => Err(Status::invalid_argument(
            "transfer: the request names neither an upload nor a download",
        )),
    }
}

/// A copy that stopped: the client leaving is a cancellation, anything else names the volume.
fn copy_failed(err: std::io::Error, what: String) -> Status {
    match err.kind() {
        std::io::ErrorKind::Interrupted => Status::cancelled(err.to_string()),
        _ => Status::from(Error::io(what)(err)),
    }
}

/// Runs `copy` on a blocking thread, relaying its progress as frames (one per percent at most).
/// A client that goes away stops the copy at its next step.
async fn copy_with_progress<F>(stream: &mut UnixStream, copy: F) -> Result<u64, Status>
where
    F: FnOnce(&mut dyn FnMut(u64, u64) -> bool) -> Result<u64, Status> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<(u64, u64)>(8);
    let worker = tokio::task::spawn_blocking(move || {
        let mut last: Option<u64> = None;
        let mut progress = |done: u64, total: u64| {
            let step = (total / PROGRESS_STEPS).max(1);
            if last.is_some_and(|last| done < last + step && done < total) {
                return !tx.is_closed();
            }
            last = Some(done);
            tx.blocking_send((done, total)).is_ok()
        };
        copy(&mut progress)
    });
    while let Some((done, total)) = rx.recv().await {
        let frame = pb::LocalTransferReply {
            reply: Some(Reply::Progress(pb::TransferProgress {
                done_bytes: done,
                total_bytes: total,
            })),
        };
        if transfer::send(stream, &frame, None).await.is_err() {
            break;
        }
    }
    drop(rx);
    worker
        .await
        .map_err(|err| Status::internal(format!("the copy failed: {err}")))?
}
