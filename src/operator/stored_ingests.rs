//! Blobs ingests stored whose Blob's status does not name them yet. The
//! status write after an upload can fail (the API server down, a
//! conflict): the id is kept here, per Blob, so the next reconcile writes
//! it instead of fetching and storing the source again, the upload
//! recorder does not take the bytes for an upload through the gateway,
//! and deleting the Blob deletes them. Kept in memory: an operator that
//! restarts meanwhile ingests the source again (the same bytes, the same
//! id).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::context::ClusterKey;

/// Per Blob (by uid), the id its ingest stored and the cluster it is in.
#[derive(Debug, Clone, Default)]
pub struct StoredIngests(Arc<Mutex<BTreeMap<String, (ClusterKey, String)>>>);

impl StoredIngests {
    /// Keeps `blob_id`, which the ingest of the Blob `uid` stored in
    /// `cluster`, until [`StoredIngests::named`].
    pub fn stored(&self, uid: &str, cluster: ClusterKey, blob_id: String) {
        self.0
            .lock()
            .expect("not poisoned")
            .insert(uid.to_string(), (cluster, blob_id));
    }

    /// The id the ingest of Blob `uid` stored, if its status may not name it.
    pub fn of(&self, uid: &str) -> Option<String> {
        self.0
            .lock()
            .expect("not poisoned")
            .get(uid)
            .map(|(_, id)| id.clone())
    }

    /// Forgets Blob `uid`'s id: its status names it, or the Blob is gone.
    pub fn named(&self, uid: &str) {
        self.0.lock().expect("not poisoned").remove(uid);
    }

    /// Whether a Blob other than `uid` stored `blob_id` in `cluster` and
    /// may not name it yet (its bytes are that Blob's too).
    pub fn stored_for_another(&self, uid: &str, cluster: &ClusterKey, blob_id: &str) -> bool {
        self.0
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|(other, (c, id))| other != uid && c == cluster && id == blob_id)
    }

    /// The ids stored in `cluster` that their Blobs may not name yet.
    pub fn ids_in(&self, cluster: &ClusterKey) -> BTreeSet<String> {
        self.0
            .lock()
            .expect("not poisoned")
            .values()
            .filter(|(c, _)| c == cluster)
            .map(|(_, id)| id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ClusterKey {
        ("storage".to_string(), name.to_string())
    }

    #[test]
    fn an_ingests_id_is_kept_per_blob_until_its_status_names_it() {
        let stored = StoredIngests::default();
        stored.stored("uid-1", key("media"), "id-a".into());
        stored.stored("uid-2", key("other"), "id-b".into());
        assert_eq!(stored.of("uid-1").as_deref(), Some("id-a"));
        assert_eq!(
            stored.ids_in(&key("media")),
            BTreeSet::from(["id-a".to_string()])
        );
        assert!(stored.stored_for_another("uid-3", &key("media"), "id-a"));
        assert!(
            !stored.stored_for_another("uid-1", &key("media"), "id-a"),
            "its own"
        );
        assert!(!stored.stored_for_another("uid-3", &key("other"), "id-a"));
        stored.named("uid-1");
        assert_eq!(stored.of("uid-1"), None);
        assert!(stored.ids_in(&key("media")).is_empty());
        assert_eq!(stored.ids_in(&key("other")).len(), 1);
    }
}
