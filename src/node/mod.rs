//! `redstuff node`: one storage node. An HTTP API (axum) over its durable
//! sliver store; it verifies everything it receives against the blob's
//! metadata before it keeps it, keeps the write and delete markers of
//! every blob, serves slivers and recovery symbols, and rebuilds its own
//! sliver pairs from peers (found through its own fleet map) when told to.
//! Every route but health and metrics needs the cluster token.

mod api;
mod blobs;
mod idle_writes;
mod inventory;
mod inventory_changes;
mod layouts;
mod metadata_cache;
pub mod ownership;
mod repair;
mod slivers;
pub mod stall_watch;
mod uploads;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::Registry;
use tokio::net::TcpListener;

use crate::auth::TokenSet;
use crate::client::{Deadlines, NodeCalls};
use crate::fleet::MapFile;
use crate::metrics::NodeMetrics;
use crate::store::{Housekeeping, ScrubFinding, SliverStore};
use metadata_cache::MetadataCache;
pub use ownership::{Ownership, ShardSource, ShardsFile};

/// Test only: the lies a node can tell, to prove the others see through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// Flips a bit in every sliver and symbol it serves.
    FlipBits,
    /// Refuses every metadata stage as deleted (410), while its state
    /// reports no tombstone.
    RefuseStages,
    /// Serves, for whatever is asked, the valid sliver or symbol of the
    /// next shard's holder (fetched from it): a replay of another node's
    /// honest answer, claiming another shard's index.
    Replay,
}

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name (in inventories, metrics and errors).
    pub name: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where ownership of shards comes from.
    pub shards: ShardSource,
    /// The fleet map, where the node finds its peers for repairs.
    pub fleet: Option<PathBuf>,
    /// The cluster tokens: required from callers, the first sent to peers.
    pub tokens: Arc<TokenSet>,
    /// Deadlines of calls to peers.
    pub deadlines: Deadlines,
    /// Capacity of the store in bytes, if capped.
    pub capacity: Option<u64>,
    /// Largest metadata accepted, in bytes.
    pub max_metadata_bytes: u64,
    /// Bytes of parsed metadata kept in memory.
    pub metadata_cache_bytes: u64,
    /// Test only: how this node lies about what it serves.
    pub lie: Option<Lie>,
    /// How long a node rests between two passes re-reading and checking
    /// every stored file; `None`: never.
    pub scrub_interval: Option<Duration>,
    /// Bytes per second a scrub reads at most; `None`: no limit.
    pub scrub_max_bytes_per_sec: Option<u64>,
    /// How long abandoned uploads and quarantined files are kept.
    pub housekeeping: Housekeeping,
    /// Serve the API over TLS with this certificate (the metrics
    /// listener stays plain HTTP, for probes and scrapers).
    pub tls: Option<Arc<crate::tls::ServingCert>>,
    /// The fleet's CA, trusted for calls to peers serving TLS.
    pub peers_ca: Option<crate::tls::TrustedCa>,
}

impl NodeConfig {
    /// A node named `name` on `data_dir` owning `shards`, with `tokens` and
    /// every other setting at its default.
    pub fn new(name: &str, data_dir: PathBuf, shards: ShardSource, tokens: Arc<TokenSet>) -> Self {
        Self {
            name: name.to_string(),
            data_dir,
            shards,
            fleet: None,
            tokens,
            deadlines: Deadlines::default(),
            capacity: None,
            max_metadata_bytes: 256 << 20,
            metadata_cache_bytes: 64 << 20,
            lie: None,
            scrub_interval: None,
            scrub_max_bytes_per_sec: None,
            housekeeping: Housekeeping::default(),
            tls: None,
            peers_ca: None,
        }
    }
}

/// Everything the handlers share.
pub struct NodeState {
    name: String,
    store: SliverStore,
    ownership: Arc<Ownership>,
    fleet: Option<MapFile>,
    registry: Registry,
    metrics: NodeMetrics,
    lie: Option<Lie>,
    peers: NodeCalls,
    metadata: MetadataCache,
    /// Blob layouts for the inventory.
    layouts: layouts::BlobLayouts,
    max_metadata_bytes: u64,
    /// The store operations requests are running (a stalled disk).
    stalls: Arc<stall_watch::StallWatch>,
    /// Whether a scrape's reading of the disk's figures is under way.
    disk_figures_reading: std::sync::atomic::AtomicBool,
}

