//! Guest processes seen from procfs: identity that survives our restart (pid plus start time),
//! exit notification through a pidfd (works for processes that are not our children), the
//! vCPU threads and their CPU time, placement and affinity.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

/// The start time of a process in clock ticks since boot (field 22 of /proc/PID/stat): with the
/// pid it names one process, even after the pid is reused.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(&format!("/proc/{pid}/stat")).and_then(|f| f.get(19)?.parse().ok())
}

/// The fields of a stat file after the command name (which may contain blanks): index 0 is the
/// state (field 3).
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let after = &text[text.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// Whether `pid` is still the process that started at `started` (and not a zombie).
pub fn alive(pid: u32, started: u64) -> bool {
    match stat_fields(&format!("/proc/{pid}/stat")) {
        Some(fields) => {
            fields.first().map(String::as_str) != Some("Z")
                && fields.get(19).and_then(|s| s.parse::<u64>().ok()) == Some(started)
        }
        None => false,
    }
}

/// A pidfd for `pid`: readable once the process exits.
pub fn pidfd(pid: u32) -> std::io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until the process behind `fd` has exited.
pub async fn wait_exit(fd: OwnedFd) {
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same for its
    // whole life.
    if let Ok(async_fd) = unsafe { tokio::io::unix::AsyncFd::register(fd) } {
        let _ = async_fd.readable().await;
    }
}

/// One vCPU thread of a guest process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuThread {
    pub vcpu: u32,
    pub tid: u32,
}

/// The vCPU threads of an engine process, found by name: vireo-vmm names them `vcpu<N>`, QEMU
/// (with debug-threads) `CPU <N>/KVM` or `CPU <N>/TCG`. QEMU's TCG runs every vCPU on one thread
/// unless it is multi-threaded; then the list has one entry per thread found.
pub fn vcpu_threads(pid: u32) -> Vec<VcpuThread> {
    let mut threads: Vec<VcpuThread> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let tid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            let comm = comm.trim();
            let vcpu = comm
                .strip_prefix("vcpu")
                .or_else(|| comm.strip_prefix("CPU ")?.split('/').next())?
                .parse()
                .ok()?;
            Some(VcpuThread { vcpu, tid })
        })
        .collect();
    threads.sort_by_key(|t| t.vcpu);
    threads
}

/// CPU time of one thread (user + system) in nanoseconds, and the host CPU it last ran on.
pub fn thread_cpu(pid: u32, tid: u32) -> Option<(u64, u32)> {
    let fields = stat_fields(&format!("/proc/{pid}/task/{tid}/stat"))?;
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let cpu = fields.get(36)?.parse().ok()?;
    Some((ticks_to_ns(ticks), cpu))
}

/// CPU time of a whole process (user + system, every thread) in nanoseconds.
pub fn process_cpu_ns(pid: u32) -> u64 {
    stat_fields(&format!("/proc/{pid}/stat"))
        .and_then(|f| Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?))
        .map_or(0, ticks_to_ns)
}

/// User and system CPU time of a whole process, in nanoseconds.
pub fn process_user_system_ns(pid: u32) -> (u64, u64) {
    stat_fields(&format!("/proc/{pid}/stat"))
        .and_then(|f| {
            Some((
                f.get(11)?.parse::<u64>().ok()?,
                f.get(12)?.parse::<u64>().ok()?,
            ))
        })
        .map_or((0, 0), |(user, system)| {
            (ticks_to_ns(user), ticks_to_ns(system))
        })
}

/// Every thread of a process, and whether it is a vCPU thread.
pub fn threads(pid: u32) -> Vec<(u32, bool)> {
    let vcpus: Vec<u32> = vcpu_threads(pid).iter().map(|t| t.tid).collect();
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .map(|tid| (tid, vcpus.contains(&tid)))
        .collect()
}

fn ticks_to_ns(ticks: u64) -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    ticks.saturating_mul(1_000_000_000 / per_second)
}

/// The host CPUs a thread may run on.
pub fn affinity(tid: u32) -> std::io::Result<Vec<u32>> {
    let tid = libc::pid_t::try_from(tid).map_err(|_| std::io::Error::other("tid out of range"))?;
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is a valid, writable cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((0..u32::try_from(libc::CPU_SETSIZE).unwrap_or(1024))
        // SAFETY: cpu is below CPU_SETSIZE.
        .filter(|cpu| unsafe { libc::CPU_ISSET(*cpu as usize, &set) })
        .collect())
}

/// Pins a thread to host CPUs (sched_setaffinity).
pub fn set_affinity(tid: u32, cpus: &[u32]) -> std::io::Result<()> {
    let tid = libc::pid_t::try_from(tid).map_err(|_| std::io::Error::other("tid out of range"))?;
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in cpus {
        if *cpu as usize >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::other(format!("CPU {cpu} is out of range")));
        }
        // SAFETY: cpu is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(*cpu as usize, &mut set) };
    }
    // SAFETY: the set is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends a signal; a process already gone is not an error.
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// Whether a path is a unix socket that exists.
pub fn socket_exists(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}
