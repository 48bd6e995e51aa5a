//! File primitives of the store: checksummed atomic writes, checked reads,
//! directories created and removed durably, and byte counts of a tree.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{direct_io, fast_checksum, sliver_checksum, StoreError};

/// Bytes of the checksum after every file's content.
pub(super) const CHECKSUM_LEN: usize = 32;

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A file name no other write of this process uses.
pub(super) fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// Maps an I/O error on `path`: a full disk is `DiskFull`, anything else
/// `Io`.
pub(super) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| {
        if matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        ) {
            StoreError::DiskFull {
                path: path.to_path_buf(),
            }
        } else {
            StoreError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// Writes `content` and its checksum to a new file at `tmp`, fsynced.
pub(super) fn write_synced(
    tmp: &Path,
    content: &[u8],
    checksum: &[u8; 32],
) -> Result<(), StoreError> {
    let result = direct_io::create_synced(tmp, &[content, checksum]).map_err(io_error(tmp));
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

/// Writes `content` to a new file at `path` and fsyncs it, the way the
/// store writes every file (without the checksum): for benchmarks that
/// measure what the disk takes.
pub fn write_file_like_a_store(path: &Path, content: &[u8]) -> io::Result<()> {
    direct_io::create_synced(path, &[content])
}

/// Reads the whole file at `path` the way the store reads every file (past
/// the page cache when it is large), without checking anything: for
/// benchmarks that measure what the disk gives.
pub fn read_file_like_a_store(path: &Path) -> io::Result<bytes::Bytes> {
    direct_io::read_whole(path)
}

/// Renames `tmp` onto `path`; on failure `tmp` is removed. The caller
/// counts the file, then fsyncs the directory (a failed fsync leaves the
/// file in place, so it must be counted either way).
pub(super) fn rename_into_place(tmp: &Path, path: &Path) -> Result<(), StoreError> {
    fs::rename(tmp, path).map_err(|e| {
        let _ = fs::remove_file(tmp);
        io_error(path)(e)
    })
}

/// What a checked read found.
pub(super) enum Checked {
    /// The content, checksum verified and removed.
    Valid(bytes::Bytes),
    /// No such file.
    Missing,
    /// The checksum does not match (bitrot, a torn file).
    Corrupt,
    /// The read itself failed (EIO and the like).
    Failed(io::Error),
    /// The node could not read the file now, which says nothing of its
    /// bytes: out of descriptors or memory, refused, interrupted.
    NotNow(io::Error),
}

/// Whether a failed read is the node's state of the moment rather than
/// the file's (pure): out of file descriptors (EMFILE, ENFILE) or memory,
/// permission refused (a restore with the wrong owner), interrupted or
/// timed out. Such a file stays where it is; any other failure (EIO, a
/// directory where the file was) is the file's.
pub(super) fn is_passing_read_failure(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOMEM
                | libc::ENOBUFS
                | libc::EAGAIN
                | libc::EINTR
                | libc::EACCES
                | libc::EPERM
                | libc::ETIMEDOUT
        )
    ) || matches!(
        error.kind(),
        io::ErrorKind::OutOfMemory | io::ErrorKind::Interrupted | io::ErrorKind::TimedOut
    )
}

/// Reads a file and checks its checksum: the fast one when the file
/// carries one (format 4), else the plain hash of its content or, for a
/// sliver file, the derived one (tried first when `derived_first`, as a
/// store of format 3 writes them).
pub(super) fn read_checked(path: &Path, derived_first: bool) -> Checked {
    let bytes = match direct_io::read_whole(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Checked::Missing,
        Err(e) if is_passing_read_failure(&e) => return Checked::NotNow(e),
        Err(e) => return Checked::Failed(e),
    };
    let valid = bytes.len() >= CHECKSUM_LEN && {
        let (content, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if fast_checksum::is_fast(sum) {
            return checked(fast_checksum::of(content) == sum, bytes);
        }
        let plain = || blake3::hash(content).as_bytes() == sum;
        let derived = || {
            sliver_counter(path).is_some()
                && sliver_checksum::of_content(content).is_some_and(|d| d == sum)
        };
        // The likelier one first: the other is a second pass over the bytes.
        let (first, second): (&dyn Fn() -> bool, &dyn Fn() -> bool) = if derived_first {
            (&derived, &plain)
        } else {
            (&plain, &derived)
        };
        first() || second()
    };
    checked(valid, bytes)
}

/// A read file's content, or corrupt when its checksum did not hold.
fn checked(valid: bool, bytes: bytes::Bytes) -> Checked {
    if valid {
        Checked::Valid(bytes.slice(..bytes.len() - CHECKSUM_LEN))
    } else {
        Checked::Corrupt
    }
}

/// fsyncs a directory, so entries created, renamed or removed in it last.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Removes the file `path` if it is there, durably (its directory synced).
pub(super) fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// Creates `dir` and its missing parents below `root`, fsyncing each
/// parent so the new entries survive a crash.
pub(super) fn create_dirs_synced(dir: &Path, root: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if parent != root {
            create_dirs_synced(parent, root)?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io_error(dir)(e)),
    }
    // A directory whose entry may not be durable is taken back (while it
    // is still empty), so the next write creates it again and fsyncs its
    // parent instead of trusting it for being there.
    sync_dir(dir.parent().expect("below root")).inspect_err(|_| {
        let _ = fs::remove_dir(dir);
    })
}

