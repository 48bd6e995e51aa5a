//! Which uploads through the gateway get a Blob recording them: every
//! readable blob of the view that no Blob of its cluster names yet and
//! that S3 does not hold, a bounded number per reconcile. The Blobs are
//! listed a page at a time, keeping only the ids they name, so a namespace
//! of a hundred thousand records is never held whole.

use std::collections::BTreeSet;

use kube::api::{Api, ListParams};

use super::crd::{Blob, StorageCluster};
use crate::codec::BlobId;
use crate::control::FleetView;

/// Blobs asked per page of the list.
const LIST_PAGE: u32 = 500;

/// Records made at most per reconcile: a fleet that took many uploads
/// since the last one (a bucket synced through S3) records them over a few
/// reconciles instead of holding one up for minutes of API calls.
pub const MOST_RECORDED_AT_ONCE: usize = 200;

/// The annotation on the Blobs the operator makes to record uploads.
pub const RECORDED_BY_ANNOTATION: &str = "redstuff.dev/recorded-by";

/// Whether `blob` is a record the operator made of an upload (not a Blob
/// a person made, even one naming an uploaded blob).
pub fn is_operator_record(blob: &Blob) -> bool {
    blob.spec.source.upload.is_some()
        && blob
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(RECORDED_BY_ANNOTATION))
}

/// Why deleting `blob` must leave its blob on `cluster`'s nodes: it is a
/// Blob the cluster owns (the operator's record of an upload) and it goes
/// with its cluster, not because a person deleted the blob. Either the
/// cluster that owned it is gone and `cluster` is a new one of the same
/// name (running on the kept claims, which hold the blob), or `cluster`
/// itself is being deleted (its claims may be kept). None for any other
/// Blob, which deletes what it names.
pub fn goes_with_its_cluster(blob: &Blob, cluster: &StorageCluster) -> Option<String> {
    let owner = blob
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "StorageCluster" && o.name == blob.spec.cluster)?;
    let name = &blob.spec.cluster;
    if cluster.metadata.uid.as_deref() != Some(owner.uid.as_str()) {
        return Some(format!(
            "the StorageCluster {name} that recorded it was deleted: the blob stays on \
             the claims the StorageCluster of that name now runs on"
        ));
    }
    cluster.metadata.deletion_timestamp.is_some().then(|| {
        format!(
            "StorageCluster {name} is being deleted: its records go, the blob stays on its claims"
        )
    })
}

/// The blob id a Blob names: ingested, or uploaded.
fn recorded_blob_id(blob: &Blob) -> Option<String> {
    blob.status
        .as_ref()
        .and_then(|s| s.blob_id.clone())
        .or_else(|| blob.spec.source.upload.as_ref().map(|u| u.blob_id.clone()))
}

/// What the Blobs of a namespace say of one cluster's uploads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordedBlobs {
    /// The blob ids the cluster's Blobs name.
    pub ids: BTreeSet<String>,
    /// Names of Blobs (of any cluster) that begin like the cluster's
    /// upload records: taken, whichever blob they name.
    pub record_names: BTreeSet<String>,
}

/// Shows `visit` every Blob of `blobs`, listed a page at a time (a large
/// namespace's Blobs are never asked for in one answer).
pub async fn visit_blobs(
    blobs: &Api<Blob>,
    mut visit: impl FnMut(&Blob),
) -> Result<(), kube::Error> {
    let mut params = ListParams::default().limit(LIST_PAGE);
    loop {
        let page = blobs.list(&params).await?;
        page.items.iter().for_each(&mut visit);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

/// The ids the Blobs of cluster `cluster` name, and the names taken
/// among its records'.
pub async fn recorded_blob_ids(
    blobs: &Api<Blob>,
    cluster: &str,
) -> Result<RecordedBlobs, kube::Error> {
    let mut recorded = RecordedBlobs::default();
    let prefix = format!("{cluster}-upload-");
    visit_blobs(blobs, |b| {
        if b.spec.cluster == cluster {
            recorded.ids.extend(recorded_blob_id(b));
        }
        if let Some(name) = b.metadata.name.as_ref().filter(|n| n.starts_with(&prefix)) {
            recorded.record_names.insert(name.clone());
        }
    })
    .await?;
    Ok(recorded)
}

/// The blobs of `view` a record could be made of, in id order: readable
/// (at least `p` complete shards; fewer is an interrupted upload or
/// leftovers), not named by a Blob in `recorded`, and not among
/// `s3_blobs` (the bytes of S3 objects and parts, which S3 lists).
pub fn unrecorded_uploads<'a>(
    view: &'a FleetView,
    recorded: &'a BTreeSet<String>,
    s3_blobs: &'a BTreeSet<String>,
    p: usize,
) -> impl Iterator<Item = &'a str> {
    view.blobs
        .iter()
        .filter(move |(id, blob)| {
            !recorded.contains(*id) && !s3_blobs.contains(*id) && blob.complete_shards.len() >= p
        })
        .map(|(id, _)| id.as_str())
}

