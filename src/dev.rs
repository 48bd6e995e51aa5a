//! `redstuff dev`: the local adapter. The same `fleet` decisions the
//! operator makes, driving real node processes on loopback: a tiny
//! orchestrator that restarts a node process that dies, sees through the
//! nodes' inventories which (blob, shard) pairs are missing, and has their
//! owners rebuild them from recovery symbols.
//!
//! Files under the data directory:
//!
//! ```text
//! fleet.json            the fleet map (shards, node URLs), read by the gateway and nodes
//! token                 the user token: clients send it to the gateway
//! cluster-token         the cluster token: nodes require it, the gateway and loop send it
//! node-<i>/data/        node i's store
//! node-<i>/shards.json  node i's shards, re-read by the node when it changes
//! node-<i>/node.log     node i's log
//! spool/                the gateway's upload spool
//! s3-credentials        the S3 access key (AWS shared-credentials format, profile redstuff)
//! s3-index.redb         the S3 index: buckets, keys, uploads
//! tls/                  with --tls: the CA (ca.crt, ca.key) and the certificate nodes, the gateway and S3 serve (tls.crt, tls.key)
//! ```

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prometheus::Registry;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::auth::{TokenSet, TokenSource};
use crate::client::{Deadlines, NodeCalls};
use crate::codec::EncodingConfig;
use crate::control::{self, FleetView, NodeAddress, Repairer};
use crate::fleet::{self, Assignment, FleetMap, Health, MapNode, NodeSpec};
use crate::gateway::{FleetSource, Gateway, GatewayConfig, StatusBoard};
use crate::metrics::FleetMetrics;
use crate::node::ShardsFile;

/// How the local fleet is set up.
#[derive(Debug, Clone)]
pub struct DevConfig {
    /// Shard count n.
    pub shards: u16,
    /// Node processes.
    pub nodes: usize,
    /// Where everything lives.
    pub data_dir: PathBuf,
    /// The gateway's address.
    pub gateway_addr: SocketAddr,
    /// Segment size of new blobs.
    pub segment_size: u64,
    /// The `redstuff` executable to start nodes with.
    pub exe: PathBuf,
    /// How often the loop looks at the fleet.
    pub period: Duration,
    /// Repairs in flight at most.
    pub max_concurrent_repairs: usize,
    /// Test only: nodes (by index) that corrupt what they serve.
    pub corrupt_nodes: Vec<usize>,
    /// Test only: nodes (by index) that replay other nodes' valid answers.
    pub replaying_nodes: Vec<usize>,
    /// Seconds nodes rest between two passes of their scrub (0: never).
    pub scrub_interval_secs: u64,
    /// Deadline of every call to a node, in seconds.
    pub node_timeout_secs: f64,
    /// Seconds after which nodes remove uploads that were never committed.
    pub staged_ttl_secs: u64,
    /// Whether the gateway serves reads without a user token.
    pub anonymous_reads: bool,
    /// Uploads the gateway handles at once.
    pub max_uploads: usize,
    /// How long an upload past `max_uploads` waits for a slot.
    pub upload_wait: std::time::Duration,
    /// How long the pairs of an upload its client cut off stay for a retry.
    pub cut_upload_kept: std::time::Duration,
    /// Bytes of segments the gateway's uploads may hold in memory together.
    pub upload_memory_bytes: u64,
    /// Bytes of rows the gateway's reads may hold in memory together.
    pub read_memory_bytes: u64,
    /// How long a read waits for its first segment's share of that memory.
    pub read_wait: std::time::Duration,
    /// How long a response of the gateway or S3 may make no progress
    /// before its connection ends.
    pub client_stall: std::time::Duration,
    /// The S3 front, if any.
    pub s3: Option<DevS3>,
    /// Whether nodes serve their API over TLS, with a certificate from a
    /// CA kept under the data directory (`tls/`).
    pub tls: bool,
}

/// How `redstuff dev` serves S3.
#[derive(Debug, Clone)]
pub struct DevS3 {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The access key (from the environment); else the data directory's,
    /// else generated.
    pub keys: Option<crate::s3::credentials::S3Keys>,
    /// How long a blob no key refers to stays.
    pub collect_after: Duration,
    /// How old an unfinished multipart upload gets before it is aborted.
    pub upload_max_age: Duration,
    /// The index in PostgreSQL at this URL instead of DATA_DIR/s3-index.redb.
    pub index_postgres: Option<String>,
    /// Serve virtual-hosted style (BUCKET.DOMAIN) under this base domain too.
    pub domain: Option<String>,
}

