//! A blob's markers (`staged`, `commit`, its tombstone) and the changes of
//! `blob_state` on them, each made under the blob's lock: staging,
//! committing, aborting and deleting.

use std::fs;
use std::io;
use std::path::Path;

use super::{files, BlobHoldings, BlobLock, SliverStore, StoreError, TombstoneOutcome};
use crate::blob_state::BlobState;
use crate::codec::BlobId;

/// The marker of a blob more than one write staged (see
/// [`BlobLock::stage`]).
pub(super) const SHARED: &str = "shared";

pub(super) fn generation_bytes(generation: u64) -> [u8; 8] {
    generation.to_le_bytes()
}

impl SliverStore {
    /// The markers of a blob here.
    pub fn state(&self, id: &BlobId) -> Result<BlobState, StoreError> {
        self.read_state(id)
    }

    /// The markers of a blob here, and whether one is lost.
    pub fn markers(&self, id: &BlobId) -> Result<Markers, StoreError> {
        self.read_markers(id)
    }

    /// A marker's generation, if it is there. A marker whose file is
    /// corrupt or cannot be read is lost: it stays where it is (the next
    /// commit, stage or delete of that generation writes it again; the
    /// loop spreads it) and reads as absent, but `lost` is set, so no
    /// clean-up takes the blob for one never committed.
    fn read_marker(&self, path: &Path, lost: &mut bool) -> Result<Option<u64>, StoreError> {
        match files::read_checked(path, self.checksums == super::Checksums::DerivedForSlivers) {
            files::Checked::Missing => Ok(None),
            files::Checked::Valid(bytes) => match bytes[..].try_into() {
                Ok(generation) => Ok(Some(u64::from_le_bytes(generation))),
                Err(_) => {
                    *lost = true;
                    Ok(None)
                }
            },
            // Not the marker's fault: said as an error, not read as absent
            // (a blob would look unknown) or lost.
            files::Checked::NotNow(source) => Err(StoreError::NotNow {
                what: format!("marker {}", path.display()),
                source,
            }),
            files::Checked::Corrupt | files::Checked::Failed(_) => {
                tracing::warn!(path = %path.display(), "marker unreadable; kept until written again");
                *lost = true;
                Ok(None)
            }
        }
    }

    pub(super) fn read_markers(&self, id: &BlobId) -> Result<Markers, StoreError> {
        let dir = self.blob_dir(id);
        let mut lost = false;
        let state = BlobState {
            commit: self.read_marker(&dir.join("commit"), &mut lost)?,
            staged: self.read_marker(&dir.join("staged"), &mut lost)?,
            tombstone: self.read_marker(&self.tombstone_path(id), &mut lost)?,
        };
        Ok(Markers { state, lost })
    }

    pub(super) fn read_state(&self, id: &BlobId) -> Result<BlobState, StoreError> {
        Ok(self.read_markers(id)?.state)
    }

    /// Stages a write of `generation`: its metadata is stored and the blob
    /// accepts slivers. Refused when a tombstone at least as new exists.
    pub fn stage(&self, id: &BlobId, generation: u64, metadata: &[u8]) -> Result<(), StoreError> {
        self.lock(id).stage(generation, metadata)
    }

    /// Commits the write of `generation` (storing `metadata` too when given
    /// and missing). Refused when a tombstone at least as new exists.
    pub fn commit(
        &self,
        id: &BlobId,
        generation: u64,
        metadata: Option<&[u8]>,
    ) -> Result<BlobState, StoreError> {
        self.lock(id).commit(generation, metadata)
    }

    /// Withdraws a staged write of `generation` that will never commit: the
    /// blob's data is removed unless another write claims it. True when
    /// data was removed.
    pub fn abort(&self, id: &BlobId, generation: u64) -> Result<bool, StoreError> {
        self.lock(id).abort(generation)
    }

    /// Records a delete of `generation`: the tombstone is kept, and the
    /// blob's data removed unless a newer write claims it.
    pub fn tombstone(&self, id: &BlobId, generation: u64) -> Result<TombstoneOutcome, StoreError> {
        self.lock(id).tombstone(generation)
    }
}

/// A blob's markers as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Markers {
    /// The markers read (a lost one reads as absent).
    pub state: BlobState,
    /// Whether a marker's file is there but could not be read (corrupt,
    /// a read error, a wrong length): what it said is unknown.
    pub lost: bool,
}

