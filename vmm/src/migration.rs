//! Live migration to another vireo-vmm over TCP. The source's pre-copy thread sends all guest
//! memory, then again the pages written meanwhile (KVM's dirty log for the guest's writes, the
//! memory bitmap for the VMM's own), until what is left fits the downtime limit at the measured
//! bandwidth. Then the event loop pauses the vCPUs, sends the last pages and the machine state
//! (the snapshot header), and waits for the destination to confirm that it has built the VM.
//! Until then the source can always go on: any failure or a cancel resumes it.
//!
//! Wire format (little-endian): "VIREOMIG" | version u32 | preamble length u32 | preamble JSON,
//! then records, each a tag byte: PAGES (first frame u64 | count u32 | count pages), ZEROS
//! (first frame u64 | count u32), STATE (header length u64 | header JSON | header CRC32 u32 |
//! memory CRC32 u32, 0 when not verified). The destination answers one line: "ok" or the error.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::snapshot::{MachineDevices, SnapshotHeader};
use crate::vstate::VmEvent;
use crate::vstate::memory::{self, GuestRam, PAGE_SIZE};
use crate::vstate::vcpu::{Kicker, RunControl, THROTTLE_TICK};
use crate::vstate::vm::Vm;

const MAGIC: &[u8; 8] = b"VIREOMIG";
const VERSION: u32 = 1;
const TAG_PAGES: u8 = 1;
const TAG_ZEROS: u8 = 2;
const TAG_STATE: u8 = 3;
/// Pages per record: the sender's read unit.
const RECORD_PAGES: usize = 256;
/// A page, as a buffer length.
const PAGE_BYTES: usize = 1 << memory::PAGE_SHIFT;
const MAX_PREAMBLE_BYTES: u32 = 1 << 20;
const MAX_STATE_BYTES: u64 = 64 << 20;
/// libvirt's and QEMU's default downtime limit.
pub const DEFAULT_MAX_DOWNTIME_MS: u64 = 300;
/// An expected downtime this short ends the pre-copy at once.
const SMALL_DOWNTIME_MS: u64 = 10;
/// How long the source waits for the destination to confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Auto-converge: the first throttle, its step, and its ceiling (percent).
const THROTTLE_FIRST: u64 = 20;
const THROTTLE_STEP: u64 = 10;
const THROTTLE_MAX: u64 = 99;

/// The machine's shape, sent before memory so the destination can lay it out.
#[derive(Serialize, Deserialize)]
pub struct Preamble {
    pub vcpu_count: u8,
    pub memory_mib: u64,
    pub machine: MachineDevices,
}

/// What a `migrate` request asks for.
#[derive(Debug, Clone)]
pub struct Request {
    pub address: String,
    pub max_downtime_ms: u64,
    /// 0: unlimited.
    pub bandwidth_mib_s: u64,
    pub auto_converge: bool,
    /// Checksum all guest memory at the switchover on both sides (costs downtime).
    pub verify: bool,
}

impl Request {
    pub fn parse(value: &Value) -> Result<Request, String> {
        let address = value
            .get("address")
            .and_then(Value::as_str)
            .filter(|address| !address.trim().is_empty())
            .ok_or("migrate needs an \"address\" (HOST:PORT)")?
            .trim()
            .to_string();
        let number = |key: &str, default: u64| -> Result<u64, String> {
            match value.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(found) => found
                    .as_u64()
                    .ok_or_else(|| format!("\"{key}\" must be a whole number")),
            }
        };
        let max_downtime_ms = number("max_downtime_ms", DEFAULT_MAX_DOWNTIME_MS)?;
        if max_downtime_ms == 0 {
            return Err("\"max_downtime_ms\" must be at least 1".into());
        }
        Ok(Request {
            address,
            max_downtime_ms,
            bandwidth_mib_s: number("bandwidth_mib_s", 0)?,
            auto_converge: value.get("auto_converge").and_then(Value::as_bool) == Some(true),
            verify: value.get("verify").and_then(Value::as_bool) == Some(true),
        })
    }
}

