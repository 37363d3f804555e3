//! virtio-blk on a raw image file: read, write, flush, serial number (GET_ID), discard and
//! write-zeroes, an optional read-only mode, and per-device statistics for `domblkstat`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

use crate::vstate::memory::GuestRam;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{TYPE_BLOCK, VIRTIO_F_VERSION_1, VirtioDevice, VirtioError, read_config_bytes};

const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZES: [u16; 1] = [256];
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const SERIAL_BYTES: usize = 20;
const SEG_MAX: u32 = 126;
/// The most data one request may move, so a guest cannot make the VMM allocate without bound.
const MAX_REQUEST_BYTES: u64 = 32 << 20;
const WRITE_ZEROES_UNMAP: u32 = 1;

/// Counters for `domblkstat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BlockStats {
    pub read_requests: u64,
    pub read_bytes: u64,
    pub read_ns: u64,
    pub write_requests: u64,
    pub write_bytes: u64,
    pub write_ns: u64,
    pub flush_requests: u64,
    pub flush_ns: u64,
    pub errors: u64,
}

/// The image format a disk is read as. It is always stated, never probed from the image: a
/// guest that writes a format header into a raw disk must not change how it is opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    #[default]
    Raw,
    Qcow2,
}

/// Where the disk's bytes are: a raw file, or a qcow2 image (with its backing chain) via imago.
enum Image {
    Raw(File),
    Qcow2(imago::FormatAccess<imago::file::File>),
}

/// Guest memory that could not be reached (outside RAM or wrapping).
fn unreachable_guest_memory() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EFAULT)
}

/// Which way a raw transfer moves data.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    FileToGuest,
    GuestToFile,
}

/// pread/pwrite between `file` at `offset` and `length` bytes at `guest`, until all are moved.
///
/// # Safety
/// `guest` must point at `length` bytes of guest memory that stay mapped for the call.
unsafe fn raw_transfer(
    file: &File,
    guest: *mut u8,
    length: usize,
    offset: u64,
    direction: Direction,
) -> std::io::Result<()> {
    let mut done = 0usize;
    while done < length {
        let at = i64::try_from(offset + done as u64).map_err(|_| unreachable_guest_memory())?;
        // SAFETY: `done < length`, so the range stays inside the caller's `length` bytes.
        let (pointer, rest) = (unsafe { guest.add(done) }, length - done);
        // SAFETY: the buffer is valid for `rest` bytes (caller's contract).
        let count = unsafe {
            match direction {
                Direction::FileToGuest => libc::pread(file.as_raw_fd(), pointer.cast(), rest, at),
                Direction::GuestToFile => libc::pwrite(file.as_raw_fd(), pointer.cast(), rest, at),
            }
        };
        match usize::try_from(count) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(count) => done += count,
            Err(_) => return Err(std::io::Error::last_os_error()),
        }
    }
    Ok(())
}

impl Image {
    /// Moves `length` bytes between the image at `offset` and guest memory at `address`, with
    /// no copy in between.
    fn transfer(
        &self,
        memory: &GuestRam,
        address: GuestAddress,
        length: u32,
        offset: u64,
        direction: Direction,
    ) -> std::io::Result<()> {
        let length = usize::try_from(length).map_err(|_| unreachable_guest_memory())?;
        let slice = memory
            .get_slice(address, length)
            .map_err(|_| unreachable_guest_memory())?;
        let guard = slice.ptr_guard_mut();
        let moved = match self {
            // SAFETY: get_slice checked that `length` bytes at the pointer are guest memory,
            // which stays mapped for the VM's life.
            Image::Raw(file) => unsafe {
                raw_transfer(file, guard.as_ptr(), length, offset, direction)
            },
            Image::Qcow2(image) => {
                // SAFETY: as above. The guest may change these bytes meanwhile; that can only
                // spoil its own data, and nothing here reads them back.
                let bytes = unsafe { std::slice::from_raw_parts_mut(guard.as_ptr(), length) };
                match direction {
                    Direction::FileToGuest => image.read(bytes, offset),
                    Direction::GuestToFile => image.write(&*bytes, offset),
                }
            }
        };
        if direction == Direction::FileToGuest {
            // Written behind vm-memory's back, and marked only once written (success or not):
            // a live migration that sent the page meanwhile sends it again.
            vm_memory::bitmap::Bitmap::mark_dirty(slice.bitmap(), 0, length);
        }
        moved
    }

    fn flush(&self) -> std::io::Result<()> {
        match self {
            Image::Raw(file) => file.sync_data(),
            Image::Qcow2(image) => image.flush(),
        }
    }
}

