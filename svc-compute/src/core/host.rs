//! Facts about the host, read from procfs and sysfs as virsh's node commands report them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where procfs and sysfs are mounted; tests point it at a fake tree.
#[derive(Debug, Clone)]
pub struct HostRoot {
    pub proc_dir: PathBuf,
    pub sys_dir: PathBuf,
    pub etc_dir: PathBuf,
}

impl HostRoot {
    pub fn system() -> HostRoot {
        HostRoot {
            proc_dir: "/proc".into(),
            sys_dir: "/sys".into(),
            etc_dir: "/etc".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no {field} entry")]
    Missing { path: PathBuf, field: &'static str },
}

/// virsh nodeinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub arch: String,
    pub cpu_model_name: String,
    pub cpus: u32,
    pub cpu_mhz: u32,
    pub numa_cells: u32,
    pub sockets_per_cell: u32,
    pub cores_per_socket: u32,
    pub threads_per_core: u32,
    pub memory_kib: u64,
}

/// One NUMA cell's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellMemory {
    pub cell: u32,
    pub total_kib: u64,
    pub free_kib: u64,
}

/// virsh nodememstats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryStats {
    pub total_kib: u64,
    pub free_kib: u64,
    pub buffers_kib: u64,
    pub cached_kib: u64,
}

/// virsh nodecpustats, in nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuTimes {
    pub user_ns: u64,
    pub system_ns: u64,
    pub idle_ns: u64,
    pub iowait_ns: u64,
}

/// SMBIOS facts for virsh sysinfo, as (section, [(entry name, value)]).
pub type SmbiosSections = Vec<(&'static str, Vec<(&'static str, String)>)>;

pub struct Host {
    root: HostRoot,
}

fn read(path: &Path) -> Result<String, HostError> {
    std::fs::read_to_string(path).map_err(|source| HostError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses a kernel CPU list such as "0-3,8,10-11".
pub fn parse_cpu_list(text: &str) -> BTreeSet<u32> {
    let mut cpus = BTreeSet::new();
    for part in text.trim().split(',').filter(|part| !part.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                if let (Ok(first), Ok(last)) = (first.parse::<u32>(), last.parse::<u32>()) {
                    cpus.extend(first..=last);
                }
            }
            None => {
                if let Ok(cpu) = part.parse() {
                    cpus.insert(cpu);
                }
            }
        }
    }
    cpus
}

/// The value of `key` in a "key: value" file such as /proc/cpuinfo (first occurrence).
fn colon_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name.trim() == key).then(|| value.trim())
    })
}

/// A "Name:   123 kB" value from a meminfo file (the per-node ones prefix "Node N ").
fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        let matches = name == key || name.rsplit(' ').next() == Some(key);
        if !matches {
            return None;
        }
        value.split_whitespace().next()?.parse().ok()
    })
}

impl Host {
    pub fn new(root: HostRoot) -> Host {
        Host { root }
    }

    fn meminfo(&self) -> Result<(PathBuf, String), HostError> {
        let path = self.root.proc_dir.join("meminfo");
        let text = read(&path)?;
        Ok((path, text))
    }

    fn meminfo_field(&self, key: &'static str) -> Result<u64, HostError> {
        let (path, text) = self.meminfo()?;
        meminfo_kib(&text, key).ok_or(HostError::Missing { path, field: key })
    }

    /// Online CPUs, from sysfs (what `nproc` counts without an affinity mask).
    fn online_cpus(&self) -> Result<BTreeSet<u32>, HostError> {
        let path = self.root.sys_dir.join("devices/system/cpu/online");
        let cpus = parse_cpu_list(&read(&path)?);
        if cpus.is_empty() {
            return Err(HostError::Missing {
                path,
                field: "online CPU",
            });
        }
        Ok(cpus)
    }

