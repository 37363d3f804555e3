//! A QMP client: one task owns the monitor socket; commands go to it over a channel and their
//! replies come back matched by id; asynchronous events go to the supervisor's channel.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

type Pending = oneshot::Sender<Result<Value, String>>;

#[derive(Clone)]
pub struct Qmp {
    commands: mpsc::Sender<(Value, Pending)>,
}

/// An asynchronous QMP event: its name and data.
#[derive(Debug, Clone)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capability negotiation mode.
    pub async fn connect(
        path: &Path,
        events: mpsc::UnboundedSender<QmpEvent>,
    ) -> std::io::Result<Qmp> {
        let stream = UnixStream::connect(path).await?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = lines.next_line().await?.unwrap_or_default();
        if !greeting.contains("\"QMP\"") {
            return Err(std::io::Error::other(format!(
                "not a QMP greeting: {greeting}"
            )));
        }
        let (commands, mut requests) = mpsc::channel::<(Value, Pending)>(16);
        tokio::spawn(async move {
            let mut pending: HashMap<u64, Pending> = HashMap::new();
            let mut next_id = 0u64;
            loop {
                tokio::select! {
                    request = requests.recv() => {
                        let Some((mut command, reply)) = request else { break };
                        next_id += 1;
                        command["id"] = json!(next_id);
                        let mut line = command.to_string();
                        line.push('\n');
                        if let Err(err) = write.write_all(line.as_bytes()).await {
                            let _ = reply.send(Err(format!("QMP write: {err}")));
                            break;
                        }
                        pending.insert(next_id, reply);
                    }
                    line = lines.next_line() => {
                        let Ok(Some(line)) = line else { break };
                        let Ok(message) = serde_json::from_str::<Value>(&line) else { continue };
                        if let Some(name) = message.get("event").and_then(Value::as_str) {
                            let _ = events.send(QmpEvent {
                                name: name.to_string(),
                                data: message.get("data").cloned().unwrap_or(Value::Null),
                            });
                            continue;
                        }
                        let Some(id) = message.get("id").and_then(Value::as_u64) else { continue };
                        let Some(reply) = pending.remove(&id) else { continue };
                        let result = match message.get("error") {
                            Some(error) => Err(error
                                .get("desc")
                                .and_then(Value::as_str)
                                .unwrap_or("QMP error")
                                .to_string()),
                            None => Ok(message.get("return").cloned().unwrap_or(Value::Null)),
                        };
                        let _ = reply.send(result);
                    }
                }
            }
            for (_, reply) in pending.drain() {
                let _ = reply.send(Err("QEMU closed its monitor".to_string()));
            }
        });
        let qmp = Qmp { commands };
        qmp.execute("qmp_capabilities", json!({}))
            .await
            .map_err(std::io::Error::other)?;
        Ok(qmp)
    }

    pub async fn execute(&self, command: &str, arguments: Value) -> Result<Value, String> {
        let (reply, answer) = oneshot::channel();
        let mut request = json!({ "execute": command });
        if arguments.as_object().is_some_and(|a| !a.is_empty()) {
            request["arguments"] = arguments;
        }
        self.commands
            .send((request, reply))
            .await
            .map_err(|_| "QEMU's monitor is closed".to_string())?;
        answer
            .await
            .map_err(|_| "QEMU's monitor is closed".to_string())?
    }
}
