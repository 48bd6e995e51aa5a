//! A Blob's status as a pure function of what is known: whether its bytes
//! were ingested, and what the cluster's node inventories show of it.

use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::crd::{BlobHealth, BlobStatus, EncodingStatus};
use super::status::{carry_transition_times, condition};
use crate::codec::EncodingConfig;
use crate::control::BlobView;
use crate::fleet::{self, Health};

/// Where getting the bytes in stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestState {
    /// The blob id is known: uploaded through the gateway, or ingested.
    Done,
    /// The operator is fetching the source now.
    InProgress,
    /// The StorageCluster named in spec.cluster does not exist: nothing
    /// is fetched until it does.
    NoCluster,
    /// The source waits for one of the operator's ingest slots (at most
    /// `--max-concurrent-ingests` sources are fetched at once).
    Queued {
        /// How many sources are fetched at once.
        slots: usize,
    },
    /// The last attempt failed.
    Failed {
        /// Condition reason.
        reason: String,
        /// What went wrong.
        message: String,
        /// When the next attempt is due (RFC 3339).
        next_attempt: String,
    },
}

/// The failure a Blob's status records while its next ingest attempt is
/// not due at `now`, and how long until it is; None when an attempt may
/// start (nothing failed, the blob is stored, or the time has come).
/// Every change of the Blob, or of the fleet's view, reconciles it: the
/// wait after a failure is kept here, not by the requeue alone.
pub fn waiting_to_retry(previous: &BlobStatus, now: Timestamp) -> Option<(Duration, IngestState)> {
    if previous.blob_id.is_some() {
        return None;
    }
    let next_attempt = previous.next_ingest_attempt.as_ref()?;
    let due: Timestamp = next_attempt.parse().ok()?;
    let wait = Duration::try_from(due.duration_since(now)).ok()?;
    if wait.is_zero() {
        return None;
    }
    let failed = previous
        .conditions
        .iter()
        .find(|c| c.type_ == "Ingested" && c.status == "False")?;
    Some((
        wait,
        IngestState::Failed {
            reason: failed.reason.clone(),
            message: failed.message.clone(),
            next_attempt: next_attempt.clone(),
        },
    ))
}

/// What the operator knows of the blob's cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterFacts {
    /// No StorageCluster of that name in the namespace.
    Missing,
    /// The cluster's spec is refused (why): it runs no fleet to read.
    Invalid(String),
    /// The cluster exists but its inventories were not read yet.
    Unobserved,
    /// The inventories were read.
    Observed {
        /// The cluster's encoding.
        encoding: EncodingConfig,
        /// What the fleet holds of the blob, if any node knows it.
        blob: Option<BlobView>,
        /// A repair of it is in flight.
        repairing: bool,
        /// When a repair of it last completed.
        last_repair: Option<SystemTime>,
        /// No node holds it visible, and a tombstone stands for it: it was
        /// deleted through the gateway or S3.
        deleted: bool,
        /// Shards no answering node owns: too few pairs seen (none, for a
        /// blob no answering node holds) is Lost only when these could not
        /// make the blob readable either.
        unanswered_shards: usize,
    },
}

fn blob_health(health: Health, repairing: bool) -> BlobHealth {
    match health {
        Health::Healthy => BlobHealth::Healthy,
        Health::Lost => BlobHealth::Lost,
        _ if repairing => BlobHealth::Repairing,
        Health::Degraded => BlobHealth::Degraded,
        Health::AtRisk => BlobHealth::AtRisk,
    }
}

