//! A StorageCluster's status as a pure function of what was observed: spec
//! problems, which node pods exist and are ready, and the assignment.
//! Conditions keep their last transition time while their status holds, so
//! the controller writes status only when something changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::crd::{
    BlobCounts, CaRotationStatus, FailingRepairs, ShardAssignment, StorageCluster,
    StorageClusterSpec, StorageClusterStatus, UnavailableNode,
};
use crate::codec::EncodingConfig;
use crate::fleet::{self, Assignment, NodeSpec};

/// One node pod as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedNode {
    /// Pod name.
    pub name: String,
    /// The Kubernetes node it runs on (the pod's own name while it is not
    /// scheduled: a domain of its own).
    pub host: String,
    /// Its failure domain: the host's `placement.topologyKey` label (the
    /// host itself when the label is missing).
    pub domain: String,
    /// Whether the pod exists.
    pub exists: bool,
    /// Whether it is Ready.
    pub ready: bool,
}

/// What the fleet loop saw of a cluster, beyond its pods.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FleetSummary {
    /// Node pods not ready, and since when.
    pub unavailable: Vec<UnavailableNode>,
    /// Node pods ready by Kubernetes whose API did not answer.
    pub not_answering: Vec<String>,
    /// Node pods evicted (gone past the grace period).
    pub evicted: Vec<String>,
    /// Blobs by health, once the inventories were read.
    pub blobs: Option<BlobCounts>,
    /// Ids of Lost blobs, in order (the status lists the first
    /// `MOST_LOST_BLOBS_LISTED`).
    pub lost_blobs: Vec<String>,
    /// With S3: the keys holding Lost blobs, when the gateway said.
    pub lost_objects: Option<crate::wire::ObjectsOfBlobs>,
    /// With S3: why the gateway could not say which keys hold the Lost
    /// blobs (it never answered about them).
    pub lost_objects_unknown: Option<String>,
    /// Repairs in flight.
    pub repairs_in_flight: u32,
    /// Nodes whose last repair failed, with how many in a row and why.
    pub failing_repairs: Vec<FailingRepairs>,
    /// Shards still to move from owners that are present, a few at a time,
    /// to balance the node pods.
    pub shards_to_move: u32,
    /// Node pods beyond a lowered spec.nodes that still own shards.
    pub retiring: Vec<String>,
    /// Node pods created from an older spec, waiting to be replaced.
    pub outdated: Vec<String>,
    /// What their replacement waits for, if it waits.
    pub rollout_wait: Option<String>,
    /// Objects that could not be applied or deleted this time, and why.
    pub sync_failures: Vec<String>,
    /// Why nothing was applied (repairs and status go on), if nothing was.
    pub held: Option<HeldObjects>,
    /// Why the cluster stopped growing toward spec.nodes (objects it did
    /// not make hold the names of its next node pod), if it did.
    pub growth_held: Option<String>,
    /// The gateway Deployment's pods: available and wanted, once read.
    pub gateways: Option<GatewayPods>,
    /// The CA rotation in progress, if one runs.
    pub ca_rotation: Option<CaRotationStatus>,
}

/// Lost blob ids listed in the status at most.
pub const MOST_LOST_BLOBS_LISTED: usize = 50;

/// S3 keys named in the Degraded condition's message at most (the status
/// lists more in `lostObjects`).
const MOST_LOST_OBJECTS_SAID: usize = 5;

/// Why a cluster is Degraded, most pressing first: the condition's reason
/// is the first present, its message says every one.
const DEGRADED_REASONS: [&str; 8] = [
    "BlobsLost",
    "TooManyShardsDown",
    "GatewayUnavailable",
    "ShardsMoved",
    "NodesNotAnswering",
    "NodesNotReady",
    "BlobsAtRisk",
    "BlobsDegraded",
];

/// What a cluster is busy with, most telling first: the Progressing
/// condition's reason is the first present, its message says every one.
/// Repairs follow from the others (a moved shard is rebuilt), so they name
/// the condition only alone, and a CA rotation only when nothing else runs.
const PROGRESSING_REASONS: [&str; 5] = [
    "RollingUpdate",
    "NodesRetiring",
    "Rebalancing",
    "Repairing",
    "RotatingCa",
];

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
        .map(super::lost_objects::object_name)
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

/// How many gateway pods are available, of how many wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayPods {
    /// Available (ready for the Deployment's minReadySeconds).
    pub available: u16,
    /// Wanted (the Deployment's replicas).
    pub wanted: u16,
    /// The Deployment was made moments ago: none available is no fault yet.
    pub starting: bool,
}

/// Why a reconcile applied none of a cluster's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldObjects {
    /// The Synced condition's and the Event's reason: `TlsMaterial` (the
    /// cluster's TLS material cannot be read or made) or `NameTaken`
    /// (objects the operator did not make hold names of the cluster's).
    pub reason: &'static str,
    /// What is wrong, and what to do.
    pub problem: String,
}

impl HeldObjects {
    /// The whole statement: nothing is applied until the problem is fixed.
    pub fn message(&self) -> String {
        let until = match self.reason {
            "TlsMaterial" => "the cluster's TLS material is fixed",
            _ => "the names are free or the cluster's own",
        };
        super::context::truncate_note(format!(
            "nothing is applied, created or replaced until {until} (repairs and status go on): {}",
            self.problem
        ))
    }
}