/// A node bound to its address, ready to serve.
pub struct Node {
    listener: TcpListener,
    router: axum::Router,
    state: Arc<NodeState>,
    tokens: Arc<TokenSet>,
    metrics_listener: Option<TcpListener>,
    scrub_interval: Option<Duration>,
    scrub_max_bytes_per_sec: Option<u64>,
    housekeeping: Housekeeping,
    tls: Option<Arc<crate::tls::ServingCert>>,
}

impl Node {
    /// Opens the store, loads ownership and binds `addr` (port 0: any).
    pub async fn bind(config: NodeConfig, addr: SocketAddr) -> anyhow::Result<Self> {
        let store = SliverStore::open(&config.data_dir, config.capacity).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the store at {}: {e}",
                config.data_dir.display()
            )
        })?;
        let ownership = Arc::new(Ownership::load(config.shards)?);
        let registry = Registry::new();
        let metrics = NodeMetrics::new(&registry);
        let state = Arc::new(NodeState {
            name: config.name,
            store,
            ownership,
            fleet: config.fleet.map(MapFile::new),
            registry,
            metrics,
            lie: config.lie,
            peers: NodeCalls::new(config.tokens.clone(), config.deadlines)
                .trusting(config.peers_ca.as_ref()),
            metadata: MetadataCache::new(config.metadata_cache_bytes),
            layouts: layouts::BlobLayouts::new(),
            max_metadata_bytes: config.max_metadata_bytes,
            stalls: Arc::default(),
            disk_figures_reading: Default::default(),
        });
        let listener = crate::listen::bind(addr).await?;
        Ok(Self {
            router: api::router(state.clone(), config.tokens.clone()),
            listener,
            state,
            tokens: config.tokens,
            metrics_listener: None,
            scrub_interval: config.scrub_interval,
            scrub_max_bytes_per_sec: config.scrub_max_bytes_per_sec,
            housekeeping: config.housekeeping,
            tls: config.tls,
        })
    }

    /// Also serves /metrics, /healthz and /readyz (no token needed) on
    /// `addr`: a port a NetworkPolicy can leave open to scrapers while the
    /// API's is closed.
    pub async fn with_metrics_listener(mut self, addr: SocketAddr) -> anyhow::Result<Self> {
        self.metrics_listener = Some(crate::listen::bind(addr).await?);
        Ok(self)
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// Its API's URL: `https://` when it serves TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr())
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.state
            .ownership
            .clone()
            .watch(Duration::from_millis(250));
        self.tokens.watch(Duration::from_secs(1));
        if let Some(period) = self.scrub_interval {
            scrub_periodically(self.state.clone(), period, self.scrub_max_bytes_per_sec);
        }
        keep_house(self.state.clone(), self.housekeeping);
        if let Some(listener) = self.metrics_listener {
            crate::listen::serve_metrics_in_background(
                listener,
                api::open_router(self.state.clone()),
            );
        }
        let metrics = crate::tls::TlsMetrics {
            certificate_expiry: self.state.metrics.tls_certificate_expiry.clone(),
            handshakes: crate::tls::HandshakeCounters {
                failed: self.state.metrics.tls_handshake_failures.clone(),
                abandoned: self.state.metrics.tls_handshakes_abandoned.clone(),
            },
        };
        crate::tls::serve(
            self.listener,
            self.router,
            self.tls,
            crate::stalled_clients::DEFAULT_CLIENT_STALL,
            metrics,
            shutdown,
        )
        .await?;
        Ok(())
    }
}

/// Re-reads every stored file, `period` after the last pass ended (a
/// pass longer than the period never runs back to back with the next),
/// at most `max_bytes_per_sec`, so bitrot is found (and the file
/// quarantined, hence reported missing and repaired) even where no client
/// reads it.
fn scrub_periodically(state: Arc<NodeState>, period: Duration, max_bytes_per_sec: Option<u64>) {
    tokio::spawn(async move {
        loop {
            let deadline = crate::store::scrub_deadline(
                SystemTime::now(),
                period,
                state.store.used_bytes(),
                max_bytes_per_sec,
            );
            let deadline_secs = deadline
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            state
                .metrics
                .scrub_deadline
                .set(i64::try_from(deadline_secs).unwrap_or(i64::MAX));
            tokio::time::sleep(period).await;
            let worker = state.clone();
            let pass = move || {
                worker.store.scrub(max_bytes_per_sec, |finding, path| {
                    count_scrub_finding(&worker, finding, path)
                })
            };
            match tokio::task::spawn_blocking(pass).await {
                Ok(Ok(report)) => {
                    state
                        .metrics
                        .scrub_completed
                        .set(crate::blob_state::now_nanos() as i64 / 1_000_000_000);
                    tracing::info!(node = %state.name, checked = report.checked, corrupt = report.corrupt, unreadable = report.unreadable, "scrub pass ended");
                }
                Ok(Err(e)) => tracing::warn!(node = %state.name, "scrub failed: {e}"),
                Err(e) => tracing::warn!(node = %state.name, "scrub task failed: {e}"),
            }
        }
    });
}

