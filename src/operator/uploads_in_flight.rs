//! Blob ingests uploading to a cluster, kept apart from what must not
//! overlap them. Blobs are content-addressed, and an ingest's blob id is
//! known to the API only once its Blob's status is written, so until then
//! the fleet holds bytes no Blob names:
//! - a delete racing the ingest could leave the new Blob naming bytes a
//!   tombstone removed: a delete waits (retried) while an upload is in
//!   flight or waiting, and an upload waits while a delete runs; deletes
//!   run together (a bulk delete of many Blobs is not one at a time);
//! - the upload recorder would take them for an upload through the gateway
//!   and make a record naming them (deleting the Blob then kept its bytes
//!   for the record): uploads are recorded only from a list of Blobs taken
//!   while no upload was in flight, and only if none began since; an
//!   upload that failed counts as in flight for a while longer, as the
//!   gateway may have stored its bytes all the same.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::context::ClusterKey;

/// Uploads and deletes per cluster.
#[derive(Debug, Clone, Default)]
pub struct UploadsInFlight(Arc<Mutex<BTreeMap<ClusterKey, Arc<ClusterUploads>>>>);

/// One cluster's uploads and deletes.
#[derive(Debug, Default)]
struct ClusterUploads {
    /// Uploads in flight and waiting, uploads ever begun, deletes.
    counts: Mutex<UploadCounts>,
    /// Told when the last delete ends (uploads waiting go on).
    deletes_ended: tokio::sync::Notify,
}

/// Uploads in flight and waiting to begin, uploads ever begun, until when
/// a failed one may still be named by its Blob's retry, and deletes
/// under way.
#[derive(Debug, Default, Clone, Copy)]
struct UploadCounts {
    in_flight: usize,
    waiting: usize,
    begun: u64,
    unsettled_until: Option<std::time::Instant>,
    deletes: usize,
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

/// One delete under way: uploads to its cluster wait until it, and every
/// other delete of the cluster, is dropped.
#[derive(Debug)]
pub struct DeleteUnderWay {
    uploads: Arc<ClusterUploads>,
}

impl Drop for DeleteUnderWay {
    fn drop(&mut self) {
        let mut counts = self.uploads.counts.lock().expect("not poisoned");
        counts.deletes -= 1;
        if counts.deletes == 0 {
            self.uploads.deletes_ended.notify_waiters();
        }
    }
}

/// An upload waiting to begin: counted so that no new delete starts
/// meanwhile (deletes one after another would hold it off for ever).
struct Waiting(Arc<ClusterUploads>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.counts.lock().expect("not poisoned").waiting -= 1;
    }
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
        uploads.counts.lock().expect("not poisoned").waiting += 1;
        let waiting = Waiting(uploads.clone());
        async move {
            loop {
                let ended = uploads.deletes_ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                {
                    let mut counts = uploads.counts.lock().expect("not poisoned");
                    if counts.deletes == 0 {
                        counts.in_flight += 1;
                        counts.begun += 1;
                        break;
                    }
                }
                ended.await;
            }
            drop(waiting);
            UploadInFlight { uploads }
        }
    }

    /// A delete of `cluster`'s blobs, holding uploads off until the guard
    /// is dropped (other deletes go on beside it); `None` while an upload
    /// is in flight or waiting to begin.
    pub fn delete(&self, cluster: &ClusterKey) -> Option<DeleteUnderWay> {
        let uploads = self.of(cluster);
        {
            let mut counts = uploads.counts.lock().expect("not poisoned");
            if counts.in_flight > 0 || counts.waiting > 0 {
                return None;
            }
            counts.deletes += 1;
        }
        Some(DeleteUnderWay { uploads })
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
    async fn deletes_of_one_cluster_go_on_together_and_an_upload_waits_for_them_all() {
        let uploads = UploadsInFlight::default();
        let first = uploads.delete(&key("media")).expect("nothing uploads");
        let second = uploads.delete(&key("media")).expect("deletes go together");
        let begin = uploads.begin(&key("media"));
        tokio::pin!(begin);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), begin.as_mut())
                .await
                .is_err(),
            "held off"
        );
        assert!(
            uploads.delete(&key("media")).is_none(),
            "no new delete while an upload waits"
        );
        drop(first);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), begin.as_mut())
                .await
                .is_err(),
            "one delete still runs"
        );
        drop(second);
        let uploading = tokio::time::timeout(Duration::from_secs(5), begin)
            .await
            .expect("every delete ended");
        assert!(uploads.delete(&key("media")).is_none());
        drop(uploading);
        assert!(uploads.delete(&key("media")).is_some());
    }

    #[tokio::test]
    async fn an_upload_given_up_while_it_waits_holds_no_delete_off() {
        let uploads = UploadsInFlight::default();
        let deleting = uploads.delete(&key("media")).unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(50), uploads.begin(&key("media")));
        assert!(waited.await.is_err());
        assert!(
            uploads.delete(&key("media")).is_some(),
            "not waiting any more"
        );
        drop(deleting);
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