/// Removes every entry of `dir` (which stays).
pub(super) fn empty_dir(dir: &Path) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(io_error(&path))?;
    }
    Ok(())
}

/// Bytes and sliver files (primary, secondary) below a directory.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct DirStats {
    pub bytes: u64,
    pub slivers: [u64; 2],
}

impl DirStats {
    pub fn add(&mut self, other: DirStats) {
        self.bytes += other.bytes;
        self.slivers[0] += other.slivers[0];
        self.slivers[1] += other.slivers[1];
    }
}

/// Which sliver counter a file counts in, by its extension.
pub(super) fn sliver_counter(path: &Path) -> Option<usize> {
    match path.extension()?.to_str()? {
        "primary" => Some(0),
        "secondary" => Some(1),
        _ => None,
    }
}

/// Counts bytes and sliver files below `dir` (nothing when it is missing).
pub(super) fn dir_stats(dir: &Path) -> Result<DirStats, StoreError> {
    let mut stats = DirStats::default();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(stats),
        Err(e) => return Err(io_error(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let meta = entry.metadata().map_err(io_error(&path))?;
        if meta.is_dir() {
            stats.add(dir_stats(&path)?);
        } else {
            stats.bytes += meta.len();
            if let Some(counter) = sliver_counter(&path) {
                stats.slivers[counter] += 1;
            }
        }
    }
    Ok(stats)
}

/// When a directory last gained a file: the newest change time of `dir`
/// and of the directories directly in it (a blob's shard directories, a
/// session's segment directories: each gains an entry with every file).
/// `None` when that cannot be told (the directory is gone, or reading it
/// failed): nothing is collected for being idle on a guess.
pub(super) fn last_change(dir: &Path) -> Option<std::time::SystemTime> {
    let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified());
    let mut newest = modified(dir).ok()?;
    for entry in fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        if entry.file_type().ok()?.is_dir() {
            newest = newest.max(modified(&entry.path()).ok()?);
        }
    }
    Some(newest)
}

/// The files directly in `dir` (none when it is missing).
pub(super) fn files_in(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

/// Size and bytes available (to unprivileged users) of the filesystem
/// holding `path`; `None` when it cannot be asked.
pub fn filesystem_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a properly sized out-struct.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let fragment = stat.f_frsize as u64;
    Some((
        stat.f_blocks as u64 * fragment,
        stat.f_bavail as u64 * fragment,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filesystem_of_a_store_has_a_size_and_room_within_it() {
        let dir = tempfile::tempdir().unwrap();
        let (size, available) = filesystem_space(dir.path()).unwrap();
        assert!(size > 0 && available <= size, "{size} {available}");
        assert!(filesystem_space(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn a_full_disk_is_said_as_such_with_the_file_it_refused() {
        let path = Path::new("/data/tmp/7-1");
        for code in [libc::ENOSPC, libc::EDQUOT] {
            let error = io_error(path)(io::Error::from_raw_os_error(code));
            assert!(matches!(error, StoreError::DiskFull { .. }), "{error:?}");
            assert_eq!(
                error.to_string(),
                "the disk is full (writing /data/tmp/7-1)"
            );
        }
        let error = io_error(path)(io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(error, StoreError::Io { .. }), "{error:?}");
    }

    #[test]
    fn only_a_failure_of_the_file_itself_counts_against_it() {
        let failure = |code| io::Error::from_raw_os_error(code);
        for passing in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOMEM,
            libc::EACCES,
            libc::EINTR,
        ] {
            assert!(is_passing_read_failure(&failure(passing)), "{passing}");
        }
        for the_files in [libc::EIO, libc::EISDIR, libc::EBADMSG, libc::EUCLEAN] {
            assert!(!is_passing_read_failure(&failure(the_files)), "{the_files}");
        }
    }

    #[test]
    fn a_checked_read_tells_valid_missing_corrupt_and_failed_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let tmp = dir.path().join("t");
        write_synced(&tmp, b"content", blake3::hash(b"content").as_bytes()).unwrap();
        rename_into_place(&tmp, &path).unwrap();
        for derived_first in [false, true] {
            assert!(
                matches!(read_checked(&path, derived_first), Checked::Valid(v) if v[..] == b"content"[..])
            );
            assert!(matches!(
                read_checked(&dir.path().join("none"), derived_first),
                Checked::Missing
            ));
            // Reading a directory fails with an error other than "not found".
            assert!(matches!(
                read_checked(dir.path(), derived_first),
                Checked::Failed(_)
            ));
        }
        fs::write(&path, b"contenu plus a fake checksum of the wrong size").unwrap();
        assert!(matches!(read_checked(&path, false), Checked::Corrupt));
    }
}