/// Where a migration is, as `info` shows it under "migration".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Setup,
    Active,
    /// The vCPUs are paused and the last state is on its way.
    Device,
    Completed,
    Failed,
    Cancelled,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Active => "active",
            Phase::Device => "device",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
        }
    }

    pub fn is_over(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Cancelled)
    }
}

#[derive(Debug, Clone)]
struct Progress {
    phase: Phase,
    error: Option<String>,
    total_bytes: u64,
    transferred_bytes: u64,
    remaining_bytes: u64,
    dirty_pages_rate: u64,
    iteration: u64,
    expected_downtime_ms: u64,
    downtime_ms: u64,
    elapsed_ms: u64,
    bandwidth_bytes_s: u64,
    memory_crc32: Option<u32>,
}

/// One outgoing migration, shared by the pre-copy thread, the event loop and control requests.
pub struct Outgoing {
    started: Instant,
    max_downtime_ms: AtomicU64,
    bandwidth_bytes_s: AtomicU64,
    auto_converge: AtomicBool,
    verify: bool,
    cancel: AtomicBool,
    /// The data connection, shut down by a cancel so a write blocked on a stalled peer ends.
    connection: Mutex<Option<TcpStream>>,
    progress: Mutex<Progress>,
}

impl Outgoing {
    fn new(request: &Request, total_bytes: u64) -> Outgoing {
        Outgoing {
            started: Instant::now(),
            max_downtime_ms: AtomicU64::new(request.max_downtime_ms),
            bandwidth_bytes_s: AtomicU64::new(request.bandwidth_mib_s.saturating_mul(1 << 20)),
            auto_converge: AtomicBool::new(request.auto_converge),
            verify: request.verify,
            cancel: AtomicBool::new(false),
            connection: Mutex::new(None),
            progress: Mutex::new(Progress {
                phase: Phase::Setup,
                error: None,
                total_bytes,
                transferred_bytes: 0,
                remaining_bytes: total_bytes,
                dirty_pages_rate: 0,
                iteration: 0,
                expected_downtime_ms: 0,
                downtime_ms: 0,
                elapsed_ms: 0,
                bandwidth_bytes_s: 0,
                memory_crc32: None,
            }),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Progress)) {
        if let Ok(mut progress) = self.progress.lock() {
            change(&mut progress);
            if !progress.phase.is_over() {
                progress.elapsed_ms =
                    u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            }
        }
    }

    pub fn phase(&self) -> Phase {
        self.progress.lock().map_or(Phase::Failed, |p| p.phase)
    }

    /// Ends the migration as failed or cancelled, unless it already ended.
    fn end(&self, phase: Phase, error: Option<String>) {
        self.update(|progress| {
            if !progress.phase.is_over() {
                progress.phase = phase;
                progress.error = error;
            }
        });
    }

