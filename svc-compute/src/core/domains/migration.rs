//! The engine side of live migration on QEMU: a destination domain that waits for the state on
//! TCP (`-incoming tcp:`), the source sending it (`migrate`, with its downtime and bandwidth
//! limits), progress read from `query-migrate`, cancel when the caller goes, and the finish that
//! resumes the destination. The table lock is not held while state moves, so the host answers
//! other calls meanwhile.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use vireo_proto::common::v1::ObjectRef;
use vireo_proto::compute::v1 as pb;

use super::{Boot, Entry, Manager, Outcome, Reason, State};
use crate::Error;
use crate::core::engine::Control;

/// The ports an incoming domain listens on, as libvirt's migration port range.
const INCOMING_PORTS: std::ops::RangeInclusive<u16> = 49152..=49216;
/// How often the source asks QEMU how the migration goes.
const POLL: Duration = Duration::from_millis(100);
/// How long a destination waits for the whole state before giving up.
const INCOMING_TIMEOUT: Duration = Duration::from_secs(600);

fn qemu_of(control: &Control, name: &str) -> Result<crate::core::engine::qmp::Qmp, Error> {
    match control {
        Control::Qemu(qmp) => Ok(qmp.clone()),
        Control::Vmm(_) => Err(Error::Unsupported(format!(
            "domain '{name}' runs on the vmm engine: its live migration is not built yet (issue #10); migrate it --offline, or save and restore it"
        ))),
    }
}

async fn qmp_run(
    qmp: &crate::core::engine::qmp::Qmp,
    command: &str,
    arguments: Value,
) -> Result<Value, Error> {
    qmp.execute(command, arguments)
        .await
        .map_err(|err| Error::Engine(format!("QEMU {command}: {err}")))
}

/// A port of the range free on `address` now.
fn free_port(address: std::net::IpAddr) -> Result<u16, Error> {
    INCOMING_PORTS
        .into_iter()
        .find(|port| std::net::TcpListener::bind((address, *port)).is_ok())
        .ok_or_else(|| {
            Error::State(format!(
                "no free migration port in {}-{} on {address}",
                INCOMING_PORTS.start(),
                INCOMING_PORTS.end()
            ))
        })
}

fn update_of(status: &Value, elapsed_ms: u64) -> pb::SendDomainStateUpdate {
    let ram = status.get("ram").cloned().unwrap_or(Value::Null);
    let number = |value: &Value, key: &str| value.get(key).and_then(Value::as_u64).unwrap_or(0);
    pb::SendDomainStateUpdate {
        status: match status.get("status").and_then(Value::as_str) {
            Some("active") => "active",
            Some("device" | "pre-switchover") => "device",
            Some("completed") => "completed",
            _ => "setup",
        }
        .to_string(),
        total_bytes: number(&ram, "total"),
        transferred_bytes: number(&ram, "transferred"),
        remaining_bytes: number(&ram, "remaining"),
        dirty_pages_rate: number(&ram, "dirty-pages-rate"),
        iteration: number(&ram, "dirty-sync-count"),
        expected_downtime_ms: number(status, "expected-downtime"),
        downtime_ms: number(status, "downtime"),
        elapsed_ms,
        bandwidth_bytes_s: number(&ram, "mbps").saturating_mul(1_000_000) / 8,
    }
}

/// QEMU's migration limits; a bandwidth of 0 is unlimited.
async fn set_limits(
    qmp: &crate::core::engine::qmp::Qmp,
    max_downtime_ms: Option<u64>,
    bandwidth_mib_s: Option<u64>,
) -> Result<(), Error> {
    let mut parameters = json!({});
    if let Some(downtime) = max_downtime_ms {
        parameters["downtime-limit"] = json!(downtime);
    }
    if let Some(bandwidth) = bandwidth_mib_s {
        // QEMU has no "unlimited": its largest value is.
        let bytes = if bandwidth == 0 {
            i64::MAX.unsigned_abs()
        } else {
            bandwidth.saturating_mul(1 << 20)
        };
        parameters["max-bandwidth"] = json!(bytes);
    }
    if parameters.as_object().is_some_and(|p| !p.is_empty()) {
        qmp_run(qmp, "migrate-set-parameters", parameters).await?;
    }
    Ok(())
}

