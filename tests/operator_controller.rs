//! The StorageCluster reconciler against a mocked Kubernetes API (kube's
//! tower-test pattern): each scenario asserts the requests made. Where a
//! scenario needs storage nodes, they are real, in-process, over HTTP.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use redstuff::client::BlobClient;
use redstuff::operator::context::{Context, Endpoints};
use redstuff::operator::controller::reconcile_cluster;
use redstuff::operator::crd::{RepairSpec, StorageCluster, StorageClusterSpec, StorageSpec};
use redstuff::operator::rollout::SPEC_HASH_ANNOTATION;
use serde_json::{json, Value};
use support::{fleet_map, lines, node_calls, spec_hash, start_node_with_fleet, MockApi, Seen};

const NS: &str = "/api/v1/namespaces/storage";
const GROUP: &str = "/apis/redstuff.dev/v1alpha1/namespaces/storage";
const CLUSTER: &str = "/apis/redstuff.dev/v1alpha1/namespaces/storage/storageclusters/media";

fn cluster(shards: u16, nodes: u16, status: Option<Value>) -> StorageCluster {
    let mut c = StorageCluster::new(
        "media",
        StorageClusterSpec {
            shards,
            nodes,
            image: None,
            storage: StorageSpec {
                size: Some("10Gi".into()),
                storage_class_name: None,
                ephemeral: None,
                when_deleted: None,
            },
            resources: None,
            placement: None,
            repair: Some(RepairSpec {
                grace_period: Some("5m".into()),
                max_concurrent: None,
            }),
            s3: None,
            record_uploads: None,
            tls: None,
            gateway: None,
            scrub: None,
        },
    );
    c.metadata.namespace = Some("storage".into());
    c.metadata.uid = Some("7c1f".into());
    c.metadata.generation = Some(1);
    c.status = status.map(|s| serde_json::from_value(s).unwrap());
    c
}

/// Node pod `name` (`media-node-<i>`) as the operator created it from the
/// spec of `cluster`, on Kubernetes node `host-<name>`.
fn pod_of(cluster: &StorageCluster, name: &str, ready: bool) -> Value {
    let index: usize = name.rsplit('-').next().unwrap().parse().unwrap();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "storage",
                     "annotations": {SPEC_HASH_ANNOTATION: spec_hash(cluster, index)}},
        "spec": {"containers": [], "nodeName": format!("host-{name}")},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

/// Node pod `name` created from the spec every scenario's cluster has.
fn pod(name: &str, ready: bool) -> Value {
    pod_of(&cluster(10, 10, None), name, ready)
}

fn claim(name: &str, terminating: bool) -> Value {
    let mut c = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "storage"},
        "spec": {}
    });
    if terminating {
        c["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    c
}

fn ready_pods(count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| pod(&format!("media-node-{i}"), true))
        .collect()
}

fn claims(count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| claim(&format!("media-data-{i}"), false))
        .collect()
}

/// The Kubernetes node of node pod i (`host-media-node-<i>`, see `pod`),
/// in zone `zone-<i % 5>`.
fn kubernetes_nodes(count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": format!("host-media-node-{i}"),
                             "labels": {"topology.kubernetes.io/zone": format!("zone-{}", i % 5)}}
            })
        })
        .collect()
}

/// Node endpoints that refuse connections at once: no node answers.
fn silent_nodes(count: usize) -> Endpoints {
    (0..count).fold(Endpoints::default(), |e, i| {
        e.with_override(format!("media-node-{i}"), "http://127.0.0.1:1")
    })
}

/// Empty storage nodes, in-process, that answer the operator.
async fn answering_nodes(
    count: usize,
) -> (Endpoints, Vec<support::RunningNode>, Vec<tempfile::TempDir>) {
    let (mut endpoints, mut nodes, mut dirs) = (Endpoints::default(), Vec::new(), Vec::new());
    for i in 0..count {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("media-node-{i}");
        let node = support::start_node(&name, dir.path(), &BTreeSet::new()).await;
        endpoints = endpoints.with_override(name, node.url.clone());
        nodes.push(node);
        dirs.push(dir);
    }
    (endpoints, nodes, dirs)
}

/// A previous status: the fresh assignment of `nodes` nodes, all ready
/// and answering.
async fn settled_status(shards: u16, nodes: usize) -> Value {
    let (endpoints, _nodes, _dirs) = answering_nodes(nodes).await;
    let (seen, _) = reconcile(
        cluster(shards, nodes as u16, None),
        ready_pods(nodes),
        claims(nodes),
        endpoints,
    )
    .await;
    status_written(&seen).unwrap()
}

/// The same, but `node` unavailable since `seconds` ago.
async fn settled_status_but_lost(shards: u16, nodes: usize, node: &str, seconds: i64) -> Value {
    let mut status = settled_status(shards, nodes).await;
    let since =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(seconds);
    status["unavailableNodes"] = json!([{"name": node, "since": since.to_string()}]);
    status
}

/// One reconcile against a fake API listing `pods` and `claims`; returns
/// the requests in order and the context (for its fleet state).
async fn reconcile(
    cluster: StorageCluster,
    pods: Vec<Value>,
    claims: Vec<Value>,
    endpoints: Endpoints,
) -> (Vec<Seen>, Arc<Context>) {
    reconcile_on(api_with_tokens(), cluster, pods, claims, endpoints).await
}

/// A fake API holding the cluster's token Secrets.
fn api_with_tokens() -> MockApi {
    let mut api = MockApi::default();
    api.objects.extend(support::token_secrets());
    api
}

/// A fake API holding the cluster's token Secrets and Secret `name` of
/// `type_` with `data` (each value base64-encoded as the API serves it),
/// labelled as the operator labels what it makes.
fn api_with_secret(name: &str, type_: Option<&str>, data: &[(&str, &str)]) -> MockApi {
    use base64::Engine as _;
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(key, value)| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(value);
            (key.to_string(), Value::String(encoded))
        })
        .collect();
    let mut secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "storage", "labels": support::operator_labels("media")},
        "data": data,
    });
    if let Some(type_) = type_ {
        secret["type"] = json!(type_);
    }
    let mut api = api_with_tokens();
    api.objects.insert(format!("{NS}/secrets/{name}"), secret);
    api
}

/// The same on `api`, which holds no token Secrets unless given them.
async fn reconcile_on(
    api: MockApi,
    cluster: StorageCluster,
    pods: Vec<Value>,
    claims: Vec<Value>,
    endpoints: Endpoints,
) -> (Vec<Seen>, Arc<Context>) {
    reconcile_by(None, api, cluster, pods, claims, endpoints).await
}

/// One reconcile by the same operator process as `before` (its fleet
/// state, repairs and last view carried over), against a fresh fake API.
async fn reconcile_after(
    before: Arc<Context>,
    cluster: StorageCluster,
    pods: Vec<Value>,
    claims: Vec<Value>,
    endpoints: Endpoints,
) -> (Vec<Seen>, Arc<Context>) {
    reconcile_by(
        Some(before),
        api_with_tokens(),
        cluster,
        pods,
        claims,
        endpoints,
    )
    .await
}

/// One reconcile on `api` by a new operator process, or by `before`'s.
async fn reconcile_by(
    before: Option<Arc<Context>>,
    api: MockApi,
    cluster: StorageCluster,
    pods: Vec<Value>,
    claims: Vec<Value>,
    endpoints: Endpoints,
) -> (Vec<Seen>, Arc<Context>) {
    let (result, seen, ctx) = try_reconcile_by(before, api, cluster, pods, claims, endpoints).await;
    result.unwrap();
    (seen, ctx)
}

/// The same, with the reconcile's result, which may be an error.
async fn try_reconcile_by(
    before: Option<Arc<Context>>,
    api: MockApi,
    cluster: StorageCluster,
    pods: Vec<Value>,
    claims: Vec<Value>,
    endpoints: Endpoints,
) -> (
    Result<kube::runtime::controller::Action, redstuff::operator::controller::ReconcileError>,
    Vec<Seen>,
    Arc<Context>,
) {
    let (client, recorded) = serve_cluster(api, &cluster, pods, claims);
    // The fake kubelet of the CA rotation tests writes Secrets at once.
    let mut ctx = Context::new(client, "redstuff:test")
        .with_endpoints(endpoints)
        .with_ca_min_phase(Duration::ZERO);
    if let Some(before) = before {
        ctx.fleets = Arc::try_unwrap(before)
            .ok()
            .expect("nothing else holds the context")
            .fleets;
    }
    let ctx = Arc::new(ctx);
    let result = reconcile_cluster(Arc::new(cluster), ctx.clone()).await;
    (result, recorded.take(), ctx)
}

/// Serves `api` holding `cluster`, its `pods` and `claims`, no Blobs and
/// ten Kubernetes nodes.
fn serve_cluster(
    mut api: MockApi,
    cluster: &StorageCluster,
    pods: Vec<Value>,
    claims: Vec<Value>,
) -> (kube::Client, support::Recorded) {
    api.objects
        .insert(CLUSTER.into(), serde_json::to_value(cluster).unwrap());
    api.lists.insert(format!("{NS}/pods"), pods);
    api.lists
        .insert(format!("{NS}/persistentvolumeclaims"), claims);
    api.lists.insert(format!("{GROUP}/blobs"), vec![]);
    api.lists
        .insert("/api/v1/nodes".into(), kubernetes_nodes(10));
    api.serve()
}

/// "METHOD /path" of every request but reads.
fn writes(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.method != "GET")
        .map(Seen::line)
        .collect()
}

