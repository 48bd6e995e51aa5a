//! Blob ingests uploading to a cluster, and deletes of the cluster's
//! blobs, kept apart. Blobs are content-addressed: an ingest may be storing
//! the very bytes another Blob of the cluster is being deleted for, and its
//! id is known only once its status is written, so a delete racing it
//! could leave the new Blob naming bytes a tombstone removed. A delete
//! therefore waits (retried) while an upload is in flight, until its Blob
//! names what it stored, and an upload waits while a delete runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use super::context::ClusterKey;

/// Uploads and deletes per cluster.
#[derive(Debug, Clone, Default)]
pub struct UploadsInFlight(Arc<Mutex<BTreeMap<ClusterKey, Arc<RwLock<()>>>>>);

/// One upload in flight: deletes of its cluster wait until it is dropped.
#[derive(Debug)]
pub struct UploadInFlight {
    _guard: OwnedRwLockReadGuard<()>,
}

/// One delete under way: uploads to its cluster wait until it is dropped.
#[derive(Debug)]
pub struct DeleteUnderWay {
    _guard: OwnedRwLockWriteGuard<()>,
}

impl UploadsInFlight {
    fn of(&self, cluster: &ClusterKey) -> Arc<RwLock<()>> {
        self.0
            .lock()
            .expect("not poisoned")
            .entry(cluster.clone())
            .or_default()
            .clone()
    }

    /// Counts an upload to `cluster` until the guard is dropped, once no
    /// delete of the cluster's blobs is under way.
    pub fn begin(&self, cluster: &ClusterKey) -> impl std::future::Future<Output = UploadInFlight> {
        let lock = self.of(cluster);
        async move {
            UploadInFlight {
                _guard: lock.read_owned().await,
            }
        }
    }

    /// A delete of `cluster`'s blobs, holding uploads off until the guard
    /// is dropped; `None` while an upload is in flight.
    pub fn delete(&self, cluster: &ClusterKey) -> Option<DeleteUnderWay> {
        let guard = self.of(cluster).try_write_owned().ok()?;
        Some(DeleteUnderWay { _guard: guard })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(name: &str) -> ClusterKey {
        ("storage".to_string(), name.to_string())
    }

    #[tokio::test]
    async fn a_delete_waits_for_every_upload_to_its_cluster_and_only_its_own() {
        let uploads = UploadsInFlight::default();
        let first = uploads.begin(&key("media")).await;
        let second = uploads.begin(&key("media")).await;
        assert!(uploads.delete(&key("media")).is_none());
        assert!(uploads.delete(&key("other")).is_some());
        drop(first);
        assert!(uploads.delete(&key("media")).is_none());
        drop(second);
        assert!(uploads.delete(&key("media")).is_some());
    }

    #[tokio::test]
    async fn an_upload_waits_while_a_delete_of_its_cluster_is_under_way() {
        let uploads = UploadsInFlight::default();
        let deleting = uploads.delete(&key("media")).unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(100), uploads.begin(&key("media")));
        assert!(waited.await.is_err(), "held off");
        let other = tokio::time::timeout(Duration::from_millis(100), uploads.begin(&key("other")));
        assert!(other.await.is_ok());
        drop(deleting);
        let after = tokio::time::timeout(Duration::from_secs(5), uploads.begin(&key("media")));
        assert!(after.await.is_ok());
    }
}