    /// Gives up the migration: the pre-copy stops at once, a switchover not yet begun does
    /// not begin, and the guest goes on here.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        if let Ok(connection) = self.connection.lock()
            && let Some(stream) = connection.as_ref()
        {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Changes the limits of a running migration; None leaves one as it is.
    pub fn tune(&self, max_downtime_ms: Option<u64>, bandwidth_mib_s: Option<u64>) {
        if let Some(downtime) = max_downtime_ms {
            self.max_downtime_ms
                .store(downtime.max(1), Ordering::SeqCst);
        }
        if let Some(bandwidth) = bandwidth_mib_s {
            self.bandwidth_bytes_s
                .store(bandwidth.saturating_mul(1 << 20), Ordering::SeqCst);
        }
    }

    pub fn describe(&self, throttle_percent: u64) -> Value {
        let Ok(p) = self.progress.lock() else {
            return json!({ "status": "failed", "error": "progress lock poisoned" });
        };
        json!({
            "status": p.phase.name(),
            "error": p.error,
            "total_bytes": p.total_bytes,
            "transferred_bytes": p.transferred_bytes,
            "remaining_bytes": p.remaining_bytes,
            "dirty_pages_rate": p.dirty_pages_rate,
            "iteration": p.iteration,
            "expected_downtime_ms": p.expected_downtime_ms,
            "downtime_ms": p.downtime_ms,
            "elapsed_ms": p.elapsed_ms,
            "bandwidth_bytes_s": p.bandwidth_bytes_s,
            "max_downtime_ms": self.max_downtime_ms.load(Ordering::SeqCst),
            "max_bandwidth_bytes_s": self.bandwidth_bytes_s.load(Ordering::SeqCst),
            "auto_converge": self.auto_converge.load(Ordering::SeqCst),
            "throttle_percent": throttle_percent,
            "memory_crc32": p.memory_crc32,
        })
    }
}

/// `count` per `time`, as a rate per second.
fn per_second(count: u64, time: Duration) -> u64 {
    let micros = time.as_micros().max(1);
    u64::try_from(u128::from(count) * 1_000_000 / micros).unwrap_or(u64::MAX)
}

fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(8)
        .all(|word| u64::from_ne_bytes(word.try_into().unwrap_or([1; 8])) == 0)
}

/// The sending end: a buffered stream that counts and paces what it writes.
pub struct Outbound {
    out: BufWriter<TcpStream>,
    /// Bytes written since the pacing started, when it did, and at which limit.
    paced_bytes: u64,
    paced_limit: u64,
    paced_since: Instant,
    buffer: Vec<u8>,
}

impl Outbound {
    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.out
            .write_all(bytes)
            .map_err(|err| format!("sending to the destination: {err}"))?;
        self.paced_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Sleeps as long as the bytes written since the limit was last set run ahead of
    /// `bandwidth` (0: unlimited), in short naps that a cancel ends.
    fn pace(&mut self, bandwidth: u64, cancel: &AtomicBool) {
        if bandwidth != self.paced_limit {
            self.paced_limit = bandwidth;
            self.paced_bytes = 0;
            self.paced_since = Instant::now();
        }
        if bandwidth == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.paced_bytes as f64 / bandwidth as f64);
        while let Some(ahead) = due.checked_sub(self.paced_since.elapsed()) {
            if cancel.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(ahead.min(Duration::from_millis(50)));
        }
    }

    /// Sends the given frames (sorted) of `memory`, coalescing runs; all-zero pages go as
    /// ZEROS records, or not at all when `skip_zeros` (a fresh destination is all zeros).
    /// Returns the bytes written. Stops early, with an error, once `stop` says so.
    fn send_frames(
        &mut self,
        memory: &GuestRam,
        frames: &[u64],
        skip_zeros: bool,
        mut between_records: impl FnMut(&mut Outbound) -> Result<(), String>,
    ) -> Result<u64, String> {
        let mut written = 0u64;
        let mut index = 0;
        self.buffer.resize(RECORD_PAGES * PAGE_BYTES, 0);
        while index < frames.len() {
            let first = frames[index];
            let mut count = 1;
            while index + count < frames.len()
                && count < RECORD_PAGES
                && frames[index + count] == first + count as u64
            {
                count += 1;
            }
            index += count;
            let bytes = count * PAGE_BYTES;
            let mut buffer = std::mem::take(&mut self.buffer);
            memory
                .read_slice(&mut buffer[..bytes], GuestAddress(first * PAGE_SIZE))
                .map_err(|err| format!("reading guest page {first:#x}: {err}"))?;
            // Runs of zero and non-zero pages, each one record.
            let mut at = 0;
            while at < count {
                let zero = is_zero(&buffer[at * PAGE_BYTES..][..PAGE_BYTES]);
                let mut end = at + 1;
                while end < count && is_zero(&buffer[end * PAGE_BYTES..][..PAGE_BYTES]) == zero {
                    end += 1;
                }
                let frame = first + at as u64;
                let pages = u32::try_from(end - at).unwrap_or(u32::MAX);
                if zero {
                    if !skip_zeros {
                        self.write(&[TAG_ZEROS])?;
                        self.write(&frame.to_le_bytes())?;
                        self.write(&pages.to_le_bytes())?;
                        written += 13;
                    }
                } else {
                    self.write(&[TAG_PAGES])?;
                    self.write(&frame.to_le_bytes())?;
                    self.write(&pages.to_le_bytes())?;
                    self.write(&buffer[at * PAGE_BYTES..end * PAGE_BYTES])?;
                    written += 13 + (end - at) as u64 * PAGE_SIZE;
                }
                at = end;
            }
            self.buffer = buffer;
            between_records(self)?;
        }
        Ok(written)
    }

    fn flush(&mut self) -> Result<(), String> {
        self.out
            .flush()
            .map_err(|err| format!("sending to the destination: {err}"))
    }
}

