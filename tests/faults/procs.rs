//! Real processes for scenarios `redstuff dev` cannot stage: `redstuff
//! node` and `redstuff gateway` processes started one by one (127.0.0.1,
//! port 0), and fakes the test serves in front of them or beside them: a
//! proxy that passes a node's calls through but refuses or holds chosen
//! ones, and a node that trickles every answer a byte at a time.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::stream;
use redstuff::fleet::{FleetMap, MapNode};

/// The cluster token of these scenarios.
pub const CLUSTER_TOKEN: &str = "faults-cluster-token";
/// The user token of their gateways.
pub const USER_TOKEN: &str = "faults-user-token";

/// A child process of ours, killed and reaped on drop.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `redstuff ARGS...`; returns it and the URL its first line names.
pub fn spawn(args: &[&str]) -> (Process, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args(args)
        .env("REDSTUFF_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    // Keep reading, so the process never writes into a closed pipe.
    std::thread::spawn(move || stdout.lines().for_each(drop));
    let event: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("redstuff {args:?} printed {line:?}: {e}"));
    (Process(child), event["url"].as_str().unwrap().to_string())
}

/// Writes `token` to `dir/name`; returns the path.
pub fn token_file(dir: &Path, name: &str, token: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, token).unwrap();
    path.to_str().unwrap().to_string()
}

/// Peak resident memory of a process (VmHWM), in KiB.
pub fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// One `redstuff node` process of a `Cluster`.
pub struct NodeProcess {
    /// Its name (`node-I`, owning shard I).
    pub name: String,
    /// Its API.
    pub url: String,
    /// Its data directory.
    pub data: PathBuf,
    /// The process (ended when this is dropped).
    pub _process: Process,
}

/// `n` node processes, node I owning shard I, sharing a fleet map (1 MiB
/// segments) where they find their peers.
pub struct Cluster {
    /// Data directories, token files and maps.
    pub dir: tempfile::TempDir,
    /// The nodes.
    pub nodes: Vec<NodeProcess>,
    /// The fleet map naming the nodes themselves.
    pub map: PathBuf,
    /// The nodes' deadline of a call to a peer, in seconds.
    pub timeout_secs: String,
}

impl Cluster {
    /// Starts `n` nodes whose calls to peers have a deadline of
    /// `timeout_secs`.
    pub fn start(n: u16, timeout_secs: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tokens = token_file(dir.path(), "cluster-token", CLUSTER_TOKEN);
        token_file(dir.path(), "user-tokens", USER_TOKEN);
        let map = dir.path().join("fleet.json");
        let nodes: Vec<NodeProcess> = (0..n)
            .map(|i| {
                let name = format!("node-{i}");
                let data = dir.path().join(&name);
                let (process, url) = spawn(&[
                    "node",
                    "--name",
                    &name,
                    "--data-dir",
                    data.to_str().unwrap(),
                    "--shards",
                    &i.to_string(),
                    "--token-file",
                    &tokens,
                    "--fleet",
                    map.to_str().unwrap(),
                    "--node-timeout-secs",
                    timeout_secs,
                ]);
                NodeProcess {
                    name,
                    url,
                    data,
                    _process: process,
                }
            })
            .collect();
        let cluster = Self {
            dir,
            nodes,
            map,
            timeout_secs: timeout_secs.to_string(),
        };
        let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
        cluster.fleet_map(&urls).write(&cluster.map).unwrap();
        cluster
    }

    /// The fleet map with node I reached at `urls[I]`.
    pub fn fleet_map(&self, urls: &[String]) -> FleetMap {
        FleetMap {
            shards: self.nodes.len() as u16,
            segment_size: 1 << 20,
            nodes: self
                .nodes
                .iter()
                .zip(urls)
                .enumerate()
                .map(|(i, (node, url))| MapNode {
                    name: node.name.clone(),
                    url: url.clone(),
                    shards: [i as u16].into(),
                })
                .collect(),
        }
    }

    /// Writes a map with node I reached at `urls[I]` as `name`; returns its path.
    pub fn write_map(&self, name: &str, urls: &[String]) -> PathBuf {
        let path = self.dir.path().join(name);
        self.fleet_map(urls).write(&path).unwrap();
        path
    }

    /// Starts a gateway on the map at `map` (the user token required for
    /// every blob route), with `extra` arguments.
    pub fn gateway(&self, map: &Path, extra: &[&str]) -> (Process, String) {
        static GATEWAYS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let spool = self
            .dir
            .path()
            .join(format!("spool-{}", GATEWAYS.fetch_add(1, Ordering::SeqCst)));
        let path = |name: &str| self.dir.path().join(name).to_str().unwrap().to_string();
        let mut args = vec![
            "gateway".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--fleet".into(),
            map.to_str().unwrap().into(),
            "--spool-dir".into(),
            spool.to_str().unwrap().into(),
            "--cluster-token-file".into(),
            path("cluster-token"),
            "--user-tokens-file".into(),
            path("user-tokens"),
            "--node-timeout-secs".into(),
            self.timeout_secs.clone(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spawn(&args)
    }

    /// Nodes whose store holds anything of blob `id` besides a tombstone.
    pub fn holders_of(&self, id: &str) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.data.join("blobs").join(id).exists())
            .map(|n| n.name.clone())
            .collect()
    }
}

