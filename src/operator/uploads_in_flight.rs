//! Blob ingests uploading to a cluster, kept apart from what must not
//! overlap them. Blobs are content-addressed, and an ingest's blob id is
//! known to the API only once its Blob's status is written, so until then
//! the fleet holds bytes no Blob names:
//! - a delete racing the ingest could leave the new Blob naming bytes a
//!   tombstone removed: a delete waits (retried) while an upload is in
//!   flight, and an upload waits while a delete runs;
//! - the upload recorder would take them for an upload through the gateway
//!   and make a record naming them (deleting the Blob then kept its bytes
//!   for the record): uploads are recorded only from a list of Blobs taken
//!   while no upload was in flight, and only if none began since; an
//!   upload that failed counts as in flight for a while longer, as the
//!   gateway may have stored its bytes all the same.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use super::context::ClusterKey;

/// Uploads and deletes per cluster.
#[derive(Debug, Clone, Default)]
pub struct UploadsInFlight(Arc<Mutex<BTreeMap<ClusterKey, Arc<ClusterUploads>>>>);

/// One cluster's uploads.
#[derive(Debug, Default)]
struct ClusterUploads {
    /// Read by uploads, written by deletes.
    exclusion: Arc<RwLock<()>>,
    /// Uploads in flight, and uploads ever begun.
    counts: Mutex<UploadCounts>,
}

/// Uploads in flight, uploads ever begun, and until when a failed one
/// may still be named by its Blob's retry.
#[derive(Debug, Default, Clone, Copy)]
struct UploadCounts {
    in_flight: usize,
    begun: u64,
    unsettled_until: Option<std::time::Instant>,
}

/// How long after an upload failed its bytes count as in flight: the
/// gateway may have stored them (its answer lost), and its Blob's next
/// attempt (30 s on) names them.
pub const UNSETTLED_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// One upload in flight: deletes of its cluster wait, and its uploads are
/// not recorded, until it is dropped (once its Blob names what it stored).
#[derive(Debug)]
pub struct UploadInFlight {
    uploads: Arc<ClusterUploads>,
    _guard: OwnedRwLockReadGuard<()>,
}

impl UploadInFlight {
    /// Ends a failed upload whose bytes the gateway may have stored all
    /// the same: uploads are not recorded for [`UNSETTLED_FOR`].
    pub fn unsettled(self) {
        self.uploads
            .counts
            .lock()
            .expect("not poisoned")
            .unsettled_until = Some(std::time::Instant::now() + UNSETTLED_FOR);
    }
}

impl Drop for UploadInFlight {
    fn drop(&mut self) {
        self.uploads.counts.lock().expect("not poisoned").in_flight -= 1;
    }
}

/// One delete under way: uploads to its cluster wait until it is dropped.
#[derive(Debug)]
pub struct DeleteUnderWay {
    _guard: OwnedRwLockWriteGuard<()>,
}

/// A moment no upload to a cluster was in flight: every blob an ingest
/// stored before it is named by its Blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoUploadInFlight {
    begun: u64,
}

impl UploadsInFlight {
    fn of(&self, cluster: &ClusterKey) -> Arc<ClusterUploads> {
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
        let uploads = self.of(cluster);
        async move {
            let guard = uploads.exclusion.clone().read_owned().await;
            {
                let mut counts = uploads.counts.lock().expect("not poisoned");
                counts.in_flight += 1;
                counts.begun += 1;
            }
            UploadInFlight {
                uploads,
                _guard: guard,
            }
        }
    }

    /// A delete of `cluster`'s blobs, holding uploads off until the guard
    /// is dropped; `None` while an upload is in flight.
    pub fn delete(&self, cluster: &ClusterKey) -> Option<DeleteUnderWay> {
        let guard = self.of(cluster).exclusion.clone().try_write_owned().ok()?;
        Some(DeleteUnderWay { _guard: guard })
    }

    /// Now, if no upload to `cluster` is in flight, nor one failed within
    /// [`UNSETTLED_FOR`]: Blobs listed after it name every blob an ingest
    /// stored before it.
    pub fn none_in_flight(&self, cluster: &ClusterKey) -> Option<NoUploadInFlight> {
        let counts = *self.of(cluster).counts.lock().expect("not poisoned");
        let settled = counts
            .unsettled_until
            .is_none_or(|until| std::time::Instant::now() >= until);
        (counts.in_flight == 0 && settled).then_some(NoUploadInFlight {
            begun: counts.begun,
        })
    }

    /// Whether no upload to `cluster` began since `since`: then whatever
    /// the fleet holds that Blobs listed after `since` do not name was not
    /// stored by an ingest.
    pub fn none_began_since(&self, cluster: &ClusterKey, since: NoUploadInFlight) -> bool {
        self.of(cluster).counts.lock().expect("not poisoned").begun == since.begun
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

    #[tokio::test]
    async fn uploads_are_recorded_only_from_a_moment_none_was_in_flight_and_none_began_since() {
        let uploads = UploadsInFlight::default();
        let quiet = uploads.none_in_flight(&key("media")).expect("none yet");
        assert!(uploads.none_began_since(&key("media"), quiet));
        let uploading = uploads.begin(&key("media")).await;
        assert!(
            !uploads.none_began_since(&key("media"), quiet),
            "an upload began after the Blobs were listed"
        );
        assert_eq!(uploads.none_in_flight(&key("media")), None);
        let other = uploads.none_in_flight(&key("other")).unwrap();
        drop(uploading);
        // Begun and ended between the two looks: its Blob may have been
        // listed before it named the blob.
        assert!(!uploads.none_began_since(&key("media"), quiet));
        let after = uploads.none_in_flight(&key("media")).expect("it ended");
        assert!(uploads.none_began_since(&key("media"), after));
        assert!(uploads.none_began_since(&key("other"), other));
    }

    #[tokio::test]
    async fn an_upload_that_failed_holds_records_off_a_while_as_its_bytes_may_be_stored() {
        let uploads = UploadsInFlight::default();
        let failed = uploads.begin(&key("media")).await;
        failed.unsettled();
        assert_eq!(uploads.none_in_flight(&key("media")), None);
        assert!(uploads.delete(&key("media")).is_some(), "deletes go on");
        assert!(uploads.none_in_flight(&key("other")).is_some());
    }
}