fn events(seen: &[Seen]) -> Vec<(String, String)> {
    seen.iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/events"))
        .map(|s| {
            (
                s.body["type"].as_str().unwrap_or_default().to_string(),
                s.body["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The last status written, as the API server stores it (nulls remove).
fn status_written(seen: &[Seen]) -> Option<Value> {
    seen.iter()
        .rev()
        .find(|s| s.path == format!("{CLUSTER}/status"))
        .map(|s| {
            let mut status = json!({});
            support::merge_patch(&mut status, &s.body["status"]);
            status
        })
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

/// Asserts the Degraded condition's reason, and that its message says
/// `says`.
fn assert_degraded(status: &Value, reason: &str, says: &str) {
    let degraded = condition(status, "Degraded");
    assert_eq!(degraded["reason"], reason, "{status:#}");
    let message = degraded["message"].as_str().unwrap();
    assert!(message.contains(says), "{status:#}");
}

#[tokio::test]
async fn a_new_cluster_creates_its_objects_with_server_side_apply_and_writes_its_status() {
    let (seen, _) = reconcile_on(
        MockApi::default(),
        cluster(7, 3, None),
        vec![],
        vec![],
        silent_nodes(3),
    )
    .await;
    let mut expected = vec![
        format!("GET {NS}/pods"),
        format!("GET {NS}/persistentvolumeclaims"),
        // Every name the cluster takes is looked at once before anything
        // is applied under it.
        format!("GET {NS}/services/media-nodes"),
        format!("GET {NS}/configmaps/media-shards"),
        format!("GET {NS}/secrets/media-node-token"),
        format!("GET {NS}/secrets/media-gateway-token"),
        "GET /apis/networking.k8s.io/v1/namespaces/storage/networkpolicies/media-nodes".to_string(),
        "GET /apis/apps/v1/namespaces/storage/deployments/media-gateway".to_string(),
        format!("GET {NS}/services/media-gateway"),
        "GET /apis/policy/v1/namespaces/storage/poddisruptionbudgets/media-nodes".to_string(),
        "GET /apis/policy/v1/namespaces/storage/poddisruptionbudgets/media-gateway".to_string(),
    ];
    expected.extend((0..3).map(|i| format!("GET {NS}/persistentvolumeclaims/media-data-{i}")));
    expected.extend((0..3).map(|i| format!("GET {NS}/pods/media-node-{i}")));
    expected.extend([
        format!("GET {NS}/secrets/media-node-token"),
        format!("GET {NS}/secrets/media-gateway-token"),
        format!("PATCH {NS}/services/media-nodes"),
        format!("PATCH {NS}/configmaps/media-shards"),
        format!("PATCH {NS}/secrets/media-node-token"),
        format!("PATCH {NS}/secrets/media-gateway-token"),
        "PATCH /apis/networking.k8s.io/v1/namespaces/storage/networkpolicies/media-nodes"
            .to_string(),
    ]);
    expected.extend((0..3).map(|i| format!("PATCH {NS}/persistentvolumeclaims/media-data-{i}")));
    expected.extend((0..3).map(|i| format!("PATCH {NS}/pods/media-node-{i}")));
    expected.extend([
        "PATCH /apis/apps/v1/namespaces/storage/deployments/media-gateway".to_string(),
        format!("PATCH {NS}/services/media-gateway"),
        "PATCH /apis/policy/v1/namespaces/storage/poddisruptionbudgets/media-nodes".to_string(),
        "PATCH /apis/policy/v1/namespaces/storage/poddisruptionbudgets/media-gateway".to_string(),
        format!("GET {GROUP}/blobs"),
        // Its pods available?
        "GET /apis/apps/v1/namespaces/storage/deployments/media-gateway".to_string(),
        format!("PATCH {CLUSTER}/status"),
    ]);
    assert_eq!(lines(&seen), expected);
    for list in &seen[..2] {
        assert!(
            list.query.contains("app.kubernetes.io%2Fname%3Dredstuff")
                && list.query.contains("app.kubernetes.io%2Finstance%3Dmedia"),
            "{}",
            list.query
        );
    }
    for apply in seen
        .iter()
        .filter(|s| s.method == "PATCH" && !s.path.ends_with("/status"))
    {
        assert!(
            apply.query.contains("fieldManager=redstuff-operator"),
            "{}",
            apply.query
        );
        assert!(apply.query.contains("force=true"), "{}", apply.query);
        assert_eq!(apply.content_type, "application/apply-patch+yaml");
        // Claims outlive the cluster unless it says otherwise
        // (storage.whenDeleted); everything else goes with it.
        if apply.path.contains("/persistentvolumeclaims/") {
            assert!(apply.body["metadata"]["ownerReferences"].is_null());
            continue;
        }
        let owner = &apply.body["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].as_str()),
            (Some("StorageCluster"), Some("7c1f"))
        );
    }
    let token_applies: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.method == "PATCH" && s.path.contains("/secrets/media-"))
        .collect();
    assert_eq!(token_applies.len(), 2);
    for secret in &token_applies {
        use base64::Engine as _;
        let token = secret.body["data"]["token"].as_str().unwrap();
        let token = base64::engine::general_purpose::STANDARD
            .decode(token)
            .unwrap();
        assert_eq!(token.len(), 64, "a fresh random token in {}", secret.path);
        assert!(secret.body.get("stringData").is_none());
    }
    assert_ne!(
        token_applies[0].body["data"], token_applies[1].body["data"],
        "two credentials"
    );
    let status = status_written(&seen).unwrap();
    assert_eq!(status["phase"], "Pending");
    assert_eq!(status["faultTolerance"], 2);
    assert_eq!(status["shardAssignment"].as_array().unwrap().len(), 7);
    assert_eq!(status["unavailableNodes"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn the_status_says_how_many_hosts_and_zones_can_be_lost_from_the_nodes_labels() {
    // 10 shards on 10 pods, one per host, hosts in 5 zones: 2 shards a zone.
    let (seen, _) = reconcile(
        cluster(10, 10, None),
        ready_pods(10),
        claims(10),
        silent_nodes(10),
    )
    .await;
    assert!(
        lines(&seen).contains(&"GET /api/v1/nodes".to_string()),
        "the Kubernetes nodes are read"
    );
    let status = status_written(&seen).unwrap();
    assert_eq!(status["faultTolerance"], 3);
    assert_eq!(status["toleratedHostLosses"], 3);
    assert_eq!(status["toleratedDomainLosses"], 1);
    assert_eq!(status["tolerates"], "3 shards, 3 hosts, 1 zone");

    // Pods not scheduled yet: no nodes to read, each pod its own domain.
    let unscheduled: Vec<Value> = ready_pods(10)
        .into_iter()
        .map(|mut p| {
            p["spec"].as_object_mut().unwrap().remove("nodeName");
            p
        })
        .collect();
    let (seen, _) = reconcile(
        cluster(10, 10, None),
        unscheduled,
        claims(10),
        silent_nodes(10),
    )
    .await;
    assert!(!lines(&seen).contains(&"GET /api/v1/nodes".to_string()));
    assert_eq!(
        status_written(&seen).unwrap()["tolerates"],
        "3 shards, 3 hosts, 3 zones"
    );
}

#[tokio::test]
async fn a_deleted_node_pod_is_created_again_with_an_event_and_the_cluster_reports_degraded() {
    let previous = settled_status(7, 3).await;
    assert_eq!(previous["phase"], "Ready");
    let (seen, _) = reconcile(
        cluster(7, 3, Some(previous)),
        ready_pods(2),
        claims(3),
        silent_nodes(3),
    )
    .await;
    assert!(lines(&seen).contains(&format!("PATCH {NS}/pods/media-node-2")));
    assert!(events(&seen).contains(&("Normal".into(), "NodePodReplaced".into())));
    assert!(events(&seen).contains(&("Warning".into(), "ClusterDegraded".into())));
    let status = status_written(&seen).unwrap();
    assert_eq!(status["phase"], "Degraded");
    assert_eq!(status["readyNodes"], 2);
    assert_eq!(status["unavailableNodes"][0]["name"], "media-node-2");
    // The two pods Kubernetes calls ready do not answer (silent endpoints).
    assert_eq!(
        status["notAnsweringNodes"],
        json!(["media-node-0", "media-node-1"])
    );
    // With node-2 gone and the other two silent, no shard serves: more
    // than f are down, and the silence is said too.
    assert_degraded(&status, "TooManyShardsDown", "their API does not answer");
    assert_eq!(
        condition(&status, "Ready")["reason"],
        "TooManyShardsDown",
        "{status:#}"
    );
    // Within the grace period the shards stay where they are.
    assert_eq!(
        status["shardAssignment"],
        settled_status(7, 3).await["shardAssignment"]
    );
}

#[tokio::test]
async fn a_node_pod_that_cannot_be_scheduled_says_why_in_the_status() {
    let previous = settled_status(7, 3).await;
    let mut pods = ready_pods(3);
    pods[1] = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "media-node-1", "namespace": "storage"},
        "spec": {"containers": []},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient memory."}]}
    });
    let (seen, _) = reconcile(
        cluster(7, 3, Some(previous)),
        pods,
        claims(3),
        silent_nodes(3),
    )
    .await;
    let status = status_written(&seen).unwrap();
    let why = "Unschedulable: 0/3 nodes are available: 3 Insufficient memory.";
    assert_eq!(status["unavailableNodes"][0]["name"], "media-node-1");
    assert_eq!(status["unavailableNodes"][0]["reason"], why);
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .ends_with(&format!("; media-node-1: {why}")),
        "{ready}"
    );
}

#[tokio::test]
async fn a_changed_image_replaces_node_pods_one_at_a_time_and_never_patches_them() {
    let previous = settled_status(7, 3).await;
    let mut changed = cluster(7, 3, Some(previous));
    changed.spec.image = Some("redstuff:new".into());
    // A new operator process (a new leader, an upgraded operator) first
    // looks at the fleet: before, it knows of no repair or blob at risk.
    let (seen, ctx) = reconcile(changed.clone(), ready_pods(3), claims(3), silent_nodes(3)).await;
    assert!(!lines(&seen).iter().any(|r| r.starts_with("DELETE")));
    let status = status_written(&seen).unwrap();
    assert!(
        condition(&status, "Progressing")["message"]
            .as_str()
            .unwrap()
            .ends_with("; waiting for the operator's first look at the fleet's blobs"),
        "{status:#}"
    );
    let (seen, ctx) = reconcile_after(
        ctx,
        changed.clone(),
        ready_pods(3),
        claims(3),
        silent_nodes(3),
    )
    .await;
    let requests = lines(&seen);
    let node_pod_requests: Vec<&String> = requests
        .iter()
        .filter(|r| r.contains("/pods/media-node-"))
        .collect();
    assert_eq!(
        node_pod_requests,
        [&format!("DELETE {NS}/pods/media-node-0")],
        "only the first pod goes, and none is patched"
    );
    assert!(events(&seen).contains(&("Normal".into(), "NodePodUpdated".into())));
    let status = status_written(&seen).unwrap();
    let progressing = condition(&status, "Progressing");
    assert_eq!(progressing["reason"], "RollingUpdate");
    assert!(progressing["message"]
        .as_str()
        .unwrap()
        .contains("3 node pods run an older spec"));

    // Node 0 is back on the new spec but not ready yet: the others wait.
    let mut pods = ready_pods(3);
    pods[0] = pod_of(&changed, "media-node-0", false);
    let (seen, ctx) = reconcile_after(ctx, changed.clone(), pods, claims(3), silent_nodes(3)).await;
    assert!(
        !lines(&seen).iter().any(|r| r.starts_with("DELETE")),
        "nothing more goes while a node pod is down"
    );
    let status = status_written(&seen).unwrap();
    assert!(
        condition(&status, "Progressing")["message"]
            .as_str()
            .unwrap()
            .ends_with("; waiting for node pods to be ready: media-node-0"),
        "{status:#}"
    );

    // Node 0 ready on the new spec: the next one goes.
    let mut pods = ready_pods(3);
    pods[0] = pod_of(&changed, "media-node-0", true);
    let (seen, _) = reconcile_after(ctx, changed, pods, claims(3), silent_nodes(3)).await;
    let requests = lines(&seen);
    assert!(requests.contains(&format!("DELETE {NS}/pods/media-node-1")));
    assert!(!requests.contains(&format!("DELETE {NS}/pods/media-node-2")));
}

/// The image of the gateway Deployment the reconcile applied.
fn gateway_image_applied(seen: &[Seen]) -> String {
    let path = "/apis/apps/v1/namespaces/storage/deployments/media-gateway";
    let applied = seen
        .iter()
        .find(|s| s.method == "PATCH" && s.path == path)
        .expect("the gateway Deployment is applied");
    applied.body["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn the_gateway_keeps_its_image_until_every_node_pod_runs_the_new_spec() {
    let previous = settled_status(7, 3).await;
    let mut changed = cluster(7, 3, Some(previous));
    changed.spec.image = Some("redstuff:new".into());
    let api = || {
        let mut api = api_with_tokens();
        api.objects.insert(
            "/apis/apps/v1/namespaces/storage/deployments/media-gateway".into(),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "media-gateway", "namespace": "storage",
                             "labels": support::operator_labels("media")},
                "spec": {"selector": {}, "template": {"spec": {"containers": [
                    {"name": "gateway", "image": "redstuff:test"}]}}}
            }),
        );
        api
    };
    // Every node pod on the old spec, then all but one on the new.
    let mut pods = ready_pods(3);
    for stage in 0..3 {
        let (seen, _) = reconcile_on(
            api(),
            changed.clone(),
            pods.clone(),
            claims(3),
            silent_nodes(3),
        )
        .await;
        assert_eq!(
            gateway_image_applied(&seen),
            "redstuff:test",
            "{stage} of 3 node pods renewed: the gateway keeps its image"
        );
        pods[stage] = pod_of(&changed, &format!("media-node-{stage}"), true);
    }
    let (seen, _) = reconcile_on(api(), changed, pods, claims(3), silent_nodes(3)).await;
    assert_eq!(gateway_image_applied(&seen), "redstuff:new");
}

#[tokio::test]
async fn a_claim_being_deleted_gets_its_pod_deleted_so_it_comes_back_empty() {
    let previous = settled_status(7, 3).await;
    let mut volumes = claims(3);
    volumes[2] = claim("media-data-2", true);
    let (seen, _) = reconcile(
        cluster(7, 3, Some(previous)),
        ready_pods(3),
        volumes,
        silent_nodes(3),
    )
    .await;
    let requests = lines(&seen);
    assert!(requests.contains(&format!("DELETE {NS}/pods/media-node-2")));
    assert!(
        !requests.contains(&format!("PATCH {NS}/persistentvolumeclaims/media-data-2")),
        "a terminating claim is not applied"
    );
    assert!(
        !requests.contains(&format!("PATCH {NS}/pods/media-node-2")),
        "the pod is not applied while it must go"
    );
    assert!(events(&seen).contains(&("Warning".into(), "VolumeLost".into())));
    let status = status_written(&seen).unwrap();
    assert_eq!(status["unavailableNodes"][0]["name"], "media-node-2");
    assert!(status["unavailableNodes"][0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("VolumeLost: claim media-data-2 is gone"));
}

#[tokio::test]
async fn no_node_pod_is_created_while_its_claim_is_still_being_deleted() {
    let previous = settled_status(7, 3).await;
    let mut volumes = claims(3);
    volumes[2] = claim("media-data-2", true);
    // The pod went already; the claim has not finished going.
    let (seen, _) = reconcile(
        cluster(7, 3, Some(previous)),
        ready_pods(2),
        volumes,
        silent_nodes(3),
    )
    .await;
    let requests = lines(&seen);
    assert!(
        !requests.contains(&format!("PATCH {NS}/pods/media-node-2")),
        "a pod on a terminating claim would hold it: {requests:#?}"
    );
    assert!(!requests.contains(&format!("PATCH {NS}/persistentvolumeclaims/media-data-2")));
}

#[tokio::test]
async fn a_claim_that_is_gone_is_created_again_with_its_pod() {
    let previous = settled_status(7, 3).await;
    let (seen, _) = reconcile(
        cluster(7, 3, Some(previous)),
        ready_pods(2),
        claims(2),
        silent_nodes(3),
    )
    .await;
    let requests = lines(&seen);
    let claim_at = requests
        .iter()
        .position(|r| r == &format!("PATCH {NS}/persistentvolumeclaims/media-data-2"))
        .expect("claim applied");
    let pod_at = requests
        .iter()
        .position(|r| r == &format!("PATCH {NS}/pods/media-node-2"))
        .expect("pod applied");
    assert!(claim_at < pod_at, "the claim exists before its pod");
}

#[tokio::test]
async fn shards_of_nodes_gone_past_the_grace_period_stay_and_say_so_while_too_few_are_left_to_rebuild(
) {
    // n = 10 (p = 4) on 5 node pods, 2 shards each: only node 0 is there,
    // nodes 3 and 4 are gone past the grace period.
    let mut previous = settled_status(10, 5).await;
    let since =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(301);
    previous["unavailableNodes"] = json!([
        {"name": "media-node-3", "since": since.to_string()},
        {"name": "media-node-4", "since": since.to_string()},
    ]);
    let (seen, _) = reconcile(
        cluster(10, 5, Some(previous.clone())),
        ready_pods(1),
        claims(5),
        silent_nodes(5),
    )
    .await;
    let status = status_written(&seen).unwrap();
    assert_eq!(
        status["shardAssignment"], previous["shardAssignment"],
        "no shard moves onto the one node left"
    );
    assert!(!events(&seen).contains(&("Warning".into(), "ShardsMoved".into())));
    assert!(events(&seen).contains(&("Warning".into(), "EvictionsHeld".into())));
}

#[tokio::test]
async fn a_node_gone_past_the_grace_period_hands_its_shards_to_the_others() {
    let previous = settled_status_but_lost(7, 3, "media-node-2", 301).await;
    let (seen, _) = reconcile(
        cluster(7, 3, Some(previous.clone())),
        ready_pods(2),
        claims(3),
        silent_nodes(3),
    )
    .await;
    let status = status_written(&seen).unwrap();
    let owners: BTreeSet<&str> = status["shardAssignment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["node"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["media-node-0", "media-node-1"].into());
    assert!(
        owned_in(&previous, "media-node-0").is_subset(&owned_in(&status, "media-node-0")),
        "shards of nodes that stayed do not move"
    );
    assert!(events(&seen).contains(&("Warning".into(), "ShardsMoved".into())));
    // The fake nodes do not answer, so every shard is down; the move is
    // said as well.
    assert_degraded(
        &status,
        "TooManyShardsDown",
        "gone longer than the grace period",
    );
    let config = seen
        .iter()
        .find(|s| s.method == "PATCH" && s.path.ends_with("/configmaps/media-shards"))
        .unwrap();
    assert_eq!(
        config.body["data"]["media-node-2.json"]
            .as_str()
            .map(|t| serde_json::from_str::<Value>(t).unwrap()["shards"].clone()),
        Some(json!([])),
        "the node's ownership file is emptied"
    );
}

#[tokio::test]
async fn an_unchanged_cluster_is_not_rewritten() {
    let (endpoints, _nodes, _dirs) = answering_nodes(3).await;
    let (seen, _) = reconcile(
        cluster(7, 3, None),
        ready_pods(3),
        claims(3),
        endpoints.clone(),
    )
    .await;
    let status = status_written(&seen).unwrap();
    let (seen, _) = reconcile(
        cluster(7, 3, Some(status)),
        ready_pods(3),
        claims(3),
        endpoints,
    )
    .await;
    assert!(status_written(&seen).is_none(), "{:#?}", lines(&seen));
    assert!(events(&seen).is_empty());
}

#[tokio::test]
async fn an_invalid_spec_becomes_a_condition_and_an_event_and_nothing_else_is_touched() {
    let (seen, _) = reconcile(cluster(7, 9, None), vec![], vec![], silent_nodes(0)).await;
    assert_eq!(
        lines(&seen),
        vec![
            "POST /apis/events.k8s.io/v1/namespaces/storage/events".to_string(),
            format!("PATCH {CLUSTER}/status"),
        ]
    );
    assert_eq!(
        events(&seen),
        vec![("Warning".into(), "InvalidSpec".into())]
    );
    let status = status_written(&seen).unwrap();
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["conditions"][0]["reason"], "InvalidSpec");
}

#[tokio::test]
async fn node_pods_beyond_spec_that_own_no_shard_are_deleted_with_an_event() {
    let (seen, _) = reconcile(
        cluster(7, 3, None),
        ready_pods(4),
        claims(4),
        silent_nodes(4),
    )
    .await;
    assert!(lines(&seen).contains(&format!("DELETE {NS}/pods/media-node-3")));
    assert!(events(&seen).contains(&("Normal".into(), "NodeRetired".into())));
    assert!(
        !lines(&seen)
            .iter()
            .any(|l| l.starts_with("DELETE") && l.contains("claims")),
        "its claim stays"
    );
}

/// The shards each node pod owns in `status`.
fn owned_in(status: &Value, node: &str) -> BTreeSet<u64> {
    status["shardAssignment"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["node"] == node)
        .map(|a| a["shard"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_lowered_spec_keeps_the_node_pods_beyond_it_and_their_shards_until_the_fleet_is_known_healthy(
) {
    // Four node pods hold seven shards; spec.nodes drops to 2 (f = 2: the
    // two pods beyond own more than f shards). The operator has not seen
    // the fleet healthy (its nodes do not answer): nothing moves, nothing
    // is deleted, and the status says which pods retire.
    let previous = settled_status(7, 4).await;
    let (seen, _) = reconcile(
        cluster(7, 2, Some(previous.clone())),
        ready_pods(4),
        claims(4),
        silent_nodes(4),
    )
    .await;
    assert!(
        !lines(&seen).iter().any(|l| l.starts_with("DELETE")),
        "{:#?}",
        lines(&seen)
    );
    let status = status_written(&seen).unwrap();
    assert_eq!(
        status["shardAssignment"], previous["shardAssignment"],
        "no shard moved"
    );
    for node in ["media-node-2", "media-node-3"] {
        assert!(
            !owned_in(&status, node).is_empty(),
            "{node} keeps its shards"
        );
    }
    assert_eq!(
        status["retiringNodes"],
        json!(["media-node-2", "media-node-3"])
    );
    let owners = owners_applied(&seen, 4).expect("the ownership files are applied");
    assert!(
        !owners[3].is_empty(),
        "node 3's ownership file keeps its shards"
    );
    assert!(events(&seen).contains(&("Normal".into(), "NodesRetiring".into())));

    // A second reconcile tells no second Event.
    let (seen, _) = reconcile(
        cluster(7, 2, Some(status)),
        ready_pods(4),
        claims(4),
        silent_nodes(4),
    )
    .await;
    assert!(!events(&seen).contains(&("Normal".into(), "NodesRetiring".into())));
    assert!(!lines(&seen).iter().any(|l| l.starts_with("DELETE")));
}

/// Four real nodes, one shard each, and a blob written while node 2 was
/// gone; node 2 then back empty, as on a new volume. The nodes find their
/// peers in a fleet map file, node 2 at its new address. The running
/// nodes and their directories go when their fields are dropped: bind
/// them for the test's length.
struct NodeBackEmpty {
    endpoints: Endpoints,
    node2: support::RunningNode,
    written: redstuff::client::WriteOutcome,
    data: Vec<u8>,
    _nodes: Vec<support::RunningNode>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn node_2_back_empty() -> NodeBackEmpty {
    let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let map_path = dirs[4].path().join("fleet.json");
    let shard = |i: u16| BTreeSet::from([i]);
    let mut nodes = Vec::new();
    let mut map_nodes: Vec<(String, String, BTreeSet<u16>)> = Vec::new();
    for i in [0u16, 1, 3] {
        let name = format!("media-node-{i}");
        let node =
            start_node_with_fleet(&name, dirs[i as usize].path(), &shard(i), Some(&map_path)).await;
        map_nodes.push((name, node.url.clone(), shard(i)));
        nodes.push(node);
    }
    map_nodes.push(("media-node-2".into(), "http://127.0.0.1:1".into(), shard(2)));
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &data).unwrap();
    let written = BlobClient::new(node_calls(), fleet_map(4, &map_nodes), None)
        .write_file(file.path())
        .await
        .unwrap();
    let node2 =
        start_node_with_fleet("media-node-2", dirs[2].path(), &shard(2), Some(&map_path)).await;
    map_nodes.pop();
    map_nodes.push(("media-node-2".into(), node2.url.clone(), shard(2)));
    fleet_map(4, &map_nodes).write(&map_path).unwrap();
    let endpoints = map_nodes
        .iter()
        .fold(Endpoints::default(), |e, (name, url, _)| {
            e.with_override(name.clone(), url.clone())
        });
    NodeBackEmpty {
        endpoints,
        node2,
        written,
        data,
        _nodes: nodes,
        _dirs: dirs,
    }
}

/// Asserts that `node` holds shard 2 of the blob `written` whole.
async fn assert_holds_shard_2(
    node: &support::RunningNode,
    written: &redstuff::client::WriteOutcome,
) {
    let inventory = node_calls().node(&node.url).full_inventory().await.unwrap();
    let blob = inventory
        .blobs
        .iter()
        .find(|b| b.id == written.metadata.blob_id().to_string())
        .expect("node 2 holds the blob again");
    assert_eq!(blob.shards.get(&2), Some(&blob.segments));
}

#[tokio::test]
async fn a_node_pod_back_on_an_empty_volume_has_its_pairs_rebuilt_and_the_wait_is_measured() {
    // Node 2 comes back empty, as on a new volume.
    let NodeBackEmpty {
        endpoints,
        node2,
        written,
        data,
        _nodes,
        _dirs,
    } = node_2_back_empty().await;
    // The last status saw node 2 go 7 seconds ago; now all pods are ready.
    let previous = settled_status_but_lost(4, 4, "media-node-2", 7).await;
    let (seen, ctx) = reconcile(
        cluster(4, 4, Some(previous)),
        ready_pods(4),
        claims(4),
        endpoints.clone(),
    )
    .await;
    let upload = seen
        .iter()
        .find(|s| s.path.starts_with(&format!("{GROUP}/blobs/media-upload-")))
        .expect("the upload is recorded as a Blob");
    assert_eq!(
        upload.body["spec"]["source"]["upload"]["blobId"],
        written.metadata.blob_id().to_string()
    );
    assert_eq!(upload.body["spec"]["cluster"], "media");
    let status = status_written(&seen).expect("the status changes: the blob is Degraded");
    assert_eq!(status["blobs"]["degraded"], 1, "{status:#}");
    assert_eq!(status["repairsInFlight"], 1);
    assert_eq!(condition(&status, "Progressing")["reason"], "Repairing");

    let fleet = ctx
        .fleets
        .find(&("storage".into(), "media".into()))
        .unwrap();
    let delay = &fleet.metrics.repair_start_delay;
    assert_eq!(delay.get_sample_count(), 1);
    assert!(delay.get_sample_sum() >= 7.0, "{}", delay.get_sample_sum());
    assert!(fleet.repairer.wait_idle(Duration::from_secs(30)).await);
    assert_eq!(fleet.metrics.repairs_completed.get(), 1);
    assert_eq!(fleet.metrics.repairs_in_flight.get(), 0);
    assert_eq!(
        fleet.metrics.repair_whole_segment_bytes.get(),
        data.len() as u64,
        "one pair of a one-segment blob: a naive repair fetches the whole blob"
    );
    assert!(fleet.metrics.repair_bytes.get() > 0);

    assert_holds_shard_2(&node2, &written).await;

    // The next reconcile sees every blob healthy and the cluster Ready.
    let (seen, _) = reconcile(
        cluster(4, 4, Some(status)),
        ready_pods(4),
        claims(4),
        endpoints,
    )
    .await;
    let status = status_written(&seen).unwrap();
    assert_eq!(status["blobs"]["healthy"], 1, "{status:#}");
    assert_eq!(status["phase"], "Ready");
    assert_eq!(delay.get_sample_count(), 1, "measured once per loss");
}

#[tokio::test]
async fn a_blob_an_ingest_stores_is_not_recorded_as_an_upload_while_the_ingest_is_in_flight() {
    let NodeBackEmpty {
        endpoints,
        written,
        _nodes,
        _dirs,
        ..
    } = node_2_back_empty().await;
    let cluster = cluster(4, 4, Some(settled_status(4, 4).await));
    let (client, recorded) = serve_cluster(api_with_tokens(), &cluster, ready_pods(4), claims(4));
    let ctx = Arc::new(Context::new(client, "redstuff:test").with_endpoints(endpoints));
    let record_made = |seen: &[Seen]| {
        seen.iter()
            .find(|s| s.path.starts_with(&format!("{GROUP}/blobs/media-upload-")))
            .map(|s| s.body["spec"]["source"]["upload"]["blobId"].clone())
    };
    // An ingest of a Blob uploads to the cluster: the fleet holds its
    // blob, which its Blob names only once its status is written.
    let uploading = ctx
        .uploads_in_flight
        .begin(&("storage".to_string(), "media".to_string()))
        .await;
    reconcile_cluster(Arc::new(cluster.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(record_made(&recorded.take()), None, "not an upload's");
    // Ended without naming it (its status write failed, say): an upload
    // it is, as far as any Blob says.
    drop(uploading);
    reconcile_cluster(Arc::new(cluster), ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        record_made(&recorded.take()),
        Some(json!(written.metadata.blob_id().to_string()))
    );
}

/// A fleet of four real nodes that own what files say, as node pods own
/// what their projected ConfigMap says; the test plays the kubelet.
struct MovingFleet {
    files: tempfile::TempDir,
    map: std::path::PathBuf,
    nodes: Vec<Option<(support::RunningNode, tempfile::TempDir)>>,
}

impl MovingFleet {
    fn name(i: usize) -> String {
        format!("media-node-{i}")
    }

    fn shards_file(&self, i: usize) -> std::path::PathBuf {
        self.files.path().join(format!("{}.json", Self::name(i)))
    }

    /// Four nodes, one shard each, and a blob written to all four: the
    /// fleet, who owns what, the blob's id and its bytes.
    async fn one_shard_each_with_a_blob() -> (Self, Vec<BTreeSet<u16>>, String, Vec<u8>) {
        let files = tempfile::tempdir().unwrap();
        let map = files.path().join("fleet.json");
        let mut fleet = MovingFleet {
            files,
            map,
            nodes: (0..4).map(|_| None).collect(),
        };
        let one_each: Vec<BTreeSet<u16>> = (0..4).map(|i| BTreeSet::from([i])).collect();
        fleet.own(&one_each).await;
        for i in 0..4 {
            fleet.start(i).await;
        }
        fleet.own(&one_each).await;
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &data).unwrap();
        let written = BlobClient::new(
            node_calls(),
            fleet_map(4, &fleet.map_nodes(&one_each)),
            None,
        )
        .write_file(file.path())
        .await
        .unwrap();
        let id = written.metadata.blob_id().to_string();
        (fleet, one_each, id, data)
    }

    /// The fleet map's entries of the running nodes among `owners`.
    fn map_nodes(&self, owners: &[BTreeSet<u16>]) -> Vec<(String, String, BTreeSet<u16>)> {
        owners
            .iter()
            .enumerate()
            .filter_map(|(i, shards)| Some((Self::name(i), self.url(i)?, shards.clone())))
            .collect()
    }

    /// Starts node `i` on an empty volume.
    async fn start(&mut self, i: usize) {
        let dir = tempfile::tempdir().unwrap();
        let node = support::start_node_on(
            &Self::name(i),
            dir.path(),
            redstuff::node::ShardSource::File(self.shards_file(i)),
            Some(&self.map),
        )
        .await;
        self.nodes[i] = Some((node, dir));
    }

    /// Stops node `i`, waiting until it no longer answers; its volume goes.
    async fn stop(&mut self, i: usize) {
        if let Some((node, _volume)) = self.nodes[i].take() {
            node.stop().await;
        }
    }

    fn url(&self, i: usize) -> Option<String> {
        self.nodes[i].as_ref().map(|(n, _)| n.url.clone())
    }

    fn endpoints(&self) -> Endpoints {
        (0..self.nodes.len()).fold(Endpoints::default(), |e, i| {
            e.with_override(
                Self::name(i),
                self.url(i).unwrap_or("http://127.0.0.1:1".into()),
            )
        })
    }

    /// Writes the ownership files (and the fleet map the nodes find their
    /// peers in) as `owners` says, and waits until every running node
    /// reports what it owns now.
    async fn own(&self, owners: &[BTreeSet<u16>]) {
        let mut map_nodes = Vec::new();
        for (i, shards) in owners.iter().enumerate() {
            redstuff::node::ShardsFile {
                shards: shards.clone(),
            }
            .write(&self.shards_file(i))
            .unwrap();
            let url = self.url(i).unwrap_or("http://127.0.0.1:1".into());
            map_nodes.push((Self::name(i), url, shards.clone()));
        }
        fleet_map(owners.len() as u16, &map_nodes)
            .write(&self.map)
            .unwrap();
        for (i, shards) in owners.iter().enumerate() {
            let Some(url) = self.url(i) else { continue };
            let wanted: Vec<u16> = shards.iter().copied().collect();
            let mut reported = Vec::new();
            for _ in 0..100 {
                reported = node_calls()
                    .node(&url)
                    .full_inventory()
                    .await
                    .unwrap()
                    .shards;
                if reported == wanted {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(reported, wanted, "{} took its file", Self::name(i));
        }
    }

    /// One reconcile of the four-node cluster from `status` by `ctx`'s
    /// operator process, with the first `ready` node pods ready.
    async fn reconcile(
        &self,
        ctx: Arc<Context>,
        status: Option<Value>,
        ready: usize,
    ) -> (Vec<Seen>, Arc<Context>) {
        self.reconcile_spec(ctx, 4, status, ready).await
    }

    /// The same with `spec.nodes` set to `nodes`.
    /// The operator's first reconcile of the four node pods with their
    /// blob, seen Healthy: its context and the status it wrote.
    async fn seen_healthy(&self) -> (Arc<Context>, Value) {
        let settled = settled_status(4, 4).await;
        let (seen, ctx) = reconcile(
            cluster(4, 4, Some(settled.clone())),
            ready_pods(4),
            claims(4),
            self.endpoints(),
        )
        .await;
        let status = status_written(&seen).unwrap_or(settled);
        assert_eq!(status["blobs"]["healthy"], 1, "{status:#}");
        (ctx, status)
    }

    async fn reconcile_spec(
        &self,
        ctx: Arc<Context>,
        nodes: u16,
        status: Option<Value>,
        ready: usize,
    ) -> (Vec<Seen>, Arc<Context>) {
        reconcile_after(
            ctx,
            cluster(4, nodes, status),
            ready_pods(ready),
            claims(4),
            self.endpoints(),
        )
        .await
    }

    /// Shards -> segments held of `id` by node `i`.
    async fn held(&self, i: usize, id: &str) -> std::collections::BTreeMap<u16, u32> {
        let url = self.url(i).unwrap();
        let inventory = node_calls().node(&url).full_inventory().await.unwrap();
        inventory
            .blobs
            .into_iter()
            .find(|b| b.id == id)
            .map(|b| b.shards)
            .unwrap_or_default()
    }
}

/// Each node's shards, as the `media-shards` ConfigMap applied last says
/// (`None`: not applied, unchanged since the operator's last apply).
fn owners_applied(seen: &[Seen], nodes: usize) -> Option<Vec<BTreeSet<u16>>> {
    let config = seen
        .iter()
        .rev()
        .find(|s| s.method == "PATCH" && s.path.ends_with("/configmaps/media-shards"))?;
    let owners = (0..nodes)
        .map(|i| {
            let text = config.body["data"][format!("media-node-{i}.json")]
                .as_str()
                .unwrap();
            serde_json::from_str::<redstuff::node::ShardsFile>(text)
                .unwrap()
                .shards
        })
        .collect();
    Some(owners)
}

fn media_fleet(ctx: &Context) -> Arc<redstuff::operator::context::ClusterFleet> {
    ctx.fleets
        .find(&("storage".into(), "media".into()))
        .unwrap()
}

#[tokio::test]
async fn a_shard_given_back_to_a_node_on_an_empty_volume_moves_once_the_fleet_is_healthy_is_rebuilt_there_and_only_then_released_by_the_other(
) {
    // Four nodes, one shard each; a blob stored on all four.
    let (mut fleet, one_each, id, _) = MovingFleet::one_shard_each_with_a_blob().await;

    // Node 3 is gone past the grace period: its shard moves at once (its
    // owner is gone, nothing to wait for), and is rebuilt on its heir.
    fleet.stop(3).await;
    let status = settled_status_but_lost(4, 4, "media-node-3", 301).await;
    let (seen, ctx) = reconcile(
        cluster(4, 4, Some(status)),
        ready_pods(3),
        claims(4),
        fleet.endpoints(),
    )
    .await;
    let moved = owners_applied(&seen, 4).unwrap();
    let heir = moved.iter().position(|s| s.contains(&3)).unwrap();
    assert_ne!(heir, 3);
    fleet.own(&moved).await;
    let (seen, ctx) = fleet.reconcile(ctx, status_written(&seen), 3).await;
    assert!(
        media_fleet(&ctx)
            .repairer
            .wait_idle(Duration::from_secs(30))
            .await
    );
    assert_eq!(fleet.held(heir, &id).await.get(&3), Some(&1));

    // Node 3 comes back on an empty volume. The operator's last view still
    // saw the blob Degraded (the heir was rebuilding): shard 3 stays with
    // the heir for now, and the status says a rebalance waits.
    fleet.start(3).await;
    let (seen, ctx) = fleet.reconcile(ctx, status_written(&seen), 4).await;
    assert_eq!(owners_applied(&seen, 4), None, "nothing moves yet");
    let status = status_written(&seen).unwrap();
    assert_eq!(
        condition(&status, "Progressing")["reason"],
        "Rebalancing",
        "{status:#}"
    );

    // The fleet is Healthy: shard 3 goes back to node 3.
    let (seen, ctx) = fleet.reconcile(ctx, Some(status), 4).await;
    let back = owners_applied(&seen, 4).unwrap();
    assert_eq!(back, one_each, "shard 3 goes back to node 3");
    fleet.own(&back).await;

    // The heir's copy serves no read once it does not own the shard: the
    // blob is Degraded and repaired on node 3, and the copy stays meanwhile.
    let (seen, ctx) = fleet.reconcile(ctx, status_written(&seen), 4).await;
    let status = status_written(&seen).expect("the status changes: the blob is Degraded");
    assert_eq!(status["blobs"]["degraded"], 1, "{status:#}");
    assert_eq!(
        fleet.held(heir, &id).await.get(&3),
        Some(&1),
        "kept until node 3 holds it"
    );
    assert_eq!(media_fleet(&ctx).metrics.shards_released.get(), 0);
    assert!(
        media_fleet(&ctx)
            .repairer
            .wait_idle(Duration::from_secs(30))
            .await
    );
    assert_eq!(fleet.held(3, &id).await.get(&3), Some(&1));

    // Node 3 holds it whole: the copy left on the heir is released. No
    // node moved or restarted since the last reconcile, so the operator
    // saw the repair through the nodes' journals, not whole inventories.
    let readings = |ctx: &Context, kind: &str| {
        media_fleet(ctx)
            .metrics
            .inventory_reads
            .with_label_values(&[kind])
            .get()
    };
    let (whole, changes) = (readings(&ctx, "whole"), readings(&ctx, "changes"));
    let (seen, ctx) = fleet.reconcile(ctx, Some(status), 4).await;
    assert_eq!(
        (readings(&ctx, "whole"), readings(&ctx, "changes")),
        (whole, changes + 1)
    );
    let status = status_written(&seen).unwrap();
    assert_eq!(status["blobs"]["healthy"], 1, "{status:#}");
    assert_eq!(media_fleet(&ctx).metrics.shards_released.get(), 1);
    let heir_holds = fleet.held(heir, &id).await;
    assert_eq!(heir_holds.get(&3), None, "released");
    assert_eq!(
        heir_holds.get(&(heir as u16)),
        Some(&1),
        "its own shard stays"
    );
}

/// Shards moving and a pod replaced at once add up: with n = 4 (f = 1), a
/// shard moving off node 3 and node 0 down for its new image leave two
/// shards missing. A reconcile that moves shards replaces no pod, and the
/// rollout goes on only once the nodes own what they were given.
#[tokio::test]
async fn a_reconcile_that_moves_shards_takes_no_node_pod_down_for_a_rollout() {
    let (fleet, _, _, _) = MovingFleet::one_shard_each_with_a_blob().await;
    let (ctx, status) = fleet.seen_healthy().await;

    // spec.nodes drops to 3 and the image changes in one edit.
    let mut changed = cluster(4, 3, Some(status));
    changed.spec.image = Some("redstuff:new".into());
    let (seen, ctx) = reconcile_after(
        ctx,
        changed.clone(),
        ready_pods(4),
        claims(4),
        fleet.endpoints(),
    )
    .await;
    let moved = owners_applied(&seen, 4).expect("node 3's shard moves");
    assert!(moved[3].is_empty());
    assert!(
        !lines(&seen)
            .iter()
            .any(|r| r.starts_with("DELETE") && r.contains("/pods/")),
        "no node pod goes while a shard moves: {:#?}",
        lines(&seen)
    );
    let status = status_written(&seen).unwrap();
    assert!(
        condition(&status, "Progressing")["message"]
            .as_str()
            .unwrap()
            .contains("shards moving between nodes"),
        "{status:#}"
    );
    drop(ctx);
}

#[tokio::test]
async fn a_node_pod_beyond_a_lowered_spec_is_deleted_only_once_its_shard_is_rebuilt_elsewhere_and_the_blob_reads_without_it(
) {
    // Four nodes, one shard each; a blob stored on all four.
    let (mut fleet, _, id, data) = MovingFleet::one_shard_each_with_a_blob().await;

    // The operator sees the blob Healthy on four node pods.
    let (ctx, status) = fleet.seen_healthy().await;

    // spec.nodes drops to 3: node 3's shard moves to another node pod,
    // node 3 keeps running.
    let (seen, ctx) = fleet.reconcile_spec(ctx, 3, Some(status), 4).await;
    let moved = owners_applied(&seen, 4).unwrap();
    let heir = moved.iter().position(|s| s.contains(&3)).unwrap();
    assert_ne!(heir, 3);
    assert!(moved[3].is_empty());
    assert!(events(&seen).contains(&("Normal".into(), "NodesRetiring".into())));
    let mut status = status_written(&seen).unwrap();
    assert_eq!(
        status["retiringNodes"],
        json!(["media-node-3"]),
        "{status:#}"
    );
    fleet.own(&moved).await;

    // Until the heir holds shard 3 and the blob is Healthy again, node 3's
    // pod stays; then it is deleted, and its claim stays.
    let (mut ctx, mut deleted) = (ctx, false);
    for _ in 0..6 {
        let heir_held = fleet.held(heir, &id).await.get(&3) == Some(&1);
        let seen;
        (seen, ctx) = fleet.reconcile_spec(ctx, 3, Some(status.clone()), 4).await;
        if let Some(written) = status_written(&seen) {
            status = written;
        }
        assert!(
            media_fleet(&ctx)
                .repairer
                .wait_idle(Duration::from_secs(30))
                .await
        );
        if lines(&seen).contains(&format!("DELETE {NS}/pods/media-node-3")) {
            assert!(heir_held, "deleted only once the heir holds shard 3");
            assert!(events(&seen).contains(&("Normal".into(), "NodeRetired".into())));
            assert!(!lines(&seen)
                .iter()
                .any(|l| l.starts_with("DELETE") && l.contains("claims")));
            deleted = true;
            break;
        }
        assert_eq!(
            status["retiringNodes"],
            json!(["media-node-3"]),
            "{status:#}"
        );
    }
    assert!(deleted, "node 3 was retired: {status:#}");
    assert!(status.get("retiringNodes").is_none(), "{status:#}");
    assert_eq!(status["blobs"]["healthy"], 1, "{status:#}");

    // Without node 3 the blob reads back whole.
    fleet.stop(3).await;
    let three = fleet.map_nodes(&moved[..3]);
    let client = BlobClient::new(node_calls(), fleet_map(4, &three), None);
    let visible = client.visible(&id.parse().unwrap()).await.unwrap();
    let len = visible.metadata.len();
    let mut stream = client
        .read_range(visible.metadata, 0..len, |_| {})
        .await
        .unwrap();
    let mut read = Vec::new();
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        read.extend_from_slice(&chunk.unwrap());
    }
    assert!(read == data, "the blob reads back whole");
}

#[tokio::test]
async fn a_client_for_an_https_api_server_can_be_built() {
    // rustls needs a crypto provider compiled in; without one this panics.
    let config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
    assert!(kube::Client::try_from(config).is_ok());
}

#[tokio::test]
async fn an_object_that_cannot_be_applied_stops_nothing_else_and_is_named_in_synced_and_an_event() {
    let (endpoints, _nodes, _dirs) = answering_nodes(3).await;
    let mut api = api_with_tokens();
    api.refused_applies.insert(
        format!("{NS}/persistentvolumeclaims/media-data-1"),
        (
            422,
            "PersistentVolumeClaim \"media-data-1\" is invalid: spec: Forbidden: spec is immutable after creation"
                .into(),
        ),
    );
    let (seen, _) = reconcile_on(
        api,
        cluster(7, 3, None),
        ready_pods(3),
        claims(3),
        endpoints,
    )
    .await;
    let paths = lines(&seen);
    // Everything after the refused claim was still applied.
    for later in [
        format!("PATCH {NS}/persistentvolumeclaims/media-data-2"),
        format!("PATCH {NS}/pods/media-node-2"),
        "PATCH /apis/apps/v1/namespaces/storage/deployments/media-gateway".to_string(),
        "PATCH /apis/policy/v1/namespaces/storage/poddisruptionbudgets/media-nodes".to_string(),
    ] {
        assert!(paths.contains(&later), "{later} missing: {paths:#?}");
    }
    let status = status_written(&seen).expect("the status is still written");
    let synced = condition(&status, "Synced");
    assert_eq!(synced["status"], "False", "{synced}");
    assert_eq!(synced["reason"], "ApplyFailed");
    let message = synced["message"].as_str().unwrap();
    assert!(
        message.contains("PersistentVolumeClaim media-data-1") && message.contains("immutable"),
        "{message}"
    );
    assert!(
        events(&seen).contains(&("Warning".to_string(), "ApplyFailed".to_string())),
        "{:?}",
        events(&seen)
    );
    // The fleet was still observed: every node pod ready, the blobs counted.
    assert_eq!(status["readyNodes"], 3);
    assert!(status["blobs"].is_object(), "{status:#}");
}

#[tokio::test]
async fn a_second_reconcile_with_nothing_changed_applies_nothing_again() {
    let (endpoints, _nodes, _dirs) = answering_nodes(3).await;
    let mut api = api_with_tokens();
    let cluster = cluster(7, 3, None);
    api.objects
        .insert(CLUSTER.into(), serde_json::to_value(&cluster).unwrap());
    api.lists.insert(format!("{NS}/pods"), ready_pods(3));
    api.lists
        .insert(format!("{NS}/persistentvolumeclaims"), claims(3));
    api.lists.insert(format!("{GROUP}/blobs"), vec![]);
    api.lists
        .insert("/api/v1/nodes".into(), kubernetes_nodes(10));
    let (client, recorded) = api.serve();
    let ctx = Arc::new(Context::new(client, "redstuff:test").with_endpoints(endpoints));
    let applies = |seen: &[Seen]| {
        seen.iter()
            .filter(|s| s.method == "PATCH" && s.content_type.contains("apply-patch"))
            .count()
    };
    reconcile_cluster(Arc::new(cluster.clone()), ctx.clone())
        .await
        .unwrap();
    let first = recorded.take();
    // 3 claims, 3 pods, 2 Services, the shards ConfigMap, 2 Secrets, the
    // NetworkPolicy, the gateway Deployment, the two budgets.
    assert_eq!(applies(&first), 15, "{:#?}", lines(&first));
    reconcile_cluster(Arc::new(cluster), ctx).await.unwrap();
    let second = recorded.take();
    assert_eq!(applies(&second), 0, "{:#?}", lines(&second));
}

/// A Secret's key, decoded.
fn secret_text(secret: &Value, key: &str) -> String {
    use base64::Engine as _;
    let data = secret["data"][key].as_str().unwrap_or_default();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap(),
    )
    .unwrap()
}

/// The Secret applied at `path` in `seen`.
fn applied(seen: &[Seen], path: &str) -> Option<Value> {
    seen.iter()
        .find(|s| s.method == "PATCH" && s.path == path)
        .map(|s| s.body.clone())
}

/// Whether `cert_pem` is a server certificate `ca_pem` issued for `name`.
fn issued_for(ca_pem: &str, cert_pem: &str, name: &str) -> bool {
    let trust = redstuff::tls::FleetTrust::default();
    let ca =
        redstuff::tls::TrustedCa::from_pem(std::path::Path::new("ca"), ca_pem.as_bytes()).unwrap();
    trust.set(&ca).unwrap();
    trusts(&trust, cert_pem, name)
}

#[tokio::test]
async fn with_tls_a_cluster_gets_a_ca_and_serving_certificates_kept_until_thirty_days_before_expiry_or_until_their_names_change(
) {
    let mut tls_cluster = cluster(7, 3, None);
    tls_cluster.spec.tls = Some(redstuff::operator::crd::TlsSpec {
        enabled: Some(true),
        gateway_names: None,
        gateway_secret: None,
        ca_rotation_overlap: None,
    });
    let ca_path = format!("{NS}/secrets/media-ca");
    let serving_path = format!("{NS}/secrets/media-node-tls");
    let gateway_path = format!("{NS}/secrets/media-gateway-tls");

    // First reconcile: a new CA, stored at once with a create (before any
    // pod or Secret refers to it), and a certificate it issued for every
    // node pod.
    let (seen, ctx) = reconcile_on(
        api_with_tokens(),
        tls_cluster.clone(),
        vec![],
        vec![],
        silent_nodes(3),
    )
    .await;
    let created = seen
        .iter()
        .position(|s| s.method == "POST" && s.path == format!("{NS}/secrets"))
        .expect("the CA Secret is created");
    assert_eq!(seen[created].body["metadata"]["name"], "media-ca");
    let first_apply = seen.iter().position(|s| s.method == "PATCH").unwrap();
    assert!(
        created < first_apply,
        "the CA is stored before anything is applied"
    );
    let ca = applied(&seen, &ca_path).expect("the CA Secret is applied");
    assert_eq!(ca["data"], seen[created].body["data"]);
    let serving = applied(&seen, &serving_path).expect("the serving Secret is applied");
    let ca_pem = secret_text(&ca, "ca.crt");
    assert!(secret_text(&ca, "ca.key").contains("PRIVATE KEY"));
    // Its expiry is exported (the CA is not rotated: an alert watches it).
    let ca_expiry = media_fleet(&ctx).metrics.ca_expiry.get();
    assert_eq!(
        Some(ca_expiry),
        redstuff::tls::certificate_not_after_unix(&ca_pem)
    );
    let nine_years = 9 * 365 * 86_400;
    assert!(ca_expiry > k8s_openapi::jiff::Timestamp::now().as_second() + nine_years);
    assert_eq!(secret_text(&serving, "ca.crt"), ca_pem);
    assert_eq!(serving["type"], "kubernetes.io/tls");
    let cert = secret_text(&serving, "tls.crt");
    for i in 0..3 {
        let name = format!("media-node-{i}.media-nodes.storage.svc");
        assert!(issued_for(&ca_pem, &cert, &name), "not valid for {name}");
    }
    assert!(!issued_for(&ca_pem, &cert, "media-gateway.storage.svc"));
    // The gateway's own, for its Service and a port-forward, not for nodes.
    let gateway = applied(&seen, &gateway_path).expect("the gateway's Secret is applied");
    assert_eq!(secret_text(&gateway, "ca.crt"), ca_pem);
    assert_eq!(gateway["type"], "kubernetes.io/tls");
    let gateway_cert = secret_text(&gateway, "tls.crt");
    for name in ["media-gateway.storage.svc", "media-gateway", "localhost"] {
        assert!(
            issued_for(&ca_pem, &gateway_cert, name),
            "not valid for {name}"
        );
    }
    assert!(!issued_for(
        &ca_pem,
        &gateway_cert,
        "media-node-0.media-nodes.storage.svc"
    ));
    assert_ne!(
        secret_text(&gateway, "tls.key"),
        secret_text(&serving, "tls.key")
    );
    let map: Value = serde_json::from_str(
        applied(&seen, &format!("{NS}/configmaps/media-shards")).unwrap()["data"]["fleet.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(map["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["url"].as_str().unwrap().starts_with("https://")));

    // With the Secrets kept: the same CA and certificates.
    let kept_api = || {
        let mut api = api_with_tokens();
        api.objects.insert(ca_path.clone(), ca.clone());
        api.objects.insert(serving_path.clone(), serving.clone());
        api.objects.insert(gateway_path.clone(), gateway.clone());
        api
    };
    let (seen, _) = reconcile_on(
        kept_api(),
        tls_cluster.clone(),
        vec![],
        vec![],
        silent_nodes(3),
    )
    .await;
    let again = applied(&seen, &serving_path).unwrap();
    assert_eq!(secret_text(&again, "tls.crt"), cert);
    let again = applied(&seen, &gateway_path).unwrap();
    assert_eq!(secret_text(&again, "tls.crt"), gateway_cert);

    // A further name for the gateway: its certificate is issued again for
    // it, the nodes' is kept.
    let mut named = tls_cluster.clone();
    named.spec.tls.as_mut().unwrap().gateway_names = Some(vec!["objects.example.com".into()]);
    let (seen, _) = reconcile_on(kept_api(), named, vec![], vec![], silent_nodes(3)).await;
    let renamed = secret_text(&applied(&seen, &gateway_path).unwrap(), "tls.crt");
    assert_ne!(renamed, gateway_cert);
    assert!(issued_for(&ca_pem, &renamed, "objects.example.com"));
    assert!(issued_for(&ca_pem, &renamed, "media-gateway.storage.svc"));
    assert_eq!(
        secret_text(&applied(&seen, &serving_path).unwrap(), "tls.crt"),
        cert
    );
    assert_eq!(
        secret_text(&applied(&seen, &ca_path).unwrap(), "ca.crt"),
        ca_pem
    );

    // Expiring within 30 days: a new certificate from the same CA.
    let mut expiring = serving.clone();
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 10 * 24 * 3600;
    expiring["metadata"]["annotations"]["redstuff.dev/not-after"] = json!(soon.to_string());
    let mut api = kept_api();
    api.objects.insert(serving_path.clone(), expiring);
    let (seen, _) = reconcile_on(api, tls_cluster, vec![], vec![], silent_nodes(3)).await;
    let renewed = applied(&seen, &serving_path).unwrap();
    let renewed_cert = secret_text(&renewed, "tls.crt");
    assert_ne!(renewed_cert, cert);
    assert!(issued_for(
        &ca_pem,
        &renewed_cert,
        "media-node-0.media-nodes.storage.svc"
    ));
    assert_eq!(
        secret_text(&applied(&seen, &ca_path).unwrap(), "ca.crt"),
        ca_pem
    );
    let not_after: u64 = renewed["metadata"]["annotations"]["redstuff.dev/not-after"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(not_after > soon + 60 * 24 * 3600, "{not_after}");
}

#[tokio::test]
async fn a_ca_secret_without_its_key_holds_every_object_but_repairs_and_status_go_on_and_say_why() {
    // Node 2 back empty; the endpoints override the https URLs with the
    // test nodes' plain ones.
    let NodeBackEmpty {
        endpoints,
        node2,
        written,
        _nodes,
        _dirs,
        ..
    } = node_2_back_empty().await;
    // The cluster serves TLS, and its CA Secret lost its key.
    let previous = settled_status(4, 4).await;
    let mut tls_cluster = cluster(4, 4, Some(previous));
    tls_cluster.spec.tls = Some(redstuff::operator::crd::TlsSpec {
        enabled: Some(true),
        gateway_names: None,
        gateway_secret: None,
        ca_rotation_overlap: None,
    });
    let ca = redstuff::tls::LocalCa::generate("media").unwrap();
    let api = api_with_secret("media-ca", None, &[("ca.crt", ca.cert_pem())]);
    let (result, seen, ctx) = try_reconcile_by(
        None,
        api,
        tls_cluster.clone(),
        ready_pods(4),
        claims(4),
        endpoints.clone(),
    )
    .await;
    result.unwrap();

    // Nothing of the cluster's is applied, created or deleted: pods made
    // without the material would serve plain HTTP.
    let changed: Vec<String> = lines(&seen)
        .into_iter()
        .filter(|l| !l.starts_with("GET "))
        .filter(|l| !l.ends_with("/events") && !l.ends_with("/status"))
        .filter(|l| !l.contains(&format!("{GROUP}/blobs/media-upload-")))
        .collect();
    assert!(
        changed.is_empty(),
        "changed without TLS material: {changed:#?}"
    );
    // Told by one Event (not also as objects that failed to apply); the
    // blob's state has its own.
    let reasons: Vec<String> = events(&seen).into_iter().map(|(_, r)| r).collect();
    assert_eq!(reasons, ["TlsMaterial", "ClusterDegraded"]);
    let note = seen
        .iter()
        .find(|s| s.path.ends_with("/events"))
        .map(|s| s.body["note"].as_str().unwrap_or_default().to_string())
        .unwrap();
    assert!(
        note.contains("media-ca") && note.contains("ca.key") && note.contains("repairs"),
        "{note}"
    );
    let status = status_written(&seen).expect("the status is written");
    let synced = condition(&status, "Synced");
    assert_eq!(synced["status"], "False", "{status:#}");
    assert_eq!(synced["reason"], "TlsMaterial");
    assert!(synced["message"].as_str().unwrap().contains("ca.key"));
    assert_eq!(status["blobs"]["degraded"], 1, "{status:#}");
    assert_eq!(status["repairsInFlight"], 1);

    // The repair runs, trusting the CA whose certificate the Secret kept.
    let fleet = ctx
        .fleets
        .find(&("storage".into(), "media".into()))
        .unwrap();
    let issued = ca
        .issue(
            &["media-node-0.media-nodes.storage.svc".to_string()],
            Duration::from_secs(3600),
        )
        .unwrap();
    assert!(trusts(
        &fleet.trust,
        &issued.cert_pem,
        "media-node-0.media-nodes.storage.svc"
    ));
    assert!(fleet.repairer.wait_idle(Duration::from_secs(30)).await);
    assert_eq!(fleet.metrics.repairs_completed.get(), 1);
    assert_holds_shard_2(&node2, &written).await;

    // Told once: the next reconcile, still held, publishes no Event again.
    let api = api_with_secret("media-ca", None, &[("ca.crt", ca.cert_pem())]);
    let mut held = tls_cluster;
    held.status = Some(serde_json::from_value(status).unwrap());
    let (result, seen, _) =
        try_reconcile_by(Some(ctx), api, held, ready_pods(4), claims(4), endpoints).await;
    result.unwrap();
    assert!(
        !events(&seen).iter().any(|(_, r)| r == "TlsMaterial"),
        "{:?}",
        events(&seen)
    );
    let status = status_written(&seen).expect("the blob is healthy again");
    assert_eq!(status["blobs"]["healthy"], 1, "{status:#}");
    assert_eq!(condition(&status, "Synced")["reason"], "TlsMaterial");
}

/// Whether `trust` accepts `cert_pem` for `name`.
fn trusts(trust: &redstuff::tls::FleetTrust, cert_pem: &str, name: &str) -> bool {
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    trust
        .verify_server_cert(
            &CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap(),
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
}

#[tokio::test]
async fn a_gateway_serving_a_secret_of_the_users_is_trusted_by_its_ca_and_gets_no_certificate_of_the_clusters(
) {
    let mut tls_cluster = cluster(7, 3, None);
    tls_cluster.spec.tls = Some(redstuff::operator::crd::TlsSpec {
        enabled: Some(true),
        gateway_names: None,
        gateway_secret: Some("media-public-cert".into()),
        ca_rotation_overlap: None,
    });
    let public = redstuff::tls::LocalCa::generate("public").unwrap();
    let name = "media-gateway.storage.svc".to_string();
    let served = public
        .issue(std::slice::from_ref(&name), redstuff::tls::SERVING_VALIDITY)
        .unwrap();
    let api = api_with_secret(
        "media-public-cert",
        Some("kubernetes.io/tls"),
        &[
            ("tls.crt", &served.cert_pem),
            ("tls.key", &served.key_pem),
            ("ca.crt", public.cert_pem()),
        ],
    );
    let (seen, ctx) = reconcile_on(api, tls_cluster.clone(), vec![], vec![], silent_nodes(3)).await;
    assert!(applied(&seen, &format!("{NS}/secrets/media-gateway-tls")).is_none());
    let cluster_ca = secret_text(
        &applied(&seen, &format!("{NS}/secrets/media-ca")).unwrap(),
        "ca.crt",
    );
    let deployment = seen
        .iter()
        .find(|s| s.method == "PATCH" && s.path.ends_with("/deployments/media-gateway"))
        .expect("the gateway is applied");
    let volumes = deployment.body["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(volumes.contains("media-public-cert"), "{volumes}");
    assert!(events(&seen).is_empty(), "{:?}", events(&seen));

    // Blob uploads check the gateway against the Secret's CA, not the
    // cluster's.
    let fleet = ctx
        .fleets
        .find(&("storage".to_string(), "media".to_string()))
        .unwrap();
    assert!(trusts(&fleet.gateway_trust, &served.cert_pem, &name));
    let cluster_issued = redstuff::tls::LocalCa::from_pem(
        &cluster_ca,
        &secret_text(
            &applied(&seen, &format!("{NS}/secrets/media-ca")).unwrap(),
            "ca.key",
        ),
    )
    .unwrap()
    .issue(std::slice::from_ref(&name), redstuff::tls::SERVING_VALIDITY)
    .unwrap();
    assert!(!trusts(
        &fleet.gateway_trust,
        &cluster_issued.cert_pem,
        &name
    ));
    assert!(trusts(&fleet.trust, &cluster_issued.cert_pem, &name));

    // The Secret missing: said in an Event, and the fleet goes on.
    let (seen, _) = reconcile_on(
        api_with_tokens(),
        tls_cluster.clone(),
        vec![],
        vec![],
        silent_nodes(3),
    )
    .await;
    assert_eq!(
        events(&seen),
        vec![("Warning".into(), "TlsMaterial".into())]
    );
    assert!(seen
        .iter()
        .any(|s| s.method == "PATCH" && s.path.ends_with("/deployments/media-gateway")));

    // A certificate that does not cover the gateway Service's name (only a
    // public one, say): said in an Event naming the missing name, and the
    // fleet goes on.
    let public_only = public
        .issue(
            &[
                "*.example.com".to_string(),
                "media-gateway.storage".to_string(),
            ],
            redstuff::tls::SERVING_VALIDITY,
        )
        .unwrap();
    let api = api_with_secret(
        "media-public-cert",
        Some("kubernetes.io/tls"),
        &[
            ("tls.crt", &public_only.cert_pem),
            ("tls.key", &public_only.key_pem),
            ("ca.crt", public.cert_pem()),
        ],
    );
    let (seen, _) = reconcile_on(api, tls_cluster, vec![], vec![], silent_nodes(3)).await;
    assert_eq!(
        events(&seen),
        vec![("Warning".into(), "TlsMaterial".into())]
    );
    let note = seen
        .iter()
        .find(|s| s.path.ends_with("/events"))
        .map(|s| s.body["note"].as_str().unwrap_or_default().to_string())
        .unwrap();
    assert!(
        note.contains("does not cover media-gateway.storage.svc"),
        "{note}"
    );
    assert!(seen
        .iter()
        .any(|s| s.method == "PATCH" && s.path.ends_with("/deployments/media-gateway")));
}

#[tokio::test]
async fn a_new_cluster_on_the_claims_of_a_deleted_one_keeps_the_shards_where_their_slivers_are() {
    // The claims an earlier "media" left say which node owned which shard
    // (after moves, not the order a fresh assignment would give).
    let remembered = ["1", "0", "3", "2"];
    let claims: Vec<Value> = remembered
        .iter()
        .enumerate()
        .map(|(i, shards)| {
            let mut c = claim(&format!("media-data-{i}"), false);
            c["metadata"]["annotations"] = json!({ "redstuff.dev/shards": shards });
            c
        })
        .collect();
    let (seen, _) = reconcile_on(
        api_with_tokens(),
        cluster(4, 4, None),
        ready_pods(4),
        claims,
        silent_nodes(4),
    )
    .await;
    let owners = owners_applied(&seen, 4).expect("the shards ConfigMap applied");
    let expected: Vec<BTreeSet<u16>> = remembered
        .iter()
        .map(|s| BTreeSet::from([s.parse().unwrap()]))
        .collect();
    assert_eq!(owners, expected);
    // And the claims go on remembering it.
    let claim = applied(&seen, &format!("{NS}/persistentvolumeclaims/media-data-0")).unwrap();
    assert_eq!(claim["metadata"]["annotations"]["redstuff.dev/shards"], "1");
    assert_eq!(
        claim["metadata"]["annotations"]["redstuff.dev/cluster-shards"],
        "4"
    );
    assert!(claim["metadata"]["ownerReferences"].is_null());
}

#[tokio::test]
async fn a_new_cluster_of_another_shard_count_on_an_earlier_ones_claims_is_refused_and_makes_nothing(
) {
    // An earlier "media" of 4 shards left its claims; this one has 7: its
    // blobs there would be unreadable under a fresh assignment.
    let claims: Vec<Value> = (0..4)
        .map(|i| {
            let mut c = claim(&format!("media-data-{i}"), false);
            c["metadata"]["annotations"] = json!({
                "redstuff.dev/shards": i.to_string(),
                "redstuff.dev/cluster-shards": "4",
            });
            c
        })
        .collect();
    let (seen, _) = reconcile_on(
        api_with_tokens(),
        cluster(7, 4, None),
        vec![],
        claims,
        silent_nodes(0),
    )
    .await;
    assert_eq!(
        writes(&seen),
        vec![
            "POST /apis/events.k8s.io/v1/namespaces/storage/events".to_string(),
            format!("PATCH {CLUSTER}/status"),
        ],
        "nothing made or changed but the status and an Event"
    );
    assert_eq!(
        events(&seen),
        vec![("Warning".into(), "ClaimsOfAnotherCluster".into())]
    );
    let status = status_written(&seen).unwrap();
    assert_eq!(status["phase"], "Failed");
    let ready = condition(&status, "Ready");
    assert_eq!(ready["reason"], "ClaimsOfAnotherCluster");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("4 shards") && message.contains("shards: 4"),
        "{message}"
    );
}

#[tokio::test]
async fn names_held_by_another_applications_objects_are_never_taken_over() {
    // A StatefulSet "data" with a claim template "media" made media-data-0,
    // and someone's Service holds media-gateway.
    let mut api = api_with_tokens();
    api.objects.insert(
        format!("{NS}/persistentvolumeclaims/media-data-0"),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "media-data-0", "namespace": "storage",
                            "labels": {"app": "data", "app.kubernetes.io/instance": "media"}}}),
    );
    api.objects.insert(
        format!("{NS}/services/media-gateway"),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "media-gateway", "namespace": "storage"}}),
    );
    let (seen, _) = reconcile_on(api, cluster(4, 4, None), vec![], vec![], silent_nodes(4)).await;
    assert_eq!(
        writes(&seen),
        vec![
            "POST /apis/events.k8s.io/v1/namespaces/storage/events".to_string(),
            format!("PATCH {CLUSTER}/status"),
        ],
        "nothing applied, created or replaced"
    );
    assert_eq!(events(&seen), vec![("Warning".into(), "NameTaken".into())]);
    let status = status_written(&seen).unwrap();
    let synced = condition(&status, "Synced");
    assert_eq!(synced["status"], "False");
    assert_eq!(synced["reason"], "NameTaken");
    let message = synced["message"].as_str().unwrap();
    assert!(
        message.contains("PersistentVolumeClaim/media-data-0")
            && message.contains("Service/media-gateway")
            && !message.contains("Secret/"),
        "{message}"
    );
}

#[tokio::test]
async fn a_ca_rotation_stays_in_the_status_while_names_are_held() {
    let mut api = api_with_tokens();
    api.objects.insert(
        format!("{NS}/services/media-gateway"),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "media-gateway", "namespace": "storage"}}),
    );
    let rotation = json!({"step": "TrustingNewCa", "since": "2026-12-07T08:00:00Z",
                          "nextStepAfter": "2026-12-07T08:10:00Z", "waitingFor": []});
    let status = json!({"phase": "Ready", "caRotation": rotation});
    let (seen, _) = reconcile_on(
        api,
        cluster(4, 4, Some(status)),
        vec![],
        vec![],
        silent_nodes(4),
    )
    .await;
    let status = status_written(&seen).unwrap();
    assert_eq!(condition(&status, "Synced")["reason"], "NameTaken");
    assert_eq!(status["caRotation"], rotation, "{status:#}");
}

