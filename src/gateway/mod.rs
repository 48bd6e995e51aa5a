//! `redstuff gateway`: the HTTP front door for users.
//!
//! | method and path | what |
//! |---|---|
//! | PUT `/v1/blobs` | stores the request body (streamed) as a blob; answers `{"id", "size", ...}` once it is committed on a quorum |
//! | GET `/v1/blobs/{id}` | streams the blob back, segment by segment |
//! | HEAD `/v1/blobs/{id}` | whether it is visible, and its size |
//! | DELETE `/v1/blobs/{id}` | deletes it: final once answered 204 |
//! | POST `/v1/uploads`, PATCH, GET, DELETE `/v1/uploads/{id}`, POST `/v1/uploads/{id}/finish` | an upload the client can resume after its connection broke (`resumable_routes.rs`) |
//! | GET `/v1/status` | the fleet's state, where a control loop publishes it (`redstuff dev`) |
//!
//! PUT and DELETE need `Authorization: Bearer USER_TOKEN`; so do reads and
//! status unless anonymous reads are allowed. An upload is not kept on
//! disk: each segment is encoded and shipped to the nodes as soon as it
//! has arrived, under an upload session they keep invisible until the
//! metadata adopts it (see `client`). An upload holds five segments at
//! most whatever the blob's size, and all uploads together hold at most
//! the configured upload memory (an upload past it waits, reading its body
//! no further); at most a configured number of uploads run at once, four
//! times as many more wait a bounded time for a slot (503 with Retry-After
//! beyond). S3 uploads are spooled to a temporary file first, because their checksums must hold before anything is stored (a
//! full spool answers SlowDown), and written from it the same way.
//! Nothing is visible before the write committed on a quorum: a failed or
//! interrupted upload leaves no blob behind (its session and staged
//! pieces are removed, or collected by the nodes after their TTL). The
//! spool is emptied when the gateway starts.

pub mod byte_range;
pub mod resumable;
mod resumable_routes;
mod routes;
pub mod spool;
pub mod upload_slots;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post, put};
use axum::Router;
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::api_error::ApiError;
use crate::auth::TokenSet;
use crate::client::{BlobClient, Deadlines, NodeCalls};
use crate::fleet::{FleetMap, MapFile};
use crate::metrics::GatewayMetrics;

/// Bytes of verified rows of segments a gateway keeps for later reads by
/// default: two segments of the default size.
pub const DEFAULT_SEGMENT_CACHE_BYTES: usize = 128 << 20;

/// The largest body of a question about blobs (`/v1/s3/known-blobs`,
/// `/v1/s3/objects-of-blobs`): a thousand ids with room to spare.
const MOST_QUESTION_BYTES: usize = 256 << 10;

/// Where the gateway learns the fleet map.
#[derive(Debug, Clone)]
pub enum FleetSource {
    /// A JSON file rewritten by the control loop; re-read when it changes.
    File(PathBuf),
    /// A fixed map.
    Fixed(FleetMap),
}

/// Shared fleet status published by a control loop, served at /v1/status.
pub type StatusBoard = Arc<RwLock<Option<serde_json::Value>>>;

/// How a gateway is set up.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The fleet map.
    pub fleet: FleetSource,
    /// Where S3 uploads are spooled.
    pub spool_dir: PathBuf,
    /// Largest blob accepted, in bytes.
    pub max_blob_bytes: u64,
    /// Bytes the spool may hold for S3 uploads in flight (SlowDown beyond).
    pub max_spool_bytes: Option<u64>,
    /// Uploads handled at once; four times as many more wait up to `upload_wait`
    /// for a slot (503 with Retry-After beyond).
    pub max_uploads: usize,
    /// How long an upload past `max_uploads` waits for a slot (zero: none
    /// waits).
    pub upload_wait: std::time::Duration,
    /// How long the pairs of an upload its client cut off stay on the
    /// nodes (under its session) for a retry of the same bytes to reuse.
    pub cut_upload_kept: std::time::Duration,
    /// Bytes of segments all uploads together may hold in memory.
    pub upload_memory_bytes: u64,
    /// Bytes of rows all reads together may hold in memory (besides the
    /// cached rows).
    pub read_memory_bytes: u64,
    /// How long a read waits for its first segment's share of the read
    /// memory (503 with Retry-After beyond).
    pub read_wait: std::time::Duration,
    /// How long a write to a client (the native API's and S3's) may make
    /// no progress before its connection ends.
    pub client_stall: std::time::Duration,
    /// The cluster token, sent to nodes.
    pub cluster_tokens: Arc<TokenSet>,
    /// The user tokens accepted from clients.
    pub user_tokens: Arc<TokenSet>,
    /// Whether GET, HEAD and status need no user token.
    pub anonymous_reads: bool,
    /// Deadlines of calls to nodes.
    pub deadlines: Deadlines,
    /// Bytes of verified rows of segments kept for later reads (0: none;
    /// concurrent reads of a row still fetch it once).
    pub segment_cache_bytes: usize,
    /// The fleet's CA, trusted for calls to nodes serving TLS.
    pub nodes_ca: Option<crate::tls::TrustedCa>,
    /// The certificate the native API and S3 are served with (plain HTTP
    /// without one); read again when its files change.
    pub tls: Option<Arc<crate::tls::ServingCert>>,
}

