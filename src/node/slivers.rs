//! Slivers and recovery symbols of this node's shards.
//!
//! A sliver PUT is checked in this order, each failure a 4xx with a JSON
//! error and nothing stored, and nothing of the body read before the
//! checks that need no body: the shard is owned (409), the metadata is
//! known (404), the segment exists (400), the declared length is the
//! sliver's (413); then the body is read up to that length (413 past it),
//! it parses (400), it is the pair that shard holds in that segment (422),
//! it hashes to its commitment (422), and a write of the blob is still
//! staged or committed here (409, or 410 once deleted).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::api::{
    blocking, load_metadata, octets, parse_id, parse_kind, parse_number, store_error,
};
use super::{Lie, NodeState};
use crate::api_error::ApiError;
use crate::codec::format::SLIVER_OVERHEAD;
use crate::codec::merkle::Hash;
use crate::codec::{
    verify_sliver, Axis, BlobId, BlobMetadata, Primary, Secondary, Sliver, SliverKind, SymbolSource,
};
use crate::store::SliverFile;

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

/// The Content-Length a request declares.
pub(super) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// Reads a request body of at most `limit` bytes; `None` past it (the
/// rest is not read).
pub(super) async fn read_capped(body: Body, limit: usize) -> Result<Option<Vec<u8>>, ApiError> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::with_capacity(limit.min(64 << 20));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("upload interrupted: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            return Ok(None);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Some(bytes))
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

/// Serialized length of the `kind` sliver of `segment`.
fn sliver_len(metadata: &BlobMetadata, segment: u32, kind: SliverKind) -> usize {
    let layout = metadata
        .segment_layout(segment)
        .expect("checked by pair_of");
    SLIVER_OVERHEAD
        + match kind {
            SliverKind::Primary => layout.primary_sliver_len(),
            SliverKind::Secondary => layout.secondary_sliver_len(),
        }
}

/// What an upload for one shard of a segment brought, once checked in the
/// order the module doc gives up to reading the body.
struct Received {
    metadata: Arc<BlobMetadata>,
    pair: u16,
    /// The length the upload should have.
    expected: usize,
    body: Vec<u8>,
}

/// The checks that need no body (ownership, metadata, segment, declared
/// length), then the body read up to the `length` the metadata gives;
/// `what` names the upload in errors.
async fn receive_for_shard(
    state: &Arc<NodeState>,
    (id, segment, shard): (BlobId, u32, u16),
    headers: &HeaderMap,
    body: Body,
    length: impl FnOnce(&BlobMetadata) -> usize,
    what: &str,
) -> Result<Received, ApiError> {
    if !state.ownership.owns(shard) {
        return Err(ApiError::conflict(format!(
            "shard {shard} is not owned by node {}",
            state.name
        )));
    }
    let metadata = {
        let state = state.clone();
        blocking(state.stalls.clone(), move || load_metadata(&state, &id)).await?
    };
    let pair = pair_of(&metadata, segment, shard)?;
    let expected = length(&metadata);
    let too_large =
        |got: String| ApiError::too_large(format!("{what} is {expected} bytes; got {got}"));
    if let Some(declared) = declared_length(headers) {
        if declared > expected as u64 {
            return Err(too_large(declared.to_string()));
        }
    }
    let body = read_capped(body, expected)
        .await?
        .ok_or_else(|| too_large("more".to_string()))?;
    Ok(Received {
        metadata,
        pair,
        expected,
        body,
    })
}

pub(super) async fn put_sliver(
    State(state): State<Arc<NodeState>>,
    Path(path): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let path = parse_sliver_path(path)?;
    let Received {
        metadata,
        pair,
        body,
        ..
    } = receive_for_shard(
        &state,
        (path.id, path.segment, path.shard),
        &headers,
        body,
        |metadata| sliver_len(metadata, path.segment, path.kind),
        &format!("a {} sliver of segment {}", path.kind, path.segment),
    )
    .await?;
    blocking(state.stalls.clone(), move || {
        let body = bytes::Bytes::from(body);
        let leaves = match path.kind {
            SliverKind::Primary => check_sliver::<Primary>(&metadata, &path, pair, &body)?,
            SliverKind::Secondary => check_sliver::<Secondary>(&metadata, &path, pair, &body)?,
        };
        state
            .store
            .put_sliver(
                &path.id,
                path.segment,
                path.shard,
                path.kind,
                SliverFile::verified(&body, &leaves),
            )
            .map_err(|e| store_error(&state, e))?;
        Ok(StatusCode::CREATED)
    })
    .await
}

/// `PUT /v1/blobs/{id}/pairs/{segment}/{shard}`: both slivers of the
/// pair `shard` holds in `segment`, the primary then the secondary, back to
/// back, checked like two sliver PUTs and stored together. Writers ship
/// under upload sessions now; this stays for the writers of earlier
/// versions while a fleet is upgraded.
pub(super) async fn put_pair(
    State(state): State<Arc<NodeState>>,
    Path((id, segment, shard)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let segment: u32 = parse_number("segment", &segment)?;
    let shard: u16 = parse_number("shard", &shard)?;
    let mut primary_len = 0;
    let what = format!("the pair of segment {segment} (primary then secondary sliver)");
    let Received {
        metadata,
        pair,
        expected,
        body,
    } = receive_for_shard(
        &state,
        (id, segment, shard),
        &headers,
        body,
        |metadata| {
            primary_len = sliver_len(metadata, segment, SliverKind::Primary);
            primary_len + sliver_len(metadata, segment, SliverKind::Secondary)
        },
        &what,
    )
    .await?;
    if body.len() != expected {
        return Err(ApiError::bad_request(format!(
            "{what} is {expected} bytes; got {}",
            body.len()
        )));
    }
    blocking(state.stalls.clone(), move || {
        let body = bytes::Bytes::from(body);
        let (primary, secondary) = (body.slice(..primary_len), body.slice(primary_len..));
        let path = |kind| SliverPath {
            id,
            segment,
            shard,
            kind,
        };
        let primary_leaves =
            check_sliver::<Primary>(&metadata, &path(SliverKind::Primary), pair, &primary)?;
        let secondary_leaves =
            check_sliver::<Secondary>(&metadata, &path(SliverKind::Secondary), pair, &secondary)?;
        state
            .store
            .put_pair(
                &id,
                segment,
                shard,
                SliverFile::verified(&primary, &primary_leaves),
                SliverFile::verified(&secondary, &secondary_leaves),
            )
            .map_err(|e| store_error(&state, e))?;
        Ok(StatusCode::CREATED)
    })
    .await
}

fn check_sliver<A: Axis>(
    metadata: &BlobMetadata,
    path: &SliverPath,
    pair: u16,
    body: &bytes::Bytes,
) -> Result<Vec<Hash>, ApiError> {
    let sliver = Sliver::<A>::from_shared(body.clone())
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

fn missing(path: &SliverPath) -> ApiError {
    ApiError::not_found(format!(
        "no {} sliver of {} segment {} shard {} here",
        path.kind, path.id, path.segment, path.shard
    ))
}

pub(super) async fn get_sliver(
    State(state): State<Arc<NodeState>>,
    Path(path): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let path = parse_sliver_path(path)?;
    if state.lie == Some(Lie::Replay) {
        return replay(&state, &path, None).await;
    }
    blocking(state.stalls.clone(), move || {
        let bytes = state
            .store
            .sliver(&path.id, path.segment, path.shard, path.kind)
            .map_err(|e| store_error(&state, e))?
            .ok_or_else(|| missing(&path))?;
        if state.lie == Some(Lie::FlipBits) {
            let mut flipped = bytes.to_vec();
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            return Ok(octets(flipped));
        }
        Ok(octets(bytes))
    })
    .await
}

#[derive(Deserialize)]
pub(super) struct SymbolQuery {
    target_shard: String,
}

pub(super) async fn get_symbol(
    State(state): State<Arc<NodeState>>,
    Path(path): Path<(String, String, String, String)>,
    Query(query): Query<SymbolQuery>,
) -> Result<Response, ApiError> {
    let path = parse_sliver_path(path)?;
    let target_shard: u16 = parse_number("target shard", &query.target_shard)?;
    if state.lie == Some(Lie::Replay) {
        return replay(&state, &path, Some(target_shard)).await;
    }
    blocking(state.stalls.clone(), move || {
        let metadata = load_metadata(&state, &path.id)?;
        let target = pair_of(&metadata, path.segment, target_shard)?;
        let bytes = state
            .store
            .sliver(&path.id, path.segment, path.shard, path.kind)
            .map_err(|e| store_error(&state, e))?
            .ok_or_else(|| missing(&path))?;
        let mut symbol = match path.kind {
            SliverKind::Primary => symbol_bytes::<Primary>(&bytes, target)?,
            SliverKind::Secondary => symbol_bytes::<Secondary>(&bytes, target)?,
        };
        if state.lie == Some(Lie::FlipBits) {
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

/// Test only: answers with what the holder of the next shard serves for
/// the same request (a valid answer, for the wrong shard).
async fn replay(
    state: &NodeState,
    path: &SliverPath,
    target: Option<u16>,
) -> Result<Response, ApiError> {
    let map = state
        .fleet
        .as_ref()
        .and_then(|f| f.get())
        .ok_or_else(|| ApiError::unavailable("no fleet map to replay from"))?;
    let other = (path.shard + 1) % map.shards;
    let holder = map
        .holder(other)
        .ok_or_else(|| ApiError::not_found("nobody to replay"))?;
    let client = state.peers.node(&holder.url);
    let limit = 1 << 30;
    let answer = match target {
        Some(target) => {
            client
                .symbol(&path.id, path.segment, other, path.kind, target, limit)
                .await
        }
        None => {
            client
                .sliver(&path.id, path.segment, other, path.kind, limit)
                .await
        }
    };
    match answer {
        Ok(Some(bytes)) => Ok(octets(bytes)),
        _ => Err(missing(path)),
    }
}
