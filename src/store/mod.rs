//! A node's durable sliver store on its data directory (the PVC in
//! Kubernetes).
//!
//! Layout under the data directory:
//!
//! ```text
//! format                                      the store format (2 to 4, see below)
//! format.upgrading                            present while a store of the layout before format 2 is upgraded
//! blobs/<blob id>/metadata                    serialized metadata
//! blobs/<blob id>/staged                      generation of the newest write staged here
//! blobs/<blob id>/commit                      generation of the newest commit here
//! blobs/<blob id>/<shard>/<segment>.primary   serialized primary sliver
//! blobs/<blob id>/<shard>/<segment>.secondary serialized secondary sliver
//! tombstones/<blob id>                        generation of the newest delete
//! uploads/<upload id>/<segment>-<root>/...    pairs shipped before their blob id was known (see `uploads`)
//! tmp/                                        writes in flight
//! trash/                                      blob directories being removed
//! quarantine/                                 files that failed their checksum or a read
//! ```
//!
//! Every file is its content followed by a 32-byte checksum, checked on
//! every read: a file that fails, or whose read fails (EIO), is moved to
//! quarantine/ and reported missing, never served. Which checksum depends
//! on the format of the store that wrote the file: format 2 the BLAKE3
//! hash of the content; format 3 the same, except for sliver files, whose
//! checksum is derived from the leaf hashes the node computed while
//! verifying the sliver (`sliver_checksum`); format 4 the XXH3-128 hash of
//! every file, tagged (`fast_checksum`), so a read costs a pass at memory
//! speed instead of a BLAKE3 pass. A new store is created at format 4; a
//! store of format 2 or 3 stays at its format, so nodes of earlier
//! versions (which know only their checksums) can still read it; reads
//! accept every checksum in every format. A store of a format newer than
//! this build knows is refused, not guessed at.
//! Writes go to tmp/, are fsynced, renamed into place and the directory
//! fsynced, so a crash at any instant leaves either the old file or the
//! complete new one (large files are written past the page cache, see
//! `direct_io`); tmp/ and trash/ are emptied on open. A blob's
//! directory is removed by renaming it into trash/ first: after a crash it
//! is either whole or gone; the data of a blob deleted here whose node
//! stopped before removing it is removed by housekeeping.
//!
//! The markers (`staged`, `commit`, tombstones) follow `blob_state`: a
//! tombstone removes the slivers unless a newer write claims them, and a
//! write older than a tombstone is refused. Mutations of one blob are
//! serialized by a per-blob lock ([`SliverStore::lock`]), so a delete and a
//! repair of the same blob never interleave. The store checks integrity
//! and markers only; whether a sliver belongs to its blob is the node's
//! business (it verifies before it stores).

mod aligned;
mod blob_index;
mod change_journal;
mod direct_io;
mod fast_checksum;
mod files;
mod housekeeping;
mod listing;
mod markers;
mod room;
mod sliver_checksum;
mod upload_reuse;
mod uploads;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use thiserror::Error;

use crate::blob_state::BlobState;
use crate::codec::{BlobId, SliverKind};
pub use aligned::{release_idle_spares, BlockParts, Overflow};
pub use change_journal::{Changes, Forgotten, JournalPosition};
pub use files::{filesystem_space, read_file_like_a_store, write_file_like_a_store};
use files::{Checked, DirStats};
pub use housekeeping::{
    scrub_deadline, scrub_wait, Housekeeping, IdleStaged, ScrubFinding, ScrubReport,
    LOST_MARKER_GRACE,
};
pub use markers::Markers;
pub use sliver_checksum::SymbolLeaves;
pub use uploads::CheckedPutError;

/// The layout version this build writes.
/// The format that added commit markers (slivers with plain checksums).
const MARKERS_FORMAT: u32 = 2;
/// The format whose sliver files carry checksums derived from their
/// symbols' leaf hashes (`sliver_checksum`).
const DERIVED_FORMAT: u32 = 3;
/// The newest format, which this build creates: every file carries a
/// fast checksum (`fast_checksum`).
const NEWEST_FORMAT: u32 = 4;
/// Present while a store of the layout before format 2 is being upgraded.
const UPGRADING_FILE: &str = "format.upgrading";
/// Per-blob locks, by the first byte of the id.
const LOCK_STRIPES: usize = 256;

