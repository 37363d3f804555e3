//! Saved VM state: a versioned file with a CRC-checked JSON header (machine shape, every vCPU's
//! registers, the irqchip, PIT and clock, device registers) followed by guest memory and its CRC.
//! It is written to a temporary name and renamed, so a failed save never leaves a half file; a
//! file with another magic or version, a bad CRC or an oversized header is refused.
//!
//! Layout: "VIREOSNP" | version u32 | header length u64 | header JSON | header CRC32 u32 |
//!         memory regions in address order | memory CRC32 u32 (all little-endian).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::vstate::memory::GuestRam;
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_pit_state2, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::devices::acpi_pm::AcpiPmState;
use crate::devices::rtc::RtcState;
use crate::devices::serial::SerialPortState;

pub const MAGIC: &[u8; 8] = b"VIREOSNP";
pub const VERSION: u32 = 1;
/// A header beyond this is not one we wrote.
const MAX_HEADER_BYTES: u64 = 64 << 20;
const CHUNK_BYTES: usize = 1 << 20;

#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    /// (index, value) of every MSR KVM let us read.
    pub msrs: Vec<(u32, u64)>,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
}

#[derive(Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStates {
    pub serial: SerialPortState,
    pub rtc: RtcState,
    pub acpi_pm: AcpiPmState,
    /// The virtio devices' transports, in PCI slot order.
    pub virtio: Vec<crate::devices::virtio::pci::VirtioPciState>,
}

/// The devices a restore must recreate, as they were configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineDevices {
    pub rng: bool,
    pub disks: Vec<crate::config::DiskConfig>,
    #[serde(default)]
    pub nets: Vec<crate::config::NetConfig>,
    #[serde(default)]
    pub balloon: bool,
    #[serde(default)]
    pub console: Option<crate::config::ConsoleTarget>,
}

/// Everything but memory.
#[derive(Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub vcpu_count: u8,
    pub memory_mib: u64,
    pub machine: MachineDevices,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub devices: DeviceStates,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {path}: not a vireo-vmm snapshot")]
    Magic { path: PathBuf },
    #[error("snapshot {path}: version {found}, this vireo-vmm reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("snapshot {path}: header of {0} bytes exceeds the {MAX_HEADER_BYTES}-byte limit", .length)]
    HeaderTooLarge { path: PathBuf, length: u64 },
    #[error("snapshot {path}: {what} CRC mismatch (file corrupted)")]
    Crc { path: PathBuf, what: &'static str },
    #[error("snapshot {path}: header: {message}")]
    Header { path: PathBuf, message: String },
    #[error("snapshot {path}: guest memory: {message}")]
    Memory { path: PathBuf, message: String },
}

