//! The StorageCluster reconciler: the thin I/O shell around `desired` and
//! `status`. It observes the cluster's node pods, keeps the shard
//! assignment stable (from the last status), applies every desired object
//! with server-side apply under one field manager, removes node pods beyond
//! `spec.nodes`, and writes the status only when it changed.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::crd::StorageCluster;
use super::desired::{desired_objects, node_pod_name};
use super::status::{cluster_status, validate_spec, ObservedNode};
use crate::fleet::{self, Assignment, NodeSpec};

/// The one field manager of every object the operator applies.
pub const FIELD_MANAGER: &str = "redstuff-operator";

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The Kubernetes API refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The StorageCluster has no namespace (it is a namespaced resource).
    #[error("StorageCluster without a namespace")]
    NoNamespace,
    /// No random bytes for the node token.
    #[error("cannot make a node token: {0}")]
    Token(std::io::Error),
}

/// What every reconcile needs.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Image of node and gateway pods when the spec names none.
    pub image: String,
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn apply<K>(api: &Api<K>, object: &K) -> Result<(), ReconcileError>
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

fn random_token() -> Result<String, ReconcileError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(ReconcileError::Token)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Brings one StorageCluster's objects and status in line with its spec.
pub async fn reconcile_cluster(
    cluster: Arc<StorageCluster>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let namespace = cluster.namespace().ok_or(ReconcileError::NoNamespace)?;
    let name = cluster.name_any();
    let client = ctx.client.clone();
    let clusters: Api<StorageCluster> = Api::namespaced(client.clone(), &namespace);
    let now = Time(k8s_openapi::jiff::Timestamp::now());

    if validate_spec(&cluster.spec).is_err() {
        let status = cluster_status(&cluster, &Assignment::new(), &[], &now);
        write_status_if_changed(&clusters, &cluster, status).await?;
        return Ok(Action::await_change());
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let selector = format!("app.kubernetes.io/instance={name},app.kubernetes.io/component=node");
    let observed = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let by_name: BTreeMap<String, &Pod> = observed.iter().map(|p| (p.name_any(), p)).collect();

    let nodes = usize::from(cluster.spec.nodes);
    let node_specs: Vec<NodeSpec> = (0..nodes)
        .map(|i| {
            let pod = node_pod_name(&name, i);
            let host = by_name
                .get(&pod)
                .and_then(|p| p.spec.as_ref()?.node_name.clone())
                .unwrap_or_else(|| pod.clone());
            NodeSpec {
                name: pod,
                domain: host,
            }
        })
        .collect();
    let previous: Assignment = cluster
        .status
        .iter()
        .flat_map(|s| s.shard_assignment.iter().map(|a| (a.shard, a.node.clone())))
        .collect();
    let assignment = fleet::assign(cluster.spec.shards, &node_specs, &previous);

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let token = match secrets.get_opt(&format!("{name}-node-token")).await? {
        Some(secret) => secret
            .data
            .and_then(|d| {
                d.get("token")
                    .map(|t| String::from_utf8_lossy(&t.0).into_owned())
            })
            .unwrap_or_default(),
        None => random_token()?,
    };
    let desired = desired_objects(&cluster, &assignment, &ctx.image, &token);

    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    apply(&services, &desired.node_service).await?;
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), &namespace),
        &desired.shards_config,
    )
    .await?;
    apply(&secrets, &desired.node_token).await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    for claim in &desired.node_claims {
        apply(&claims, claim).await?;
    }
    for pod in &desired.node_pods {
        apply(&pods, pod).await?;
    }
    apply(
        &Api::<Deployment>::namespaced(client.clone(), &namespace),
        &desired.gateway,
    )
    .await?;
    apply(&services, &desired.gateway_service).await?;
    apply(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace),
        &desired.disruption_budget,
    )
    .await?;

    // Node pods beyond spec.nodes go (their claims stay until the cluster goes).
    let wanted: Vec<String> = (0..nodes).map(|i| node_pod_name(&name, i)).collect();
    for pod in observed.iter().filter(|p| !wanted.contains(&p.name_any())) {
        pods.delete(&pod.name_any(), &DeleteParams::default())
            .await?;
    }

    let observed_nodes: Vec<ObservedNode> = node_specs
        .iter()
        .map(|spec| {
            let pod = by_name.get(&spec.name);
            ObservedNode {
                name: spec.name.clone(),
                domain: spec.domain.clone(),
                exists: pod.is_some(),
                ready: pod.is_some_and(|p| is_ready(p)),
            }
        })
        .collect();
    let status = cluster_status(&cluster, &assignment, &observed_nodes, &now);
    write_status_if_changed(&clusters, &cluster, status).await?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

async fn write_status_if_changed(
    clusters: &Api<StorageCluster>,
    cluster: &StorageCluster,
    status: super::crd::StorageClusterStatus,
) -> Result<(), ReconcileError> {
    if cluster.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = serde_json::json!({ "status": status });
    clusters
        .patch_status(
            &cluster.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}
