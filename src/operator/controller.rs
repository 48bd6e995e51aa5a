//! The StorageCluster reconciler: the thin I/O shell around `lifecycle`,
//! `fleet`, `desired` and `status`. Each reconcile observes the node pods
//! and claims, decides per node (replace, release a lost volume, evict
//! after the grace period), keeps the shard assignment stable, applies
//! every desired object with server-side apply under one field manager,
//! reads the node inventories and starts the repairs `fleet` plans (most
//! at risk first), and writes the status only when it changed.
//!
//! Reconciles are triggered by the cluster, by its pods (a pod deleted or
//! turning Ready), and by a short requeue while anything is unhealthy, so
//! a repair starts seconds after a node pod comes back empty.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use serde::Serialize;

use super::apply_objects::{
    apply_objects, hold_objects, last_view_blobs_to_repair, Applied, ApplyScope, Failures,
};
use super::ca_rotation::{CaPhase, CaStep};
use super::cluster_ca;
use super::cluster_secrets::read_or_make_tls;
use super::context::{ClusterFleet, Context};
use super::crd::{Blob, BlobCounts, StorageCluster, UnavailableNode};
use super::desired::{self, node_claim_name, node_pod_name};
use super::lifecycle::{self, ClaimState, DeleteReason, NodeDecision, NodeObserved, PodState};
use super::pod_problem::pod_problem;
use super::status::{
    cluster_status, refused_status, validate_spec, FleetSummary, GatewayPods, HeldObjects,
    ObservedNode,
};
use super::upload_records;
pub use super::upload_records::upload_record_name;
use crate::codec::EncodingConfig;
use crate::control::{self, NodeAddress};
use crate::fleet::{self, Assignment, Health, NodeSpec};

pub use super::apply_objects::FIELD_MANAGER;
pub use super::reconcile_error::ReconcileError;

/// Grace period when the spec names none.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);
/// Repairs in flight per cluster when the spec names none.
pub const DEFAULT_MAX_REPAIRS: usize = 4;

/// The overall deadline of one reconcile of a cluster whose nodes list no
/// blobs, node calls included: a node pod whose host vanished never holds
/// the operator for longer. See `reconcile_deadline` for larger fleets.
pub const RECONCILE_DEADLINE: Duration = Duration::from_secs(120);

/// The deadline of a reconcile of a cluster whose last view listed
/// `listed` blobs (visible and deleted): `RECONCILE_DEADLINE` plus those
/// blobs at the inventory's least rate, as each node's inventory is
/// allowed (`Deadlines::inventory_budget`), so a fleet of a million blobs,
/// which its nodes take a minute or more to list, still reconciles.
pub fn reconcile_deadline(listed: usize) -> Duration {
    RECONCILE_DEADLINE
        + Duration::from_secs_f64(listed as f64 / crate::client::MIN_INVENTORY_RATE as f64)
}

/// How long spreading commit markers and tombstones may take in one
/// reconcile (the rest waits for the next).
const SPREAD_DEADLINE: Duration = Duration::from_secs(30);

/// Repairs on one node failing in a row that make a Warning Event
/// RepairFailing (once, until a repair there completes).
const REPAIR_FAILURES_TOLD: u64 = 3;