/// Writes `header` and all of `memory` to `path`. Returns the memory CRC32.
pub fn write(
    path: &Path,
    header: &SnapshotHeader,
    memory: &GuestRam,
) -> Result<u32, SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let partial = path.with_extension(format!("partial.{}", std::process::id()));
    let result = (|| {
        let mut out = BufWriter::new(File::create(&partial).map_err(io)?);
        let json = serde_json::to_vec(header).map_err(|err| SnapshotError::Header {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        out.write_all(MAGIC).map_err(io)?;
        out.write_all(&VERSION.to_le_bytes()).map_err(io)?;
        out.write_all(&(json.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&json).map_err(io)?;
        out.write_all(&crc32fast::hash(&json).to_le_bytes())
            .map_err(io)?;
        let mut crc = crc32fast::Hasher::new();
        let mut chunk = vec![0u8; CHUNK_BYTES];
        for region in memory.iter() {
            let mut offset = 0u64;
            while offset < region.len() {
                let length = usize::try_from((region.len() - offset).min(CHUNK_BYTES as u64))
                    .unwrap_or(CHUNK_BYTES);
                let buffer = &mut chunk[..length];
                memory
                    .read_slice(buffer, GuestAddress(region.start_addr().0 + offset))
                    .map_err(|err| SnapshotError::Memory {
                        path: path.to_path_buf(),
                        message: err.to_string(),
                    })?;
                crc.update(buffer);
                out.write_all(buffer).map_err(io)?;
                offset += length as u64;
            }
        }
        let memory_crc = crc.finalize();
        out.write_all(&memory_crc.to_le_bytes()).map_err(io)?;
        out.into_inner()
            .map_err(|err| io(err.into_error()))?
            .sync_all()
            .map_err(io)?;
        Ok(memory_crc)
    })();
    match result {
        Ok(memory_crc) => {
            std::fs::rename(&partial, path).map_err(io)?;
            Ok(memory_crc)
        }
        Err(err) => {
            let _ = std::fs::remove_file(&partial);
            Err(err)
        }
    }
}

/// An opened snapshot: its header, with memory still to be loaded.
pub struct SnapshotReader {
    path: PathBuf,
    input: BufReader<File>,
    pub header: SnapshotHeader,
}

fn read_array<const N: usize>(
    input: &mut impl Read,
    path: &Path,
) -> Result<[u8; N], SnapshotError> {
    let mut bytes = [0u8; N];
    input
        .read_exact(&mut bytes)
        .map_err(|source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes)
}

/// Opens `path` and checks magic, version and the header's CRC.
pub fn open(path: &Path) -> Result<SnapshotReader, SnapshotError> {
    let file = File::open(path).map_err(|source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut input = BufReader::new(file);
    if &read_array::<8>(&mut input, path)? != MAGIC {
        return Err(SnapshotError::Magic {
            path: path.to_path_buf(),
        });
    }
    let version = u32::from_le_bytes(read_array::<4>(&mut input, path)?);
    if version != VERSION {
        return Err(SnapshotError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let length = u64::from_le_bytes(read_array::<8>(&mut input, path)?);
    if length > MAX_HEADER_BYTES {
        return Err(SnapshotError::HeaderTooLarge {
            path: path.to_path_buf(),
            length,
        });
    }
    let mut json = vec![0u8; usize::try_from(length).unwrap_or(0)];
    input
        .read_exact(&mut json)
        .map_err(|source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let crc = u32::from_le_bytes(read_array::<4>(&mut input, path)?);
    if crc != crc32fast::hash(&json) {
        return Err(SnapshotError::Crc {
            path: path.to_path_buf(),
            what: "header",
        });
    }
    let header = serde_json::from_slice(&json).map_err(|err| SnapshotError::Header {
        path: path.to_path_buf(),
        message: err.to_string(),
    })?;
    Ok(SnapshotReader {
        path: path.to_path_buf(),
        input,
        header,
    })
}

impl SnapshotReader {
    /// Fills `memory` (already laid out for `header.memory_mib`) and checks its CRC. Returns the
    /// header and the memory CRC32.
    pub fn load_memory(
        mut self,
        memory: &GuestRam,
    ) -> Result<(SnapshotHeader, u32), SnapshotError> {
        let path = self.path.clone();
        let io = |source| SnapshotError::Io {
            path: path.clone(),
            source,
        };
        let mut crc = crc32fast::Hasher::new();
        let mut chunk = vec![0u8; CHUNK_BYTES];
        for region in memory.iter() {
            let mut offset = 0u64;
            while offset < region.len() {
                let length = usize::try_from((region.len() - offset).min(CHUNK_BYTES as u64))
                    .unwrap_or(CHUNK_BYTES);
                let buffer = &mut chunk[..length];
                self.input.read_exact(buffer).map_err(io)?;
                crc.update(buffer);
                memory
                    .write_slice(buffer, GuestAddress(region.start_addr().0 + offset))
                    .map_err(|err| SnapshotError::Memory {
                        path: path.clone(),
                        message: err.to_string(),
                    })?;
                offset += length as u64;
            }
        }
        let expected = u32::from_le_bytes(read_array::<4>(&mut self.input, &path)?);
        let found = crc.finalize();
        if expected != found {
            return Err(SnapshotError::Crc {
                path,
                what: "memory",
            });
        }
        Ok((self.header, found))
    }
}