impl BlobLock<'_> {
    /// The blob's markers.
    pub fn state(&self) -> Result<BlobState, StoreError> {
        self.store.read_state(&self.id)
    }

    /// The blob's markers, and whether one was lost.
    pub fn markers(&self) -> Result<Markers, StoreError> {
        self.store.read_markers(&self.id)
    }

    /// The serialized metadata, if stored.
    pub fn metadata(&self) -> Result<Option<bytes::Bytes>, StoreError> {
        self.store
            .metadata_then(&self.id, super::Quarantine::Locked)
    }

    /// What is stored of the blob.
    pub fn holdings(&self) -> Result<BlobHoldings, StoreError> {
        self.store.holdings(&self.id)
    }

    pub(super) fn write_marker(&self, name: &str, generation: u64) -> Result<(), StoreError> {
        self.store.write_file(
            &self.store.blob_dir(&self.id).join(name),
            &generation_bytes(generation),
        )
    }

    pub(super) fn ensure_metadata(&self, metadata: &[u8]) -> Result<(), StoreError> {
        let path = self.store.blob_dir(&self.id).join("metadata");
        if !path.is_file() {
            self.store.write_file(&path, metadata)?;
        }
        Ok(())
    }

    /// See [`SliverStore::stage`].
    pub fn stage(&self, generation: u64, metadata: &[u8]) -> Result<(), StoreError> {
        let state = self.state()?;
        state
            .admits(generation)
            .map_err(|tombstone| StoreError::Deleted { tombstone })?;
        self.ensure_metadata(metadata)?;
        // Another write staged the same blob (a retry, or the same bytes
        // stored under another name; its generation may even be this
        // one's): the data is both writes', and an abort of either leaves
        // it (the other may still commit).
        if state.staged.is_some() && !self.is_shared() {
            self.write_marker(SHARED, generation)?;
        }
        if state.staged < Some(generation) {
            self.write_marker("staged", generation)?;
        }
        Ok(())
    }

    /// Whether more than one write staged the blob's data here (the
    /// marker's presence says it; its content is not read).
    fn is_shared(&self) -> bool {
        self.store.blob_dir(&self.id).join(SHARED).exists()
    }

    /// See [`SliverStore::commit`].
    pub fn commit(
        &self,
        generation: u64,
        metadata: Option<&[u8]>,
    ) -> Result<BlobState, StoreError> {
        let mut state = self.state()?;
        state
            .admits(generation)
            .map_err(|tombstone| StoreError::Deleted { tombstone })?;
        if let Some(metadata) = metadata {
            self.ensure_metadata(metadata)?;
        }
        if state.commit < Some(generation) {
            self.write_marker("commit", generation)?;
            state.commit = Some(generation);
        }
        Ok(state)
    }

    /// See [`SliverStore::abort`].
    pub fn abort(&self, generation: u64) -> Result<bool, StoreError> {
        let Markers { state, lost } = self.markers()?;
        // A lost marker may have been a commit: the data stays (a write
        // never committed is collected after the grace for lost markers).
        // So does data this write did not stage, or staged with another
        // write: that one may still commit (what no write commits is
        // collected after the staged TTL).
        if lost || state.commit.is_some() || state.staged != Some(generation) || self.is_shared() {
            return Ok(false);
        }
        self.remove_data()
    }

    /// See [`SliverStore::tombstone`].
    pub fn tombstone(&self, generation: u64) -> Result<TombstoneOutcome, StoreError> {
        let Markers {
            state: before,
            lost,
        } = self.markers()?;
        let after = before.with_tombstone(generation);
        if before.tombstone != after.tombstone {
            // Even on a full store: the data removal below frees far more.
            self.store.write_file_past_capacity(
                &self.store.tombstone_path(&self.id),
                &generation_bytes(generation),
            )?;
        }
        // A lost marker may have been a newer write's: its data stays
        // (collected as a delete's leftovers after the grace).
        let removed_data = if after.claims_data() || lost {
            // A newer write claims the slivers; only the older markers go.
            let dir = self.store.blob_dir(&self.id);
            if before.commit.is_some() && after.commit.is_none() {
                self.remove_file(&dir.join("commit"))?;
            }
            if before.staged.is_some() && after.staged.is_none() {
                self.remove_file(&dir.join("staged"))?;
            }
            false
        } else {
            self.remove_data()?
        };
        Ok(TombstoneOutcome {
            removed_data,
            state: after,
        })
    }

    pub(super) fn remove_file(&self, path: &Path) -> Result<(), StoreError> {
        let len = fs::metadata(path).map_or(0, |m| m.len());
        match fs::remove_file(path) {
            Ok(()) => {
                self.store.room.sub(len);
                self.store.changed(path);
                files::sync_dir(path.parent().expect("below root"))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(files::io_error(path)(e)),
        }
    }

    /// Removes the blob's directory (metadata, markers, slivers); true when
    /// there was one.
    pub(super) fn remove_data(&self) -> Result<bool, StoreError> {
        let dir = self.store.blob_dir(&self.id);
        if !dir.exists() {
            return Ok(false);
        }
        self.store.remove_tree(&dir)?;
        Ok(true)
    }

    /// Ok when a staged or committed write claims the blob's slivers here.
    pub(super) fn check_claimed(&self) -> Result<(), StoreError> {
        let state = self.state()?;
        if state.claims_data() {
            Ok(())
        } else if let Some(tombstone) = state.tombstone {
            Err(StoreError::Deleted { tombstone })
        } else {
            Err(StoreError::NotStaged)
        }
    }
}
