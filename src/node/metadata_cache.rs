//! Parsed metadata kept in memory, bounded in bytes: every sliver and
//! symbol request needs its blob's metadata, and parsing it each time
//! would cost more than the request. The least recently used entries go
//! first when the bound is reached.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::codec::{BlobId, BlobMetadata};

struct Entry {
    metadata: Arc<BlobMetadata>,
    bytes: u64,
    used: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<BlobId, Entry>,
    /// Last use tick -> blob, oldest first.
    by_use: BTreeMap<u64, BlobId>,
    bytes: u64,
    tick: u64,
}

/// A byte-bounded cache of parsed metadata.
pub(super) struct MetadataCache {
    max_bytes: u64,
    inner: Mutex<Inner>,
}

/// What an entry costs: the hashes it holds plus a fixed overhead.
fn cost(metadata: &BlobMetadata) -> u64 {
    metadata.layout().metadata_len() + 256
}

impl MetadataCache {
    /// An empty cache holding at most `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry of `id`, marked used.
    pub fn get(&self, id: &BlobId) -> Option<Arc<BlobMetadata>> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.entries.get_mut(id)?;
        let old = std::mem::replace(&mut entry.used, tick);
        let metadata = entry.metadata.clone();
        inner.by_use.remove(&old);
        inner.by_use.insert(tick, *id);
        Some(metadata)
    }

    /// Keeps `metadata`, evicting the least recently used entries to stay
    /// within the bound; metadata larger than the whole bound is not kept.
    pub fn insert(&self, metadata: Arc<BlobMetadata>) {
        let bytes = cost(&metadata);
        if bytes > self.max_bytes {
            return;
        }
        let id = metadata.blob_id();
        let mut inner = self.lock();
        remove(&mut inner, &id);
        while inner.bytes + bytes > self.max_bytes {
            let Some((_, oldest)) = inner.by_use.pop_first() else {
                break;
            };
            if let Some(entry) = inner.entries.remove(&oldest) {
                inner.bytes -= entry.bytes;
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.by_use.insert(tick, id);
        inner.bytes += bytes;
        inner.entries.insert(
            id,
            Entry {
                metadata,
                bytes,
                used: tick,
            },
        );
    }

    /// Drops the entry of `id`.
    pub fn forget(&self, id: &BlobId) {
        remove(&mut self.lock(), id);
    }

    /// Bytes held and entries, for tests and metrics.
    pub fn usage(&self) -> (u64, usize) {
        let inner = self.lock();
        (inner.bytes, inner.entries.len())
    }
}

fn remove(inner: &mut Inner, id: &BlobId) {
    if let Some(entry) = inner.entries.remove(id) {
        inner.by_use.remove(&entry.used);
        inner.bytes -= entry.bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{BlobEncoder, EncodingConfig};

    fn metadata(seed: u8) -> Arc<BlobMetadata> {
        let data = vec![seed; 100];
        let (metadata, _) = BlobEncoder::new(EncodingConfig::new(4).unwrap(), 1 << 20)
            .unwrap()
            .encode(&data)
            .unwrap();
        Arc::new(metadata)
    }

    #[test]
    fn the_cache_stays_within_its_bytes_and_drops_the_least_recently_used() {
        let one = cost(&metadata(0));
        let cache = MetadataCache::new(3 * one);
        for seed in 0..3 {
            cache.insert(metadata(seed));
        }
        assert_eq!(cache.usage(), (3 * one, 3));
        assert!(cache.get(&metadata(0).blob_id()).is_some());
        cache.insert(metadata(3));
        assert_eq!(cache.usage(), (3 * one, 3));
        assert!(
            cache.get(&metadata(1).blob_id()).is_none(),
            "least recently used"
        );
        assert!(cache.get(&metadata(0).blob_id()).is_some());
        cache.forget(&metadata(0).blob_id());
        assert_eq!(cache.usage(), (2 * one, 2));
        let tiny = MetadataCache::new(one - 1);
        tiny.insert(metadata(5));
        assert_eq!(tiny.usage(), (0, 0));
    }
}
