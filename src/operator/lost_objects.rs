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
//! `RETRY_AFTER_FAILURE`. Each answer reads the index for a few seconds at
//! most and says where to resume; a reconcile goes on asking for
//! `SCAN_TIME_PER_RECONCILE`, and the next resumes there, so a large index
//! is scanned across reconciles, the keys found so far said meanwhile.

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

/// How long an answer stands for the same set of Lost blobs; also how
/// long a scan across reconciles may go on before it starts over.
const ANSWER_KEPT: Duration = Duration::from_secs(15 * 60);

/// How long a set of Lost blobs is not asked about again after the
/// question failed.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(120);

/// How long one answer may take (the gateway reads the index for
/// `OBJECTS_OF_BLOBS_SCAN_TIME` at most).
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);

/// How long one reconcile goes on asking before it leaves the rest of the
/// scan to the next.
const SCAN_TIME_PER_RECONCILE: Duration = Duration::from_secs(20);

/// What the operator remembers of a cluster's lost objects.
#[derive(Debug, Clone, Default)]
pub struct LostObjectsMemory {
    /// The last whole answer: the blobs asked about, the keys, and when.
    answered: Option<(BTreeSet<String>, ObjectsOfBlobs, Instant)>,
    /// A scan left for the next reconcile: its blobs, the keys found so
    /// far (`resume_after` says where it goes on), and when it started.
    scanning: Option<(BTreeSet<String>, ObjectsOfBlobs, Instant)>,
    /// The last question that failed: its blobs, when, and why.
    failed: Option<(BTreeSet<String>, Instant, String)>,
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
    /// Ask the gateway, going on from a scan's keys so far and the record
    /// it stopped after (from the start when None).
    Ask(Option<ObjectsOfBlobs>),
    /// Say nothing new: the last question about them failed moments ago.
    Wait,
}

impl LostObjectsMemory {
    /// Whether to ask about `asked` at `now`, and from where (pure).
    fn next(&self, asked: &BTreeSet<String>, now: Instant) -> Next {
        if let Some((blobs, found, at)) = &self.answered {
            if blobs == asked && now.duration_since(*at) < ANSWER_KEPT {
                return Next::Kept(found.clone());
            }
        }
        match &self.failed {
            Some((blobs, at, _))
                if blobs == asked && now.duration_since(*at) < RETRY_AFTER_FAILURE =>
            {
                return Next::Wait;
            }
            _ => {}
        }
        let resumed = self
            .scanning
            .as_ref()
            .filter(|(blobs, _, started)| {
                blobs == asked && now.duration_since(*started) < ANSWER_KEPT
            })
            .map(|(_, so_far, _)| so_far.clone());
        Next::Ask(resumed)
    }

    /// What to say of `asked` while the gateway is not asked again: its
    /// last whole answer, however old, else the keys a scan of them found
    /// so far; rather than nothing.
    fn last_answer_for(&self, asked: &BTreeSet<String>) -> Option<ObjectsOfBlobs> {
        let whole = self
            .answered
            .as_ref()
            .filter(|(blobs, _, _)| blobs == asked);
        let partial = self
            .scanning
            .as_ref()
            .filter(|(blobs, _, _)| blobs == asked);
        whole.or(partial).map(|(_, found, _)| found.clone())
    }

    /// The objects in `found` not told of yet, now counted as told.
    fn untold<'a>(&mut self, found: &'a ObjectsOfBlobs) -> Vec<&'a ObjectOfBlob> {
        let new: Vec<&ObjectOfBlob> = found
            .objects
            .iter()
            .filter(|o| !self.told.contains(&object_name(o)))
            .collect();
        self.told.extend(new.iter().map(|o| object_name(o)));
        new
    }

    /// Keeps `found` for `asked`: the whole answer when its scan ended,
    /// else the scan to go on with (`started` when it began).
    fn keep(
        &mut self,
        asked: BTreeSet<String>,
        found: ObjectsOfBlobs,
        started: Instant,
        now: Instant,
    ) {
        self.failed = None;
        if found.resume_after.is_some() {
            self.scanning = Some((asked, found, started));
        } else {
            self.scanning = None;
            self.answered = Some((asked, found, now));
        }
    }
}

