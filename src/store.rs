//! A node's durable sliver store on its data directory (the PVC in
//! Kubernetes).
//!
//! Layout under the data directory:
//!
//! ```text
//! blobs/<blob id>/metadata                    serialized metadata
//! blobs/<blob id>/<shard>/<segment>.primary   serialized primary sliver
//! blobs/<blob id>/<shard>/<segment>.secondary serialized secondary sliver
//! tmp/                                        writes in flight
//! ```
//!
//! Every file is its content followed by the 32-byte BLAKE3 hash of the
//! content, checked on every read: a file that fails is moved aside and
//! reported as corrupt, never served. Writes go to tmp/, are fsynced,
//! renamed into place and the directory fsynced, so a crash at any instant
//! leaves either the old file or the complete new one; tmp/ is emptied on
//! open. The store checks only integrity; whether a sliver belongs to its
//! blob is the node's business (it verifies before it stores).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use crate::codec::{BlobId, SliverKind};

const CHECKSUM_LEN: usize = 32;

/// Errors of the store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The write would exceed the configured capacity, or the disk is full.
    #[error("not enough space: {needed} bytes needed, {available} available")]
    Full {
        /// Bytes the write needs.
        needed: u64,
        /// Bytes left under the capacity (0 when the disk itself is full).
        available: u64,
    },
    /// A stored file failed its checksum; it was moved aside.
    #[error("stored {what} is corrupt (checksum mismatch); it was quarantined")]
    Corrupt {
        /// Which file.
        what: String,
    },
    /// Any other I/O failure.
    #[error("storage i/o error on {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| {
        if matches!(source.raw_os_error(), Some(28) | Some(122)) {
            // ENOSPC, EDQUOT
            StoreError::Full {
                needed: 0,
                available: 0,
            }
        } else {
            StoreError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// What a store holds of one blob: per shard, the segments with both slivers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlobHoldings {
    /// Whether the metadata is stored.
    pub metadata: bool,
    /// Shard -> segments for which both slivers are stored.
    pub shards: BTreeMap<u16, u32>,
}

/// The durable store of one node.
#[derive(Debug)]
pub struct SliverStore {
    root: PathBuf,
    capacity: Option<u64>,
    used: AtomicU64,
    /// Sliver files held, indexed by `kind_index`.
    slivers: [AtomicU64; 2],
}

fn kind_index(kind: SliverKind) -> usize {
    match kind {
        SliverKind::Primary => 0,
        SliverKind::Secondary => 1,
    }
}

fn kind_of_file(path: &Path) -> Option<SliverKind> {
    match path.extension()?.to_str()? {
        "primary" => Some(SliverKind::Primary),
        "secondary" => Some(SliverKind::Secondary),
        _ => None,
    }
}

/// Bytes and sliver files below a directory.
#[derive(Debug, Default, Clone, Copy)]
struct DirStats {
    bytes: u64,
    slivers: [u64; 2],
}

impl SliverStore {
    /// Opens (creating if needed) the store at `root`, empties its tmp/,
    /// and counts the bytes it holds. `capacity` caps those bytes.
    pub fn open(root: impl Into<PathBuf>, capacity: Option<u64>) -> Result<Self, StoreError> {
        let root = root.into();
        for dir in [
            root.join("blobs"),
            root.join("tmp"),
            root.join("quarantine"),
        ] {
            fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        }
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_error(&tmp))? {
            let path = entry.map_err(io_error(&tmp))?.path();
            fs::remove_file(&path).map_err(io_error(&path))?;
        }
        let stats = dir_stats(&root.join("blobs"))?;
        Ok(Self {
            root,
            capacity,
            used: AtomicU64::new(stats.bytes),
            slivers: stats.slivers.map(AtomicU64::new),
        })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes held in stored files (checksums included).
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Sliver files held of one kind.
    pub fn sliver_count(&self, kind: SliverKind) -> u64 {
        self.slivers[kind_index(kind)].load(Ordering::Relaxed)
    }

    fn forget(&self, stats: DirStats) {
        sub(&self.used, stats.bytes);
        for (counter, n) in self.slivers.iter().zip(stats.slivers) {
            sub(counter, n);
        }
    }

    /// The configured capacity, if any.
    pub fn capacity(&self) -> Option<u64> {
        self.capacity
    }

    fn blob_dir(&self, id: &BlobId) -> PathBuf {
        self.root.join("blobs").join(id.to_string())
    }

    fn sliver_path(&self, id: &BlobId, segment: u32, shard: u16, kind: SliverKind) -> PathBuf {
        self.blob_dir(id)
            .join(shard.to_string())
            .join(format!("{segment}.{}", kind.name()))
    }