/// A node's failing repairs as the status says them.
fn failing_repairs(failures: crate::control::RepairFailures) -> super::crd::FailingRepairs {
    super::crd::FailingRepairs {
        node: failures.node,
        failures: failures.count,
        blob: failures.blob,
        reason: failures.why,
        last_failure: Timestamp::try_from(failures.at)
            .map(|t| t.to_string())
            .unwrap_or_default(),
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_state(pod: &Pod) -> PodState {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    PodState {
        ready: is_ready(pod),
        finished: matches!(phase, Some("Failed" | "Succeeded")),
        deleting_since: pod.metadata.deletion_timestamp.as_ref().map(|t| t.0),
    }
}

/// Whether shards may move away from owners still present: the last view
/// saw every answering node own what `applied` gives it, every readable
/// blob Healthy (Lost ones do not hold a rebalance up), and no repair runs
/// or waits. Never before the first view of this operator process.
fn rebalance_may_go_on(
    fleet: &ClusterFleet,
    applied: &Assignment,
    encoding: &EncodingConfig,
) -> bool {
    let repairs_idle = fleet.repairer.in_flight() == 0 && fleet.repairer.queued() == 0;
    repairs_idle
        && super::apply_objects::owned_as_assigned(fleet, applied)
        && last_view_blobs_to_repair(fleet, encoding) == 0
}

/// Why a node is unavailable, for its status entry.
fn unavailable_reason(decision: &NodeDecision, pod: Option<&Pod>, claim: &str) -> String {
    match (decision.delete_pod, pod) {
        (Some(DeleteReason::VolumeLost), _) => format!(
            "VolumeLost: claim {claim} is gone; the pod is recreated on an empty volume and its pairs rebuilt"
        ),
        (_, None) => "NoPod: the node pod is being created".into(),
        (_, Some(pod)) if pod.metadata.deletion_timestamp.is_some() => {
            "Terminating: the node pod is being deleted".into()
        }
        (Some(DeleteReason::PodFinished), Some(pod)) => format!(
            "PodFinished: {}; the pod is recreated",
            pod_problem(pod).unwrap_or_else(|| "the pod exited".into())
        ),
        (None, Some(pod)) => {
            pod_problem(pod).unwrap_or_else(|| "Starting: the node pod is not ready yet".into())
        }
    }
}

/// Brings one StorageCluster's objects and status in line with its spec,
/// and its blobs back to health.
pub async fn reconcile_cluster(
    cluster: Arc<StorageCluster>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let namespace = cluster.namespace().ok_or(ReconcileError::NoNamespace)?;
    let name = cluster.name_any();
    // Being deleted (its objects go with it, or are orphaned as asked):
    // nothing is made again or adopted.
    if cluster.metadata.deletion_timestamp.is_some() {
        tracing::info!(cluster = %name, "being deleted: not reconciled");
        return Ok(Action::await_change());
    }
    for problem in ctx.crds.untold(&format!("{namespace}/{name}")) {
        ctx.publish(&*cluster, true, "CRDOutdated", problem).await;
    }
    let client = ctx.client.clone();
    let clusters: Api<StorageCluster> = Api::namespaced(client.clone(), &namespace);
    let now = Timestamp::now();
    let now_time = Time(now);
    let previous_status = cluster.status.clone().unwrap_or_default();

    let encoding = match validate_spec(&cluster.spec) {
        Ok(encoding) => encoding,
        Err(problem) => {
            refuse(&ctx, &clusters, &cluster, "InvalidSpec", problem, &now_time).await?;
            return Ok(Action::await_change());
        }
    };
    let repair = cluster.spec.repair.clone().unwrap_or_default();
    let grace = repair
        .grace_period
        .as_deref()
        .map(|g| lifecycle::parse_duration(g).unwrap_or(DEFAULT_GRACE))
        .unwrap_or(DEFAULT_GRACE);
    let max_repairs = repair
        .max_concurrent
        .map_or(DEFAULT_MAX_REPAIRS, usize::from);
    let ephemeral = cluster.spec.storage.ephemeral == Some(true);

    // Observe pods and claims.
    let observed_pods = ctx.observed.node_pods(&client, &namespace, &name).await?;
    let observed_claims = if ephemeral {
        Vec::new()
    } else {
        ctx.observed.node_claims(&client, &namespace, &name).await?
    };
    let pod_by_name: BTreeMap<String, &Pod> =
        observed_pods.iter().map(|p| (p.name_any(), p)).collect();
    let claim_by_name: BTreeMap<String, &PersistentVolumeClaim> =
        observed_claims.iter().map(|c| (c.name_any(), c)).collect();

    // A lowered spec.nodes retires the node pods beyond it only once their
    // shards have moved to the others (`operator::retiring`).
    let spec_nodes = usize::from(cluster.spec.nodes);
    let key = (namespace.clone(), name.clone());
    let fleet_state = ctx.fleets.get(&key, ctx.deadlines);
    let mut previous: Assignment = previous_status
        .shard_assignment
        .iter()
        .map(|a| (a.shard, a.node.clone()))
        .collect();
    // A new StorageCluster on claims an earlier one of its name left:
    // the shards stay where their slivers are.
    if previous.is_empty() {
        let claims: Vec<&PersistentVolumeClaim> = observed_claims.iter().collect();
        match super::claimed_shards::remembered_assignment(&name, cluster.spec.shards, &claims) {
            Ok(Some(remembered)) => {
                tracing::info!(cluster = %name, shards = remembered.len(), "taking up the shard assignment its claims remember");
                previous = remembered;
            }
            Ok(None) => {}
            // Nothing is made on claims whose blobs it could not read: the
            // claims' watch brings the next reconcile once they change.
            Err(foreign) => {
                let problem = foreign.to_string();
                refuse(
                    &ctx,
                    &clusters,
                    &cluster,
                    "ClaimsOfAnotherCluster",
                    problem,
                    &now_time,
                )
                .await?;
                return Ok(Action::requeue(Duration::from_secs(300)));
            }
        }
    }
    let settled = rebalance_may_go_on(&fleet_state, &previous, &encoding);
    let nodes = super::retiring::running_node_count(
        &name,
        spec_nodes,
        previous.values().map(String::as_str),
        previous_status.retiring_nodes.iter().map(String::as_str),
        settled,
    );
    // Node pods beyond those the cluster has are made only where their
    // names are free: a name another application holds stops the growth
    // there, and the rest of the cluster is applied as before.
    let (nodes, growth_held) = grow_onto_free_names(
        &ctx,
        &cluster,
        spec_nodes,
        nodes,
        (&previous, &previous_status),
        (&pod_by_name, &claim_by_name),
        ephemeral,
    )
    .await?;
    let retiring = super::retiring::retiring_nodes(&name, spec_nodes, nodes);
    let node_names: Vec<String> = (0..nodes).map(|i| node_pod_name(&name, i)).collect();
    let observed_nodes: Vec<NodeObserved> = node_names
        .iter()
        .enumerate()
        .map(|(i, pod)| NodeObserved {
            name: pod.clone(),
            pod: pod_by_name.get(pod).map(|p| pod_state(p)),
            claim: if ephemeral {
                ClaimState::NotUsed
            } else {
                match claim_by_name.get(&node_claim_name(&name, i)) {
                    None => ClaimState::Missing,
                    Some(c) if c.metadata.deletion_timestamp.is_some() => ClaimState::Terminating,
                    Some(_) => ClaimState::Present,
                }
            },
        })
        .collect();
    let mut decisions = lifecycle::decide(
        &observed_nodes,
        &previous_status.unavailable_nodes,
        grace,
        now,
    );
    let fleet_whole = fleet_state.repairer.in_flight() == 0
        && fleet_state.repairer.queued() == 0
        && last_view_blobs_to_repair(&fleet_state, &encoding) == 0;
    let volumes_held = lifecycle::pace_volume_drops(&observed_nodes, &mut decisions, fleet_whole);
    if !volumes_held.is_empty() {
        tracing::info!(
            cluster = %name,
            nodes = ?volumes_held,
            "claims being deleted: their node pods go one at a time, once the fleet is whole"
        );
    }
    let held_back = lifecycle::hold_mass_evictions(
        &mut decisions,
        |node| previous.values().filter(|owner| *owner == node).count(),
        encoding.p(),
    );
    if held_back > 0 {
        tracing::warn!(
            cluster = %name,
            shards = held_back,
            "node pods unavailable past the grace period keep their shards: the nodes left own too few to rebuild any blob"
        );
        ctx.publish(
            &*cluster,
            true,
            "EvictionsHeld",
            format!(
                "{held_back} shards of node pods unavailable past repair.gracePeriod stay with them: the node pods still available own fewer than {} shards, too few to rebuild any blob; they move once enough node pods are back",
                encoding.p()
            ),
        )
        .await;
    }
    let evicted: BTreeSet<&str> = decisions
        .iter()
        .filter(|d| d.evicted)
        .map(|d| d.name.as_str())
        .collect();

    // Failure domains: the Kubernetes node each pod runs on, and that
    // node's topology label.
    let host_of = |pod: &String| {
        pod_by_name
            .get(pod)
            .and_then(|p| p.spec.as_ref()?.node_name.clone())
            .unwrap_or_else(|| pod.clone())
    };
    let scheduled = observed_pods
        .iter()
        .any(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()));
    let host_domains = if scheduled {
        ctx.observed
            .host_domains(&client, &desired::topology_key(&cluster))
            .await?
    } else {
        BTreeMap::new()
    };
    let domain_of = |host: &String| host_domains.get(host).unwrap_or(host).clone();
    let node_hosts: Vec<String> = node_names.iter().map(host_of).collect();

    // Shards stay with their owners; evicted nodes hand theirs over.
    let node_specs: Vec<NodeSpec> = node_names
        .iter()
        .zip(&node_hosts)
        .map(|(pod, host)| NodeSpec {
            name: pod.clone(),
            domain: domain_of(host),
        })
        .collect();
    // Node pods still present: shards leaving them move a few at a time.
    let present: Vec<NodeSpec> = node_specs
        .iter()
        .filter(|n| !evicted.contains(n.name.as_str()))
        .cloned()
        .collect();
    // Of those, the ones shards may go to: not retiring.
    let holders: Vec<NodeSpec> = present
        .iter()
        .filter(|n| !retiring.contains(&n.name))
        .cloned()
        .collect();
    // Shards leaving owners still present (a node back from eviction, a
    // grown cluster) move a few at a time, each batch once the last one
    // is rebuilt and every blob is Healthy again (`fleet::pacing`).
    let balanced = fleet::assign(cluster.spec.shards, &holders, &previous);
    // Nor while a node pod still present is down (a rollout replacing
    // one, a pod failing): its shards count as missing already, and each
    // shard moved now would count too.
    let all_serving = decisions.iter().all(|d| d.available || d.evicted);
    let room = if settled && all_serving {
        fleet::moves_at_once(encoding.f())
    } else {
        0
    };
    let assignment = fleet::pace_moves(&previous, &balanced, &present, room);
    report_retiring(
        &ctx,
        &cluster,
        &previous_status.retiring_nodes,
        &retiring,
        &previous,
    )
    .await;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let applied = &fleet_state.applied;
    let mut failures = Failures::default();
    // Names held by objects the operator did not make are never taken
    // over: checked before any Secret of the cluster's is read or made.
    let taken = super::name_holders::check(
        &ctx,
        &cluster,
        &namespace,
        &assignment,
        node_names.len(),
        &fleet_state.owned_names,
        |kind, object| match kind {
            "Pod" => pod_by_name.contains_key(object),
            "PersistentVolumeClaim" => claim_by_name.contains_key(object),
            _ => false,
        },
    )
    .await?;
    let mut ca_rotating = false;
    // While objects are held the rotation stands where it was last seen.
    let mut rotation_progress = previous_status.ca_rotation.clone();
    let tls = if let Some(problem) = taken {
        Err(HeldObjects {
            reason: "NameTaken",
            problem,
        })
    } else if cluster.spec.tls_enabled() {
        let serving_pods = cluster_ca::serving_pods(&ctx, &client, &cluster, &decisions).await;
        match read_or_make_tls(
            &secrets,
            &cluster,
            &name,
            &namespace,
            &serving_pods,
            &fleet_state.ca_current_since,
            ctx.ca_min_phase,
        )
        .await
        {
            Ok((tls, outcome)) => {
                cluster_ca::tell(&ctx, &cluster, &outcome).await;
                // Absent once the rotation ended.
                rotation_progress = super::ca_rotation::rotation_status(
                    &outcome.cas,
                    cluster.spec.ca_rotation_overlap(),
                    ctx.ca_min_phase,
                    &outcome.waiting_for,
                );
                // Reconciled often while pods are awaited; a phase only
                // waiting out its time is looked at every 30 s.
                ca_rotating = outcome.cas.phase() != CaPhase::Steady
                    && (!outcome.waiting_for.is_empty() || outcome.step != CaStep::Stay);
                Ok(Some(tls))
            }
            Err(ReconcileError::Tls(problem)) => Err(HeldObjects {
                reason: "TlsMaterial",
                problem,
            }),
            Err(e) => return Err(e),
        }
    } else {
        rotation_progress = None;
        Ok(None)
    };
    if let Ok(tls) = &tls {
        let expiry = tls
            .as_ref()
            .and_then(|t| crate::tls::certificate_not_after_unix(&t.cas.current.cert_pem));
        fleet_state.metrics.ca_expiry.set(expiry.unwrap_or(0));
        let phase = tls.as_ref().map_or(CaPhase::Steady, |t| t.cas.phase());
        fleet_state.metrics.ca_rotation_phase.set(phase.number());
    }
    let scope = ApplyScope {
        ctx: &ctx,
        cluster: &cluster,
        name: &name,
        namespace: &namespace,
        fleet_state: &fleet_state,
        encoding: &encoding,
        previous: &previous,
        assignment: &assignment,
        decisions: &decisions,
        observed_pods: &observed_pods,
        pod_by_name: &pod_by_name,
        claim_by_name: &claim_by_name,
        node_names: &node_names,
        previous_status: &previous_status,
    };
    let (
        Applied {
            outdated,
            rollout_wait,
        },
        held,
    ) = match tls {
        Ok(tls) => (apply_objects(scope, tls, &mut failures).await?, None),
        Err(held) => {
            hold_objects(scope, &held).await?;
            (
                Applied {
                    outdated: Vec::new(),
                    rollout_wait: None,
                },
                Some(held),
            )
        }
    };
    // Held objects include the shards ConfigMap: nodes cannot learn of a
    // new assignment, so none is made (the view would count the moved
    // shards as missing, and the status record shards nodes never got).
    let assignment = match &held {
        Some(_) if !previous.is_empty() => previous.clone(),
        _ => assignment,
    };
    let shards_to_move = fleet::live_moves(&assignment, &balanced, &present) as u32;
    report_moved_shards(&ctx, &cluster, &previous, &assignment, &evicted).await;

    // The fleet: inventories, repairs, time to repair start.
    let addresses: Vec<NodeAddress> = decisions
        .iter()
        .enumerate()
        .filter(|(_, d)| d.available)
        .map(|(i, d)| NodeAddress {
            name: d.name.clone(),
            url: ctx.endpoints.node(&cluster, i),
            shards: fleet::shards_of(&assignment, &d.name),
        })
        .collect();
    // Blobs recorded before the inventories are read: a Blob deleted after
    // this list still counts as recorded, so its slivers going away in
    // between never make it reappear.
    // Nor may an ingest be uploading: the bytes it stores are named by its
    // Blob only once its status is written (after this list).
    let blob_records: Api<Blob> = Api::namespaced(client.clone(), &namespace);
    let quiet = ctx.uploads_in_flight.none_in_flight(&key);
    // Ingests whose status write failed name theirs from memory; taken
    // before the list, as one is forgotten only once its status names it.
    let stored_by_ingests = ctx.stored_ingests.ids_in(&key);
    let recorded = if cluster.spec.record_uploads == Some(false) || quiet.is_none() {
        None
    } else {
        match upload_records::recorded_blob_ids(&blob_records, &name).await {
            Ok(mut ids) => {
                ids.ids.extend(stored_by_ingests);
                Some(ids)
            }
            // No object failed to apply (Synced stays as it is): uploads
            // are recorded the next time.
            Err(e) => {
                tracing::warn!(cluster = %name, "no upload is recorded this time: cannot list the Blobs: {e}");
                None
            }
        }
    };
    let read_at = std::time::Instant::now();
    let (view, _) = fleet_state
        .observer
        .lock()
        .await
        .observe(&fleet_state.calls, &addresses, &fleet_state.metrics)
        .await;
    let spread = control::spread_markers(
        &fleet_state.calls,
        &view.markers,
        &addresses,
        &fleet_state.metrics,
        1000,
    );
    if tokio::time::timeout(SPREAD_DEADLINE, spread).await.is_err() {
        tracing::warn!(cluster = %name, "spreading markers took longer than {SPREAD_DEADLINE:?}: the rest goes next time");
    }
    // Copies left where shards moved away from, once the owner holds them.
    let releases = view.releases(&assignment);
    let release = control::release_strays(
        &fleet_state.calls,
        &releases,
        &addresses,
        &fleet_state.metrics,
        1000,
    );
    if tokio::time::timeout(SPREAD_DEADLINE, release)
        .await
        .is_err()
    {
        tracing::warn!(cluster = %name, "releasing moved shards took longer than {SPREAD_DEADLINE:?}: the rest goes next time");
    }
    // Without the list of Blobs, no upload is recorded this time (a record
    // must never be made for a Blob that was just deleted); nor when the
    // cluster does not record uploads, nor when an ingest began uploading
    // since the list (its blob may be in the view, its Blob not naming it).
    let no_ingest_since = quiet.is_some_and(|q| ctx.uploads_in_flight.none_began_since(&key, q));
    if cluster.spec.record_uploads != Some(false) && !no_ingest_since {
        tracing::debug!(cluster = %name, "no upload is recorded this time: an ingest is uploading to the cluster (or failed within the last 10 minutes)");
    }
    if let Some(recorded) = recorded.as_ref().filter(|_| no_ingest_since) {
        let recording = super::upload_recorder::Recording {
            ctx: &ctx,
            cluster: &cluster,
            fleet: &fleet_state,
            blobs: &blob_records,
            applied,
        };
        recording
            .record_uploads(recorded, &view, encoding.p(), &mut failures)
            .await;
    }
    view.publish(&encoding, &fleet_state.metrics);
    fleet_state.metrics.nodes_evicted.set(evicted.len() as i64);
    // Shards whose owner did not answer: past f, reads of blobs may fail
    // though no blob is counted Lost (only answering nodes list blobs).
    let shards_unavailable = assignment
        .values()
        .filter(|owner| !view.ready.contains(*owner))
        .count();
    fleet_state
        .metrics
        .shards_unavailable
        .set(shards_unavailable as i64);
    fleet_state.metrics.fault_tolerance.set(encoding.f() as i64);
    {
        let mut lost_at = fleet_state.lost_at.lock().expect("not poisoned");
        // A node lost since the last status (or before a failover) counts
        // from when it was lost, even if it is back by now.
        let was_lost = previous_status
            .unavailable_nodes
            .iter()
            .filter_map(|u| Some((u.name.clone(), u.since.parse::<Timestamp>().ok()?)));
        let is_lost = decisions
            .iter()
            .filter_map(|d| Some((d.name.clone(), d.unavailable_since?)));
        for (node, since) in was_lost.chain(is_lost) {
            lost_at.entry(node).or_insert(since);
        }
        super::loss_times::carry_to_new_owners(&mut lost_at, &previous, &assignment);
        let started = fleet_state.repairer.run_plan(
            &encoding,
            &view,
            &assignment,
            &addresses,
            max_repairs,
            read_at,
        );
        for crate::control::StartedRepair { task, at } in &started {
            // The node rebuilding, or the evicted node its shards came from.
            let losers = std::iter::once(task.node.clone())
                .chain(task.shards.iter().filter_map(|s| previous.get(s).cloned()));
            for lost in losers {
                if let Some(since) = lost_at.remove(&lost) {
                    // Started before this reconcile when a repair that
                    // ended started it from the queue.
                    let waited = (now.duration_since(since).as_secs_f64()
                        - at.elapsed().as_secs_f64())
                    .max(0.0);
                    fleet_state.metrics.repair_start_delay.observe(waited);
                    tracing::info!(node = %lost, waited, "first repair after the node was lost");
                }
            }
        }
        lost_at.retain(|node, _| {
            let available = decisions.iter().any(|d| &d.name == node && d.available);
            !(available && view.node_is_whole(&view.confirmed(&assignment), node))
        });
    }
    let changed = {
        let mut last = fleet_state.view.lock().expect("not poisoned");
        let changed = last
            .as_ref()
            .is_none_or(|(_, v)| !Arc::ptr_eq(v, &view) && **v != *view);
        *last = Some((cluster.spec.shards, Arc::clone(&view)));
        changed
    };
    if changed {
        ctx.views_changed.send_modify(|v| *v += 1);
    }

    let counts = view.health_counts(&encoding);
    let blob_counts = BlobCounts {
        healthy: counts[&Health::Healthy] as u64,
        degraded: counts[&Health::Degraded] as u64,
        at_risk: counts[&Health::AtRisk] as u64,
        lost: counts[&Health::Lost] as u64,
    };
    for failing in fleet_state.repairer.untold_failures(REPAIR_FAILURES_TOLD) {
        ctx.publish(
            &*cluster,
            true,
            "RepairFailing",
            format!(
                "{} repairs on {} failed in a row (they are retried); the last, of blob {}: {}",
                failing.count, failing.node, failing.blob, failing.why
            ),
        )
        .await;
    }
    // What a loss took, asked of the gateway only while every shard's node
    // answers: a blob counted Lost then holds too few pairs for good.
    let lost_blobs: Vec<&str> = view.lost_blobs(&encoding).collect();
    let (lost_objects, lost_objects_unknown) = if shards_unavailable == 0 {
        match super::lost_objects::objects_of_lost_blobs(
            &ctx,
            &cluster,
            &fleet_state,
            &lost_blobs,
            &previous_status.lost_objects,
        )
        .await
        {
            Ok(found) => (found, None),
            Err(why) => (None, Some(why)),
        }
    } else {
        (None, None)
    };
    let gateways = gateway_pods(&client, &namespace, &name).await;
    fleet_state
        .metrics
        .gateways_available
        .set(gateways.map_or(0, |g| i64::from(g.available)));
    let summary = FleetSummary {
        unavailable: decisions
            .iter()
            .enumerate()
            .filter_map(|(index, d)| {
                Some(UnavailableNode {
                    name: d.name.clone(),
                    since: d.unavailable_since?.to_string(),
                    reason: Some(unavailable_reason(
                        d,
                        pod_by_name.get(&d.name).copied(),
                        &node_claim_name(&name, index),
                    )),
                })
            })
            .collect(),
        not_answering: view.silent.iter().cloned().collect(),
        // Those whose shards moved (none do while objects are held).
        evicted: evicted
            .iter()
            .filter(|node| !assignment.values().any(|owner| owner == *node))
            .map(|s| s.to_string())
            .collect(),
        blobs: (!view.ready.is_empty()).then_some(blob_counts.clone()),
        lost_blobs: lost_blobs.iter().map(|id| id.to_string()).collect(),
        lost_objects,
        lost_objects_unknown,
        repairs_in_flight: fleet_state.repairer.in_flight() as u32,
        failing_repairs: fleet_state
            .repairer
            .failing()
            .into_iter()
            .map(failing_repairs)
            .collect(),
        shards_to_move,
        retiring: retiring.clone(),
        outdated,
        rollout_wait,
        sync_failures: failures.0.clone(),
        held: held.clone(),
        growth_held: growth_held.clone(),
        gateways,
        ca_rotation: rotation_progress,
    };
    let observed_status: Vec<ObservedNode> = node_specs
        .iter()
        .zip(&decisions)
        .zip(&node_hosts)
        .map(|((spec, d), host)| ObservedNode {
            name: spec.name.clone(),
            host: host.clone(),
            domain: spec.domain.clone(),
            exists: pod_by_name.contains_key(&spec.name),
            ready: d.available,
        })
        .collect();
    let status = cluster_status(&cluster, &assignment, &observed_status, &summary, &now_time);
    let synced = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Synced" && c.status == "True");
    fleet_state.metrics.synced.set(i64::from(synced));
    if previous_status.phase.is_some() && status.phase != previous_status.phase {
        let phase = status.phase.clone().unwrap_or_default();
        let message = status
            .conditions
            .iter()
            .find(|c| {
                c.type_
                    == if phase == "Ready" {
                        "Ready"
                    } else {
                        "Degraded"
                    }
            })
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ctx.publish(
            &*cluster,
            phase == "Degraded",
            &format!("Cluster{phase}"),
            message,
        )
        .await;
    }
    let newly_failing = held.is_none()
        && !failures.0.is_empty()
        && !previous_status
            .conditions
            .iter()
            .any(|c| c.type_ == "Synced" && c.status == "False");
    if newly_failing {
        ctx.publish(
            &*cluster,
            true,
            "ApplyFailed",
            format!(
                "{} of the cluster's objects could not be applied; the rest, repairs and status go on: {}",
                failures.0.len(),
                failures.0.join("; ")
            ),
        )
        .await;
    }
    write_status_if_changed(&clusters, &cluster, status).await?;

    let busy = !failures.0.is_empty()
        || held.is_some()
        || ca_rotating
        || summary.repairs_in_flight > 0
        || blob_counts.degraded + blob_counts.at_risk > 0
        || decisions.iter().any(|d| !d.available)
        || summary.shards_to_move > 0
        || !summary.retiring.is_empty()
        || !summary.outdated.is_empty();
    let mut next = if busy {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(30)
    };
    if let Some(eviction) = lifecycle::next_eviction_in(&decisions, grace, now) {
        next = next.min(eviction + Duration::from_secs(1));
    }
    Ok(Action::requeue(next))
}

/// One Event per evicted node naming the shards it handed over and to whom.
async fn report_moved_shards(
    ctx: &Context,
    cluster: &StorageCluster,
    previous: &Assignment,
    assignment: &Assignment,
    evicted: &BTreeSet<&str>,
) {
    for node in evicted {
        let moved: Vec<String> = previous
            .iter()
            .filter(|(_, owner)| owner.as_str() == *node)
            .filter_map(|(shard, _)| {
                let to = assignment.get(shard).filter(|to| to.as_str() != *node)?;
                Some(format!("{shard} -> {to}"))
            })
            .collect();
        if moved.is_empty() {
            continue;
        }
        ctx.publish(
            cluster,
            true,
            "ShardsMoved",
            format!(
                "{node} stayed unavailable past the grace period; its shards move and are rebuilt: {}",
                moved.join(", ")
            ),
        )
        .await;
    }
}

/// Tells when node pods start retiring: a lowered spec.nodes keeps them
/// until their shards have moved.
async fn report_retiring(
    ctx: &Context,
    cluster: &StorageCluster,
    were_retiring: &[String],
    retiring: &[String],
    previous: &Assignment,
) {
    let newly: Vec<&str> = retiring
        .iter()
        .filter(|n| !were_retiring.contains(n))
        .map(String::as_str)
        .collect();
    if newly.is_empty() {
        return;
    }
    let shards = previous
        .values()
        .filter(|owner| newly.contains(&owner.as_str()))
        .count();
    ctx.publish(
        cluster,
        false,
        "NodesRetiring",
        format!(
            "spec.nodes is {}: {} keep serving until their {shards} shards have moved to the other node pods, a few at a time, each batch once the last is rebuilt; then they are deleted",
            cluster.spec.nodes,
            newly.join(", ")
        ),
    )
    .await;
}

/// A merge patch turning status `old` into `new`: fields `new` leaves out
/// are set to null, so they are removed rather than kept.
pub(crate) fn status_merge_patch<T: Serialize>(old: Option<&T>, new: &T) -> serde_json::Value {
    let mut status = serde_json::to_value(new).expect("status serializes");
    if let (Some(old), Some(fields)) = (
        old.and_then(|o| serde_json::to_value(o).ok()),
        status.as_object_mut(),
    ) {
        for key in old.as_object().into_iter().flat_map(|o| o.keys()) {
            fields.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    serde_json::json!({ "status": status })
}

/// How long after its Deployment is made a gateway without an available
/// pod counts as starting rather than down (an image pull, the first
/// shard map).
const GATEWAY_STARTUP_SECS: i64 = 120;

/// The gateway Deployment's available and wanted pods (`None`: not made
/// yet, or it could not be read).
async fn gateway_pods(
    client: &kube::Client,
    namespace: &str,
    cluster: &str,
) -> Option<GatewayPods> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = match deployments.get_opt(&desired::gateway_name(cluster)).await {
        Ok(found) => found?,
        Err(e) => {
            tracing::debug!(cluster, "cannot read the gateway Deployment: {e}");
            return None;
        }
    };
    let count = |n: Option<i32>| u16::try_from(n.unwrap_or(0).max(0)).unwrap_or(u16::MAX);
    let age_secs = deployment
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(i64::MAX, |made| {
            Timestamp::now().as_second() - made.0.as_second()
        });
    Some(GatewayPods {
        available: count(
            deployment
                .status
                .as_ref()
                .and_then(|s| s.available_replicas),
        ),
        wanted: count(deployment.spec.replicas.or(Some(1))),
        starting: age_secs < GATEWAY_STARTUP_SECS,
    })
}

/// Acts on nothing of a cluster but its status (Failed, not Ready for
/// `reason`) and, when that changes, a Warning Event saying `problem`.
async fn refuse(
    ctx: &Context,
    clusters: &Api<StorageCluster>,
    cluster: &StorageCluster,
    reason: &str,
    problem: String,
    now: &Time,
) -> Result<(), ReconcileError> {
    let key = (cluster.namespace().unwrap_or_default(), cluster.name_any());
    ctx.fleets.get(&key, ctx.deadlines).metrics.synced.set(0);
    let mut status = refused_status(cluster, reason, problem.clone(), now);
    let previous = cluster.status.clone().unwrap_or_default();
    super::status::carry_transition_times(&mut status.conditions, &previous.conditions);
    if cluster.status.as_ref() != Some(&status) {
        ctx.publish(cluster, true, reason, problem).await;
    }
    write_status_if_changed(clusters, cluster, status).await
}

async fn write_status_if_changed(
    clusters: &Api<StorageCluster>,
    cluster: &StorageCluster,
    status: super::crd::StorageClusterStatus,
) -> Result<(), ReconcileError> {
    if cluster.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = status_merge_patch(cluster.status.as_ref(), &status);
    clusters
        .patch_status(
            &cluster.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// The node pods a cluster running `nodes` grows to (up to `spec_nodes`)
/// and, when an object the operator did not make holds the pod or claim
/// name of one it would add, what to tell: it stops before that one
/// (told in one Event NameTaken). Only a cluster that already has node
/// pods grows short; a new one is held whole by the names check.
#[allow(clippy::too_many_arguments)]
async fn grow_onto_free_names(
    ctx: &Context,
    cluster: &StorageCluster,
    spec_nodes: usize,
    nodes: usize,
    (previous, previous_status): (&Assignment, &super::crd::StorageClusterStatus),
    (pod_by_name, claim_by_name): (
        &BTreeMap<String, &Pod>,
        &BTreeMap<String, &PersistentVolumeClaim>,
    ),
    ephemeral: bool,
) -> Result<(usize, Option<String>), ReconcileError> {
    let name = &cluster.name_any();
    let namespace = &cluster.namespace().unwrap_or_default();
    let claim_pods: Vec<String> = claim_by_name
        .keys()
        .filter_map(|claim| super::retiring::claim_ordinal(name, claim))
        .map(|ordinal| node_pod_name(name, ordinal))
        .collect();
    let known = previous
        .values()
        .chain(&previous_status.retiring_nodes)
        .chain(pod_by_name.keys())
        .chain(&claim_pods)
        .map(String::as_str);
    let established = super::retiring::established_node_count(name, known);
    if established == 0 || nodes <= established {
        return Ok((nodes, None));
    }
    let observed = |kind: &str, object: &str| match kind {
        "Pod" => pod_by_name.contains_key(object),
        "PersistentVolumeClaim" => claim_by_name.contains_key(object),
        _ => false,
    };
    let taken = super::name_holders::first_node_taken(
        ctx,
        name,
        namespace,
        established..nodes,
        ephemeral,
        observed,
    )
    .await?;
    let Some((ordinal, held)) = taken else {
        return Ok((nodes, None));
    };
    let told = super::name_holders::growth_held(name, spec_nodes, ordinal, &held);
    tracing::warn!(cluster = %name, "{told}");
    let already_told = previous_status
        .conditions
        .iter()
        .any(|c| c.type_ == "Synced" && c.reason == "NameTaken");
    if !already_told {
        ctx.publish(cluster, true, "NameTaken", told.clone()).await;
    }
    Ok((ordinal, Some(told)))
}