/// CRC32 of all guest memory in address order.
pub fn memory_crc32(memory: &GuestRam) -> Result<u32, String> {
    let mut crc = crc32fast::Hasher::new();
    let mut chunk = vec![0u8; 1 << 20];
    for region in memory.iter() {
        let mut offset = 0u64;
        while offset < region.len() {
            let length = usize::try_from((region.len() - offset).min(chunk.len() as u64))
                .unwrap_or(chunk.len());
            memory
                .read_slice(
                    &mut chunk[..length],
                    GuestAddress(region.start_addr().0 + offset),
                )
                .map_err(|err| err.to_string())?;
            crc.update(&chunk[..length]);
            offset += length as u64;
        }
    }
    Ok(crc.finalize())
}

/// The first pass's frames: every page the process ever backed. A page neither present nor
/// swapped out (the kernel's pagemap says) was never written, so it is zero, as the
/// destination's fresh memory is. Without a readable pagemap, every page.
fn populated_frames(memory: &GuestRam) -> Vec<u64> {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    let pagemap = std::fs::File::open("/proc/self/pagemap").ok();
    let mut frames = Vec::new();
    for region in memory.iter() {
        let first = region.start_addr().0 / PAGE_SIZE;
        let pages = region.len() / PAGE_SIZE;
        let entries = pagemap.as_ref().and_then(|pagemap| {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .ok()? as u64;
            let mut bytes = vec![0u8; usize::try_from(pages * 8).ok()?];
            std::os::unix::fs::FileExt::read_exact_at(pagemap, &mut bytes, host / PAGE_SIZE * 8)
                .ok()?;
            Some(bytes)
        });
        match entries {
            Some(entries) => frames.extend(
                entries
                    .chunks_exact(8)
                    .zip(first..)
                    .filter(|(entry, _)| {
                        let entry = u64::from_le_bytes((*entry).try_into().unwrap_or([0xff; 8]));
                        entry & (PRESENT | SWAPPED) != 0
                    })
                    .map(|(_, frame)| frame),
            ),
            None => frames.extend(first..first + pages),
        }
    }
    frames
}

/// What the pre-copy thread needs of the VM.
pub struct Source {
    pub vm: Arc<Vm>,
    pub memory: GuestRam,
    pub run_control: Arc<RunControl>,
    pub kicker: Kicker,
    pub events: Sender<VmEvent>,
    pub preamble: Preamble,
}

/// Handed from the pre-copy thread to the event loop for the stop-and-copy.
pub struct Switchover {
    pub sender: Outbound,
    pub outgoing: Arc<Outgoing>,
    /// The dirty pages the pre-copy found last and left for the stop-and-copy.
    pub pending: Vec<u64>,
}

/// The pages written since the last call, by the guest or by the VMM, sorted.
fn take_dirty(vm: &Vm, memory: &GuestRam) -> Result<Vec<u64>, String> {
    let mut frames = vm.dirty_pages(memory).map_err(|err| err.to_string())?;
    frames.extend(memory::take_vmm_written(memory));
    frames.sort_unstable();
    frames.dedup();
    Ok(frames)
}