#[tokio::test]
async fn a_running_cluster_grown_onto_a_name_another_application_holds_stops_short_and_applies_the_rest(
) {
    let (seen, _) = reconcile(
        cluster(7, 3, None),
        ready_pods(3),
        claims(3),
        silent_nodes(3),
    )
    .await;
    let status = status_written(&seen).unwrap();
    // spec.nodes goes to 4, but a StatefulSet's claim holds media-data-3;
    // meanwhile node pod 2 was deleted.
    let mut api = api_with_tokens();
    api.objects.insert(
        format!("{NS}/persistentvolumeclaims/media-data-3"),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "media-data-3", "namespace": "storage",
                            "labels": {"app": "data"}}}),
    );
    let (seen, _) = reconcile_on(
        api,
        cluster(7, 4, Some(status)),
        ready_pods(2),
        claims(3),
        silent_nodes(3),
    )
    .await;
    let written = writes(&seen);
    assert!(
        written
            .iter()
            .all(|w| !w.contains("media-node-3") && !w.contains("media-data-3")),
        "nothing of node pod 3 is made: {written:#?}"
    );
    assert!(
        written
            .iter()
            .any(|w| w.contains("/pods") && w.contains("media-node-2")),
        "the deleted node pod 2 is made again: {written:#?}"
    );
    assert_eq!(
        events(&seen),
        vec![
            ("Warning".into(), "NameTaken".into()),
            ("Normal".into(), "NodePodReplaced".into())
        ]
    );
    let status = status_written(&seen).unwrap();
    let synced = condition(&status, "Synced");
    assert_eq!(synced["status"], "False");
    assert_eq!(synced["reason"], "NameTaken");
    let message = synced["message"].as_str().unwrap();
    assert!(
        message.starts_with("spec.nodes 4 is not reached: the cluster runs 3 node pods")
            && message.contains("PersistentVolumeClaim/media-data-3 exists and was not made"),
        "{message}"
    );
    let owners: BTreeSet<&str> = status["shardAssignment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["node"].as_str().unwrap())
        .collect();
    assert_eq!(
        owners,
        BTreeSet::from(["media-node-0", "media-node-1", "media-node-2"]),
        "no shard goes to the node pod not made"
    );
}

