//! The node's HTTP API under /v1, plus /healthz, /readyz and /metrics.
//!
//! | method and path | what |
//! |---|---|
//! | PUT, GET `/v1/blobs/{id}/metadata` | the blob's metadata (binary); PUT checks it against the id |
//! | PUT, GET `/v1/blobs/{id}/slivers/{segment}/{shard}/{primary\|secondary}` | a sliver of an owned shard; PUT verifies it against the metadata |
//! | GET `/v1/blobs/{id}/symbols/{segment}/{shard}/{kind}?target_shard=T` | a recovery symbol with its proof, from this node's sliver, for the pair shard T holds |
//! | GET `/v1/inventory?after=ID&limit=N` | the blobs held, per shard, a page at a time |
//! | DELETE `/v1/blobs/{id}` | removes the blob |
//! | POST `/v1/repair` | rebuilds this node's pairs of a blob from peers (JSON `RepairRequest`) |
//!
//! Every error is a 4xx or 5xx with `{"error": "..."}`, and a refused
//! request changes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;

use super::NodeState;
use crate::api_error::ApiError;
use crate::codec::format::SLIVER_OVERHEAD;
use crate::codec::{
    verify_sliver, Axis, BlobId, BlobMetadata, Primary, Secondary, Sliver, SliverKind, SymbolSource,
};
use crate::store::StoreError;
use crate::wire::{InventoryBlob, InventoryPage, RepairRequest};

/// Parsed metadata kept in memory: every sliver request needs it.
static METADATA_CACHE_LIMIT: usize = 1024;

pub(super) fn router(state: Arc<NodeState>, max_body: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .route("/metrics", get(metrics))
        .route("/v1/inventory", get(inventory))
        .route("/v1/blobs/{id}", axum::routing::delete(delete_blob))
        .route(
            "/v1/blobs/{id}/metadata",
            put(put_metadata).get(get_metadata),
        )
        .route(
            "/v1/blobs/{id}/slivers/{segment}/{shard}/{kind}",
            put(put_sliver).get(get_sliver),
        )
        .route(
            "/v1/blobs/{id}/symbols/{segment}/{shard}/{kind}",
            get(get_symbol),
        )
        .route("/v1/repair", post(repair))
        .fallback(|| async { ApiError::not_found("no such route; the API lives under /v1") })
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(max_body))
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

async fn metrics(State(state): State<Arc<NodeState>>) -> impl IntoResponse {
    let m = &state.metrics;
    m.stored_bytes.set(state.store.used_bytes() as i64);
    if let Some((size, available)) = crate::store::filesystem_space(state.store.root()) {
        m.filesystem_size_bytes.set(size as i64);
        m.filesystem_available_bytes.set(available as i64);
    }
    for kind in [SliverKind::Primary, SliverKind::Secondary] {
        m.slivers
            .with_label_values(&[kind.name()])
            .set(state.store.sliver_count(kind) as i64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&state.registry),
    )
}

fn octets(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
}

pub(super) fn parse_id(text: &str) -> Result<BlobId, ApiError> {
    text.parse()
        .map_err(|e| ApiError::bad_request(format!("invalid blob id {text:?}: {e}")))
}

fn parse_kind(text: &str) -> Result<SliverKind, ApiError> {
    match text {
        "primary" => Ok(SliverKind::Primary),
        "secondary" => Ok(SliverKind::Secondary),
        _ => Err(ApiError::bad_request(format!(
            "invalid sliver kind {text:?}: expected primary or secondary"
        ))),
    }
}

fn parse_number<T: std::str::FromStr>(what: &str, text: &str) -> Result<T, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid {what} {text:?}: expected a number")))
}

/// Runs blocking store or codec work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

pub(super) fn store_error(state: &NodeState, error: StoreError) -> ApiError {
    match error {
        StoreError::Full { .. } => {
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
        StoreError::Io { .. } => ApiError::internal(error.to_string()),
    }
}

fn metadata_cache() -> &'static Mutex<HashMap<BlobId, Arc<BlobMetadata>>> {
    static CACHE: std::sync::OnceLock<Mutex<HashMap<BlobId, Arc<BlobMetadata>>>> =
        std::sync::OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The parsed metadata of a stored blob; 404 when the node does not have it.
pub(super) fn load_metadata(state: &NodeState, id: &BlobId) -> Result<Arc<BlobMetadata>, ApiError> {
    let key = cache_key(state, id);
    if let Some(found) = metadata_cache().lock().expect("not poisoned").get(&key) {
        return Ok(found.clone());
    }
    let bytes = state
        .store
        .metadata(id)
        .map_err(|e| store_error(state, e))?
        .ok_or_else(|| ApiError::not_found(format!("unknown blob {id}: put its metadata first")))?;
    let metadata =
        Arc::new(BlobMetadata::from_bytes(&bytes).map_err(|e| {
            ApiError::internal(format!("stored metadata of {id} is unreadable: {e}"))
        })?);
    let mut cache = metadata_cache().lock().expect("not poisoned");
    if cache.len() >= METADATA_CACHE_LIMIT {
        cache.clear();
    }
    cache.insert(key, metadata.clone());
    Ok(metadata)
}

/// Several nodes may run in one process (tests): key the cache by store too.
fn cache_key(state: &NodeState, id: &BlobId) -> BlobId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(state.store.root().as_os_str().as_encoded_bytes());
    hasher.update(id.as_bytes());
    BlobId(*hasher.finalize().as_bytes())
}

