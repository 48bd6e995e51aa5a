//! Pairs an earlier upload of the same bytes already filed: a write
//! retried after its gateway or its client's connection failed encodes
//! the same segments again (same segment roots), and the node files the
//! pairs it still holds under the failed attempt's session into the new
//! session, so the writer ships only the pairs it lacks.
//!
//! A pair is found by segment, segment root and shard under any other
//! session, its files' checksums checked again, and hard-linked, never
//! copied: both sessions then name the
//! same verified files (each counted, as `dir_stats` counts them), and
//! either may be adopted or collected without touching the other's.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::{files, SliverStore, StoreError};
use crate::codec::merkle::Hash;
use crate::wire::UploadId;

/// Both files of a pair in a session's segment directory.
fn pair_files(segment_dir: &Path, shard: u16) -> [PathBuf; 2] {
    [
        segment_dir.join(format!("{shard}.primary")),
        segment_dir.join(format!("{shard}.secondary")),
    ]
}

impl SliverStore {
    /// Files into session `upload` the pairs of `shards` in segment
    /// `segment` under root `root` that another session holds (both
    /// slivers, verified against that root when they were filed there);
    /// the shards whose pair the session now holds, those it held already
    /// included. A pair found in no other session is not filed.
    pub fn reuse_upload_pairs(
        &self,
        upload: &UploadId,
        (segment, root): (u32, &Hash),
        shards: &[u16],
    ) -> Result<Vec<u16>, StoreError> {
        let _session = self.session_lock(upload);
        let target = self.upload_segment_dir(upload, segment, root);
        let shards: std::collections::BTreeSet<u16> = shards.iter().copied().collect();
        let mut wanted: Vec<u16> = Vec::new();
        let mut filed: Vec<u16> = Vec::new();
        for shard in shards {
            if pair_files(&target, shard).iter().all(|p| p.is_file()) {
                filed.push(shard);
            } else {
                wanted.push(shard);
            }
        }
        if wanted.is_empty() {
            return Ok(filed);
        }
        let sources: Vec<PathBuf> = self
            .other_sessions(upload)?
            .into_iter()
            .map(|session| self.upload_segment_dir(&session, segment, root))
            .filter(|dir| dir.is_dir())
            .collect();
        let mut linked = false;
        for shard in wanted {
            for source in &sources {
                if !self.link_pair(source, &target, shard)? {
                    continue;
                }
                filed.push(shard);
                linked = true;
                break;
            }
        }
        if linked {
            files::sync_dir(&target)?;
        }
        filed.sort_unstable();
        Ok(filed)
    }

    /// Every session on this node but `upload`.
    fn other_sessions(&self, upload: &UploadId) -> Result<Vec<UploadId>, StoreError> {
        let dir = self.uploads_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(files::io_error(&dir)(e)),
        };
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<UploadId>().ok())
            .filter(|session| session != upload)
            .collect())
    }

    /// Links both files of `shard`'s pair from segment directory `from`
    /// into `to`, counting the links it made; false when `from` lacks
    /// either (or it went meanwhile: adopted or collected) or the
    /// filesystem cannot link it, leaving nothing half linked. A file
    /// already in `to` (a pair filed meanwhile) is kept and not counted
    /// again.
    fn link_pair(&self, from: &Path, to: &Path, shard: u16) -> Result<bool, StoreError> {
        let sources = pair_files(from, shard);
        let targets = pair_files(to, shard);
        // Filed a while ago: checked again (a corrupt file is quarantined,
        // and the pair sent instead) before the write counts on it.
        for source in &sources {
            match self.read_file(source, || format!("the staged file {}", source.display())) {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(false),
                Err(e) => {
                    tracing::warn!("not reusing a staged pair: {e}");
                    return Ok(false);
                }
            }
        }
        files::create_dirs_synced(to, &self.root)?;
        let mut made: Vec<&PathBuf> = Vec::new();
        for (source, target) in sources.iter().zip(&targets) {
            match fs::hard_link(source, target) {
                Ok(()) => made.push(target),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    for linked in made {
                        let _ = fs::remove_file(linked);
                    }
                    // Gone meanwhile, or a filesystem without links
                    // (or their limit): the pair is sent instead.
                    return match e.raw_os_error() {
                        _ if e.kind() == io::ErrorKind::NotFound => Ok(false),
                        Some(libc_code) if LINK_REFUSALS.contains(&libc_code) => {
                            tracing::debug!("linking {}: {e}", source.display());
                            Ok(false)
                        }
                        _ => Err(files::io_error(target)(e)),
                    };
                }
            }
        }
        for target in made {
            let size = fs::metadata(target).map_or(0, |m| m.len());
            self.room.add(size);
            if let Some(counter) = files::sliver_counter(target) {
                self.slivers[counter].fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(true)
    }
}

