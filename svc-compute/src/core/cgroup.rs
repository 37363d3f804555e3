//! Resource control of a running guest through cgroups: CPU shares and CFS quota, memory limits,
//! and CPU accounting. cgroup v1 (separate cpu, cpuacct and memory hierarchies, as on these
//! hosts) and v2 (one unified hierarchy, as on current distributions). Each guest gets
//! `vireo/<uuid>` in each hierarchy; its engine process is moved there right after it starts.

use std::path::{Path, PathBuf};

use vireo_proto::compute::v1 as pb;

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    V1,
    V2,
}

/// The cgroup layout of this host, if cgroups can be managed here.
pub fn detect() -> Option<Layout> {
    let root = Path::new(ROOT);
    if root.join("cgroup.controllers").exists() {
        Some(Layout::V2)
    } else if root.join("cpu/cpu.shares").exists() && root.join("memory").exists() {
        Some(Layout::V1)
    } else {
        None
    }
}

/// The cgroup(s) of one guest.
#[derive(Debug, Clone)]
pub struct Group {
    layout: Layout,
    uuid: String,
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
        .map_err(|err| std::io::Error::new(err.kind(), format!("{}: {err}", path.display())))
}

/// libvirt's mapping of v1 cpu.shares (2-262144) onto v2 cpu.weight (1-10000).
fn shares_to_weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

fn weight_to_shares(weight: u64) -> u64 {
    2 + (weight.clamp(1, 10_000) - 1) * 262_142 / 9999
}

impl Group {
    pub fn new(layout: Layout, uuid: &str) -> Group {
        Group {
            layout,
            uuid: uuid.to_string(),
        }
    }

    fn dir(&self, controller: &str) -> PathBuf {
        match self.layout {
            Layout::V1 => Path::new(ROOT)
                .join(controller)
                .join("vireo")
                .join(&self.uuid),
            Layout::V2 => Path::new(ROOT).join("vireo").join(&self.uuid),
        }
    }