/// Counts and logs a file the scrub found failing (quarantined, or a
/// marker kept as lost), the moment it does.
fn count_scrub_finding(state: &NodeState, finding: ScrubFinding, path: &std::path::Path) {
    let m = &state.metrics;
    match finding {
        ScrubFinding::Corrupt => {
            tracing::warn!(node = %state.name, file = %path.display(), "scrub found a corrupt file (quarantined; a marker is kept, lost)");
            m.corruption_detected.with_label_values(&["scrub"]).inc();
        }
        ScrubFinding::Unreadable => {
            tracing::warn!(node = %state.name, file = %path.display(), "scrub could not read a file (quarantined; a marker is kept, lost)");
            m.io_errors.with_label_values(&["scrub"]).inc();
        }
    }
}

/// How long a node keeps spare pair buffers nobody uses (as long as the
/// allocator keeps freed memory).
const IDLE_SPARES_KEPT: Duration = Duration::from_secs(10);

/// Collects abandoned uploads, purges old quarantined files and frees idle
/// pair buffers, checking a few times per TTL.
fn keep_house(state: Arc<NodeState>, housekeeping: Housekeeping) {
    tokio::spawn(async move {
        let period = (housekeeping.staged_ttl / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut tick = tokio::time::interval(period);
        // A round that outlasts the period (peers slow to answer) is not
        // followed by a burst of catch-up rounds.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ttl = housekeeping.staged_ttl;
        loop {
            tick.tick().await;
            let worker = state.clone();
            let idle = tokio::task::spawn_blocking(move || {
                worker.store.idle_staged(ttl, SystemTime::now())
            })
            .await;
            let fates = match idle {
                Ok(Ok(idle)) if idle.is_empty() => Vec::new(),
                Ok(Ok(idle)) => idle_writes::fates(&state, idle).await,
                Ok(Err(e)) => {
                    tracing::warn!(node = %state.name, "listing idle staged writes failed: {e}");
                    Vec::new()
                }
                Err(e) => {
                    tracing::warn!(node = %state.name, "listing idle staged writes failed: {e}");
                    Vec::new()
                }
            };
            let worker = state.clone();
            let done = tokio::task::spawn_blocking(move || {
                let now = SystemTime::now();
                let settled = idle_writes::settle(&worker, &fates, ttl, now);
                worker
                    .metrics
                    .staged_commits_adopted
                    .inc_by(settled.adopted as u64);
                worker.metrics.staged_waiting.set(settled.waiting as i64);
                let collected = settled.collected;
                let leftovers = worker.store.collect_delete_leftovers(now)?;
                for id in collected.iter().chain(&leftovers) {
                    worker.metadata.forget(id);
                }
                if !leftovers.is_empty() {
                    tracing::info!(
                        node = %worker.name,
                        blobs = leftovers.len(),
                        "removed data that interrupted deletes left behind"
                    );
                }
                let sessions = worker.store.collect_abandoned_uploads(ttl, now)?;
                let purged = worker
                    .store
                    .purge_quarantine(housekeeping.quarantine_retention, now)?;
                crate::store::release_idle_spares(IDLE_SPARES_KEPT);
                Ok::<_, crate::store::StoreError>((collected.len() + sessions, purged))
            })
            .await;
            match done {
                Ok(Ok((collected, purged))) => {
                    if collected > 0 {
                        tracing::info!(node = %state.name, collected, "removed abandoned uploads");
                        state.metrics.abandoned_collected.inc_by(collected as u64);
                    }
                    if purged > 0 {
                        tracing::info!(node = %state.name, purged, "purged quarantined files");
                    }
                }
                Ok(Err(e)) => tracing::warn!(node = %state.name, "housekeeping failed: {e}"),
                Err(e) => tracing::warn!(node = %state.name, "housekeeping task failed: {e}"),
            }
        }
    });
}