/// A scan's keys so far with the next answer appended (pure): it ends when
/// the answer reached the index's end or was truncated, or once the keys
/// fill the status's list while more of the index is left (then more may
/// hold lost bytes: truncated).
fn went_on(so_far: ObjectsOfBlobs, answer: ObjectsOfBlobs) -> ObjectsOfBlobs {
    let mut objects = so_far.objects;
    objects.extend(answer.objects);
    let full = objects.len() >= MOST_LOST_OBJECTS_LISTED && answer.resume_after.is_some();
    let truncated = answer.truncated || full;
    ObjectsOfBlobs {
        objects,
        truncated,
        resume_after: if truncated { None } else { answer.resume_after },
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
/// asked about once (again after `ANSWER_KEPT`), its scan going on across
/// reconciles on a large index, keys not told of before published in one
/// Warning Event `ObjectsLost` as they are found. `listed` is what the
/// status said (told by an earlier leader). While the gateway cannot be
/// asked, its last answer about the same blobs (or the keys found so far,
/// with `resume_after` set); None without S3 or Lost blobs; an error (why
/// the question failed) when none was ever answered about them.
pub(super) async fn objects_of_lost_blobs(
    ctx: &Context,
    cluster: &StorageCluster,
    fleet: &ClusterFleet,
    lost: &[&str],
    listed: &[String],
) -> Result<Option<ObjectsOfBlobs>, String> {
    if lost.is_empty() || super::desired::s3::enabled(cluster).is_none() {
        *fleet.lost_objects.lock().expect("not poisoned") = LostObjectsMemory::default();
        return Ok(None);
    }
    let asked: BTreeSet<String> = lost
        .iter()
        .take(MOST_OBJECTS_OF_BLOBS_ASKED)
        .map(|id| id.to_string())
        .collect();
    let now = Instant::now();
    let (resumed, started) = {
        let mut memory = fleet.lost_objects.lock().expect("not poisoned");
        if !memory.seeded {
            memory.told.extend(listed.iter().cloned());
            memory.seeded = true;
        }
        match memory.next(&asked, now) {
            Next::Kept(found) => return Ok(Some(more_blobs_lost(found, lost, &asked))),
            Next::Wait => {
                let why = memory.failed.as_ref().map(|(_, _, why)| why.clone());
                return memory
                    .last_answer_for(&asked)
                    .map(|found| Some(more_blobs_lost(found, lost, &asked)))
                    .ok_or_else(|| why.unwrap_or_default());
            }
            Next::Ask(resumed) => {
                let started = memory
                    .scanning
                    .as_ref()
                    .filter(|_| resumed.is_some())
                    .map_or(now, |(_, _, started)| *started);
                (resumed, started)
            }
        }
    };
    let name = cluster.name_any();
    let so_far = resumed.unwrap_or_default();
    let scanned = match ctx.user_token(cluster).await {
        None => Err((
            format!(
                "the cluster's user-token Secret {} is missing or empty",
                super::desired::user_token_secret(&name)
            ),
            so_far,
        )),
        Some(token) => scan_on(ctx, cluster, fleet, &token, &asked, so_far).await,
    };
    let found = match scanned {
        Ok(found) => found,
        Err((e, so_far)) => {
            tracing::warn!(cluster = %name, "the S3 objects of Lost blobs are not named this time: {e}");
            let mut memory = fleet.lost_objects.lock().expect("not poisoned");
            if so_far.resume_after.is_some() {
                memory.scanning = Some((asked.clone(), so_far, started));
            }
            let last = memory.last_answer_for(&asked);
            memory.failed = Some((asked.clone(), now, e.clone()));
            return last
                .map(|found| Some(more_blobs_lost(found, lost, &asked)))
                .ok_or(e);
        }
    };
    let new: Vec<ObjectOfBlob> = {
        let mut memory = fleet.lost_objects.lock().expect("not poisoned");
        let new = memory.untold(&found).into_iter().cloned().collect();
        memory.keep(asked.clone(), found.clone(), started, Instant::now());
        new
    };
    let found = more_blobs_lost(found, lost, &asked);
    if !new.is_empty() {
        tracing::warn!(cluster = %name, objects = new.len(), "S3 objects lost");
        let refs: Vec<&ObjectOfBlob> = new.iter().collect();
        let more = found.truncated || found.resume_after.is_some();
        ctx.publish(cluster, true, "ObjectsLost", lost_note(&refs, more))
            .await;
    }
    Ok(Some(found))
}

/// `found` marked truncated when Lost blobs beyond those `asked` about
/// may hold more keys.
fn more_blobs_lost(
    mut found: ObjectsOfBlobs,
    lost: &[&str],
    asked: &BTreeSet<String>,
) -> ObjectsOfBlobs {
    found.truncated |= lost.len() > asked.len();
    found
}

/// Asks the gateway, going on from `so_far`, until the scan of its index
/// ended or `SCAN_TIME_PER_RECONCILE` passed: the keys found (with
/// `resume_after` when the scan is left for the next reconcile), or why
/// not with the keys found before the question failed.
async fn scan_on(
    ctx: &Context,
    cluster: &StorageCluster,
    fleet: &ClusterFleet,
    token: &str,
    asked: &BTreeSet<String>,
    mut so_far: ObjectsOfBlobs,
) -> Result<ObjectsOfBlobs, (String, ObjectsOfBlobs)> {
    let began = Instant::now();
    loop {
        let body = ObjectsOfBlobsRequest {
            blobs: asked.iter().cloned().collect(),
            // went_on ends the scan once the list is full, so at least one.
            limit: MOST_LOST_OBJECTS_LISTED
                .saturating_sub(so_far.objects.len())
                .max(1),
            after: so_far.resume_after.clone(),
            most_records: None,
        };
        let question = Question {
            path: "/v1/s3/objects-of-blobs",
            body: &body,
            what: "which S3 objects hold the Lost blobs",
            deadline: ANSWER_DEADLINE,
        };
        let answer: ObjectsOfBlobs = match ask_gateway(ctx, cluster, fleet, token, question).await {
            Ok(answer) => answer,
            Err(e) => return Err((e, so_far)),
        };
        so_far = went_on(so_far, answer);
        if so_far.resume_after.is_none() || began.elapsed() >= SCAN_TIME_PER_RECONCILE {
            return Ok(so_far);
        }
    }
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
            ..ObjectsOfBlobs::default()
        }
    }

    fn partial(objects: &[ObjectOfBlob], resume_after: &str) -> ObjectsOfBlobs {
        ObjectsOfBlobs {
            resume_after: Some(resume_after.into()),
            ..found(objects)
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
        assert_eq!(memory.next(&x, t0), Next::Ask(None));
        memory.keep(x.clone(), found(&[object("media", "a")]), t0, t0);
        assert_eq!(
            memory.next(&x, t0 + Duration::from_secs(60)),
            Next::Kept(found(&[object("media", "a")]))
        );
        assert_eq!(
            memory.next(&x, t0 + ANSWER_KEPT),
            Next::Ask(None),
            "asked again, from the start"
        );
        assert_eq!(
            memory.last_answer_for(&x),
            Some(found(&[object("media", "a")])),
            "said while the gateway cannot be asked"
        );
        let xy = blobs(&["x", "y"]);
        assert_eq!(memory.next(&xy, t0), Next::Ask(None), "another set");
        memory.failed = Some((xy.clone(), t0, "refused".into()));
        assert_eq!(memory.next(&xy, t0 + Duration::from_secs(5)), Next::Wait);
        assert_eq!(memory.next(&xy, t0 + RETRY_AFTER_FAILURE), Next::Ask(None));
        assert_eq!(memory.last_answer_for(&xy), None, "never answered");
    }

    #[test]
    fn a_scan_left_unfinished_goes_on_where_it_stopped_for_the_same_blobs_until_it_grows_old() {
        let mut memory = LostObjectsMemory::default();
        let t0 = Instant::now();
        let x = blobs(&["x"]);
        let so_far = partial(&[object("logs", "a")], "media/k");
        memory.keep(x.clone(), so_far.clone(), t0, t0 + Duration::from_secs(20));
        let later = t0 + Duration::from_secs(30);
        assert_eq!(memory.next(&x, later), Next::Ask(Some(so_far.clone())));
        assert_eq!(
            memory.last_answer_for(&x),
            Some(so_far.clone()),
            "the keys found so far are said meanwhile"
        );
        assert_eq!(
            memory.next(&blobs(&["x", "y"]), later),
            Next::Ask(None),
            "other blobs: from the start"
        );
        assert_eq!(
            memory.next(&x, t0 + ANSWER_KEPT),
            Next::Ask(None),
            "a scan begun long ago starts over"
        );
        memory.failed = Some((x.clone(), later, "refused".into()));
        assert_eq!(memory.next(&x, later), Next::Wait, "a failure waits");
        assert_eq!(
            memory.next(&x, later + RETRY_AFTER_FAILURE),
            Next::Ask(Some(so_far.clone())),
            "and then goes on"
        );
        let whole = found(&[object("logs", "a"), object("media", "z")]);
        memory.keep(x.clone(), whole.clone(), t0, later);
        assert_eq!(memory.next(&x, later), Next::Kept(whole.clone()));
        // Asked again after a while: the old whole answer is said while
        // the new scan goes on.
        memory.keep(x.clone(), so_far, t0 + ANSWER_KEPT, t0 + ANSWER_KEPT);
        assert_eq!(memory.last_answer_for(&x), Some(whole));
    }

    #[test]
    fn a_scan_ends_at_the_index_end_when_truncated_or_once_the_list_is_full() {
        let a = object("logs", "a");
        let b = object("media", "b");
        let on = went_on(
            partial(std::slice::from_ref(&a), "logs/z"),
            partial(std::slice::from_ref(&b), "media/c"),
        );
        assert_eq!(on, partial(&[a.clone(), b.clone()], "media/c"), "goes on");
        let ended = went_on(on.clone(), found(&[]));
        assert_eq!(ended, found(&[a.clone(), b.clone()]), "the index's end");
        let cut = went_on(
            on,
            ObjectsOfBlobs {
                truncated: true,
                ..found(&[])
            },
        );
        assert!(cut.truncated && cut.resume_after.is_none());
        let many: Vec<ObjectOfBlob> = (0..MOST_LOST_OBJECTS_LISTED)
            .map(|i| object("media", &format!("k{i:03}")))
            .collect();
        let full = went_on(
            partial(&many[..60], "media/k059"),
            partial(&many[60..], "media/k099"),
        );
        assert_eq!(full.objects.len(), MOST_LOST_OBJECTS_LISTED);
        assert!(
            full.truncated && full.resume_after.is_none(),
            "a full list ends the scan: more may be lost"
        );
        let exact = went_on(partial(&many[..60], "media/k059"), found(&many[60..]));
        assert!(!exact.truncated, "the index ended with the list full");
    }

    #[test]
    fn objects_are_told_of_once_while_blobs_stay_lost_however_the_set_changes() {
        let mut memory = LostObjectsMemory::default();
        let first = found(&[object("media", "a"), object("logs", "b")]);
        assert_eq!(memory.untold(&first).len(), 2);
        // y came back; then it is Lost again: b was told already.
        let fewer = found(&[object("media", "a")]);
        assert!(memory.untold(&fewer).is_empty());
        let again = found(&[
            object("logs", "b"),
            object("media", "a"),
            object("media", "c"),
        ]);
        assert_eq!(memory.untold(&again), [&object("media", "c")]);
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