    fn controllers(&self) -> &'static [&'static str] {
        match self.layout {
            Layout::V1 => &["cpu", "cpuacct", "memory"],
            Layout::V2 => &["unified"],
        }
    }

    /// Creates the group and moves `pid` (every thread of it) in.
    pub fn create(&self, pid: u32) -> std::io::Result<()> {
        if self.layout == Layout::V2 {
            // Let the children of / and /vireo use the cpu and memory controllers.
            std::fs::create_dir_all(Path::new(ROOT).join("vireo"))?;
            for dir in [Path::new(ROOT), &Path::new(ROOT).join("vireo")] {
                write(&dir.join("cgroup.subtree_control"), "+cpu +memory")?;
            }
        }
        for controller in self.controllers() {
            let dir = self.dir(controller);
            std::fs::create_dir_all(&dir)?;
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Removes the group once its processes have gone.
    pub fn remove(&self) {
        for controller in self.controllers() {
            let _ = std::fs::remove_dir(self.dir(controller));
        }
    }

    /// Applies `<cputune>` shares, period and quota.
    pub fn set_cpu(&self, tune: &pb::CpuTune) -> std::io::Result<()> {
        match self.layout {
            Layout::V1 => {
                let dir = self.dir("cpu");
                if let Some(shares) = tune.shares {
                    write(&dir.join("cpu.shares"), &shares.to_string())?;
                }
                if let Some(period) = tune.period_us {
                    write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
                }
                if let Some(quota) = tune.quota_us {
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
            Layout::V2 => {
                let dir = self.dir("unified");
                if let Some(shares) = tune.shares {
                    write(
                        &dir.join("cpu.weight"),
                        &shares_to_weight(shares).to_string(),
                    )?;
                }
                if tune.period_us.is_some() || tune.quota_us.is_some() {
                    let current = self.cpu()?;
                    let period = tune.period_us.or(current.period_us).unwrap_or(100_000);
                    let quota = match tune.quota_us.or(current.quota_us) {
                        Some(quota) if quota > 0 => quota.to_string(),
                        _ => "max".into(),
                    };
                    write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
                }
            }
        }
        Ok(())
    }

    /// The CPU settings in force.
    pub fn cpu(&self) -> std::io::Result<pb::CpuTune> {
        let read = |path: PathBuf| -> std::io::Result<String> {
            Ok(std::fs::read_to_string(&path)
                .map_err(|err| {
                    std::io::Error::new(err.kind(), format!("{}: {err}", path.display()))
                })?
                .trim()
                .to_string())
        };
        match self.layout {
            Layout::V1 => {
                let dir = self.dir("cpu");
                Ok(pb::CpuTune {
                    shares: read(dir.join("cpu.shares"))?.parse().ok(),
                    period_us: read(dir.join("cpu.cfs_period_us"))?.parse().ok(),
                    quota_us: read(dir.join("cpu.cfs_quota_us"))?.parse().ok(),
                    vcpupins: Vec::new(),
                })
            }
            Layout::V2 => {
                let dir = self.dir("unified");
                let max = read(dir.join("cpu.max"))?;
                let mut parts = max.split_whitespace();
                let quota = parts.next().unwrap_or("max");
                Ok(pb::CpuTune {
                    shares: read(dir.join("cpu.weight"))?
                        .parse()
                        .ok()
                        .map(weight_to_shares),
                    period_us: parts.next().and_then(|p| p.parse().ok()),
                    quota_us: Some(if quota == "max" {
                        -1
                    } else {
                        quota.parse().unwrap_or(-1)
                    }),
                    vcpupins: Vec::new(),
                })
            }
        }
    }

    /// Applies `<memtune>`; an unset limit is left as it is.
    pub fn set_memory(&self, tune: &pb::MemoryTune) -> std::io::Result<()> {
        let value = |limit: &Option<pb::MemoryLimit>, unlimited: &str| -> Option<String> {
            match limit.as_ref()?.value.as_ref()? {
                pb::memory_limit::Value::Kib(kib) => Some((kib.saturating_mul(1024)).to_string()),
                pb::memory_limit::Value::Unlimited(_) => Some(unlimited.to_string()),
            }
        };
        match self.layout {
            Layout::V1 => {
                let dir = self.dir("memory");
                if let Some(v) = value(&tune.hard_limit, "-1") {
                    write(&dir.join("memory.limit_in_bytes"), &v)?;
                }
                if let Some(v) = value(&tune.soft_limit, "-1") {
                    write(&dir.join("memory.soft_limit_in_bytes"), &v)?;
                }
                if let Some(v) = value(&tune.swap_hard_limit, "-1") {
                    write(&dir.join("memory.memsw.limit_in_bytes"), &v)?;
                }
                if tune.min_guarantee.is_some() {
                    return Err(std::io::Error::other(
                        "min_guarantee needs cgroup v2 (memory.min); this host has cgroup v1",
                    ));
                }
            }
            Layout::V2 => {
                let dir = self.dir("unified");
                if let Some(v) = value(&tune.hard_limit, "max") {
                    write(&dir.join("memory.max"), &v)?;
                }
                if let Some(v) = value(&tune.soft_limit, "max") {
                    write(&dir.join("memory.high"), &v)?;
                }
                if let Some(v) = value(&tune.swap_hard_limit, "max") {
                    write(&dir.join("memory.swap.max"), &v)?;
                }
                if let Some(v) = value(&tune.min_guarantee, "max") {
                    write(&dir.join("memory.min"), &v)?;
                }
            }
        }
        Ok(())
    }

    /// The memory limits in force, in KiB (`unlimited` when none).
    pub fn memory(&self) -> std::io::Result<pb::MemoryTune> {
        let limit = |path: PathBuf| -> std::io::Result<Option<pb::MemoryLimit>> {
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(err) => return Err(err),
            };
            let text = text.trim();
            let value = match text.parse::<u64>() {
                // v1 says "no limit" with the largest page-aligned value.
                Ok(bytes) if bytes < (1 << 62) => pb::memory_limit::Value::Kib(bytes / 1024),
                _ => pb::memory_limit::Value::Unlimited(true),
            };
            Ok(Some(pb::MemoryLimit { value: Some(value) }))
        };
        match self.layout {
            Layout::V1 => {
                let dir = self.dir("memory");
                Ok(pb::MemoryTune {
                    hard_limit: limit(dir.join("memory.limit_in_bytes"))?,
                    soft_limit: limit(dir.join("memory.soft_limit_in_bytes"))?,
                    swap_hard_limit: limit(dir.join("memory.memsw.limit_in_bytes"))?,
                    min_guarantee: None,
                })
            }
            Layout::V2 => {
                let dir = self.dir("unified");
                Ok(pb::MemoryTune {
                    hard_limit: limit(dir.join("memory.max"))?,
                    soft_limit: limit(dir.join("memory.high"))?,
                    swap_hard_limit: limit(dir.join("memory.swap.max"))?,
                    min_guarantee: limit(dir.join("memory.min"))?,
                })
            }
        }
    }

    /// CPU time the guest's processes used, in nanoseconds.
    pub fn cpu_time_ns(&self) -> Option<u64> {
        match self.layout {
            Layout::V1 => std::fs::read_to_string(self.dir("cpuacct").join("cpuacct.usage"))
                .ok()?
                .trim()
                .parse()
                .ok(),
            Layout::V2 => std::fs::read_to_string(self.dir("unified").join("cpu.stat"))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))?
                .trim()
                .parse::<u64>()
                .ok()
                .map(|us| us * 1000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_weights_map_as_libvirt_does() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(weight_to_shares(10_000), 262_144);
    }
}
