//! File I/O past the page cache (`O_DIRECT`).
//!
//! A node writes every byte of a PUT once and rarely reads it back soon;
//! sending it through the page cache costs a copy into freshly allocated
//! cache pages (on a virtual machine that returns free pages to its host,
//! faulting each page in again: more CPU than encoding the blob) and
//! evicts what readers use. Large files are therefore copied through a
//! small aligned buffer and written directly; the unaligned last bytes go
//! through the page cache, and the file is fsynced as before. Large files
//! are read directly too, into an aligned buffer the caller then owns. A
//! filesystem that refuses direct I/O (`EINVAL`) gets ordinary I/O.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use bytes::Bytes;

use super::aligned::{AlignedBuffer, ALIGN};

/// Bytes copied and written at a time.
const BUFFER_LEN: usize = 1 << 20;
/// Files shorter than this go through the page cache: a direct write of a
/// few blocks saves nothing and waits for the device, and small files
/// (metadata, markers) are read often.
pub(super) const DIRECT_MIN: usize = 256 << 10;
/// Idle write buffers kept for the next write.
const SPARE_BUFFERS: usize = 4;

/// Reads from `file` into `buffer` from byte `at` up to byte `room` (a
/// block boundary within it); the bytes read are initialized from then
/// on. (A plain `read` would need the buffer zeroed first: a pass over
/// every byte read.)
fn read_at(file: &File, buffer: &mut AlignedBuffer, at: usize, room: usize) -> io::Result<usize> {
    assert!(at <= room && room <= buffer.len());
    // SAFETY: writes at most `room - at` bytes into memory the buffer owns
    // past `at`; the kernel initializes what it reports as read.
    let read = unsafe {
        libc::read(
            file.as_raw_fd(),
            buffer.as_mut_ptr().add(at).cast(),
            room - at,
        )
    };
    usize::try_from(read).map_err(|_| io::Error::last_os_error())
}

static SPARE: Mutex<Vec<AlignedBuffer>> = Mutex::new(Vec::new());

/// A buffer from the spares, or a new one; back to the spares on drop.
struct Borrowed(Option<AlignedBuffer>);

impl Borrowed {
    fn take() -> Self {
        let spare = SPARE.lock().unwrap_or_else(|e| e.into_inner()).pop();
        Self(Some(
            spare.unwrap_or_else(|| AlignedBuffer::new(BUFFER_LEN)),
        ))
    }

    fn bytes(&mut self) -> &mut [u8] {
        self.0.as_mut().expect("held until drop").bytes()
    }
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        let mut spare = SPARE.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARE_BUFFERS {
            spare.extend(self.0.take());
        }
    }
}

/// Creates (or truncates) `path` holding `parts` back to back, fsynced;
/// written past the page cache when the content is large and the
/// filesystem allows it.
pub(super) fn create_synced(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut file = FileWriter::create(path, total)?;
    for part in parts {
        file.push(part)?;
    }
    file.finish()
}

/// A file being created: bytes pushed in order, written past the page
/// cache where it can, fsynced by [`FileWriter::finish`]. A caller can
/// push the bulk of a file while it still works out its last bytes.
pub(super) struct FileWriter {
    file: File,
    /// Whether the file is (still) open for direct I/O.
    direct: bool,
    /// Bytes not written yet (less than a buffer), when direct.
    buffer: Option<Borrowed>,
    filled: usize,
}