/// Starts a migration: connects, and runs the pre-copy on its own thread.
pub fn start(source: Source, request: &Request) -> Result<Arc<Outgoing>, String> {
    let total = source.memory.iter().map(|r| r.len()).sum::<u64>();
    let address = request
        .address
        .to_socket_addrs()
        .map_err(|err| format!("address `{}`: {err}", request.address))?
        .next()
        .ok_or_else(|| format!("address `{}` resolves to nothing", request.address))?;
    // A destination still coming up refuses for a moment: it gets a few seconds.
    let refused_until = std::time::Instant::now() + Duration::from_secs(2);
    let stream = loop {
        match TcpStream::connect_timeout(&address, Duration::from_secs(10)) {
            Ok(stream) => break stream,
            Err(err)
                if err.kind() == std::io::ErrorKind::ConnectionRefused
                    && std::time::Instant::now() < refused_until =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(err) => return Err(format!("cannot reach the destination {address}: {err}")),
        }
    };
    let _ = stream.set_nodelay(true);
    let outgoing = Arc::new(Outgoing::new(request, total));
    if let Ok(mut connection) = outgoing.connection.lock() {
        *connection = stream.try_clone().ok();
    }
    let shared = outgoing.clone();
    std::thread::Builder::new()
        .name("migration".into())
        .spawn(move || {
            let vm = source.vm.clone();
            let memory = source.memory.clone();
            let run_control = source.run_control.clone();
            let events = source.events.clone();
            match precopy(source, stream, &shared) {
                Ok((sender, pending)) => {
                    let switchover = Switchover {
                        sender,
                        outgoing: shared.clone(),
                        pending,
                    };
                    if events
                        .send(VmEvent::Switchover(Box::new(switchover)))
                        .is_err()
                    {
                        shared.end(Phase::Failed, Some("the VM ended".into()));
                    }
                }
                Err(error) => {
                    run_control.set_throttle(0);
                    let _ = vm.set_dirty_logging(&memory, false);
                    if shared.cancel.load(Ordering::SeqCst) {
                        shared.end(Phase::Cancelled, Some("cancelled".into()));
                    } else {
                        shared.end(Phase::Failed, Some(error));
                    }
                }
            }
        })
        .map_err(|err| format!("starting the migration thread: {err}"))?;
    Ok(outgoing)
}

