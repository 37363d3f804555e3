//! What was asked for: the VM description a `vireo-vmm run` command line gives, validated.

use std::path::PathBuf;

use crate::devices::serial::SerialOutput;
use crate::devices::virtio::block::ImageFormat;
use crate::vstate::memory::MemoryOptions;

/// The most vCPUs: APIC IDs are one byte and the IOAPIC takes the ID after the last vCPU.
pub const MAX_VCPUS: u8 = 254;
/// The least memory a guest gets; below it, the fixed low-memory layout does not fit.
pub const MIN_MEMORY_MIB: u64 = 16;
/// The most memory a guest gets (1 TiB), far beyond these hosts but safe from overflow.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub vcpus: u8,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub serial: SerialOutput,
    pub control_socket: Option<PathBuf>,
    pub memory: MemoryOptions,
    /// The KVM device, /dev/kvm unless told otherwise.
    pub kvm_device: PathBuf,
    /// A virtio-rng device.
    pub rng: bool,
    /// virtio-blk devices, in PCI slot order.
    pub disks: Vec<DiskConfig>,
    /// virtio-net devices on taps, after the disks.
    pub nets: Vec<NetConfig>,
    /// A virtio-balloon device, after the nets.
    pub balloon: bool,
    /// Host PCI devices to assign through VFIO, by sysfs path; after the virtio devices.
    pub vfio: Vec<PathBuf>,
    /// A virtio-console, last.
    pub console: Option<ConsoleTarget>,
}

/// `--console file:PATH` (guest output only) or `--console unix:PATH` (a socket, both ways, one
/// client at a time).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConsoleTarget {
    File(PathBuf),
    Unix(PathBuf),
}

impl std::str::FromStr for ConsoleTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some(("file", path)) if !path.is_empty() => Ok(ConsoleTarget::File(path.into())),
            Some(("unix", path)) if !path.is_empty() => Ok(ConsoleTarget::Unix(path.into())),
            _ => Err(format!("--console {text}: expected file:PATH or unix:PATH")),
        }
    }
}

/// `--net tap=NAME[,mac=52:54:00:..]`: a virtio-net device on an existing or new tap.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    pub tap: String,
    pub mac: [u8; 6],
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16).ok())
        .collect::<Option<_>>()?;
    let mac: [u8; 6] = bytes.try_into().ok()?;
    // A unicast address: a guest NIC must not claim a multicast one.
    (mac[0] & 1 == 0).then_some(mac)
}

impl std::str::FromStr for NetConfig {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut tap = None;
        let mut mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        for option in text.split(',') {
            match option.split_once('=') {
                Some(("tap", name)) if !name.is_empty() => tap = Some(name.to_string()),
                Some(("mac", value)) => {
                    mac = parse_mac(value).ok_or_else(|| {
                        format!("--net mac={value}: expected a unicast MAC like 52:54:00:12:34:56")
                    })?;
                }
                _ => {
                    return Err(format!(
                        "--net option `{option}`: expected tap=NAME or mac=MAC"
                    ));
                }
            }
        }
        Ok(NetConfig {
            tap: tap.ok_or("--net needs tap=NAME")?,
            mac,
        })
    }
}

/// `--disk PATH[,format=raw|qcow2][,readonly][,serial=TEXT]`: an image on virtio-blk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub format: crate::devices::virtio::block::ImageFormat,
    pub read_only: bool,
    pub serial: String,
}

impl std::str::FromStr for DiskConfig {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = text.split(',');
        let path = parts
            .next()
            .filter(|path| !path.is_empty())
            .ok_or("--disk needs a path")?;
        let mut disk = DiskConfig {
            path: path.into(),
            format: Default::default(),
            read_only: false,
            serial: String::new(),
        };
        for option in parts {
            match option.split_once('=') {
                None if option == "readonly" => disk.read_only = true,
                Some(("serial", serial)) if serial.len() <= 20 && serial.is_ascii() => {
                    disk.serial = serial.into()
                }
                Some(("serial", _)) => {
                    return Err("--disk serial=: at most 20 ASCII characters".into());
                }
                Some(("format", "raw")) => disk.format = ImageFormat::Raw,
                Some(("format", "qcow2")) => disk.format = ImageFormat::Qcow2,
                Some(("format", other)) => {
                    return Err(format!("--disk format={other}: expected raw or qcow2"));
                }
                _ => {
                    return Err(format!(
                        "--disk option `{option}`: expected format=raw|qcow2, readonly or serial=TEXT"
                    ));
                }
            }
        }
        Ok(disk)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--vcpus {0}: must be between 1 and {MAX_VCPUS}")]
    Vcpus(u64),
    #[error("--memory {0} MiB: must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB")]
    Memory(u64),
    #[error("--kernel {0}: no such file")]
    Kernel(String),
    #[error("--initrd {0}: no such file")]
    Initrd(String),
    #[error("--disk {0}: no such file")]
    Disk(String),
}

impl VmConfig {
    pub fn validate(vcpus: u64, memory_mib: u64) -> Result<u8, ConfigError> {
        let vcpus = u8::try_from(vcpus)
            .ok()
            .filter(|count| (1..=MAX_VCPUS).contains(count))
            .ok_or(ConfigError::Vcpus(vcpus))?;
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(ConfigError::Memory(memory_mib));
        }
        Ok(vcpus)
    }

    /// Checks what validation of the numbers cannot: the files exist.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        if !self.kernel.is_file() {
            return Err(ConfigError::Kernel(self.kernel.display().to_string()));
        }
        if let Some(initrd) = &self.initrd
            && !initrd.is_file()
        {
            return Err(ConfigError::Initrd(initrd.display().to_string()));
        }
        if let Some(disk) = self.disks.iter().find(|disk| !disk.path.is_file()) {
            return Err(ConfigError::Disk(disk.path.display().to_string()));
        }
        Ok(())
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_targets() {
        assert_eq!(
            "unix:/run/hvc.sock".parse(),
            Ok(ConsoleTarget::Unix("/run/hvc.sock".into()))
        );
        assert_eq!(
            "file:/tmp/hvc.log".parse(),
            Ok(ConsoleTarget::File("/tmp/hvc.log".into()))
        );
        assert_eq!(
            "pty".parse::<ConsoleTarget>(),
            Err("--console pty: expected file:PATH or unix:PATH".to_string())
        );
    }

    #[test]
    fn bounds() {
        assert_eq!(VmConfig::validate(2, 256), Ok(2));
        assert_eq!(VmConfig::validate(0, 256), Err(ConfigError::Vcpus(0)));
        assert_eq!(VmConfig::validate(255, 256), Err(ConfigError::Vcpus(255)));
        assert_eq!(
            VmConfig::validate(1, 1 << 63),
            Err(ConfigError::Memory(1 << 63))
        );
        assert_eq!(VmConfig::validate(1, 8), Err(ConfigError::Memory(8)));
    }
}