impl FileWriter {
    /// Creates (or truncates) `path` for about `len` bytes: large files
    /// go past the page cache where the filesystem allows it.
    pub(super) fn create(path: &Path, len: usize) -> io::Result<Self> {
        let direct = if len >= DIRECT_MIN {
            match open(path, true) {
                Ok(file) => Some(file),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        Ok(match direct {
            Some(file) => Self {
                file,
                direct: true,
                buffer: Some(Borrowed::take()),
                filled: 0,
            },
            None => Self {
                file: open(path, false)?,
                direct: false,
                buffer: None,
                filled: 0,
            },
        })
    }

    /// Appends `bytes`. Whole blocks that start on a block boundary in
    /// memory, while nothing is buffered, are written from where they are;
    /// the rest is copied through the aligned buffer.
    pub(super) fn push(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let Some(buffer) = self.buffer.as_mut().filter(|_| self.direct) else {
                return self.file.write_all(bytes);
            };
            if self.filled == 0
                && bytes.len() >= ALIGN
                && (bytes.as_ptr() as usize).is_multiple_of(ALIGN)
            {
                let whole = bytes.len() / ALIGN * ALIGN;
                write_blocks(&mut self.file, &bytes[..whole], &mut self.direct)?;
                bytes = &bytes[whole..];
                continue;
            }
            let buffer = buffer.bytes();
            let take = bytes.len().min(BUFFER_LEN - self.filled);
            buffer[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == BUFFER_LEN {
                write_blocks(&mut self.file, buffer, &mut self.direct)?;
                self.filled = 0;
            }
        }
        Ok(())
    }

    /// Writes what is buffered (whole blocks directly, the last partial
    /// block through the page cache) and fsyncs the file.
    pub(super) fn finish(mut self) -> io::Result<()> {
        if let Some(mut buffer) = self.buffer.take() {
            let buffer = buffer.bytes();
            let filled = std::mem::take(&mut self.filled);
            let whole_blocks = filled / ALIGN * ALIGN;
            write_blocks(&mut self.file, &buffer[..whole_blocks], &mut self.direct)?;
            if whole_blocks < filled {
                if self.direct {
                    set_direct(&self.file, false)?;
                }
                self.file.write_all(&buffer[whole_blocks..filled])?;
            }
        }
        self.file.sync_all()
    }
}

fn open(path: &Path, direct: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(path)
}

/// Reads the whole file at `path`; past the page cache when it is large
/// and the filesystem allows it.
pub(super) fn read_whole(path: &Path) -> io::Result<Bytes> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len() as usize;
    if len < DIRECT_MIN || set_direct(&file, true).is_err() {
        let mut content = Vec::with_capacity(len);
        file.read_to_end(&mut content)?;
        return Ok(Bytes::from(content));
    }
    // A block more than the length, so a file that grew is noticed (a
    // spare buffer may be larger).
    let room = (len + 1).next_multiple_of(ALIGN);
    let mut buffer = super::aligned::spare_or_fresh(room);
    let mut direct = true;
    let mut filled = 0;
    while filled < room {
        match read_at(&file, &mut buffer, filled, room) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                set_direct(&file, false)?;
                direct = false;
            }
            Err(e) => return Err(e),
        }
    }
    if filled == room {
        return Err(io::Error::other("the file grew while it was read"));
    }
    // SAFETY: the first `filled` bytes were read into the buffer.
    Ok(unsafe { super::aligned::pooled_bytes(buffer, filled) })
}