#[tokio::test]
async fn a_failed_list_of_blobs_fails_no_object_and_records_no_upload() {
    let mut api = api_with_tokens();
    api.failed_reads.insert(format!("{GROUP}/blobs"));
    let (seen, _) = reconcile_on(
        api,
        cluster(7, 3, None),
        ready_pods(3),
        claims(3),
        silent_nodes(3),
    )
    .await;
    assert!(lines(&seen).contains(&format!("GET {GROUP}/blobs")));
    let status = status_written(&seen).unwrap();
    assert_eq!(
        condition(&status, "Synced")["reason"],
        "Applied",
        "{status:#}"
    );
    assert!(!events(&seen).contains(&("Warning".into(), "ApplyFailed".into())));
    assert!(!writes(&seen).iter().any(|w| w.contains("/blobs")));
}

#[tokio::test]
async fn no_shard_moves_while_names_are_held_as_nodes_could_not_learn_of_it() {
    let previous = settled_status_but_lost(7, 3, "media-node-2", 301).await;
    let mut api = api_with_tokens();
    api.objects.insert(
        format!("{NS}/services/media-gateway"),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "media-gateway", "namespace": "storage"}}),
    );
    let (seen, _) = reconcile_on(
        api,
        cluster(7, 3, Some(previous.clone())),
        ready_pods(2),
        claims(3),
        silent_nodes(3),
    )
    .await;
    let status = status_written(&seen).unwrap();
    assert_eq!(condition(&status, "Synced")["reason"], "NameTaken");
    assert_eq!(
        status["shardAssignment"], previous["shardAssignment"],
        "the shards ConfigMap is not applied while names are held"
    );
    assert!(!events(&seen).contains(&("Warning".into(), "ShardsMoved".into())));
}