pub struct Block {
    image: Image,
    capacity_sectors: u64,
    read_only: bool,
    serial: [u8; SERIAL_BYTES],
    pub stats: BlockStats,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("disk {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
}

impl Block {
    pub fn open(
        path: &Path,
        format: ImageFormat,
        read_only: bool,
        serial: &str,
    ) -> Result<Block, BlockError> {
        let open_error = |source| BlockError::Open {
            path: path.display().to_string(),
            source,
        };
        let (image, length) = match format {
            ImageFormat::Raw => {
                let file = File::options()
                    .read(true)
                    .write(!read_only)
                    .open(path)
                    .map_err(open_error)?;
                let length = file.metadata().map_err(open_error)?.len();
                (Image::Raw(file), length)
            }
            ImageFormat::Qcow2 => {
                use imago::FormatDriverBuilder;
                // Backing files named in the image are opened read-only, as the chain requires.
                let qcow2 = imago::qcow2::Qcow2::<imago::file::File>::builder_path(path)
                    .write(!read_only)
                    .open(imago::PermissiveImplicitOpenGate::default())
                    .map_err(open_error)?;
                let image = imago::FormatAccess::new(qcow2);
                let length = image.size();
                (Image::Qcow2(image), length)
            }
        };
        let mut serial_bytes = [0u8; SERIAL_BYTES];
        for (slot, byte) in serial_bytes.iter_mut().zip(serial.bytes()) {
            *slot = byte;
        }
        Ok(Block {
            image,
            capacity_sectors: length / SECTOR_SIZE,
            read_only,
            serial: serial_bytes,
            stats: BlockStats::default(),
        })
    }

    fn config_bytes(&self) -> [u8; 60] {
        let mut config = [0u8; 60];
        config[0..8].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&u32::try_from(SECTOR_SIZE).unwrap_or(512).to_le_bytes());
        let sectors = u32::try_from(MAX_REQUEST_BYTES / SECTOR_SIZE).unwrap_or(u32::MAX);
        config[36..40].copy_from_slice(&sectors.to_le_bytes()); // max_discard_sectors
        config[40..44].copy_from_slice(&1u32.to_le_bytes()); // max_discard_seg
        config[44..48].copy_from_slice(&1u32.to_le_bytes()); // discard_sector_alignment
        config[48..52].copy_from_slice(&sectors.to_le_bytes()); // max_write_zeroes_sectors
        config[52..56].copy_from_slice(&1u32.to_le_bytes()); // max_write_zeroes_seg
        config[56] = 1; // write_zeroes_may_unmap
        config
    }

    /// The byte range a request covers, if it lies inside the disk.
    fn range(&self, sector: u64, length: u64) -> Option<u64> {
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(length)?;
        (length <= MAX_REQUEST_BYTES && end <= self.capacity_sectors * SECTOR_SIZE).then_some(start)
    }

