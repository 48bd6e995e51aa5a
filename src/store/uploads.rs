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
use std::sync::MutexGuard;
use std::time::{Duration, SystemTime};

use super::direct_io::FileWriter;
use super::{files, BlobLock, SliverFile, SliverStore, StagedFile, StoreError};
use crate::codec::merkle::Hash;
use crate::codec::SliverKind;
use crate::wire::UploadId;

impl SliverStore {
    pub(super) fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }

    fn upload_dir(&self, upload: &UploadId) -> PathBuf {
        self.uploads_dir().join(upload.to_string())
    }

    /// The lock of upload session `upload` (see `session_locks`).
    pub(super) fn session_lock(&self, upload: &UploadId) -> MutexGuard<'_, ()> {
        let stripe = usize::from(upload.as_bytes()[0]) % self.session_locks.len();
        self.session_locks[stripe]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn upload_segment_dir(
        &self,
        upload: &UploadId,
        segment: u32,
        root: &Hash,
    ) -> PathBuf {
        self.upload_dir(upload)
            .join(format!("{segment}-{}", crate::hex::encode(root)))
    }

    /// Files both slivers of `shard`'s pair of segment `segment` (whose
    /// root is `root`) under an upload session while `check` verifies the
    /// pair against `root` on this thread: the bulk of both files is
    /// written meanwhile on another, and each file then gets its checksum
    /// (in a store of format 3, derived from the leaf hashes `check`
    /// returns: primary's, then secondary's). The
    /// files are fsynced and renamed into place only once `check` passed;
    /// when it fails they are removed and its error returned.
    pub fn put_upload_pair_checked<E>(
        &self,
        upload: &UploadId,
        (segment, root): (u32, &Hash),
        shard: u16,
        [primary, secondary]: [&[u8]; 2],
        check: impl FnOnce() -> Result<[Vec<Hash>; 2], E>,
    ) -> Result<(), CheckedPutError<E>> {
        let dir = self.upload_segment_dir(upload, segment, root);
        let paths = [
            dir.join(format!("{shard}.primary")),
            dir.join(format!("{shard}.secondary")),
        ];
        let contents = [primary, secondary];
        let mut rooms = Vec::with_capacity(2);
        for (path, content) in paths.iter().zip(contents) {
            let previous = fs::metadata(path).map_or(0, |m| m.len());
            rooms.push(
                self.room
                    .reserve((content.len() + files::CHECKSUM_LEN) as u64, previous)?,
            );
        }
        let tmps = [self.tmp_path(), self.tmp_path()];
        let remove_tmps = || {
            for tmp in &tmps {
                let _ = fs::remove_file(tmp);
            }
        };
        let (written, checked) = std::thread::scope(|scope| {
            let writing = scope.spawn(|| {
                tmps.iter()
                    .zip(contents)
                    .map(|(tmp, content)| {
                        let mut file = FileWriter::create(tmp, content.len() + files::CHECKSUM_LEN)
                            .map_err(files::io_error(tmp))?;
                        file.push(content).map_err(files::io_error(tmp))?;
                        Ok(file)
                    })
                    .collect::<Result<Vec<FileWriter>, StoreError>>()
            });
            let checked = check();
            (
                writing.join().expect("a file writer does not panic"),
                checked,
            )
        });
        let leaves = match checked {
            Ok(leaves) => leaves,
            Err(e) => {
                drop(written);
                remove_tmps();
                return Err(CheckedPutError::Refused(e));
            }
        };
        let files = written.inspect_err(|_| remove_tmps())?;
        let mut staged = Vec::with_capacity(2);
        for ((((mut file, tmp), path), (content, leaves)), room) in files
            .into_iter()
            .zip(&tmps)
            .zip(&paths)
            .zip(contents.into_iter().zip(&leaves))
            .zip(rooms)
        {
            let checksum = self.checksum(path, SliverFile::verified(content, leaves));
            if let Err(e) = file.push(&checksum).and_then(|()| file.finish()) {
                remove_tmps();
                return Err(files::io_error(tmp)(e).into());
            }
            staged.push(StagedFile {
                tmp: tmp.clone(),
                path: path.clone(),
                size: (content.len() + files::CHECKSUM_LEN) as u64,
                _room: room,
            });
        }
        let [first, second]: [StagedFile; 2] = staged.try_into().ok().expect("two files");
        let _session = self.session_lock(upload);
        self.publish_pair(first, second)
            .map_err(CheckedPutError::Store)
    }

    /// Removes an upload session and what it holds; false when there was
    /// none.
    pub fn remove_upload(&self, upload: &UploadId) -> Result<bool, StoreError> {
        let _session = self.session_lock(upload);
        self.remove_upload_locked(upload)
    }

    /// [`SliverStore::remove_upload`], its session's lock held.
    fn remove_upload_locked(&self, upload: &UploadId) -> Result<bool, StoreError> {
        let dir = self.upload_dir(upload);
        if !dir.exists() {
            return Ok(false);
        }
        self.remove_tree(&dir)?;
        Ok(true)
    }

    /// Marks upload session `upload` as in use now, so the staged-write
    /// TTL counts from here (its writer is still receiving a segment that
    /// takes long to arrive); false when there is no such session.
    pub fn touch_upload(&self, upload: &UploadId) -> Result<bool, StoreError> {
        let _session = self.session_lock(upload);
        let dir = self.upload_dir(upload);
        let touched = fs::File::open(&dir).and_then(|d| d.set_modified(SystemTime::now()));
        match touched {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(files::io_error(&dir)(e)),
        }
    }

    /// Removes every upload session that has not gained a file (or been
    /// touched) for `ttl`; returns how many.
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
            let idle = || {
                files::last_change(&session.path())
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|idle| idle >= ttl)
            };
            if !idle() {
                continue;
            }
            // Idle again under its lock: a pair filed or a touch while the
            // lock was awaited made it new.
            let _session = self.session_lock(&upload);
            if idle() && self.remove_upload_locked(&upload)? {
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
        let _session = store.session_lock(upload);
        if !store.upload_dir(upload).exists() {
            return Ok(());
        }
        let moved = self.move_upload_pairs(upload, segments);
        // Recorded even when moving failed partway: some pairs may be here.
        store.changes.record(self.id);
        moved?;
        store.remove_upload_locked(upload)?;
        Ok(())
    }

    /// Moves the session's pairs filed under each segment's root into the
    /// blob (both slivers of each, directories synced).
    fn move_upload_pairs(
        &self,
        upload: &UploadId,
        segments: &[(u32, Hash)],
    ) -> Result<(), StoreError> {
        let store = self.store;
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
                store.index.insert(self.id);
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

/// Why [`SliverStore::put_upload_pair_checked`] filed nothing.
#[derive(Debug, thiserror::Error)]
pub enum CheckedPutError<E> {
    /// The check refused the pair.
    #[error("refused: {0}")]
    Refused(E),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::codec::{encode_segment, sliver_hash_and_leaves, BlobId, EncodingConfig};
    use crate::store::BlockParts;

    /// The serialized pair 2 of a 4 MiB segment at n = 7 (slivers of about
    /// 1.4 and 0.8 MiB, so both are written past the page cache), received
    /// into block-aligned parts as a node receives it, with its leaves.
    pub(crate) fn pair() -> ([bytes::Bytes; 2], [Vec<Hash>; 2]) {
        let config = EncodingConfig::new(7).unwrap();
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i * 31 % 251) as u8).collect();
        let segment = encode_segment(config, 0, &data);
        let (primary, secondary) = (&segment.primary[2], &segment.secondary[2]);
        let leaves = [
            sliver_hash_and_leaves(primary).1,
            sliver_hash_and_leaves(secondary).1,
        ];
        let bytes = [primary.to_bytes(), secondary.to_bytes()];
        let mut parts = BlockParts::new(&[bytes[0].len(), bytes[1].len()]);
        parts.push(&bytes.concat()).unwrap();
        let frozen: [bytes::Bytes; 2] = parts.freeze().unwrap().try_into().unwrap();
        (frozen, leaves)
    }

    /// Asserts that `blob` holds `slivers` (primary, secondary) as the
    /// pair of `shard` in segment 0.
    pub(crate) fn assert_reads_back(
        store: &SliverStore,
        blob: &BlobId,
        shard: u16,
        slivers: &[bytes::Bytes; 2],
    ) {
        for (kind, bytes) in [SliverKind::Primary, SliverKind::Secondary]
            .into_iter()
            .zip(slivers)
        {
            assert_eq!(
                store.sliver(blob, 0, shard, kind).unwrap().as_ref(),
                Some(bytes)
            );
        }
    }

    fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(files_under(&path));
            } else {
                found.push((path.clone(), fs::metadata(&path).map_or(0, |m| m.len())));
            }
        }
        found
    }

    #[test]
    fn a_checked_pair_is_filed_whole_and_reads_back_once_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SliverStore::open(dir.path(), None).unwrap();
        let blob = BlobId([5; 32]);
        store.stage(&blob, 10, b"meta").unwrap();
        let (slivers, leaves) = pair();
        let (upload, root) = (UploadId::random(), [3u8; 32]);
        store
            .put_upload_pair_checked(&upload, (0, &root), 4, [&slivers[0], &slivers[1]], || {
                Ok::<_, String>(leaves.clone())
            })
            .unwrap();
        assert!(files_under(&dir.path().join("tmp")).is_empty());
        let lock = store.lock(&blob);
        lock.adopt_upload(&upload, &[(0, root)]).unwrap();
        drop(lock);
        assert_reads_back(&store, &blob, 4, &slivers);
    }

    #[test]
    fn a_pair_its_check_refuses_leaves_no_file_and_no_bytes_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SliverStore::open(dir.path(), None).unwrap();
        let base = store.used_bytes();
        let (slivers, _) = pair();
        let upload = UploadId::random();
        let refused = store.put_upload_pair_checked(
            &upload,
            (0, &[3u8; 32]),
            4,
            [&slivers[0], &slivers[1]],
            || Err::<[Vec<Hash>; 2], _>("not under the root"),
        );
        assert!(matches!(
            refused,
            Err(CheckedPutError::Refused("not under the root"))
        ));
        assert_eq!(files_under(&dir.path().join("tmp")), vec![]);
        assert_eq!(files_under(&dir.path().join("uploads")), vec![]);
        assert_eq!(store.used_bytes(), base);
        assert_eq!(store.sliver_count(SliverKind::Primary), 0);
    }

    #[test]
    fn a_pairs_files_are_written_while_its_check_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = SliverStore::open(dir.path(), None).unwrap();
        let (slivers, leaves) = pair();
        let bulk: u64 = slivers.iter().map(|s| (s.len() / 4096 * 4096) as u64).sum();
        let tmp = dir.path().join("tmp");
        store
            .put_upload_pair_checked(
                &UploadId::random(),
                (0, &[3u8; 32]),
                4,
                [&slivers[0], &slivers[1]],
                || {
                    // The check waits (boundedly) for both files' whole
                    // blocks to be on disk before it answers.
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        let written: u64 = files_under(&tmp).iter().map(|(_, len)| len).sum();
                        if written >= bulk {
                            return Ok(leaves.clone());
                        }
                        if Instant::now() > deadline {
                            return Err(format!("{written} of {bulk} bytes written meanwhile"));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                },
            )
            .unwrap();
    }
}