/// How long the pairs of an upload its client cut off stay for a retry:
/// long enough for a client's retries (`redstuff put` waits 1 s doubling),
/// short beside the nodes' staged-write TTL.
pub const DEFAULT_CUT_UPLOAD_KEPT: std::time::Duration = std::time::Duration::from_secs(120);

/// How long a read waits for its first segment's share of the read memory.
pub const DEFAULT_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl GatewayConfig {
    /// A gateway for `fleet` with these tokens and every other setting at
    /// its default.
    pub fn new(
        fleet: FleetSource,
        spool_dir: PathBuf,
        cluster_tokens: Arc<TokenSet>,
        user_tokens: Arc<TokenSet>,
    ) -> Self {
        Self {
            fleet,
            spool_dir,
            max_blob_bytes: 1 << 40,
            max_spool_bytes: None,
            max_uploads: 8,
            upload_wait: upload_slots::DEFAULT_UPLOAD_WAIT,
            cut_upload_kept: DEFAULT_CUT_UPLOAD_KEPT,
            upload_memory_bytes: crate::client::memory_budget::DEFAULT_UPLOAD_MEMORY,
            read_memory_bytes: crate::client::memory_budget::DEFAULT_READ_MEMORY,
            read_wait: DEFAULT_READ_WAIT,
            client_stall: crate::stalled_clients::DEFAULT_CLIENT_STALL,
            cluster_tokens,
            user_tokens,
            anonymous_reads: false,
            deadlines: Deadlines::default(),
            segment_cache_bytes: DEFAULT_SEGMENT_CACHE_BYTES,
            nodes_ca: None,
            tls: None,
        }
    }
}

struct GatewayState {
    map: MapFile,
    calls: NodeCalls,
    registry: Registry,
    metrics: GatewayMetrics,
    spool: spool::Spool,
    max_blob_bytes: u64,
    cut_upload_kept: std::time::Duration,
    upload_slots: upload_slots::UploadSlots,
    /// Uploads a client may resume, kept between its requests.
    resumable: resumable::ResumableUploads,
    /// What the segments of all uploads may hold in memory.
    upload_memory: crate::client::MemoryBudget,
    /// What the rows of all reads may hold in memory, and how long a read
    /// waits for its first share.
    read_memory: (crate::client::MemoryBudget, std::time::Duration),
    /// How long a write to a client may make no progress.
    client_stall: std::time::Duration,
    user_tokens: Arc<TokenSet>,
    anonymous_reads: bool,
    status: StatusBoard,
    /// Metrics of the process around the gateway (the `dev` loop's).
    extra_metrics: RwLock<Option<Registry>>,
    /// Rows of segments kept for later reads, and the reads in flight.
    segments: Arc<crate::client::SharedReads>,
    /// Nodes that lately left a call unanswered, for every request.
    unanswering: Arc<crate::client::UnansweringNodes>,
    /// The certificate served, when the gateway serves TLS.
    tls: Option<Arc<crate::tls::ServingCert>>,
    /// The S3 index, when an S3 front serves next to this gateway: a
    /// delete through the native API is refused while S3 refers to the
    /// blob, and claimed in it otherwise.
    s3_index: std::sync::OnceLock<Arc<crate::s3::index::Index>>,
    /// One scan of the S3 index's object records at a time
    /// (`/v1/s3/objects-of-blobs`): a scan goes on after its caller gave
    /// up, and must not pile up behind others.
    index_scan: Arc<tokio::sync::Semaphore>,
}

