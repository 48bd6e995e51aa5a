//! The status this operator process last wrote to each Blob, until its
//! watch cache shows it. A Blob's own status write wakes its reconcile
//! again at once, and that reconcile reads the Blob from the cache, which
//! can trail the write: without this it would act on the status before
//! (an ingest with no id yet fetched and stored the whole source again, a
//! failed one was tried again before its next attempt, a Blob deleted
//! meanwhile was released with its bytes left). Only the operator writes
//! a Blob's status, so what it wrote is the newest; a remembered status
//! older than [`TRUSTED_FOR`] gives way to what is read (a status edited by
//! hand, another leader's writes).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::crd::BlobStatus;

/// How long a written status counts as newer than a different one read.
pub const TRUSTED_FOR: Duration = Duration::from_secs(120);

/// Per Blob (by uid), the status last written and when.
#[derive(Debug, Clone, Default)]
pub struct WrittenStatuses(Arc<Mutex<BTreeMap<String, (BlobStatus, Instant)>>>);

impl WrittenStatuses {
    /// Remembers that `status` was written to Blob `uid` just now, as the
    /// API gives it back (times to the second), and forgets what no longer
    /// counts (statuses of Blobs gone without a word, among them).
    pub fn wrote(&self, uid: &str, status: BlobStatus) {
        self.wrote_at(uid, status, Instant::now());
    }

    fn wrote_at(&self, uid: &str, status: BlobStatus, now: Instant) {
        let status = serde_json::to_value(&status)
            .and_then(serde_json::from_value)
            .unwrap_or(status);
        let mut written = self.0.lock().expect("not poisoned");
        written.retain(|_, (_, at)| now.saturating_duration_since(*at) < TRUSTED_FOR);
        written.insert(uid.to_string(), (status, now));
    }

    /// The newest status of Blob `uid`, given the one `read` from the
    /// cache: the one written last unless the read one shows it already
    /// (then it is forgotten) or it is older than [`TRUSTED_FOR`].
    pub fn newest(&self, uid: &str, read: Option<&BlobStatus>) -> Option<BlobStatus> {
        self.newest_at(uid, read, Instant::now())
    }

    fn newest_at(&self, uid: &str, read: Option<&BlobStatus>, now: Instant) -> Option<BlobStatus> {
        let mut written = self.0.lock().expect("not poisoned");
        match written.get(uid) {
            Some((status, at))
                if read != Some(status) && now.saturating_duration_since(*at) < TRUSTED_FOR =>
            {
                Some(status.clone())
            }
            Some(_) => {
                written.remove(uid);
                read.cloned()
            }
            None => read.cloned(),
        }
    }

    /// Forgets Blob `uid` (it is gone).
    pub fn forget(&self, uid: &str) {
        self.0.lock().expect("not poisoned").remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(id: &str) -> BlobStatus {
        BlobStatus {
            blob_id: Some(id.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_written_status_is_the_newest_until_the_cache_shows_it() {
        let written = WrittenStatuses::default();
        assert_eq!(written.newest("uid", None), None, "nothing written");
        written.wrote("uid", named("a"));
        assert_eq!(
            written.newest("uid", Some(&BlobStatus::default())),
            Some(named("a")),
            "the cache trails"
        );
        assert_eq!(written.newest("uid", None), Some(named("a")));
        assert_eq!(written.newest("uid", Some(&named("a"))), Some(named("a")));
        // Shown by the cache, it is forgotten: what is read counts again.
        assert_eq!(written.newest("uid", Some(&named("b"))), Some(named("b")));
        assert_eq!(written.newest("other", None), None);
    }

    #[test]
    fn a_written_status_gives_way_to_a_different_one_read_after_a_while() {
        let written = WrittenStatuses::default();
        written.wrote("uid", named("a"));
        let later = Instant::now() + TRUSTED_FOR + Duration::from_secs(1);
        let edited = BlobStatus::default();
        assert_eq!(written.newest_at("uid", Some(&edited), later), Some(edited));
        assert_eq!(written.newest("uid", None), None, "forgotten");
    }

    #[test]
    fn a_written_status_with_times_finer_than_a_second_is_forgotten_once_the_cache_shows_it() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
        let at = "2026-12-07T10:00:00.734Z".parse().unwrap();
        let status = BlobStatus {
            conditions: vec![Condition {
                type_: "Ingested".into(),
                status: "True".into(),
                reason: "Stored".into(),
                message: String::new(),
                last_transition_time: Time(at),
                observed_generation: Some(1),
            }],
            ..named("a")
        };
        let read_back: BlobStatus =
            serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
        assert_ne!(read_back, status, "the API keeps whole seconds");
        let written = WrittenStatuses::default();
        written.wrote("uid", status);
        assert_eq!(written.newest("uid", Some(&read_back)), Some(read_back));
        let edited = BlobStatus::default();
        assert_eq!(
            written.newest("uid", Some(&edited)),
            Some(edited),
            "forgotten once shown"
        );
    }

    #[test]
    fn statuses_of_blobs_never_reconciled_again_are_forgotten_by_later_writes() {
        let written = WrittenStatuses::default();
        let start = Instant::now();
        written.wrote_at("gone", named("a"), start);
        written.wrote_at("uid", named("b"), start + TRUSTED_FOR);
        assert_eq!(written.0.lock().unwrap().len(), 1);
        assert_eq!(written.newest("gone", None), None);
    }

    #[test]
    fn a_forgotten_blob_has_the_status_read() {
        let written = WrittenStatuses::default();
        written.wrote("uid", named("a"));
        written.forget("uid");
        assert_eq!(written.newest("uid", None), None);
    }
}
