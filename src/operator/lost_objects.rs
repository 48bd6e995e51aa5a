//! Names what a loss took from S3: once per set of Lost blobs, the
//! cluster's gateway is asked which keys hold them (a scan of its index),
//! the keys go to the status, and keys not told of before to one Warning
//! Event. Blobs stored through the native API have Blobs of their own,
//! whose health says Lost; S3's objects have none, so without this a
//! loss could be counted but not named.

use std::collections::BTreeSet;

use kube::ResourceExt;

use super::context::{ClusterFleet, Context};
use super::crd::StorageCluster;
use crate::wire::{
    ObjectOfBlob, ObjectsOfBlobs, ObjectsOfBlobsRequest, MOST_OBJECTS_OF_BLOBS_ASKED,
};

/// Keys listed in the status (and asked for) at most.
pub const MOST_LOST_OBJECTS_LISTED: usize = 100;

/// Keys named in one Event at most.
const MOST_NAMED_IN_AN_EVENT: usize = 10;

/// The Lost blobs the gateway was asked about, and what it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// The blob ids asked about.
    pub asked: BTreeSet<String>,
    /// The keys holding them.
    pub found: ObjectsOfBlobs,
}

/// `bucket/key`, as the status and Events name an object.
pub fn object_name(object: &ObjectOfBlob) -> String {
    format!("{}/{}", object.bucket, object.key)
}

/// The objects of `now` not among those of `before` (told already).
fn newly_lost<'a>(before: Option<&Answered>, now: &'a ObjectsOfBlobs) -> Vec<&'a ObjectOfBlob> {
    let told: BTreeSet<(&str, &str)> = before
        .into_iter()
        .flat_map(|b| &b.found.objects)
        .map(|o| (o.bucket.as_str(), o.key.as_str()))
        .collect();
    now.objects
        .iter()
        .filter(|o| !told.contains(&(o.bucket.as_str(), o.key.as_str())))
        .collect()
}

/// The Event's note for `objects` newly found lost.
fn lost_note(objects: &[&ObjectOfBlob], truncated: bool) -> String {
    let named: Vec<String> = objects
        .iter()
        .take(MOST_NAMED_IN_AN_EVENT)
        .map(|o| format!("{} (blob {})", object_name(o), o.blob))
        .collect();
    let more = objects.len() - named.len();
    let mut note = format!(
        "the bytes of {} S3 objects are in Lost blobs (fewer than p shards hold them): reads of them fail; store them again: {}",
        objects.len(),
        named.join(", ")
    );
    if more > 0 {
        note.push_str(&format!(" and {more} more"));
    }
    if truncated {
        note.push_str(&format!(
            "; more keys hold Lost blobs than the {MOST_LOST_OBJECTS_LISTED} listed in status.lostObjects"
        ));
    }
    note
}

/// The keys whose objects hold any of `lost` (the cluster's Lost blobs, in
/// id order), when the cluster serves S3 and its gateway answers: asked
/// once per set of Lost blobs, keys not told of before published in one
/// Warning Event `ObjectsLost`. None without S3 or Lost blobs, or when the
/// gateway cannot say (asked again at the next reconcile).
pub(super) async fn objects_of_lost_blobs(
    ctx: &Context,
    cluster: &StorageCluster,
    fleet: &ClusterFleet,
    lost: &[&str],
) -> Option<ObjectsOfBlobs> {
    if lost.is_empty() || super::desired::s3::enabled(cluster).is_none() {
        *fleet.lost_objects.lock().expect("not poisoned") = None;
        return None;
    }
    let asked: BTreeSet<String> = lost
        .iter()
        .take(MOST_OBJECTS_OF_BLOBS_ASKED)
        .map(|id| id.to_string())
        .collect();
    let before = fleet.lost_objects.lock().expect("not poisoned").clone();
    if let Some(answered) = before.as_ref().filter(|b| b.asked == asked) {
        return Some(answered.found.clone());
    }
    let name = cluster.name_any();
    let Some(token) = ctx.user_token(cluster).await else {
        tracing::warn!(cluster = %name, "the S3 objects of Lost blobs cannot be asked for: the cluster's user-token Secret is missing or empty");
        return None;
    };
    let question = ObjectsOfBlobsRequest {
        blobs: asked.iter().cloned().collect(),
        limit: MOST_LOST_OBJECTS_LISTED,
    };
    let found: ObjectsOfBlobs = match super::gateway_question::ask_gateway(
        ctx,
        cluster,
        fleet,
        &token,
        "/v1/s3/objects-of-blobs",
        &question,
        "which S3 objects hold the Lost blobs",
    )
    .await
    {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(cluster = %name, "{e}");
            return None;
        }
    };
    let new = newly_lost(before.as_ref(), &found);
    if !new.is_empty() {
        tracing::warn!(cluster = %name, objects = new.len(), "S3 objects lost");
        ctx.publish(
            cluster,
            true,
            "ObjectsLost",
            lost_note(&new, found.truncated),
        )
        .await;
    }
    *fleet.lost_objects.lock().expect("not poisoned") = Some(Answered {
        asked,
        found: found.clone(),
    });
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(bucket: &str, key: &str) -> ObjectOfBlob {
        ObjectOfBlob {
            bucket: bucket.into(),
            key: key.into(),
            blob: format!("blob-of-{key}"),
        }
    }

    fn found(objects: &[ObjectOfBlob]) -> ObjectsOfBlobs {
        ObjectsOfBlobs {
            objects: objects.to_vec(),
            truncated: false,
        }
    }

    #[test]
    fn only_objects_not_told_of_before_are_newly_lost() {
        let first = found(&[object("media", "a"), object("logs", "b")]);
        assert_eq!(newly_lost(None, &first).len(), 2);
        let before = Answered {
            asked: ["x".to_string()].into(),
            found: first,
        };
        let then = found(&[object("logs", "b"), object("media", "c")]);
        assert_eq!(newly_lost(Some(&before), &then), [&object("media", "c")]);
        assert!(newly_lost(Some(&before), &found(&[object("media", "a")])).is_empty());
    }

    #[test]
    fn the_event_names_each_object_with_its_blob_and_says_what_was_left_out() {
        let objects: Vec<ObjectOfBlob> =
            (0..12).map(|i| object("media", &format!("k{i}"))).collect();
        let refs: Vec<&ObjectOfBlob> = objects.iter().collect();
        let note = lost_note(&refs[..2], false);
        assert!(
            note.starts_with("the bytes of 2 S3 objects are in Lost blobs"),
            "{note}"
        );
        assert!(
            note.contains("media/k0 (blob blob-of-k0), media/k1 (blob blob-of-k1)"),
            "{note}"
        );
        assert!(!note.contains("more"), "{note}");
        let note = lost_note(&refs, true);
        assert!(
            note.contains("media/k9 (blob blob-of-k9) and 2 more"),
            "{note}"
        );
        assert!(
            note.ends_with("than the 100 listed in status.lostObjects"),
            "{note}"
        );
    }
}