#[tokio::test]
async fn a_name_found_free_or_the_clusters_own_is_not_asked_again() {
    let (endpoints, _nodes, _dirs) = answering_nodes(3).await;
    let (seen, ctx) = reconcile(cluster(7, 3, None), vec![], vec![], endpoints.clone()).await;
    let asked = |seen: &[Seen]| {
        seen.iter()
            .filter(|s| s.method == "GET" && s.path.ends_with("/services/media-gateway"))
            .count()
    };
    assert_eq!(asked(&seen), 1, "{:#?}", lines(&seen));
    let status = status_written(&seen).unwrap();
    let (seen, _) = reconcile_after(
        ctx,
        cluster(7, 3, Some(status)),
        ready_pods(3),
        claims(3),
        endpoints,
    )
    .await;
    assert_eq!(asked(&seen), 0, "{:#?}", lines(&seen));
}

/// A pod serving TLS from files the test writes as the kubelet writes a
/// mounted Secret's, read when `kubelet_writes` says.
struct TlsPod {
    dir: tempfile::TempDir,
    serving: Arc<redstuff::tls::ServingCert>,
    url: String,
    _server: tokio::task::JoinHandle<()>,
}

impl TlsPod {
    /// Serves a throwaway certificate until the first Secret is written.
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let first = redstuff::tls::LocalCa::generate("throwaway")
            .unwrap()
            .issue(&["localhost".to_string()], Duration::from_secs(3600))
            .unwrap();
        std::fs::write(dir.path().join("tls.crt"), &first.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &first.key_pem).unwrap();
        let serving = redstuff::tls::ServingCert::load(
            &dir.path().join("tls.crt"),
            &dir.path().join("tls.key"),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        let metrics = redstuff::tls::TlsMetrics {
            certificate_expiry: prometheus::IntGauge::new("expiry", "test").unwrap(),
            handshakes: redstuff::tls::HandshakeCounters {
                failed: prometheus::IntCounter::new("failures", "test").unwrap(),
                abandoned: prometheus::IntCounter::new("abandoned", "test").unwrap(),
            },
        };
        let tls = serving.clone();
        let server = tokio::spawn(async move {
            let _ = redstuff::tls::serve(
                listener,
                app,
                Some(tls),
                Duration::from_secs(30),
                metrics,
                std::future::pending(),
            )
            .await;
        });
        Self {
            dir,
            serving,
            url,
            _server: server,
        }
    }