/// Where a started `redstuff dev` fleet is reached.
#[derive(Debug, Clone)]
pub struct DevEndpoints {
    /// The gateway's URL.
    pub gateway: String,
    /// The user token's file.
    pub token: PathBuf,
    /// The S3 endpoint's URL, its access key and the credentials file.
    pub s3: Option<(String, crate::s3::credentials::S3Keys, PathBuf)>,
    /// With `tls`: the CA clients check the gateway and S3 against.
    pub ca: Option<PathBuf>,
}

impl DevConfig {
    /// A 7-shard fleet of 7 nodes under `data_dir`, started with `exe`, with
    /// the defaults of `redstuff dev` (gateway on any port).
    pub fn new(data_dir: PathBuf, exe: PathBuf) -> Self {
        Self {
            shards: 7,
            nodes: 7,
            data_dir,
            gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            segment_size: crate::codec::DEFAULT_SEGMENT_SIZE,
            exe,
            period: Duration::from_millis(500),
            max_concurrent_repairs: 4,
            corrupt_nodes: Vec::new(),
            replaying_nodes: Vec::new(),
            scrub_interval_secs: 60,
            node_timeout_secs: 5.0,
            staged_ttl_secs: 900,
            anonymous_reads: false,
            max_uploads: 8,
            upload_wait: crate::gateway::upload_slots::DEFAULT_UPLOAD_WAIT,
            cut_upload_kept: crate::gateway::DEFAULT_CUT_UPLOAD_KEPT,
            upload_memory_bytes: crate::client::memory_budget::DEFAULT_UPLOAD_MEMORY,
            read_memory_bytes: crate::client::memory_budget::DEFAULT_READ_MEMORY,
            read_wait: crate::gateway::DEFAULT_READ_WAIT,
            client_stall: crate::stalled_clients::DEFAULT_CLIENT_STALL,
            s3: None,
            tls: false,
        }
    }
}

/// An HTTP client that sends the user token of a `redstuff dev` fleet
/// (from its token file) with every request, trusts the fleet's CA
/// (`ca`, its file) when the fleet serves TLS, and gives a call up after
/// [`BENCH_READ_TIMEOUT`] without a byte read (the benches use it).
pub fn authorized_client(token_path: &Path, ca: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let text = std::fs::read_to_string(token_path)
        .with_context(|| format!("cannot read {}", token_path.display()))?;
    let token = crate::auth::parse_tokens(&text)
        .into_iter()
        .next()
        .context("the token file is empty")?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    let ca = crate::tls::TrustedCa::from_optional_file(ca)?;
    Ok(crate::http::client_builder_trusting(ca.as_ref())
        .default_headers(headers)
        // A gateway that stops answering ends the call, not the bench (it
        // would wait for ever, a node it stopped left stopped).
        .connect_timeout(std::time::Duration::from_secs(10))
        .read_timeout(BENCH_READ_TIMEOUT)
        .build()?)
}

/// How long a bench's call may read nothing from the gateway.
pub const BENCH_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Where `redstuff dev --tls` keeps its CA's certificate under its data
/// directory.
pub fn ca_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("ca.crt")
}

/// Where `redstuff dev` keeps the user token under its data directory.
pub fn user_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("token")
}

/// One node as `redstuff status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Name.
    pub name: String,
    /// Process id, while running.
    pub pid: Option<u32>,
    /// Base URL.
    pub address: String,
    /// Data directory.
    pub data_dir: String,
    /// Shards owned.
    pub shards: Vec<u16>,
    /// `ready`, `not answering` (its process runs, but it did not answer
    /// within its deadline: stopped, hung or partitioned) or `down`.
    pub state: String,
    /// Times the loop restarted it.
    pub restarts: u32,
    /// Repairs on it that failed in a row since its last complete one,
    /// when its last failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_repairs: Option<FailingRepairs>,
}

/// Repairs on one node that failed in a row, as `redstuff status` says.
#[derive(Debug, Clone, Serialize)]
pub struct FailingRepairs {
    /// How many.
    pub count: u64,
    /// The blob of the last.
    pub blob: String,
    /// Why the last failed.
    pub why: String,
}