/// Checks a spec beyond what the schema can (the controller's last line of
/// defence when a CRD without CEL rules is installed).
pub fn validate_spec(spec: &StorageClusterSpec) -> Result<EncodingConfig, String> {
    let config = EncodingConfig::new(spec.shards).map_err(|e| e.to_string())?;
    if spec.nodes == 0 || spec.nodes > spec.shards {
        return Err(format!(
            "nodes must be between 1 and shards ({}); got {}",
            spec.shards, spec.nodes
        ));
    }
    if spec.storage.size.is_none() && spec.storage.ephemeral != Some(true) {
        return Err("storage needs a size, or ephemeral: true".into());
    }
    if let Some(grace) = spec.repair.as_ref().and_then(|r| r.grace_period.as_deref()) {
        super::lifecycle::parse_duration(grace).map_err(|e| format!("repair.gracePeriod: {e}"))?;
    }
    // A name no certificate can hold would stop every certificate's
    // renewal, the nodes' too.
    for name in spec.gateway_names() {
        if let Some(problem) = super::desired::tls::certificate_name_problem(name) {
            return Err(format!("tls.gatewayNames: {problem}"));
        }
    }
    if let Some(domain) = spec.s3.as_ref().and_then(|s3| s3.domain.as_deref()) {
        if let Some(problem) = super::desired::tls::certificate_name_problem(domain) {
            return Err(format!("s3.domain: {problem}"));
        }
    }
    super::desired::gateway_sizing::gateway_sizing(spec.gateway.as_ref())?;
    super::desired::gateway_replicas::gateway_replicas(spec)?;
    super::desired::node_scrub::scrub_args(spec.scrub.as_ref())?;
    Ok(config)
}

