//! Upload sessions: pairs a writer ships while it is still encoding the
//! blob, before the blob id (which commits to every segment) is known.
//!
//! ```text
//! uploads/<upload id>/<segment>-<segment root>/<shard>.primary
//! uploads/<upload id>/<segment>-<segment root>/<shard>.secondary
//! ```
//!
//! A session's pairs belong to no blob: nothing reads them. Metadata
//! staged with the session adopts them (under the blob's lock): the pairs
//! of segment k filed under the root the metadata gives for segment k are
//! renamed into the blob's directory, and the session is removed. The node
//! verified each pair against its segment root before filing it, so a
//! root the metadata agrees with is all adoption checks. A session nobody
//! adopts (its writer failed) is removed after the staged-write TTL.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::{files, BlobLock, SliverFile, SliverStore, StoreError};
use crate::codec::merkle::Hash;
use crate::codec::SliverKind;
use crate::wire::UploadId;

impl SliverStore {
    fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }

    fn upload_dir(&self, upload: &UploadId) -> PathBuf {
        self.uploads_dir().join(upload.to_string())
    }

    fn upload_segment_dir(&self, upload: &UploadId, segment: u32, root: &Hash) -> PathBuf {
        self.upload_dir(upload)
            .join(format!("{segment}-{}", crate::hex::encode(root)))
    }

    /// Files both slivers of `shard`'s pair of segment `segment` (whose
    /// root is `root`) under an upload session, each fsynced before either
    /// is renamed into place. The caller verified the pair against `root`.
    pub fn put_upload_pair(
        &self,
        upload: &UploadId,
        (segment, root): (u32, &Hash),
        shard: u16,
        primary: SliverFile<'_>,
        secondary: SliverFile<'_>,
    ) -> Result<(), StoreError> {
        let dir = self.upload_segment_dir(upload, segment, root);
        let first = self.stage_file(&dir.join(format!("{shard}.primary")), primary)?;
        let second = match self.stage_file(&dir.join(format!("{shard}.secondary")), secondary) {
            Ok(file) => file,
            Err(e) => {
                let _ = fs::remove_file(&first.tmp);
                return Err(e);
            }
        };
        self.publish_file(first)
            .and_then(|()| self.publish_file(second))
    }

    /// Removes an upload session and what it holds; false when there was
    /// none.
    pub fn remove_upload(&self, upload: &UploadId) -> Result<bool, StoreError> {
        let dir = self.upload_dir(upload);
        if !dir.exists() {
            return Ok(false);
        }
        self.remove_tree(&dir)?;
        Ok(true)
    }

    /// Removes every upload session that has not gained a file for `ttl`;
    /// returns how many.
    pub fn collect_abandoned_uploads(
        &self,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<usize, StoreError> {
        let dir = self.uploads_dir();
        let sessions = fs::read_dir(&dir).map_err(files::io_error(&dir))?;
        let mut collected = 0;
        for session in sessions.flatten() {
            let Some(upload) = session
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<UploadId>().ok())
            else {
                continue;
            };
            let idle = files::last_change(&session.path())
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|idle| idle >= ttl);
            if idle && self.remove_upload(&upload)? {
                collected += 1;
            }
        }
        Ok(collected)
    }
}

impl BlobLock<'_> {
    /// Adopts the pairs of an upload session into this blob, whose write
    /// must be staged or committed here: for each `(segment, root)` of the
    /// blob, the session's pairs filed under that root become the blob's
    /// (a pair the blob already holds stays as it is). The session is
    /// removed afterwards; a session that does not exist adopts nothing.
    pub fn adopt_upload(
        &self,
        upload: &UploadId,
        segments: &[(u32, Hash)],
    ) -> Result<(), StoreError> {
        self.check_claimed()?;
        let store = self.store;
        if !store.upload_dir(upload).exists() {
            return Ok(());
        }
        let mut touched = std::collections::BTreeSet::new();
        for (segment, root) in segments {
            let from = store.upload_segment_dir(upload, *segment, root);
            let Ok(entries) = fs::read_dir(&from) else {
                continue;
            };
            let shards: Vec<u16> = entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name();
                    name.to_str()?.strip_suffix(".primary")?.parse().ok()
                })
                .collect();
            for shard in shards {
                let source = |kind: SliverKind| from.join(format!("{shard}.{}", kind.name()));
                let held = [SliverKind::Primary, SliverKind::Secondary]
                    .map(|kind| store.has_sliver(&self.id, *segment, shard, kind));
                if held.iter().any(|&h| h) || !source(SliverKind::Secondary).is_file() {
                    continue;
                }
                let to = store.blob_dir(&self.id).join(shard.to_string());
                files::create_dirs_synced(&to, &store.root)?;
                for kind in [SliverKind::Primary, SliverKind::Secondary] {
                    let target = store.sliver_path(&self.id, *segment, shard, kind);
                    fs::rename(source(kind), &target).map_err(files::io_error(&target))?;
                }
                touched.insert(to);
            }
            touched.insert(from);
        }
        // The renames last once both directories of each are synced.
        for dir in &touched {
            files::sync_dir(dir)?;
        }
        store.remove_upload(upload)?;
        Ok(())
    }

    /// Per segment below `segments`, the shards holding both slivers of
    /// their pair of this blob.
    pub fn pairs_by_segment(&self, segments: u32) -> Result<Vec<Vec<u16>>, StoreError> {
        let mut held = vec![Vec::new(); segments as usize];
        for (&shard, _) in self.holdings()?.shards.iter() {
            for (segment, shards) in held.iter_mut().enumerate() {
                let has = |kind| self.store.has_sliver(&self.id, segment as u32, shard, kind);
                if has(SliverKind::Primary) && has(SliverKind::Secondary) {
                    shards.push(shard);
                }
            }
        }
        Ok(held)
    }
}