/// Errors of `link(2)` that say the filesystem will not link this file
/// (EPERM, EXDEV, EMLINK, ENOTSUP/EOPNOTSUPP), not that the disk failed.
const LINK_REFUSALS: [i32; 4] = [1, 18, 31, 95];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{BlobId, SliverKind};
    use crate::store::uploads::tests::{assert_reads_back, pair};

    fn filed(store: &SliverStore, upload: &UploadId, root: &Hash, shard: u16) {
        let (slivers, leaves) = pair();
        store
            .put_upload_pair_checked(upload, (0, root), shard, [&slivers[0], &slivers[1]], || {
                Ok::<_, String>(leaves.clone())
            })
            .unwrap();
    }

    #[test]
    fn a_retried_upload_files_the_pairs_an_earlier_session_holds_under_the_same_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = SliverStore::open(dir.path(), None).unwrap();
        let (failed, retry) = (UploadId::random(), UploadId::random());
        let (root, other_root) = ([3u8; 32], [4u8; 32]);
        filed(&store, &failed, &root, 4);
        filed(&store, &failed, &other_root, 5);
        let before = (store.used_bytes(), store.sliver_count(SliverKind::Primary));
        let reused = store
            .reuse_upload_pairs(&retry, (0, &root), &[4, 5, 6])
            .unwrap();
        assert_eq!(reused, [4], "shard 5 is under another root, 6 nowhere");
        assert_eq!(
            store.reuse_upload_pairs(&retry, (1, &root), &[4]).unwrap(),
            Vec::<u16>::new(),
            "another segment"
        );
        assert_eq!(
            store.reuse_upload_pairs(&retry, (0, &root), &[4]).unwrap(),
            [4],
            "filed already"
        );
        assert!(store.used_bytes() > before.0, "the linked files count");
        assert_eq!(store.sliver_count(SliverKind::Primary), before.1 + 1);

        // The failed session goes; the retry's pairs stay, and become the
        // blob's when adopted, reading back whole.
        assert!(store.remove_upload(&failed).unwrap());
        let blob = BlobId([5; 32]);
        store.stage(&blob, 10, b"meta").unwrap();
        store
            .lock(&blob)
            .adopt_upload(&retry, &[(0, root)])
            .unwrap();
        assert_reads_back(&store, &blob, 4, &pair().0);
        let reopened = SliverStore::open(dir.path(), None).unwrap();
        assert_eq!(
            reopened.used_bytes(),
            store.used_bytes(),
            "counted as on disk"
        );
        assert_eq!(
            reopened.sliver_count(SliverKind::Primary),
            store.sliver_count(SliverKind::Primary)
        );
    }

    #[test]
    fn linked_pairs_are_counted_once_however_often_or_twice_asked_as_a_reopened_store_counts_them()
    {
        let dir = tempfile::tempdir().unwrap();
        let store = SliverStore::open(dir.path(), None).unwrap();
        let (failed, retry, root) = (UploadId::random(), UploadId::random(), [3u8; 32]);
        filed(&store, &failed, &root, 4);
        filed(&store, &failed, &root, 5);
        // The retry already filed shard 5's primary (one file of its own).
        let from = store.upload_segment_dir(&failed, 0, &root);
        let to = store.upload_segment_dir(&retry, 0, &root);
        fs::create_dir_all(&to).unwrap();
        fs::copy(from.join("5.primary"), to.join("5.primary")).unwrap();
        let store = SliverStore::open(dir.path(), None).unwrap();
        assert_eq!(
            store
                .reuse_upload_pairs(&retry, (0, &root), &[4, 4, 5])
                .unwrap(),
            [4, 5]
        );
        assert_eq!(
            store
                .reuse_upload_pairs(&retry, (0, &root), &[5, 4])
                .unwrap(),
            [4, 5]
        );
        let reopened = SliverStore::open(dir.path(), None).unwrap();
        assert_eq!(store.used_bytes(), reopened.used_bytes());
        for kind in [SliverKind::Primary, SliverKind::Secondary] {
            assert_eq!(store.sliver_count(kind), reopened.sliver_count(kind));
        }
        assert_eq!(store.sliver_count(SliverKind::Primary), 4);
        assert_eq!(store.sliver_count(SliverKind::Secondary), 4);
    }

    #[test]
    fn a_pair_that_rotted_in_the_earlier_session_is_not_reused_and_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let store = SliverStore::open(dir.path(), None).unwrap();
        let (failed, retry, root) = (UploadId::random(), UploadId::random(), [3u8; 32]);
        filed(&store, &failed, &root, 4);
        let rotten = store
            .upload_segment_dir(&failed, 0, &root)
            .join("4.secondary");
        let mut bytes = fs::read(&rotten).unwrap();
        bytes[100] ^= 1;
        fs::write(&rotten, bytes).unwrap();
        assert!(store
            .reuse_upload_pairs(&retry, (0, &root), &[4])
            .unwrap()
            .is_empty());
        assert!(!rotten.exists(), "quarantined");
        assert!(!store
            .upload_segment_dir(&retry, 0, &root)
            .join("4.primary")
            .exists());
    }

    #[test]
    fn a_pair_missing_a_sliver_in_the_earlier_session_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SliverStore::open(dir.path(), None).unwrap();
        let (failed, retry, root) = (UploadId::random(), UploadId::random(), [3u8; 32]);
        filed(&store, &failed, &root, 4);
        let from = store.upload_segment_dir(&failed, 0, &root);
        fs::remove_file(from.join("4.secondary")).unwrap();
        assert!(store
            .reuse_upload_pairs(&retry, (0, &root), &[4])
            .unwrap()
            .is_empty());
        assert!(!store
            .upload_segment_dir(&retry, 0, &root)
            .join("4.primary")
            .exists());
    }
}
