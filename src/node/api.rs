//! The node's HTTP API under /v1, plus /healthz, /readyz and /metrics.
//!
//! | method and path | what |
//! |---|---|
//! | GET `/v1/blobs/{id}/state` | the blob's markers here, its size and the pairs held |
//! | PUT `/v1/blobs/{id}/metadata?generation=G[&upload=U]` | stages a write of generation G: the metadata (binary), checked against the id; with U, adopts the pairs of upload session U its segment roots agree with and answers `{"segments": [[shard, ...], ...]}`, the shards here holding each segment's pair |
//! | GET `/v1/blobs/{id}/metadata` | the metadata |
//! | POST `/v1/blobs/{id}/commit` | commits the write of `{"generation": G}` |
//! | POST `/v1/blobs/{id}/abort` | withdraws the staged write of `{"generation": G}` |
//! | DELETE `/v1/blobs/{id}?generation=G` | records a tombstone of generation G and removes what it covers |
//! | DELETE `/v1/blobs/{id}/shards/{shard}` | releases this node's pairs of a shard it does not own (it moved away); 409 while it owns it; answers `{"released_bytes": N}` |
//! | PUT, GET `/v1/blobs/{id}/slivers/{segment}/{shard}/{primary\|secondary}` | a sliver of an owned shard; PUT verifies it against the metadata |
//! | PUT `/v1/blobs/{id}/pairs/{segment}/{shard}` | both slivers of the pair an owned shard holds (primary then secondary), verified against the staged metadata and stored together: what writers of earlier versions send, kept while a fleet is upgraded |
//! | PUT `/v1/uploads/{upload}/pairs/{segment}/{shard}?root=R&proof=P` | both slivers of the pair an owned shard holds in a segment of root R, shipped before the blob id is known, with the Merkle proof P of the pair's hash under R; verified and filed under the session, invisible until adopted |
//! | POST `/v1/uploads/{upload}/segments/{segment}/reuse?root=R` | files into the session the pairs of the owned shards `{"shards": [S, ...]}` names in that segment that another session holds under root R (a retried write's pairs, filed before its failure); answers `{"filed": [S, ...]}`, those the session now holds |
//! | POST `/v1/uploads/{upload}/touch` | the session is still in use (a segment is long arriving): its staged-write TTL counts from now; 404 when it is gone |
//! | DELETE `/v1/uploads/{upload}` | removes an upload session (its writer gave up); sessions nobody adopts go after the staged-write TTL without a new pair or a touch |
//! | GET `/v1/blobs/{id}/symbols/{segment}/{shard}/{kind}?target_shard=T` | a recovery symbol with its proof, from this node's sliver, for the pair shard T holds |
//! | GET `/v1/inventory?after=ID&limit=N` | the blobs held, per shard, with their markers, a page at a time |
//! | GET `/v1/inventory/changes?epoch=E&since=S&limit=N` | the blobs whose files changed after position S of the store's journal of epoch E, in the order of their last change, and the position after them; 410 when the journal no longer knows (the node restarted, or too many changes since); without E and S, the journal's head |
//! | POST `/v1/inventory/entries` | the inventory entries of the blobs `{"blobs": [ID, ...]}` (at most 1,000) names, those the node holds anything of |
//! | POST `/v1/repair` | rebuilds this node's pairs of a blob from its peers (JSON `RepairRequest`; answers a line per segment) |
//!
//! Every route but /healthz, /readyz and /metrics needs `Authorization:
//! Bearer CLUSTER_TOKEN` (401 otherwise). Every error is a 4xx or 5xx with
//! `{"error": "..."}`, and a refused request changes nothing.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;

use super::{blobs, inventory, inventory_changes, slivers, uploads, NodeState};
use crate::api_error::ApiError;
use crate::auth::TokenSet;
use crate::codec::{BlobId, BlobMetadata, SliverKind};
use crate::store::StoreError;

/// JSON bodies (commits, repairs) are small.
const JSON_BODY_LIMIT: usize = 64 << 10;

