//! Applying a StorageCluster's objects, the part of its reconcile that
//! writes to Kubernetes: Secrets, Services, the shards ConfigMap, claims,
//! node pods (created, and replaced one at a time when outdated), the
//! gateway Deployment and the disruption budget; pods the lifecycle
//! decided to delete. Each object on its own: one that fails is noted in
//! `Failures` and the rest goes on. While a TLS cluster's material cannot
//! be read or made, `hold_objects` applies nothing and only prepares the
//! calls to the nodes, so repairs and status go on.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::cluster_secrets::{
    read_or_make_s3_keys, read_or_make_token, secret_text, trust_cluster_ca, trust_gateway,
};
use super::context::{ClusterFleet, Context};
use super::crd::StorageCluster;
use super::desired::{
    cluster_token_secret, desired_objects, node_claim_name,
    tls::{self, ClusterTls},
    user_token_secret, Credentials,
};
use super::lifecycle::{DeleteReason, NodeDecision};
use super::observed::AppliedContent;
use super::reconcile_error::ReconcileError;
use super::rollout::{self, FleetCalm, RolloutNode};
use super::status::HeldObjects;
use crate::codec::EncodingConfig;
use crate::fleet::{Assignment, Health};

/// The one field manager of every object the operator applies.
pub const FIELD_MANAGER: &str = "redstuff-operator";

/// Applies `object` with server-side apply under [`FIELD_MANAGER`], forced.
pub(crate) async fn apply<K>(api: &Api<K>, object: &K) -> Result<(), ReconcileError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await?;
    Ok(())
}

/// The objects of one reconcile that could not be applied or deleted: one
/// failure (an immutable field, a quota, a conflicting object) never
/// stops the others, the repairs or the status; it is reported in the
/// `Synced` condition and an Event, and retried.
#[derive(Debug, Default)]
pub(super) struct Failures(pub(super) Vec<String>);

impl Failures {
    /// Keeps `what` failing with `result`'s error, if it failed.
    pub(super) fn note<E: std::fmt::Display>(
        &mut self,
        what: impl std::fmt::Display,
        result: Result<(), E>,
    ) {
        if let Err(e) = result {
            tracing::warn!("{what}: {e}");
            self.0.push(format!("{what}: {e}"));
        }
    }
}

/// Applies `object` unless the same content was applied lately (and,
/// where the caller knows, the object is `present`), noting a failure
/// instead of returning it.
pub(super) async fn apply_noting<K>(
    failures: &mut Failures,
    applied: &AppliedContent,
    api: &Api<K>,
    object: &K,
    present: bool,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let (needed, applying) = applied.needs_apply(object, present);
    if !needed {
        return;
    }
    let what = format!(
        "apply {} {}",
        K::kind(&()),
        object.meta().name.as_deref().unwrap_or("")
    );
    let result = apply(api, object).await;
    if result.is_ok() {
        applied.record(applying);
    }
    failures.note(what, result);
}

/// Blobs Degraded or AtRisk in the cluster's last inventory view (none
/// before the first).
pub(super) fn last_view_blobs_to_repair(fleet: &ClusterFleet, encoding: &EncodingConfig) -> usize {
    let last = fleet.view.lock().expect("not poisoned");
    last.as_ref().map_or(0, |(_, view)| {
        let counts = view.health_counts(encoding);
        counts[&Health::Degraded] + counts[&Health::AtRisk]
    })
}

/// Whether shards are moving between nodes: `assignment` gives some
/// another owner than `previous` (the one applied before), or the nodes at
/// the last look did not own what it gives them.
fn shards_moving(fleet: &ClusterFleet, previous: &Assignment, assignment: &Assignment) -> bool {
    previous != assignment || !owned_as_assigned(fleet, assignment)
}

/// Whether the nodes answering at the last look own what `assignment`
/// gives them (false before any look).
pub(super) fn owned_as_assigned(fleet: &ClusterFleet, assignment: &Assignment) -> bool {
    fleet
        .view
        .lock()
        .expect("not poisoned")
        .as_ref()
        .is_some_and(|(_, view)| view.ownership_matches(assignment))
}

/// Whether `existing` was created from another spec than `desired`'s
/// (a pod without the annotation predates it: outdated too).
pub(super) fn is_outdated(existing: &Pod, desired: &Pod) -> bool {
    rollout::recorded_spec_hash(existing) != rollout::recorded_spec_hash(desired)
}