impl GatewayState {
    fn client(&self) -> Result<BlobClient, ApiError> {
        self.fleet_client().map_err(ApiError::unavailable)
    }

    /// A client of the fleet as the current map describes it, sharing the
    /// gateway's rows, budgets and memory of unanswering nodes.
    fn fleet_client(&self) -> Result<BlobClient, &'static str> {
        let map = self
            .map
            .get()
            .ok_or("no fleet map yet: the control loop has not published one")?;
        let (read_memory, read_wait) = self.read_memory.clone();
        Ok(
            BlobClient::new(self.calls.clone(), map, Some(self.metrics.clone()))
                .with_shared_reads(self.segments.clone())
                .with_memory_budget(self.upload_memory.clone())
                .with_read_budget(read_memory, read_wait)
                .with_unanswering_memory(self.unanswering.clone()),
        )
    }
}

/// What the S3 front shares with the native API of one gateway: the fleet
/// client, the upload spool and bound, the blob size limit, the metrics
/// registry.
#[derive(Clone)]
pub struct Door(Arc<GatewayState>);

impl Door {
    /// A client of the fleet as the current map describes it.
    pub fn client(&self) -> Result<BlobClient, String> {
        self.0.fleet_client().map_err(String::from)
    }

    /// Deletes through the native API consult the S3 index from now on:
    /// refused while S3 keys or uploads refer to the blob.
    pub fn guard_deletes_with(&self, index: Arc<crate::s3::index::Index>) {
        let _ = self.0.s3_index.set(index);
    }

    /// The upload spool.
    pub fn spool(&self) -> &spool::Spool {
        &self.0.spool
    }

    /// One of the bounded upload slots, once one is free; `None` when too
    /// many uploads wait already or none came free in time.
    pub async fn upload_slot(&self) -> Option<upload_slots::UploadSlot> {
        self.0.upload_slots.acquire().await
    }

    /// How long a write to a client may make no progress before its
    /// connection ends (S3 serves with the same).
    pub fn client_stall(&self) -> std::time::Duration {
        self.0.client_stall
    }

    /// The largest blob accepted, in bytes.
    pub fn max_blob_bytes(&self) -> u64 {
        self.0.max_blob_bytes
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.0.metrics
    }

    /// The registry /metrics serves (the S3 front registers its own there).
    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    /// The certificate the gateway serves, when it serves TLS (S3 serves
    /// the same).
    pub fn tls(&self) -> Option<Arc<crate::tls::ServingCert>> {
        self.0.tls.clone()
    }
}

/// A gateway bound to its address.
pub struct Gateway {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    router: Router,
    state: Arc<GatewayState>,
    tokens: [Arc<TokenSet>; 2],
}

