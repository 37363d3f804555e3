//! The storage commands against an in-process StorageVolumeService on a unix socket: what goes
//! over the wire for uploads, downloads and creates, and how the client ends a refused upload.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::{Code, Request, Response, Status, Streaming};
use vireo_proto::common::v1::{DataChunk, Progress};
use vireo_proto::storage::v1 as pb;
use vireo_proto::storage::v1::storage_volume_service_server::{
    StorageVolumeService, StorageVolumeServiceServer,
};

use super::{CHUNK_BYTES, StorageCommand};
use crate::commands::Call;
use crate::connection::Connection;
use crate::output::Format;

type Stream<T> = tonic::codegen::BoxStream<T>;

/// What the mock service saw.
#[derive(Default)]
struct Seen {
    upload_header: Option<pb::UploadVolumeHeader>,
    /// The volume as the upload left it (holes as zeroes).
    uploaded: Vec<u8>,
    upload_holes: usize,
    upload_end: Option<Result<(), Code>>,
    download: Option<pb::DownloadVolumeRequest>,
    lookups: Vec<pb::VolumeRef>,
    create: Option<pb::CreateVolumeRequest>,
}

#[derive(Clone, Default)]
struct Mock(Arc<Mutex<Seen>>, Arc<tokio::sync::Notify>);

/// Tells the test that the upload handler is over, whether it returned or was dropped.
struct HandlerDone(Arc<tokio::sync::Notify>);

impl Drop for HandlerDone {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

impl Mock {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.lock().expect("mock state")
    }
}

fn boxed<T: Send + 'static>(items: Vec<Result<T, Status>>) -> Stream<T> {
    Box::pin(tokio_stream::iter(items))
}

#[tonic::async_trait]
impl StorageVolumeService for Mock {
    async fn upload_volume(
        &self,
        request: Request<Streaming<pb::UploadVolumeRequest>>,
    ) -> Result<Response<pb::UploadVolumeResult>, Status> {
        use pb::upload_volume_request::Part;
        let _done = HandlerDone(self.1.clone());
        let mut stream = request.into_inner();
        let Some(Part::Header(header)) = stream.message().await?.and_then(|m| m.part) else {
            return Err(Status::invalid_argument(
                "the first message must be the header",
            ));
        };
        let refuse = header
            .volume
            .as_ref()
            .is_some_and(|volume| volume.name == "missing");
        self.seen().upload_header = Some(header);
        if refuse {
            return Err(Status::not_found(
                "no storage vol with matching name 'missing'",
            ));
        }
        let mut written = Vec::new();
        let mut holes = 0;
        let end = loop {
            match stream.message().await {
                Ok(Some(message)) => match message.part {
                    Some(Part::Chunk(chunk)) => written.extend_from_slice(&chunk.data),
                    Some(Part::Hole(hole)) => {
                        holes += 1;
                        let length = usize::try_from(hole.length_bytes).expect("small hole");
                        written.resize(written.len() + length, 0);
                    }
                    _ => return Err(Status::invalid_argument("a second header")),
                },
                Ok(None) => break Ok(()),
                Err(status) => break Err(status.code()),
            }
        };
        let mut seen = self.seen();
        seen.upload_end = Some(end);
        seen.upload_holes = holes;
        seen.uploaded = written;
        Ok(Response::new(pb::UploadVolumeResult {
            bytes_written: seen.uploaded.len() as u64,
            volume: None,
        }))
    }

    async fn download_volume(
        &self,
        request: Request<pb::DownloadVolumeRequest>,
    ) -> Result<Response<Stream<pb::VolumeDownloadPart>>, Status> {
        use pb::volume_download_part::Part;
        self.seen().download = Some(request.into_inner());
        let part = |part| Ok(pb::VolumeDownloadPart { part: Some(part) });
        let hole = |length_bytes| Part::Hole(pb::VolumeHole { length_bytes });
        let chunk = |data: &[u8]| {
            Part::Chunk(DataChunk {
                data: data.to_vec().into(),
            })
        };
        Ok(Response::new(boxed(vec![
            part(Part::Header(pb::VolumeDownloadHeader {
                total_bytes: 3 + (1 << 20) + 1 + 1 + 4096,
                volume: None,
            })),
            part(chunk(&[1, 2, 3])),
            part(hole((1 << 20) + 1)),
            part(chunk(&[9])),
            // A trailing hole: the file must still end at the full length.
            part(hole(4096)),
        ])))
    }