/// The blobs of `view` to record now in a cluster without S3: the first
/// `most` of `unrecorded_uploads`.
pub fn uploads_to_record<'a>(
    view: &'a FleetView,
    recorded: &'a BTreeSet<String>,
    p: usize,
    most: usize,
) -> Vec<&'a str> {
    static NONE: BTreeSet<String> = BTreeSet::new();
    unrecorded_uploads(view, recorded, &NONE, p)
        .take(most)
        .collect()
}

/// The name of the Blob recording an upload to cluster `cluster`:
/// `CLUSTER-upload-` and the first 8 bytes of the id in hex (ids are
/// mixed-case; names must be lowercase). The cluster's name keeps the
/// records of two clusters of one namespace that took the same bytes
/// apart.
pub fn upload_record_name(cluster: &str, id: &str) -> Option<String> {
    let id: BlobId = id.parse().ok()?;
    Some(format!(
        "{cluster}-upload-{}",
        crate::hex::encode(&id.as_bytes()[..8])
    ))
}

/// The name of a new record of upload `id`: `upload_record_name`, or,
/// when a Blob of another blob holds that name (two ids sharing their
/// first 8 bytes), the whole id in hex, so neither record replaces the
/// other.
pub fn new_upload_record_name(cluster: &str, id: &str, taken: &BTreeSet<String>) -> Option<String> {
    let short = upload_record_name(cluster, id)?;
    if !taken.contains(&short) {
        return Some(short);
    }
    let id: BlobId = id.parse().ok()?;
    Some(format!(
        "{cluster}-upload-{}",
        crate::hex::encode(id.as_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::BlobView;

    #[test]
    fn a_record_name_another_blobs_record_holds_gives_way_to_the_whole_id() {
        let id = crate::codec::BlobId([7; 32]).to_string();
        let short = upload_record_name("media", &id).unwrap();
        assert_eq!(short, "media-upload-0707070707070707");
        assert_eq!(
            new_upload_record_name("media", &id, &BTreeSet::new()).as_deref(),
            Some(short.as_str())
        );
        let long = new_upload_record_name("media", &id, &[short].into()).unwrap();
        assert_eq!(long, format!("media-upload-{}", "07".repeat(32)));
        assert!(long.len() <= 253, "a DNS subdomain: {long}");
        assert_eq!(
            new_upload_record_name("media", "not-an-id", &BTreeSet::new()),
            None
        );
    }

    #[test]
    fn readable_unrecorded_blobs_are_recorded_a_bounded_number_at_a_time() {
        let mut view = FleetView::default();
        for (id, complete) in [("a", 3), ("b", 1), ("c", 2), ("d", 4), ("e", 2)] {
            view.blobs.insert(
                id.into(),
                BlobView {
                    complete_shards: (0..complete).collect(),
                    ..BlobView::default()
                },
            );
        }
        let recorded: BTreeSet<String> = ["c".to_string()].into();
        assert_eq!(uploads_to_record(&view, &recorded, 2, 10), ["a", "d", "e"]);
        assert_eq!(uploads_to_record(&view, &recorded, 2, 2), ["a", "d"]);
        assert!(uploads_to_record(&view, &recorded, 2, 0).is_empty());
        let s3: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        assert_eq!(
            unrecorded_uploads(&view, &recorded, &s3, 2).collect::<Vec<_>>(),
            ["d", "e"],
            "S3's blobs are never recorded"
        );
    }

    #[test]
    fn two_clusters_record_the_same_bytes_under_names_of_their_own() {
        let id = BlobId([7; 32]).to_string();
        let a = upload_record_name("a", &id).unwrap();
        let b = upload_record_name("b", &id).unwrap();
        assert_ne!(a, b);
        assert!(
            a.starts_with("a-upload-") && a.len() == "a-upload-".len() + 16,
            "{a}"
        );
        assert_eq!(upload_record_name("a", "not an id"), None);
    }
}