    /// Writes `secret`'s files and has them read now.
    fn kubelet_writes(&self, secret: &Value) {
        for key in ["tls.crt", "tls.key", "ca.crt"] {
            std::fs::write(self.dir.path().join(key), secret_text(secret, key)).unwrap();
        }
        self.serving.refresh().unwrap();
    }
}

/// One reconcile by `before`'s operator process (or a new one) against an
/// API server holding the token Secrets and `kept`, into which the
/// Secrets it applies go.
async fn reconcile_keeping(
    before: Option<Arc<Context>>,
    kept: &mut BTreeMap<String, Value>,
    cluster: StorageCluster,
    endpoints: &Endpoints,
    refused: Option<&str>,
) -> (Vec<Seen>, Arc<Context>) {
    let mut api = api_with_tokens();
    api.objects.extend(kept.clone());
    if let Some(path) = refused {
        api.refused_applies.insert(
            path.to_string(),
            (500, "etcdserver: request timed out".into()),
        );
    }
    let (seen, ctx) = reconcile_by(
        before,
        api,
        cluster,
        ready_pods(3),
        claims(3),
        endpoints.clone(),
    )
    .await;
    for s in &seen {
        let secret = s.path.starts_with(&format!("{NS}/secrets/"));
        if s.method == "PATCH" && secret && Some(s.path.as_str()) != refused {
            kept.insert(s.path.clone(), s.body.clone());
        }
    }
    (seen, ctx)
}

