//! The bytes of a volume, whether a file or a block device: wiping with libvirt's algorithms,
//! writing an upload at an offset (punching holes it marks sparse), and reading a download
//! (reporting runs of zeroes as holes). Blocking I/O: callers run it on a blocking thread.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::fcntl::{FallocateFlags, fallocate};
use vireo_proto::storage::v1::VolumeWipeAlgorithm as Algorithm;

/// Bytes moved per read or write: large enough for throughput, small enough for a gRPC message.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The length of the next chunk when `left` bytes remain.
fn chunk_len(left: u64) -> usize {
    usize::try_from(left).map_or(CHUNK_BYTES, |left| left.min(CHUNK_BYTES))
}

/// The size of a file or block device in bytes.
pub fn size_of(file: &mut File) -> std::io::Result<u64> {
    let size = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    Ok(size)
}

/// One overwrite (or check) of every byte.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pass {
    /// A repeating 3-byte pattern (one byte repeated is the common case).
    Pattern([u8; 3]),
    /// Pseudo-random bytes from this seed.
    Random(u64),
    /// Read back what the previous pass wrote and compare.
    Verify,
    /// Give the blocks back (discard on a device, punched holes in a file).
    Trim,
}

fn byte(value: u8) -> Pass {
    Pass::Pattern([value; 3])
}

/// The passes of an algorithm, in order; random seeds differ per pass and per wipe.
fn passes(algorithm: Algorithm, seed: u64) -> Vec<Pass> {
    let random = |n: u64| Pass::Random(seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    match algorithm {
        Algorithm::Unspecified | Algorithm::Zero => vec![byte(0)],
        Algorithm::Random => vec![random(1)],
        Algorithm::Trim => vec![Pass::Trim],
        // Random twice, then a known pattern, then verified.
        Algorithm::Nnsa => vec![random(1), random(2), byte(0), Pass::Verify],
        // A character, its complement, a random character, then verified.
        Algorithm::Dod => vec![byte(0), byte(0xff), random(1), Pass::Verify],
        Algorithm::Bsi => [0xff, 0xfe, 0xfd, 0xfb, 0xf7, 0xef, 0xdf, 0xbf, 0x7f]
            .into_iter()
            .map(byte)
            .collect(),
        Algorithm::Schneier => {
            let mut list = vec![byte(0), byte(0xff)];
            list.extend((1..=5).map(random));
            list
        }
        Algorithm::Pfitzner7 => (1..=7).map(random).collect(),
        Algorithm::Pfitzner33 => (1..=33).map(random).collect(),
        Algorithm::Gutmann => {
            let mut list: Vec<Pass> = (1..=4).map(random).collect();
            let thirds = [[0x92, 0x49, 0x24], [0x49, 0x24, 0x92], [0x24, 0x92, 0x49]];
            list.extend([byte(0x55), byte(0xaa)]);
            list.extend(thirds.map(Pass::Pattern));
            list.extend((0..16u8).map(|n| byte(n * 0x11)));
            list.extend(thirds.map(Pass::Pattern));
            list.extend(
                [[0x6d, 0xb6, 0xdb], [0xb6, 0xdb, 0x6d], [0xdb, 0x6d, 0xb6]].map(Pass::Pattern),
            );
            list.extend((5..=8).map(random));
            list
        }
    }
}

/// How many passes an algorithm makes (for progress totals).
pub fn pass_count(algorithm: Algorithm) -> usize {
    passes(algorithm, 0).len()
}

/// A fast generator for wipe data (xorshift64*): the data only has to be unpredictable to the
/// disk, and a seed lets a verify pass regenerate it.
struct Random(u64);

impl Random {
    fn fill(&mut self, buffer: &mut [u8]) {
        for chunk in buffer.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let word = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

fn fill_pattern(buffer: &mut [u8], pattern: [u8; 3], offset: u64) {
    for (index, slot) in buffer.iter_mut().enumerate() {
        *slot = pattern[((offset + index as u64) % 3) as usize];
    }
}

/// Overwrites the whole of `path` with `algorithm`'s passes, calling `progress(done, total)`.
pub fn wipe(
    path: &Path,
    algorithm: Algorithm,
    mut progress: impl FnMut(u64, u64),
) -> std::io::Result<()> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let size = size_of(&mut file)?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()) ^ d.as_secs().rotate_left(32))
        .unwrap_or(1)
        | 1;
    let passes = passes(algorithm, seed);
    let total = size * passes.len() as u64;
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut expected = vec![0u8; CHUNK_BYTES];
    let mut previous = byte(0);
    for (index, pass) in passes.iter().enumerate() {
        let base = size * index as u64;
        if *pass == Pass::Trim {
            trim(&file, size)?;
            progress(base + size, total);
            continue;
        }
        let mut generator = match if *pass == Pass::Verify {
            previous
        } else {
            *pass
        } {
            Pass::Random(seed) => Some(Random(seed)),
            _ => None,
        };
        let mut offset = 0u64;
        while offset < size {
            let length = chunk_len(size - offset);
            let target = if *pass == Pass::Verify {
                &mut expected
            } else {
                &mut buffer
            };
            match (
                if *pass == Pass::Verify {
                    previous
                } else {
                    *pass
                },
                generator.as_mut(),
            ) {
                (_, Some(random)) => random.fill(&mut target[..length]),
                (Pass::Pattern(pattern), None) => {
                    fill_pattern(&mut target[..length], pattern, offset)
                }
                _ => {}
            }
            if *pass == Pass::Verify {
                file.read_exact_at(&mut buffer[..length], offset)?;
                if buffer[..length] != expected[..length] {
                    return Err(std::io::Error::other(format!(
                        "verify pass: the data at byte {offset} is not what was written"
                    )));
                }
            } else {
                file.write_all_at(&buffer[..length], offset)?;
            }
            offset += length as u64;
            progress(base + offset, total);
        }
        if *pass != Pass::Verify {
            file.sync_data()?;
            previous = *pass;
        }
    }
    Ok(())
}

