//! What a store lists: the blobs it holds (from the in-memory index,
//! checked on disk), what it holds of each, and the journal of the blobs
//! whose files changed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::{files, BlobHoldings, Changes, Forgotten, JournalPosition, SliverStore, StoreError};
use crate::codec::BlobId;

impl SliverStore {
    pub(super) fn blob_dirs(&self) -> Result<Vec<BlobId>, StoreError> {
        let dir = self.root.join("blobs");
        Ok(fs::read_dir(&dir)
            .map_err(files::io_error(&dir))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect())
    }

    /// Blob ids with a directory or a tombstone, read from the directories.
    pub(super) fn stored_ids(&self) -> Result<Vec<BlobId>, StoreError> {
        let tombstones = self.root.join("tombstones");
        let mut ids = self.blob_dirs()?;
        ids.extend(
            fs::read_dir(&tombstones)
                .map_err(files::io_error(&tombstones))?
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<BlobId>().ok()),
        );
        Ok(ids)
    }

    /// Blob ids with anything stored (data or a tombstone), in order, after
    /// `after`, at most `limit`: read from the index, each checked on disk
    /// under its blob's lock (an id with nothing left is dropped from the
    /// index; the lock keeps a write from creating it meanwhile).
    pub fn list_blobs(
        &self,
        after: Option<&BlobId>,
        limit: usize,
    ) -> Result<Vec<BlobId>, StoreError> {
        let mut listed = Vec::new();
        let mut from = after.copied();
        while listed.len() < limit {
            let candidates = self.index.after(from.as_ref(), limit - listed.len());
            let Some(last) = candidates.last() else {
                break;
            };
            from = Some(*last);
            for id in candidates {
                let _lock = self.lock(&id);
                // Only a path known to be absent drops the id: a stat that
                // fails (EIO, EACCES) keeps it listed.
                let absent = |path: PathBuf| matches!(path.try_exists(), Ok(false));
                if absent(self.blob_dir(&id)) && absent(self.tombstone_path(&id)) {
                    self.index.remove(&id);
                } else {
                    listed.push(id);
                }
            }
        }
        Ok(listed)
    }

    /// Records in the journal that the blob `path` belongs to changed (once
    /// the change is on disk).
    pub(super) fn changed(&self, path: &Path) {
        if let Some(id) = self.blob_of(path) {
            self.changes.record(id);
        }
    }

    /// The journal's newest position: changes after it are not yet made.
    pub fn journal_head(&self) -> JournalPosition {
        self.changes.head()
    }

    /// At most `limit` blobs whose files changed after `after`, in the
    /// order of their last change.
    pub fn changes_since(
        &self,
        after: JournalPosition,
        limit: usize,
    ) -> Result<Changes, Forgotten> {
        self.changes.since(after, limit)
    }

    /// The blob a path below blobs/ or tombstones/ belongs to.
    pub(super) fn blob_of(&self, path: &Path) -> Option<BlobId> {
        let mut parts = path.strip_prefix(&self.root).ok()?.components();
        let top = parts.next()?.as_os_str();
        if top != "blobs" && top != "tombstones" {
            return None;
        }
        parts.next()?.as_os_str().to_str()?.parse().ok()
    }

    /// What is stored of one blob (by file presence; reads check content).
    pub fn holdings(&self, id: &BlobId) -> Result<BlobHoldings, StoreError> {
        let dir = self.blob_dir(id);
        let mut holdings = BlobHoldings {
            metadata: dir.join("metadata").is_file(),
            shards: BTreeMap::new(),
        };
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(holdings),
            Err(e) => return Err(files::io_error(&dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(files::io_error(&dir))?;
            let Some(shard) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u16>().ok())
            else {
                continue;
            };
            let shard_dir = entry.path();
            let in_shard = match fs::read_dir(&shard_dir) {
                Ok(in_shard) => in_shard,
                // Removed meanwhile (a delete, a repair starting over).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(files::io_error(&shard_dir)(e)),
            };
            let mut names = Vec::new();
            for file in in_shard {
                let file = file.map_err(files::io_error(&shard_dir))?;
                names.extend(file.file_name().into_string().ok());
            }
            let complete = names
                .iter()
                .filter_map(|f| f.strip_suffix(".primary"))
                .filter(|segment| names.contains(&format!("{segment}.secondary")))
                .count();
            holdings.shards.insert(shard, complete as u32);
        }
        Ok(holdings)
    }
}
