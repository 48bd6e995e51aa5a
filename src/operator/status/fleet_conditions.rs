//! What the fleet's health adds to a StorageCluster's conditions: blobs
//! not healthy, repairs in flight or failing, nodes not answering or
//! evicted, a CA rotation under way.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;

/// A condition's reason and message for `items` (reason, message) ranked
/// by `order`: the first reason, and every message, first first. None
/// without items.
fn ranked(
    mut items: Vec<(&'static str, String)>,
    order: &[&str],
) -> Option<(&'static str, String)> {
    let rank = |reason: &str| {
        order
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(order.len())
    };
    items.sort_by_key(|(reason, _)| rank(reason));
    let (reason, _) = items.first()?;
    let reason = *reason;
    let messages: Vec<String> = items.into_iter().map(|(_, m)| m).collect();
    Some((reason, messages.join("; ")))
}

/// The Degraded condition's reason and message for `problems` (reason,
/// message): the most pressing reason, and every message, most pressing
/// first. None without problems.
fn degraded_by(problems: Vec<(&'static str, String)>) -> Option<(&'static str, String)> {
    ranked(problems, &DEGRADED_REASONS)
}

/// What the Degraded message says of repairs failing: each node, how many
/// in a row, and why the last failed.
fn failing_said(failing: &[FailingRepairs]) -> String {
    let each: Vec<String> = failing
        .iter()
        .map(|f| format!("{} ({} in a row): {}", f.node, f.failures, f.reason))
        .collect();
    if each.is_empty() {
        String::new()
    } else {
        format!("; repairs failing on {}", each.join("; "))
    }
}

/// What the Degraded message says of Lost blobs beyond their count: the
/// S3 objects they take, or where their ids are listed.
fn lost_said(lost_objects: Option<&crate::wire::ObjectsOfBlobs>, unknown: Option<&str>) -> String {
    let unreadable = "; Lost blobs (status.lostBlobs) cannot be read";
    let Some(found) = lost_objects else {
        return match unknown {
            Some(why) => format!(
                "{unreadable}; which S3 objects they hold is not known (status.lostObjects \
                 is empty for that, not because none are): the gateway could not be asked: \
                 {why}; asked again within minutes"
            ),
            None => unreadable.into(),
        };
    };
    let searching = found.resume_after.is_some();
    if found.objects.is_empty() {
        return if searching {
            format!("{unreadable}; the S3 index is being searched for the objects they hold")
        } else {
            unreadable.into()
        };
    }
    let named: Vec<String> = found
        .objects
        .iter()
        .take(MOST_LOST_OBJECTS_SAID)
        .map(crate::operator::lost_objects::object_name)
        .collect();
    let more = if found.objects.len() > named.len() || found.truncated {
        ", ... (status.lostObjects lists more)"
    } else {
        ""
    };
    let still = if searching {
        " (the search of the S3 index for more goes on)"
    } else {
        ""
    };
    format!(
        "{unreadable}, nor the S3 objects they hold: {}{more}{still}",
        named.join(", ")
    )
}

/// A CA rotation in progress, for people.
fn rotation_said(rotation: &CaRotationStatus) -> String {
    let step = match rotation.step.as_str() {
        "TrustingNewCa" => {
            "step 1 of 3, the new CA trusted beside the current one, which still signs"
        }
        _ => "step 2 of 3, the new CA signing, the previous one still trusted",
    };
    let mut said = format!("rotating the cluster's CA: {step}");
    if let Some(since) = &rotation.since {
        said.push_str(&format!(", since {since}"));
    }
    if let Some(next) = &rotation.next_step_after {
        said.push_str(&format!("; the next step no earlier than {next}"));
    }
    if !rotation.waiting_for.is_empty() {
        said.push_str(&format!(
            ", waiting for: {}",
            rotation.waiting_for.join("; ")
        ));
    }
    said
}

/// Blobs that are not healthy make a cluster whose pods are all ready
/// Degraded; repairs in flight make it Progressing; evicted nodes are named.
pub(super) fn fold_in_fleet(
    status: &mut StorageClusterStatus,
    fleet: &FleetSummary,
    generation: Option<i64>,
    now: &Time,
) {
    status.unavailable_nodes = fleet.unavailable.clone();
    status.retiring_nodes = fleet.retiring.clone();
    // Say why the first node pod that is not ready is not, where Kubernetes
    // or the operator knows.
    if let Some((node, reason)) = fleet
        .unavailable
        .iter()
        .find_map(|u| Some((&u.name, u.reason.as_ref()?)))
    {
        if let Some(ready) = status
            .conditions
            .iter_mut()
            .find(|c| c.type_ == "Ready" && c.status == "False")
        {
            ready.message.push_str(&format!("; {node}: {reason}"));
        }
    }
    status.blobs = fleet.blobs.clone();
    status.repairs_in_flight = Some(fleet.repairs_in_flight);
    status.failing_repairs = fleet.failing_repairs.clone();
    status.not_answering_nodes = fleet.not_answering.clone();
    let set = |status: &mut StorageClusterStatus, c: Condition| {
        if let Some(old) = status.conditions.iter_mut().find(|o| o.type_ == c.type_) {
            *old = c;
        }
    };
    // Every reason the cluster is Degraded: the nodes' (from the pods),
    // then the fleet's; said together in one condition.
    let mut problems: Vec<(&'static str, String)> = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == "True")
        .map(|c| {
            let reason = match c.reason.as_str() {
                "TooManyShardsDown" => "TooManyShardsDown",
                _ => "NodesNotReady",
            };
            (reason, c.message.clone())
        })
        .into_iter()
        .collect();
    // Problems that make a cluster whose node pods are all ready Degraded.
    let mut degrading = false;
    if let Some(blobs) = &fleet.blobs {
        let unhealthy = blobs.degraded + blobs.at_risk + blobs.lost;
        // Only a cluster whose node pods are all ready says its blobs.
        if unhealthy > 0 && status.phase.as_deref() == Some("Ready") {
            // Blobs are counted from the nodes that answer: while one does
            // not, a blob short of pairs may only be out of reach.
            let lost_for_good = blobs.lost > 0 && fleet.not_answering.is_empty();
            let reason = if lost_for_good {
                "BlobsLost"
            } else if blobs.at_risk > 0 || blobs.lost > 0 {
                "BlobsAtRisk"
            } else {
                "BlobsDegraded"
            };
            let lost = if lost_for_good || blobs.lost == 0 {
                format!("{} lost", blobs.lost)
            } else {
                format!("{} unreadable while nodes do not answer", blobs.lost)
            };
            let mut message = format!(
                "{} blobs degraded, {} at risk, {lost}; {} repairs in flight",
                blobs.degraded, blobs.at_risk, fleet.repairs_in_flight
            );
            message.push_str(&failing_said(&fleet.failing_repairs));
            if lost_for_good {
                message.push_str(&lost_said(
                    fleet.lost_objects.as_ref(),
                    fleet.lost_objects_unknown.as_deref(),
                ));
                status.lost_blobs = fleet
                    .lost_blobs
                    .iter()
                    .take(MOST_LOST_BLOBS_LISTED)
                    .cloned()
                    .collect();
                status.lost_objects = fleet
                    .lost_objects
                    .iter()
                    .flat_map(|found| &found.objects)
                    .take(crate::operator::lost_objects::MOST_LOST_OBJECTS_LISTED)
                    .map(crate::operator::lost_objects::object_name)
                    .collect();
            }
            problems.push((reason, message));
            degrading = true;
        }
    }
    if !fleet.not_answering.is_empty() {
        problems.push((
            "NodesNotAnswering",
            format!(
                "node pods run but their API does not answer within the deadline (stopped, hung or cut off): {}",
                fleet.not_answering.join(", ")
            ),
        ));
        degrading = true;
    }
    if let Some(gateways) = fleet.gateways {
        status.gateways_available = Some(gateways.available);
        if gateways.available == 0 && gateways.wanted > 0 && !gateways.starting {
            problems.push((
                "GatewayUnavailable",
                format!(
                    "no gateway pod is available (0 of {}): clients can neither store nor read; \
                     the gateway Deployment's and its pods' events say why",
                    gateways.wanted
                ),
            ));
            degrading = true;
        }
    }
    if !fleet.evicted.is_empty() {
        problems.push((
            "ShardsMoved",
            format!(
                "gone longer than the grace period (the shards they owned, if any, moved to other nodes): {}",
                fleet.evicted.join(", ")
            ),
        ));
    }
    if degrading && status.phase.as_deref() == Some("Ready") {
        status.phase = Some("Degraded".into());
    }
    if let Some((reason, message)) = degraded_by(problems) {
        set(
            status,
            condition("Degraded", true, reason, message, generation, now),
        );
    }
    status.ca_rotation = fleet.ca_rotation.clone();
    let settled = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Progressing" && c.status == "False");
    // What the cluster is busy with: each said, the most telling first.
    let mut busy: Vec<(&'static str, String)> = Vec::new();
    if let Some(rotation) = fleet.ca_rotation.as_ref().filter(|_| settled) {
        busy.push(("RotatingCa", rotation_said(rotation)));
    }
    if fleet.shards_to_move > 0 && fleet.retiring.is_empty() {
        busy.push((
            "Rebalancing",
            format!(
                "{} shards still move to balance the node pods, a few at a time, each batch once the last is rebuilt and every blob is Healthy",
                fleet.shards_to_move
            ),
        ));
    }
    if !fleet.retiring.is_empty() {
        let message = if fleet.shards_to_move == 0 {
            format!(
                "spec.nodes is lower than the node pods running: {} have no shards left to move and are deleted once the last moved are rebuilt and every blob is Healthy",
                fleet.retiring.join(", ")
            )
        } else {
            format!(
                "spec.nodes is lower than the node pods running: {} keep serving until their shards have moved to the others ({} still to move, a few at a time, each batch once the last is rebuilt and every blob is Healthy), then they are deleted",
                fleet.retiring.join(", "),
                fleet.shards_to_move
            )
        };
        busy.push(("NodesRetiring", message));
    }
    if fleet.repairs_in_flight > 0 {
        busy.push((
            "Repairing",
            format!("{} repairs in flight", fleet.repairs_in_flight),
        ));
    }
    if !fleet.outdated.is_empty() {
        busy.push((
            "RollingUpdate",
            format!(
                "{} node pods run an older spec and are replaced one at a time: {}{}",
                fleet.outdated.len(),
                fleet.outdated.join(", "),
                fleet
                    .rollout_wait
                    .as_ref()
                    .map(|w| format!("; waiting for {w}"))
                    .unwrap_or_default()
            ),
        ));
    }
    if let Some((reason, message)) = ranked(busy, &PROGRESSING_REASONS) {
        set(
            status,
            condition("Progressing", true, reason, message, generation, now),
        );
    }
    let synced =
        fleet.sync_failures.is_empty() && fleet.held.is_none() && fleet.growth_held.is_none();
    let failures = (!fleet.sync_failures.is_empty()).then(|| {
        format!(
            "{} objects could not be applied and are retried (repairs and status go on): {}",
            fleet.sync_failures.len(),
            fleet.sync_failures.join("; ")
        )
    });
    let (reason, message) = if synced {
        (
            "Applied",
            "every object of the cluster is applied".to_string(),
        )
    } else if let Some(held) = &fleet.held {
        (held.reason, held.message())
    } else if let Some(growth) = &fleet.growth_held {
        let also = failures.map_or(String::new(), |f| format!("; and {f}"));
        ("NameTaken", format!("{growth}{also}"))
    } else {
        ("ApplyFailed", failures.unwrap_or_default())
    };
    let message = crate::operator::context::cut_to(message, 4096);
    status.conditions.push(condition(
        "Synced", synced, reason, message, generation, now,
    ));
}
