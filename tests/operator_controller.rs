//! The StorageCluster reconciler against a mocked Kubernetes API (kube's
//! tower-test pattern): each scenario asserts the exact requests made.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use redstuff::operator::controller::{reconcile_cluster, Context};
use redstuff::operator::crd::{StorageCluster, StorageClusterSpec, StorageSpec};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

fn cluster(nodes: u16, status: Option<Value>) -> StorageCluster {
    let mut c = StorageCluster::new(
        "media",
        StorageClusterSpec {
            shards: 7,
            nodes,
            image: None,
            storage: StorageSpec {
                size: Some("10Gi".into()),
                storage_class_name: None,
                ephemeral: None,
            },
            resources: None,
            placement: None,
            repair: None,
        },
    );
    c.metadata.namespace = Some("storage".into());
    c.metadata.uid = Some("7c1f".into());
    c.metadata.generation = Some(1);
    c.status = status.map(|s| serde_json::from_value(s).unwrap());
    c
}

fn pod(name: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "storage"},
        "spec": {"containers": [], "nodeName": format!("host-{name}")},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

/// Runs one reconcile against a fake API server that lists `pods`, has no
/// token Secret, and echoes every write; returns the requests in order.
async fn reconcile(cluster: StorageCluster, pods: Vec<Value>) -> Vec<Seen> {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "storage");
    let cluster_json = serde_json::to_value(&cluster).unwrap();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let record = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or("").to_string(),
                content_type: parts
                    .headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default(),
                body: body.clone(),
            };
            let (status, answer) = match (record.method.as_str(), record.path.as_str()) {
                ("GET", "/api/v1/namespaces/storage/pods") => (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods}),
                ),
                ("GET", path) if path.contains("/secrets/") => (
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": "not found", "reason": "NotFound", "code": 404}),
                ),
                ("PATCH", path) if path.ends_with("/status") => {
                    let mut updated = cluster_json.clone();
                    updated["status"] = body["status"].clone();
                    (StatusCode::OK, updated)
                }
                ("PATCH", _) => (StatusCode::OK, body),
                ("DELETE", path) if path.contains("/pods/") => {
                    (StatusCode::OK, pod(path.rsplit('/').next().unwrap(), false))
                }
                (method, path) => panic!("unexpected request {method} {path}"),
            };
            seen.push(record);
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
        seen
    });
    let ctx = Arc::new(Context {
        client,
        image: "redstuff:test".into(),
    });
    reconcile_cluster(Arc::new(cluster), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    server.await.unwrap()
}

fn paths(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect()
}

#[tokio::test]
async fn a_new_cluster_creates_its_objects_with_server_side_apply_and_writes_its_status() {
    let seen = reconcile(cluster(3, None), vec![]).await;
    let ns = "/api/v1/namespaces/storage";
    let mut expected = vec![
        format!("GET {ns}/pods"),
        format!("GET {ns}/secrets/media-node-token"),
        format!("PATCH {ns}/services/media-nodes"),
        format!("PATCH {ns}/configmaps/media-shards"),
        format!("PATCH {ns}/secrets/media-node-token"),
    ];
    expected.extend((0..3).map(|i| format!("PATCH {ns}/persistentvolumeclaims/media-data-{i}")));
    expected.extend((0..3).map(|i| format!("PATCH {ns}/pods/media-node-{i}")));
    expected.extend([
        "PATCH /apis/apps/v1/namespaces/storage/deployments/media-gateway".to_string(),
        format!("PATCH {ns}/services/media-gateway"),
        "PATCH /apis/policy/v1/namespaces/storage/poddisruptionbudgets/media-nodes".to_string(),
        "PATCH /apis/redstuff.dev/v1alpha1/namespaces/storage/storageclusters/media/status"
            .to_string(),
    ]);
    assert_eq!(paths(&seen), expected);
    assert!(
        seen[0]
            .query
            .contains("labelSelector=app.kubernetes.io%2Finstance%3Dmedia"),
        "{}",
        seen[0].query
    );
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
        let owner = &apply.body["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].as_str()),
            (Some("StorageCluster"), Some("7c1f"))
        );
    }
    let token = &seen[4].body["stringData"]["token"];
    assert_eq!(
        token.as_str().map(str::len),
        Some(64),
        "a fresh random token"
    );
    let status = &seen.last().unwrap().body["status"];
    assert_eq!(status["phase"], "Pending");
    assert_eq!(status["faultTolerance"], 2);
    assert_eq!(status["shardAssignment"].as_array().unwrap().len(), 7);
}

#[tokio::test]
async fn a_deleted_node_pod_is_applied_again_and_the_cluster_reports_degraded() {
    let pods = vec![pod("media-node-0", true), pod("media-node-1", true)];
    let seen = reconcile(cluster(3, None), pods).await;
    assert!(
        paths(&seen).contains(&"PATCH /api/v1/namespaces/storage/pods/media-node-2".to_string())
    );
    let status = &seen.last().unwrap().body["status"];
    assert_eq!(status["phase"], "Degraded");
    assert_eq!(status["readyNodes"], 2);
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("NodesNotReady"))
    );
}

#[tokio::test]
async fn an_unchanged_cluster_is_not_rewritten() {
    let pods: Vec<Value> = (0..3)
        .map(|i| pod(&format!("media-node-{i}"), true))
        .collect();
    let first = reconcile(cluster(3, None), pods.clone()).await;
    let status = first.last().unwrap().body["status"].clone();
    assert_eq!(status["phase"], "Ready");
    let second = reconcile(cluster(3, Some(status)), pods).await;
    assert!(
        !paths(&second).iter().any(|p| p.ends_with("/status")),
        "{:#?}",
        paths(&second)
    );
}

#[tokio::test]
async fn an_invalid_spec_becomes_a_condition_and_nothing_else_is_touched() {
    let seen = reconcile(cluster(9, None), vec![]).await;
    assert_eq!(
        paths(&seen),
        vec![
            "PATCH /apis/redstuff.dev/v1alpha1/namespaces/storage/storageclusters/media/status"
                .to_string()
        ]
    );
    let status = &seen[0].body["status"];
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["conditions"][0]["reason"], "InvalidSpec");
}

#[tokio::test]
async fn node_pods_beyond_spec_are_removed() {
    let pods: Vec<Value> = (0..4)
        .map(|i| pod(&format!("media-node-{i}"), true))
        .collect();
    let seen = reconcile(cluster(3, None), pods).await;
    assert!(
        paths(&seen).contains(&"DELETE /api/v1/namespaces/storage/pods/media-node-3".to_string())
    );
}

#[tokio::test]
async fn a_client_for_an_https_api_server_can_be_built() {
    // rustls needs a crypto provider compiled in; without one this panics.
    let config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
    assert!(kube::Client::try_from(config).is_ok());
}