/// Errors of the store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The write would exceed the configured capacity.
    #[error("not enough space: {needed} bytes needed, {available} available")]
    Full {
        /// Bytes the write needs.
        needed: u64,
        /// Bytes left under the capacity.
        available: u64,
    },
    /// The filesystem refused a write for want of space (or quota) while
    /// the configured capacity still had room.
    #[error("the disk is full (writing {})", path.display())]
    DiskFull {
        /// The file being written.
        path: PathBuf,
    },
    /// A stored file failed its checksum; it was moved aside.
    #[error("stored {what} is corrupt (checksum mismatch); it was quarantined")]
    Corrupt {
        /// Which file.
        what: String,
    },
    /// Reading a stored file failed (EIO and the like); it was moved aside.
    #[error("stored {what} could not be read ({source}); it was quarantined")]
    Unreadable {
        /// Which file.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A stored file could not be read now for a reason that is not the
    /// file's (out of file descriptors or memory, permission refused); it
    /// stays where it is, and a later read may succeed.
    #[error("stored {what} cannot be read now ({source}); it was left in place")]
    NotNow {
        /// Which file.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The blob was deleted at a generation at least as new as the write.
    #[error("the blob was deleted at generation {tombstone}; this write is older")]
    Deleted {
        /// The tombstone's generation.
        tombstone: u64,
    },
    /// A sliver for a blob no write claims here (never staged, or deleted).
    #[error("no write of this blob is staged or committed here")]
    NotStaged,
    /// The data directory is of a store format this build does not know.
    #[error(
        "the data directory is of store format {found}, written by a newer redstuff; \
         this build knows formats up to {newest}: run that version or a newer one"
    )]
    NewerFormat {
        /// The format the directory declares.
        found: u32,
        /// The newest this build knows.
        newest: u32,
    },
    /// The data directory's format file says no format this build knows
    /// of, while blobs are stored.
    #[error(
        "the data directory's format file {path} says {says}; the store's format \
         cannot be told, so it is not opened (restore the file with the format the \
         node last wrote, or move the directory aside for the node to be rebuilt)"
    )]
    UnknownFormat {
        /// The format file.
        path: PathBuf,
        /// What it says.
        says: String,
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

/// What a store holds of one blob: per shard, the segments with both slivers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlobHoldings {
    /// Whether the metadata is stored.
    pub metadata: bool,
    /// Shard -> segments for which both slivers are stored.
    pub shards: BTreeMap<u16, u32>,
}

/// What a tombstone did here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TombstoneOutcome {
    /// Whether slivers or metadata were removed.
    pub removed_data: bool,
    /// The markers afterwards.
    pub state: BlobState,
}

/// The durable store of one node.
#[derive(Debug)]
pub struct SliverStore {
    root: PathBuf,
    /// Bytes held and reserved under the capacity.
    room: room::Room,
    /// Sliver files held: primary, secondary.
    slivers: [AtomicU64; 2],
    locks: Vec<Mutex<()>>,
    /// Per-upload-session locks, by the first byte of the id: a session's
    /// files change (filed, reused, touched, adopted, removed) under its
    /// lock, so the bytes counted stay true. Taken after a blob's lock,
    /// never before.
    session_locks: Vec<Mutex<()>>,
    /// The checksums the files it writes carry (by its format).
    checksums: Checksums,
    /// Blobs held, for listing.
    index: blob_index::BlobIndex,
    changes: change_journal::ChangeJournal,
}

/// The checksums a store writes, by its format (reads accept them all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checksums {
    /// Format 2: the BLAKE3 hash of every file.
    Plain,
    /// Format 3: sliver files derived from their symbols' leaf hashes,
    /// other files plain.
    DerivedForSlivers,
    /// Format 4: the XXH3-128 hash of every file, tagged.
    Fast,
}

impl Checksums {
    fn of_format(format: u32) -> Self {
        match format {
            ..DERIVED_FORMAT => Self::Plain,
            DERIVED_FORMAT => Self::DerivedForSlivers,
            _ => Self::Fast,
        }
    }
}