fn forget_metadata(state: &NodeState, id: &BlobId) {
    metadata_cache()
        .lock()
        .expect("not poisoned")
        .remove(&cache_key(state, id));
}

async fn put_metadata(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    blocking(move || {
        let metadata = BlobMetadata::from_bytes(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid metadata: {e}")))?;
        if metadata.blob_id() != id {
            return Err(ApiError::bad_request(format!(
                "metadata is of blob {}, not {id}",
                metadata.blob_id()
            )));
        }
        let existed = state.store.metadata(&id).ok().flatten().is_some();
        state
            .store
            .put_metadata(&id, &body)
            .map_err(|e| store_error(&state, e))?;
        Ok(if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        })
    })
    .await
}

async fn get_metadata(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    blocking(move || {
        let bytes = state
            .store
            .metadata(&id)
            .map_err(|e| store_error(&state, e))?
            .ok_or_else(|| ApiError::not_found(format!("unknown blob {id}")))?;
        Ok(octets(bytes))
    })
    .await
}

struct SliverPath {
    id: BlobId,
    segment: u32,
    shard: u16,
    kind: SliverKind,
}

fn parse_sliver_path(
    (id, segment, shard, kind): (String, String, String, String),
) -> Result<SliverPath, ApiError> {
    Ok(SliverPath {
        id: parse_id(&id)?,
        segment: parse_number("segment", &segment)?,
        shard: parse_number("shard", &shard)?,
        kind: parse_kind(&kind)?,
    })
}

/// The pair index shard `shard` holds in `segment`, checking both exist.
fn pair_of(metadata: &BlobMetadata, segment: u32, shard: u16) -> Result<u16, ApiError> {
    let n = metadata.config().n();
    if usize::from(shard) >= n {
        return Err(ApiError::bad_request(format!(
            "shard {shard} does not exist: the blob has {n} shards"
        )));
    }
    let rotation = metadata.rotation(segment).ok_or_else(|| {
        ApiError::bad_request(format!(
            "segment {segment} does not exist: the blob has {} segments",
            metadata.segment_count()
        ))
    })?;
    Ok(rotation.pair_of_shard(shard.into()) as u16)
}

async fn put_sliver(
    State(state): State<Arc<NodeState>>,
    Path(path): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let path = parse_sliver_path(path)?;
    if !state.ownership.owns(path.shard) {
        return Err(ApiError::conflict(format!(
            "shard {} is not owned by node {}",
            path.shard, state.name
        )));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    blocking(move || {
        let metadata = load_metadata(&state, &path.id)?;
        let pair = pair_of(&metadata, path.segment, path.shard)?;
        let layout = metadata
            .segment_layout(path.segment)
            .expect("checked by pair_of");
        let expected = SLIVER_OVERHEAD
            + match path.kind {
                SliverKind::Primary => layout.primary_sliver_len(),
                SliverKind::Secondary => layout.secondary_sliver_len(),
            };
        let got = declared.unwrap_or(body.len() as u64).max(body.len() as u64);
        if got > expected as u64 {
            return Err(ApiError::too_large(format!(
                "a {} sliver of segment {} is {expected} bytes; got {got}",
                path.kind, path.segment
            )));
        }
        match path.kind {
            SliverKind::Primary => check_sliver::<Primary>(&metadata, &path, pair, &body)?,
            SliverKind::Secondary => check_sliver::<Secondary>(&metadata, &path, pair, &body)?,
        }
        state
            .store
            .put_sliver(&path.id, path.segment, path.shard, path.kind, &body)
            .map_err(|e| store_error(&state, e))?;
        Ok(StatusCode::CREATED)
    })
    .await
}

fn check_sliver<A: Axis>(
    metadata: &BlobMetadata,
    path: &SliverPath,
    pair: u16,
    body: &[u8],
) -> Result<(), ApiError> {
    let sliver = Sliver::<A>::from_bytes(body)
        .map_err(|e| ApiError::bad_request(format!("invalid {} sliver: {e}", A::KIND)))?;
    if sliver.segment() != path.segment {
        return Err(ApiError::unprocessable(format!(
            "sliver is of segment {}, the path says {}",
            sliver.segment(),
            path.segment
        )));
    }
    if sliver.index() != pair {
        return Err(ApiError::unprocessable(format!(
            "sliver {} is not the pair shard {} holds in segment {} (pair {pair})",
            sliver.index(),
            path.shard,
            path.segment
        )));
    }
    verify_sliver(metadata, &sliver).map_err(|e| ApiError::unprocessable(e.to_string()))
}

async fn get_sliver(
    State(state): State<Arc<NodeState>>,
    Path(path): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let path = parse_sliver_path(path)?;
    blocking(move || {
        let mut bytes = state
            .store
            .sliver(&path.id, path.segment, path.shard, path.kind)
            .map_err(|e| store_error(&state, e))?
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no {} sliver of {} segment {} shard {} here",
                    path.kind, path.id, path.segment, path.shard
                ))
            })?;
        if state.corrupt_reads {
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
        }
        Ok(octets(bytes))
    })
    .await
}

