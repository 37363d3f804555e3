//! vCPUs: set-up (CPUID, MSRs, registers, LAPIC) and one thread each running KVM_RUN, handing port
//! I/O to the device bus. A vCPU is paused or stopped by a signal that makes KVM_RUN return.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::VmEvent;
use super::vm::{Vm, VmError};
use crate::arch::boot::BootInfo;
use crate::arch::{cpuid, regs};
use crate::devices::Devices;
use crate::devices::GuestRequest;

const VCPU_STACK_BYTES: usize = 256 << 10;

/// KVM_SYSTEM_EVENT types.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

fn kvm_error(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// What KVM_GET_SUPPORTED_CPUID reports, asked once for all vCPUs.
pub fn supported_cpuid(vm: &Vm) -> Result<CpuId, VmError> {
    vm.kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_error("KVM_GET_SUPPORTED_CPUID"))
}

/// Creates and configures vCPU `id` of `count`; the BSP (id 0) gets the boot entry state, the APs
/// wait for INIT/SIPI from the guest.
pub fn create(
    vm: &Vm,
    id: u8,
    count: u8,
    boot: BootInfo,
    supported: &CpuId,
) -> Result<VcpuFd, VmError> {
    let vcpu = vm
        .fd
        .create_vcpu(u64::from(id))
        .map_err(kvm_error("KVM_CREATE_VCPU"))?;
    let mut supported = supported.clone();
    cpuid::adjust(supported.as_mut_slice(), u32::from(id), u32::from(count));
    vcpu.set_cpuid2(&supported)
        .map_err(kvm_error("KVM_SET_CPUID2"))?;
    let msrs = regs::boot_msrs().map_err(|_| VmError::Kvm {
        what: "MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    vcpu.set_msrs(&msrs).map_err(kvm_error("KVM_SET_MSRS"))?;
    vcpu.set_fpu(&regs::boot_fpu())
        .map_err(kvm_error("KVM_SET_FPU"))?;
    let mut lapic = vcpu.get_lapic().map_err(kvm_error("KVM_GET_LAPIC"))?;
    regs::set_lint(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(kvm_error("KVM_SET_LAPIC"))?;
    if id == 0 {
        vcpu.set_regs(&regs::boot_regs(boot.entry, boot.zero_page))
            .map_err(kvm_error("KVM_SET_REGS"))?;
        let sregs = vcpu.get_sregs().map_err(kvm_error("KVM_GET_SREGS"))?;
        vcpu.set_sregs(&regs::boot_sregs(sregs))
            .map_err(kvm_error("KVM_SET_SREGS"))?;
    }
    Ok(vcpu)
}

/// Whether vCPUs run, wait, or end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    Stopping,
}

/// Shared between the event loop and the vCPU threads.
pub struct RunControl {
    state: Mutex<RunState>,
    changed: Condvar,
    /// vCPUs currently parked (paused) or ended.
    parked: AtomicUsize,
    /// Auto-converge: the share of each 10 ms tick a vCPU sleeps, in percent (0: none).
    throttle_percent: AtomicU64,
    /// Advanced (and the vCPUs kicked) once per tick while throttled.
    throttle_tick: AtomicU64,
}

impl Default for RunControl {
    fn default() -> Self {
        RunControl {
            state: Mutex::new(RunState::Running),
            changed: Condvar::new(),
            parked: AtomicUsize::new(0),
            throttle_percent: AtomicU64::new(0),
            throttle_tick: AtomicU64::new(0),
        }
    }
}

/// The length of one throttle tick.
pub const THROTTLE_TICK: Duration = Duration::from_millis(10);

impl RunControl {
    pub fn state(&self) -> RunState {
        self.state.lock().map_or(RunState::Stopping, |state| *state)
    }

    fn set(&self, state: RunState) {
        if let Ok(mut current) = self.state.lock() {
            *current = state;
        }
        self.changed.notify_all();
    }

    /// Slows the vCPUs down: each sleeps `percent` of every tick (see `Kicker::tick`).
    pub fn set_throttle(&self, percent: u64) {
        self.throttle_percent
            .store(percent.min(99), Ordering::SeqCst);
    }

    pub fn throttle(&self) -> u64 {
        self.throttle_percent.load(Ordering::SeqCst)
    }

    /// Called by a vCPU between KVM_RUNs: sleeps its share once per tick while throttled.
    fn throttle_point(&self, seen_tick: &mut u64) {
        let percent = self.throttle_percent.load(Ordering::Relaxed);
        let tick = self.throttle_tick.load(Ordering::Relaxed);
        if percent > 0 && tick != *seen_tick {
            *seen_tick = tick;
            std::thread::sleep(THROTTLE_TICK * u32::try_from(percent).unwrap_or(99) / 100);
        }
    }

    /// Called by a vCPU after KVM_RUN returned: waits while paused. Returns false when stopping.
    fn checkpoint(&self) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        if *state == RunState::Paused {
            self.parked.fetch_add(1, Ordering::SeqCst);
            while *state == RunState::Paused {
                state = match self.changed.wait(state) {
                    Ok(state) => state,
                    Err(_) => return false,
                };
            }
            self.parked.fetch_sub(1, Ordering::SeqCst);
        }
        *state == RunState::Running
    }
}

/// The signal that kicks a vCPU out of KVM_RUN.
fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the kick handler without SA_RESTART, so KVM_RUN returns EINTR.
pub fn install_kick_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction with a valid handler and empty mask is well-formed.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_kick as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: valid pointers; the handler is async-signal-safe (it does nothing).
    let result = unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(kick_signal(), &action, std::ptr::null_mut())
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A running vCPU thread.
pub struct VcpuThread {
    pub id: u8,
    handle: JoinHandle<()>,
    /// The thread's CPU-time clock, for per-vCPU time.
    cpu_clock: Arc<AtomicI32>,
    /// The vCPU. Its thread holds the lock only inside KVM_RUN, so while the vCPUs are paused the
    /// event loop can read and write their state (save, restore).
    pub fd: Arc<Mutex<VcpuFd>>,
}

/// Kicks every vCPU out of KVM_RUN from another thread (auto-converge's ticks).
pub struct Kicker {
    threads: Vec<libc::pthread_t>,
    control: Arc<RunControl>,
}

impl Kicker {
    pub fn new(threads: &[VcpuThread], control: Arc<RunControl>) -> Kicker {
        Kicker {
            threads: threads.iter().map(|t| t.handle.as_pthread_t()).collect(),
            control,
        }
    }

    /// Starts a throttle tick: every vCPU sleeps its share once before it runs again.
    pub fn tick(&self) {
        self.control.throttle_tick.fetch_add(1, Ordering::SeqCst);
        for thread in &self.threads {
            // SAFETY: vCPU threads live as long as the VM, which outlives a migration; the
            // signal has a no-op handler.
            unsafe { libc::pthread_kill(*thread, kick_signal()) };
        }
    }
}

impl VcpuThread {
    fn kick(&self) {
        // SAFETY: the pthread is alive until joined; the signal has a no-op handler.
        unsafe { libc::pthread_kill(self.handle.as_pthread_t(), kick_signal()) };
    }

    /// CPU time this vCPU has used, in nanoseconds.
    pub fn cpu_time_ns(&self) -> u64 {
        let clock = self.cpu_clock.load(Ordering::SeqCst);
        if clock == 0 {
            return 0;
        }
        let mut time = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id from pthread_getcpuclockid and a valid pointer.
        if unsafe { libc::clock_gettime(clock, &mut time) } != 0 {
            return 0;
        }
        u64::try_from(time.tv_sec).unwrap_or(0) * 1_000_000_000
            + u64::try_from(time.tv_nsec).unwrap_or(0)
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// Starts the run loop of `vcpu` on its own thread.
pub fn spawn(
    id: u8,
    vcpu: Arc<Mutex<VcpuFd>>,
    devices: Arc<Devices>,
    control: Arc<RunControl>,
    events: Sender<VmEvent>,
) -> std::io::Result<VcpuThread> {
    let cpu_clock = Arc::new(AtomicI32::new(0));
    let clock_slot = cpu_clock.clone();
    let thread_fd = vcpu.clone();
    let handle = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        // The run loop is shallow; a small stack is cheaper to set up than the 2 MiB default.
        .stack_size(VCPU_STACK_BYTES)
        .spawn(move || {
            let mut clock: libc::clockid_t = 0;
            // SAFETY: pthread_self is always valid; the out pointer is valid.
            if unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0 {
                clock_slot.store(clock, Ordering::SeqCst);
            }
            run_loop(id, &thread_fd, &devices, &control, &events);
            control.parked.fetch_add(1, Ordering::SeqCst);
        })?;
    Ok(VcpuThread {
        id,
        handle,
        cpu_clock,
        fd: vcpu,
    })
}

fn run_loop(
    id: u8,
    shared: &Mutex<VcpuFd>,
    devices: &Devices,
    control: &RunControl,
    events: &Sender<VmEvent>,
) {
    let crash = |reason: String| {
        let _ = events.send(VmEvent::Crash { vcpu: id, reason });
    };
    let mut seen_tick = 0;
    loop {
        if !control.checkpoint() {
            return;
        }
        control.throttle_point(&mut seen_tick);
        let Ok(mut vcpu) = shared.lock() else {
            return crash("vCPU state lock poisoned".to_string());
        };
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => devices.pio.read(port, data),
            Ok(VcpuExit::IoOut(port, data)) => devices.pio.write(port, data),
            Ok(VcpuExit::MmioRead(address, data)) => devices.mmio_read(address, data),
            Ok(VcpuExit::MmioWrite(address, data)) => devices.mmio_write(address, data),
            Ok(VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr) => {}
            Ok(VcpuExit::Shutdown) => {
                return crash("triple fault (KVM_EXIT_SHUTDOWN)".to_string());
            }
            Ok(VcpuExit::InternalError) => {
                // SAFETY: after KVM_EXIT_INTERNAL_ERROR the `internal` member of the union is valid.
                let internal = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
                return crash(format!(
                    "KVM internal error (KVM_EXIT_INTERNAL_ERROR, suberror {}{})",
                    internal.suberror,
                    if internal.suberror == 1 {
                        ": instruction emulation failure"
                    } else {
                        ""
                    }
                ));
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                let event = match kind {
                    SYSTEM_EVENT_SHUTDOWN => VmEvent::Guest(GuestRequest::Poweroff),
                    SYSTEM_EVENT_RESET => VmEvent::Guest(GuestRequest::Reset),
                    SYSTEM_EVENT_CRASH => VmEvent::Crash {
                        vcpu: id,
                        reason: "guest crash (KVM_SYSTEM_EVENT_CRASH)".into(),
                    },
                    other => VmEvent::Crash {
                        vcpu: id,
                        reason: format!("unknown KVM system event {other}"),
                    },
                };
                let _ = events.send(event);
                return;
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return crash(format!(
                    "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on CPU {cpu}"
                ));
            }
            Ok(other) => return crash(format!("unexpected KVM exit {other:?}")),
            Err(err) if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
            }
            Err(err) => return crash(format!("KVM_RUN failed: {err}")),
        }
    }
}

/// Moves every vCPU to `state` and waits (bounded) until they all noticed.
pub fn transition(control: &RunControl, threads: &[VcpuThread], state: RunState) -> bool {
    control.set(state);
    if state == RunState::Running {
        return true;
    }
    // A kick can arrive just before a vCPU enters KVM_RUN; kick again until everyone parked.
    // Up to 5 s: under emulation (a nested or TCG host) a vCPU can take long to notice.
    for _ in 0..10_000 {
        let done = match state {
            RunState::Paused => control.parked.load(Ordering::SeqCst) >= threads.len(),
            _ => threads.iter().all(VcpuThread::is_finished),
        };
        if done {
            return true;
        }
        for thread in threads.iter().filter(|thread| !thread.is_finished()) {
            thread.kick();
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    false
}

/// Reads every part of a paused vCPU's state.
pub fn save_state(
    vcpu: &VcpuFd,
    msr_indices: &[u32],
) -> Result<crate::snapshot::VcpuState, VmError> {
    let mut msrs = Vec::new();
    for index in msr_indices {
        // One at a time: KVM stops a batch at the first MSR it refuses.
        let Ok(mut one) = Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
            index: *index,
            ..Default::default()
        }]) else {
            continue;
        };
        if vcpu.get_msrs(&mut one).unwrap_or(0) == 1
            && let Some(entry) = one.as_slice().first()
        {
            msrs.push((entry.index, entry.data));
        }
    }
    Ok(crate::snapshot::VcpuState {
        regs: vcpu.get_regs().map_err(kvm_error("KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(kvm_error("KVM_GET_SREGS"))?,
        xsave: vcpu.get_xsave().map_err(kvm_error("KVM_GET_XSAVE"))?,
        xcrs: vcpu.get_xcrs().map_err(kvm_error("KVM_GET_XCRS"))?,
        msrs,
        lapic: vcpu.get_lapic().map_err(kvm_error("KVM_GET_LAPIC"))?,
        mp_state: vcpu.get_mp_state().map_err(kvm_error("KVM_GET_MP_STATE"))?,
        events: vcpu
            .get_vcpu_events()
            .map_err(kvm_error("KVM_GET_VCPU_EVENTS"))?,
    })
}

/// Writes a saved state into a freshly created vCPU (CPUID already set).
pub fn restore_state(vcpu: &VcpuFd, state: &crate::snapshot::VcpuState) -> Result<(), VmError> {
    vcpu.set_mp_state(state.mp_state)
        .map_err(kvm_error("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&state.regs)
        .map_err(kvm_error("KVM_SET_REGS"))?;
    vcpu.set_sregs(&state.sregs)
        .map_err(kvm_error("KVM_SET_SREGS"))?;
    // SAFETY: the xsave area came from KVM_GET_XSAVE of the same kind of vCPU.
    unsafe { vcpu.set_xsave(&state.xsave) }.map_err(kvm_error("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&state.xcrs)
        .map_err(kvm_error("KVM_SET_XCRS"))?;
    vcpu.set_lapic(&state.lapic)
        .map_err(kvm_error("KVM_SET_LAPIC"))?;
    let entries: Vec<_> = state
        .msrs
        .iter()
        .map(|(index, data)| kvm_bindings::kvm_msr_entry {
            index: *index,
            data: *data,
            ..Default::default()
        })
        .collect();
    if !entries.is_empty() {
        let msrs = Msrs::from_entries(&entries).map_err(|_| VmError::Kvm {
            what: "MSR list",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        vcpu.set_msrs(&msrs).map_err(kvm_error("KVM_SET_MSRS"))?;
    }
    vcpu.set_vcpu_events(&state.events)
        .map_err(kvm_error("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}