/// The PEM certificates of a bundle, each as its text.
fn bundle(pem: &str) -> Vec<String> {
    pem.split_inclusive("-----END CERTIFICATE-----")
        .map(|c| c.trim().to_string())
        .filter(|c| c.contains("BEGIN CERTIFICATE"))
        .collect()
}

#[tokio::test]
async fn a_ca_rotation_trusts_the_new_ca_everywhere_before_it_signs_and_drops_the_old_only_once_every_pod_serves_from_the_new(
) {
    let nodes = [
        TlsPod::start().await,
        TlsPod::start().await,
        TlsPod::start().await,
    ];
    let gateway = TlsPod::start().await;
    let endpoints = nodes
        .iter()
        .enumerate()
        .fold(Endpoints::default(), |e, (i, pod)| {
            e.with_override(format!("media-node-{i}"), pod.url.clone())
        })
        .with_override("media-gateway", gateway.url.clone());
    let mut tls_cluster = cluster(7, 3, None);
    tls_cluster.spec.tls = Some(redstuff::operator::crd::TlsSpec {
        enabled: Some(true),
        gateway_names: None,
        gateway_secret: None,
        ca_rotation_overlap: Some("0s".into()),
    });
    let (ca_path, node_path, gateway_path) = (
        format!("{NS}/secrets/media-ca"),
        format!("{NS}/secrets/media-node-tls"),
        format!("{NS}/secrets/media-gateway-tls"),
    );
    // The API server keeps what each reconcile applied.
    let mut kept: BTreeMap<String, Value> = BTreeMap::new();
    let mut ctx: Option<Arc<Context>> = None;
    macro_rules! step {
        () => {
            step!(None)
        };
        ($refused:expr) => {{
            let (seen, after) = reconcile_keeping(
                ctx.take(),
                &mut kept,
                tls_cluster.clone(),
                &endpoints,
                $refused,
            )
            .await;
            ctx = Some(after);
            seen
        }};
    }
    let rotation_events = |seen: &[Seen]| {
        seen.iter()
            .filter(|s| {
                s.path.ends_with("/events")
                    && s.body["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("CaRotation"))
            })
            .count()
    };

    // A cluster with its first CA, every pod serving its certificates.
    step!();
    let old_ca = secret_text(&kept[&ca_path], "ca.crt");
    for pod in &nodes {
        pod.kubelet_writes(&kept[&node_path]);
    }
    gateway.kubelet_writes(&kept[&gateway_path]);

    // Asked: a new CA is trusted beside the old, which still signs (the
    // certificates are renewed so that a pod serving one has read it).
    tls_cluster
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("redstuff.dev/rotate-ca".into(), "1".into());
    let old_node_cert = secret_text(&kept[&node_path], "tls.crt");
    // The nodes' Secret cannot be written (the API server times out).
    let seen = step!(Some(node_path.as_str()));
    assert_eq!(rotation_events(&seen), 1);
    let new_ca = secret_text(&kept[&ca_path], "next-ca.crt");
    assert!(new_ca.contains("BEGIN CERTIFICATE") && new_ca != old_ca);
    assert_eq!(secret_text(&kept[&ca_path], "ca.crt"), old_ca);
    assert!(secret_text(&kept[&ca_path], "next-ca.key").contains("PRIVATE KEY"));
    assert_eq!(
        bundle(&secret_text(&kept[&gateway_path], "ca.crt")),
        [old_ca.trim(), new_ca.trim()]
    );
    assert_eq!(
        media_fleet(ctx.as_ref().unwrap())
            .metrics
            .ca_rotation_phase
            .get(),
        1
    );

    // While it is not written for this phase, pods serving what it still
    // holds are not current: the new CA does not sign.
    let stale = kept[&node_path].clone();
    for _ in 0..12 {
        for pod in &nodes {
            pod.kubelet_writes(&kept[&node_path]);
        }
        gateway.kubelet_writes(&kept[&gateway_path]);
        let seen = step!(Some(node_path.as_str()));
        assert_eq!(rotation_events(&seen), 0);
        assert_eq!(kept[&node_path], stale);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(secret_text(&kept[&ca_path], "next-ca.crt").contains("BEGIN"));

    // Written at last: both CAs, and a renewed certificate from the old.
    let seen = step!();
    assert_eq!(rotation_events(&seen), 0);
    assert_eq!(
        bundle(&secret_text(&kept[&node_path], "ca.crt")),
        [old_ca.trim(), new_ca.trim()]
    );
    let node_cert = secret_text(&kept[&node_path], "tls.crt");
    assert_ne!(node_cert, old_node_cert);
    let pod_name = "media-node-0.media-nodes.storage.svc";
    assert!(issued_for(&old_ca, &node_cert, pod_name));

    // Node 2 has not read its Secret yet: the new CA does not sign,
    // however long it has been trusted.
    nodes[0].kubelet_writes(&kept[&node_path]);
    nodes[1].kubelet_writes(&kept[&node_path]);
    let mut status = None;
    for _ in 0..12 {
        let seen = step!();
        assert_eq!(rotation_events(&seen), 0);
        assert!(secret_text(&kept[&ca_path], "next-ca.crt").contains("BEGIN"));
        status = status_written(&seen).or(status);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The status says where the rotation is, and names the pod it waits for.
    let status = status.expect("a status written");
    let rotation = &status["caRotation"];
    assert_eq!(rotation["step"], "TrustingNewCa", "{status:#}");
    assert!(rotation["since"].is_string() && rotation["nextStepAfter"].is_string());
    let waiting = rotation["waitingFor"].to_string();
    assert!(
        waiting.contains("media-node-2") && !waiting.contains("media-node-0"),
        "{waiting}"
    );
    nodes[2].kubelet_writes(&kept[&node_path]);
    gateway.kubelet_writes(&kept[&gateway_path]);

    // Every pod current: after a pod's own reload tick has passed, the new
    // CA signs and the old one stays trusted.
    let mut switched = None;
    for _ in 0..20 {
        let seen = step!();
        if rotation_events(&seen) > 0 {
            switched = Some(seen);
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(switched.is_some(), "the new CA never signed");
    assert_eq!(secret_text(&kept[&ca_path], "ca.crt"), new_ca);
    assert_eq!(secret_text(&kept[&ca_path], "previous-ca.crt"), old_ca);
    assert!(kept[&ca_path]["data"].get("next-ca.crt").is_none());
    for path in [&node_path, &gateway_path] {
        assert_eq!(
            bundle(&secret_text(&kept[path], "ca.crt")),
            [new_ca.trim(), old_ca.trim()]
        );
    }
    let node_cert = secret_text(&kept[&node_path], "tls.crt");
    assert!(issued_for(&new_ca, &node_cert, pod_name));
    assert!(!issued_for(&old_ca, &node_cert, pod_name));
    assert_eq!(
        media_fleet(ctx.as_ref().unwrap())
            .metrics
            .ca_rotation_phase
            .get(),
        2
    );

    // The gateway still serves a certificate of the old CA: it stays
    // trusted until the gateway serves one of the new.
    for pod in &nodes {
        pod.kubelet_writes(&kept[&node_path]);
    }
    for _ in 0..12 {
        let seen = step!();
        assert_eq!(rotation_events(&seen), 0);
        assert_eq!(secret_text(&kept[&ca_path], "previous-ca.crt"), old_ca);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    gateway.kubelet_writes(&kept[&gateway_path]);
    let mut finished = false;
    for _ in 0..20 {
        let seen = step!();
        if rotation_events(&seen) > 0 {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(finished, "the old CA was never dropped");
    let seen = step!();
    let status = status_written(&seen).expect("a status written");
    assert!(status.get("caRotation").is_none(), "{status:#}");
    assert!(kept[&ca_path]["data"].get("previous-ca.crt").is_none());
    for path in [&node_path, &gateway_path] {
        assert_eq!(bundle(&secret_text(&kept[path], "ca.crt")), [new_ca.trim()]);
    }
    assert!(issued_for(
        &new_ca,
        &secret_text(&kept[&gateway_path], "tls.crt"),
        "media-gateway.storage.svc"
    ));
    assert_eq!(
        media_fleet(ctx.as_ref().unwrap())
            .metrics
            .ca_rotation_phase
            .get(),
        0
    );

    // The same annotation value asks nothing more.
    let seen = step!();
    assert_eq!(rotation_events(&seen), 0);
    assert_eq!(secret_text(&kept[&ca_path], "ca.crt"), new_ca);
    assert!(kept[&ca_path]["data"].get("next-ca.crt").is_none());
    assert_eq!(
        media_fleet(ctx.as_ref().unwrap())
            .metrics
            .ca_rotation_phase
            .get(),
        0
    );
}
