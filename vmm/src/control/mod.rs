//! The control socket: one JSON object per line each way. The socket threads only parse requests
//! into `Request`s for the event loop, which owns the VM and answers.
//!
//! Requests: `{"cmd":"info"}`, `pause`, `resume`, `shutdown` (ACPI power button: the guest
//! decides), `reset` (hard reset: the VMM exits with the reboot status, and its supervisor starts
//! it again), `stop` (end the VM now), `watch` (stream events until the VMM exits),
//! `dirty-pages` (the page frames the guest wrote since the last such request), `migrate`
//! (`address`, `max_downtime_ms`, `bandwidth_mib_s`, `auto_converge`, `verify`: progress under
//! `info`'s "migration"), `migrate-cancel`, `migrate-tune` (`max_downtime_ms`, `bandwidth_mib_s`).
//! Replies: `{"ok":true,...}` or `{"ok":false,"error":"..."}`. Events: `{"event":"poweroff"}`,
//! `reboot`, `crash` (with `reason`), `paused`, `resumed`, `shutdown-requested`, `migrated`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::{self, Sender};

use serde_json::{Value, json};

use crate::vstate::VmEvent;

#[derive(Debug)]
pub enum Request {
    Info,
    Pause,
    Resume,
    Shutdown,
    Reset,
    Stop,
    /// Pause, write the whole VM to this file, and stop (as `virsh save`).
    Save(std::path::PathBuf),
    /// Ask the balloon to leave the guest this much memory (as `virsh setmem`), in MiB.
    Balloon(u64),
    /// Send every event line to this channel from now on.
    Watch(Sender<String>),
    /// The guest pages written since the last such request (the first starts KVM's dirty
    /// logging): the reply's `dirty_pages`, page frame numbers.
    DirtyPages,
    /// Start a live migration to a `vireo-vmm receive`; `info` shows its progress.
    Migrate(crate::migration::Request),
    /// Give up the running migration; the guest goes on here.
    MigrateCancel,
    /// Change the running migration's limits.
    MigrateTune {
        max_downtime_ms: Option<u64>,
        bandwidth_mib_s: Option<u64>,
    },
}

pub type Reply = Result<Value, String>;

/// The largest request line accepted; anything longer is refused, not buffered.
const MAX_REQUEST_BYTES: u64 = 4096;

fn parse(line: &str) -> Result<Request, String> {
    let value: Value =
        serde_json::from_str(line).map_err(|err| format!("request is not JSON: {err}"))?;
    let command = value
        .get("cmd")
        .and_then(Value::as_str)
        .ok_or("request has no \"cmd\" string")?;
    Ok(match command {
        "info" => Request::Info,
        "pause" => Request::Pause,
        "resume" => Request::Resume,
        "shutdown" => Request::Shutdown,
        "reset" => Request::Reset,
        "stop" => Request::Stop,
        "dirty-pages" => Request::DirtyPages,
        "migrate" => Request::Migrate(crate::migration::Request::parse(&value)?),
        "migrate-cancel" => Request::MigrateCancel,
        "migrate-tune" => Request::MigrateTune {
            max_downtime_ms: value.get("max_downtime_ms").and_then(Value::as_u64),
            bandwidth_mib_s: value.get("bandwidth_mib_s").and_then(Value::as_u64),
        },
        "balloon" => Request::Balloon(
            value
                .get("target_mib")
                .and_then(Value::as_u64)
                .ok_or("balloon needs a \"target_mib\" number")?,
        ),
        "save" => Request::Save(
            value
                .get("path")
                .and_then(Value::as_str)
                .filter(|path| !path.is_empty())
                .ok_or("save needs a \"path\"")?
                .into(),
        ),
        other => {
            return Err(format!(
                "unknown cmd `{other}`; expected info, pause, resume, shutdown, reset, stop, watch, save, balloon, dirty-pages, migrate, migrate-cancel or migrate-tune"
            ));
        }
    })
}

fn reply_line(reply: Reply) -> String {
    let value = match reply {
        Ok(Value::Object(mut fields)) => {
            fields.insert("ok".into(), Value::Bool(true));
            Value::Object(fields)
        }
        Ok(_) => json!({ "ok": true }),
        Err(error) => json!({ "ok": false, "error": error }),
    };
    format!("{value}\n")
}

