//! Test support shared by the operator tests: a mocked Kubernetes API
//! server (kube's tower-test pattern) that records every request, and
//! storage nodes and a gateway run in-process over real HTTP.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use redstuff::fleet::{FleetMap, MapNode};
use redstuff::gateway::{FleetSource, Gateway, GatewayConfig};
use redstuff::node::{Node, NodeConfig, ShardSource};
use serde_json::{json, Value};

pub mod blob_cluster;

/// One request the fake API server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

impl Seen {
    /// "METHOD /path".
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// "METHOD /path" of every request.
pub fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(Seen::line).collect()
}

fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "not found", "reason": "NotFound", "code": 404}),
    )
}

/// The rights the operator's RBAC grants (deploy/10-rbac.yaml, which
/// scripts/check_chart.py holds equal to the chart's): (API group,
/// resource, verb).
fn granted() -> &'static BTreeSet<(String, String, String)> {
    static GRANTED: std::sync::OnceLock<BTreeSet<(String, String, String)>> =
        std::sync::OnceLock::new();
    GRANTED.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/10-rbac.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let mut granted = BTreeSet::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !matches!(doc["kind"].as_str(), Some("ClusterRole" | "Role")) {
                continue;
            }
            for rule in doc["rules"].as_array().unwrap() {
                let strings = |field: &str| -> Vec<String> {
                    rule[field]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_string())
                        .collect()
                };
                for group in strings("apiGroups") {
                    for resource in strings("resources") {
                        for verb in strings("verbs") {
                            granted.insert((group.clone(), resource.clone(), verb));
                        }
                    }
                }
            }
        }
        granted
    })
}

/// What a request asks the API server for, as RBAC names it: (API group,
/// resource with its subresource, verb).
pub fn rbac_request(method: &str, path: &str, query: &str) -> (String, String, String) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("not an API path: {path}"),
    };
    let rest = match rest {
        ["namespaces", _ns, more @ ..] if !more.is_empty() => more,
        other => other,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => panic!("not a resource path: {path}"),
    };
    let verb = match (method, named) {
        ("GET", true) => "get",
        ("GET", false) if query.split('&').any(|p| p == "watch=true") => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => panic!("unexpected request {method} {path}"),
    };
    (group.to_string(), resource, verb.to_string())
}

/// A fake API server: GET answers from `objects` (by path) and `lists`
/// (by collection path; else the stored objects under it), everything
/// else 404; server-side applies are
/// echoed; status patches are merged into the stored object; other
/// patches (finalizers) answer the stored object; Events are accepted;
/// deletes answer a Status. Like the real one, it refuses (403) what the
/// operator's RBAC does not grant.
#[derive(Default, Clone)]
pub struct MockApi {
    pub objects: BTreeMap<String, Value>,
    pub lists: BTreeMap<String, Vec<Value>>,
    /// Paths whose server-side apply is refused: status code and message
    /// (an immutable field, a quota, a conflict).
    pub refused_applies: BTreeMap<String, (u16, String)>,
    /// Status writes answered before every later one fails (503, as
    /// while the API server is away); `None`: all are answered.
    pub status_writes_before_failing: Option<usize>,
    /// Paths whose GET (a read or a list) fails (503, as while the API
    /// server is away).
    pub failed_reads: BTreeSet<String>,
}

/// A list answer as the API server pages it: all of `items`, or with
/// `limit` in the query that many from the offset its `continue` token
/// names, and a token for the rest.
fn list_page(items: Vec<&Value>, query: &str) -> Value {
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
    };
    let Some(limit) = param("limit").and_then(|l| l.parse::<usize>().ok()) else {
        return json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items});
    };
    let from: usize = param("continue").map_or(0, |c| c.parse().expect("a token this mock made"));
    let end = (from + limit).min(items.len());
    let mut metadata = json!({});
    if end < items.len() {
        metadata["continue"] = json!(end.to_string());
    }
    json!({"apiVersion": "v1", "kind": "List", "metadata": metadata, "items": items[from..end]})
}

