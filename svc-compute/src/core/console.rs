//! The console hub of a running domain: it holds the connection to the guest's serial socket,
//! keeps everything the guest writes in `console.log` and a short backlog, and lends the console
//! to one client at a time (a second one is refused unless it forces the first one off).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Where else the guest's serial port goes, as its definition says (`<serial type=...>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEnd {
    /// pty: only through the hub (`vireo console`).
    Hub,
    /// type='file': everything the guest writes is also written to this file.
    File { path: PathBuf, append: bool },
    /// type='unix' mode='bind': the hub also serves the port on this socket, two-way.
    Unix(PathBuf),
}

/// What a newly attached client is shown of what came before (a screenful or so).
const BACKLOG_BYTES: usize = 16 * 1024;

pub struct ConsoleHub {
    output: broadcast::Sender<Vec<u8>>,
    input: mpsc::Sender<Vec<u8>>,
    backlog: Mutex<VecDeque<u8>>,
    holder: watch::Sender<u64>,
    next_token: AtomicU64,
    connected: watch::Sender<bool>,
    stop: CancellationToken,
}

/// A client holding the console.
pub struct Attachment {
    pub token: u64,
    pub backlog: Vec<u8>,
    pub output: broadcast::Receiver<Vec<u8>>,
    pub input: mpsc::Sender<Vec<u8>>,
    /// Changes when another client forces the console away, or the hub closes.
    pub holder: watch::Receiver<u64>,
}