/// One blob as `redstuff status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BlobStatus {
    /// Blob id.
    pub id: String,
    /// Length in bytes.
    pub size: u64,
    /// Health.
    pub health: Health,
    /// Shards holding a complete pair of every segment.
    pub shards_complete: usize,
    /// Whether a repair of it is in flight.
    pub repairing: bool,
    /// Bytes moved between nodes by completed repairs of this blob.
    pub repair_bytes: u64,
    /// Sliver pairs (per segment) rebuilt by those repairs.
    pub pairs_rebuilt: u64,
}

/// The whole status.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    /// Shard count.
    pub shards: u16,
    /// f.
    pub fault_tolerance: usize,
    /// Whole nodes that may be lost at once without losing a blob.
    pub tolerated_node_losses: usize,
    /// When the loop began reading the inventories this status shows,
    /// in milliseconds since the Unix epoch: anything written or deleted
    /// later may not show yet.
    pub observed_at_ms: u64,
    /// Nodes.
    pub nodes: Vec<NodeStatus>,
    /// Blobs.
    pub blobs: Vec<BlobStatus>,
}

struct NodeProcess {
    name: String,
    dir: PathBuf,
    url: String,
    port: u16,
    child: Option<Child>,
    restarts: u32,
    corrupt: bool,
    replaying: bool,
    scrub_interval_secs: u64,
    data_root: PathBuf,
    node_timeout_secs: f64,
    staged_ttl_secs: u64,
    tls: Option<crate::tls::LocalTlsFiles>,
}

impl NodeProcess {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }
}