impl MockApi {
    /// Serves the API until every client is dropped; the requests are
    /// recorded as they come (a reconcile awaits each answer, so when it
    /// returns, all its requests are in).
    pub fn serve(self) -> (kube::Client, Recorded) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "storage");
        let recorded = Recorded::default();
        let seen = recorded.clone();
        tokio::spawn(async move {
            let mut objects = self.objects;
            let mut status_writes = 0;
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
                let path = record.path.as_str();
                let refused = self.refused_applies.get(path).filter(|_| {
                    record.method == "PATCH" && record.content_type.contains("apply-patch")
                });
                let (group, resource, verb) = rbac_request(&record.method, path, &record.query);
                let forbidden =
                    !granted().contains(&(group.clone(), resource.clone(), verb.clone()));
                let (status, answer) = match record.method.as_str() {
                    _ if forbidden => (
                        StatusCode::FORBIDDEN,
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                          "status": "Failure", "reason": "Forbidden", "code": 403,
                          "message": format!("{resource} is forbidden: the operator's RBAC does not grant {verb} on {resource} in API group \"{group}\"")}),
                    ),
                    _ if refused.is_some() => {
                        let (code, message) = refused.expect("checked");
                        (
                            StatusCode::from_u16(*code).expect("a status code"),
                            json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                              "status": "Failure", "message": message, "code": code}),
                        )
                    }
                    "GET" if self.failed_reads.contains(path) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                          "status": "Failure", "message": "the API server is away", "code": 503}),
                    ),
                    "GET" => match (self.lists.get(path), objects.get(path)) {
                        (Some(items), _) => (
                            StatusCode::OK,
                            list_page(items.iter().collect(), &record.query),
                        ),
                        (None, Some(object)) => (StatusCode::OK, object.clone()),
                        // A collection of stored objects lists them as they are now.
                        (None, None) => {
                            let prefix = format!("{path}/");
                            let items: Vec<&Value> = objects
                                .iter()
                                .filter(|(k, _)| {
                                    k.strip_prefix(&prefix)
                                        .is_some_and(|rest| !rest.contains('/'))
                                })
                                .map(|(_, v)| v)
                                .collect();
                            if items.is_empty() {
                                not_found()
                            } else {
                                (StatusCode::OK, list_page(items, &record.query))
                            }
                        }
                    },
                    "PATCH"
                        if path.ends_with("/status")
                            && self
                                .status_writes_before_failing
                                .is_some_and(|answered| status_writes >= answered) =>
                    {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                              "status": "Failure", "message": "the API server is away", "code": 503}),
                        )
                    }
                    "PATCH" if path.ends_with("/status") => {
                        status_writes += 1;
                        match objects.get_mut(path.trim_end_matches("/status")) {
                            Some(object) => {
                                merge_patch(object, &body);
                                // A write makes a new version, as the API
                                // server's does.
                                let version = &mut object["metadata"]["resourceVersion"];
                                if let Some(v) =
                                    version.as_str().and_then(|v| v.parse::<u64>().ok())
                                {
                                    *version = json!((v + 1).to_string());
                                }
                                (StatusCode::OK, object.clone())
                            }
                            None => not_found(),
                        }
                    }
                    "PATCH" if record.content_type.contains("apply-patch") => {
                        (StatusCode::OK, body)
                    }
                    "PATCH" => match objects.get(path) {
                        Some(object) => (StatusCode::OK, object.clone()),
                        None => not_found(),
                    },
                    "POST" if path.contains("/events") => (StatusCode::CREATED, body),
                    // A create: stored, or refused when the name is taken.
                    "POST" => {
                        let name = body["metadata"]["name"].as_str().unwrap_or_default();
                        let at = format!("{path}/{name}");
                        match objects.entry(at) {
                            std::collections::btree_map::Entry::Occupied(_) => (
                                StatusCode::CONFLICT,
                                json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                  "status": "Failure", "reason": "AlreadyExists",
                                  "message": format!("{name} already exists"), "code": 409}),
                            ),
                            std::collections::btree_map::Entry::Vacant(slot) => {
                                slot.insert(body.clone());
                                (StatusCode::CREATED, body)
                            }
                        }
                    }
                    "DELETE" => (
                        StatusCode::OK,
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                    ),
                    // Unexpected: a server error the scenario's assertions will show.
                    _ => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({"kind": "Status", "apiVersion": "v1",
                          "metadata": {}, "status": "Failure", "message": "unexpected request", "code": 500}),
                    ),
                };
                seen.0.lock().unwrap().push(record);
                send.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
            }
        });
        (client, recorded)
    }
}