impl Gateway {
    /// Binds `addr`; `status` is what /v1/status serves. The spool is
    /// emptied first: uploads of an earlier run can never complete.
    pub async fn bind(
        config: GatewayConfig,
        addr: SocketAddr,
        status: StatusBoard,
    ) -> anyhow::Result<Self> {
        let spool = spool::Spool::open(config.spool_dir, config.max_spool_bytes)?;
        let registry = Registry::new();
        let metrics = GatewayMetrics::new(&registry);
        let map = match config.fleet {
            FleetSource::Fixed(map) => MapFile::fixed(map),
            FleetSource::File(path) => MapFile::new(path),
        };
        let calls = NodeCalls::new(config.cluster_tokens.clone(), config.deadlines)
            .trusting(config.nodes_ca.as_ref());
        let unanswering = crate::client::UnansweringNodes::new(
            calls.clone(),
            Some(metrics.node_unanswering.clone()),
        );
        let state = Arc::new(GatewayState {
            map,
            calls,
            unanswering,
            registry,
            metrics,
            spool,
            max_blob_bytes: config.max_blob_bytes,
            cut_upload_kept: config.cut_upload_kept,
            upload_slots: upload_slots::UploadSlots::new(config.max_uploads, config.upload_wait),
            resumable: resumable::ResumableUploads::new(
                config.max_uploads.max(1) * resumable::OPEN_UPLOADS_PER_SLOT,
                config.cut_upload_kept,
            ),
            upload_memory: crate::client::MemoryBudget::new(config.upload_memory_bytes),
            read_memory: (
                crate::client::MemoryBudget::new(config.read_memory_bytes),
                config.read_wait,
            ),
            client_stall: config.client_stall,
            user_tokens: config.user_tokens.clone(),
            anonymous_reads: config.anonymous_reads,
            status,
            extra_metrics: RwLock::new(None),
            segments: Arc::new(crate::client::SharedReads::new(config.segment_cache_bytes)),
            tls: config.tls.clone(),
            s3_index: std::sync::OnceLock::new(),
            index_scan: Arc::new(tokio::sync::Semaphore::new(1)),
        });
        let router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(routes::readyz))
            .route("/metrics", get(routes::metrics_text))
            .route("/v1/status", get(routes::status_json))
            .route("/v1/blobs", put(routes::put_blob).post(routes::put_blob))
            .route(
                "/v1/blobs/{id}",
                get(routes::get_blob)
                    .head(routes::head_blob)
                    .delete(routes::delete_blob),
            )
            .route("/v1/uploads", post(resumable_routes::open))
            .route(
                "/v1/uploads/{id}",
                get(resumable_routes::show)
                    .patch(resumable_routes::append)
                    .delete(resumable_routes::delete),
            )
            .route("/v1/uploads/{id}/finish", post(resumable_routes::finish))
            // Questions of at most a thousand ids: their bodies are bounded.
            .route(
                "/v1/s3/known-blobs",
                post(routes::s3_known_blobs).layer(DefaultBodyLimit::max(MOST_QUESTION_BYTES)),
            )
            .route(
                "/v1/s3/objects-of-blobs",
                post(routes::s3_objects_of_blobs).layer(DefaultBodyLimit::max(MOST_QUESTION_BYTES)),
            )
            .fallback(|| async { ApiError::not_found("no such route; the API lives under /v1") })
            .layer(middleware::from_fn_with_state(
                state.clone(),
                routes::authorize,
            ))
            .layer(middleware::from_fn_with_state(state.clone(), routes::track))
            .layer(middleware::from_fn(
                crate::held_back_body::close_after_refusal,
            ))
            .layer(DefaultBodyLimit::disable())
            .layer(middleware::from_fn(
                crate::refused_body::linger_after_refusal,
            ))
            .with_state(state.clone());
        let listener = crate::listen::bind(addr).await?;
        Ok(Self {
            listener,
            metrics_listener: None,
            router,
            state,
            tokens: [config.cluster_tokens, config.user_tokens],
        })
    }

    /// Also serves `registry` at /metrics (the control loop's metrics, when
    /// the gateway runs inside `redstuff dev`).
    pub fn with_extra_metrics(self, registry: Registry) -> Self {
        *self.state.extra_metrics.write().expect("not poisoned") = Some(registry);
        self
    }

    /// What an S3 front next to it shares with it.
    pub fn door(&self) -> Door {
        Door(self.state.clone())
    }

    /// Also serves /metrics, /healthz and /readyz (no token needed) over
    /// plain HTTP on `addr`: what probes and scrapers reach when the API
    /// serves TLS.
    pub async fn with_metrics_listener(mut self, addr: SocketAddr) -> anyhow::Result<Self> {
        self.metrics_listener = Some(crate::listen::bind(addr).await?);
        Ok(self)
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// The address of the metrics listener, when it has one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener"))
    }

    /// Its API's URL: `https://` when it serves TLS.
    pub fn url(&self) -> String {
        let scheme = if self.state.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.local_addr())
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        for tokens in &self.tokens {
            tokens.watch(std::time::Duration::from_secs(1));
        }
        resumable_routes::expire_in_background(Arc::downgrade(&self.state));
        if let Some(listener) = self.metrics_listener {
            let router = Router::new()
                .route("/healthz", get(|| async { "ok" }))
                .route("/readyz", get(routes::readyz))
                .route("/metrics", get(routes::metrics_text))
                .with_state(self.state.clone());
            crate::listen::serve_metrics_in_background(listener, router);
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
            self.state.tls.clone(),
            self.state.client_stall,
            metrics,
            shutdown,
        )
        .await?;
        Ok(())
    }
}
