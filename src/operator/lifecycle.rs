//! What happens to each node pod, as a pure function of what was observed:
//! a failed pod is deleted so it can be created again; a pod whose claim
//! is gone or going is deleted so the claim can be recreated empty (its
//! pairs are then rebuilt from peers); a pod that is not ready is
//! "unavailable since" a time kept in the status (so a new leader knows
//! it); one unavailable longer than the grace period is evicted: its
//! shards go to other nodes and are rebuilt there.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::crd::UnavailableNode;

/// A node pod as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// Ready condition true.
    pub ready: bool,
    /// Phase Failed or Succeeded: it will not run again by itself.
    pub finished: bool,
    /// When deletion was requested, if it was.
    pub deleting_since: Option<Timestamp>,
}

/// A node pod's claim as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimState {
    /// Present and not being deleted.
    Present,
    /// Not there.
    Missing,
    /// Being deleted (held by the pod that uses it).
    Terminating,
    /// Ephemeral storage: no claim.
    NotUsed,
}

/// One node: its pod and claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeObserved {
    /// Pod name.
    pub name: String,
    /// The pod, if it exists.
    pub pod: Option<PodState>,
    /// Its claim.
    pub claim: ClaimState,
}

/// Why a node pod is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// It failed or completed and will not restart.
    PodFinished,
    /// Its claim is gone or going: it must release it, and its successor
    /// starts on an empty volume.
    VolumeLost,
}

/// What to do with one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDecision {
    /// Pod name.
    pub name: String,
    /// Delete the pod, and why.
    pub delete_pod: Option<DeleteReason>,
    /// Ready and serving.
    pub available: bool,
    /// Since when it has not been available.
    pub unavailable_since: Option<Timestamp>,
    /// Unavailable longer than the grace period: its shards move.
    pub evicted: bool,
}

/// Decides for every node. `previous` is the status' list of unavailable
/// nodes; a node keeps its first "since" while it stays unavailable.
pub fn decide(
    nodes: &[NodeObserved],
    previous: &[UnavailableNode],
    grace: Duration,
    now: Timestamp,
) -> Vec<NodeDecision> {
    nodes
        .iter()
        .map(|node| {
            let delete_pod = match &node.pod {
                Some(pod) if pod.deleting_since.is_some() => None,
                Some(_) if matches!(node.claim, ClaimState::Missing | ClaimState::Terminating) => {
                    Some(DeleteReason::VolumeLost)
                }
                Some(pod) if pod.finished => Some(DeleteReason::PodFinished),
                _ => None,
            };
            let available = delete_pod.is_none()
                && node
                    .pod
                    .as_ref()
                    .is_some_and(|p| p.ready && p.deleting_since.is_none() && !p.finished);
            let unavailable_since = (!available).then(|| {
                previous
                    .iter()
                    .find(|u| u.name == node.name)
                    .and_then(|u| u.since.parse::<Timestamp>().ok())
                    .or_else(|| node.pod.as_ref().and_then(|p| p.deleting_since))
                    .unwrap_or(now)
            });
            let evicted = unavailable_since.is_some_and(|since| {
                now.duration_since(since) >= SignedDuration::try_from(grace).unwrap_or_default()
            });
            NodeDecision {
                name: node.name.clone(),
                delete_pod,
                available,
                unavailable_since,
                evicted,
            }
        })
        .collect()
}

