//! Decoded segments kept for the next read (a gateway's, bounded in
//! bytes): clients that read a large object in ranges smaller than a
//! segment (the aws cli: 8 MiB of a 64 MiB segment) would otherwise decode
//! the same segment once per range. A blob id fixes its bytes, and every
//! read checks visibility before it looks here, so a cached segment is
//! never stale and a deleted blob is never served from it.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::codec::{BlobId, SegmentData};

/// The cache: least recently used segments leave first.
#[derive(Debug)]
pub struct SegmentCache {
    max_bytes: usize,
    entries: Mutex<VecDeque<(BlobId, u32, SegmentData)>>,
}

impl SegmentCache {
    /// A cache holding at most `max_bytes` of segments (0: none).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            entries: Mutex::new(VecDeque::new()),
        }
    }

    /// Segment `index` of `blob`, if kept.
    pub fn get(&self, blob: &BlobId, index: u32) -> Option<SegmentData> {
        let mut entries = self.entries.lock().expect("not poisoned");
        let at = entries
            .iter()
            .position(|(b, i, _)| b == blob && *i == index)?;
        let entry = entries.remove(at)?;
        let data = entry.2.clone();
        entries.push_back(entry);
        Some(data)
    }

    /// Keeps segment `index` of `blob`, dropping the least recently used
    /// beyond the bound (a segment larger than the bound is not kept).
    pub fn put(&self, blob: BlobId, index: u32, data: SegmentData) {
        if data.len() > self.max_bytes {
            return;
        }
        let mut entries = self.entries.lock().expect("not poisoned");
        entries.retain(|(b, i, _)| !(*b == blob && *i == index));
        entries.push_back((blob, index, data));
        let mut held: usize = entries.iter().map(|(_, _, d)| d.len()).sum();
        while held > self.max_bytes {
            let Some((_, _, dropped)) = entries.pop_front() else {
                break;
            };
            held -= dropped.len();
        }
    }

    /// Bytes held now.
    pub fn held_bytes(&self) -> usize {
        let entries = self.entries.lock().expect("not poisoned");
        entries.iter().map(|(_, _, d)| d.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> BlobId {
        BlobId([n; 32])
    }

    #[test]
    fn the_cache_holds_at_most_its_bound_and_drops_the_least_recently_used() {
        let cache = SegmentCache::new(10);
        cache.put(id(1), 0, SegmentData::from(vec![1; 4]));
        cache.put(id(1), 1, SegmentData::from(vec![2; 4]));
        assert!(cache.get(&id(1), 0).is_some(), "used: now the most recent");
        cache.put(id(2), 0, SegmentData::from(vec![3; 4]));
        assert_eq!(cache.held_bytes(), 8);
        assert!(
            cache.get(&id(1), 1).is_none(),
            "the least recently used left"
        );
        assert_eq!(cache.get(&id(1), 0).unwrap().to_vec()[0], 1);
        assert_eq!(cache.get(&id(2), 0).unwrap().to_vec()[0], 3);
    }

    #[test]
    fn a_segment_larger_than_the_bound_or_a_zero_bound_keeps_nothing() {
        let cache = SegmentCache::new(3);
        cache.put(id(1), 0, SegmentData::from(vec![1; 4]));
        assert_eq!(cache.held_bytes(), 0);
        let none = SegmentCache::new(0);
        none.put(id(1), 0, SegmentData::from(vec![1; 1]));
        assert!(none.get(&id(1), 0).is_none());
    }
}