    fn punch(&mut self, start: u64, length: u64, zero_only: bool) -> std::io::Result<()> {
        let file = match &mut self.image {
            Image::Raw(file) => file,
            Image::Qcow2(image) if zero_only => return image.write_zeroes(start, length),
            Image::Qcow2(image) => return image.discard_to_any(start, length),
        };
        let mode = if zero_only {
            libc::FALLOC_FL_ZERO_RANGE
        } else {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        };
        let (Ok(start), Ok(length)) = (i64::try_from(start), i64::try_from(length)) else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate only changes the file's allocation; all arguments are plain values.
        let result = unsafe { libc::fallocate(file.as_raw_fd(), mode, start, length) };
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Runs one request: `data` are (address, length, device-writable) descriptors between the
    /// header and the status byte. Returns the status and the bytes written into guest memory.
    fn execute(
        &mut self,
        kind: u32,
        sector: u64,
        data: &[(GuestAddress, u32, bool)],
        memory: &GuestRam,
    ) -> (u8, u32) {
        let total: u64 = data.iter().map(|(_, length, _)| u64::from(*length)).sum();
        let started = Instant::now();
        let elapsed =
            |started: Instant| u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match kind {
            T_IN => {
                if data.iter().any(|(_, _, writable)| !writable) {
                    return (S_IOERR, 0);
                }
                let Some(mut offset) = self.range(sector, total) else {
                    return (S_IOERR, 0);
                };
                let mut written = 0u32;
                for (address, length, _) in data {
                    if self
                        .image
                        .transfer(memory, *address, *length, offset, Direction::FileToGuest)
                        .is_err()
                    {
                        return (S_IOERR, written);
                    }
                    offset += u64::from(*length);
                    written = written.saturating_add(*length);
                }
                self.stats.read_requests += 1;
                self.stats.read_bytes += total;
                self.stats.read_ns += elapsed(started);
                (S_OK, written)
            }
            T_OUT => {
                if self.read_only || data.iter().any(|(_, _, writable)| *writable) {
                    return (S_IOERR, 0);
                }
                let Some(mut offset) = self.range(sector, total) else {
                    return (S_IOERR, 0);
                };
                for (address, length, _) in data {
                    if self
                        .image
                        .transfer(memory, *address, *length, offset, Direction::GuestToFile)
                        .is_err()
                    {
                        return (S_IOERR, 0);
                    }
                    offset += u64::from(*length);
                }
                self.stats.write_requests += 1;
                self.stats.write_bytes += total;
                self.stats.write_ns += elapsed(started);
                (S_OK, 0)
            }
            T_FLUSH => {
                let status = if self.image.flush().is_ok() {
                    S_OK
                } else {
                    S_IOERR
                };
                self.stats.flush_requests += 1;
                self.stats.flush_ns += elapsed(started);
                (status, 0)
            }
            T_GET_ID => match data.first() {
                Some((address, length, true)) => {
                    let count = usize::try_from(*length).unwrap_or(0).min(SERIAL_BYTES);
                    if memory.write_slice(&self.serial[..count], *address).is_err() {
                        return (S_IOERR, 0);
                    }
                    (S_OK, u32::try_from(count).unwrap_or(0))
                }
                _ => (S_IOERR, 0),
            },
            T_DISCARD | T_WRITE_ZEROES => {
                if self.read_only {
                    return (S_IOERR, 0);
                }
                // One 16-byte segment: sector u64, num_sectors u32, flags u32.
                let Some((address, length, false)) = data.first().copied() else {
                    return (S_IOERR, 0);
                };
                if length < 16 {
                    return (S_IOERR, 0);
                }
                let mut segment = [0u8; 16];
                if memory.read_slice(&mut segment, address).is_err() {
                    return (S_IOERR, 0);
                }
                let start_sector = u64::from_le_bytes(segment[0..8].try_into().unwrap_or([0; 8]));
                let sectors = u32::from_le_bytes(segment[8..12].try_into().unwrap_or([0; 4]));
                let flags = u32::from_le_bytes(segment[12..16].try_into().unwrap_or([0; 4]));
                let bytes = u64::from(sectors) * SECTOR_SIZE;
                let Some(start) = self.range(start_sector, bytes) else {
                    return (S_IOERR, 0);
                };
                let zero_only = kind == T_WRITE_ZEROES && flags & WRITE_ZEROES_UNMAP == 0;
                match self.punch(start, bytes, zero_only) {
                    Ok(()) => (S_OK, 0),
                    Err(_) => (S_IOERR, 0),
                }
            }
            _ => (S_UNSUPP, 0),
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        TYPE_BLOCK
    }

    fn pci_class(&self) -> u32 {
        0x0180_0000
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let mut features = VIRTIO_F_VERSION_1 | F_SEG_MAX | F_BLK_SIZE | F_FLUSH;
        if self.read_only {
            features |= F_RO;
        } else {
            features |= F_DISCARD | F_WRITE_ZEROES;
        }
        features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn statistics(&self) -> serde_json::Value {
        serde_json::to_value(self.stats).unwrap_or_default()
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        memory: &GuestRam,
    ) -> Result<bool, VirtioError> {
        let mut used_any = false;
        while let Some(chain) = queue.iter(memory)?.next() {
            let head = chain.head_index();
            let descriptors: Vec<_> = chain
                .map(|d| (d.addr(), d.len(), d.is_write_only()))
                .collect();
            let (Some(header), Some(status)) =
                (descriptors.first().copied(), descriptors.last().copied())
            else {
                return Err(VirtioError::BadChain("empty block request".into()));
            };
            if descriptors.len() < 2 || header.2 || header.1 < 16 || !status.2 || status.1 < 1 {
                return Err(VirtioError::BadChain(
                    "a block request needs a 16-byte header and a status byte".into(),
                ));
            }
            let mut raw = [0u8; 16];
            memory.read_slice(&mut raw, header.0)?;
            let kind = u32::from_le_bytes(raw[0..4].try_into().unwrap_or([0; 4]));
            let sector = u64::from_le_bytes(raw[8..16].try_into().unwrap_or([0; 8]));
            let (code, written) =
                self.execute(kind, sector, &descriptors[1..descriptors.len() - 1], memory);
            if code != S_OK {
                self.stats.errors += 1;
            }
            memory.write_obj(code, status.0)?;
            queue.add_used(memory, head, written.saturating_add(1))?;
            used_any = true;
        }
        Ok(used_any)
    }
}