/// What applying a cluster's objects needs from its reconcile.
pub(super) struct ApplyScope<'a> {
    pub(super) ctx: &'a Context,
    pub(super) cluster: &'a StorageCluster,
    pub(super) name: &'a str,
    pub(super) namespace: &'a str,
    pub(super) fleet_state: &'a ClusterFleet,
    pub(super) encoding: &'a EncodingConfig,
    /// The assignment applied before this reconcile.
    pub(super) previous: &'a Assignment,
    pub(super) assignment: &'a Assignment,
    pub(super) decisions: &'a [NodeDecision],
    pub(super) observed_pods: &'a [Pod],
    pub(super) pod_by_name: &'a BTreeMap<String, &'a Pod>,
    pub(super) claim_by_name: &'a BTreeMap<String, &'a PersistentVolumeClaim>,
    pub(super) node_names: &'a [String],
    pub(super) previous_status: &'a super::crd::StorageClusterStatus,
}

/// What applying left to report: the node pods still outdated, and why
/// the rollout waits.
pub(super) struct Applied {
    pub(super) outdated: Vec<String>,
    pub(super) rollout_wait: Option<String>,
}

/// Applies the cluster's objects (`tls`: its TLS material, when it serves
/// TLS), replaces at most one outdated node pod, deletes the pods the
/// lifecycle decided to and those beyond spec.nodes; what fails is noted
/// in `failures`, and the rest goes on.
pub(super) async fn apply_objects(
    scope: ApplyScope<'_>,
    tls: Option<ClusterTls>,
    failures: &mut Failures,
) -> Result<Applied, ReconcileError> {
    let ApplyScope {
        ctx,
        cluster,
        name,
        namespace,
        fleet_state,
        encoding,
        previous,
        assignment,
        decisions,
        observed_pods,
        pod_by_name,
        claim_by_name,
        node_names,
        previous_status,
    } = scope;
    let client = ctx.client.clone();
    let nodes = node_names.len();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let credentials = Credentials {
        cluster: read_or_make_token(&secrets, &cluster_token_secret(name)).await?,
        users: read_or_make_token(&secrets, &user_token_secret(name)).await?,
        s3: match crate::operator::desired::s3::enabled(cluster) {
            Some(s3) if s3.credentials_secret.is_none() => Some(
                read_or_make_s3_keys(
                    &secrets,
                    &crate::operator::desired::s3::s3_credentials_secret(name),
                )
                .await?,
            ),
            _ => None,
        },
        tls,
    };
    if let Some(tls) = &credentials.tls {
        let trusted = tls.trusted_pem();
        trust_cluster_ca(&fleet_state.trust, &trusted);
        let gateway_trust = &fleet_state.gateway_trust;
        if let Err(problem) = trust_gateway(&secrets, cluster, gateway_trust, &trusted).await {
            ctx.publish(cluster, true, "TlsMaterial", problem).await;
        }
    }
    let desired = desired_objects(cluster, assignment, nodes, &ctx.operator, &credentials);

    let applied = &fleet_state.applied;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    apply_noting(failures, applied, &services, &desired.node_service, true).await;
    apply_noting(
        failures,
        applied,
        &Api::<ConfigMap>::namespaced(client.clone(), namespace),
        &desired.shards_config,
        true,
    )
    .await;
    apply_noting(failures, applied, &secrets, &desired.node_token, true).await;
    for secret in [
        &desired.ca_secret,
        &desired.node_tls_secret,
        &desired.gateway_tls_secret,
    ]
    .into_iter()
    .flatten()
    {
        apply_noting(failures, applied, &secrets, secret, true).await;
    }
    apply_noting(failures, applied, &secrets, &desired.gateway_token, true).await;
    apply_noting(
        failures,
        applied,
        &Api::<NetworkPolicy>::namespaced(client.clone(), namespace),
        &desired.node_network_policy,
        true,
    )
    .await;
    if let Some(secret) = &desired.s3_credentials {
        apply_noting(failures, applied, &secrets, secret, true).await;
    }
    if let Some(claim) = &desired.s3_index_claim {
        // Not in the node-claim watch: read, then applied when it changed
        // or every five minutes, like the other objects outside the
        // watches.
        match claims.get_opt(&claim.name_any()).await {
            Ok(existing) => {
                let claim = super::desired::claim_size::as_applicable(claim, existing.as_ref());
                apply_noting(failures, applied, &claims, &claim, existing.is_some()).await;
            }
            Err(e) => failures.note(
                format!("read PersistentVolumeClaim {}", claim.name_any()),
                Err::<(), _>(e),
            ),
        }
    }
    for claim in &desired.node_claims {
        // A claim still being deleted cannot be applied: it is recreated
        // once its pod has released it.
        let existing = claim_by_name.get(&claim.name_any());
        let terminating = existing.is_some_and(|c| c.metadata.deletion_timestamp.is_some());
        if !terminating {
            let claim = super::desired::claim_size::never_smaller(claim, existing.copied());
            apply_noting(failures, applied, &claims, &claim, existing.is_some()).await;
        }
    }
    // Node pods created from another spec are never patched (a pod's spec
    // is immutable, and a new image on every pod at once would restart
    // them together): they are replaced one at a time.
    fleet_state
        .calls
        .token
        .replace(crate::auth::parse_tokens(&credentials.cluster));
    let rollout_nodes: Vec<RolloutNode> = desired
        .node_pods
        .iter()
        .zip(decisions)
        .map(|(pod, decision)| RolloutNode {
            name: pod.name_any(),
            outdated: decision.delete_pod.is_none()
                && pod_by_name
                    .get(&pod.name_any())
                    .is_some_and(|existing| is_outdated(existing, pod)),
            available: decision.available,
        })
        .collect();
    let outdated: Vec<String> = rollout_nodes
        .iter()
        .filter(|n| n.outdated)
        .map(|n| n.name.clone())
        .collect();
    // Its own statement: the lock is released before the next one takes it.
    let seen = fleet_state.view.lock().expect("not poisoned").is_some();
    let calm = FleetCalm {
        seen,
        repairs_in_flight: fleet_state.repairer.in_flight() + fleet_state.repairer.queued(),
        blobs_to_repair: last_view_blobs_to_repair(fleet_state, encoding),
        shards_moving: shards_moving(fleet_state, previous, assignment),
        data_on_claims: cluster.spec.storage.ephemeral != Some(true),
    };
    let replacement = rollout::next_replacement(&rollout_nodes, calm).map(str::to_string);
    let rollout_wait = rollout::waiting_for(&rollout_nodes, calm);
    for (index, ((pod, decision), rollout)) in desired
        .node_pods
        .iter()
        .zip(decisions)
        .zip(&rollout_nodes)
        .enumerate()
    {
        let existing = pod_by_name.get(&pod.name_any());
        let present = existing.is_some();
        let terminating = existing.is_some_and(|p| p.metadata.deletion_timestamp.is_some());
        // A pod created on a claim still being deleted would hold it (and
        // run on the old volume): wait until the claim is gone and new.
        let claim_terminating = claim_by_name
            .get(&node_claim_name(name, index))
            .is_some_and(|c| c.metadata.deletion_timestamp.is_some());
        if decision.delete_pod.is_none() && !terminating && !claim_terminating && !rollout.outdated
        {
            let before = failures.0.len();
            apply_noting(failures, applied, &pods, pod, present).await;
            if failures.0.len() == before
                && !present
                && !previous_status.shard_assignment.is_empty()
            {
                ctx.publish(
                    cluster,
                    false,
                    "NodePodReplaced",
                    format!("node pod {} was gone; created it again", pod.name_any()),
                )
                .await;
            }
        }
    }
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    let gateway = if outdated.is_empty() {
        desired.gateway.clone()
    } else {
        // Gateways follow nodes: until every node pod runs the new spec,
        // the gateway keeps its image (a newer gateway may speak a node
        // API the outdated nodes do not know).
        match deployments.get_opt(&desired.gateway.name_any()).await {
            Ok(Some(running)) => rollout::gateway_keeping_its_image(&desired.gateway, &running),
            Ok(None) => desired.gateway.clone(),
            Err(e) => {
                failures.note("read the gateway Deployment".to_string(), Err::<(), _>(e));
                desired.gateway.clone()
            }
        }
    };
    apply_noting(failures, applied, &deployments, &gateway, true).await;
    apply_noting(failures, applied, &services, &desired.gateway_service, true).await;
    let budgets = Api::<PodDisruptionBudget>::namespaced(client.clone(), namespace);
    for budget in [
        &desired.disruption_budget,
        &desired.gateway_disruption_budget,
    ] {
        apply_noting(failures, applied, &budgets, budget, true).await;
    }

    delete_pods(ctx, cluster, &pods, decisions, failures).await;
    if let Some(pod) = &replacement {
        let deleted = pods.delete(pod, &DeleteParams::default()).await.map(|_| ());
        let ok = deleted.is_ok();
        failures.note(format!("delete Pod {pod}"), deleted);
        if ok {
            ctx.publish(
            cluster,
            false,
            "NodePodUpdated",
            format!(
                "replacing {pod} to run the changed spec ({} of {} node pods outdated; one at a time, on the same claim)",
                outdated.len(),
                nodes
            ),
        )
        .await;
        }
    }
    // Node pods beyond spec.nodes go once they own no shard
    // (`operator::retiring`); their claims stay until the cluster goes.
    for pod in observed_pods
        .iter()
        .filter(|p| !node_names.contains(&p.name_any()))
    {
        if pod.metadata.deletion_timestamp.is_none() {
            let name = pod.name_any();
            let deleted = pods
                .delete(&name, &DeleteParams::default())
                .await
                .map(|_| ());
            let ok = deleted.is_ok();
            failures.note(format!("delete Pod {name}"), deleted);
            if ok {
                ctx.publish(
                    cluster,
                    false,
                    "NodeRetired",
                    format!(
                        "deleted {name}, beyond spec.nodes ({}) and owning no shard any more; its claim stays (delete it to free the volume)",
                        cluster.spec.nodes
                    ),
                )
                .await;
            }
        }
    }
    Ok(Applied {
        outdated,
        rollout_wait,
    })
}