    /// Stores the serialized metadata of a blob (replacing an identical copy).
    pub fn put_metadata(&self, id: &BlobId, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.blob_dir(id).join("metadata");
        self.write_atomic(&path, bytes)
    }

    /// The serialized metadata of a blob, if stored.
    pub fn metadata(&self, id: &BlobId) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_checked(&self.blob_dir(id).join("metadata"), || {
            format!("metadata of {id}")
        })
    }

    /// Stores a serialized sliver of `shard` for segment `segment`.
    pub fn put_sliver(
        &self,
        id: &BlobId,
        segment: u32,
        shard: u16,
        kind: SliverKind,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.write_atomic(&self.sliver_path(id, segment, shard, kind), bytes)
    }

    /// A serialized sliver, if stored; checked against its checksum.
    pub fn sliver(
        &self,
        id: &BlobId,
        segment: u32,
        shard: u16,
        kind: SliverKind,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_checked(&self.sliver_path(id, segment, shard, kind), || {
            format!("{kind} sliver of {id} segment {segment} shard {shard}")
        })
    }

    /// Whether a sliver file exists (without reading it).
    pub fn has_sliver(&self, id: &BlobId, segment: u32, shard: u16, kind: SliverKind) -> bool {
        self.sliver_path(id, segment, shard, kind).is_file()
    }

    /// Removes a blob and everything stored of it; false if there was nothing.
    pub fn delete_blob(&self, id: &BlobId) -> Result<bool, StoreError> {
        let dir = self.blob_dir(id);
        if !dir.exists() {
            return Ok(false);
        }
        let stats = dir_stats(&dir)?;
        fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
        sync_dir(&self.root.join("blobs"))?;
        self.forget(stats);
        Ok(true)
    }

    /// Removes the slivers of one shard of a blob (when the shard moves away).
    pub fn delete_shard(&self, id: &BlobId, shard: u16) -> Result<(), StoreError> {
        let dir = self.blob_dir(id).join(shard.to_string());
        if dir.exists() {
            let stats = dir_stats(&dir)?;
            fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
            self.forget(stats);
        }
        Ok(())
    }

    /// Blob ids stored, in order, after `after`, at most `limit`.
    pub fn list_blobs(
        &self,
        after: Option<&BlobId>,
        limit: usize,
    ) -> Result<Vec<BlobId>, StoreError> {
        let dir = self.root.join("blobs");
        let mut ids: Vec<BlobId> = fs::read_dir(&dir)
            .map_err(io_error(&dir))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|id| after.is_none_or(|a| id > a))
            .collect();
        ids.sort();
        ids.truncate(limit);
        Ok(ids)
    }

    /// What is stored of one blob (by file presence; reads check content).
    pub fn holdings(&self, id: &BlobId) -> Result<BlobHoldings, StoreError> {
        let dir = self.blob_dir(id);
        let mut holdings = BlobHoldings {
            metadata: dir.join("metadata").is_file(),
            shards: BTreeMap::new(),
        };
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(holdings);
        };
        for entry in entries.flatten() {
            let Some(shard) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u16>().ok())
            else {
                continue;
            };
            let files: Vec<String> = fs::read_dir(entry.path())
                .map_err(io_error(&entry.path()))?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
            let complete = files
                .iter()
                .filter_map(|f| f.strip_suffix(".primary"))
                .filter(|segment| files.contains(&format!("{segment}.secondary")))
                .count();
            holdings.shards.insert(shard, complete as u32);
        }
        Ok(holdings)
    }

    /// Reads every stored file and checks its checksum; files that fail are
    /// quarantined (and so reported missing). Returns (files checked, corrupt).
    pub fn scrub(&self) -> Result<(u64, u64), StoreError> {
        let (mut checked, mut corrupt) = (0, 0);
        for id in self.list_blobs(None, usize::MAX)? {
            let dir = self.blob_dir(&id);
            let mut files = vec![dir.join("metadata")];
            if let Ok(shards) = fs::read_dir(&dir) {
                for shard in shards.flatten().filter(|e| e.path().is_dir()) {
                    if let Ok(entries) = fs::read_dir(shard.path()) {
                        files.extend(entries.flatten().map(|e| e.path()));
                    }
                }
            }
            for file in files {
                match self.read_checked(&file, || file.display().to_string()) {
                    Ok(Some(_)) => checked += 1,
                    Ok(None) => {}
                    Err(StoreError::Corrupt { .. }) => {
                        checked += 1;
                        corrupt += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok((checked, corrupt))
    }

    fn write_atomic(&self, path: &Path, content: &[u8]) -> Result<(), StoreError> {
        let size = (content.len() + CHECKSUM_LEN) as u64;
        let existing = fs::metadata(path).ok();
        let existed = existing.is_some();
        let previous = existing.map_or(0, |m| m.len());
        if let Some(capacity) = self.capacity {
            let used = self.used_bytes().saturating_sub(previous);
            if used + size > capacity {
                return Err(StoreError::Full {
                    needed: size,
                    available: capacity.saturating_sub(used),
                });
            }
        }
        let parent = path.parent().expect("store paths have a parent");
        create_dirs_synced(parent, &self.root)?;
        let tmp = self.root.join("tmp").join(format!(
            "{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
            file.write_all(content).map_err(io_error(&tmp))?;
            file.write_all(blake3::hash(content).as_bytes())
                .map_err(io_error(&tmp))?;
            file.sync_all().map_err(io_error(&tmp))?;
            fs::rename(&tmp, path).map_err(io_error(path))?;
            sync_dir(parent)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
            return result;
        }
        self.used.fetch_add(size, Ordering::Relaxed);
        sub(&self.used, previous);
        if let (Some(kind), false) = (kind_of_file(path), existed) {
            self.slivers[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn read_checked(
        &self,
        path: &Path,
        what: impl FnOnce() -> String,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(path)(e)),
        };
        let valid = bytes.len() >= CHECKSUM_LEN && {
            let (content, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
            blake3::hash(content).as_bytes() == sum
        };
        if !valid {
            self.quarantine(path);
            return Err(StoreError::Corrupt { what: what() });
        }
        bytes.truncate(bytes.len() - CHECKSUM_LEN);
        Ok(Some(bytes))
    }

    fn quarantine(&self, path: &Path) {
        let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let target = self.root.join("quarantine").join(format!(
            "{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        if fs::rename(path, &target).is_ok() {
            let mut stats = DirStats {
                bytes: size,
                ..DirStats::default()
            };
            if let Some(kind) = kind_of_file(path) {
                stats.slivers[kind_index(kind)] = 1;
            }
            self.forget(stats);
        }
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Creates `dir` and its missing parents below `root`, fsyncing each
/// parent so the new entries survive a crash.
fn create_dirs_synced(dir: &Path, root: &Path) -> Result<(), StoreError> {
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
    sync_dir(dir.parent().expect("below root"))
}

fn sub(counter: &AtomicU64, amount: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(amount))
    });
}

fn dir_stats(dir: &Path) -> Result<DirStats, StoreError> {
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
            let inner = dir_stats(&path)?;
            stats.bytes += inner.bytes;
            stats.slivers[0] += inner.slivers[0];
            stats.slivers[1] += inner.slivers[1];
        } else {
            stats.bytes += meta.len();
            if let Some(kind) = kind_of_file(&path) {
                stats.slivers[kind_index(kind)] += 1;
            }
        }
    }
    Ok(stats)
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

    #[test]
    fn the_filesystem_of_a_store_has_a_size_and_room_within_it() {
        let dir = tempfile::tempdir().unwrap();
        let (size, available) = filesystem_space(dir.path()).unwrap();
        assert!(size > 0 && available <= size, "{size} {available}");
        assert!(filesystem_space(&dir.path().join("missing")).is_none());
    }
    use super::*;

    fn id(seed: u8) -> BlobId {
        BlobId(*blake3::hash(&[seed]).as_bytes())
    }

    #[test]
    fn what_is_written_reads_back_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = SliverStore::open(dir.path(), None).unwrap();
        store.put_metadata(&id(1), b"meta").unwrap();
        store
            .put_sliver(&id(1), 0, 3, SliverKind::Primary, b"primary")
            .unwrap();
        store
            .put_sliver(&id(1), 0, 3, SliverKind::Secondary, b"secondary")
            .unwrap();
        store
            .put_sliver(&id(1), 1, 3, SliverKind::Primary, b"p1")
            .unwrap();
        let used = store.used_bytes();
        assert_eq!(used, (4 + 7 + 9 + 2 + 4 * 32) as u64);
        drop(store);
        let store = SliverStore::open(dir.path(), None).unwrap();
        assert_eq!(store.used_bytes(), used);
        assert_eq!(store.sliver_count(SliverKind::Primary), 2);
        assert_eq!(store.sliver_count(SliverKind::Secondary), 1);
        assert_eq!(store.metadata(&id(1)).unwrap().unwrap(), b"meta");
        assert_eq!(
            store
                .sliver(&id(1), 0, 3, SliverKind::Secondary)
                .unwrap()
                .unwrap(),
            b"secondary"
        );
        assert_eq!(
            store.sliver(&id(1), 2, 3, SliverKind::Primary).unwrap(),
            None
        );
        let holdings = store.holdings(&id(1)).unwrap();
        assert!(holdings.metadata);
        assert_eq!(holdings.shards, BTreeMap::from([(3, 1)]));
        assert_eq!(store.list_blobs(None, 10).unwrap(), vec![id(1)]);
    }

    #[test]
    fn a_flipped_bit_on_disk_is_caught_and_the_file_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let store = SliverStore::open(dir.path(), None).unwrap();
        store
            .put_sliver(&id(2), 0, 0, SliverKind::Primary, b"some sliver bytes")
            .unwrap();
        let path = store.sliver_path(&id(2), 0, 0, SliverKind::Primary);
        let mut bytes = fs::read(&path).unwrap();
        bytes[3] ^= 0x10;
        fs::write(&path, bytes).unwrap();
        let err = store.sliver(&id(2), 0, 0, SliverKind::Primary).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(!path.exists(), "the corrupt file is moved aside");
        assert_eq!(
            (store.sliver_count(SliverKind::Primary), store.used_bytes()),
            (0, 0)
        );
        assert_eq!(
            store.sliver(&id(2), 0, 0, SliverKind::Primary).unwrap(),
            None
        );
        // A truncated file is corrupt too.
        store
            .put_sliver(&id(2), 0, 0, SliverKind::Primary, b"x")
            .unwrap();
        fs::write(&path, b"short").unwrap();
        assert!(store.sliver(&id(2), 0, 0, SliverKind::Primary).is_err());
    }

    #[test]
    fn a_scrub_finds_and_quarantines_every_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SliverStore::open(dir.path(), None).unwrap();
        store.put_metadata(&id(6), b"meta").unwrap();
        for segment in 0..3 {
            store
                .put_sliver(
                    &id(6),
                    segment,
                    2,
                    SliverKind::Primary,
                    &[segment as u8; 50],
                )
                .unwrap();
        }
        assert_eq!(store.scrub().unwrap(), (4, 0));
        let path = store.sliver_path(&id(6), 1, 2, SliverKind::Primary);
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert_eq!(store.scrub().unwrap(), (4, 1));
        assert!(!store.has_sliver(&id(6), 1, 2, SliverKind::Primary));
        assert_eq!(store.scrub().unwrap(), (3, 0));
    }

    #[test]
    fn leftovers_of_interrupted_writes_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = SliverStore::open(dir.path(), None).unwrap();
        fs::write(dir.path().join("tmp").join("123-0"), b"half a sliver").unwrap();
        drop(store);
        SliverStore::open(dir.path(), None).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_write_past_capacity_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SliverStore::open(dir.path(), Some(200)).unwrap();
        store
            .put_sliver(&id(3), 0, 1, SliverKind::Primary, &[1; 100])
            .unwrap();
        let err = store
            .put_sliver(&id(3), 0, 1, SliverKind::Secondary, &[2; 100])
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Full {
                    needed: 132,
                    available: 68
                }
            ),
            "{err}"
        );
        assert!(!store.has_sliver(&id(3), 0, 1, SliverKind::Secondary));
        assert_eq!(store.used_bytes(), 132);
        assert_eq!(
            store
                .sliver(&id(3), 0, 1, SliverKind::Primary)
                .unwrap()
                .unwrap(),
            vec![1; 100]
        );
        // Replacing a file counts only the difference.
        store
            .put_sliver(&id(3), 0, 1, SliverKind::Primary, &[3; 150])
            .unwrap();
        assert_eq!(store.used_bytes(), 182);
    }

    #[test]
    fn deleting_a_blob_frees_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SliverStore::open(dir.path(), None).unwrap();
        store.put_metadata(&id(4), b"m").unwrap();
        store
            .put_sliver(&id(4), 0, 1, SliverKind::Primary, &[0; 10])
            .unwrap();
        store.put_metadata(&id(5), b"m").unwrap();
        assert!(store.delete_blob(&id(4)).unwrap());
        assert!(!store.delete_blob(&id(4)).unwrap());
        assert_eq!(store.used_bytes(), 33);
        assert_eq!(store.sliver_count(SliverKind::Primary), 0);
        assert_eq!(store.list_blobs(None, 10).unwrap(), vec![id(5)]);
    }

    #[test]
    fn blobs_are_listed_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let store = SliverStore::open(dir.path(), None).unwrap();
        let mut ids: Vec<BlobId> = (0..7).map(id).collect();
        for i in &ids {
            store.put_metadata(i, b"m").unwrap();
        }
        ids.sort();
        let first = store.list_blobs(None, 3).unwrap();
        assert_eq!(first, ids[..3]);
        let second = store.list_blobs(Some(&first[2]), 3).unwrap();
        assert_eq!(second, ids[3..6]);
        assert_eq!(store.list_blobs(Some(&ids[6]), 3).unwrap(), vec![]);
    }
}