/// JSON merge patch (RFC 7396), as the API server applies it: null removes.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch.as_object() {
        Some(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let object = target.as_object_mut().unwrap();
            for (key, value) in fields {
                if value.is_null() {
                    object.remove(key);
                } else {
                    merge_patch(object.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        None => *target = patch.clone(),
    }
}

/// The requests a fake API server received so far.
#[derive(Default, Clone)]
pub struct Recorded(Arc<std::sync::Mutex<Vec<Seen>>>);

impl Recorded {
    /// The requests so far, in order; panics naming any the operator's
    /// RBAC does not grant (the real API server refuses them, whatever the
    /// operator then makes of the refusal).
    pub fn take(&self) -> Vec<Seen> {
        let seen = std::mem::take(&mut *self.0.lock().unwrap());
        let forbidden: Vec<String> = seen
            .iter()
            .filter(|s| !granted().contains(&rbac_request(&s.method, &s.path, &s.query)))
            .map(Seen::line)
            .collect();
        assert!(
            forbidden.is_empty(),
            "requests deploy/10-rbac.yaml and the chart do not grant: {forbidden:#?}"
        );
        seen
    }
}

/// A storage node served in-process until dropped (dropped, it stops
/// soon after; `stop` waits until it has).
pub struct RunningNode {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl RunningNode {
    /// Stops the node and waits until it no longer answers: its listener
    /// closed and its connections, kept alive by clients, shut.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            tokio::time::timeout(std::time::Duration::from_secs(30), served)
                .await
                .expect("a stopped node shuts within 30 s")
                .expect("the node's task ends without a panic")
                .expect("the node serves until stopped");
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The cluster token of in-process test fleets.
pub const CLUSTER_TOKEN: &str = "test-cluster-token";
/// The user token of in-process test gateways.
pub const USER_TOKEN: &str = "test-user-token";

/// How tests call nodes: with the cluster token.
pub fn node_calls() -> redstuff::client::NodeCalls {
    redstuff::client::NodeCalls::new(
        redstuff::auth::TokenSet::single(CLUSTER_TOKEN),
        redstuff::client::Deadlines::default(),
    )
}

/// An HTTP client sending the user token.
pub fn user_http() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {USER_TOKEN}").parse().unwrap(),
    );
    redstuff::http::client_builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// Starts a node named `name` on `dir` owning `shards`.
pub async fn start_node(name: &str, dir: &Path, shards: &BTreeSet<u16>) -> RunningNode {
    start_node_with_fleet(name, dir, shards, None).await
}

/// The same, finding its peers in the fleet map file `fleet` (which may
/// be written after the node starts).
pub async fn start_node_with_fleet(
    name: &str,
    dir: &Path,
    shards: &BTreeSet<u16>,
    fleet: Option<&Path>,
) -> RunningNode {
    start_node_on(name, dir, ShardSource::Fixed(shards.clone()), fleet).await
}

/// The same, owning what `shards` says (a file it re-reads, as a node pod
/// reads its projected ConfigMap).
pub async fn start_node_on(
    name: &str,
    dir: &Path,
    shards: ShardSource,
    fleet: Option<&Path>,
) -> RunningNode {
    start_node_at(
        name,
        dir,
        shards,
        fleet,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
}

/// The same, listening on `addr` (retried for a few seconds while the
/// address is still held by a node just stopped there).
pub async fn start_node_at(
    name: &str,
    dir: &Path,
    shards: ShardSource,
    fleet: Option<&Path>,
    addr: SocketAddr,
) -> RunningNode {
    let config = NodeConfig {
        fleet: fleet.map(Path::to_path_buf),
        ..NodeConfig::new(
            name,
            dir.to_path_buf(),
            shards,
            redstuff::auth::TokenSet::single(CLUSTER_TOKEN),
        )
    };
    let mut tries = 0;
    let node = loop {
        match Node::bind(config.clone(), addr).await {
            Ok(node) => break node,
            Err(e) if tries < 50 => {
                tries += 1;
                tracing::debug!("binding {addr} again: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot bind a node on {addr}: {e}"),
        }
    };
    let url = format!("http://{}", node.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let served = tokio::spawn(node.serve(async move {
        let _ = rx.await;
    }));
    RunningNode {
        url,
        stop: Some(tx),
        served: Some(served),
    }
}

/// A gateway served in-process until dropped, in front of `map`.
pub struct RunningGateway {
    pub url: String,
    _spool: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a gateway for the fleet `map`.
pub async fn start_gateway(map: FleetMap) -> RunningGateway {
    start_gateway_guarded(map, None).await
}

/// Starts a gateway for the fleet `map` with an S3 front's `index` beside
/// it, as `redstuff gateway --s3-listen` has (deletes consult it, and it
/// says which blobs S3 knows).
pub async fn start_gateway_guarded(
    map: FleetMap,
    index: Option<Arc<redstuff::s3::index::Index>>,
) -> RunningGateway {
    let spool = tempfile::tempdir().unwrap();
    let gateway = Gateway::bind(
        GatewayConfig {
            max_blob_bytes: 1 << 30,
            ..GatewayConfig::new(
                FleetSource::Fixed(map),
                spool.path().to_path_buf(),
                redstuff::auth::TokenSet::single(CLUSTER_TOKEN),
                redstuff::auth::TokenSet::single(USER_TOKEN),
            )
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Arc::new(RwLock::new(None)),
    )
    .await
    .unwrap();
    if let Some(index) = index {
        gateway.door().guard_deletes_with(index);
    }
    let url = format!("http://{}", gateway.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(gateway.serve(async move {
        let _ = rx.await;
    }));
    RunningGateway {
        url,
        _spool: spool,
        stop: Some(tx),
    }
}

/// The fleet map of `nodes` (name, url, shards).
pub fn fleet_map(shards: u16, nodes: &[(String, String, BTreeSet<u16>)]) -> FleetMap {
    FleetMap {
        shards,
        segment_size: 1 << 20,
        nodes: nodes
            .iter()
            .map(|(name, url, shards)| MapNode {
                name: name.clone(),
                url: url.clone(),
                shards: shards.clone(),
            })
            .collect(),
    }
}

/// A cluster `media` of `n` in-process nodes (one shard each) and a
/// gateway in front of them.
pub struct TestFleet {
    pub nodes: Vec<RunningNode>,
    pub gateway: RunningGateway,
    pub map: FleetMap,
    _dirs: Vec<tempfile::TempDir>,
}

impl TestFleet {
    /// Starts the nodes and the gateway.
    pub async fn start(n: u16) -> Self {
        let mut dirs = Vec::new();
        let mut nodes = Vec::new();
        let mut entries = Vec::new();
        let map_dir = tempfile::tempdir().unwrap();
        let map_path = map_dir.path().join("fleet.json");
        for i in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let name = format!("media-node-{i}");
            let shards = BTreeSet::from([i]);
            let node = start_node_with_fleet(&name, dir.path(), &shards, Some(&map_path)).await;
            entries.push((name, node.url.clone(), shards));
            nodes.push(node);
            dirs.push(dir);
        }
        let map = fleet_map(n, &entries);
        map.write(&map_path).unwrap();
        dirs.push(map_dir);
        let gateway = start_gateway(map.clone()).await;
        Self {
            nodes,
            gateway,
            map,
            _dirs: dirs,
        }
    }

    /// Stops node `i` and starts it again on the same directory and
    /// address (a process restart: its store opens anew).
    pub async fn restart_node(&mut self, i: usize) {
        self.stop_node(i).await;
        self.start_node_again(i).await;
    }

    /// Stops node `i` and waits until it no longer answers (its address
    /// stays in `nodes[i].url`).
    pub async fn stop_node(&mut self, i: usize) {
        let url = self.nodes[i].url.clone();
        let running = std::mem::replace(
            &mut self.nodes[i],
            RunningNode {
                url,
                stop: None,
                served: None,
            },
        );
        running.stop().await;
    }

    /// Stops node `i`, empties its directory (a volume lost) and starts it
    /// again on it: it owns its shard and holds nothing.
    pub async fn wipe_node(&mut self, i: usize) {
        self.stop_node(i).await;
        for entry in std::fs::read_dir(self._dirs[i].path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
        self.start_node_again(i).await;
    }

    /// Starts node `i`, stopped, again on its directory and address.
    pub async fn start_node_again(&mut self, i: usize) {
        let addr: SocketAddr = self.nodes[i]
            .url
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        let map_path = self._dirs.last().unwrap().path().join("fleet.json");
        self.nodes[i] = start_node_at(
            &format!("media-node-{i}"),
            self._dirs[i].path(),
            ShardSource::Fixed(BTreeSet::from([i as u16])),
            Some(&map_path),
            addr,
        )
        .await;
    }

    /// How the operator reaches these nodes and this gateway.
    pub fn endpoints(&self) -> redstuff::operator::context::Endpoints {
        self.map.nodes.iter().fold(
            redstuff::operator::context::Endpoints::default()
                .with_override("media-gateway", self.gateway.url.clone()),
            |e, n| e.with_override(n.name.clone(), n.url.clone()),
        )
    }

    /// Blob ids each node holds data of (a tombstone alone does not count).
    pub async fn held(&self) -> Vec<BTreeSet<String>> {
        let calls = node_calls();
        let mut held = Vec::new();
        for node in &self.nodes {
            let page = calls.node(&node.url).full_inventory().await.unwrap();
            held.push(
                page.blobs
                    .into_iter()
                    .filter(|b| b.state.claims_data())
                    .map(|b| b.id)
                    .collect(),
            );
        }
        held
    }
}

/// Serves `router` on 127.0.0.1 until the sender returned is dropped;
/// the URL of its `/blob` and that sender.
async fn serve_blob_route(router: axum::Router) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/blob", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    (url, tx)
}

/// Serves `body` at http://127.0.0.1:port/blob until dropped; returns the URL.
pub async fn serve_bytes(body: Vec<u8>) -> (String, tokio::sync::oneshot::Sender<()>) {
    serve_blob_route(axum::Router::new().route(
        "/blob",
        axum::routing::get(move || {
            let body = body.clone();
            async move { body }
        }),
    ))
    .await
}

/// Answers every request at http://127.0.0.1:port/blob with a redirect
/// to `to` until dropped; returns the URL.
pub async fn serve_redirect(to: &'static str) -> (String, tokio::sync::oneshot::Sender<()>) {
    serve_blob_route(axum::Router::new().route(
        "/blob",
        axum::routing::get(move || async move { axum::response::Redirect::temporary(to) }),
    ))
    .await
}

/// Answers every request at http://127.0.0.1:port/blob with `status` and
/// no body until dropped; returns the URL.
pub async fn serve_status(status: u16) -> (String, tokio::sync::oneshot::Sender<()>) {
    let status = StatusCode::from_u16(status).unwrap();
    serve_blob_route(
        axum::Router::new().route("/blob", axum::routing::get(move || async move { status })),
    )
    .await
}

/// The `Range` and `If-Range` headers of a request, when sent.
pub type RangeAsked = (Option<String>, Option<String>);

/// A source served the way a file server serves one: `Accept-Ranges`,
/// an ETag (its `versions` in turn: the n-th request sees
/// `versions[min(n, last)]`), a Range with a matching `If-Range` answered
/// 206 with the rest, and otherwise 200 whole. The n-th response breaks
/// off (the connection cut) after `cuts[n]` bytes of its body when given.
pub struct RangeSource {
    /// The URL of the source.
    pub url: String,
    /// The `Range` and `If-Range` of each request, in order.
    pub asked: Arc<std::sync::Mutex<Vec<RangeAsked>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves `versions` of a source as [`RangeSource`] says, each
/// `(etag, bytes)`; `ranges: false` leaves Accept-Ranges out (and answers
/// every request whole).
pub async fn serve_range_source(
    versions: Vec<(String, Vec<u8>)>,
    cuts: Vec<usize>,
    ranges: bool,
) -> RangeSource {
    use axum::http::{header, HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    let asked: Arc<std::sync::Mutex<Vec<RangeAsked>>> = Default::default();
    let seen = asked.clone();
    let handler = move |headers: HeaderMap| {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &axum::http::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let (range, if_range) = (text(header::RANGE), text(header::IF_RANGE));
        let n = {
            let mut seen = seen.lock().unwrap();
            seen.push((range.clone(), if_range.clone()));
            seen.len() - 1
        };
        let (etag, bytes) = versions[n.min(versions.len() - 1)].clone();
        let from = range
            .as_deref()
            .filter(|_| ranges && if_range.as_deref() == Some(etag.as_str()))
            .and_then(|r| {
                r.strip_prefix("bytes=")?
                    .strip_suffix('-')?
                    .parse::<usize>()
                    .ok()
            });
        let len = bytes.len();
        let (status, part) = match from {
            Some(from) => (StatusCode::PARTIAL_CONTENT, bytes[from..].to_vec()),
            None => (StatusCode::OK, bytes),
        };
        let sent = part.len();
        let cut = cuts.get(n).copied();
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = match cut {
            Some(cut) => vec![
                Ok(bytes::Bytes::from(part[..cut].to_vec())),
                Err(std::io::Error::other("cut")),
            ],
            None => vec![Ok(bytes::Bytes::from(part))],
        };
        // The cut comes a moment after the bytes before it, so that they
        // (and the head) are on their way first.
        let chunks =
            futures_util::StreamExt::then(futures_util::stream::iter(chunks), |chunk| async {
                if chunk.is_err() {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                chunk
            });
        let mut response = (status, axum::body::Body::from_stream(chunks)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_LENGTH, sent.into());
        headers.insert(header::ETAG, etag.parse().unwrap());
        if ranges {
            headers.insert(header::ACCEPT_RANGES, "bytes".parse().unwrap());
        }
        if let Some(from) = from {
            let range = format!("bytes {from}-{}/{len}", len - 1);
            headers.insert(header::CONTENT_RANGE, range.parse().unwrap());
        }
        async move { response }
    };
    let (url, tx) =
        serve_blob_route(axum::Router::new().route("/blob", axum::routing::get(handler))).await;
    RangeSource {
        url,
        asked,
        _stop: tx,
    }
}

/// A source of `len` bytes (ETag "v1", ranges offered) whose first answer
/// breaks off halfway and whose answer to the rest is a 206 naming the
/// rest exactly but sending `len` more bytes than that, chunked.
pub async fn serve_overlong_rest_source(len: usize) -> RangeSource {
    use axum::http::{header, HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    let asked: Arc<std::sync::Mutex<Vec<RangeAsked>>> = Default::default();
    let seen = asked.clone();
    let handler = move |headers: HeaderMap| {
        let range = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        seen.lock().unwrap().push((range.clone(), None));
        let half = len / 2;
        let response = match range {
            None => {
                let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
                    Ok(bytes::Bytes::from(vec![1u8; half])),
                    Err(std::io::Error::other("cut")),
                ];
                // The cut comes after the head and the bytes before it.
                let chunks = futures_util::StreamExt::then(
                    futures_util::stream::iter(chunks),
                    |chunk| async {
                        if chunk.is_err() {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                        chunk
                    },
                );
                let mut response =
                    (StatusCode::OK, axum::body::Body::from_stream(chunks)).into_response();
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, len.into());
                response
            }
            Some(_) => {
                let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
                    vec![Ok(bytes::Bytes::from(vec![2u8; len]))];
                let mut response = (
                    StatusCode::PARTIAL_CONTENT,
                    axum::body::Body::from_stream(futures_util::stream::iter(chunks)),
                )
                    .into_response();
                let range = format!("bytes {half}-{}/{len}", len - 1);
                response
                    .headers_mut()
                    .insert(header::CONTENT_RANGE, range.parse().unwrap());
                response
            }
        };
        let mut response = response;
        let headers = response.headers_mut();
        headers.insert(header::ETAG, "\"v1\"".parse().unwrap());
        headers.insert(header::ACCEPT_RANGES, "bytes".parse().unwrap());
        async move { response }
    };
    let (url, tx) =
        serve_blob_route(axum::Router::new().route("/blob", axum::routing::get(handler))).await;
    RangeSource {
        url,
        asked,
        _stop: tx,
    }
}

/// The spec-hash annotation the operator puts on node pod `index` of
/// `cluster` (with the test image), as a pod it created would carry it.
pub fn spec_hash(cluster: &redstuff::operator::crd::StorageCluster, index: usize) -> String {
    let objects = redstuff::operator::desired::desired_objects(
        cluster,
        &Default::default(),
        usize::from(cluster.spec.nodes).max(index + 1),
        &redstuff::operator::desired::OperatorSettings::new("redstuff:test", "redstuff-system"),
        &redstuff::operator::desired::Credentials {
            cluster: "token".into(),
            users: "user".into(),
            s3: None,
            tls: None,
        },
    );
    redstuff::operator::rollout::recorded_spec_hash(&objects.node_pods[index])
        .expect("the operator marks node pods with their spec hash")
        .to_string()
}

/// The labels the operator gives the objects it makes for `cluster`.
pub fn operator_labels(cluster: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "redstuff",
        "app.kubernetes.io/instance": cluster,
        "app.kubernetes.io/managed-by": "redstuff-operator",
    })
}

/// The token Secrets of cluster `media` as the API server stores them:
/// the test fleet's cluster token and user token.
pub fn token_secrets() -> Vec<(String, Value)> {
    use base64::Engine as _;
    let encode = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    [
        ("media-node-token", CLUSTER_TOKEN),
        ("media-gateway-token", USER_TOKEN),
    ]
    .into_iter()
    .map(|(name, token)| {
        (
            format!("/api/v1/namespaces/storage/secrets/{name}"),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": name, "namespace": "storage",
                                "labels": operator_labels("media")},
                   "data": {"token": encode(token)}}),
        )
    })
    .collect()
}