    /// The NUMA node directories' ids; a host without NUMA sysfs is one cell.
    fn numa_nodes(&self) -> Vec<u32> {
        let dir = self.root.sys_dir.join("devices/system/node");
        let mut nodes: Vec<u32> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                entry
                    .file_name()
                    .to_str()?
                    .strip_prefix("node")?
                    .parse()
                    .ok()
            })
            .collect();
        nodes.sort_unstable();
        nodes
    }

    pub fn node_facts(&self) -> Result<NodeFacts, HostError> {
        let cpuinfo_path = self.root.proc_dir.join("cpuinfo");
        let cpuinfo = read(&cpuinfo_path)?;
        let cpu_model_name = colon_field(&cpuinfo, "model name")
            .unwrap_or("unknown")
            .to_string();
        // "2449.998": virsh prints whole MHz, truncated.
        let cpu_mhz = colon_field(&cpuinfo, "cpu MHz")
            .and_then(|mhz| mhz.split('.').next()?.parse::<u32>().ok())
            .unwrap_or(0);

        let online = self.online_cpus()?;
        let cpu_dir = self.root.sys_dir.join("devices/system/cpu");
        let mut packages = BTreeSet::new();
        let mut cores = BTreeSet::new();
        for cpu in &online {
            let topology = cpu_dir.join(format!("cpu{cpu}/topology"));
            let package =
                std::fs::read_to_string(topology.join("physical_package_id")).unwrap_or_default();
            let core = std::fs::read_to_string(topology.join("core_id"))
                .unwrap_or_else(|_| cpu.to_string());
            packages.insert(package.trim().to_string());
            cores.insert((package.trim().to_string(), core.trim().to_string()));
        }
        let cpus = u32::try_from(online.len()).unwrap_or(u32::MAX);
        let sockets = u32::try_from(packages.len()).unwrap_or(1).max(1);
        let total_cores = u32::try_from(cores.len()).unwrap_or(1).max(1);
        let numa_cells = u32::try_from(self.numa_nodes().len()).unwrap_or(1).max(1);
        Ok(NodeFacts {
            arch: std::env::consts::ARCH.to_string(),
            cpu_model_name,
            cpus,
            cpu_mhz,
            numa_cells,
            sockets_per_cell: (sockets / numa_cells).max(1),
            cores_per_socket: (total_cores / sockets).max(1),
            threads_per_core: (cpus / total_cores).max(1),
            memory_kib: self.meminfo_field("MemTotal")?,
        })
    }

    /// Memory per NUMA cell; without NUMA sysfs, the whole host as cell 0.
    pub fn cells(&self) -> Result<Vec<CellMemory>, HostError> {
        let nodes = self.numa_nodes();
        if nodes.is_empty() {
            return Ok(vec![CellMemory {
                cell: 0,
                total_kib: self.meminfo_field("MemTotal")?,
                free_kib: self.meminfo_field("MemFree")?,
            }]);
        }
        nodes
            .into_iter()
            .map(|node| {
                let path = self
                    .root
                    .sys_dir
                    .join(format!("devices/system/node/node{node}/meminfo"));
                let text = read(&path)?;
                let field = |key| {
                    meminfo_kib(&text, key).ok_or(HostError::Missing {
                        path: path.clone(),
                        field: key,
                    })
                };
                Ok(CellMemory {
                    cell: node,
                    total_kib: field("MemTotal")?,
                    free_kib: field("MemFree")?,
                })
            })
            .collect()
    }

    pub fn memory_stats(&self) -> Result<MemoryStats, HostError> {
        Ok(MemoryStats {
            total_kib: self.meminfo_field("MemTotal")?,
            free_kib: self.meminfo_field("MemFree")?,
            buffers_kib: self.meminfo_field("Buffers")?,
            cached_kib: self.meminfo_field("Cached")?,
        })
    }

    /// CPU times since boot, for one CPU or all.
    pub fn cpu_times(&self, cpu: Option<u32>) -> Result<CpuTimes, HostError> {
        let path = self.root.proc_dir.join("stat");
        let text = read(&path)?;
        let label = cpu.map_or_else(|| "cpu".to_string(), |cpu| format!("cpu{cpu}"));
        let ticks: Vec<u64> = text
            .lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next() == Some(label.as_str()))
                    .then(|| fields.filter_map(|f| f.parse().ok()).collect())
            })
            .ok_or(HostError::Missing {
                path,
                field: "cpu line",
            })?;
        let tick = |index: usize| ticks.get(index).copied().unwrap_or(0);
        // SAFETY: sysconf only reads a configuration value.
        let ticks_per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
            .unwrap_or(100)
            .max(1);
        let ns = |ticks: u64| ticks.saturating_mul(1_000_000_000 / ticks_per_second);
        Ok(CpuTimes {
            user_ns: ns(tick(0) + tick(1)),
            system_ns: ns(tick(2) + tick(5) + tick(6)),
            idle_ns: ns(tick(3)),
            iowait_ns: ns(tick(4)),
        })
    }

    /// SMBIOS facts from /sys/class/dmi/id; entries the host does not expose are left out.
    pub fn smbios(&self) -> SmbiosSections {
        let dmi = self.root.sys_dir.join("class/dmi/id");
        let entry = |file: &str| {
            std::fs::read_to_string(dmi.join(file))
                .ok()
                .map(|v| v.trim().to_string())
        };
        let section = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
            pairs
                .iter()
                .filter_map(|(name, file)| Some((*name, entry(file)?)))
                .filter(|(_, v)| !v.is_empty())
                .collect()
        };
        vec![
            (
                "bios",
                section(&[
                    ("vendor", "bios_vendor"),
                    ("version", "bios_version"),
                    ("date", "bios_date"),
                ]),
            ),
            (
                "system",
                section(&[
                    ("manufacturer", "sys_vendor"),
                    ("product", "product_name"),
                    ("version", "product_version"),
                    ("serial", "product_serial"),
                    ("uuid", "product_uuid"),
                    ("family", "product_family"),
                ]),
            ),
        ]
    }

    /// The host's UUID: SMBIOS when readable, else derived from /etc/machine-id.
    pub fn uuid(&self) -> String {
        let smbios = self.root.sys_dir.join("class/dmi/id/product_uuid");
        if let Ok(uuid) = std::fs::read_to_string(smbios) {
            let uuid = uuid.trim().to_lowercase();
            if uuid.len() == 36 {
                return uuid;
            }
        }
        let machine_id =
            std::fs::read_to_string(self.root.etc_dir.join("machine-id")).unwrap_or_default();
        let hex: String = machine_id
            .trim()
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(32)
            .collect();
        if hex.len() != 32 {
            return String::new();
        }
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host(dir: &Path) -> Host {
        let write = |rel: &str, text: &str| {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write(
            "proc/cpuinfo",
            "processor\t: 0\nmodel name\t: Test CPU 9000\ncpu MHz\t\t: 2449.998\n\nprocessor\t: 1\n",
        );
        write(
            "proc/meminfo",
            "MemTotal:       16384000 kB\nMemFree:        8000000 kB\nBuffers:   1000 kB\nCached:    2000 kB\n",
        );
        write(
            "proc/stat",
            "cpu  100 0 50 1000 5 0 0 0 0 0\ncpu0 60 0 30 500 2 0 0 0 0 0\n",
        );
        write("sys/devices/system/cpu/online", "0-3\n");
        for cpu in 0..4 {
            write(
                &format!("sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id"),
                &format!("{}\n", cpu / 2),
            );
            write(
                &format!("sys/devices/system/cpu/cpu{cpu}/topology/core_id"),
                &format!("{}\n", cpu % 2),
            );
        }
        write(
            "sys/devices/system/node/node0/meminfo",
            "Node 0 MemTotal: 8192000 kB\nNode 0 MemFree: 4000000 kB\n",
        );
        write(
            "sys/devices/system/node/node1/meminfo",
            "Node 1 MemTotal: 8192000 kB\nNode 1 MemFree: 4000000 kB\n",
        );
        write("etc/machine-id", "0123456789abcdef0123456789abcdef\n");
        Host::new(HostRoot {
            proc_dir: dir.join("proc"),
            sys_dir: dir.join("sys"),
            etc_dir: dir.join("etc"),
        })
    }

    #[test]
    fn topology_cells_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        let host = fake_host(dir.path());
        let facts = host.node_facts().unwrap();
        assert_eq!(facts.cpus, 4);
        assert_eq!(facts.cpu_mhz, 2449);
        assert_eq!(facts.cpu_model_name, "Test CPU 9000");
        assert_eq!(
            (
                facts.numa_cells,
                facts.sockets_per_cell,
                facts.cores_per_socket,
                facts.threads_per_core
            ),
            (2, 1, 2, 1)
        );
        assert_eq!(facts.memory_kib, 16_384_000);
        let cells = host.cells().unwrap();
        assert_eq!(cells.len(), 2);
        assert_eq!(
            cells[1],
            CellMemory {
                cell: 1,
                total_kib: 8_192_000,
                free_kib: 4_000_000
            }
        );
        assert_eq!(host.uuid(), "01234567-89ab-cdef-0123-456789abcdef");
        let all = host.cpu_times(None).unwrap();
        let cpu0 = host.cpu_times(Some(0)).unwrap();
        assert!(all.idle_ns > cpu0.idle_ns);
        assert!(host.cpu_times(Some(7)).is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(
            parse_cpu_list("0-2,5,7-8\n")
                .into_iter()
                .collect::<Vec<_>>(),
            vec![0, 1, 2, 5, 7, 8]
        );
        assert!(parse_cpu_list("").is_empty());
    }
}