pub(crate) fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// Keeps the previous transition time of conditions whose status did not change.
pub(crate) fn carry_transition_times(conditions: &mut [Condition], previous: &[Condition]) {
    for c in conditions {
        if let Some(old) = previous
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
}

/// The status of a cluster the operator refuses to act on: phase Failed,
/// not Ready for `reason`, explained by `problem` (pure; transition times
/// are carried over by the caller's [`carry_transition_times`]). What the
/// operator must not forget while it waits for a spec it can act on is
/// kept: where the shards are, which nodes are unavailable since when,
/// which retire, the CA rotation under way, and what it last knew of the
/// blobs (their counts, the Lost ones and the S3 objects they held: the
/// only list of lost keys, which a leader change also reads to tell only
/// news).
pub fn refused_status(
    cluster: &StorageCluster,
    reason: &str,
    problem: String,
    now: &Time,
) -> StorageClusterStatus {
    let generation = cluster.metadata.generation;
    let kept = cluster.status.clone().unwrap_or_default();
    StorageClusterStatus {
        phase: Some("Failed".into()),
        observed_generation: generation,
        conditions: vec![condition("Ready", false, reason, problem, generation, now)],
        shard_assignment: kept.shard_assignment,
        unavailable_nodes: kept.unavailable_nodes,
        retiring_nodes: kept.retiring_nodes,
        ca_rotation: kept.ca_rotation,
        blobs: kept.blobs,
        lost_blobs: kept.lost_blobs,
        lost_objects: kept.lost_objects,
        ..StorageClusterStatus::default()
    }
}

/// The status of `cluster` given the observed nodes, the assignment and
/// what the fleet loop saw.
pub fn cluster_status(
    cluster: &StorageCluster,
    assignment: &Assignment,
    nodes: &[ObservedNode],
    fleet: &FleetSummary,
    now: &Time,
) -> StorageClusterStatus {
    let generation = cluster.metadata.generation;
    let previous = cluster.status.clone().unwrap_or_default();
    let mut status = match validate_spec(&cluster.spec) {
        Err(problem) => refused_status(cluster, "InvalidSpec", problem, now),
        Ok(config) => {
            let ready = nodes.iter().filter(|n| n.ready).count();
            // Retiring node pods count until they are deleted.
            let wanted = usize::from(cluster.spec.nodes).max(nodes.len());
            let tolerated = |domain_of: fn(&ObservedNode) -> &String| {
                let specs: Vec<NodeSpec> = nodes
                    .iter()
                    .map(|n| NodeSpec {
                        name: n.name.clone(),
                        domain: domain_of(n).clone(),
                    })
                    .collect();
                fleet::tolerated_domain_losses(assignment, &specs, config.f())
            };
            let domains = tolerated(|n| &n.domain);
            let hosts = tolerated(|n| &n.host);
            let pods = tolerated(|n| &n.name);
            let domain_noun = domain_noun(&super::desired::topology_key(cluster));
            // A shard is down when its owner is not ready, or is ready by
            // Kubernetes but its API does not answer.
            let serving = |n: &ObservedNode| n.ready && !fleet.not_answering.contains(&n.name);
            let down_shards = assignment
                .iter()
                .filter(|(_, owner)| !nodes.iter().any(|n| &n.name == *owner && serving(n)))
                .count();
            let all_ready = ready == wanted && nodes.iter().filter(|n| n.exists).count() == wanted;
            // A cluster is being created until it was first Ready (or
            // Degraded): its node pods coming up one by one degrade nothing.
            // One that holds blobs is established whatever its phase (it
            // was refused meanwhile, or a pod of it never came up): its
            // losses are losses.
            let holds_blobs = previous
                .blobs
                .as_ref()
                .is_some_and(|b| b.healthy + b.degraded + b.at_risk + b.lost > 0);
            let established =
                matches!(previous.phase.as_deref(), Some("Ready" | "Degraded")) || holds_blobs;
            let creating = !established && !all_ready;
            let too_many_down = down_shards > config.f() && !creating;
            let (phase, ready_reason, ready_message) = if too_many_down {
                ("Degraded", "TooManyShardsDown", format!("{ready} of {wanted} node pods ready; {down_shards} shards unavailable, more than the {} tolerated: reads may fail", config.f()))
            } else if all_ready {
                (
                    "Ready",
                    "AllNodesReady",
                    format!("{ready} of {wanted} node pods ready"),
                )
            } else if creating {
                (
                    "Pending",
                    "Creating",
                    format!("creating the cluster: {ready} of {wanted} node pods ready"),
                )
            } else {
                ("Degraded", "NodesNotReady", format!("{ready} of {wanted} node pods ready; {down_shards} shards unavailable, {} tolerated", config.f()))
            };
            let degraded = !all_ready && !creating;
            let degraded_reason = match (degraded, too_many_down) {
                (_, true) => "TooManyShardsDown",
                (true, false) => "NodesNotReady",
                (false, _) if creating => "Creating",
                (false, _) => "AllNodesReady",
            };
            StorageClusterStatus {
                phase: Some(phase.into()),
                observed_generation: generation,
                ready_nodes: Some(ready as u16),
                fault_tolerance: Some(config.f() as u16),
                tolerates: Some(tolerates_text(config.f(), hosts, domains, domain_noun)),
                tolerated_host_losses: Some(hosts as u16),
                tolerated_domain_losses: Some(domains as u16),
                s3_endpoint: super::desired::s3::enabled(cluster)
                    .map(|_| super::desired::s3::s3_endpoint(cluster)),
                shard_assignment: assignment
                    .iter()
                    .map(|(shard, node)| ShardAssignment { shard: *shard, node: node.clone() })
                    .collect(),
                conditions: vec![
                    condition("Ready", all_ready && !too_many_down, ready_reason, ready_message, generation, now),
                    condition(
                        "Degraded",
                        degraded || too_many_down,
                        degraded_reason,
                        format!("{down_shards} shards on node pods that are not ready or do not answer; whole node pods tolerated: {pods}"),
                        generation,
                        now,
                    ),
                    condition(
                        "Progressing",
                        !all_ready,
                        if all_ready { "Stable" } else { "Reconciling" },
                        if all_ready { "nothing to do".into() } else { format!("waiting for {} node pods", wanted - ready.min(wanted)) },
                        generation,
                        now,
                    ),
                ],
                ..StorageClusterStatus::default()
            }
        }
    };
    if status.phase.as_deref() != Some("Failed") {
        fold_in_fleet(&mut status, fleet, generation, now);
    }
    carry_transition_times(&mut status.conditions, &previous.conditions);
    status
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

/// What one failure domain of `topology_key` is called, for people.
fn domain_noun(topology_key: &str) -> &'static str {
    match topology_key {
        super::desired::HOSTNAME_KEY => "host",
        "topology.kubernetes.io/zone" | "failure-domain.beta.kubernetes.io/zone" => "zone",
        "topology.kubernetes.io/region" | "failure-domain.beta.kubernetes.io/region" => "region",
        _ => "domain",
    }
}

fn plural(count: usize, noun: &str) -> String {
    format!("{count} {noun}{}", if count == 1 { "" } else { "s" })
}

/// "3 shards, 2 hosts, 1 zone": what may be lost at once without losing a blob.
fn tolerates_text(shards: usize, hosts: usize, domains: usize, domain_noun: &str) -> String {
    let mut text = format!("{}, {}", plural(shards, "shard"), plural(hosts, "host"));
    if domain_noun != "host" {
        text.push_str(&format!(", {}", plural(domains, domain_noun)));
    }
    text
}

/// Blobs that are not healthy make a cluster whose pods are all ready
/// Degraded; repairs in flight make it Progressing; evicted nodes are named.
fn fold_in_fleet(
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
                    .take(super::lost_objects::MOST_LOST_OBJECTS_LISTED)
                    .map(super::lost_objects::object_name)
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
    let message = super::context::cut_to(message, 4096);
    status.conditions.push(condition(
        "Synced", synced, reason, message, generation, now,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster of the fixtures' shape that was Ready before (not being
    /// created).
    fn cluster(shards: u16, nodes: u16, size: Option<&str>) -> StorageCluster {
        let mut c = crate::operator::fixtures::cluster(shards, nodes, size);
        c.status = Some(StorageClusterStatus {
            phase: Some("Ready".into()),
            ..StorageClusterStatus::default()
        });
        c
    }

    /// `count` node pods, pod i on host i % hosts, host h in zone h % zones.
    fn on_hosts(count: usize, ready: &[usize], hosts: usize, zones: usize) -> Vec<ObservedNode> {
        (0..count)
            .map(|i| ObservedNode {
                name: format!("media-node-{i}"),
                host: format!("host-{}", i % hosts),
                domain: format!("zone-{}", (i % hosts) % zones),
                exists: true,
                ready: ready.contains(&i),
            })
            .collect()
    }

    fn observed(count: usize, ready: &[usize], zones: usize) -> Vec<ObservedNode> {
        on_hosts(count, ready, count, zones)
    }

    fn assignment(c: &StorageCluster, nodes: &[ObservedNode]) -> Assignment {
        let specs: Vec<NodeSpec> = nodes
            .iter()
            .map(|n| NodeSpec {
                name: n.name.clone(),
                domain: n.domain.clone(),
            })
            .collect();
        fleet::assign(c.spec.shards, &specs, &Assignment::new())
    }

    fn now(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn cond<'a>(s: &'a StorageClusterStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_refused_spec_keeps_the_shard_assignment_and_the_nodes_unavailable_and_retiring() {
        let mut c = cluster(4, 4, Some("1Gi"));
        let kept = StorageClusterStatus {
            shard_assignment: vec![crate::operator::crd::ShardAssignment {
                shard: 0,
                node: "media-node-0".into(),
            }],
            unavailable_nodes: vec![crate::operator::crd::UnavailableNode {
                name: "media-node-1".into(),
                since: "2026-12-01T00:00:00Z".into(),
                reason: None,
            }],
            retiring_nodes: vec!["media-node-3".into()],
            ready_nodes: Some(3),
            ..StorageClusterStatus::default()
        };
        c.status = Some(kept.clone());
        let refused = refused_status(&c, "InvalidSpec", "no".into(), &now(1));
        assert_eq!(refused.phase.as_deref(), Some("Failed"));
        assert_eq!(refused.shard_assignment, kept.shard_assignment);
        assert_eq!(refused.unavailable_nodes, kept.unavailable_nodes);
        assert_eq!(refused.retiring_nodes, kept.retiring_nodes);
        assert_eq!(refused.ready_nodes, None, "what it no longer watches goes");
    }

    #[test]
    fn a_refused_spec_keeps_what_was_last_known_of_the_blobs_and_the_lost_objects() {
        let mut c = cluster(4, 4, Some("1Gi"));
        let kept = StorageClusterStatus {
            blobs: Some(crate::operator::crd::BlobCounts {
                healthy: 5,
                degraded: 0,
                at_risk: 0,
                lost: 1,
            }),
            lost_blobs: vec!["gone".into()],
            lost_objects: vec!["media/model.bin".into()],
            ..StorageClusterStatus::default()
        };
        c.status = Some(kept.clone());
        let refused = refused_status(&c, "InvalidSpec", "no".into(), &now(1));
        assert_eq!(refused.blobs, kept.blobs);
        assert_eq!(refused.lost_blobs, kept.lost_blobs);
        assert_eq!(refused.lost_objects, kept.lost_objects);
    }

    #[test]
    fn a_cluster_holding_blobs_that_was_refused_says_too_many_shards_down_not_creating() {
        let mut c = cluster(7, 7, Some("1Gi"));
        c.status = Some(StorageClusterStatus {
            phase: Some("Failed".into()),
            blobs: Some(crate::operator::crd::BlobCounts {
                healthy: 3,
                degraded: 0,
                at_risk: 0,
                lost: 0,
            }),
            ..StorageClusterStatus::default()
        });
        let nodes = observed(7, &[0, 1, 2], 7);
        let s = cluster_status(
            &c,
            &assignment(&c, &nodes),
            &nodes,
            &FleetSummary::default(),
            &now(100),
        );
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
        assert_eq!(cond(&s, "Ready").reason, "TooManyShardsDown");
    }

    #[test]
    fn status_follows_the_nodes_table() {
        let c = cluster(10, 10, Some("1Gi"));
        let table: [(&[usize], &str, &str, &str); 3] = [
            (
                &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                "Ready",
                "True",
                "AllNodesReady",
            ),
            (
                &[0, 1, 2, 3, 4, 5, 6, 7],
                "Degraded",
                "False",
                "NodesNotReady",
            ),
            (
                &[0, 1, 2, 3, 4, 5],
                "Degraded",
                "False",
                "TooManyShardsDown",
            ),
        ];
        for (ready, phase, ready_status, reason) in table {
            let nodes = observed(10, ready, 5);
            let s = cluster_status(
                &c,
                &assignment(&c, &nodes),
                &nodes,
                &FleetSummary::default(),
                &now(100),
            );
            assert_eq!(s.phase.as_deref(), Some(phase), "{ready:?}");
            assert_eq!(cond(&s, "Ready").status, ready_status, "{ready:?}");
            assert_eq!(cond(&s, "Ready").reason, reason, "{ready:?}");
            assert_eq!(s.ready_nodes, Some(ready.len() as u16));
            assert_eq!(s.fault_tolerance, Some(3));
            assert_eq!(s.observed_generation, Some(3));
            assert_eq!(s.shard_assignment.len(), 10);
        }
    }

    #[test]
    fn a_cluster_being_created_is_pending_not_degraded_until_it_was_first_ready() {
        let new = crate::operator::fixtures::cluster(10, 10, Some("1Gi"));
        for ready in [&[][..], &[0, 1, 2]] {
            let mut nodes = observed(10, ready, 5);
            if ready.is_empty() {
                nodes.iter_mut().for_each(|n| n.exists = false);
            }
            let s = cluster_status(
                &new,
                &assignment(&new, &nodes),
                &nodes,
                &FleetSummary::default(),
                &now(1),
            );
            assert_eq!(s.phase.as_deref(), Some("Pending"), "{ready:?}");
            assert_eq!(
                (
                    cond(&s, "Ready").status.as_str(),
                    cond(&s, "Ready").reason.as_str()
                ),
                ("False", "Creating")
            );
            let degraded = cond(&s, "Degraded");
            assert_eq!(
                (degraded.status.as_str(), degraded.reason.as_str()),
                ("False", "Creating")
            );
            assert!(cond(&s, "Ready")
                .message
                .contains(&format!("{} of 10 node pods ready", ready.len())));
        }
    }

    #[test]
    fn an_established_cluster_whose_node_pods_are_all_gone_has_too_many_shards_down() {
        let c = cluster(10, 10, Some("1Gi"));
        let mut nodes = observed(10, &[], 5);
        nodes.iter_mut().for_each(|n| n.exists = false);
        let s = cluster_status(
            &c,
            &assignment(&c, &observed(10, &[], 5)),
            &nodes,
            &FleetSummary::default(),
            &now(1),
        );
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
        assert_eq!(cond(&s, "Ready").reason, "TooManyShardsDown");
        let degraded = cond(&s, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "TooManyShardsDown")
        );
    }

    #[test]
    fn ready_node_pods_that_do_not_answer_count_as_down_shards() {
        // 7 shards, f = 2: three pods ready by Kubernetes whose API is silent.
        let c = cluster(7, 7, Some("1Gi"));
        let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
        let silent = |names: &[&str]| FleetSummary {
            not_answering: names.iter().map(|n| n.to_string()).collect(),
            ..FleetSummary::default()
        };
        let three = silent(&["media-node-0", "media-node-1", "media-node-2"]);
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &three, &now(1));
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
        let ready = cond(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "TooManyShardsDown")
        );
        assert!(
            ready
                .message
                .contains("3 shards unavailable, more than the 2 tolerated"),
            "{}",
            ready.message
        );
        assert_eq!(cond(&s, "Degraded").reason, "TooManyShardsDown");
        assert!(cond(&s, "Degraded")
            .message
            .contains("their API does not answer"));
        // Within what is tolerated: Ready, and Degraded for the silence.
        let two = silent(&["media-node-0", "media-node-1"]);
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &two, &now(1));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "Degraded").reason, "NodesNotAnswering");
    }

    #[test]
    fn tolerated_hosts_and_zones_are_counted_from_the_assignment() {
        let all: Vec<usize> = (0..10).collect();
        // (hosts, zones, host losses, zone losses, text), 10 shards on 10 pods, f = 3.
        let table = [
            // One pod per host, 5 zones of 2 shards: 3 hosts, or 1 zone.
            (10, 5, 3, 1, "3 shards, 3 hosts, 1 zone"),
            // 5 hosts of 2 pods each in 5 zones: a host is a zone.
            (5, 5, 1, 1, "3 shards, 1 host, 1 zone"),
            // Two zones of 5 shards: no zone can go.
            (10, 2, 3, 0, "3 shards, 3 hosts, 0 zones"),
            // Every pod on one host.
            (1, 1, 0, 0, "3 shards, 0 hosts, 0 zones"),
        ];
        let c = cluster(10, 10, Some("1Gi"));
        for (hosts, zones, host_losses, zone_losses, text) in table {
            let nodes = on_hosts(10, &all, hosts, zones);
            let s = cluster_status(
                &c,
                &assignment(&c, &nodes),
                &nodes,
                &FleetSummary::default(),
                &now(1),
            );
            assert_eq!(s.tolerated_host_losses, Some(host_losses), "{text}");
            assert_eq!(s.tolerated_domain_losses, Some(zone_losses), "{text}");
            assert_eq!(s.tolerates.as_deref(), Some(text));
        }
    }

    #[test]
    fn the_domains_are_named_after_the_topology_key() {
        let mut c = cluster(10, 10, Some("1Gi"));
        let nodes = observed(10, &(0..10).collect::<Vec<_>>(), 5);
        let text = |c: &StorageCluster| {
            cluster_status(
                c,
                &assignment(c, &nodes),
                &nodes,
                &FleetSummary::default(),
                &now(1),
            )
            .tolerates
            .unwrap()
        };
        let key = |k: &str| {
            Some(crate::operator::crd::PlacementSpec {
                topology_key: Some(k.into()),
                node_selector: None,
            })
        };
        c.spec.placement = key("topology.kubernetes.io/region");
        assert_eq!(text(&c), "3 shards, 3 hosts, 1 region");
        c.spec.placement = key("example.com/rack");
        assert_eq!(text(&c), "3 shards, 3 hosts, 1 domain");
        c.spec.placement = key("kubernetes.io/hostname");
        assert_eq!(text(&c), "3 shards, 3 hosts");
    }

    #[test]
    fn an_invalid_spec_becomes_a_condition_not_a_crash() {
        let c = cluster(4, 5, Some("1Gi"));
        let s = cluster_status(
            &c,
            &Assignment::new(),
            &[],
            &FleetSummary::default(),
            &now(1),
        );
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        let ready = cond(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert!(
            ready.message.contains("nodes must be between 1 and shards"),
            "{}",
            ready.message
        );
        assert!(validate_spec(&cluster(3, 3, Some("1Gi")).spec)
            .unwrap_err()
            .contains("shard count 3"));
        let mut unicode = cluster(7, 7, Some("1Gi"));
        unicode.spec.tls = Some(crate::operator::crd::TlsSpec {
            gateway_names: Some(vec!["s3.bücher.example".into()]),
            ..Default::default()
        });
        let problem = validate_spec(&unicode.spec).unwrap_err();
        assert!(
            problem.contains("tls.gatewayNames") && problem.contains("xn--"),
            "{problem}"
        );
    }

    #[test]
    fn blobs_that_are_not_healthy_make_a_ready_cluster_degraded_and_repairs_make_it_progress() {
        let c = cluster(7, 7, Some("1Gi"));
        let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
        let fleet = FleetSummary {
            blobs: Some(BlobCounts {
                healthy: 10,
                degraded: 1,
                at_risk: 2,
                lost: 0,
            }),
            repairs_in_flight: 3,
            ..FleetSummary::default()
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
        assert_eq!(cond(&s, "Degraded").reason, "BlobsAtRisk");
        assert_eq!(cond(&s, "Progressing").reason, "Repairing");
        assert_eq!(cond(&s, "Ready").status, "True", "every node pod is ready");
        assert_eq!(s.repairs_in_flight, Some(3));
    }

    #[test]
    fn a_ca_rotation_shows_in_the_status_and_makes_a_settled_cluster_progress() {
        let c = cluster(7, 7, Some("1Gi"));
        let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
        let rotation = CaRotationStatus {
            step: "TrustingNewCa".into(),
            since: Some("2026-12-06T10:00:00Z".into()),
            next_step_after: Some("2026-12-06T10:10:00Z".into()),
            waiting_for: vec!["media-node-2: serves an older certificate".into()],
        };
        let fleet = FleetSummary {
            ca_rotation: Some(rotation.clone()),
            ..FleetSummary::default()
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
        assert_eq!(
            s.phase.as_deref(),
            Some("Ready"),
            "a rotation degrades nothing"
        );
        assert_eq!(s.ca_rotation.as_ref(), Some(&rotation));
        let progressing = cond(&s, "Progressing");
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("True", "RotatingCa")
        );
        assert!(
            progressing.message.contains("step 1 of 3")
                && progressing
                    .message
                    .contains("no earlier than 2026-12-06T10:10:00Z")
                && progressing
                    .message
                    .contains("media-node-2: serves an older certificate"),
            "{}",
            progressing.message
        );

        // Repairs say what the cluster is busy with first; the rotation
        // stays in its field.
        let busy = FleetSummary {
            repairs_in_flight: 2,
            ..fleet
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &busy, &now(1));
        assert_eq!(cond(&s, "Progressing").reason, "Repairing");
        assert_eq!(s.ca_rotation, Some(rotation));

        // Done: the field goes, and the cluster is stable again.
        let s = cluster_status(
            &c,
            &assignment(&c, &nodes),
            &nodes,
            &FleetSummary::default(),
            &now(1),
        );
        assert_eq!(s.ca_rotation, None);
        assert_eq!(cond(&s, "Progressing").reason, "Stable");
    }

    #[test]
    fn lost_blobs_whose_s3_objects_could_not_be_asked_about_say_so_rather_than_none() {
        let c = cluster(7, 7, Some("1Gi"));
        let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
        let fleet = FleetSummary {
            blobs: Some(BlobCounts {
                lost: 1,
                ..BlobCounts::default()
            }),
            lost_blobs: vec!["blob-00".into()],
            lost_objects_unknown: Some("cannot reach the gateway: connection refused".into()),
            ..FleetSummary::default()
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
        assert!(s.lost_objects.is_empty());
        let message = &cond(&s, "Degraded").message;
        assert!(
            message.contains("which S3 objects they hold is not known")
                && message.contains("connection refused"),
            "{message}"
        );
    }

    #[test]
    fn lost_blobs_and_the_s3_objects_they_hold_are_named_in_the_status() {
        let c = cluster(7, 7, Some("1Gi"));
        let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
        let lost: Vec<String> = (0..60).map(|i| format!("blob-{i:02}")).collect();
        let objects: Vec<crate::wire::ObjectOfBlob> = (0..7)
            .map(|i| crate::wire::ObjectOfBlob {
                bucket: "media".into(),
                key: format!("film {i}"),
                blob: "blob-00".into(),
            })
            .collect();
        let fleet = FleetSummary {
            blobs: Some(BlobCounts {
                healthy: 10,
                lost: 60,
                ..BlobCounts::default()
            }),
            lost_blobs: lost.clone(),
            lost_objects: Some(crate::wire::ObjectsOfBlobs {
                objects,
                truncated: false,
                resume_after: None,
            }),
            ..FleetSummary::default()
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
        assert_eq!(s.lost_blobs, lost[..MOST_LOST_BLOBS_LISTED]);
        assert_eq!(s.lost_objects.len(), 7);
        assert_eq!(s.lost_objects[0], "media/film 0");
        let degraded = cond(&s, "Degraded");
        assert_eq!(degraded.reason, "BlobsLost");
        assert!(
            degraded.message.contains(
                "nor the S3 objects they hold: media/film 0, media/film 1, media/film 2, media/film 3, media/film 4, ... (status.lostObjects lists more)"
            ),
            "{}",
            degraded.message
        );
        // While the scan of a large index goes on: the keys found so far.
        let searching = FleetSummary {
            lost_objects: Some(crate::wire::ObjectsOfBlobs {
                resume_after: Some("media/film 6".into()),
                ..fleet.lost_objects.clone().unwrap()
            }),
            ..fleet.clone()
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &searching, &now(1));
        assert_eq!(s.lost_objects.len(), 7);
        assert!(
            cond(&s, "Degraded").message.ends_with(
                "(status.lostObjects lists more) (the search of the S3 index for more goes on)"
            ),
            "{}",
            cond(&s, "Degraded").message
        );
        let nothing_yet = FleetSummary {
            lost_objects: Some(crate::wire::ObjectsOfBlobs {
                resume_after: Some("media/a".into()),
                ..crate::wire::ObjectsOfBlobs::default()
            }),
            ..fleet.clone()
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &nothing_yet, &now(1));
        assert!(cond(&s, "Degraded")
            .message
            .ends_with("cannot be read; the S3 index is being searched for the objects they hold"));
        // Without S3 (or before the gateway said): the ids only.
        let native = FleetSummary {
            lost_objects: None,
            ..fleet.clone()
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &native, &now(1));
        assert!(s.lost_objects.is_empty());
        assert!(cond(&s, "Degraded")
            .message
            .ends_with("Lost blobs (status.lostBlobs) cannot be read"));
        // While a node pod is not ready, or one does not answer, blobs
        // short of pairs may only be out of reach: not said lost.
        let six = observed(7, &[0, 1, 2, 3, 4, 5], 7);
        let s = cluster_status(&c, &assignment(&c, &six), &six, &fleet, &now(1));
        assert!(s.lost_blobs.is_empty() && s.lost_objects.is_empty());
        assert_eq!(cond(&s, "Degraded").reason, "NodesNotReady");
        let silent = FleetSummary {
            not_answering: vec!["media-node-3".into()],
            ..fleet.clone()
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &silent, &now(1));
        assert!(s.lost_blobs.is_empty() && s.lost_objects.is_empty());
        let degraded = cond(&s, "Degraded");
        assert_eq!(degraded.reason, "NodesNotAnswering");
        assert!(
            degraded
                .message
                .contains("60 unreadable while nodes do not answer"),
            "{}",
            degraded.message
        );
    }

    #[test]
    fn repairs_failing_on_a_node_are_listed_and_said_with_why() {
        let c = cluster(7, 7, Some("1Gi"));
        let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
        let failing = FailingRepairs {
            node: "media-node-4".into(),
            failures: 3,
            blob: "b1".into(),
            reason: "the volume is full".into(),
            last_failure: "2027-01-01T00:00:00Z".into(),
        };
        let fleet = FleetSummary {
            blobs: Some(BlobCounts {
                healthy: 10,
                degraded: 1,
                ..BlobCounts::default()
            }),
            failing_repairs: vec![failing.clone()],
            ..FleetSummary::default()
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
        assert_eq!(s.failing_repairs, vec![failing]);
        let degraded = cond(&s, "Degraded");
        assert_eq!(degraded.reason, "BlobsDegraded");
        assert!(
            degraded
                .message
                .ends_with("; repairs failing on media-node-4 (3 in a row): the volume is full"),
            "{}",
            degraded.message
        );
    }

    #[test]
    fn every_reason_a_cluster_is_degraded_is_said_and_the_most_pressing_names_it() {
        let c = cluster(7, 7, Some("1Gi"));
        let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
        let fleet = FleetSummary {
            blobs: Some(BlobCounts {
                healthy: 10,
                at_risk: 1,
                ..BlobCounts::default()
            }),
            not_answering: vec!["media-node-2".into()],
            gateways: Some(GatewayPods {
                available: 0,
                wanted: 1,
                starting: false,
            }),
            ..FleetSummary::default()
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
        let degraded = cond(&s, "Degraded");
        assert_eq!(degraded.reason, "GatewayUnavailable");
        let said: Vec<usize> = [
            "no gateway pod is available",
            "their API does not answer",
            "1 at risk",
        ]
        .iter()
        .map(|part| degraded.message.find(part).expect(part))
        .collect();
        assert!(
            said.is_sorted(),
            "most pressing first: {}",
            degraded.message
        );
        // A lost blob (every node answering) is more pressing than them.
        let lost = FleetSummary {
            blobs: Some(BlobCounts {
                lost: 1,
                ..BlobCounts::default()
            }),
            lost_blobs: vec!["gone".into()],
            not_answering: Vec::new(),
            ..fleet
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &lost, &now(1));
        let degraded = cond(&s, "Degraded");
        assert_eq!(degraded.reason, "BlobsLost");
        assert!(degraded.message.contains("no gateway pod is available"));
        // Node pods not ready and evicted: both said, the move first.
        let six = observed(7, &[0, 1, 2, 3, 4, 5], 7);
        let evicted = FleetSummary {
            evicted: vec!["media-node-6".into()],
            ..FleetSummary::default()
        };
        let s = cluster_status(&c, &assignment(&c, &six), &six, &evicted, &now(1));
        let degraded = cond(&s, "Degraded");
        assert_eq!(degraded.reason, "ShardsMoved");
        assert!(
            degraded
                .message
                .contains("1 shards on node pods that are not ready"),
            "{}",
            degraded.message
        );
    }

    #[test]
    fn shards_still_to_move_make_a_healthy_cluster_progress_without_degrading_it() {
        let c = cluster(7, 7, Some("1Gi"));
        let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
        let fleet = FleetSummary {
            blobs: Some(BlobCounts {
                healthy: 10,
                ..BlobCounts::default()
            }),
            shards_to_move: 2,
            ..FleetSummary::default()
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
        assert_eq!(s.phase.as_deref(), Some("Ready"));
        let progressing = cond(&s, "Progressing");
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("True", "Rebalancing")
        );
        assert!(
            progressing.message.starts_with("2 shards"),
            "{}",
            progressing.message
        );
    }

    #[test]
    fn nodes_retiring_name_the_progress_while_the_repairs_they_cause_run_and_both_are_said() {
        let c = cluster(7, 6, Some("1Gi"));
        let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
        let fleet = FleetSummary {
            retiring: vec!["media-node-6".into()],
            shards_to_move: 3,
            repairs_in_flight: 2,
            ..FleetSummary::default()
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
        let progressing = cond(&s, "Progressing");
        assert_eq!(progressing.reason, "NodesRetiring");
        for said in ["media-node-6", "3 still to move", "2 repairs in flight"] {
            assert!(
                progressing.message.contains(said),
                "{}",
                progressing.message
            );
        }
        assert!(
            !progressing.message.contains("to balance"),
            "said once: {}",
            progressing.message
        );
        // A rolling update names it above both, and all three are said.
        let rolling = FleetSummary {
            outdated: vec!["media-node-1".into()],
            ..fleet
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &rolling, &now(1));
        let progressing = cond(&s, "Progressing");
        assert_eq!(progressing.reason, "RollingUpdate");
        assert!(
            progressing.message.contains("3 still to move"),
            "{}",
            progressing.message
        );
    }

    #[test]
    fn nodes_retiring_whose_shards_all_moved_are_said_to_be_going_not_to_have_0_to_move() {
        let c = cluster(7, 6, Some("1Gi"));
        let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
        let fleet = FleetSummary {
            retiring: vec!["media-node-6".into()],
            ..FleetSummary::default()
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
        let progressing = cond(&s, "Progressing");
        assert_eq!(progressing.reason, "NodesRetiring");
        assert!(
            progressing
                .message
                .contains("media-node-6 have no shards left to move")
                && !progressing.message.contains("still to move"),
            "{}",
            progressing.message
        );
    }

    #[test]
    fn ready_node_pods_whose_api_does_not_answer_are_named_and_make_the_cluster_degraded() {
        let c = cluster(7, 7, Some("1Gi"));
        let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
        let fleet = FleetSummary {
            not_answering: vec!["media-node-2".into()],
            ..FleetSummary::default()
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
        assert_eq!(s.not_answering_nodes, vec!["media-node-2".to_string()]);
        let degraded = cond(&s, "Degraded");
        assert_eq!(degraded.reason, "NodesNotAnswering");
        assert!(
            degraded.message.contains("media-node-2"),
            "{}",
            degraded.message
        );
    }

    #[test]
    fn evicted_nodes_are_named_in_the_degraded_condition() {
        let c = cluster(7, 7, Some("1Gi"));
        let nodes = observed(7, &[0, 1, 2, 3, 4, 5], 7);
        let fleet = FleetSummary {
            unavailable: vec![UnavailableNode {
                name: "media-node-6".into(),
                since: "2027-01-01T00:00:00Z".into(),
                reason: Some("Unschedulable: 0/7 nodes are available".into()),
            }],
            evicted: vec!["media-node-6".into()],
            ..FleetSummary::default()
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
        let degraded = cond(&s, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ShardsMoved")
        );
        assert!(degraded.message.contains("media-node-6"));
        assert_eq!(s.unavailable_nodes.len(), 1);
        let ready = cond(&s, "Ready");
        assert!(
            ready
                .message
                .ends_with("; media-node-6: Unschedulable: 0/7 nodes are available"),
            "the Ready condition says why: {}",
            ready.message
        );
    }

    #[test]
    fn an_unchanged_status_keeps_its_transition_times_so_it_is_not_rewritten() {
        let mut c = cluster(7, 7, Some("1Gi"));
        let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
        let a = assignment(&c, &nodes);
        let first = cluster_status(&c, &a, &nodes, &FleetSummary::default(), &now(100));
        c.status = Some(first.clone());
        let second = cluster_status(&c, &a, &nodes, &FleetSummary::default(), &now(200));
        assert_eq!(first, second, "same observation, same status: no write");
        let fewer = observed(7, &[0, 1, 2, 3, 4, 5], 7);
        let third = cluster_status(&c, &a, &fewer, &FleetSummary::default(), &now(300));
        assert_eq!(cond(&third, "Ready").last_transition_time, now(300));
    }

    #[test]
    fn objects_that_cannot_be_applied_are_named_in_the_synced_condition_and_the_rest_stays_ready() {
        let c = cluster(7, 7, Some("1Gi"));
        let nodes = observed(7, &[0, 1, 2, 3, 4, 5, 6], 7);
        let fleet = FleetSummary {
            sync_failures: vec![
                "apply PersistentVolumeClaim media-data-3: field is immutable".into(),
            ],
            ..FleetSummary::default()
        };
        let s = cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1));
        assert_eq!(s.phase.as_deref(), Some("Ready"));
        let synced = cond(&s, "Synced");
        assert_eq!(
            (synced.status.as_str(), synced.reason.as_str()),
            ("False", "ApplyFailed")
        );
        assert!(
            synced.message.contains("media-data-3: field is immutable"),
            "{}",
            synced.message
        );
        let s = cluster_status(
            &c,
            &assignment(&c, &nodes),
            &nodes,
            &FleetSummary::default(),
            &now(1),
        );
        assert_eq!(cond(&s, "Synced").status, "True");
    }

    #[test]
    fn a_cluster_without_an_available_gateway_is_degraded_whatever_its_nodes() {
        let c = cluster(4, 4, Some("1Gi"));
        let nodes = observed(4, &[0, 1, 2, 3], 4);
        let status_with = |available: u16| {
            let fleet = FleetSummary {
                gateways: Some(GatewayPods {
                    available,
                    wanted: 2,
                    starting: false,
                }),
                ..FleetSummary::default()
            };
            cluster_status(&c, &assignment(&c, &nodes), &nodes, &fleet, &now(1))
        };
        let down = status_with(0);
        assert_eq!(down.phase.as_deref(), Some("Degraded"));
        assert_eq!(down.gateways_available, Some(0));
        let degraded = cond(&down, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "GatewayUnavailable")
        );
        assert!(degraded.message.contains("0 of 2"), "{}", degraded.message);
        let one = status_with(1);
        assert_eq!(one.phase.as_deref(), Some("Ready"), "one of two serves");
        assert_eq!(one.gateways_available, Some(1));
        let unread = cluster_status(
            &c,
            &assignment(&c, &nodes),
            &nodes,
            &FleetSummary::default(),
            &now(1),
        );
        assert_eq!(
            (unread.phase.as_deref(), unread.gateways_available),
            (Some("Ready"), None)
        );
        let starting = FleetSummary {
            gateways: Some(GatewayPods {
                available: 0,
                wanted: 1,
                starting: true,
            }),
            ..FleetSummary::default()
        };
        let new = cluster_status(&c, &assignment(&c, &nodes), &nodes, &starting, &now(1));
        assert_eq!(
            new.phase.as_deref(),
            Some("Ready"),
            "a gateway just made is starting, not down"
        );
    }
}