/// Starts the fleet and runs the loop until `shutdown` completes; then
/// stops every child. `ready` learns where the fleet is reached.
pub async fn run(
    config: DevConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(&DevEndpoints),
) -> anyhow::Result<()> {
    let encoding = EncodingConfig::new(config.shards)?;
    anyhow::ensure!(config.nodes >= 1, "at least one node is needed");
    anyhow::ensure!(
        config.nodes <= usize::from(config.shards),
        "{} nodes for {} shards: every node must hold at least one shard",
        config.nodes,
        config.shards
    );
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let fleet_path = config.data_dir.join("fleet.json");
    let previous_map = FleetMap::read(&fleet_path).ok();
    let cluster_token_path = config.data_dir.join("cluster-token");
    crate::auth::ensure_token_file(&cluster_token_path)?;
    let user_token_path = user_token_path(&config.data_dir);
    crate::auth::ensure_token_file(&user_token_path)?;
    let cluster_tokens = Arc::new(TokenSet::load(TokenSource::File(cluster_token_path))?);
    let user_tokens = Arc::new(TokenSet::load(TokenSource::File(user_token_path.clone()))?);
    let deadlines = Deadlines::from_secs(config.node_timeout_secs);
    let tls = config
        .tls
        .then(|| {
            let mut listening = vec![config.gateway_addr.ip()];
            listening.extend(config.s3.as_ref().map(|s3| s3.addr.ip()));
            crate::tls::ensure_local_files(&config.data_dir.join("tls"), &listening)
        })
        .transpose()?;
    let nodes_ca = tls
        .as_ref()
        .map(|files| crate::tls::TrustedCa::from_pem_file(&files.ca_cert))
        .transpose()?;

    let specs: Vec<NodeSpec> = (0..config.nodes)
        .map(|i| NodeSpec {
            name: format!("node-{i}"),
            domain: format!("node-{i}"),
        })
        .collect();
    let previous: Assignment = previous_map
        .iter()
        .flat_map(|m| {
            m.nodes
                .iter()
                .flat_map(|n| n.shards.iter().map(|s| (*s, n.name.clone())))
        })
        .collect();
    let assignment = fleet::assign(config.shards, &specs, &previous);

    let mut nodes = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let dir = config.data_dir.join(&spec.name);
        std::fs::create_dir_all(&dir)?;
        let shards = fleet::shards_of(&assignment, &spec.name);
        ShardsFile { shards }.write(&dir.join("shards.json"))?;
        let port = previous_map
            .as_ref()
            .and_then(|m| m.nodes.iter().find(|n| n.name == spec.name))
            .and_then(|n| n.url.rsplit(':').next()?.parse().ok())
            .unwrap_or(0);
        let mut node = NodeProcess {
            name: spec.name.clone(),
            dir,
            url: String::new(),
            port,
            child: None,
            restarts: 0,
            corrupt: config.corrupt_nodes.contains(&i),
            replaying: config.replaying_nodes.contains(&i),
            scrub_interval_secs: config.scrub_interval_secs,
            data_root: config.data_dir.clone(),
            node_timeout_secs: config.node_timeout_secs,
            staged_ttl_secs: config.staged_ttl_secs,
            tls: tls.clone(),
        };
        if let Err(e) = start_node(&config.exe, &mut node).await {
            if port != 0 {
                // The old port may be taken now: take any.
                node.port = 0;
                start_node(&config.exe, &mut node).await?;
            } else {
                return Err(e);
            }
        }
        nodes.push(node);
    }
    let map = FleetMap {
        shards: config.shards,
        segment_size: config.segment_size,
        nodes: nodes
            .iter()
            .map(|n| MapNode {
                name: n.name.clone(),
                url: n.url.clone(),
                shards: fleet::shards_of(&assignment, &n.name),
            })
            .collect(),
    };
    map.write(&fleet_path)?;

    let registry = Registry::new();
    let metrics = FleetMetrics::new(&registry);
    // The one gateway runs in this process: available while it runs; there
    // are no Kubernetes objects to keep in sync.
    metrics.gateways_available.set(1);
    metrics.synced.set(1);
    let status: StatusBoard = Arc::new(RwLock::new(None));
    let gateway_config = GatewayConfig {
        max_blob_bytes: u64::MAX,
        anonymous_reads: config.anonymous_reads,
        deadlines,
        max_uploads: config.max_uploads,
        upload_wait: config.upload_wait,
        cut_upload_kept: config.cut_upload_kept,
        upload_memory_bytes: config.upload_memory_bytes,
        read_memory_bytes: config.read_memory_bytes,
        read_wait: config.read_wait,
        client_stall: config.client_stall,
        nodes_ca: nodes_ca.clone(),
        tls: tls
            .as_ref()
            .map(|files| crate::tls::ServingCert::load(&files.cert, &files.key))
            .transpose()?,
        ..GatewayConfig::new(
            FleetSource::File(fleet_path.clone()),
            config.data_dir.join("spool"),
            cluster_tokens.clone(),
            user_tokens,
        )
    };
    let gateway = Gateway::bind(gateway_config, config.gateway_addr, status.clone())
        .await?
        .with_extra_metrics(registry);
    let gateway_url = gateway.url();
    let (stop_gateway, gateway_stopped) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut s3_endpoint = None;
    let mut s3_task = None;
    if let Some(s3) = &config.s3 {
        let credentials = config.data_dir.join("s3-credentials");
        let keys = crate::s3::credentials::ensure(&credentials, s3.keys.clone())?;
        let server = crate::s3::S3Server::bind(
            crate::s3::S3Config {
                listen: s3.addr,
                index: match &s3.index_postgres {
                    Some(url) => crate::s3::IndexLocation::Postgres(url.clone()),
                    None => crate::s3::IndexLocation::File(config.data_dir.join("s3-index.redb")),
                },
                // The file holds the `redstuff` profile too.
                keys: vec![crate::s3::keyring::KeySource::CredentialsFile(
                    credentials.clone(),
                )],
                keys_reload_every: crate::s3::keyring::RELOAD_EVERY,
                domain: s3.domain.clone(),
                collect_after: s3.collect_after,
                upload_max_age: s3.upload_max_age,
                collect_every: s3
                    .collect_after
                    .clamp(Duration::from_millis(200), Duration::from_secs(10)),
            },
            gateway.door(),
        )
        .await?;
        s3_endpoint = Some((server.url(), keys, credentials));
        s3_task = Some(tokio::spawn(server.serve(stopped(gateway_stopped.clone()))));
    }
    let gateway_task = tokio::spawn(gateway.serve(stopped(gateway_stopped.clone())));
    ready(&DevEndpoints {
        gateway: gateway_url,
        token: user_token_path.clone(),
        s3: s3_endpoint,
        ca: tls.as_ref().map(|files| files.ca_cert.clone()),
    });

    let calls = NodeCalls::new(cluster_tokens, deadlines).trusting(nodes_ca.as_ref());
    let mut fleet_loop = FleetLoop {
        config: config.clone(),
        encoding,
        nodes,
        specs,
        assignment,
        repairer: Repairer::new(calls.clone(), metrics.clone()),
        calls,
        metrics,
        status,
        first_missing: HashMap::new(),
        observer: control::Observer::new(),
    };
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(config.period);
    loop {
        // A signal wins over a tick due at the same time: nodes exiting
        // with the terminal's Ctrl-C are not started again first.
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = tick.tick() => fleet_loop.step().await,
        }
    }
    let _ = stop_gateway.send(true);
    let _ = gateway_task.await;
    if let Some(task) = s3_task {
        let _ = task.await;
    }
    fleet_loop.stop_all().await;
    Ok(())
}

