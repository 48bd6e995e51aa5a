//! Verified rows of segments kept for the next read (a gateway's, bounded
//! in bytes). A segment is the rows of its message matrix back to back,
//! and a range read needs only the rows its bytes lie in: clients that
//! read a large object in ranges smaller than a segment (the aws cli: 8
//! MiB of a 64 MiB segment) find the rows an earlier range fetched here
//! instead of fetching them again. A blob id fixes its bytes, and every
//! read checks visibility before it looks here, so a cached row is never
//! stale and a deleted blob is never served from it.
//!
//! With a read budget, a kept row remembers the share of it that the
//! readers holding it reserved (`client::read_budget`): a read that finds
//! it held shares that share instead of reserving the row again. The
//! cache itself holds no share: its rows are bounded by its own size.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, Weak};

use bytes::Bytes;

use super::memory_budget::MemoryReservation;
use crate::codec::BlobId;

/// A kept row, and the share of the read budget its readers hold, if any
/// still does.
#[derive(Debug, Clone)]
pub struct CachedRow {
    /// The row's bytes.
    pub bytes: Bytes,
    /// The readers' share (dead once none of them holds the row).
    pub share: Weak<MemoryReservation>,
}

/// Which row: of which segment of which blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowKey {
    /// The blob.
    pub blob: BlobId,
    /// The segment.
    pub segment: u32,
    /// The row of its message matrix (its systematic primary sliver).
    pub row: u16,
}

/// The cache: least recently used rows leave first.
#[derive(Debug)]
pub struct SegmentCache {
    max_bytes: usize,
    rows: Mutex<Rows>,
}

#[derive(Debug, Default)]
struct Rows {
    /// Each row and when it was last used.
    by_key: HashMap<RowKey, (CachedRow, u64)>,
    /// Rows by when they were last used, the least recent first.
    by_use: BTreeMap<u64, RowKey>,
    next_use: u64,
    held: usize,
}

impl Rows {
    fn touch(&mut self, key: RowKey) -> Option<CachedRow> {
        let stamp = self.next_use;
        let (bytes, used) = self.by_key.get_mut(&key)?;
        self.by_use.remove(used);
        *used = stamp;
        self.by_use.insert(stamp, key);
        self.next_use += 1;
        Some(bytes.clone())
    }

    fn remove(&mut self, key: &RowKey) {
        if let Some((row, used)) = self.by_key.remove(key) {
            self.by_use.remove(&used);
            self.held -= row.bytes.len();
        }
    }
}