/// Gives back the blocks of a file (punched holes) or a device (BLKDISCARD through fallocate).
fn trim(file: &File, size: u64) -> std::io::Result<()> {
    let length = i64::try_from(size).map_err(std::io::Error::other)?;
    fallocate(
        file.as_fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        0,
        length,
    )
    .map_err(|errno| std::io::Error::other(format!("this storage cannot discard blocks: {errno}")))
}

/// Writes an upload into a volume: data at increasing offsets, holes punched (files) or zeroed
/// (devices), the file grown when the upload ends past its end.
pub struct UploadWriter {
    file: File,
    offset: u64,
    is_file: bool,
    end: u64,
    zeroes: Vec<u8>,
}

impl UploadWriter {
    pub fn open(path: &Path, offset: u64) -> std::io::Result<UploadWriter> {
        let mut file = OpenOptions::new().write(true).open(path)?;
        let is_file = file.metadata()?.is_file();
        let end = size_of(&mut file)?;
        Ok(UploadWriter {
            file,
            offset,
            is_file,
            end,
            zeroes: Vec::new(),
        })
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        if !self.is_file && self.offset + data.len() as u64 > self.end {
            return Err(std::io::Error::other(format!(
                "the upload runs past the end of the device ({} bytes)",
                self.end
            )));
        }
        self.file.write_all_at(data, self.offset)?;
        self.offset += data.len() as u64;
        Ok(())
    }

    pub fn hole(&mut self, length: u64) -> std::io::Result<()> {
        if self.is_file {
            let within = self.end.saturating_sub(self.offset).min(length);
            if within > 0 {
                fallocate(
                    self.file.as_fd(),
                    FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                    i64::try_from(self.offset).map_err(std::io::Error::other)?,
                    i64::try_from(within).map_err(std::io::Error::other)?,
                )
                .map_err(std::io::Error::from)?;
            }
            self.offset += length;
            return Ok(());
        }
        if self.zeroes.is_empty() {
            self.zeroes = vec![0; CHUNK_BYTES];
        }
        let mut left = length;
        while left > 0 {
            let step = chunk_len(left);
            let zeroes = std::mem::take(&mut self.zeroes);
            let result = self.write(&zeroes[..step]);
            self.zeroes = zeroes;
            result?;
            left -= step as u64;
        }
        Ok(())
    }