/// Sends memory until what is left fits the downtime limit; returns the stream and the pages
/// left for the stop-and-copy.
fn precopy(
    source: Source,
    stream: TcpStream,
    shared: &Arc<Outgoing>,
) -> Result<(Outbound, Vec<u64>), String> {
    let mut sender = Outbound {
        out: BufWriter::with_capacity(1 << 20, stream),
        paced_bytes: 0,
        paced_limit: 0,
        paced_since: Instant::now(),
        buffer: Vec::new(),
    };
    let preamble = serde_json::to_vec(&source.preamble).map_err(|err| err.to_string())?;
    sender.write(MAGIC)?;
    sender.write(&VERSION.to_le_bytes())?;
    sender.write(
        &u32::try_from(preamble.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    )?;
    sender.write(&preamble)?;
    // From here on every write is seen: the guest's by KVM, the VMM's by the bitmap.
    source
        .vm
        .set_dirty_logging(&source.memory, true)
        .map_err(|err| err.to_string())?;
    memory::take_vmm_written(&source.memory);
    let ticking = Arc::new(AtomicBool::new(true));
    let _ticker = Ticker::start(source.kicker, source.run_control.clone(), ticking.clone());
    let mut frames = populated_frames(&source.memory);
    let mut transferred = 0u64;
    let mut bandwidth = 0u64;
    let mut previous_remaining = u64::MAX;
    let mut not_converging = 0;
    for iteration in 1u64.. {
        shared.update(|p| {
            p.phase = Phase::Active;
            p.iteration = iteration;
        });
        let pass_started = Instant::now();
        let cancel = &shared.cancel;
        let written = sender.send_frames(
            &source.memory,
            &frames,
            iteration == 1,
            |sender: &mut Outbound| {
                if cancel.load(Ordering::SeqCst) {
                    return Err("cancelled".into());
                }
                sender.pace(shared.bandwidth_bytes_s.load(Ordering::SeqCst), cancel);
                Ok(())
            },
        )?;
        sender.flush()?;
        transferred += written;
        let pass_time = pass_started.elapsed();
        if pass_time >= Duration::from_millis(5) && written > 0 {
            bandwidth = per_second(written, pass_time);
        } else if bandwidth == 0 {
            // A pass too short to measure: the whole migration's rate so far.
            bandwidth = per_second(transferred, shared.started.elapsed());
        }
        frames = take_dirty(&source.vm, &source.memory)?;
        let remaining = frames.len() as u64 * PAGE_SIZE;
        let rate = per_second(frames.len() as u64, pass_time);
        let expected_ms = if remaining == 0 {
            0
        } else {
            remaining
                .saturating_mul(1000)
                .checked_div(bandwidth)
                .unwrap_or(u64::MAX)
        };
        shared.update(|p| {
            p.transferred_bytes = transferred;
            p.remaining_bytes = remaining;
            p.dirty_pages_rate = rate;
            p.bandwidth_bytes_s = bandwidth;
            p.expected_downtime_ms = expected_ms;
        });
        if shared.cancel.load(Ordering::SeqCst) {
            return Err("cancelled".into());
        }
        // Within the limit, one more pass is still worth it while it halves what is left: it
        // costs a little total time and takes that off the downtime.
        let shrinking = remaining.saturating_mul(2) <= previous_remaining;
        if expected_ms <= shared.max_downtime_ms.load(Ordering::SeqCst)
            && (expected_ms <= SMALL_DOWNTIME_MS || !shrinking)
        {
            ticking.store(false, Ordering::SeqCst);
            return Ok((sender, frames));
        }
        // Not converging: what is left did not shrink by a quarter. Slow the guest if allowed.
        if remaining > previous_remaining / 4 * 3 {
            not_converging += 1;
        }
        previous_remaining = remaining;
        if shared.auto_converge.load(Ordering::SeqCst) && not_converging >= 2 {
            let throttle = source.run_control.throttle();
            source.run_control.set_throttle(if throttle == 0 {
                THROTTLE_FIRST
            } else {
                (throttle + THROTTLE_STEP).min(THROTTLE_MAX)
            });
        }
    }
    unreachable!("the pre-copy loop only ends by returning")
}

/// Auto-converge's clock: while the vCPUs are throttled, a tick every 10 ms.
struct Ticker {
    running: Arc<AtomicBool>,
}

impl Ticker {
    fn start(kicker: Kicker, control: Arc<RunControl>, running: Arc<AtomicBool>) -> Ticker {
        let flag = running.clone();
        let _ = std::thread::Builder::new()
            .name("throttle".into())
            .spawn(move || {
                while flag.load(Ordering::SeqCst) {
                    if control.throttle() > 0 {
                        kicker.tick();
                    }
                    std::thread::sleep(THROTTLE_TICK);
                }
            });
        Ticker { running }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.running.store(false, Ordering::SeqCst);
    }
}

/// The stop-and-copy, run by the event loop with the vCPUs paused and the devices locked:
/// the last dirty pages, the state, and the destination's confirmation.
pub fn finish(
    switchover: &mut Switchover,
    vm: &Vm,
    memory: &GuestRam,
    header: &SnapshotHeader,
) -> Result<(), String> {
    // A destination that stops reading must not keep this VM paused: writes give up.
    let _ = switchover
        .sender
        .out
        .get_ref()
        .set_write_timeout(Some(CONFIRM_TIMEOUT));
    let mut frames = take_dirty(vm, memory)?;
    frames.append(&mut switchover.pending);
    frames.sort_unstable();
    frames.dedup();
    let written = switchover
        .sender
        .send_frames(memory, &frames, false, |_| Ok(()))?;
    let memory_crc = if switchover.outgoing.verify {
        Some(memory_crc32(memory)?)
    } else {
        None
    };
    let json = serde_json::to_vec(header).map_err(|err| err.to_string())?;
    let sender = &mut switchover.sender;
    sender.write(&[TAG_STATE])?;
    sender.write(&(json.len() as u64).to_le_bytes())?;
    sender.write(&json)?;
    sender.write(&crc32fast::hash(&json).to_le_bytes())?;
    sender.write(&memory_crc.unwrap_or(0).to_le_bytes())?;
    sender.flush()?;
    switchover.outgoing.update(|p| {
        p.transferred_bytes += written + json.len() as u64;
        p.remaining_bytes = 0;
        p.memory_crc32 = memory_crc;
    });
    let stream = sender.out.get_ref();
    let _ = stream.set_read_timeout(Some(CONFIRM_TIMEOUT));
    let mut answer = String::new();
    BufReader::new(stream)
        .take(4096)
        .read_line(&mut answer)
        .map_err(|err| format!("waiting for the destination: {err}"))?;
    match answer.trim_end() {
        "ok" => Ok(()),
        "" => Err("the destination closed the connection before confirming".into()),
        error => Err(format!("the destination: {error}")),
    }
}

/// Marks the stop-and-copy's outcome.
pub fn finished(outgoing: &Outgoing, result: &Result<(), String>, downtime: Duration) {
    let downtime_ms = u64::try_from(downtime.as_millis()).unwrap_or(u64::MAX);
    match result {
        Ok(()) => outgoing.update(|p| {
            p.downtime_ms = downtime_ms;
            p.phase = Phase::Completed;
        }),
        Err(_) if outgoing.cancelled() => outgoing.end(Phase::Cancelled, Some("cancelled".into())),
        Err(error) => outgoing.end(Phase::Failed, Some(error.clone())),
    }
}

pub fn entering_device_phase(outgoing: &Outgoing) {
    outgoing.update(|p| p.phase = Phase::Device);
}

/// The VM as it arrived: memory filled, machine state to restore.
pub struct ArrivedVm {
    pub vm: Arc<Vm>,
    pub memory: GuestRam,
    pub header: SnapshotHeader,
    /// Checked against the source's, when it asked to verify.
    pub memory_crc32: Option<u32>,
}

/// A VM arrived whole, with the connection its confirmation goes back on.
pub struct Arrival {
    pub preamble: Preamble,
    pub arrived: ArrivedVm,
    pub stream: TcpStream,
}

impl std::fmt::Debug for Arrival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Arrival({} MiB)", self.preamble.memory_mib)
    }
}