/// Of the node pods whose claim is being deleted (Terminating: someone
/// asked for the volume to go, e.g. to replace a disk) or is missing while
/// the pod still serves (the claim lost its labels, say), deletes at most
/// one at a time, and only while `fleet_whole` (no repair running or
/// waiting, none in the last view), no node pod is being deleted and
/// every other node pod is ready: deleting the pod lets its claim and
/// volume go, and volumes dropped together would take the blobs whose
/// pairs they hold (pods serving on claims the operator cannot see would
/// all restart at once). The others keep running on their volumes until
/// their turn. A pod that does not serve and whose claim is missing goes
/// at once: it cannot start without a claim. Returns the nodes held back.
pub fn pace_volume_drops(
    nodes: &[NodeObserved],
    decisions: &mut [NodeDecision],
    fleet_whole: bool,
) -> Vec<String> {
    let serving = |n: &NodeObserved| n.pod.as_ref().is_some_and(|p| p.ready && !p.finished);
    let paced = |n: &NodeObserved| {
        n.claim == ClaimState::Terminating || (n.claim == ClaimState::Missing && serving(n))
    };
    let deleting = nodes
        .iter()
        .any(|n| n.pod.as_ref().is_some_and(|p| p.deleting_since.is_some()));
    let others_ready = nodes.iter().filter(|n| !paced(n)).all(serving);
    let mut room = usize::from(fleet_whole && !deleting && others_ready);
    let mut held = Vec::new();
    for (node, decision) in nodes.iter().zip(decisions.iter_mut()) {
        let dropping = paced(node) && decision.delete_pod == Some(DeleteReason::VolumeLost);
        if !dropping {
            continue;
        }
        if room > 0 {
            room -= 1;
            continue;
        }
        decision.delete_pod = None;
        if serving(node) {
            decision.available = true;
            decision.unavailable_since = None;
            decision.evicted = false;
        }
        held.push(node.name.clone());
    }
    held
}

/// Holds back every eviction when the nodes still available own fewer
/// than `p` shards (`shards_of` a node in the current assignment): no
/// blob could then be rebuilt anywhere, and moving the shards onto the
/// few nodes left would leave every blob Lost while its slivers wait on
/// nodes about to return (a whole cluster restarting slower than the
/// grace period, volumes attaching late). Returns the shards held back
/// (0 when the evictions go ahead).
pub fn hold_mass_evictions(
    decisions: &mut [NodeDecision],
    shards_of: impl Fn(&str) -> usize,
    p: usize,
) -> usize {
    let moving: usize = decisions
        .iter()
        .filter(|d| d.evicted)
        .map(|d| shards_of(&d.name))
        .sum();
    let available: usize = decisions
        .iter()
        .filter(|d| d.available)
        .map(|d| shards_of(&d.name))
        .sum();
    if moving == 0 || available >= p {
        return 0;
    }
    for decision in decisions.iter_mut() {
        decision.evicted = false;
    }
    moving
}

/// When the next eviction falls due, if any node is unavailable but not yet evicted.
pub fn next_eviction_in(
    decisions: &[NodeDecision],
    grace: Duration,
    now: Timestamp,
) -> Option<Duration> {
    decisions
        .iter()
        .filter(|d| !d.evicted)
        .filter_map(|d| d.unavailable_since)
        .filter_map(|since| {
            let gone = now.duration_since(since);
            let left = SignedDuration::try_from(grace).unwrap_or_default() - gone;
            // Past due and not evicted: held back (`hold_mass_evictions`);
            // the next change of the pods brings the next look.
            Duration::try_from(left).ok().filter(|left| !left.is_zero())
        })
        .min()
}