impl SegmentCache {
    /// A cache holding at most `max_bytes` of rows (0: none).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            rows: Mutex::new(Rows::default()),
        }
    }

    /// The row, if kept (it becomes the most recently used).
    pub fn get(&self, key: RowKey) -> Option<CachedRow> {
        self.rows.lock().expect("not poisoned").touch(key)
    }

    /// Notes the share of the budget that now holds a kept row (its
    /// readers' share had ended, and a new reader reserved `bytes` again),
    /// if the row kept is still those bytes.
    pub fn renew(&self, key: RowKey, bytes: &Bytes, share: Weak<MemoryReservation>) {
        if let Some((row, _)) = self.rows.lock().expect("not poisoned").by_key.get_mut(&key) {
            if row.bytes.as_ptr() == bytes.as_ptr() && row.bytes.len() == bytes.len() {
                row.share = share;
            }
        }
    }

    /// Keeps the row, no reader's share with it, unless a row is kept
    /// under its key already.
    pub fn put_new(&self, key: RowKey, bytes: Bytes) {
        let mut rows = self.rows.lock().expect("not poisoned");
        if !rows.by_key.contains_key(&key) {
            self.keep(&mut rows, key, bytes, Weak::new());
        }
    }

    /// Keeps the row, dropping the least recently used beyond the bound (a
    /// row larger than the bound is not kept).
    pub fn put(&self, key: RowKey, bytes: Bytes, share: Weak<MemoryReservation>) {
        let mut rows = self.rows.lock().expect("not poisoned");
        self.keep(&mut rows, key, bytes, share);
    }

    fn keep(&self, rows: &mut Rows, key: RowKey, bytes: Bytes, share: Weak<MemoryReservation>) {
        if bytes.len() > self.max_bytes {
            return;
        }
        rows.remove(&key);
        let stamp = rows.next_use;
        rows.next_use += 1;
        rows.held += bytes.len();
        rows.by_key.insert(key, (CachedRow { bytes, share }, stamp));
        rows.by_use.insert(stamp, key);
        while rows.held > self.max_bytes {
            let Some((_, oldest)) = rows.by_use.pop_first() else {
                break;
            };
            if let Some((dropped, _)) = rows.by_key.remove(&oldest) {
                rows.held -= dropped.bytes.len();
            }
        }
    }

    /// Bytes held now.
    pub fn held_bytes(&self) -> usize {
        self.rows.lock().expect("not poisoned").held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(blob: u8, segment: u32, row: u16) -> RowKey {
        RowKey {
            blob: BlobId([blob; 32]),
            segment,
            row,
        }
    }

    #[test]
    fn the_cache_holds_at_most_its_bound_and_drops_the_least_recently_used() {
        let cache = SegmentCache::new(10);
        cache.put(key(1, 0, 0), Bytes::from(vec![1; 4]), Weak::new());
        cache.put(key(1, 0, 1), Bytes::from(vec![2; 4]), Weak::new());
        assert!(
            cache.get(key(1, 0, 0)).is_some(),
            "used: now the most recent"
        );
        cache.put(key(2, 0, 0), Bytes::from(vec![3; 4]), Weak::new());
        assert_eq!(cache.held_bytes(), 8);
        assert!(
            cache.get(key(1, 0, 1)).is_none(),
            "the least recently used left"
        );
        assert_eq!(cache.get(key(1, 0, 0)).unwrap().bytes[0], 1);
        assert_eq!(cache.get(key(2, 0, 0)).unwrap().bytes[0], 3);
        assert!(cache.get(key(1, 1, 0)).is_none(), "another segment");
    }

    #[test]
    fn a_kept_row_remembers_the_share_its_readers_hold_until_it_is_renewed() {
        let cache = SegmentCache::new(10);
        let first = std::sync::Arc::new(MemoryReservation::default());
        cache.put(
            key(1, 0, 0),
            Bytes::from(vec![1; 4]),
            std::sync::Arc::downgrade(&first),
        );
        assert!(cache.get(key(1, 0, 0)).unwrap().share.upgrade().is_some());
        drop(first);
        assert!(
            cache.get(key(1, 0, 0)).unwrap().share.upgrade().is_none(),
            "no reader holds it any more"
        );
        let again = std::sync::Arc::new(MemoryReservation::default());
        let kept = cache.get(key(1, 0, 0)).unwrap().bytes;
        cache.renew(
            key(1, 0, 0),
            &Bytes::from(vec![1; 4]),
            std::sync::Arc::downgrade(&again),
        );
        assert!(
            cache.get(key(1, 0, 0)).unwrap().share.upgrade().is_none(),
            "other bytes than the row kept renew nothing"
        );
        cache.renew(key(1, 0, 0), &kept, std::sync::Arc::downgrade(&again));
        assert!(cache.get(key(1, 0, 0)).unwrap().share.upgrade().is_some());
        assert_eq!(cache.held_bytes(), 4, "renewing keeps the same bytes");
    }

    #[test]
    fn a_row_kept_only_if_new_never_replaces_one_kept() {
        let cache = SegmentCache::new(10);
        let held = std::sync::Arc::new(MemoryReservation::default());
        cache.put(
            key(1, 0, 0),
            Bytes::from(vec![1; 4]),
            std::sync::Arc::downgrade(&held),
        );
        cache.put_new(key(1, 0, 0), Bytes::from(vec![2; 4]));
        let kept = cache.get(key(1, 0, 0)).unwrap();
        assert_eq!(kept.bytes[..], [1; 4]);
        assert!(kept.share.upgrade().is_some());
        cache.put_new(key(1, 0, 1), Bytes::from(vec![3; 4]));
        assert_eq!(cache.get(key(1, 0, 1)).unwrap().bytes[..], [3; 4]);
    }

    #[test]
    fn keeping_a_row_again_replaces_it_and_counts_it_once() {
        let cache = SegmentCache::new(10);
        cache.put(key(1, 0, 0), Bytes::from(vec![1; 4]), Weak::new());
        cache.put(key(1, 0, 0), Bytes::from(vec![2; 6]), Weak::new());
        assert_eq!(cache.held_bytes(), 6);
        assert_eq!(cache.get(key(1, 0, 0)).unwrap().bytes[..], [2; 6]);
    }

    #[test]
    fn a_row_larger_than_the_bound_or_a_zero_bound_keeps_nothing() {
        let cache = SegmentCache::new(3);
        cache.put(key(1, 0, 0), Bytes::from(vec![1; 4]), Weak::new());
        assert_eq!(cache.held_bytes(), 0);
        let none = SegmentCache::new(0);
        none.put(key(1, 0, 0), Bytes::from(vec![1; 1]), Weak::new());
        assert!(none.get(key(1, 0, 0)).is_none());
    }
}