pub(super) fn router(state: Arc<NodeState>, tokens: Arc<TokenSet>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/inventory", get(inventory::inventory))
        .route("/v1/inventory/changes", get(inventory_changes::changes))
        .route("/v1/inventory/entries", post(inventory_changes::entries))
        .route("/v1/blobs/{id}", axum::routing::delete(blobs::delete))
        .route("/v1/blobs/{id}/state", get(blobs::state))
        .route(
            "/v1/blobs/{id}/metadata",
            put(blobs::put_metadata).get(blobs::get_metadata),
        )
        .route(
            "/v1/blobs/{id}/shards/{shard}",
            axum::routing::delete(blobs::release_shard),
        )
        .route("/v1/blobs/{id}/commit", post(blobs::commit))
        .route("/v1/blobs/{id}/abort", post(blobs::abort))
        .route(
            "/v1/blobs/{id}/slivers/{segment}/{shard}/{kind}",
            put(slivers::put_sliver).get(slivers::get_sliver),
        )
        .route(
            "/v1/blobs/{id}/symbols/{segment}/{shard}/{kind}",
            get(slivers::get_symbol),
        )
        .route(
            "/v1/blobs/{id}/pairs/{segment}/{shard}",
            put(slivers::put_pair),
        )
        .route(
            "/v1/uploads/{upload}/pairs/{segment}/{shard}",
            put(uploads::put_pair),
        )
        .route(
            "/v1/uploads/{upload}/segments/{segment}/reuse",
            post(uploads::reuse_pairs),
        )
        .route(
            "/v1/uploads/{upload}",
            axum::routing::delete(uploads::delete),
        )
        .route("/v1/uploads/{upload}/touch", post(uploads::touch))
        .route("/v1/repair", post(super::repair::repair))
        .fallback(|| async { ApiError::not_found("no such route; the API lives under /v1") })
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            tokens,
            crate::auth::require_cluster_token,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        // A refused pair or sliver reaches the gateway as the node's answer
        // (409, 413, 507 and their reasons), not as a reset connection.
        .layer(middleware::from_fn(
            crate::refused_body::linger_after_refusal,
        ))
        .with_state(state)
}

/// The routes that need no token, alone: for a metrics listener.
pub(super) fn open_router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn track(State(state): State<Arc<NodeState>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let response = next.run(request).await;
    let m = &state.metrics;
    m.request_duration
        .with_label_values(&[&route])
        .observe(start.elapsed().as_secs_f64());
    m.requests
        .with_label_values(&[&route, response.status().as_str()])
        .inc();
    response
}

/// Ready unless the disk stalls (`stall_watch`): 503 with the reason.
async fn readyz(State(state): State<Arc<NodeState>>) -> Response {
    match super::stall_watch::stall_reason(state.stalls.oldest(), super::stall_watch::STALLED_AFTER)
    {
        None => "ready".into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

/// How long a scrape waits for the figures read from the disk (its
/// filesystem's space, the quarantine's bytes) before it answers with the
/// last ones.
const DISK_FIGURES_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

async fn metrics(State(state): State<Arc<NodeState>>) -> impl IntoResponse {
    let m = &state.metrics;
    m.oldest_store_operation
        .set(state.stalls.oldest().map_or(0.0, |age| age.as_secs_f64()));
    m.stored_bytes.set(state.store.used_bytes() as i64);
    for kind in [SliverKind::Primary, SliverKind::Secondary] {
        m.slivers
            .with_label_values(&[kind.name()])
            .set(state.store.sliver_count(kind) as i64);
    }
    m.metadata_cache_bytes.set(state.metadata.usage().0 as i64);
    read_disk_figures(&state).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&state.registry),
    )
}

/// Sets the gauges read from the disk (and the per-peer series of the
/// fleet map's nodes), off the async threads and waiting at most
/// [`DISK_FIGURES_WAIT`]: a stalled disk must not stall the scrape that
/// shows it (the gauges keep their last values). One reading at a time:
/// scrapes while one hangs start no other.
async fn read_disk_figures(state: &Arc<NodeState>) {
    use std::sync::atomic::Ordering;
    if state.disk_figures_reading.swap(true, Ordering::AcqRel) {
        return;
    }
    let reader = state.clone();
    let reading = tokio::task::spawn_blocking(move || {
        let figures = (
            crate::store::filesystem_space(reader.store.root()),
            reader.store.quarantined_bytes(),
        );
        let m = &reader.metrics;
        if let Some((size, available)) = figures.0 {
            m.filesystem_size_bytes.set(size as i64);
            m.filesystem_available_bytes.set(available as i64);
        }
        m.quarantined_bytes.set(figures.1 as i64);
        if let Some(map) = reader.fleet.as_ref().and_then(|fleet| fleet.get()) {
            m.know_peers(&map);
        }
        reader.disk_figures_reading.store(false, Ordering::Release);
    });
    let _ = tokio::time::timeout(DISK_FIGURES_WAIT, reading).await;
}

