//! Names what a loss took from S3: the cluster's gateway is asked which
//! keys hold the Lost blobs (a scan of its index), the keys go to the
//! status, and keys not told of before to one Warning Event. Blobs stored
//! through the native API have Blobs of their own, whose health says
//! Lost; S3's objects have none, so without this a loss could be counted
//! but not named.
//!
//! A scan reads every object record, so a set of Lost blobs is asked
//! about once, and again only after `ANSWER_KEPT` (keys copied, deleted
//! or stored again meanwhile); a question that failed waits
//! `RETRY_AFTER_FAILURE`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::context::{ClusterFleet, Context};
use super::crd::StorageCluster;
use super::gateway_question::{ask_gateway, Question};
use crate::wire::{
    ObjectOfBlob, ObjectsOfBlobs, ObjectsOfBlobsRequest, MOST_OBJECTS_OF_BLOBS_ASKED,
};

/// Keys listed in the status (and asked for) at most.
pub const MOST_LOST_OBJECTS_LISTED: usize = 100;

/// Keys named in one Event at most.
const MOST_NAMED_IN_AN_EVENT: usize = 10;

/// How long an answer stands for the same set of Lost blobs.
const ANSWER_KEPT: Duration = Duration::from_secs(15 * 60);

/// How long a set of Lost blobs is not asked about again after the
/// question failed.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(120);

/// How long the gateway's scan may take.
const SCAN_DEADLINE: Duration = Duration::from_secs(30);

/// What the operator remembers of a cluster's lost objects.
#[derive(Debug, Clone, Default)]
pub struct LostObjectsMemory {
    /// The last answer: the blobs asked about, the keys, and when.
    answered: Option<(BTreeSet<String>, ObjectsOfBlobs, Instant)>,
    /// The last question that failed: its blobs and when.
    failed: Option<(BTreeSet<String>, Instant)>,
    /// Keys (`bucket/key`) told of in an Event (or found in the status a
    /// former leader wrote), while blobs stay Lost.
    told: BTreeSet<String>,
    /// Whether `told` was seeded from the status.
    seeded: bool,
}

/// What to do about a set of Lost blobs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Next {
    /// Say the answer kept.
    Kept(ObjectsOfBlobs),
    /// Ask the gateway.
    Ask,
    /// Say nothing: the last question about them failed moments ago.
    Wait,
}

impl LostObjectsMemory {
    /// Whether to ask about `asked` at `now` (pure).
    fn next(&self, asked: &BTreeSet<String>, now: Instant) -> Next {
        if let Some((blobs, found, at)) = &self.answered {
            if blobs == asked && now.duration_since(*at) < ANSWER_KEPT {
                return Next::Kept(found.clone());
            }
        }
        match &self.failed {
            Some((blobs, at))
                if blobs == asked && now.duration_since(*at) < RETRY_AFTER_FAILURE =>
            {
                Next::Wait
            }
            _ => Next::Ask,
        }
    }

    /// The last answer, however old, when it was about `asked`: said while
    /// the gateway cannot be asked again, rather than nothing.
    fn last_answer_for(&self, asked: &BTreeSet<String>) -> Option<ObjectsOfBlobs> {
        self.answered
            .as_ref()
            .filter(|(blobs, _, _)| blobs == asked)
            .map(|(_, found, _)| found.clone())
    }

    /// Keeps `found` for `asked`; the objects in it not told of yet.
    fn answered<'a>(
        &mut self,
        asked: BTreeSet<String>,
        found: &'a ObjectsOfBlobs,
        now: Instant,
    ) -> Vec<&'a ObjectOfBlob> {
        let new: Vec<&ObjectOfBlob> = found
            .objects
            .iter()
            .filter(|o| !self.told.contains(&object_name(o)))
            .collect();
        self.told.extend(new.iter().map(|o| object_name(o)));
        self.answered = Some((asked, found.clone(), now));
        self.failed = None;
        new
    }
}

/// `bucket/key`, as the status and Events name an object.
pub fn object_name(object: &ObjectOfBlob) -> String {
    format!("{}/{}", object.bucket, object.key)
}

/// The Event's note for `objects` newly found lost; `more` when more keys
/// (or Lost blobs not asked about) may hold lost bytes.
fn lost_note(objects: &[&ObjectOfBlob], more: bool) -> String {
    let named: Vec<String> = objects
        .iter()
        .take(MOST_NAMED_IN_AN_EVENT)
        .map(|o| format!("{} (blob {})", object_name(o), o.blob))
        .collect();
    let unnamed = objects.len() - named.len();
    let mut note = format!(
        "the bytes of {} S3 objects are in Lost blobs (fewer than p shards hold them): reads of them fail; store them again",
        objects.len()
    );
    if more {
        note.push_str(&format!(
            " (more may be lost than the {MOST_LOST_OBJECTS_LISTED} keys listed in status.lostObjects)"
        ));
    }
    note.push_str(&format!(": {}", named.join(", ")));
    if unnamed > 0 {
        note.push_str(&format!(" and {unnamed} more"));
    }
    note
}