async fn start_node(exe: &Path, node: &mut NodeProcess) -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.dir.join("node.log"))?;
    let mut command = Command::new(exe);
    command
        .arg("node")
        .arg("--name")
        .arg(&node.name)
        .arg("--data-dir")
        .arg(node.dir.join("data"))
        .arg("--shards-file")
        .arg(node.dir.join("shards.json"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", node.port))
        .arg("--scrub-interval-secs")
        .arg(node.scrub_interval_secs.to_string())
        .arg("--token-file")
        .arg(node.data_root.join("cluster-token"))
        .arg("--fleet")
        .arg(node.data_root.join("fleet.json"))
        .arg("--node-timeout-secs")
        .arg(node.node_timeout_secs.to_string())
        .arg("--staged-ttl-secs")
        .arg(node.staged_ttl_secs.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    if node.corrupt {
        command.arg("--test-corrupt-reads");
    }
    if node.replaying {
        command.arg("--test-replay-reads");
    }
    if let Some(tls) = &node.tls {
        command
            .arg("--tls-cert")
            .arg(&tls.cert)
            .arg("--tls-key")
            .arg(&tls.key)
            .arg("--tls-ca")
            .arg(&tls.ca_cert);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {} ({})", node.name, exe.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .map_err(|_| anyhow::anyhow!("{} did not report its address in time", node.name))??
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} exited before listening; see {}",
                node.name,
                node.dir.join("node.log").display()
            )
        })?;
    let event: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("{} printed {line:?} instead of its address", node.name))?;
    let url = event["url"]
        .as_str()
        .context("no url in the node's first line")?
        .to_string();
    node.port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    node.url = url;
    node.child = Some(child);
    Ok(())
}

/// Writes `url` as node `name`'s address into the fleet map at `path`
/// (read again by the gateway and the nodes when it changes).
fn moved_in_map(path: &Path, name: &str, url: &str) -> anyhow::Result<()> {
    let mut map = FleetMap::read(path)?;
    let node = map
        .nodes
        .iter_mut()
        .find(|n| n.name == name)
        .with_context(|| format!("{name} is not in the fleet map"))?;
    node.url = url.to_string();
    map.write(path)?;
    Ok(())
}

struct FleetLoop {
    config: DevConfig,
    encoding: EncodingConfig,
    nodes: Vec<NodeProcess>,
    specs: Vec<NodeSpec>,
    assignment: Assignment,
    calls: NodeCalls,
    metrics: FleetMetrics,
    status: StatusBoard,
    repairer: Repairer,
    /// When a (blob, shard) was first seen missing, for the repair delay.
    first_missing: HashMap<(String, u16), Instant>,
    /// Reads the view, whole or only what changed.
    observer: control::Observer,
}

