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
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::context::{ClusterFleet, Context};
use super::crd::{
    Blob, BlobCounts, BlobSource, BlobSpec, StorageCluster, UnavailableNode, UploadSource,
};
use super::desired::{
    self, cluster_token_secret, desired_objects, node_claim_name, node_pod_name,
    tls::{self, ClusterTls},
    user_token_secret, Credentials, TOKEN_KEY,
};
use super::lifecycle::{self, ClaimState, DeleteReason, NodeDecision, NodeObserved, PodState};
use super::observed::AppliedContent;
use super::pod_problem::pod_problem;
use super::rollout::{self, FleetCalm, RolloutNode};
use super::status::{cluster_status, validate_spec, FleetSummary, ObservedNode};
pub use super::upload_records::upload_record_name;
use super::upload_records::{self, MOST_RECORDED_AT_ONCE};
use crate::codec::EncodingConfig;
use crate::control::{self, NodeAddress};
use crate::fleet::{self, Assignment, Health, NodeSpec};
use crate::tls::LocalCa;

/// The one field manager of every object the operator applies.
pub const FIELD_MANAGER: &str = "redstuff-operator";

/// Grace period when the spec names none.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);
/// Repairs in flight per cluster when the spec names none.
pub const DEFAULT_MAX_REPAIRS: usize = 4;

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The Kubernetes API refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object has no namespace (both resources are namespaced).
    #[error("object without a namespace")]
    NoNamespace,
    /// No random bytes for the node token.
    #[error("cannot make a node token: {0}")]
    Token(std::io::Error),
    /// The cluster's CA or serving certificate could not be read or made
    /// (the reconcile then holds the cluster's objects, see `hold_objects`).
    #[error("TLS: {0}")]
    Tls(String),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// Nodes that must be reached could not be.
    #[error("nodes unreachable: {0}")]
    NodesUnreachable(String),
    /// The reconcile ran past its overall deadline (a node or the API
    /// server too slow); it is retried.
    #[error("took longer than {0:?}: abandoned, retried")]
    Deadline(Duration),
}

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
struct Failures(Vec<String>);

impl Failures {
    /// Keeps `what` failing with `result`'s error, if it failed.
    fn note<E: std::fmt::Display>(&mut self, what: impl std::fmt::Display, result: Result<(), E>) {
        if let Err(e) = result {
            tracing::warn!("{what}: {e}");
            self.0.push(format!("{what}: {e}"));
        }
    }
}

/// Applies `object` unless the same content was applied lately (and,
/// where the caller knows, the object is `present`), noting a failure
/// instead of returning it.
async fn apply_noting<K>(
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

/// The content of a token Secret, or a new random token when it does not
/// exist yet (or holds no token).
async fn read_or_make_token(secrets: &Api<Secret>, name: &str) -> Result<String, ReconcileError> {
    let existing = secrets
        .get_opt(name)
        .await?
        .and_then(|secret| secret.data)
        .and_then(|d| {
            d.get(TOKEN_KEY)
                .map(|t| String::from_utf8_lossy(&t.0).into_owned())
        })
        .filter(|content| !crate::auth::parse_tokens(content).is_empty());
    match existing {
        Some(content) => Ok(content),
        None => crate::auth::random_token().map_err(ReconcileError::Token),
    }
}

/// The CA and the serving certificates of `cluster`: the CA kept in its
/// Secret, or a new one stored before anything uses it (so that a failed
/// write can never leave pods trusting a CA the next reconcile replaces);
/// each serving certificate kept unless `tls::needs_new_serving_cert` says
/// to issue one.
async fn read_or_make_tls(
    secrets: &Api<Secret>,
    cluster: &StorageCluster,
    name: &str,
    namespace: &str,
) -> Result<ClusterTls, ReconcileError> {
    let issue_error = |e: crate::tls::TlsError| ReconcileError::Tls(e.to_string());
    let ca_name = tls::ca_secret_name(name);
    let mut kept_ca = secrets.get_opt(&ca_name).await?;
    if kept_ca.is_none() {
        let ca = LocalCa::generate(name).map_err(issue_error)?;
        let secret = tls::ca_secret(cluster, name, ca.cert_pem(), &ca.key_pem());
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(created) => {
                tracing::info!(cluster = name, "made the cluster's CA");
                kept_ca = Some(created);
            }
            // Made meanwhile by another reconcile: that one is the CA.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                kept_ca = secrets.get_opt(&ca_name).await?
            }
            Err(e) => return Err(e.into()),
        }
    }
    let ca = match (
        secret_text(&kept_ca, tls::CA_CERT_KEY),
        secret_text(&kept_ca, tls::CA_KEY_KEY),
    ) {
        (Some(cert), Some(key)) => LocalCa::from_pem(&cert, &key).map_err(issue_error)?,
        _ => {
            return Err(ReconcileError::Tls(format!(
                "the Secret {ca_name} lacks {} or {}: delete it to have a new CA made",
                tls::CA_CERT_KEY,
                tls::CA_KEY_KEY
            )))
        }
    };
    let nodes = keep_or_issue(
        secrets,
        &ca,
        &tls::node_tls_secret_name(name),
        tls::node_serving_names(name, namespace),
    )
    .await?;
    let gateway = match cluster.spec.gateway_secret() {
        Some(_) => None,
        None => Some(
            keep_or_issue(
                secrets,
                &ca,
                &tls::gateway_tls_secret_name(name),
                tls::gateway_serving_names(cluster, namespace),
            )
            .await?,
        ),
    };
    Ok(ClusterTls {
        ca_cert_pem: ca.cert_pem().to_string(),
        ca_key_pem: ca.key_pem(),
        nodes,
        gateway,
    })
}