fn serve_client(stream: UnixStream, events: &Sender<VmEvent>) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        let read = std::io::Read::take(&mut reader, MAX_REQUEST_BYTES).read_line(&mut line)?;
        if read == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') && read as u64 >= MAX_REQUEST_BYTES {
            writer.write_all(
                reply_line(Err(format!(
                    "request longer than {MAX_REQUEST_BYTES} bytes"
                )))
                .as_bytes(),
            )?;
            return Ok(());
        }
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if serde_json::from_str::<Value>(trimmed)
            .ok()
            .and_then(|v| v.get("cmd").cloned())
            == Some(json!("watch"))
        {
            let (sender, receiver) = mpsc::channel();
            let (reply_to, reply) = mpsc::channel();
            if events
                .send(VmEvent::Control(Request::Watch(sender), reply_to))
                .is_err()
            {
                return Ok(());
            }
            writer.write_all(
                reply_line(reply.recv().unwrap_or(Err("VMM is exiting".into()))).as_bytes(),
            )?;
            drop(reply);
            for event in receiver {
                writer.write_all(event.as_bytes())?;
            }
            return Ok(());
        }
        // The receiver lives until the reply is written: the event loop waits for it to go
        // before ending the VM, so a `save` or `stop` is answered before the process exits.
        let (reply_to, replies) = mpsc::channel();
        let reply = match parse(trimmed) {
            Err(error) => Err(error),
            Ok(request) => {
                if events.send(VmEvent::Control(request, reply_to)).is_err() {
                    return Ok(());
                }
                replies.recv().unwrap_or(Err("VMM is exiting".into()))
            }
        };
        writer.write_all(reply_line(reply).as_bytes())?;
        writer.flush()?;
        drop(replies);
    }
}

/// The unix sockets this process bound, with their inodes: at exit it removes only those still
/// its own (another process may have bound the same path since).
static BOUND: std::sync::Mutex<Vec<(std::path::PathBuf, u64)>> = std::sync::Mutex::new(Vec::new());

/// Binds a unix socket at `path`, replacing a stale one, and remembers it for removal at exit.
pub fn bind_socket(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::MetadataExt;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    if let (Ok(metadata), Ok(mut bound)) = (std::fs::metadata(path), BOUND.lock()) {
        bound.push((path.to_path_buf(), metadata.ino()));
    }
    Ok(listener)
}

/// Removes the sockets `bind_socket` made that are still this process's.
pub fn remove_bound_sockets() {
    use std::os::unix::fs::MetadataExt;
    let Ok(mut bound) = BOUND.lock() else { return };
    for (path, inode) in bound.drain(..) {
        if std::fs::metadata(&path).is_ok_and(|metadata| metadata.ino() == inode) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Listens on `path`; each client gets its own thread.
pub fn serve(path: &Path, events: Sender<VmEvent>) -> std::io::Result<()> {
    let listener = bind_socket(path)?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let events = events.clone();
                let _ = std::thread::Builder::new()
                    .name("control-client".into())
                    .spawn(move || {
                        let _ = serve_client(stream, &events);
                    });
            }
        })?;
    Ok(())
}

/// An event line for watchers.
pub fn event_line(event: &str, reason: Option<&str>) -> String {
    let value = match reason {
        Some(reason) => json!({ "event": event, "reason": reason }),
        None => json!({ "event": event }),
    };
    format!("{value}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert!(matches!(parse(r#"{"cmd":"pause"}"#), Ok(Request::Pause)));
        assert!(
            parse(r#"{"cmd":"fly"}"#)
                .unwrap_err()
                .contains("unknown cmd `fly`")
        );
        assert!(parse("nonsense").unwrap_err().contains("not JSON"));
        assert!(parse(r#"{"cmd":5}"#).is_err());
        assert_eq!(
            reply_line(Ok(json!({"state":"running"}))),
            "{\"ok\":true,\"state\":\"running\"}\n"
        );
        assert_eq!(
            reply_line(Err("no".into())),
            "{\"error\":\"no\",\"ok\":false}\n"
        );
    }
}
