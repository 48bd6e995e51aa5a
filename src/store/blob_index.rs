//! The ids of the blobs a store holds anything of (a directory under
//! blobs/ or a tombstone), in order, in memory: the inventory lists a page
//! of them without reading the directories, so a page costs the same at a
//! million blobs as at ten.
//!
//! Read from the directories once when the store opens; every file the
//! store publishes under a blob's directory or as its tombstone adds the
//! blob. Nothing removes an id when its directory goes: the store drops it
//! when a listing finds nothing of the blob on disk (see
//! `SliverStore::list_blobs`), so no path that removes files has to know.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Mutex;

use crate::codec::BlobId;

/// Blob ids in order.
#[derive(Debug, Default)]
pub(super) struct BlobIndex {
    ids: Mutex<BTreeSet<BlobId>>,
}

impl BlobIndex {
    /// An index of `ids`.
    pub fn new(ids: impl IntoIterator<Item = BlobId>) -> Self {
        Self {
            ids: Mutex::new(ids.into_iter().collect()),
        }
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, BTreeSet<BlobId>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `id` (nothing when it is there).
    pub fn insert(&self, id: BlobId) {
        self.ids().insert(id);
    }

    /// Drops `id`.
    pub fn remove(&self, id: &BlobId) {
        self.ids().remove(id);
    }

    /// At most `limit` ids after `after` (from the first when `None`), in order.
    pub fn after(&self, after: Option<&BlobId>, limit: usize) -> Vec<BlobId> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.ids()
            .range((start, Bound::Unbounded))
            .take(limit)
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> BlobId {
        BlobId([n; 32])
    }

    #[test]
    fn pages_follow_the_id_order_after_the_one_given() {
        let index = BlobIndex::new([id(5), id(1), id(3)]);
        index.insert(id(4));
        index.insert(id(4));
        assert_eq!(index.after(None, 2), vec![id(1), id(3)]);
        assert_eq!(index.after(Some(&id(3)), 10), vec![id(4), id(5)]);
        assert_eq!(index.after(Some(&id(2)), 1), vec![id(3)]);
        assert_eq!(index.after(Some(&id(5)), 10), vec![]);
        index.remove(&id(3));
        assert_eq!(index.after(None, 10), vec![id(1), id(4), id(5)]);
    }
}
