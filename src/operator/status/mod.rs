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

mod fleet_conditions;
use fleet_conditions::fold_in_fleet;

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

#[cfg(test)]
mod tests;