impl std::fmt::Debug for Switchover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Switchover({:?})", self.outgoing.phase())
    }
}

/// Tells the source how building the VM went: "ok", or the error.
pub fn confirm(stream: &mut TcpStream, result: &Result<(), String>) -> std::io::Result<()> {
    let line = match result {
        Ok(()) => "ok\n".to_string(),
        Err(error) => format!("{}\n", error.replace('\n', " ")),
    };
    stream.write_all(line.as_bytes())
}

/// Counts bytes as they arrive, for `info`.
pub type Received = Arc<AtomicU64>;

fn read_exact(input: &mut impl Read, buffer: &mut [u8]) -> Result<(), String> {
    input
        .read_exact(buffer)
        .map_err(|err| format!("reading from the source: {err}"))
}

fn read_u32(input: &mut impl Read) -> Result<u32, String> {
    let mut bytes = [0u8; 4];
    read_exact(input, &mut bytes)?;
    Ok(u32::from_le_bytes(bytes))
}

fn read_u64(input: &mut impl Read) -> Result<u64, String> {
    let mut bytes = [0u8; 8];
    read_exact(input, &mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// Accepts one source on `listener` and receives the VM. `prepare` lays out the VM and its
/// memory once the preamble says its shape.
pub fn receive(
    listener: &TcpListener,
    received: &Received,
    prepare: impl FnOnce(&Preamble) -> Result<(Arc<Vm>, GuestRam), String>,
) -> Result<Arrival, String> {
    let (stream, _) = listener
        .accept()
        .map_err(|err| format!("accepting the source: {err}"))?;
    let _ = stream.set_nodelay(true);
    // Unbuffered: pages go from the socket straight into guest memory.
    let mut input = stream.try_clone().map_err(|err| err.to_string())?;
    let mut magic = [0u8; 8];
    read_exact(&mut input, &mut magic)?;
    if &magic != MAGIC {
        return Err("the source did not speak vireo-vmm's migration protocol".into());
    }
    let version = read_u32(&mut input)?;
    if version != VERSION {
        return Err(format!(
            "the source speaks migration version {version}, this vireo-vmm {VERSION}"
        ));
    }
    let length = read_u32(&mut input)?;
    if length > MAX_PREAMBLE_BYTES {
        return Err(format!("a preamble of {length} bytes is not one we sent"));
    }
    let mut json = vec![0u8; length as usize];
    read_exact(&mut input, &mut json)?;
    let preamble: Preamble =
        serde_json::from_slice(&json).map_err(|err| format!("preamble: {err}"))?;
    let (vm, memory) = prepare(&preamble)?;
    let zeros = vec![0u8; RECORD_PAGES * PAGE_BYTES];
    loop {
        let mut tag = [0u8; 1];
        read_exact(&mut input, &mut tag)?;
        match tag[0] {
            TAG_PAGES | TAG_ZEROS => {
                let frame = read_u64(&mut input)?;
                let count = read_u32(&mut input)? as usize;
                if count == 0 || count > RECORD_PAGES {
                    return Err(format!("a record of {count} pages is not one we sent"));
                }
                let bytes = count * PAGE_BYTES;
                let address = frame
                    .checked_mul(PAGE_SIZE)
                    .filter(|address| memory.check_range(GuestAddress(*address), bytes))
                    .ok_or_else(|| {
                        format!("{count} pages at frame {frame:#x} are outside guest memory")
                    })?;
                if tag[0] == TAG_PAGES {
                    let mut pages = memory
                        .get_slice(GuestAddress(address), bytes)
                        .map_err(|err| format!("pages at {address:#x}: {err}"))?;
                    vm_memory::ReadVolatile::read_exact_volatile(&mut input, &mut pages)
                        .map_err(|err| format!("reading from the source: {err}"))?;
                } else {
                    memory
                        .write_slice(&zeros[..bytes], GuestAddress(address))
                        .map_err(|err| format!("pages at {address:#x}: {err}"))?;
                }
                received.fetch_add(13 + bytes as u64, Ordering::Relaxed);
            }
            TAG_STATE => {
                let length = read_u64(&mut input)?;
                if length > MAX_STATE_BYTES {
                    return Err(format!("a state of {length} bytes is not one we sent"));
                }
                let mut json = vec![0u8; usize::try_from(length).unwrap_or(0)];
                read_exact(&mut input, &mut json)?;
                if read_u32(&mut input)? != crc32fast::hash(&json) {
                    return Err("the machine state arrived damaged (CRC mismatch)".into());
                }
                let source_crc = read_u32(&mut input)?;
                let header: SnapshotHeader =
                    serde_json::from_slice(&json).map_err(|err| format!("state: {err}"))?;
                let memory_crc32 = if source_crc != 0 {
                    let found = memory_crc32(&memory)?;
                    if found != source_crc {
                        return Err(format!(
                            "guest memory differs from the source's: CRC32 {found:08x}, the source has {source_crc:08x}"
                        ));
                    }
                    Some(found)
                } else {
                    None
                };
                return Ok(Arrival {
                    preamble,
                    arrived: ArrivedVm {
                        vm,
                        memory,
                        header,
                        memory_crc32,
                    },
                    stream,
                });
            }
            other => return Err(format!("unknown record tag {other}")),
        }
    }
}