/// Parses a grace period such as `5m`, `90s` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = 0u64;
    let mut number = String::new();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    for c in text.chars() {
        match c {
            '0'..='9' => number.push(c),
            's' | 'm' | 'h' => {
                let value: u64 = number
                    .parse()
                    .map_err(|_| format!("{text:?}: a number must come before {c:?}"))?;
                let unit = match c {
                    's' => 1,
                    'm' => 60,
                    _ => 3600,
                };
                total = value
                    .checked_mul(unit)
                    .and_then(|v| total.checked_add(v))
                    .ok_or_else(|| format!("{text:?} is too long"))?;
                number.clear();
            }
            _ => {
                return Err(format!(
                    "{text:?}: use numbers with s, m or h, e.g. 5m or 1h30m"
                ))
            }
        }
    }
    if !number.is_empty() {
        return Err(format!(
            "{text:?}: the last number needs a unit (s, m or h)"
        ));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn node(pod: Option<(bool, bool, Option<i64>)>, claim: ClaimState) -> NodeObserved {
        NodeObserved {
            name: "media-node-0".into(),
            pod: pod.map(|(ready, finished, deleting)| PodState {
                ready,
                finished,
                deleting_since: deleting.map(ts),
            }),
            claim,
        }
    }

    const GRACE: Duration = Duration::from_secs(300);

    fn decision(name: &str, evicted: bool) -> NodeDecision {
        NodeDecision {
            name: name.into(),
            delete_pod: None,
            available: !evicted,
            unavailable_since: evicted.then(|| ts(0)),
            evicted,
        }
    }

    #[test]
    fn volumes_asked_to_go_on_many_nodes_go_one_at_a_time_and_only_while_the_fleet_is_whole() {
        let terminating = |i: usize| NodeObserved {
            name: format!("media-node-{i}"),
            ..node(Some((true, false, None)), ClaimState::Terminating)
        };
        let nodes: Vec<NodeObserved> = (0..3).map(terminating).collect();
        let fresh = || decide(&nodes, &[], GRACE, ts(0));
        let dropped = |d: &[NodeDecision]| {
            d.iter()
                .filter(|d| d.delete_pod == Some(DeleteReason::VolumeLost))
                .count()
        };
        assert_eq!(dropped(&fresh()), 3, "decided alone, every one would go");
        let mut whole = fresh();
        let held = pace_volume_drops(&nodes, &mut whole, true);
        assert_eq!(dropped(&whole), 1);
        assert_eq!(held, ["media-node-1", "media-node-2"]);
        assert!(whole[1].available && whole[1].unavailable_since.is_none());
        let mut repairing = fresh();
        pace_volume_drops(&nodes, &mut repairing, false);
        assert_eq!(dropped(&repairing), 0, "not while blobs are repaired");
        // Not while another node pod is not ready.
        let mut with_down = nodes.clone();
        with_down.push(NodeObserved {
            name: "media-node-3".into(),
            ..node(Some((false, false, None)), ClaimState::Present)
        });
        let mut down = decide(&with_down, &[], GRACE, ts(0));
        pace_volume_drops(&with_down, &mut down, true);
        assert_eq!(dropped(&down), 0);
        // Nor while a pod is being deleted.
        let mut busy_nodes = nodes.clone();
        busy_nodes[0] = NodeObserved {
            name: "media-node-0".into(),
            ..node(Some((true, false, Some(-1))), ClaimState::Terminating)
        };
        let mut busy = decide(&busy_nodes, &[], GRACE, ts(0));
        pace_volume_drops(&busy_nodes, &mut busy, true);
        assert_eq!(dropped(&busy), 0);
    }

    #[test]
    fn serving_pods_whose_claims_went_missing_go_one_at_a_time_and_pods_that_cannot_start_at_once()
    {
        let at = |i: usize, ready: bool| NodeObserved {
            name: format!("media-node-{i}"),
            ..node(Some((ready, false, None)), ClaimState::Missing)
        };
        let dropped = |d: &[NodeDecision]| {
            d.iter()
                .filter(|d| d.delete_pod == Some(DeleteReason::VolumeLost))
                .count()
        };
        // Every claim unseen (its labels edited away), every pod serving.
        let serving: Vec<NodeObserved> = (0..4).map(|i| at(i, true)).collect();
        let mut decisions = decide(&serving, &[], GRACE, ts(0));
        assert_eq!(dropped(&decisions), 4, "decided alone, every one would go");
        let held = pace_volume_drops(&serving, &mut decisions, true);
        assert_eq!(dropped(&decisions), 1);
        assert_eq!(held.len(), 3);
        // Pods that cannot start without their claim are not held.
        let pending: Vec<NodeObserved> = (0..2).map(|i| at(i, false)).collect();
        let mut decisions = decide(&pending, &[], GRACE, ts(0));
        assert!(pace_volume_drops(&pending, &mut decisions, false).is_empty());
        assert_eq!(dropped(&decisions), 2);
    }

    #[test]
    fn evictions_are_held_back_while_the_nodes_left_own_too_few_shards_to_rebuild_any() {
        // Seven nodes of one shard each: p = 3.
        let one_shard = |_: &str| 1;
        let nodes = |evicted: usize, available: usize| -> Vec<NodeDecision> {
            (0..7)
                .map(|i| {
                    let mut d = decision(&format!("n{i}"), i < evicted);
                    d.available = i >= 7 - available;
                    d
                })
                .collect()
        };
        // Three gone, four left: they rebuild the three.
        let mut some = nodes(3, 4);
        assert_eq!(hold_mass_evictions(&mut some, one_shard, 3), 0);
        assert_eq!(some.iter().filter(|d| d.evicted).count(), 3);
        // A whole cluster restarting: nothing moves.
        let mut all = nodes(7, 0);
        assert_eq!(hold_mass_evictions(&mut all, one_shard, 3), 7);
        assert!(all.iter().all(|d| !d.evicted));
        assert_eq!(
            next_eviction_in(&all, GRACE, ts(1000)),
            None,
            "no hot requeue"
        );
        // Five gone past the grace, two back: still too few to rebuild.
        let mut most = nodes(5, 2);
        assert_eq!(hold_mass_evictions(&mut most, one_shard, 3), 5);
        // A node evicted earlier owns nothing any more: it does not count.
        let shards = |name: &str| usize::from(name != "n0");
        let mut after = nodes(1, 1);
        assert_eq!(
            hold_mass_evictions(&mut after, shards, 3),
            0,
            "moves nothing"
        );
    }

    #[test]
    fn a_ready_pod_with_its_claim_is_left_alone() {
        let d = &decide(
            &[node(Some((true, false, None)), ClaimState::Present)],
            &[],
            GRACE,
            ts(0),
        )[0];
        assert_eq!(d.delete_pod, None);
        assert!(d.available);
        assert_eq!(d.unavailable_since, None);
        assert!(!d.evicted);
    }

    #[test]
    fn a_pod_whose_claim_is_gone_or_going_is_deleted_to_start_on_an_empty_volume() {
        for claim in [ClaimState::Missing, ClaimState::Terminating] {
            let d = &decide(&[node(Some((true, false, None)), claim)], &[], GRACE, ts(0))[0];
            assert_eq!(d.delete_pod, Some(DeleteReason::VolumeLost), "{claim:?}");
            assert!(!d.available);
            assert_eq!(d.unavailable_since, Some(ts(0)));
        }
    }

    #[test]
    fn a_finished_pod_is_deleted_and_one_already_going_is_not_deleted_twice() {
        let finished = &decide(
            &[node(Some((false, true, None)), ClaimState::Present)],
            &[],
            GRACE,
            ts(0),
        )[0];
        assert_eq!(finished.delete_pod, Some(DeleteReason::PodFinished));
        let going = &decide(
            &[node(Some((true, false, Some(-4))), ClaimState::Terminating)],
            &[],
            GRACE,
            ts(0),
        )[0];
        assert_eq!(going.delete_pod, None);
        // Unavailable from the moment deletion was asked for.
        assert_eq!(going.unavailable_since, Some(ts(-4)));
    }

    #[test]
    fn a_node_keeps_its_first_unavailable_time_and_is_evicted_after_the_grace_period() {
        let previous = [UnavailableNode {
            name: "media-node-0".into(),
            since: ts(-299).to_string(),
            reason: None,
        }];
        let missing = [node(None, ClaimState::Present)];
        let d = &decide(&missing, &previous, GRACE, ts(0))[0];
        assert_eq!(d.unavailable_since, Some(ts(-299)));
        assert!(!d.evicted);
        assert_eq!(
            next_eviction_in(std::slice::from_ref(d), GRACE, ts(0)),
            Some(Duration::from_secs(1))
        );
        let d = &decide(&missing, &previous, GRACE, ts(1))[0];
        assert!(d.evicted);
        assert_eq!(
            next_eviction_in(std::slice::from_ref(d), GRACE, ts(1)),
            None
        );
    }

    #[test]
    fn a_node_that_is_ready_again_is_no_longer_unavailable() {
        let previous = [UnavailableNode {
            name: "media-node-0".into(),
            since: ts(-1000).to_string(),
            reason: None,
        }];
        let d = &decide(
            &[node(Some((true, false, None)), ClaimState::Present)],
            &previous,
            GRACE,
            ts(0),
        )[0];
        assert!(d.available && !d.evicted);
        assert_eq!(d.unavailable_since, None);
    }

    #[test]
    fn ephemeral_nodes_are_never_deleted_for_their_volume() {
        let d = &decide(
            &[node(Some((true, false, None)), ClaimState::NotUsed)],
            &[],
            GRACE,
            ts(0),
        )[0];
        assert_eq!(d.delete_pod, None);
    }

    #[test]
    fn grace_periods_parse_like_the_schema_allows() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }
}
