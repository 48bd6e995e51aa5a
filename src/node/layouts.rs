//! The length and segment count of each blob whose metadata the node has
//! read, for its inventory: the control loop lists every blob on every
//! reconcile, and reading each blob's whole metadata for two numbers
//! (64 KiB per segment at n = 1000) would cost a pass over every metadata
//! file and push what reads use out of the metadata cache. A blob id
//! hashes its layout, so an entry never goes stale; a few dozen bytes per
//! blob, and past `MOST` entries the map starts over (the next inventory
//! reads them again).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::codec::BlobId;

/// Entries kept at most (about 60 bytes each).
const MOST: usize = 4_000_000;

/// Blob id -> (length, segments).
#[derive(Debug)]
pub(super) struct BlobLayouts {
    known: Mutex<HashMap<BlobId, (u64, u32)>>,
    most: usize,
}

impl BlobLayouts {
    /// An empty map of at most `MOST` entries.
    pub fn new() -> Self {
        Self::with_most(MOST)
    }

    fn with_most(most: usize) -> Self {
        Self {
            known: Mutex::default(),
            most,
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<BlobId, (u64, u32)>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The layout of `id`, if known.
    pub fn get(&self, id: &BlobId) -> Option<(u64, u32)> {
        self.known().get(id).copied()
    }

    /// Remembers the layout of `id`.
    pub fn insert(&self, id: BlobId, layout: (u64, u32)) {
        let mut known = self.known();
        if known.len() >= self.most && !known.contains_key(&id) {
            known.clear();
        }
        known.insert(id, layout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_is_remembered_and_the_map_starts_over_past_its_bound() {
        let layouts = BlobLayouts::with_most(2);
        let id = |n: u8| BlobId([n; 32]);
        layouts.insert(id(1), (10, 1));
        layouts.insert(id(2), (20, 2));
        layouts.insert(id(2), (20, 2));
        assert_eq!(layouts.get(&id(1)), Some((10, 1)));
        assert_eq!(layouts.get(&id(3)), None);
        layouts.insert(id(3), (30, 3));
        assert_eq!(layouts.get(&id(1)), None);
        assert_eq!(layouts.get(&id(3)), Some((30, 3)));
    }
}