/// Writes `bytes` at the file's position; a direct write the kernel
/// refuses (`EINVAL`: a filesystem or device with other alignment rules,
/// or a short write leaving the position unaligned) turns direct I/O off
/// for the rest of the file.
fn write_blocks(file: &mut File, bytes: &[u8], direct: &mut bool) -> io::Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        match file.write(&bytes[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if *direct && e.raw_os_error() == Some(libc::EINVAL) => {
                set_direct(file, false)?;
                *direct = false;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this File owns, with integer flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn a_file_written_directly_holds_exactly_its_parts_at_every_length_around_blocks_and_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let lengths = [
            0,
            1,
            ALIGN - 1,
            DIRECT_MIN - 1,
            DIRECT_MIN,
            DIRECT_MIN + 33,
            BUFFER_LEN - 1,
            BUFFER_LEN,
            BUFFER_LEN + ALIGN,
            3 * BUFFER_LEN + 4095,
        ];
        for (i, len) in lengths.into_iter().enumerate() {
            let path = dir.path().join(format!("f{i}"));
            // Parts of odd sizes, so they straddle blocks and buffers.
            let content = pattern(len, i as u8);
            let (head, tail) = content.split_at(len / 3);
            let checksum = [7u8; 32];
            create_synced(&path, &[head, tail, &checksum]).unwrap();
            let read = std::fs::read(&path).unwrap();
            assert_eq!(read.len(), len + 32, "length {len}");
            assert_eq!(&read[..len], &content[..], "content of length {len}");
            assert_eq!(read[len..], checksum, "checksum after length {len}");
        }
    }

    #[test]
    fn parts_that_start_on_a_block_boundary_are_written_from_where_they_are_exactly() {
        let dir = tempfile::tempdir().unwrap();
        for (i, len) in [
            DIRECT_MIN,
            DIRECT_MIN + 1,
            BUFFER_LEN + 5,
            3 * BUFFER_LEN + ALIGN,
        ]
        .into_iter()
        .enumerate()
        {
            let content = pattern(len, i as u8);
            let mut aligned = super::super::aligned::BlockParts::new(&[len / 2, len - len / 2]);
            aligned.push(&content).unwrap();
            let parts = aligned.freeze().unwrap();
            assert!(parts
                .iter()
                .all(|p| (p.as_ptr() as usize).is_multiple_of(ALIGN)));
            // Aligned, unaligned after a partial block, aligned again.
            let path = dir.path().join(format!("f{i}"));
            create_synced(&path, &[&parts[0], b"x", &parts[1], &parts[0][..5]]).unwrap();
            let expected = [&parts[0][..], b"x", &parts[1], &parts[0][..5]].concat();
            assert_eq!(std::fs::read(&path).unwrap(), expected, "length {len}");
            let path = dir.path().join(format!("g{i}"));
            create_synced(&path, &[&parts[0], &parts[1], b"checksum"]).unwrap();
            let expected = [&content[..], b"checksum"].concat();
            assert_eq!(std::fs::read(&path).unwrap(), expected, "length {len}");
        }
    }

    #[test]
    fn a_rewrite_replaces_a_longer_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        create_synced(&path, &[&pattern(3 * BUFFER_LEN, 1)]).unwrap();
        let shorter = pattern(DIRECT_MIN + 5, 2);
        create_synced(&path, &[&shorter]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), shorter);
    }

    #[test]
    fn a_large_file_is_written_past_the_page_cache_where_the_filesystem_allows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let len = 8 * BUFFER_LEN;
        create_synced(&path, &[&pattern(len, 3)]).unwrap();
        assert!(
            cached_pages(&path) < len / 4096 / 8,
            "most of a directly written file is not in the page cache"
        );
    }

    #[test]
    fn a_direct_write_the_kernel_refuses_goes_on_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = open(&path, true).unwrap();
        let mut buffer = Borrowed::take();
        let content = pattern(2 * ALIGN + 1, 4);
        buffer.bytes()[..content.len()].copy_from_slice(&content);
        let mut direct = true;
        // A length that is no multiple of any block size: EINVAL for O_DIRECT.
        write_blocks(&mut file, &buffer.bytes()[..content.len()], &mut direct).unwrap();
        assert!(!direct, "the refused write turned direct I/O off");
        file.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), content);
    }

    #[test]
    fn a_file_read_whole_is_exactly_its_bytes_short_or_long() {
        let dir = tempfile::tempdir().unwrap();
        for (i, len) in [
            0,
            5,
            DIRECT_MIN - 1,
            DIRECT_MIN,
            3 * BUFFER_LEN + 77,
            4 * BUFFER_LEN,
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.path().join(format!("r{i}"));
            let content = pattern(len, 9);
            create_synced(&path, &[&content]).unwrap();
            assert_eq!(read_whole(&path).unwrap(), content, "length {len}");
        }
        assert_eq!(
            read_whole(&dir.path().join("missing")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn a_read_reuses_the_buffer_of_an_earlier_one_and_returns_only_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let (long, short) = (dir.path().join("long"), dir.path().join("short"));
        create_synced(&long, &[&pattern(4 * BUFFER_LEN, 1)]).unwrap();
        let short_content = pattern(2 * BUFFER_LEN + 5, 2);
        create_synced(&short, &[&short_content]).unwrap();
        let first = read_whole(&long).unwrap();
        let first_start = first.as_ptr();
        drop(first);
        assert!(
            super::super::aligned::spare_bytes() > 4 * BUFFER_LEN,
            "the buffer went back to the spares"
        );
        let second = read_whole(&short).unwrap();
        assert_eq!(second.as_ptr(), first_start, "the spare buffer was reused");
        assert_eq!(second, short_content, "nothing of the longer file shows");
        let held = read_whole(&long).unwrap();
        assert_ne!(
            held.as_ptr(),
            second.as_ptr(),
            "a buffer in use is not lent"
        );
    }

    #[test]
    fn a_large_file_is_read_past_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let len = 8 * BUFFER_LEN;
        create_synced(&path, &[&pattern(len, 5)]).unwrap();
        assert_eq!(read_whole(&path).unwrap().len(), len);
        assert!(
            cached_pages(&path) < len / 4096 / 8,
            "reading a large file leaves it out of the page cache"
        );
    }

    /// Pages of `path` in the page cache (mincore over a mapping).
    fn cached_pages(path: &Path) -> usize {
        let file = File::open(path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        let page = 4096;
        let pages = len.div_ceil(page);
        let mut residency = vec![0u8; pages];
        // SAFETY: a read-only shared mapping of a file we hold open,
        // unmapped before return; mincore writes one byte per page.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            assert_eq!(libc::mincore(map, len, residency.as_mut_ptr()), 0);
            libc::munmap(map, len);
        }
        residency.iter().filter(|&&r| r & 1 == 1).count()
    }
}