pub(super) fn octets(bytes: impl Into<bytes::Bytes>) -> Response {
    let bytes: bytes::Bytes = bytes.into();
    ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
}

pub(super) fn parse_id(text: &str) -> Result<BlobId, ApiError> {
    text.parse()
        .map_err(|e| ApiError::bad_request(format!("invalid blob id {text:?}: {e}")))
}

pub(super) fn parse_kind(text: &str) -> Result<SliverKind, ApiError> {
    match text {
        "primary" => Ok(SliverKind::Primary),
        "secondary" => Ok(SliverKind::Secondary),
        _ => Err(ApiError::bad_request(format!(
            "invalid sliver kind {text:?}: expected primary or secondary"
        ))),
    }
}

pub(super) fn parse_number<T: std::str::FromStr>(what: &str, text: &str) -> Result<T, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid {what} {text:?}: expected a number")))
}

/// Runs blocking store or codec work off the async threads, counted in
/// `stalls` while it runs (a stalled disk makes the node not ready).
pub(super) async fn blocking<T: Send + 'static>(
    stalls: Arc<super::stall_watch::StallWatch>,
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let running = stalls.start();
    tokio::task::spawn_blocking(move || {
        let _running = running;
        work()
    })
    .await
    .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

/// The answer to a store error; corrupt and unreadable files are counted
/// (and were quarantined: they are missing from now on).
pub(super) fn store_error(state: &NodeState, error: StoreError) -> ApiError {
    match error {
        StoreError::Full { .. } | StoreError::DiskFull { .. } => {
            ApiError::new(StatusCode::INSUFFICIENT_STORAGE, error.to_string())
        }
        StoreError::Corrupt { .. } => {
            state
                .metrics
                .corruption_detected
                .with_label_values(&["read"])
                .inc();
            tracing::warn!(node = %state.name, "{error}");
            ApiError::not_found(error.to_string())
        }
        StoreError::Unreadable { .. } => {
            state.metrics.io_errors.with_label_values(&["read"]).inc();
            tracing::warn!(node = %state.name, "{error}");
            ApiError::not_found(error.to_string())
        }
        StoreError::NotNow { .. } => {
            tracing::warn!(node = %state.name, "{error}");
            ApiError::unavailable(error.to_string())
        }
        StoreError::Deleted { .. } => ApiError::new(StatusCode::GONE, error.to_string()),
        StoreError::NotStaged => {
            ApiError::conflict(format!("{error}: stage the write (put its metadata) first"))
        }
        StoreError::NewerFormat { .. } | StoreError::UnknownFormat { .. } => {
            ApiError::internal(error.to_string())
        }
        StoreError::Io { .. } => {
            state.metrics.io_errors.with_label_values(&["write"]).inc();
            tracing::warn!(node = %state.name, "{error}");
            ApiError::internal(error.to_string())
        }
    }
}

/// The parsed metadata of a blob some write claims here; 404 otherwise.
/// Cached; a miss reads the store and fills the cache under the blob's
/// lock, so a delete racing the read (it forgets the entry under the same
/// lock) never leaves the entry behind.
pub(super) fn load_metadata(state: &NodeState, id: &BlobId) -> Result<Arc<BlobMetadata>, ApiError> {
    if let Some(found) = state.metadata.get(id) {
        return Ok(found);
    }
    let lock = state.store.lock(id);
    let metadata = Arc::new(read_metadata_locked(state, id, &lock)?);
    state.metadata.insert(metadata.clone());
    drop(lock);
    Ok(metadata)
}

/// Reads and parses a blob's stored metadata, past the cache; missing
/// unless a write of the blob is staged or committed here.
pub(super) fn read_metadata(state: &NodeState, id: &BlobId) -> Result<BlobMetadata, ApiError> {
    read_metadata_locked(state, id, &state.store.lock(id))
}

/// [`read_metadata`], under the blob's `lock`.
fn read_metadata_locked(
    state: &NodeState,
    id: &BlobId,
    lock: &crate::store::BlobLock<'_>,
) -> Result<BlobMetadata, ApiError> {
    let unknown = || ApiError::not_found(format!("unknown blob {id}: put its metadata first"));
    let bytes = lock
        .metadata()
        .map_err(|e| store_error(state, e))?
        .ok_or_else(unknown)?;
    if !lock
        .state()
        .map_err(|e| store_error(state, e))?
        .claims_data()
    {
        return Err(unknown());
    }
    BlobMetadata::from_bytes(&bytes)
        .map_err(|e| ApiError::internal(format!("stored metadata of {id} is unreadable: {e}")))
}