impl FleetLoop {
    async fn step(&mut self) {
        self.restart_dead().await;
        let addresses: Vec<NodeAddress> = self
            .nodes
            .iter()
            .map(|n| NodeAddress {
                name: n.name.clone(),
                url: n.url.clone(),
                shards: fleet::shards_of(&self.assignment, &n.name),
            })
            .collect();
        let observed_at_ms = crate::blob_state::now_nanos() / 1_000_000;
        let read_at = Instant::now();
        let (view, _) = self
            .observer
            .observe(&self.calls, &addresses, &self.metrics)
            .await;
        view.publish(&self.encoding, &self.metrics);
        control::spread_markers(&self.calls, &view.markers, &addresses, &self.metrics, 1000).await;
        control::release_strays(
            &self.calls,
            &view.releases(&self.assignment),
            &addresses,
            &self.metrics,
            1000,
        )
        .await;

        let mut missing_now = HashSet::new();
        for (id, blob) in &view.blobs {
            for shard in 0..self.encoding.n() as u16 {
                if !blob.complete_shards.contains(&shard) {
                    missing_now.insert((id.clone(), shard));
                }
            }
        }
        let now = Instant::now();
        self.first_missing
            .retain(|key, _| missing_now.contains(key));
        for key in missing_now {
            self.first_missing.entry(key).or_insert(now);
        }

        let started = self.repairer.run_plan(
            &self.encoding,
            &view,
            &self.assignment,
            &addresses,
            self.config.max_concurrent_repairs,
            read_at,
        );
        for control::StartedRepair { task, at } in started {
            for shard in &task.shards {
                if let Some(since) = self.first_missing.get(&(task.blob.clone(), *shard)) {
                    self.metrics
                        .repair_start_delay
                        .observe(at.saturating_duration_since(*since).as_secs_f64());
                }
            }
        }
        self.publish_status(&view, observed_at_ms);
    }

    async fn restart_dead(&mut self) {
        for node in &mut self.nodes {
            let exited = match node.child.as_mut() {
                Some(child) => match child.try_wait() {
                    Ok(Some(status)) => Some(status.to_string()),
                    Ok(None) => None,
                    Err(e) => Some(e.to_string()),
                },
                None => Some("not running".to_string()),
            };
            let Some(reason) = exited else { continue };
            tracing::warn!(node = %node.name, "node process exited ({reason}); restarting it");
            node.child = None;
            node.restarts += 1;
            let before = node.url.clone();
            let mut started = start_node(&self.config.exe, node).await;
            if started.is_err() && node.port != 0 {
                // Its port was taken meanwhile: any other, and the map
                // tells the gateway and the peers.
                tracing::warn!(node = %node.name, port = node.port, "restart on its port failed; taking another");
                node.port = 0;
                started = start_node(&self.config.exe, node).await;
            }
            match started {
                Err(e) => tracing::error!(node = %node.name, "restart failed: {e:#}"),
                Ok(()) if node.url != before => {
                    let fleet = self.config.data_dir.join("fleet.json");
                    if let Err(e) = moved_in_map(&fleet, &node.name, &node.url) {
                        tracing::error!(node = %node.name, "cannot write its new address into {}: {e:#}", fleet.display());
                    }
                }
                Ok(()) => {}
            }
        }
    }

    fn publish_status(&self, view: &FleetView, observed_at_ms: u64) {
        let ready = &view.ready;
        let failing = self.repairer.failing();
        let status = FleetStatus {
            shards: self.config.shards,
            fault_tolerance: self.encoding.f(),
            tolerated_node_losses: fleet::tolerated_domain_losses(
                &self.assignment,
                &self.specs,
                self.encoding.f(),
            ),
            observed_at_ms,
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeStatus {
                    name: n.name.clone(),
                    pid: n.pid(),
                    address: n.url.clone(),
                    data_dir: n.dir.join("data").display().to_string(),
                    shards: self
                        .assignment
                        .iter()
                        .filter(|(_, o)| **o == n.name)
                        .map(|(s, _)| *s)
                        .collect(),
                    state: if ready.contains(&n.name) {
                        "ready".into()
                    } else if n.child.is_none() {
                        "down".into()
                    } else {
                        "not answering".into()
                    },
                    restarts: n.restarts,
                    failing_repairs: failing.iter().find(|f| f.node == n.name).map(|f| {
                        FailingRepairs {
                            count: f.count,
                            blob: f.blob.clone(),
                            why: f.why.clone(),
                        }
                    }),
                })
                .collect(),
            blobs: view
                .blobs
                .iter()
                .map(|(id, blob)| {
                    let totals = self.repairer.totals(id);
                    BlobStatus {
                        id: id.clone(),
                        size: blob.size,
                        health: view.health_of(&self.encoding, blob),
                        shards_complete: blob.complete_shards.len(),
                        repairing: self.repairer.is_repairing(id),
                        repair_bytes: totals.bytes,
                        pairs_rebuilt: totals.pairs,
                    }
                })
                .collect(),
        };
        *self.status.write().expect("not poisoned") =
            Some(serde_json::to_value(status).expect("serializable"));
    }

    async fn stop_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(pid) = node.pid() {
                // SAFETY: plain syscall on a child's pid that this process started.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                if tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
    }
}