/// The value of `key` in `secret`, when it holds a non-blank one.
fn secret_text(secret: &Option<Secret>, key: &str) -> Option<String> {
    secret
        .as_ref()
        .and_then(|s| s.data.as_ref()?.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .filter(|v| !v.trim().is_empty())
}

/// The serving certificate for `names` kept in Secret `secret_name`, or a
/// new one from `ca` when `tls::needs_new_serving_cert` says so.
async fn keep_or_issue(
    secrets: &Api<Secret>,
    ca: &LocalCa,
    secret_name: &str,
    names: Vec<String>,
) -> Result<tls::ServingPair, ReconcileError> {
    let kept = secrets.get_opt(secret_name).await?;
    let annotation = |key: &str| {
        kept.as_ref()
            .and_then(|s| s.metadata.annotations.as_ref()?.get(key).cloned())
    };
    let kept_serving = kept.as_ref().map(|_| tls::KeptServingCert {
        ca_cert_pem: secret_text(&kept, tls::CA_CERT_KEY).unwrap_or_default(),
        not_after_unix: annotation(tls::NOT_AFTER_ANNOTATION).and_then(|v| v.parse().ok()),
        names: annotation(tls::NAMES_ANNOTATION),
        complete: secret_text(&kept, tls::CERT_KEY).is_some()
            && secret_text(&kept, tls::KEY_KEY).is_some(),
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if !tls::needs_new_serving_cert(kept_serving.as_ref(), ca.cert_pem(), &names, now) {
        return Ok(tls::ServingPair {
            cert_pem: secret_text(&kept, tls::CERT_KEY).unwrap_or_default(),
            key_pem: secret_text(&kept, tls::KEY_KEY).unwrap_or_default(),
            not_after_unix: kept_serving.and_then(|k| k.not_after_unix).unwrap_or(0),
            names,
        });
    }
    let issued = ca
        .issue(&names, crate::tls::SERVING_VALIDITY)
        .map_err(|e| ReconcileError::Tls(format!("{secret_name}: {e}")))?;
    tracing::info!(secret = secret_name, "issued a serving certificate");
    Ok(tls::ServingPair {
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
        not_after_unix: issued
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        names,
    })
}

/// Checks the cluster's nodes against `ca_cert_pem` from now on.
pub(crate) fn trust_cluster_ca(trust: &crate::tls::FleetTrust, ca_cert_pem: &str) {
    let origin = std::path::Path::new("the cluster's CA Secret");
    match crate::tls::TrustedCa::from_pem(origin, ca_cert_pem.as_bytes()) {
        Ok(ca) => {
            if let Err(e) = trust.set(&ca) {
                tracing::warn!("cannot trust the cluster's CA: {e}");
            }
        }
        Err(e) => tracing::warn!("{e}"),
    }
}

/// Checks the cluster's gateway against the cluster's CA from now on, or,
/// when it serves a Secret of the user's, against that Secret's `ca.crt`
/// (Mozilla's roots when it has none). What is wrong with that Secret is
/// returned to be told, never a reason to stop the reconcile: the gateway
/// pod waits for the Secret too, and the fleet goes on.
async fn trust_gateway(
    secrets: &Api<Secret>,
    cluster: &StorageCluster,
    trust: &crate::tls::FleetTrust,
    ca_cert_pem: &str,
) -> Result<(), String> {
    let Some(own) = cluster.spec.gateway_secret() else {
        trust_cluster_ca(trust, ca_cert_pem);
        return Ok(());
    };
    let secret = secrets
        .get_opt(own)
        .await
        .map_err(|e| format!("cannot read the Secret {own} (spec.tls.gatewaySecret): {e}"))?
        .ok_or_else(|| format!("the Secret {own} (spec.tls.gatewaySecret) does not exist"))?;
    let ca = match secret_text(&Some(secret), tls::CA_CERT_KEY) {
        Some(pem) => crate::tls::TrustedCa::from_pem(std::path::Path::new(own), pem.as_bytes())
            .map_err(|e| format!("ca.crt of the Secret {e} (spec.tls.gatewaySecret)"))?,
        None => crate::tls::TrustedCa::public_roots(),
    };
    trust
        .set(&ca)
        .map_err(|e| format!("ca.crt of the Secret {own}: {e}"))
}

/// The S3 access key the operator keeps in `name`, or new keys.
async fn read_or_make_s3_keys(
    secrets: &Api<Secret>,
    name: &str,
) -> Result<crate::s3::credentials::S3Keys, ReconcileError> {
    use crate::operator::desired::s3::{ACCESS_KEY, SECRET_KEY};
    let existing = secrets.get_opt(name).await?.and_then(|secret| secret.data);
    let read = |key: &str| {
        existing
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let (Some(access_key), Some(secret_key)) = (read(ACCESS_KEY), read(SECRET_KEY)) {
        return Ok(crate::s3::credentials::S3Keys {
            access_key,
            secret_key,
        });
    }
    crate::s3::credentials::S3Keys::generate().map_err(ReconcileError::Token)
}

/// Blobs Degraded or AtRisk in the cluster's last inventory view (none
/// before the first).
fn last_view_blobs_to_repair(fleet: &ClusterFleet, encoding: &EncodingConfig) -> usize {
    let last = fleet.view.lock().expect("not poisoned");
    last.as_ref().map_or(0, |(_, view)| {
        let counts = view.health_counts(encoding);
        counts[&Health::Degraded] + counts[&Health::AtRisk]
    })
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
    let ownership_caught_up = fleet
        .view
        .lock()
        .expect("not poisoned")
        .as_ref()
        .is_some_and(|(_, view)| view.ownership_matches(applied));
    repairs_idle && ownership_caught_up && last_view_blobs_to_repair(fleet, encoding) == 0
}

/// Whether `existing` was created from another spec than `desired`'s
/// (a pod without the annotation predates it: outdated too).
fn is_outdated(existing: &Pod, desired: &Pod) -> bool {
    rollout::recorded_spec_hash(existing) != rollout::recorded_spec_hash(desired)
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
    let client = ctx.client.clone();
    let clusters: Api<StorageCluster> = Api::namespaced(client.clone(), &namespace);
    let now = Timestamp::now();
    let now_time = Time(now);
    let previous_status = cluster.status.clone().unwrap_or_default();

    let encoding = match validate_spec(&cluster.spec) {
        Ok(encoding) => encoding,
        Err(problem) => {
            let status = cluster_status(
                &cluster,
                &Assignment::new(),
                &[],
                &FleetSummary::default(),
                &now_time,
            );
            if cluster.status.as_ref() != Some(&status) {
                ctx.publish(&*cluster, true, "InvalidSpec", problem).await;
            }
            write_status_if_changed(&clusters, &cluster, status).await?;
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

    let nodes = usize::from(cluster.spec.nodes);
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
    let decisions = lifecycle::decide(
        &observed_nodes,
        &previous_status.unavailable_nodes,
        grace,
        now,
    );
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
    let holders: Vec<NodeSpec> = node_specs
        .iter()
        .filter(|n| !evicted.contains(n.name.as_str()))
        .cloned()
        .collect();
    let previous: Assignment = previous_status
        .shard_assignment
        .iter()
        .map(|a| (a.shard, a.node.clone()))
        .collect();
    let key = (namespace.clone(), name.clone());
    let fleet_state = ctx.fleets.get(&key, ctx.deadlines);
    // Shards leaving owners still present (a node back from eviction, a
    // grown cluster) move a few at a time, each batch once the last one
    // is rebuilt and every blob is Healthy again (`fleet::pacing`).
    let balanced = fleet::assign(cluster.spec.shards, &holders, &previous);
    let room = if rebalance_may_go_on(&fleet_state, &previous, &encoding) {
        fleet::moves_at_once(encoding.f())
    } else {
        0
    };
    let assignment = fleet::pace_moves(&previous, &balanced, &holders, room);
    let shards_to_move = fleet::live_moves(&assignment, &balanced, &holders) as u32;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let applied = &fleet_state.applied;
    let mut failures = Failures::default();
    let tls = if cluster.spec.tls_enabled() {
        match read_or_make_tls(&secrets, &cluster, &name, &namespace).await {
            Ok(tls) => Ok(Some(tls)),
            Err(ReconcileError::Tls(problem)) => Err(problem),
            Err(e) => return Err(e),
        }
    } else {
        Ok(None)
    };
    let scope = ApplyScope {
        ctx: &ctx,
        cluster: &cluster,
        name: &name,
        namespace: &namespace,
        fleet_state: &fleet_state,
        encoding: &encoding,
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
        Err(problem) => {
            hold_objects(scope, &problem).await?;
            (
                Applied {
                    outdated: Vec::new(),
                    rollout_wait: None,
                },
                Some(problem),
            )
        }
    };
    report_moved_shards(&ctx, &cluster, &previous, &assignment, &evicted).await;

    // The fleet: inventories, repairs, time to repair start.
    let addresses: Vec<NodeAddress> = decisions
        .iter()
        .enumerate()
        .filter(|(_, d)| d.available)
        .map(|(i, d)| NodeAddress {
            name: d.name.clone(),
            url: ctx.endpoints.node(&cluster, i),
        })
        .collect();
    // Blobs recorded before the inventories are read: a Blob deleted after
    // this list still counts as recorded, so its slivers going away in
    // between never make it reappear.
    let blob_records: Api<Blob> = Api::namespaced(client.clone(), &namespace);
    let recorded = if cluster.spec.record_uploads == Some(false) {
        None
    } else {
        match upload_records::recorded_blob_ids(&blob_records, &name).await {
            Ok(ids) => Some(ids),
            Err(e) => {
                failures.note("list Blobs", Err::<(), _>(e));
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
    // cluster does not record uploads.
    if let Some(recorded) = &recorded {
        record_uploads(
            &cluster,
            &blob_records,
            recorded,
            &view,
            &encoding,
            applied,
            &mut failures,
        )
        .await;
    }
    view.publish(&encoding, &fleet_state.metrics);
    fleet_state.metrics.nodes_evicted.set(evicted.len() as i64);
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
        evicted: evicted.iter().map(|s| s.to_string()).collect(),
        blobs: (!view.ready.is_empty()).then_some(blob_counts.clone()),
        repairs_in_flight: fleet_state.repairer.in_flight() as u32,
        shards_to_move,
        outdated,
        rollout_wait,
        sync_failures: failures.0.clone(),
        tls_problem: held.clone(),
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
        || summary.repairs_in_flight > 0
        || blob_counts.degraded + blob_counts.at_risk > 0
        || decisions.iter().any(|d| !d.available)
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

/// What applying a cluster's objects needs from its reconcile.
struct ApplyScope<'a> {
    ctx: &'a Context,
    cluster: &'a StorageCluster,
    name: &'a str,
    namespace: &'a str,
    fleet_state: &'a ClusterFleet,
    encoding: &'a EncodingConfig,
    assignment: &'a Assignment,
    decisions: &'a [NodeDecision],
    observed_pods: &'a [Pod],
    pod_by_name: &'a BTreeMap<String, &'a Pod>,
    claim_by_name: &'a BTreeMap<String, &'a PersistentVolumeClaim>,
    node_names: &'a [String],
    previous_status: &'a super::crd::StorageClusterStatus,
}

/// What applying left to report: the node pods still outdated, and why
/// the rollout waits.
struct Applied {
    outdated: Vec<String>,
    rollout_wait: Option<String>,
}

/// Applies the cluster's objects (`tls`: its TLS material, when it serves
/// TLS), replaces at most one outdated node pod, deletes the pods the
/// lifecycle decided to and those beyond spec.nodes; what fails is noted
/// in `failures`, and the rest goes on.
async fn apply_objects(
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
        trust_cluster_ca(&fleet_state.trust, &tls.ca_cert_pem);
        let gateway_trust = &fleet_state.gateway_trust;
        if let Err(problem) =
            trust_gateway(&secrets, cluster, gateway_trust, &tls.ca_cert_pem).await
        {
            ctx.publish(cluster, true, "TlsMaterial", problem).await;
        }
    }
    let desired = desired_objects(cluster, assignment, &ctx.operator, &credentials);

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
        let existing = claim_by_name.contains_key(&claim.name_any());
        apply_noting(failures, applied, &claims, claim, existing).await;
    }
    for claim in &desired.node_claims {
        // A claim still being deleted cannot be applied: it is recreated
        // once its pod has released it.
        let existing = claim_by_name.get(&claim.name_any());
        let terminating = existing.is_some_and(|c| c.metadata.deletion_timestamp.is_some());
        if !terminating {
            apply_noting(failures, applied, &claims, claim, existing.is_some()).await;
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
    let calm = FleetCalm {
        repairs_in_flight: fleet_state.repairer.in_flight(),
        blobs_to_repair: last_view_blobs_to_repair(fleet_state, encoding),
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
    apply_noting(
        failures,
        applied,
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), namespace),
        &desired.disruption_budget,
        true,
    )
    .await;

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
    // Node pods beyond spec.nodes go (their claims stay until the cluster goes).
    for pod in observed_pods
        .iter()
        .filter(|p| !node_names.contains(&p.name_any()))
    {
        if pod.metadata.deletion_timestamp.is_none() {
            let deleted = pods
                .delete(&pod.name_any(), &DeleteParams::default())
                .await
                .map(|_| ());
            failures.note(format!("delete Pod {}", pod.name_any()), deleted);
        }
    }
    Ok(Applied {
        outdated,
        rollout_wait,
    })
}

/// While the cluster's TLS material cannot be read or made, nothing is
/// applied, created or replaced (pods made without it would serve plain
/// HTTP, and its Secrets would be overwritten), but the fleet is still
/// called, with the cluster token and the CA the nodes serve under, so
/// repairs and status go on. A Warning Event tells the problem when it
/// starts; the Synced condition tells it until it is fixed.
async fn hold_objects(scope: ApplyScope<'_>, problem: &str) -> Result<(), ReconcileError> {
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
        .any(|c| c.type_ == "Synced" && c.reason == "TlsMaterial");
    if !already_told {
        ctx.publish(
            cluster,
            true,
            "TlsMaterial",
            format!(
                "{problem}; nothing is applied, created or replaced until it is fixed (repairs and status go on)"
            ),
        )
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
            break;
        }
    }
    Ok(())
}

async fn delete_pods(
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

/// Records every readable blob of the view that no Blob names yet (an
/// upload through the gateway) as a Blob with an upload source, so that
/// `kubectl get blobs` shows it and deleting that Blob deletes it.
async fn record_uploads(
    cluster: &StorageCluster,
    blobs: &Api<Blob>,
    recorded: &BTreeSet<String>,
    view: &control::FleetView,
    encoding: &crate::codec::EncodingConfig,
    applied: &AppliedContent,
    failures: &mut Failures,
) {
    let name = cluster.name_any();
    let to_record =
        upload_records::uploads_to_record(view, recorded, encoding.p(), MOST_RECORDED_AT_ONCE);
    for id in to_record {
        let Some(record_name) = upload_record_name(id) else {
            continue;
        };
        let mut record = Blob::new(
            &record_name,
            BlobSpec {
                cluster: name.clone(),
                source: BlobSource {
                    upload: Some(UploadSource {
                        blob_id: id.to_string(),
                    }),
                    ..BlobSource::default()
                },
            },
        );
        record.metadata.namespace = cluster.namespace();
        record.metadata.labels = Some(super::desired::labels(&name, "blob"));
        // Recorded by the operator, so owned by the cluster: deleting the
        // cluster deletes its records (and their finalizer releases them).
        record.metadata.owner_references = cluster.controller_owner_ref(&()).map(|o| vec![o]);
        record.metadata.annotations = Some(BTreeMap::from([(
            "redstuff.dev/recorded-by".to_string(),
            "operator: an upload through the gateway".to_string(),
        )]));
        let before = failures.0.len();
        apply_noting(failures, applied, blobs, &record, false).await;
        if failures.0.len() == before {
            tracing::info!(cluster = %name, blob = %id, record = %record_name, "recorded an upload");
        }
    }
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
            .filter_map(|(shard, _)| Some(format!("{shard} -> {}", assignment.get(shard)?)))
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
