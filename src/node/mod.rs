//! `redstuff node`: one storage node. An HTTP API (axum) over its durable
//! sliver store; it verifies everything it receives against the blob's
//! metadata before it keeps it, serves slivers and recovery symbols, and
//! rebuilds its own sliver pairs from peers when told to.

mod api;
pub mod ownership;
mod repair;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tokio::net::TcpListener;

use crate::metrics::NodeMetrics;
use crate::store::SliverStore;
pub use ownership::{Ownership, ShardSource, ShardsFile};

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name (in inventories, metrics and errors).
    pub name: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where ownership of shards comes from.
    pub shards: ShardSource,
    /// Capacity of the store in bytes, if capped.
    pub capacity: Option<u64>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Test only: flip a bit in every sliver and symbol served, to play a
    /// node that lies.
    pub corrupt_reads: bool,
    /// How often every stored file is re-read and checked; `None`: never.
    pub scrub_interval: Option<Duration>,
}

/// Everything the handlers share.
pub struct NodeState {
    name: String,
    store: SliverStore,
    ownership: Arc<Ownership>,
    registry: Registry,
    metrics: NodeMetrics,
    corrupt_reads: bool,
    http: reqwest::Client,
}

/// A node bound to its address, ready to serve.
pub struct Node {
    listener: TcpListener,
    router: axum::Router,
    state: Arc<NodeState>,
    scrub_interval: Option<Duration>,
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
            registry,
            metrics,
            corrupt_reads: config.corrupt_reads,
            http: crate::http::client_builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(60))
                .build()?,
        });
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        Ok(Self {
            router: api::router(state.clone(), config.max_body_bytes),
            listener,
            state,
            scrub_interval: config.scrub_interval,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
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
        if let Some(period) = self.scrub_interval {
            scrub_periodically(self.state.clone(), period);
        }
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }
}

/// Re-reads every stored file each `period`, so bitrot is found (and the
/// file quarantined, hence reported missing and repaired) even where no
/// client reads it.
fn scrub_periodically(state: Arc<NodeState>, period: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tick.tick().await;
            let worker = state.clone();
            match tokio::task::spawn_blocking(move || worker.store.scrub()).await {
                Ok(Ok((checked, corrupt))) => {
                    if corrupt > 0 {
                        tracing::warn!(node = %state.name, checked, corrupt, "scrub quarantined corrupt files");
                        state
                            .metrics
                            .corruption_detected
                            .with_label_values(&["scrub"])
                            .inc_by(corrupt);
                    }
                }
                Ok(Err(e)) => tracing::warn!(node = %state.name, "scrub failed: {e}"),
                Err(e) => tracing::warn!(node = %state.name, "scrub task failed: {e}"),
            }
        }
    });
}