/// The status of a Blob. `previous` is its current status; `blob_id` is
/// known once uploaded or ingested.
pub fn blob_status(
    previous: &BlobStatus,
    blob_id: Option<&str>,
    ingest: &IngestState,
    cluster: &ClusterFacts,
    generation: Option<i64>,
    now: &Time,
) -> BlobStatus {
    let mut status = BlobStatus {
        blob_id: blob_id.map(str::to_string),
        last_repair: previous.last_repair.clone(),
        ..BlobStatus::default()
    };
    let ingested = match ingest {
        IngestState::Done => condition(
            "Ingested",
            true,
            "Stored",
            format!("stored as {}", blob_id.unwrap_or_default()),
            generation,
            now,
        ),
        IngestState::InProgress => condition(
            "Ingested",
            false,
            "Ingesting",
            "fetching the source and storing it through the gateway".into(),
            generation,
            now,
        ),
        IngestState::NoCluster => condition(
            "Ingested",
            false,
            "ClusterNotFound",
            "nothing is fetched until the StorageCluster named in spec.cluster exists".into(),
            generation,
            now,
        ),
        IngestState::Queued { slots } => condition(
            "Ingested",
            false,
            "Queued",
            format!(
                "waiting for one of the operator's {slots} ingest slots \
                 (--max-concurrent-ingests): other sources are being fetched"
            ),
            generation,
            now,
        ),
        IngestState::Failed {
            reason,
            message,
            next_attempt,
        } => {
            status.next_ingest_attempt = Some(next_attempt.clone());
            condition("Ingested", false, reason, message.clone(), generation, now)
        }
    };
    let (healthy, reason, message) = match (cluster, blob_id) {
        (ClusterFacts::Missing, _) => {
            // Kept, so that a cluster made again without the blob shows
            // it Lost, not never seen.
            keep_what_was_seen(&mut status, previous);
            (
                false,
                "ClusterNotFound",
                "the StorageCluster named in spec.cluster does not exist".to_string(),
            )
        }
        (_, None) => (false, "NotStored", "the bytes are not stored yet".into()),
        (ClusterFacts::Invalid(problem), Some(_)) => {
            keep_what_was_seen(&mut status, previous);
            status.encoding = previous.encoding.clone();
            (
                false,
                "ClusterInvalid",
                format!(
                    "the StorageCluster's spec is refused, so its nodes are not read: {problem}"
                ),
            )
        }
        (ClusterFacts::Unobserved, Some(_)) => {
            // Keep what was known until the inventories are read again.
            keep_what_was_seen(&mut status, previous);
            status.encoding = previous.encoding.clone();
            (
                false,
                "Unobserved",
                "the cluster's node inventories were not read yet".into(),
            )
        }
        (
            ClusterFacts::Observed {
                encoding,
                blob,
                repairing,
                last_repair,
                deleted,
                unanswered_shards,
            },
            Some(id),
        ) => {
            let n = encoding.n();
            status.encoding = Some(EncodingStatus {
                shards: n as u16,
                fault_tolerance: encoding.f() as u16,
                p: encoding.p() as u16,
                q: encoding.q() as u16,
                segments: blob.as_ref().map_or(0, |b| b.segments),
            });
            if let Some(at) = last_repair {
                status.last_repair = k8s_openapi::jiff::Timestamp::try_from(*at)
                    .ok()
                    .map(|t| t.to_string());
            }
            match blob {
                Some(view) => {
                    let complete = view.complete_shards.len();
                    let health = blob_health(
                        fleet::health_in_reach(encoding, complete, *unanswered_shards),
                        *repairing,
                    );
                    status.size = Some(view.size);
                    status.size_text = Some(crate::units::format_bytes(view.size));
                    status.shards_valid = Some(complete as u16);
                    status.shards = Some(format!("{complete}/{n}"));
                    status.health = Some(health);
                    let out_of_reach = match *unanswered_shards {
                        0 => String::new(),
                        1 => " (1 shard more is on a node not answering)".into(),
                        k => format!(" ({k} shards more are out of reach: their owner does not answer or has not heard it owns them yet)"),
                    };
                    let message = format!(
                        "{complete} of {n} shards hold valid sliver pairs{out_of_reach}; readable from {}, fully safe from {}",
                        encoding.p(),
                        encoding.q()
                    );
                    (
                        health == BlobHealth::Healthy,
                        health_reason(health),
                        message,
                    )
                }
                None if *deleted => {
                    status.size = previous.size;
                    status.size_text = previous.size_text.clone();
                    status.shards_valid = Some(0);
                    status.shards = Some(format!("0/{n}"));
                    status.health = Some(BlobHealth::Deleted);
                    (
                        false,
                        "DeletedElsewhere",
                        format!(
                            "blob {id} was deleted through the gateway or S3, not through this Blob: nothing of it is held any more"
                        ),
                    )
                }
                None if previous.health.is_some()
                    && fleet::health_in_reach(encoding, 0, *unanswered_shards) != Health::Lost =>
                {
                    // Not called lost while the shards out of reach could
                    // still make it readable.
                    keep_what_was_seen(&mut status, previous);
                    (
                        false,
                        "NodesNotAnswering",
                        format!("no answering node holds blob {id}; {unanswered_shards} shards are out of reach (their owner does not answer or has not heard it owns them yet), so it is not called lost"),
                    )
                }
                None if previous.health.is_some() => {
                    status.size = previous.size;
                    status.size_text = previous.size_text.clone();
                    status.shards_valid = Some(0);
                    status.shards = Some(format!("0/{n}"));
                    status.health = Some(BlobHealth::Lost);
                    (false, "Lost", format!("no node holds blob {id} any more"))
                }
                None => (false, "NotSeenYet", format!("no node holds blob {id} yet")),
            }
        }
    };
    status.conditions = vec![
        ingested,
        condition("Healthy", healthy, reason, message, generation, now),
    ];
    carry_transition_times(&mut status.conditions, &previous.conditions);
    status
}