    /// Copies `length` bytes of `source` from `from` (see `copy_range`).
    pub fn copy_from(
        &mut self,
        source: &File,
        from: u64,
        length: u64,
        progress: &mut dyn FnMut(u64) -> bool,
    ) -> std::io::Result<()> {
        if !self.is_file && self.offset + length > self.end {
            return Err(std::io::Error::other(format!(
                "the upload runs past the end of the device ({} bytes)",
                self.end
            )));
        }
        copy_range(
            source,
            from,
            &self.file,
            self.offset,
            length,
            false,
            progress,
        )?;
        self.offset += length;
        Ok(())
    }

    /// Flushes to stable storage; a file ending in a hole gets its length.
    pub fn finish(mut self) -> std::io::Result<u64> {
        if self.is_file && self.offset > self.end {
            self.file.set_len(self.offset)?;
        }
        self.file.flush()?;
        self.file.sync_data()?;
        Ok(self.offset)
    }
}

/// Bytes per copy_file_range call: large for speed, small enough for frequent progress.
const KERNEL_COPY_BYTES: usize = 32 << 20;

/// Copies `length` bytes from `source` at `from` to `target` at `to`: in the kernel
/// (copy_file_range) where both ends allow it, else through a buffer, where `skip_zeroes`
/// leaves zero chunks unwritten (the target is a fresh file: they read back as holes).
/// `progress` hears the bytes copied so far after each step and returns false to stop.
pub fn copy_range(
    source: &File,
    from: u64,
    target: &File,
    to: u64,
    length: u64,
    skip_zeroes: bool,
    progress: &mut dyn FnMut(u64) -> bool,
) -> std::io::Result<()> {
    let stopped = || std::io::Error::new(std::io::ErrorKind::Interrupted, "the client went away");
    let offset = |value: u64| i64::try_from(value).map_err(std::io::Error::other);
    let mut done = 0u64;
    if !skip_zeroes {
        while done < length {
            let step = usize::try_from(length - done)
                .unwrap_or(KERNEL_COPY_BYTES)
                .min(KERNEL_COPY_BYTES);
            let mut source_at = offset(from + done)?;
            let mut target_at = offset(to + done)?;
            match nix::fcntl::copy_file_range(
                source,
                Some(&mut source_at),
                target,
                Some(&mut target_at),
                step,
            ) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the file ended {} bytes early", length - done),
                    ));
                }
                Ok(copied) => done += copied as u64,
                // Not two regular files, or not a pair the kernel copies between: a buffer does.
                Err(nix::errno::Errno::EXDEV | nix::errno::Errno::EINVAL)
                | Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOSYS)
                    if done == 0 =>
                {
                    break;
                }
                Err(errno) => return Err(errno.into()),
            }
            if !progress(done) {
                return Err(stopped());
            }
        }
        if done == length {
            return Ok(());
        }
    }
    let mut buffer = vec![0u8; CHUNK_BYTES];
    while done < length {
        let step = chunk_len(length - done);
        let chunk = &mut buffer[..step];
        source.read_exact_at(chunk, from + done)?;
        if !(skip_zeroes && chunk.iter().all(|&byte| byte == 0)) {
            target.write_all_at(chunk, to + done)?;
        }
        done += step as u64;
        if !progress(done) {
            return Err(stopped());
        }
    }
    Ok(())
}

/// The data and holes of `file` between `start` and `end`, as (offset, length, is data). Without
/// `sparse`, or where the file cannot say (a block device), it is all data.
pub fn extents(
    file: &File,
    start: u64,
    end: u64,
    sparse: bool,
) -> std::io::Result<Vec<(u64, u64, bool)>> {
    use nix::unistd::{Whence, lseek};
    let whole = vec![(start, end - start, true)];
    if !sparse || start >= end || !file.metadata()?.is_file() {
        return Ok(whole
            .into_iter()
            .filter(|&(_, length, _)| length > 0)
            .collect());
    }
    let seek = |at: u64, whence| -> std::io::Result<Option<u64>> {
        let at = i64::try_from(at).map_err(std::io::Error::other)?;
        match lseek(file, at, whence) {
            Ok(found) => Ok(Some(found.cast_unsigned().min(end))),
            // No data after `at`: the rest is a hole.
            Err(nix::errno::Errno::ENXIO) => Ok(None),
            Err(errno) => Err(errno.into()),
        }
    };
    let mut found = Vec::new();
    let mut at = start;
    while at < end {
        let data = seek(at, Whence::SeekData)?.unwrap_or(end);
        if data > at {
            found.push((at, data - at, false));
        }
        if data >= end {
            break;
        }
        let hole = seek(data, Whence::SeekHole)?.unwrap_or(end);
        found.push((data, hole - data, true));
        at = hole;
    }
    Ok(found)
}