#[derive(Deserialize)]
struct SymbolQuery {
    target_shard: String,
}

async fn get_symbol(
    State(state): State<Arc<NodeState>>,
    Path(path): Path<(String, String, String, String)>,
    Query(query): Query<SymbolQuery>,
) -> Result<Response, ApiError> {
    let path = parse_sliver_path(path)?;
    let target_shard: u16 = parse_number("target shard", &query.target_shard)?;
    blocking(move || {
        let metadata = load_metadata(&state, &path.id)?;
        let target = pair_of(&metadata, path.segment, target_shard)?;
        let bytes = state
            .store
            .sliver(&path.id, path.segment, path.shard, path.kind)
            .map_err(|e| store_error(&state, e))?
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no {} sliver of {} segment {} shard {} here",
                    path.kind, path.id, path.segment, path.shard
                ))
            })?;
        let mut symbol = match path.kind {
            SliverKind::Primary => symbol_bytes::<Primary>(&bytes, target)?,
            SliverKind::Secondary => symbol_bytes::<Secondary>(&bytes, target)?,
        };
        if state.corrupt_reads {
            // Flip a bit of the symbol itself (it sits before the proof).
            let at = symbol.len() - 1 - crate::codec::merkle::proof_len(metadata.config().n()) * 32;
            symbol[at] ^= 1;
        }
        state.metrics.recovery_symbols_served.inc();
        Ok(octets(symbol))
    })
    .await
}

fn symbol_bytes<A: Axis>(sliver_bytes: &[u8], target: u16) -> Result<Vec<u8>, ApiError> {
    let sliver = Sliver::<A>::from_bytes(sliver_bytes)
        .map_err(|e| ApiError::internal(format!("stored sliver is unreadable: {e}")))?;
    let symbol = SymbolSource::new(&sliver)
        .symbol(target)
        .ok_or_else(|| ApiError::bad_request(format!("target {target} is out of range")))?;
    Ok(symbol.to_bytes())
}

#[derive(Deserialize)]
struct InventoryQuery {
    after: Option<String>,
    limit: Option<String>,
}

async fn inventory(
    State(state): State<Arc<NodeState>>,
    Query(query): Query<InventoryQuery>,
) -> Result<Json<InventoryPage>, ApiError> {
    let after = query.after.as_deref().map(parse_id).transpose()?;
    let limit: usize = match query.limit.as_deref() {
        Some(text) => parse_number("limit", text)?,
        None => 100,
    };
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    blocking(move || {
        let ids = state
            .store
            .list_blobs(after.as_ref(), limit + 1)
            .map_err(|e| store_error(&state, e))?;
        let next = (ids.len() > limit).then(|| ids[limit - 1].to_string());
        let mut blobs = Vec::new();
        for id in ids.into_iter().take(limit) {
            let holdings = state
                .store
                .holdings(&id)
                .map_err(|e| store_error(&state, e))?;
            let (size, segments) = match load_metadata(&state, &id) {
                Ok(m) => (m.len(), m.segment_count() as u32),
                Err(_) => (0, 0),
            };
            blobs.push(InventoryBlob {
                id: id.to_string(),
                size,
                segments,
                shards: holdings.shards,
            });
        }
        Ok(Json(InventoryPage {
            node: state.name.clone(),
            shards: state.ownership.shards().into_iter().collect(),
            stored_bytes: state.store.used_bytes(),
            blobs,
            next,
        }))
    })
    .await
}

async fn delete_blob(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    blocking(move || {
        forget_metadata(&state, &id);
        if state
            .store
            .delete_blob(&id)
            .map_err(|e| store_error(&state, e))?
        {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::not_found(format!("unknown blob {id}")))
        }
    })
    .await
}

async fn repair(
    State(state): State<Arc<NodeState>>,
    Json(request): Json<RepairRequest>,
) -> Result<Response, ApiError> {
    let report = super::repair::run(state, request).await?;
    Ok(Json(report).into_response())
}