impl ConsoleHub {
    /// Starts relaying `serial` (a unix socket the engine serves) and logging to `log`.
    pub fn start(serial: PathBuf, log: PathBuf, end: HostEnd) -> std::sync::Arc<ConsoleHub> {
        let (output, _) = broadcast::channel(256);
        let (input, mut input_rx) = mpsc::channel::<Vec<u8>>(64);
        let hub = std::sync::Arc::new(ConsoleHub {
            output,
            input,
            backlog: Mutex::new(VecDeque::new()),
            holder: watch::Sender::new(0),
            next_token: AtomicU64::new(1),
            connected: watch::Sender::new(false),
            stop: CancellationToken::new(),
        });
        if let HostEnd::Unix(path) = &end {
            hub.clone().serve_socket(path.clone());
        }
        let relay = hub.clone();
        tokio::spawn(async move {
            let mut copy = match &end {
                HostEnd::File { path, append } => tokio::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(*append)
                    .truncate(!*append)
                    .open(path)
                    .await
                    .map_err(|err| tracing::warn!(file = %path.display(), %err, "serial file"))
                    .ok(),
                _ => None,
            };
            let mut log = match tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .await
            {
                Ok(file) => Some(file),
                Err(err) => {
                    tracing::warn!(log = %log.display(), %err, "console log unavailable");
                    None
                }
            };
            let mut buffer = vec![0u8; 4096];
            while !relay.stop.is_cancelled() {
                let Ok(stream) = UnixStream::connect(&serial).await else {
                    tokio::select! {
                        () = relay.stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(20)) => continue,
                    }
                };
                relay.connected.send_replace(true);
                let (mut read, mut write) = stream.into_split();
                loop {
                    // Output first: when the guest stops, what it printed last is still in the
                    // socket and must reach the log and the clients before the hub closes.
                    tokio::select! {
                        biased;
                        n = read.read(&mut buffer) => {
                            let Ok(n) = n else { break };
                            if n == 0 { break }
                            relay.record(&buffer[..n], &mut log, &mut copy).await;
                        }
                        Some(bytes) = input_rx.recv() => {
                            if write.write_all(&bytes).await.is_err() { break }
                        }
                        () = relay.stop.cancelled() => {
                            // The engine is gone: what it left in the socket is the guest's
                            // last output, and goes out before the hub closes.
                            while let Ok(n) = read.try_read(&mut buffer) {
                                if n == 0 { break }
                                relay.record(&buffer[..n], &mut log, &mut copy).await;
                            }
                            break;
                        }
                    }
                }
                relay.connected.send_replace(false);
                // The engine went away (it is restarting, or the domain stops): try again.
                tokio::select! {
                    () = relay.stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            // Closed only now: every client has been sent all of the guest's output first.
            relay.holder.send_replace(u64::MAX);
        });
        hub
    }

    /// Guest output: to the log, the definition's file, and every client.
    async fn record(
        &self,
        bytes: &[u8],
        log: &mut Option<tokio::fs::File>,
        copy: &mut Option<tokio::fs::File>,
    ) {
        if let Some(log) = log.as_mut() {
            let _ = log.write_all(bytes).await;
        }
        if let Some(copy) = copy.as_mut() {
            let _ = copy.write_all(bytes).await;
        }
        self.publish(bytes);
    }

    /// Serves the port on a unix socket of the definition's: every client sees the output and
    /// types into the guest. The socket is removed when the hub closes.
    fn serve_socket(self: std::sync::Arc<Self>, path: PathBuf) {
        tokio::spawn(async move {
            let _ = std::fs::remove_file(&path);
            let listener = match tokio::net::UnixListener::bind(&path) {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::warn!(socket = %path.display(), %err, "serial socket");
                    return;
                }
            };
            loop {
                let accepted = tokio::select! {
                    () = self.stop.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                let hub = self.clone();
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.into_split();
                    // A client that connects just as the guest starts sees its first words too.
                    let (backlog, mut output) = hub.listen();
                    if write.write_all(&backlog).await.is_err() {
                        return;
                    }
                    let mut buffer = vec![0u8; 1024];
                    loop {
                        tokio::select! {
                            () = hub.stop.cancelled() => break,
                            bytes = output.recv() => match bytes {
                                Ok(bytes) => if write.write_all(&bytes).await.is_err() { break },
                                Err(broadcast::error::RecvError::Lagged(_)) => {}
                                Err(_) => break,
                            },
                            n = read.read(&mut buffer) => match n {
                                Ok(n) if n > 0 => {
                                    if hub.input.send(buffer[..n].to_vec()).await.is_err() { break }
                                }
                                _ => break,
                            },
                        }
                    }
                });
            }
            let _ = std::fs::remove_file(&path);
        });
    }

    /// Adds guest output to the backlog and sends it to every listener, under the backlog's lock
    /// so that a new listener gets each byte once: in its snapshot or from the channel.
    fn publish(&self, bytes: &[u8]) {
        let mut backlog = self
            .backlog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        backlog.extend(bytes);
        let excess = backlog.len().saturating_sub(BACKLOG_BYTES);
        backlog.drain(..excess);
        let _ = self.output.send(bytes.to_vec());
    }

    /// The recent output and a receiver for what follows, with nothing lost or repeated between.
    fn listen(&self) -> (Vec<u8>, broadcast::Receiver<Vec<u8>>) {
        let backlog = self
            .backlog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (backlog.iter().copied().collect(), self.output.subscribe())
    }

    /// Waits until the hub holds the serial connection (or the timeout passes).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut connected = self.connected.subscribe();
        tokio::time::timeout(timeout, connected.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Lends the console to a client. Refused while another client holds it, unless `force`.
    pub fn attach(&self, force: bool) -> Result<Attachment, &'static str> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut refused = false;
        self.holder.send_if_modified(|holder| {
            if *holder != 0 && !force {
                refused = true;
                return false;
            }
            *holder = token;
            true
        });
        if refused {
            return Err("the console is in use by another client (use --force to take it over)");
        }
        let (backlog, output) = self.listen();
        Ok(Attachment {
            token,
            backlog,
            output,
            input: self.input.clone(),
            holder: self.holder.subscribe(),
        })
    }

    /// Gives the console back (when `token` still holds it).
    pub fn detach(&self, token: u64) {
        self.holder.send_if_modified(|holder| {
            if *holder == token {
                *holder = 0;
                true
            } else {
                false
            }
        });
    }

    /// Ends the relay and every client's session.
    pub fn close(&self) {
        self.stop.cancel();
    }
}