/// A serialized sliver to store, with the leaf hashes of its symbols when
/// the caller has them (from verifying it); without them a store of
/// format 3 computes them.
#[derive(Debug, Clone, Copy)]
pub struct SliverFile<'a> {
    /// The serialized sliver.
    pub bytes: &'a [u8],
    /// The leaf hashes of its symbols.
    pub leaves: Option<SymbolLeaves<'a>>,
}

impl<'a> SliverFile<'a> {
    /// A sliver the caller verified, with the leaf hashes of its symbols.
    pub fn verified(bytes: &'a [u8], leaves: &'a [crate::codec::merkle::Hash]) -> Self {
        Self {
            bytes,
            leaves: Some(SymbolLeaves(leaves)),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> From<&'a T> for SliverFile<'a> {
    fn from(bytes: &'a T) -> Self {
        Self {
            bytes: bytes.as_ref(),
            leaves: None,
        }
    }
}

/// The lock of one blob, with the operations that need it held.
pub struct BlobLock<'a> {
    store: &'a SliverStore,
    id: BlobId,
    _guard: MutexGuard<'a, ()>,
}

fn kind_index(kind: SliverKind) -> usize {
    match kind {
        SliverKind::Primary => 0,
        SliverKind::Secondary => 1,
    }
}

fn sub(counter: &AtomicU64, amount: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(amount))
    });
}

impl SliverStore {
    /// Opens (creating if needed) the store at `root`: empties tmp/ and
    /// trash/, upgrades an older layout, and counts the bytes it holds.
    /// `capacity` caps those bytes.
    pub fn open(root: impl Into<PathBuf>, capacity: Option<u64>) -> Result<Self, StoreError> {
        let root = root.into();
        for dir in [
            "blobs",
            "tombstones",
            "uploads",
            "tmp",
            "trash",
            "quarantine",
        ] {
            let dir = root.join(dir);
            fs::create_dir_all(&dir).map_err(files::io_error(&dir))?;
        }
        files::empty_dir(&root.join("tmp"))?;
        files::empty_dir(&root.join("trash"))?;
        let mut stats = DirStats::default();
        for dir in ["blobs", "tombstones", "uploads", "quarantine"] {
            stats.add(files::dir_stats(&root.join(dir))?);
        }
        let mut store = Self {
            root,
            room: room::Room::new(capacity, stats.bytes),
            slivers: stats.slivers.map(AtomicU64::new),
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            session_locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            checksums: Checksums::Plain,
            index: Default::default(),
            changes: change_journal::ChangeJournal::new(
                crate::blob_state::now_nanos(),
                change_journal::DEFAULT_CAPACITY,
            ),
        };
        store.index = blob_index::BlobIndex::new(store.stored_ids()?);
        let format = store.settle_format()?;
        store.checksums = Checksums::of_format(format);
        Ok(store)
    }