    async fn lookup_volume(
        &self,
        request: Request<pb::LookupVolumeRequest>,
    ) -> Result<Response<pb::VolumeIdentity>, Status> {
        let volume = request.into_inner().volume.unwrap_or_default();
        self.seen().lookups.push(volume.clone());
        if volume.key == "/images/base.img" {
            return Ok(Response::new(pb::VolumeIdentity {
                pool: "images".into(),
                name: "base.img".into(),
                key: volume.key.clone(),
                path: volume.key,
                ..Default::default()
            }));
        }
        Err(Status::not_found("no storage vol"))
    }

    async fn create_volume(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<Stream<pb::VolumeCreateUpdate>>, Status> {
        use pb::volume_create_update::Update;
        let request = request.into_inner();
        let definition = match &request.source {
            Some(pb::create_volume_request::Source::Definition(definition)) => definition.clone(),
            _ => return Err(Status::invalid_argument("expected a definition")),
        };
        self.seen().create = Some(request);
        let update = |update| {
            Ok(pb::VolumeCreateUpdate {
                update: Some(update),
            })
        };
        Ok(Response::new(boxed(vec![
            update(Update::Progress(Progress {
                total_bytes: 100,
                processed_bytes: 50,
                ..Default::default()
            })),
            update(Update::Done(pb::Volume {
                pool: "default".into(),
                definition: Some(definition),
            })),
        ])))
    }
}

/// A mock gateway on a unix socket in a fresh directory, and a connection to it.
async fn serve(mock: Mock) -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("gateway.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(StorageVolumeServiceServer::new(mock))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let uri = format!("unix://{}", socket.display());
    (dir, Connection::new(&uri, false, None))
}

fn command(args: &[&str]) -> StorageCommand {
    use clap::Parser;
    let cli = crate::Cli::try_parse_from(std::iter::once("vireo").chain(args.iter().copied()))
        .expect("arguments parse");
    match cli.command {
        Some(crate::commands::Command::Storage(command)) => *command,
        other => panic!("not a storage command: {other:?}"),
    }
}

async fn run(connection: &mut Connection, args: &[&str]) -> Result<(), Call> {
    tokio::time::timeout(
        Duration::from_secs(30),
        super::run(connection, Format::Json, command(args)),
    )
    .await
    .expect("the command finishes")
}

#[tokio::test]
async fn sparse_upload_sends_holes_and_ends_cleanly() {
    let mock = Mock::default();
    let (dir, mut connection) = serve(mock.clone()).await;
    let mut content = vec![5u8; 10];
    content.resize(10 + 2 * CHUNK_BYTES + 5, 0);
    content.extend_from_slice(&[1, 2, 3]);
    let file = dir.path().join("disk.raw");
    std::fs::write(&file, &content).expect("write");
    let file = file.to_string_lossy().into_owned();
    run(
        &mut connection,
        &[
            "vol-upload",
            "vol1",
            &file,
            "--pool",
            "default",
            "--sparse",
            "--offset",
            "1K",
        ],
    )
    .await
    .unwrap_or_else(|_| panic!("upload succeeds"));
    let seen = mock.seen();
    let header = seen.upload_header.clone().expect("a header");
    assert_eq!(
        header.volume.expect("a volume"),
        pb::VolumeRef {
            pool: "default".into(),
            name: "vol1".into(),
            ..Default::default()
        }
    );
    // The exact count, so that the server can tell a complete upload from a cut one.
    assert_eq!(
        (header.offset_bytes, header.length_bytes),
        (1024, content.len() as u64)
    );
    assert!(header.sparse);
    assert_eq!(seen.upload_end, Some(Ok(())));
    assert_eq!(seen.upload_holes, 1);
    assert_eq!(seen.uploaded, content);
}

#[tokio::test]
async fn refused_upload_stops_the_reader() {
    let mock = Mock::default();
    let (dir, mut connection) = serve(mock.clone()).await;
    // Far more than the queue holds, so the reader is blocked when the server refuses.
    let file = dir.path().join("big.raw");
    std::fs::write(&file, vec![1u8; 16 * CHUNK_BYTES]).expect("write");
    let file = file.to_string_lossy().into_owned();
    let result = run(
        &mut connection,
        &["vol-upload", "missing", &file, "--pool", "p"],
    )
    .await;
    assert!(
        matches!(&result, Err(Call::Status(status)) if status.code() == Code::NotFound),
        "a NotFound status"
    );
}

#[tokio::test]
async fn sparse_download_seeks_over_holes() {
    let mock = Mock::default();
    let (dir, mut connection) = serve(mock.clone()).await;
    let out = dir.path().join("out.raw");
    // An existing file is truncated first.
    std::fs::write(&out, vec![0xffu8; 3 * CHUNK_BYTES]).expect("write");
    let out_text = out.to_string_lossy().into_owned();
    run(
        &mut connection,
        &[
            "vol-download",
            "/images/a.img",
            &out_text,
            "--sparse",
            "--length",
            "2M",
        ],
    )
    .await
    .unwrap_or_else(|_| panic!("download succeeds"));
    let request = mock.seen().download.clone().expect("a request");
    assert_eq!(
        request.volume.expect("a volume"),
        pb::VolumeRef {
            key: "/images/a.img".into(),
            path: "/images/a.img".into(),
            ..Default::default()
        }
    );
    assert_eq!(request.length_bytes, 2 << 20);
    assert!(request.sparse);
    let mut expected = vec![1u8, 2, 3];
    expected.resize(3 + (1 << 20) + 1, 0);
    expected.push(9);
    expected.resize(expected.len() + 4096, 0);
    assert_eq!(std::fs::read(&out).expect("read"), expected);
}

#[tokio::test]
async fn create_as_resolves_the_backing_volume() {
    let mock = Mock::default();
    let (_dir, mut connection) = serve(mock.clone()).await;
    run(
        &mut connection,
        &[
            "vol-create-as",
            "default",
            "top.qcow2",
            "10G",
            "--format",
            "qcow2",
            "--backing-vol",
            "/images/base.img",
            "--prealloc-metadata",
        ],
    )
    .await
    .unwrap_or_else(|_| panic!("create succeeds"));
    let seen = mock.seen();
    // The pool's volume of that name first, then any volume with that key or path.
    assert_eq!(seen.lookups.len(), 2);
    assert_eq!(seen.lookups[0].pool, "default");
    assert_eq!(seen.lookups[1].key, "/images/base.img");
    let request = seen.create.clone().expect("a create");
    assert!(request.prealloc_metadata);
    let Some(pb::create_volume_request::Source::Definition(definition)) = request.source else {
        panic!("a definition");
    };
    assert_eq!(definition.capacity_bytes, 10 << 30);
    assert_eq!(
        definition.backing_store.expect("a backing store").path,
        "/images/base.img"
    );
}

#[tokio::test]
async fn unknown_volume_is_reported_as_virsh_does() {
    let (_dir, mut connection) = serve(Mock::default()).await;
    let result = run(
        &mut connection,
        &["vol-create-as", "p", "v", "1G", "--backing-vol", "nope"],
    )
    .await;
    assert!(matches!(&result, Err(Call::Status(status)) if status.code() == Code::NotFound));
}

#[tokio::test]
async fn unreadable_file_aborts_the_upload() {
    let mock = Mock::default();
    let (dir, mut connection) = serve(mock.clone()).await;
    // Opening and seeking a directory works on most filesystems; reading it fails.
    let path = dir.path().to_string_lossy().into_owned();
    let result = run(
        &mut connection,
        &["vol-upload", "vol1", &path, "--pool", "p"],
    )
    .await;
    let Err(Call::Status(status)) = result else {
        panic!("the upload fails");
    };
    if status.message().starts_with("unable to stat") {
        eprintln!("skipped: this filesystem cannot seek a directory");
        return;
    }
    assert!(
        status.message().starts_with("cannot read"),
        "{}",
        status.message()
    );
    tokio::time::timeout(Duration::from_secs(10), mock.1.notified())
        .await
        .expect("the handler ends");
    // Reset, not ended: the server must not take a partial upload as complete.
    assert_ne!(mock.seen().upload_end, Some(Ok(())));
}