impl Manager {
    /// Changes a running outgoing migration's limits.
    pub async fn tune_migration(
        self: &Arc<Self>,
        domain: Option<&ObjectRef>,
        max_downtime_ms: Option<u64>,
        bandwidth_mib_s: Option<u64>,
    ) -> Result<(), Error> {
        let qmp = {
            let mut table = self.table.lock().await;
            let uuid = table.find(domain)?;
            let run = Self::running(&mut table, &uuid)?;
            qemu_of(&run.control, &run.live.name)?
        };
        set_limits(&qmp, max_downtime_ms, bandwidth_mib_s).await
    }

    /// Starts `xml` paused, waiting on a TCP port for its state; returns (name, uuid, port).
    pub async fn start_incoming(
        self: &Arc<Self>,
        xml: &str,
        listen_address: &str,
    ) -> Result<(String, String, u16), Error> {
        let listen: std::net::IpAddr = if listen_address.is_empty() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            listen_address.parse().map_err(|_| Error::InvalidField {
                field: "listen_address",
                message: format!("`{listen_address}` is not an IP address"),
            })?
        };
        let mut def = vireo_conf::domain::parse(xml)?;
        vireo_conf::domain::fill_defaults(&mut def);
        vireo_conf::domain::validate(&def)?;
        let mut table = self.table.lock().await;
        if Self::check_identity(&table, &def)? && table.entry(&def.uuid).run.is_some() {
            return Err(Error::State(format!(
                "domain '{}' is already active here",
                def.name
            )));
        }
        let port = free_port(listen)?;
        let uuid = def.uuid.clone();
        let name = def.name.clone();
        let fresh = !table.entries.contains_key(&uuid);
        let entry = table.entries.entry(uuid.clone()).or_insert(Entry {
            persistent: None,
            autostart: false,
            inactive: (State::Shutoff, Reason::ShutoffUnknown),
            run: None,
        });
        let saved = entry.persistent.replace(def);
        let id = table.next_id;
        table.next_id += 1;
        let address = std::net::SocketAddr::new(listen, port);
        let result = self
            .launch(&mut table, &uuid, id, true, &Boot::IncomingTcp(address))
            .await;
        table.entry(&uuid).persistent = saved;
        if let Err(err) = result {
            if fresh {
                table.entries.remove(&uuid);
            }
            return Err(err);
        }
        if let Some(run) = table.entry(&uuid).run.as_mut() {
            (run.state, run.reason) = (State::Paused, Reason::PausedMigration);
        }
        self.write_status(&table, &uuid);
        Ok((name, uuid, port))
    }

    /// Sends a running domain's state to `address`, reporting on `updates`; a closed `updates`
    /// (the caller went away) cancels, and the guest goes on here.
    pub async fn send_state(
        self: &Arc<Self>,
        domain: Option<&ObjectRef>,
        request: &pb::SendDomainStateRequest,
        updates: mpsc::Sender<pb::SendDomainStateUpdate>,
    ) -> Result<(), Error> {
        let (uuid, qmp, was_running) = {
            let mut table = self.table.lock().await;
            let uuid = table.find(domain)?;
            let run = Self::running(&mut table, &uuid)?;
            let qmp = qemu_of(&run.control, &run.live.name)?;
            (uuid, qmp, run.state == State::Running)
        };
        let address = request.address.trim();
        if address.is_empty() || address.contains(['/', ' ']) {
            return Err(Error::InvalidField {
                field: "address",
                message: format!("`{address}` is not HOST:PORT"),
            });
        }
        set_limits(
            &qmp,
            (request.max_downtime_ms > 0).then_some(request.max_downtime_ms),
            Some(request.bandwidth_mib_s),
        )
        .await?;
        qmp_run(
            &qmp,
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "auto-converge", "state": request.auto_converge}]}),
        )
        .await?;
        let started = std::time::Instant::now();
        qmp_run(&qmp, "migrate", json!({"uri": format!("tcp:{address}")})).await?;
        let elapsed = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        loop {
            let status = qmp_run(&qmp, "query-migrate", json!({})).await?;
            let update = update_of(&status, elapsed());
            match status.get("status").and_then(Value::as_str) {
                Some("completed") => {
                    let _ = updates.send(update).await;
                    break;
                }
                Some("failed" | "cancelled") => {
                    if was_running {
                        let _ = qmp_run(&qmp, "cont", json!({})).await;
                    }
                    return Err(Error::Engine(format!(
                        "the migration failed: {}",
                        status
                            .get("error-desc")
                            .and_then(Value::as_str)
                            .unwrap_or("QEMU cancelled it")
                    )));
                }
                _ => {}
            }
            if updates.send(update).await.is_err() {
                // The caller went away: cancel, and the guest goes on here.
                let _ = qmp_run(&qmp, "migrate_cancel", json!({})).await;
                self.resume_after_cancel(&qmp, was_running).await;
                return Err(Error::State("the migration was cancelled".into()));
            }
            tokio::time::sleep(POLL).await;
        }
        // The destination has everything: this copy stops, shut off as migrated.
        let mut table = self.table.lock().await;
        if let Some(run) = table.entry(&uuid).run.as_mut() {
            run.intent = super::Intent::Destroy;
        }
        let _ = qmp_run(&qmp, "quit", json!({})).await;
        if let Some(run) = table.entry(&uuid).run.take() {
            self.finish(&mut table, &uuid, run, Outcome::Migrated).await;
        }
        Ok(())
    }

    /// After a cancel QEMU may still be cancelling; the guest runs again once it has.
    async fn resume_after_cancel(&self, qmp: &crate::core::engine::qmp::Qmp, was_running: bool) {
        for _ in 0..100 {
            let status = qmp_run(qmp, "query-migrate", json!({})).await.ok();
            let state = status
                .as_ref()
                .and_then(|s| s.get("status"))
                .and_then(Value::as_str);
            if !matches!(state, Some("cancelling" | "active" | "device")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if was_running {
            let _ = qmp_run(qmp, "cont", json!({})).await;
        }
    }

    /// Waits until an incoming domain has its whole state, then resumes it unless `paused`.
    pub async fn finish_incoming(
        self: &Arc<Self>,
        domain: Option<&ObjectRef>,
        paused: bool,
    ) -> Result<pb::Domain, Error> {
        let (uuid, qmp) = {
            let mut table = self.table.lock().await;
            let uuid = table.find(domain)?;
            let run = Self::running(&mut table, &uuid)?;
            (uuid.clone(), qemu_of(&run.control, &run.live.name)?)
        };
        let deadline = tokio::time::Instant::now() + INCOMING_TIMEOUT;
        loop {
            let status = qmp_run(&qmp, "query-status", json!({})).await?;
            match status.get("status").and_then(Value::as_str) {
                Some("inmigrate") if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(POLL).await;
                }
                Some("paused" | "prelaunch" | "postmigrate" | "running") => break,
                other => {
                    return Err(Error::Engine(format!(
                        "the incoming migration did not complete (QEMU status {})",
                        other.unwrap_or("unknown")
                    )));
                }
            }
        }
        let mut table = self.table.lock().await;
        let run = Self::running(&mut table, &uuid)?;
        let state = if paused {
            (State::Paused, Reason::PausedMigration)
        } else {
            run.control.resume().await?;
            (State::Running, Reason::RunningMigrated)
        };
        self.set_run_state(&mut table, &uuid, state);
        Ok(self.domain_of(&table, &uuid))
    }
}
