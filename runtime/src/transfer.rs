//! Local transfer sockets: framed protobuf messages between processes of one host, the first of
//! which may carry an open file (SCM_RIGHTS), so that bulk data is copied by the kernel between
//! that file and its destination instead of crossing gRPC. Frames are a 4-byte big-endian length
//! and the encoded message.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use crate::CancellationToken;
use crate::server::{ServerError, SocketAccess, bind_socket};

/// Requests and replies are small; anything larger is a confused or hostile peer.
const MAX_FRAME_BYTES: usize = 1 << 20;

/// The transfer socket beside a gRPC socket: `storage.sock` -> `storage-transfer.sock`.
pub fn socket_beside(grpc_socket: &Path) -> PathBuf {
    let stem = grpc_socket
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    grpc_socket.with_file_name(format!("{stem}-transfer.sock"))
}

/// Sends `message`, with `file` attached when given.
pub async fn send<M: Message>(
    stream: &mut UnixStream,
    message: &M,
    file: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let length = u32::try_from(message.encoded_len()).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + length as usize);
    frame.extend_from_slice(&length.to_be_bytes());
    message.encode(&mut frame).map_err(std::io::Error::other)?;
    let mut sent = 0;
    if let Some(file) = file {
        let fds = [file.as_raw_fd()];
        sent = stream
            .async_io(Interest::WRITABLE, || {
                sendmsg::<()>(
                    stream.as_raw_fd(),
                    &[IoSlice::new(&frame)],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
            })
            .await?;
    }
    stream.write_all(&frame[sent..]).await
}

/// The next message and the file that came with it; None when the peer closed cleanly.
pub async fn receive<M: Message + Default>(
    stream: &mut UnixStream,
) -> std::io::Result<Option<(M, Option<OwnedFd>)>> {
    let mut head = [0u8; 4];
    let (read, file) = stream
        .async_io(Interest::READABLE, || {
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
            let mut slices = [IoSliceMut::new(&mut head)];
            let received = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut slices,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            let mut file = None;
            for control in received.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(fds) = control {
                    for fd in fds {
                        // SAFETY: the kernel just installed this descriptor for us; owning it
                        // closes it unless it is the one kept.
                        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                        file.get_or_insert(owned);
                    }
                }
            }
            Ok((received.bytes, file))
        })
        .await?;
    if read == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut head[read..]).await?;
    let length = u32::from_be_bytes(head) as usize;
    if length > MAX_FRAME_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {length} bytes (at most {MAX_FRAME_BYTES})"),
        ));
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    let message = M::decode(body.as_slice())
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))?;
    Ok(Some((message, file)))
}

/// Serves a root-only transfer socket at `path` until `shutdown`: each connection goes to its own
/// task running `handle`.
pub async fn serve<F, Fut>(
    path: &Path,
    shutdown: CancellationToken,
    handle: F,
) -> Result<(), ServerError>
where
    F: Fn(UnixStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let bound = bind_socket(path, SocketAccess::RootOnly)?;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = bound.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(handle(stream));
                }
                Err(err) => tracing::warn!(socket = %path.display(), "accept: {err}"),
            },
        }
    }
}

/// Awaits a transfer socket's server; if it fails, the rest of the process stops too: a service
/// with half its sockets is worse than none.
pub async fn stop_all_on_failure(
    server: impl std::future::Future<Output = Result<(), ServerError>>,
    shutdown: &CancellationToken,
) -> Result<(), ServerError> {
    let outcome = server.await;
    if outcome.is_err() {
        shutdown.cancel();
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[tokio::test]
    async fn a_message_carries_a_file_and_frames_stay_whole() {
        let (mut left, mut right) = UnixStream::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"carried").unwrap();
        let first = vireo_proto::common::v1::DataChunk {
            data: vec![7u8; 70_000].into(),
        };
        send(&mut left, &first, Some(std::os::fd::AsFd::as_fd(&file)))
            .await
            .unwrap();
        send(&mut left, &first, None).await.unwrap();
        drop(left);
        let (got, fd) = receive::<vireo_proto::common::v1::DataChunk>(&mut right)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, first);
        let mut carried = std::fs::File::from(fd.expect("the file came along"));
        carried.rewind().unwrap();
        let mut text = String::new();
        carried.read_to_string(&mut text).unwrap();
        assert_eq!(text, "carried");
        let (again, none) = receive::<vireo_proto::common::v1::DataChunk>(&mut right)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again, first);
        assert!(none.is_none());
        assert!(
            receive::<vireo_proto::common::v1::DataChunk>(&mut right)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused() {
        let (mut left, mut right) = UnixStream::pair().unwrap();
        left.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = receive::<vireo_proto::common::v1::DataChunk>(&mut right)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
    }

    #[test]
    fn sockets_beside() {
        assert_eq!(
            socket_beside(Path::new("/run/vireo/storage.sock")),
            PathBuf::from("/run/vireo/storage-transfer.sock")
        );
    }
}