/// An HTTP client sending `USER_TOKEN`.
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

/// What a `proxy` refuses (with 503) or holds instead of passing on;
/// proxies sharing one `Refusals` share these switches.
#[derive(Debug, Default)]
pub struct Refusals {
    /// `DELETE /v1/blobs/{id}`: tombstones.
    pub deletes: AtomicBool,
    /// `POST /v1/blobs/{id}/commit`: commit markers.
    pub commits: AtomicBool,
    /// The next `GET /v1/blobs/{id}/metadata` to arrive at any of the
    /// proxies is held: never answered (until its caller goes away).
    pub hold_next_metadata_read: AtomicBool,
    /// How many metadata reads were held so far.
    pub metadata_reads_held: AtomicUsize,
    /// `GET /v1/blobs/{id}/state`: answered late (half a second), so
    /// that a quorum read hears the other nodes first.
    pub late_state_reads: AtomicBool,
}

impl Refusals {
    /// Refuses deletes from now on, or not.
    pub fn deletes(&self, refuse: bool) {
        self.deletes.store(refuse, Ordering::SeqCst);
    }

    /// Refuses commits from now on, or not.
    pub fn commits(&self, refuse: bool) {
        self.commits.store(refuse, Ordering::SeqCst);
    }

    /// Answers state reads late from now on, or not.
    pub fn late_state_reads(&self, late: bool) {
        self.late_state_reads.store(late, Ordering::SeqCst);
    }

    /// Holds the next metadata read, whichever proxy it arrives at.
    pub fn hold_next_metadata_read(&self) {
        self.hold_next_metadata_read.store(true, Ordering::SeqCst);
    }
}

struct ProxyState {
    target: String,
    refusals: Arc<Refusals>,
    http: reqwest::Client,
}

async fn forward(State(proxy): State<Arc<ProxyState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let refused = (parts.method == axum::http::Method::DELETE
        && path.starts_with("/v1/blobs/")
        && proxy.refusals.deletes.load(Ordering::SeqCst))
        || (parts.method == axum::http::Method::POST
            && path.ends_with("/commit")
            && proxy.refusals.commits.load(Ordering::SeqCst));
    if refused {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"error": "refused by the test's proxy"})),
        )
            .into_response();
    }
    if parts.method == axum::http::Method::GET
        && path.ends_with("/metadata")
        && proxy
            .refusals
            .hold_next_metadata_read
            .swap(false, Ordering::SeqCst)
    {
        proxy
            .refusals
            .metadata_reads_held
            .fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    if parts.method == axum::http::Method::GET
        && path.ends_with("/state")
        && proxy.refusals.late_state_reads.load(Ordering::SeqCst)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
    let target = format!(
        "{}{}",
        proxy.target,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut outgoing = proxy.http.request(parts.method.clone(), target).body(body);
    for (name, value) in &parts.headers {
        if name != axum::http::header::HOST {
            outgoing = outgoing.header(name, value);
        }
    }
    match outgoing.send().await {
        Ok(answer) => {
            let status = answer.status();
            let headers = answer.headers().clone();
            let bytes = answer.bytes().await.unwrap_or_default();
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            for (name, value) in &headers {
                if name != axum::http::header::TRANSFER_ENCODING
                    && name != axum::http::header::CONTENT_LENGTH
                {
                    response.headers_mut().insert(name, value.clone());
                }
            }
            response
        }
        Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// Serves a proxy to the node at `target` until the test ends: every call
/// passes through, but those `refusals` names are answered 503 or held.
/// Returns its URL.
pub async fn proxy(target: String, refusals: Arc<Refusals>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(ProxyState {
        target,
        refusals,
        http: redstuff::http::client(),
    });
    let router = Router::new().fallback(forward).with_state(state);
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// Serves a node that reads every request whole, answers 200 at once and
/// then trickles its body a byte every 100 ms for `total`. Returns its URL.
pub async fn trickler(total: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = Router::new().fallback(move |request: Request| async move {
        let _ = axum::body::to_bytes(request.into_body(), 64 << 20).await;
        let bytes = (total.as_millis() / 100) as usize;
        let body = stream::unfold(0usize, move |sent| async move {
            if sent == bytes {
                return None;
            }
            if sent > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let byte = if sent == 0 { b"{" } else { b" " };
            Some((
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(byte)),
                sent + 1,
            ))
        });
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            Body::from_stream(body),
        )
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}