/// Keeps the size, shards and health last seen (a reading that cannot
/// say better).
fn keep_what_was_seen(status: &mut BlobStatus, previous: &BlobStatus) {
    status.size = previous.size;
    status.size_text = previous.size_text.clone();
    status.shards_valid = previous.shards_valid;
    status.shards = previous.shards.clone();
    status.health = previous.health;
}

fn health_reason(health: BlobHealth) -> &'static str {
    match health {
        BlobHealth::Healthy => "AllShardsValid",
        BlobHealth::Degraded => "Degraded",
        BlobHealth::Repairing => "Repairing",
        BlobHealth::AtRisk => "AtRisk",
        BlobHealth::Lost => "Lost",
        BlobHealth::Deleted => "DeletedElsewhere",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    fn now(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn observed(complete: &[u16], repairing: bool) -> ClusterFacts {
        ClusterFacts::Observed {
            encoding: EncodingConfig::new(7).unwrap(), // f 2, p 3, q 5
            blob: Some(BlobView {
                size: 1 << 20,
                segments: 1,
                generation: 1,
                complete_shards: complete.iter().copied().collect(),
            }),
            repairing,
            last_repair: None,
            deleted: false,
            unanswered_shards: 0,
        }
    }

    /// A reading of a 7-shard cluster in which no node holds the blob,
    /// `deleted` through the gateway or not, `unanswered` shards out of
    /// reach.
    fn no_blob(deleted: bool, unanswered: usize) -> ClusterFacts {
        ClusterFacts::Observed {
            encoding: EncodingConfig::new(7).unwrap(),
            blob: None,
            repairing: false,
            last_repair: None,
            deleted,
            unanswered_shards: unanswered,
        }
    }

    /// The status of a stored blob seen for the first time with `facts`.
    fn status_of(facts: &ClusterFacts) -> BlobStatus {
        blob_status(
            &BlobStatus::default(),
            Some(ID),
            &IngestState::Done,
            facts,
            Some(1),
            &now(1),
        )
    }

    fn health_of(facts: &ClusterFacts) -> (Option<BlobHealth>, String) {
        let s = status_of(facts);
        let healthy = s.conditions.iter().find(|c| c.type_ == "Healthy").unwrap();
        (s.health, healthy.reason.clone())
    }

    #[test]
    fn health_follows_the_shards_that_hold_valid_pairs() {
        let table: [(&[u16], bool, BlobHealth); 6] = [
            (&[0, 1, 2, 3, 4, 5, 6], false, BlobHealth::Healthy),
            (&[0, 1, 2, 3, 4, 5], false, BlobHealth::Degraded),
            (&[0, 1, 2, 3, 4, 5], true, BlobHealth::Repairing),
            (&[0, 1, 2, 3], false, BlobHealth::AtRisk),
            (&[0, 1, 2, 3], true, BlobHealth::Repairing),
            (&[0, 1], true, BlobHealth::Lost),
        ];
        for (complete, repairing, expected) in table {
            let (health, _) = health_of(&observed(complete, repairing));
            assert_eq!(health, Some(expected), "{complete:?} repairing {repairing}");
        }
    }

    #[test]
    fn a_blob_whose_missing_shards_are_on_nodes_not_answering_is_at_risk_not_lost() {
        let mut facts = observed(&[0, 1], false);
        if let ClusterFacts::Observed {
            unanswered_shards, ..
        } = &mut facts
        {
            *unanswered_shards = 2;
        }
        let s = status_of(&facts);
        assert_eq!(s.health, Some(BlobHealth::AtRisk));
        let healthy = s.conditions.iter().find(|c| c.type_ == "Healthy").unwrap();
        assert!(
            healthy.message.contains("2 shards more are out of reach"),
            "{}",
            healthy.message
        );
        // With too few out of reach to make it readable, it is Lost.
        if let ClusterFacts::Observed {
            unanswered_shards, ..
        } = &mut facts
        {
            *unanswered_shards = 0;
        }
        assert_eq!(health_of(&facts).0, Some(BlobHealth::Lost));
    }

    #[test]
    fn a_blob_whose_cluster_was_deleted_and_made_again_empty_is_lost_not_never_seen() {
        let seen = status_of(&observed(&[0, 1, 2, 3, 4, 5, 6], false));
        assert_eq!(seen.health, Some(BlobHealth::Healthy));
        let missing = blob_status(
            &seen,
            Some(ID),
            &IngestState::Done,
            &ClusterFacts::Missing,
            Some(1),
            &now(2),
        );
        assert_eq!(missing.health, Some(BlobHealth::Healthy), "last seen, kept");
        let empty = no_blob(false, 0);
        let again = blob_status(
            &missing,
            Some(ID),
            &IngestState::Done,
            &empty,
            Some(1),
            &now(3),
        );
        assert_eq!(again.health, Some(BlobHealth::Lost));
    }

    #[test]
    fn the_status_shows_size_shards_and_encoding() {
        let s = blob_status(
            &BlobStatus::default(),
            Some(ID),
            &IngestState::Done,
            &observed(&[0, 1, 2, 3, 4, 5], false),
            Some(1),
            &now(1),
        );
        assert_eq!(s.shards.as_deref(), Some("6/7"));
        assert_eq!(s.size, Some(1 << 20));
        assert_eq!(s.size_text.as_deref(), Some("1.0 MiB"));
        assert_eq!(s.encoding.as_ref().map(|e| (e.p, e.q)), Some((3, 5)));
    }

    #[test]
    fn a_blob_deleted_through_the_gateway_or_s3_is_deleted_not_lost() {
        let seen = BlobStatus {
            health: Some(BlobHealth::Healthy),
            size: Some(5),
            ..BlobStatus::default()
        };
        let tombstone = no_blob(true, 0);
        let s = blob_status(
            &seen,
            Some(ID),
            &IngestState::Done,
            &tombstone,
            Some(1),
            &now(1),
        );
        assert_eq!(s.health, Some(BlobHealth::Deleted));
        assert_eq!(s.shards.as_deref(), Some("0/7"));
        assert_eq!(s.size, Some(5));
        let healthy = s.conditions.iter().find(|c| c.type_ == "Healthy").unwrap();
        assert_eq!(healthy.reason, "DeletedElsewhere");
    }

    #[test]
    fn a_blob_never_seen_is_pending_but_one_that_vanished_is_lost() {
        let absent = no_blob(false, 0);
        assert_eq!(health_of(&absent), (None, "NotSeenYet".into()));
        let seen = BlobStatus {
            health: Some(BlobHealth::Healthy),
            ..BlobStatus::default()
        };
        let s = blob_status(
            &seen,
            Some(ID),
            &IngestState::Done,
            &absent,
            Some(1),
            &now(1),
        );
        assert_eq!(s.health, Some(BlobHealth::Lost));
        assert_eq!(s.shards.as_deref(), Some("0/7"));
        // Not while the shards of nodes not answering (p = 3 of them)
        // could hold it readable.
        let unheard = no_blob(false, 3);
        let s = blob_status(
            &seen,
            Some(ID),
            &IngestState::Done,
            &unheard,
            Some(1),
            &now(1),
        );
        assert_eq!(s.health, Some(BlobHealth::Healthy), "kept");
        let healthy = s.conditions.iter().find(|c| c.type_ == "Healthy").unwrap();
        assert_eq!(healthy.reason, "NodesNotAnswering");
        // Two out of reach could not: it is Lost.
        let s = blob_status(
            &seen,
            Some(ID),
            &IngestState::Done,
            &no_blob(false, 2),
            Some(1),
            &now(1),
        );
        assert_eq!(s.health, Some(BlobHealth::Lost));
    }

    #[test]
    fn a_missing_cluster_and_a_failed_ingest_are_conditions() {
        let s = blob_status(
            &BlobStatus::default(),
            None,
            &IngestState::Failed {
                reason: "ChecksumMismatch".into(),
                message: "SHA-256 differs".into(),
                next_attempt: "2026-12-07T10:00:00Z".into(),
            },
            &ClusterFacts::Missing,
            Some(1),
            &now(1),
        );
        let reasons: Vec<(&str, &str, &str)> = s
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("Ingested", "False", "ChecksumMismatch"),
                ("Healthy", "False", "ClusterNotFound")
            ]
        );
        assert_eq!(s.health, None);
    }

    #[test]
    fn a_blob_of_a_cluster_whose_spec_is_refused_says_why_and_keeps_what_was_seen() {
        let previous = BlobStatus {
            health: Some(BlobHealth::Healthy),
            shards: Some("4/4".into()),
            ..BlobStatus::default()
        };
        let s = blob_status(
            &previous,
            Some(ID),
            &IngestState::Done,
            &ClusterFacts::Invalid("spec.nodes 9 is more than spec.shards 4".into()),
            Some(1),
            &now(1),
        );
        let healthy = s.conditions.iter().find(|c| c.type_ == "Healthy").unwrap();
        assert_eq!(healthy.reason, "ClusterInvalid");
        assert!(
            healthy.message.contains("spec.nodes 9"),
            "{}",
            healthy.message
        );
        assert_eq!(s.health, Some(BlobHealth::Healthy), "kept");
        assert_eq!(s.shards.as_deref(), Some("4/4"));
    }

    #[test]
    fn a_failed_ingest_waits_for_its_next_attempt_and_only_until_then() {
        let failed = |at: i64| IngestState::Failed {
            reason: "SourceNotFound".into(),
            message: "no key model.json".into(),
            next_attempt: now(at).0.to_string(),
        };
        let status = blob_status(
            &BlobStatus::default(),
            None,
            &failed(1_000),
            &ClusterFacts::Unobserved,
            Some(1),
            &now(400),
        );
        assert_eq!(
            status.next_ingest_attempt.as_deref(),
            Some("1970-01-01T00:16:40Z")
        );
        // Before it is due: the same failure, and the time left.
        let (wait, state) = waiting_to_retry(&status, now(700).0).unwrap();
        assert_eq!(wait, Duration::from_secs(300));
        assert_eq!(state, failed(1_000));
        // The same status again: nothing to write.
        let again = blob_status(
            &status,
            None,
            &state,
            &ClusterFacts::Unobserved,
            Some(1),
            &now(700),
        );
        assert_eq!(again, status);
        // Due, or past: an attempt may start.
        assert_eq!(waiting_to_retry(&status, now(1_000).0), None);
        assert_eq!(waiting_to_retry(&status, now(5_000).0), None);
        // Stored, or never failed: nothing to wait for.
        let stored = BlobStatus {
            blob_id: Some("AAAA".into()),
            ..status.clone()
        };
        assert_eq!(waiting_to_retry(&stored, now(700).0), None);
        assert_eq!(waiting_to_retry(&BlobStatus::default(), now(700).0), None);
    }

    #[test]
    fn the_same_facts_give_the_same_status_so_nothing_is_rewritten() {
        let facts = observed(&[0, 1, 2, 3, 4, 5, 6], false);
        let first = status_of(&facts);
        let second = blob_status(
            &first,
            Some(ID),
            &IngestState::Done,
            &facts,
            Some(1),
            &now(99),
        );
        assert_eq!(first, second);
    }
}