/// The keys whose objects hold any of `lost` (the cluster's Lost blobs, in
/// id order), when the cluster serves S3 and its gateway says: each set
/// asked about once (again after `ANSWER_KEPT`), keys not told of before
/// published in one Warning Event `ObjectsLost`. `listed` is what the
/// status said (told by an earlier leader). While the gateway cannot be
/// asked, its last answer about the same blobs; None without S3 or Lost
/// blobs, or without any answer about them.
pub(super) async fn objects_of_lost_blobs(
    ctx: &Context,
    cluster: &StorageCluster,
    fleet: &ClusterFleet,
    lost: &[&str],
    listed: &[String],
) -> Option<ObjectsOfBlobs> {
    if lost.is_empty() || super::desired::s3::enabled(cluster).is_none() {
        *fleet.lost_objects.lock().expect("not poisoned") = LostObjectsMemory::default();
        return None;
    }
    let asked: BTreeSet<String> = lost
        .iter()
        .take(MOST_OBJECTS_OF_BLOBS_ASKED)
        .map(|id| id.to_string())
        .collect();
    let now = Instant::now();
    {
        let mut memory = fleet.lost_objects.lock().expect("not poisoned");
        if !memory.seeded {
            memory.told.extend(listed.iter().cloned());
            memory.seeded = true;
        }
        match memory.next(&asked, now) {
            Next::Kept(found) => return Some(found),
            Next::Wait => return memory.last_answer_for(&asked),
            Next::Ask => {}
        }
    }
    let name = cluster.name_any();
    let answer = match ctx.user_token(cluster).await {
        None => Err(format!(
            "the cluster's user-token Secret {} is missing or empty",
            super::desired::user_token_secret(&name)
        )),
        Some(token) => {
            let body = ObjectsOfBlobsRequest {
                blobs: asked.iter().cloned().collect(),
                limit: MOST_LOST_OBJECTS_LISTED,
                after: None,
            };
            let question = Question {
                path: "/v1/s3/objects-of-blobs",
                body: &body,
                what: "which S3 objects hold the Lost blobs",
                deadline: SCAN_DEADLINE,
            };
            ask_gateway(ctx, cluster, fleet, &token, question).await
        }
    };
    let mut found: ObjectsOfBlobs = match answer {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(cluster = %name, "the S3 objects of Lost blobs are not named this time: {e}");
            let mut memory = fleet.lost_objects.lock().expect("not poisoned");
            let last = memory.last_answer_for(&asked);
            memory.failed = Some((asked, now));
            return last;
        }
    };
    // Lost blobs beyond those asked about may hold more keys.
    found.truncated |= lost.len() > asked.len();
    let new: Vec<ObjectOfBlob> = fleet
        .lost_objects
        .lock()
        .expect("not poisoned")
        .answered(asked, &found, now)
        .into_iter()
        .cloned()
        .collect();
    if !new.is_empty() {
        tracing::warn!(cluster = %name, objects = new.len(), "S3 objects lost");
        let refs: Vec<&ObjectOfBlob> = new.iter().collect();
        ctx.publish(
            cluster,
            true,
            "ObjectsLost",
            lost_note(&refs, found.truncated),
        )
        .await;
    }
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

    fn blobs(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|id| id.to_string()).collect()
    }

    #[test]
    fn a_set_of_lost_blobs_is_asked_about_once_again_after_a_while_and_not_right_after_a_failure() {
        let mut memory = LostObjectsMemory::default();
        let t0 = Instant::now();
        let x = blobs(&["x"]);
        assert_eq!(memory.next(&x, t0), Next::Ask);
        memory.answered(x.clone(), &found(&[object("media", "a")]), t0);
        assert_eq!(
            memory.next(&x, t0 + Duration::from_secs(60)),
            Next::Kept(found(&[object("media", "a")]))
        );
        assert_eq!(memory.next(&x, t0 + ANSWER_KEPT), Next::Ask, "asked again");
        assert_eq!(
            memory.last_answer_for(&x),
            Some(found(&[object("media", "a")])),
            "said while the gateway cannot be asked"
        );
        let xy = blobs(&["x", "y"]);
        assert_eq!(memory.next(&xy, t0), Next::Ask, "another set");
        memory.failed = Some((xy.clone(), t0));
        assert_eq!(memory.next(&xy, t0 + Duration::from_secs(5)), Next::Wait);
        assert_eq!(memory.next(&xy, t0 + RETRY_AFTER_FAILURE), Next::Ask);
        assert_eq!(memory.last_answer_for(&xy), None, "never answered");
    }

    #[test]
    fn objects_are_told_of_once_while_blobs_stay_lost_however_the_set_changes() {
        let mut memory = LostObjectsMemory::default();
        let t0 = Instant::now();
        let first = found(&[object("media", "a"), object("logs", "b")]);
        assert_eq!(memory.answered(blobs(&["x", "y"]), &first, t0).len(), 2);
        // y came back; then it is Lost again: b was told already.
        let fewer = found(&[object("media", "a")]);
        assert!(memory.answered(blobs(&["x"]), &fewer, t0).is_empty());
        let again = found(&[
            object("logs", "b"),
            object("media", "a"),
            object("media", "c"),
        ]);
        assert_eq!(
            memory.answered(blobs(&["x", "y"]), &again, t0),
            [&object("media", "c")]
        );
    }

    #[test]
    fn the_event_says_how_many_names_each_object_with_its_blob_and_what_was_left_out() {
        let objects: Vec<ObjectOfBlob> =
            (0..12).map(|i| object("media", &format!("k{i}"))).collect();
        let refs: Vec<&ObjectOfBlob> = objects.iter().collect();
        let note = lost_note(&refs[..2], false);
        assert!(
            note.starts_with("the bytes of 2 S3 objects are in Lost blobs"),
            "{note}"
        );
        assert!(
            note.ends_with(
                "store them again: media/k0 (blob blob-of-k0), media/k1 (blob blob-of-k1)"
            ),
            "{note}"
        );
        let note = lost_note(&refs, true);
        assert!(
            note.contains("more may be lost than the 100 keys listed in status.lostObjects"),
            "{note}"
        );
        assert!(
            note.ends_with("media/k9 (blob blob-of-k9) and 2 more"),
            "{note}"
        );
    }
}