/// While the cluster's TLS material cannot be read or made (pods made
/// without it would serve plain HTTP, and its Secrets would be
/// overwritten), or objects the operator did not make hold names of the
/// cluster's (they would be taken over), nothing is applied, created or
/// replaced, but the fleet is still
/// called, with the cluster token and the CA the nodes serve under, so
/// repairs and status go on. A Warning Event tells the problem when it
/// starts; the Synced condition tells it until it is fixed.
pub(super) async fn hold_objects(
    scope: ApplyScope<'_>,
    held: &HeldObjects,
) -> Result<(), ReconcileError> {
    let ApplyScope {
        ctx,
        cluster,
        name,
        namespace,
        fleet_state,
        previous_status,
        ..
    } = scope;
    let already_told = previous_status
        .conditions
        .iter()
        .any(|c| c.type_ == "Synced" && c.reason == held.reason);
    if !already_told {
        ctx.publish(cluster, true, held.reason, held.message())
            .await;
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let token = read_or_make_token(&secrets, &cluster_token_secret(name)).await?;
    fleet_state
        .calls
        .token
        .replace(crate::auth::parse_tokens(&token));
    // The CA the nodes' certificate was issued by, else the CA Secret's
    // certificate (an operator started meanwhile trusts no CA yet).
    for secret in [tls::node_tls_secret_name(name), tls::ca_secret_name(name)] {
        if let Some(pem) = secret_text(&secrets.get_opt(&secret).await?, tls::CA_CERT_KEY) {
            trust_cluster_ca(&fleet_state.trust, &pem);
            if let Some(expiry) = crate::tls::certificate_not_after_unix(&pem) {
                fleet_state.metrics.ca_expiry.set(expiry);
            }
            break;
        }
    }
    Ok(())
}

pub(super) async fn delete_pods(
    ctx: &Context,
    cluster: &StorageCluster,
    pods: &Api<Pod>,
    decisions: &[NodeDecision],
    failures: &mut Failures,
) {
    for d in decisions {
        let Some(reason) = d.delete_pod else { continue };
        let deleted = pods
            .delete(&d.name, &DeleteParams::default())
            .await
            .map(|_| ());
        if deleted.is_err() {
            failures.note(format!("delete Pod {}", d.name), deleted);
            continue;
        }
        let (reason, note) = match reason {
            DeleteReason::VolumeLost => (
                "VolumeLost",
                format!(
                    "the claim of {} is gone: the pod is replaced on an empty volume and its shards rebuilt from peers",
                    d.name
                ),
            ),
            DeleteReason::PodFinished => (
                "NodePodFailed",
                format!("{} stopped and will not restart by itself: replacing it", d.name),
            ),
        };
        ctx.publish(cluster, true, reason, note).await;
    }
}
