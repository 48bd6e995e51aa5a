//! The Blob ingests of each cluster whose upload to the gateway is under
//! way, until their Blob's status names the id. Blobs are
//! content-addressed: such an ingest may be storing the very bytes another
//! Blob of the cluster is being deleted for, and its id is known only once
//! its status is written; the delete waits until then (a delete racing it
//! could leave the new Blob naming bytes a tombstone removed).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::context::ClusterKey;

/// Uploads in flight per cluster.
#[derive(Debug, Clone, Default)]
pub struct UploadsInFlight(Arc<Mutex<BTreeMap<ClusterKey, usize>>>);

/// One upload in flight, counted until dropped.
#[derive(Debug)]
pub struct UploadInFlight {
    uploads: UploadsInFlight,
    cluster: ClusterKey,
}

impl UploadsInFlight {
    /// Counts an upload to `cluster` until the guard is dropped.
    pub fn begin(&self, cluster: ClusterKey) -> UploadInFlight {
        *self
            .0
            .lock()
            .expect("not poisoned")
            .entry(cluster.clone())
            .or_default() += 1;
        UploadInFlight {
            uploads: self.clone(),
            cluster,
        }
    }

    /// Whether an upload to `cluster` is in flight.
    pub fn any(&self, cluster: &ClusterKey) -> bool {
        self.0.lock().expect("not poisoned").contains_key(cluster)
    }
}

impl Drop for UploadInFlight {
    fn drop(&mut self) {
        let mut counts = self.uploads.0.lock().expect("not poisoned");
        if let Some(count) = counts.get_mut(&self.cluster) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.cluster);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_counts_for_its_cluster_until_its_guard_goes() {
        let uploads = UploadsInFlight::default();
        let media = ("storage".to_string(), "media".to_string());
        let other = ("storage".to_string(), "other".to_string());
        let first = uploads.begin(media.clone());
        let second = uploads.begin(media.clone());
        assert!(uploads.any(&media));
        assert!(!uploads.any(&other));
        drop(first);
        assert!(uploads.any(&media));
        drop(second);
        assert!(!uploads.any(&media));
    }
}