/// vol-upload from a file the client passed open: `length` bytes of it (0: all) from its start,
/// written at `offset`, its holes punched when `sparse`. Returns (bytes copied, end offset).
pub fn upload_from(
    mut source: File,
    path: &Path,
    offset: u64,
    length: u64,
    sparse: bool,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> std::io::Result<u64> {
    let size = size_of(&mut source)?;
    let count = match length {
        0 => size,
        length => length.min(size),
    };
    let mut writer = UploadWriter::open(path, offset)?;
    progress(0, count);
    for (start, run, data) in extents(&source, 0, count, sparse)? {
        if data {
            writer.copy_from(&source, start, run, &mut |done| {
                progress(start + done, count)
            })?;
        } else {
            writer.hole(run)?;
            progress(start + run, count);
        }
    }
    writer.finish()?;
    Ok(count)
}

/// vol-download into a file the client passed open (empty): the volume's bytes from `offset`,
/// `length` of them (0: to the end), holes left as holes when `sparse`. Returns the byte count.
pub fn download_into(
    path: &Path,
    offset: u64,
    length: u64,
    sparse: bool,
    target: File,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> std::io::Result<u64> {
    let (reader, total) = DownloadReader::open(path, offset, length, sparse)?;
    let volume = reader.file;
    let regular_target = target.metadata()?.is_file();
    let skip_zeroes = sparse && regular_target;
    progress(0, total);
    for (start, run, data) in extents(&volume, offset, offset + total, sparse)? {
        let at = start - offset;
        if data || !regular_target {
            copy_range(&volume, start, &target, at, run, skip_zeroes, &mut |done| {
                progress(at + done, total)
            })?;
        } else {
            progress(at + run, total);
        }
    }
    if regular_target {
        // Trailing holes were never written: the file must still reach its full length.
        target.set_len(total)?;
    }
    Ok(total)
}

/// One piece of a download.
#[derive(Debug, PartialEq)]
pub enum Piece {
    Data(Vec<u8>),
    Hole(u64),
}

/// Reads a volume from `offset` for `length` bytes, as data and (when sparse) holes.
pub struct DownloadReader {
    file: File,
    left: u64,
    sparse: bool,
}

impl DownloadReader {
    /// Opens `path`; `length` 0 reads to the end. Returns the reader and the bytes it will give.
    pub fn open(
        path: &Path,
        offset: u64,
        length: u64,
        sparse: bool,
    ) -> std::io::Result<(DownloadReader, u64)> {
        let mut file = File::open(path)?;
        let size = size_of(&mut file)?;
        if offset > size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("offset {offset} is past the end of the volume ({size} bytes)"),
            ));
        }
        let available = size - offset;
        let left = if length == 0 {
            available
        } else {
            length.min(available)
        };
        file.seek(SeekFrom::Start(offset))?;
        Ok((DownloadReader { file, left, sparse }, left))
    }

    /// The next piece, or None at the end.
    pub fn next_piece(&mut self) -> std::io::Result<Option<Piece>> {
        if self.left == 0 {
            return Ok(None);
        }
        let want = chunk_len(self.left);
        let mut buffer = vec![0u8; want];
        self.file.read_exact(&mut buffer)?;
        self.left -= want as u64;
        if self.sparse && buffer.iter().all(|&b| b == 0) {
            return Ok(Some(Piece::Hole(want as u64)));
        }
        Ok(Some(Piece::Data(buffer)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_have_their_pass_counts() {
        assert_eq!(pass_count(Algorithm::Zero), 1);
        assert_eq!(pass_count(Algorithm::Nnsa), 4);
        assert_eq!(pass_count(Algorithm::Dod), 4);
        assert_eq!(pass_count(Algorithm::Bsi), 9);
        assert_eq!(pass_count(Algorithm::Gutmann), 35);
        assert_eq!(pass_count(Algorithm::Schneier), 7);
        assert_eq!(pass_count(Algorithm::Pfitzner33), 33);
    }

    #[test]
    fn wipes_overwrite_every_byte_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        std::fs::write(&path, vec![0x5a; 3 * CHUNK_BYTES + 17]).unwrap();
        wipe(&path, Algorithm::Zero, |_, _| {}).unwrap();
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));
        let mut last = (0, 0);
        wipe(&path, Algorithm::Dod, |done, total| last = (done, total)).unwrap();
        assert_eq!(last.0, last.1);
        let data = std::fs::read(&path).unwrap();
        assert!(data.iter().any(|&b| b != 0) && data.iter().any(|&b| b != 0xff));
        wipe(&path, Algorithm::Bsi, |_, _| {}).unwrap();
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0x7f));
    }

    #[test]
    fn uploads_and_downloads_keep_bytes_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        std::fs::write(&path, b"").unwrap();
        let mut writer = UploadWriter::open(&path, 0).unwrap();
        writer.write(b"head").unwrap();
        writer.hole(2 * CHUNK_BYTES as u64).unwrap();
        writer.write(b"tail").unwrap();
        assert_eq!(writer.finish().unwrap(), 2 * CHUNK_BYTES as u64 + 8);
        let (mut reader, total) = DownloadReader::open(&path, 4, 0, true).unwrap();
        assert_eq!(total, 2 * CHUNK_BYTES as u64 + 4);
        let mut pieces = Vec::new();
        while let Some(piece) = reader.next_piece().unwrap() {
            pieces.push(piece);
        }
        assert_eq!(pieces[0], Piece::Hole(CHUNK_BYTES as u64));
        assert!(matches!(pieces.last(), Some(Piece::Data(d)) if d.ends_with(b"tail")));
    }

    #[test]
    fn passed_files_are_copied_with_their_holes_both_ways() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        let hole_len = 8 * CHUNK_BYTES;
        let hole = hole_len as u64;
        {
            let file = File::create(&source).unwrap();
            file.write_all_at(&[1u8; 4096], 0).unwrap();
            file.write_all_at(&[2u8; 4096], 4096 + hole).unwrap();
        }
        let volume = dir.path().join("volume");
        std::fs::write(&volume, vec![9u8; 3 * CHUNK_BYTES]).unwrap();
        let mut seen = Vec::new();
        let copied = upload_from(
            File::open(&source).unwrap(),
            &volume,
            512,
            0,
            true,
            &mut |done, total| {
                seen.push((done, total));
                true
            },
        )
        .unwrap();
        let size = 2 * 4096 + hole;
        assert_eq!(copied, size);
        assert_eq!(seen.last(), Some(&(size, size)));
        let written = std::fs::read(&volume).unwrap();
        assert_eq!(written.len() as u64, 512 + size);
        assert!(written[..512].iter().all(|&b| b == 9), "before the offset");
        assert!(written[512..4608].iter().all(|&b| b == 1));
        assert!(
            written[4608..4608 + hole_len].iter().all(|&b| b == 0),
            "the hole reads as zeroes where the volume held nines"
        );
        assert!(written[4608 + hole_len..].iter().all(|&b| b == 2));

        let back = dir.path().join("back");
        let target = File::create(&back).unwrap();
        let total = download_into(&volume, 512, 0, true, target, &mut |_, _| true).unwrap();
        assert_eq!(total, size);
        assert_eq!(
            std::fs::read(&back).unwrap(),
            std::fs::read(&source).unwrap()
        );
        let blocks = std::fs::metadata(&back).unwrap().blocks() * 512;
        assert!(
            blocks < hole,
            "the download kept the hole ({blocks} bytes allocated)"
        );

        // A client that goes away stops the copy.
        let target = File::create(dir.path().join("stopped")).unwrap();
        let err =
            download_into(&volume, 0, 0, false, target, &mut |done, _| done == 0).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::Interrupted);
    }
}
