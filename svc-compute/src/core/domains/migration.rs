//! The engine side of live migration: a destination domain that waits for the state on TCP
//! (QEMU's `-incoming tcp:`, `vireo-vmm receive --listen`), the source sending it (QEMU's
//! `migrate`, vireo-vmm's `migrate`, with their downtime and bandwidth limits), progress read
//! from `query-migrate` or vireo-vmm's `info`, cancel when the caller goes, and the finish that
//! resumes the destination. The table lock is not held while state moves, so the host answers
//! other calls meanwhile.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use vireo_proto::common::v1::ObjectRef;
use vireo_proto::compute::v1 as pb;

use super::{Boot, Manager, Outcome, Reason, State, migration_tls};
use crate::Error;
use crate::core::engine::Control;

/// The ports an incoming domain listens on, as libvirt's migration port range.
const INCOMING_PORTS: std::ops::RangeInclusive<u16> = 49152..=49216;
/// How often the source asks QEMU how the migration goes.
const POLL: Duration = Duration::from_millis(100);
/// How long a new migration waits for one given up to end.
const CANCEL_SETTLE: Duration = Duration::from_secs(10);
/// How long a destination waits for the whole state before giving up.
const INCOMING_TIMEOUT: Duration = Duration::from_secs(600);

async fn vmm_run(path: &std::path::Path, request: Value) -> Result<Value, Error> {
    crate::core::engine::vmm::request(path, request)
        .await
        .map_err(|err| Error::Engine(format!("vireo-vmm: {err}")))
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

/// How often an incoming domain is started again on other ports when its engine found the
/// port taken (free when probed, bound by another process before the engine could).
const PORT_ATTEMPTS: usize = 4;

/// A port of the range free on `address` now, other than `tried`.
fn free_port(address: std::net::IpAddr, tried: &[u16]) -> Result<u16, Error> {
    INCOMING_PORTS
        .filter(|port| !tried.contains(port))
        .find(|port| std::net::TcpListener::bind((address, *port)).is_ok())
        .ok_or_else(|| {
            Error::State(format!(
                "no free migration port in {}-{} on {address}",
                INCOMING_PORTS.start(),
                INCOMING_PORTS.end()
            ))
        })
}

/// Whether the engine is still sending a migration (QEMU's and vireo-vmm's status names).
async fn migration_in_progress(control: &Control) -> Result<bool, Error> {
    let status = match control {
        Control::Qemu(qmp) => qmp_run(qmp, "query-migrate", json!({})).await?["status"].clone(),
        Control::Vmm(path) => {
            vmm_run(path, json!({"cmd": "info"})).await?["migration"]["status"].clone()
        }
    };
    Ok(matches!(
        status.as_str(),
        Some("setup" | "active" | "device" | "cancelling" | "pre-switchover" | "wait-unplug")
    ))
}

/// Progress as vireo-vmm's `info` shows it under "migration" (its status names are QEMU's).
fn vmm_update_of(migration: &Value) -> pb::SendDomainStateUpdate {
    let number = |key: &str| migration.get(key).and_then(Value::as_u64).unwrap_or(0);
    pb::SendDomainStateUpdate {
        status: migration
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("setup")
            .to_string(),
        total_bytes: number("total_bytes"),
        transferred_bytes: number("transferred_bytes"),
        remaining_bytes: number("remaining_bytes"),
        dirty_pages_rate: number("dirty_pages_rate"),
        iteration: number("iteration"),
        expected_downtime_ms: number("expected_downtime_ms"),
        downtime_ms: number("downtime_ms"),
        elapsed_ms: number("elapsed_ms"),
        bandwidth_bytes_s: number("bandwidth_bytes_s"),
        memory_crc32: migration
            .get("memory_crc32")
            .and_then(Value::as_u64)
            .and_then(|crc| u32::try_from(crc).ok()),
        throttle_percent: u32::try_from(number("throttle_percent")).unwrap_or(0),
    }
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
        memory_crc32: None,
        throttle_percent: u32::try_from(number(status, "cpu-throttle-percentage")).unwrap_or(0),
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
        let control = {
            let mut table = self.table.lock().await;
            let uuid = table.find(domain)?;
            Self::running(&mut table, &uuid)?.control.clone()
        };
        match &control {
            Control::Qemu(qmp) => set_limits(qmp, max_downtime_ms, bandwidth_mib_s).await,
            // Without a migration under way there is nothing to tune: svc-migrate keeps the
            // limits and passes them to the next one, as QEMU keeps its parameters.
            Control::Vmm(path) => {
                let info = vmm_run(path, json!({"cmd": "info"})).await?;
                let running = matches!(
                    info["migration"]["status"].as_str(),
                    Some("setup" | "active" | "device")
                );
                if running {
                    vmm_run(
                        path,
                        json!({"cmd": "migrate-tune", "max_downtime_ms": max_downtime_ms, "bandwidth_mib_s": bandwidth_mib_s}),
                    )
                    .await?;
                }
                Ok(())
            }
        }
    }

    /// Starts `xml` paused, waiting on a TCP port for its state (over TLS with `tls`: the
    /// engine then waits on loopback behind this service's TLS port); returns (name, uuid,
    /// port).
    pub async fn start_incoming(
        self: &Arc<Self>,
        xml: &str,
        listen_address: &str,
        tls: bool,
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
        let mut tried = Vec::new();
        loop {
            let port = free_port(listen, &tried)?;
            // With TLS this service holds the outside port, and the engine listens on loopback.
            let (tls_listener, engine_address) = if tls {
                let acceptor = migration_tls::acceptor(&self.pki_dir)?;
                let listener = std::net::TcpListener::bind((listen, port))
                    .map_err(Error::io("migration port"))?;
                let loopback = std::net::Ipv4Addr::LOCALHOST.into();
                (
                    Some((acceptor, listener)),
                    std::net::SocketAddr::new(loopback, free_port(loopback, &tried)?),
                )
            } else {
                (None, std::net::SocketAddr::new(listen, port))
            };
            let (uuid, name) = (def.uuid.clone(), def.name.clone());
            let result = self
                .launch_definition(&mut table, &def, true, &Boot::IncomingTcp(engine_address))
                .await;
            if let Err(err) = result {
                if err.to_string().contains("in use") && tried.len() < 2 * PORT_ATTEMPTS {
                    tried.extend([port, engine_address.port()]);
                    continue;
                }
                return Err(err);
            }
            if let Some((acceptor, listener)) = tls_listener {
                migration_tls::serve_incoming(acceptor, listener, engine_address, INCOMING_TIMEOUT);
            }
            if let Some(run) = table.entry(&uuid).run.as_mut() {
                (run.state, run.reason) = (State::Paused, Reason::PausedMigration);
            }
            self.write_status(&table, &uuid);
            return Ok((name, uuid, port));
        }
    }

    /// Sends a running domain's state to `address`, reporting on `updates`; a closed `updates`
    /// (the caller went away) cancels, and the guest goes on here.
    pub async fn send_state(
        self: &Arc<Self>,
        domain: Option<&ObjectRef>,
        request: &pb::SendDomainStateRequest,
        updates: mpsc::Sender<pb::SendDomainStateUpdate>,
    ) -> Result<(), Error> {
        let (uuid, control, was_running) = {
            let mut table = self.table.lock().await;
            let uuid = table.find(domain)?;
            let run = Self::running(&mut table, &uuid)?;
            (uuid, run.control.clone(), run.state == State::Running)
        };
        let address = request.address.trim();
        if address.is_empty() || address.contains(['/', ' ']) {
            return Err(Error::InvalidField {
                field: "address",
                message: format!("`{address}` is not HOST:PORT"),
            });
        }
        // Over TLS the engine sends to a loopback relay of this service's.
        let relayed;
        let address = if request.tls {
            relayed = migration_tls::relay_outgoing(&self.pki_dir, address)
                .await?
                .to_string();
            relayed.as_str()
        } else {
            address
        };
        let started = std::time::Instant::now();
        let max_downtime_ms = (request.max_downtime_ms > 0).then_some(request.max_downtime_ms);
        // A migration given up a moment ago may still be ending in the engine (its caller
        // left, and the cancel follows at this service's next look, or the engine is ending
        // it): this one starts when it has.
        let settled = std::time::Instant::now() + CANCEL_SETTLE;
        while std::time::Instant::now() < settled && migration_in_progress(&control).await? {
            tokio::time::sleep(POLL).await;
        }
        match &control {
            Control::Qemu(_) if request.verify_memory => {
                return Err(Error::Unsupported(
                    "verify_memory: QEMU's migration has no memory checksum; it is vireo-vmm's"
                        .into(),
                ));
            }
            Control::Qemu(qmp) => {
                set_limits(qmp, max_downtime_ms, Some(request.bandwidth_mib_s)).await?;
                qmp_run(
                    qmp,
                    "migrate-set-capabilities",
                    json!({"capabilities": [{"capability": "auto-converge", "state": request.auto_converge}]}),
                )
                .await?;
                qmp_run(qmp, "migrate", json!({"uri": format!("tcp:{address}")})).await?;
            }
            Control::Vmm(path) => {
                vmm_run(
                    path,
                    json!({
                        "cmd": "migrate",
                        "address": address,
                        "max_downtime_ms": max_downtime_ms,
                        "bandwidth_mib_s": request.bandwidth_mib_s,
                        "auto_converge": request.auto_converge,
                        "verify": request.verify_memory,
                    }),
                )
                .await?;
            }
        }
        let elapsed = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        loop {
            let (update, error) = match &control {
                Control::Qemu(qmp) => {
                    let status = qmp_run(qmp, "query-migrate", json!({})).await?;
                    let error = status
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("QEMU cancelled it")
                        .to_string();
                    let mut update = update_of(&status, elapsed());
                    if let Some(state @ ("failed" | "cancelled")) =
                        status.get("status").and_then(Value::as_str)
                    {
                        update.status = state.to_string();
                    }
                    (update, error)
                }
                Control::Vmm(path) => {
                    let info = vmm_run(path, json!({"cmd": "info"})).await?;
                    let migration = &info["migration"];
                    let error = migration
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("vireo-vmm cancelled it")
                        .to_string();
                    (vmm_update_of(migration), error)
                }
            };
            match update.status.as_str() {
                "completed" => {
                    let _ = updates.send(update).await;
                    break;
                }
                "failed" | "cancelled" => {
                    // vireo-vmm resumes its guest itself; QEMU waits to be told.
                    if let (Control::Qemu(qmp), true) = (&control, was_running) {
                        let _ = qmp_run(qmp, "cont", json!({})).await;
                    }
                    return Err(Error::Engine(format!("the migration failed: {error}")));
                }
                _ => {}
            }
            if updates.send(update).await.is_err() {
                // The caller went away: cancel, and the guest goes on here.
                self.cancel_sending(&control, was_running).await;
                return Err(Error::State("the migration was cancelled".into()));
            }
            tokio::time::sleep(POLL).await;
        }
        // The destination has everything; this copy waits, paused, for the orchestrator's
        // confirmation. If the orchestrator went away before it heard, the guest goes on here.
        let mut table = self.table.lock().await;
        if updates.is_closed() {
            drop(table);
            self.resume_here(&control, was_running).await;
            return Err(Error::State("the migration was cancelled".into()));
        }
        if let Some(run) = table.entry(&uuid).run.as_mut() {
            run.awaiting_confirm = Some(was_running);
        }
        self.set_run_state(&mut table, &uuid, (State::Paused, Reason::PausedMigration));
        Ok(())
    }

    /// A delivered domain whose state the destination did not take after all runs again here.
    async fn resume_here(&self, control: &Control, was_running: bool) {
        if was_running {
            let _ = control.resume().await;
        }
    }

    /// The end of an outgoing migration whose state was delivered: stop here (`succeeded`), or
    /// go on as before.
    pub async fn confirm_migration(
        self: &Arc<Self>,
        domain: Option<&ObjectRef>,
        succeeded: bool,
    ) -> Result<pb::Domain, Error> {
        let mut table = self.table.lock().await;
        let uuid = table.find(domain)?;
        let Some(was_running) = table
            .entry(&uuid)
            .run
            .as_mut()
            .and_then(|run| run.awaiting_confirm.take())
        else {
            return Ok(self.domain_of(&table, &uuid));
        };
        if succeeded {
            if let Some(run) = table.entry(&uuid).run.as_mut() {
                run.intent = super::Intent::Destroy;
                let _ = run.control.stop().await;
            }
            if let Some(run) = table.entry(&uuid).run.take() {
                self.finish(&mut table, &uuid, run, Outcome::Migrated).await;
            }
        } else {
            let control = Self::running(&mut table, &uuid)?.control.clone();
            self.resume_here(&control, was_running).await;
            let state = if was_running {
                (State::Running, Reason::RunningMigrationCanceled)
            } else {
                (State::Paused, Reason::PausedUser)
            };
            self.set_run_state(&mut table, &uuid, state);
        }
        Ok(self.domain_of(&table, &uuid))
    }

    /// Cancels an outgoing migration; the guest runs on here once the engine has let go.
    async fn cancel_sending(&self, control: &Control, was_running: bool) {
        match control {
            Control::Qemu(qmp) => {
                let _ = qmp_run(qmp, "migrate_cancel", json!({})).await;
                self.resume_after_cancel(qmp, was_running).await;
            }
            Control::Vmm(path) => {
                let _ = vmm_run(path, json!({"cmd": "migrate-cancel"})).await;
            }
        }
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
        let (uuid, control) = {
            let mut table = self.table.lock().await;
            let uuid = table.find(domain)?;
            let run = Self::running(&mut table, &uuid)?;
            (uuid.clone(), run.control.clone())
        };
        let deadline = tokio::time::Instant::now() + INCOMING_TIMEOUT;
        loop {
            // Ok(true): still arriving; Ok(false): arrived; Err: it will not.
            let arriving = match &control {
                Control::Qemu(qmp) => {
                    let status = qmp_run(qmp, "query-status", json!({})).await?;
                    match status.get("status").and_then(Value::as_str) {
                        Some("inmigrate") => Ok(true),
                        Some("paused" | "prelaunch" | "postmigrate" | "running") => Ok(false),
                        other => Err(format!("QEMU status {}", other.unwrap_or("unknown"))),
                    }
                }
                Control::Vmm(path) => vmm_run(path, json!({"cmd": "info"}))
                    .await
                    .map(|info| info.get("state").and_then(Value::as_str) == Some("incoming"))
                    .map_err(|err| err.to_string()),
            };
            let why = match arriving {
                Ok(false) => break,
                Ok(true) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                Ok(true) => "timed out".to_string(),
                Err(why) => why,
            };
            return Err(Error::Engine(format!(
                "the incoming migration did not complete ({why})"
            )));
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