    /// The store's format, after upgrading a directory of the layout
    /// before format 2 (its blobs marked committed) or marking a new one.
    /// A format file that cannot be read, or says no format, is refused
    /// while blobs are stored (the format decides how their checksums
    /// read, and a guess would quarantine them all); so is a missing one
    /// while blobs carry markers (a store of format 2 or later lost it).
    ///
    /// The upgrade is recorded (`format.upgrading`) before the first blob
    /// is marked, so one a crash cut short is taken up again on the next
    /// open instead of being taken for a store that lost its format file.
    fn settle_format(&self) -> Result<u32, StoreError> {
        let marker = self.root.join("format");
        let upgrading = self.root.join(UPGRADING_FILE);
        let declared = match fs::read_to_string(&marker) {
            Ok(text) => Some(text.trim().parse::<u32>().map_err(|_| text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(files::io_error(&marker)(e)),
        };
        match declared {
            Some(Ok(found)) if found > NEWEST_FORMAT => {
                return Err(StoreError::NewerFormat {
                    found,
                    newest: NEWEST_FORMAT,
                })
            }
            Some(Ok(format)) if format >= MARKERS_FORMAT => {
                // A crash after the upgrade wrote the format left its record.
                files::remove_if_present(&upgrading)?;
                return Ok(format);
            }
            _ => {}
        }
        let blobs = self.blob_dirs()?;
        let unknown = |says: String| StoreError::UnknownFormat {
            path: marker.clone(),
            says,
        };
        let format = match declared {
            _ if blobs.is_empty() => NEWEST_FORMAT,
            Some(Err(text)) => return Err(unknown(format!("{text:?}, no store format"))),
            Some(Ok(format)) => return Err(unknown(format!("{format}, no store format"))),
            None if upgrading.exists() => {
                tracing::info!(
                    "taking up the upgrade of the earlier store layout a restart cut short"
                );
                self.mark_earlier_blobs_committed(&blobs)?;
                MARKERS_FORMAT
            }
            None if self.any_marked(&blobs)? => {
                return Err(unknown(
                    "nothing (it is missing), yet its blobs have commit markers".into(),
                ))
            }
            None => {
                self.write_durably(&upgrading, b"")?;
                self.mark_earlier_blobs_committed(&blobs)?;
                MARKERS_FORMAT
            }
        };
        self.write_durably(&marker, format.to_string().as_bytes())?;
        files::remove_if_present(&upgrading)?;
        Ok(format)
    }

    /// Writes `content` to `path` whole or not at all, and durably (a file
    /// of the store's own, without a checksum trailer).
    fn write_durably(&self, path: &Path, content: &[u8]) -> Result<(), StoreError> {
        let tmp = self.tmp_path();
        let write = || -> io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            io::Write::write_all(&mut file, content)?;
            file.sync_all()
        };
        write().map_err(files::io_error(&tmp))?;
        fs::rename(&tmp, path).map_err(files::io_error(path))?;
        files::sync_dir(&self.root)
    }

    /// Whether any of `blobs` has a `commit` or `staged` marker (written
    /// only by stores of format 2 or later).
    fn any_marked(&self, blobs: &[BlobId]) -> Result<bool, StoreError> {
        Ok(blobs.iter().any(|id| {
            let dir = self.blob_dir(id);
            dir.join("commit").exists() || dir.join("staged").exists()
        }))
    }

    /// A store written before commit markers existed held only blobs its
    /// writers had answered for: they are committed at generation 1, so
    /// they stay visible (and are not collected as abandoned uploads).
    fn mark_earlier_blobs_committed(&self, blobs: &[BlobId]) -> Result<(), StoreError> {
        for id in blobs {
            let lock = self.lock(id);
            if lock.holdings()?.metadata && lock.state()?.commit.is_none() {
                lock.write_marker("commit", 1)?;
                tracing::info!(blob = %id, "blob of an earlier store layout marked committed");
            }
        }
        Ok(())
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes held in stored files (checksums and quarantined files included).
    pub fn used_bytes(&self) -> u64 {
        self.room.used()
    }

    /// Sliver files held of one kind.
    pub fn sliver_count(&self, kind: SliverKind) -> u64 {
        self.slivers[kind_index(kind)].load(Ordering::Relaxed)
    }

    /// The configured capacity, if any.
    pub fn capacity(&self) -> Option<u64> {
        self.room.capacity()
    }

    fn forget(&self, stats: DirStats) {
        self.room.sub(stats.bytes);
        for (counter, n) in self.slivers.iter().zip(stats.slivers) {
            sub(counter, n);
        }
    }

    fn blob_dir(&self, id: &BlobId) -> PathBuf {
        self.root.join("blobs").join(id.to_string())
    }

    fn tombstone_path(&self, id: &BlobId) -> PathBuf {
        self.root.join("tombstones").join(id.to_string())
    }

    fn sliver_path(&self, id: &BlobId, segment: u32, shard: u16, kind: SliverKind) -> PathBuf {
        self.blob_dir(id)
            .join(shard.to_string())
            .join(format!("{segment}.{}", kind.name()))
    }

    fn tmp_path(&self) -> PathBuf {
        self.root.join("tmp").join(files::unique_name(""))
    }

    /// Takes the lock of one blob; every change of its markers or files
    /// happens while it is held.
    pub fn lock(&self, id: &BlobId) -> BlobLock<'_> {
        let stripe = usize::from(id.as_bytes()[0]) % LOCK_STRIPES;
        BlobLock {
            store: self,
            id: *id,
            _guard: self.locks[stripe].lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Writes a file atomically (tmp, fsync, rename, fsync dir) and counts it.
    fn write_file(&self, path: &Path, content: &[u8]) -> Result<(), StoreError> {
        let tmp = self.stage_file(path, content.into())?;
        self.publish_file(tmp)
    }

    /// Writes a file that frees far more than it takes (a tombstone) even
    /// on a full store: a delete must still be able to make room.
    fn write_file_past_capacity(&self, path: &Path, content: &[u8]) -> Result<(), StoreError> {
        let size = (content.len() + files::CHECKSUM_LEN) as u64;
        let room = self.room.reserve_past_capacity(size);
        let tmp = self.stage_file_in(path, content.into(), size, room)?;
        self.publish_file(tmp)
    }

    /// The first half of a write: content fsynced in tmp/, room checked.
    fn stage_file(&self, path: &Path, file: SliverFile<'_>) -> Result<StagedFile<'_>, StoreError> {
        let size = (file.bytes.len() + files::CHECKSUM_LEN) as u64;
        let previous = fs::metadata(path).map_or(0, |m| m.len());
        let room = self.room.reserve(size, previous)?;
        self.stage_file_in(path, file, size, room)
    }

    /// Writes `file` of `size` bytes (with its checksum) to tmp/, fsynced,
    /// under the room already reserved.
    fn stage_file_in<'s>(
        &'s self,
        path: &Path,
        file: SliverFile<'_>,
        size: u64,
        room: room::Reservation<'s>,
    ) -> Result<StagedFile<'s>, StoreError> {
        let tmp = self.tmp_path();
        let checksum = self.checksum(path, file);
        files::write_synced(&tmp, file.bytes, &checksum)?;
        Ok(StagedFile {
            tmp,
            path: path.to_path_buf(),
            size,
            _room: room,
        })
    }

    /// The checksum a file at `path` gets: fast in a store of format 4;
    /// derived for a sliver file in a store of format 3 (from the caller's
    /// leaves when it has them); else the plain hash.
    fn checksum(&self, path: &Path, file: SliverFile<'_>) -> [u8; 32] {
        if self.checksums == Checksums::Fast {
            return fast_checksum::of(file.bytes);
        }
        let derived = (self.checksums == Checksums::DerivedForSlivers
            && files::sliver_counter(path).is_some())
        .then(|| sliver_checksum::of_sliver(file.bytes, file.leaves))
        .flatten();
        derived.unwrap_or_else(|| *blake3::hash(file.bytes).as_bytes())
    }

    /// The second half: renamed into place (directories created), counted,
    /// its directory fsynced (a file in place is counted even when that
    /// fsync fails and the write is answered with its error).
    fn publish_file(&self, file: StagedFile<'_>) -> Result<(), StoreError> {
        let existing = fs::metadata(&file.path).ok();
        let parent = file.path.parent().expect("store paths have a parent");
        if let Err(e) = files::create_dirs_synced(parent, &self.root) {
            let _ = fs::remove_file(&file.tmp);
            return Err(e);
        }
        let blob = self.blob_of(&file.path);
        if let Some(id) = blob {
            self.index.insert(id);
        }
        files::rename_into_place(&file.tmp, &file.path)?;
        if let Some(id) = blob {
            self.changes.record(id);
        }
        self.room.add(file.size);
        self.room.sub(existing.as_ref().map_or(0, |m| m.len()));
        if let (Some(counter), None) = (files::sliver_counter(&file.path), existing) {
            self.slivers[counter].fetch_add(1, Ordering::Relaxed);
        }
        files::sync_dir(parent)
    }

    /// Publishes both files of a pair, the primary first; when it fails,
    /// the secondary's temporary file goes too (no half-written leftovers
    /// in tmp/ until the next start).
    fn publish_pair(
        &self,
        first: StagedFile<'_>,
        second: StagedFile<'_>,
    ) -> Result<(), StoreError> {
        match self.publish_file(first) {
            Ok(()) => self.publish_file(second),
            Err(e) => {
                let _ = fs::remove_file(&second.tmp);
                Err(e)
            }
        }
    }

    /// Reads a checked file; a corrupt or unreadable one is quarantined
    /// and reported as such (the caller treats it as missing). The caller
    /// does not hold the blob's lock.
    fn read_file(
        &self,
        path: &Path,
        what: impl FnOnce() -> String,
    ) -> Result<Option<bytes::Bytes>, StoreError> {
        self.read_file_then(path, what, Quarantine::Unlocked)
    }

    /// Reads a checked file; a corrupt or unreadable one is reported as
    /// such, and quarantined as `quarantine` says (markers are not: they
    /// stay, lost, until written again).
    fn read_file_then(
        &self,
        path: &Path,
        what: impl FnOnce() -> String,
        quarantine: Quarantine,
    ) -> Result<Option<bytes::Bytes>, StoreError> {
        let failed = match self.read_checked(path) {
            Checked::Valid(bytes) => return Ok(Some(bytes)),
            Checked::Missing => return Ok(None),
            Checked::Corrupt => StoreError::Corrupt { what: what() },
            Checked::Failed(source) => StoreError::Unreadable {
                what: what(),
                source,
            },
            Checked::NotNow(source) => {
                return Err(StoreError::NotNow {
                    what: what(),
                    source,
                })
            }
        };
        match quarantine {
            Quarantine::No => {}
            Quarantine::Locked => self.move_to_quarantine(path),
            Quarantine::Unlocked => {
                if let Some(fresh) = self.quarantine_unless_replaced(path) {
                    return Ok(fresh);
                }
            }
        }
        Err(failed)
    }

    /// [`files::read_checked`] with this store's checksums.
    fn read_checked(&self, path: &Path) -> Checked {
        files::read_checked(path, self.checksums == Checksums::DerivedForSlivers)
    }

    /// Quarantines the file at `path`, which failed a read made without
    /// its blob's lock, unless it was replaced meanwhile (a repair's fresh
    /// sliver, a pair sent again) or removed: under the lock, which every
    /// change of a blob's files holds, it is read again and moved only if
    /// it still fails. Returns what that read found instead, if anything
    /// (`Some(None)`: the file is gone).
    fn quarantine_unless_replaced(&self, path: &Path) -> Option<Option<bytes::Bytes>> {
        let Some(id) = self.blob_of(path) else {
            self.move_to_quarantine(path);
            return None;
        };
        let _lock = self.lock(&id);
        match self.read_checked(path) {
            Checked::Valid(bytes) => Some(Some(bytes)),
            Checked::Missing => Some(None),
            // Left in place: the next read decides.
            Checked::NotNow(_) => None,
            Checked::Corrupt | Checked::Failed(_) => {
                self.move_to_quarantine(path);
                None
            }
        }
    }

    /// Moves a file into quarantine/ (where it still counts toward the
    /// bytes held until it is purged); it no longer counts as a sliver.
    /// The caller holds the blob's lock, or the file is no blob's.
    fn move_to_quarantine(&self, path: &Path) {
        // Named by the time it was moved, for the purge after the retention.
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let target = self
            .root
            .join("quarantine")
            .join(files::unique_name(&format!("{secs}-")));
        if fs::rename(path, &target).is_ok() {
            if let Some(counter) = files::sliver_counter(path) {
                sub(&self.slivers[counter], 1);
            }
            self.changed(path);
        }
    }

    /// The serialized metadata of a blob, if stored.
    pub fn metadata(&self, id: &BlobId) -> Result<Option<bytes::Bytes>, StoreError> {
        self.metadata_then(id, Quarantine::Unlocked)
    }

    /// [`Self::metadata`], quarantining a failed file as `quarantine` says.
    fn metadata_then(
        &self,
        id: &BlobId,
        quarantine: Quarantine,
    ) -> Result<Option<bytes::Bytes>, StoreError> {
        self.read_file_then(
            &self.blob_dir(id).join("metadata"),
            || format!("metadata of {id}"),
            quarantine,
        )
    }

    /// Stores a serialized sliver of `shard` for segment `segment`, if a
    /// write of the blob is staged or committed here.
    pub fn put_sliver<'a>(
        &self,
        id: &BlobId,
        segment: u32,
        shard: u16,
        kind: SliverKind,
        file: impl Into<SliverFile<'a>>,
    ) -> Result<(), StoreError> {
        let file = self.stage_file(&self.sliver_path(id, segment, shard, kind), file.into())?;
        let lock = self.lock(id);
        match lock.check_claimed() {
            Ok(()) => self.publish_file(file),
            Err(e) => {
                let _ = fs::remove_file(&file.tmp);
                Err(e)
            }
        }
    }

    /// Stores both serialized slivers of `shard`'s pair for segment
    /// `segment` in one step (each file fsynced before either is renamed
    /// into place), if a write of the blob is staged or committed here.
    pub fn put_pair(
        &self,
        id: &BlobId,
        segment: u32,
        shard: u16,
        primary: SliverFile<'_>,
        secondary: SliverFile<'_>,
    ) -> Result<(), StoreError> {
        let first = self.stage_file(
            &self.sliver_path(id, segment, shard, SliverKind::Primary),
            primary,
        )?;
        let second = match self.stage_file(
            &self.sliver_path(id, segment, shard, SliverKind::Secondary),
            secondary,
        ) {
            Ok(file) => file,
            Err(e) => {
                let _ = fs::remove_file(&first.tmp);
                return Err(e);
            }
        };
        let lock = self.lock(id);
        match lock.check_claimed() {
            Ok(()) => self.publish_pair(first, second),
            Err(e) => {
                let _ = fs::remove_file(&first.tmp);
                let _ = fs::remove_file(&second.tmp);
                Err(e)
            }
        }
    }

    /// A serialized sliver, if stored; checked against its checksum.
    pub fn sliver(
        &self,
        id: &BlobId,
        segment: u32,
        shard: u16,
        kind: SliverKind,
    ) -> Result<Option<bytes::Bytes>, StoreError> {
        self.read_file(&self.sliver_path(id, segment, shard, kind), || {
            format!("{kind} sliver of {id} segment {segment} shard {shard}")
        })
    }

    /// Whether a sliver file exists (without reading it).
    pub fn has_sliver(&self, id: &BlobId, segment: u32, shard: u16, kind: SliverKind) -> bool {
        self.sliver_path(id, segment, shard, kind).is_file()
    }

    /// Removes the slivers of one shard of a blob (when the shard moved
    /// away); returns the bytes freed (0 when none were held).
    pub fn delete_shard(&self, id: &BlobId, shard: u16) -> Result<u64, StoreError> {
        let _lock = self.lock(id);
        let dir = self.blob_dir(id).join(shard.to_string());
        if dir.exists() {
            return self.remove_tree(&dir);
        }
        Ok(0)
    }

    /// Removes a directory tree: renamed into trash/ first (atomic: after
    /// a crash it is whole or gone), then deleted, its bytes forgotten;
    /// returns those bytes.
    fn remove_tree(&self, dir: &Path) -> Result<u64, StoreError> {
        let stats = files::dir_stats(dir)?;
        let bytes = stats.bytes;
        let trash = self.root.join("trash").join(files::unique_name(""));
        fs::rename(dir, &trash).map_err(files::io_error(dir))?;
        self.changed(dir);
        files::sync_dir(dir.parent().expect("below root"))?;
        self.forget(stats);
        fs::remove_dir_all(&trash).map_err(files::io_error(&trash))?;
        Ok(bytes)
    }
}

/// What a failed read does with the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quarantine {
    /// Leaves it where it is (a marker: lost until written again).
    No,
    /// Moves it to quarantine/; the caller holds the blob's lock.
    Locked,
    /// Moves it to quarantine/ unless it was replaced since it was read;
    /// the caller does not hold the blob's lock.
    Unlocked,
}

/// A file fsynced in tmp/, waiting to be renamed into place, and the
/// room reserved for it (given back once it is counted or given up).
struct StagedFile<'a> {
    tmp: PathBuf,
    path: PathBuf,
    size: u64,
    _room: room::Reservation<'a>,
}

#[cfg(test)]
mod capacity_tests;
#[cfg(test)]
mod format_tests;
#[cfg(test)]
mod lost_marker_tests;
#[cfg(test)]
mod tests;
