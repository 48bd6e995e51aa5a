//! Upload sessions: pairs a writer ships while it still encodes the rest
//! of the blob (see `store::uploads`).
//!
//! `PUT /v1/uploads/{upload}/pairs/{segment}/{shard}?root=R&proof=P`
//! carries both slivers of the pair `shard` holds in a segment whose root
//! is R, primary then secondary, and P, the Merkle proof of the pair's
//! hash under R. It is checked in this order, each failure a 4xx with a
//! JSON error and nothing stored: the path and query parse (400), the
//! shard is owned (409), the declared length is the pair's that the
//! primary's header gives (413); then the body is read up to that length
//! (413 past it), both slivers parse (400), they are one pair of that
//! segment (422), the pair the segment root gives that shard (422), and
//! their hashes are proven under the root (422).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;

use super::api::{blocking, parse_number, store_error};
use super::slivers::declared_length;
use super::NodeState;
use crate::api_error::ApiError;
use crate::codec::format::{pair_lengths_from_prefix, PairLengths, SLIVER_OVERHEAD};
use crate::codec::merkle::{self, Hash};
use crate::codec::{sliver_hash_and_leaves, Primary, Secondary, ShardRotation, Sliver};
use crate::store::{BlockParts, CheckedPutError};
use crate::wire::{ReusePairsRequest, ReusedPairs, UploadId};

#[derive(Deserialize)]
pub(super) struct PairQuery {
    root: Option<String>,
    proof: Option<String>,
}

pub(super) fn parse_upload(text: &str) -> Result<UploadId, ApiError> {
    text.parse()
        .map_err(|e| ApiError::bad_request(format!("invalid upload id {text:?}: {e}")))
}

/// Hashes written back to back in hex.
fn parse_hashes(what: &str, text: &str) -> Result<Vec<Hash>, ApiError> {
    let bytes = crate::hex::decode(text)
        .filter(|b| b.len().is_multiple_of(32))
        .ok_or_else(|| ApiError::bad_request(format!("invalid {what}: expected hashes in hex")))?;
    Ok(bytes
        .chunks_exact(32)
        .map(|h| h.try_into().expect("32 bytes"))
        .collect())
}

/// Bytes of the largest pair (with both slivers' headers) of a fleet of
/// `shards` shards cutting blobs into segments of `segment_size` bytes;
/// `None` for a map no encoding fits.
fn largest_pair(shards: u16, segment_size: u64) -> Option<usize> {
    let config = crate::codec::EncodingConfig::new(shards).ok()?;
    Some(config.segment_layout(segment_size).pair_len() + 2 * SLIVER_OVERHEAD)
}

/// Reads a pair body: the primary's header tells the pair's length, which
/// is checked against the declared length and against `largest` (the
/// fleet's largest pair, when the node has a fleet map) before anything is
/// allocated for it or the rest is read. The slivers land in one aligned
/// buffer, each on a block boundary, so the store writes them past the
/// page cache without copying them again.
async fn read_pair_body(
    body: Body,
    headers: &HeaderMap,
    largest: Option<usize>,
) -> Result<[Bytes; 2], ApiError> {
    let mut stream = body.into_data_stream();
    let mut prefix = Vec::new();
    let mut pair: Option<(PairLengths, BlockParts)> = None;
    let too_large = |expected: usize, got: String| {
        ApiError::too_large(format!("the pair is {expected} bytes; got {got}"))
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("upload interrupted: {e}")))?;
        let Some((found, body)) = &mut pair else {
            prefix.extend_from_slice(&chunk);
            if prefix.len() < SLIVER_OVERHEAD {
                continue;
            }
            let found = pair_lengths_from_prefix(&prefix[..SLIVER_OVERHEAD])
                .map_err(|e| ApiError::bad_request(format!("invalid primary sliver: {e}")))?;
            if let Some(declared) = declared_length(headers) {
                if declared > found.total as u64 {
                    return Err(too_large(found.total, declared.to_string()));
                }
            }
            if let Some(largest) = largest.filter(|&largest| found.total > largest) {
                return Err(ApiError::too_large(format!(
                    "the primary sliver's header makes the pair {} bytes; a pair of this \
                     fleet (its shard count and segment size) is at most {largest}",
                    found.total
                )));
            }
            let mut body = BlockParts::new(&[found.primary, found.total - found.primary]);
            body.push(&prefix)
                .map_err(|_| too_large(found.total, "more".to_string()))?;
            pair = Some((found, body));
            continue;
        };
        body.push(&chunk)
            .map_err(|_| too_large(found.total, "more".to_string()))?;
    }
    match pair {
        Some((found, body)) => {
            let missing = body.missing();
            match body.freeze().map(<[Bytes; 2]>::try_from) {
                Some(Ok(slivers)) => Ok(slivers),
                _ => Err(ApiError::bad_request(format!(
                    "the pair is {} bytes; got {}",
                    found.total,
                    found.total - missing
                ))),
            }
        }
        None => Err(ApiError::bad_request(format!(
            "a pair upload of {} bytes is shorter than a sliver's header",
            prefix.len()
        ))),
    }
}

/// `PUT /v1/uploads/{upload}/pairs/{segment}/{shard}?root=R&proof=P`.
pub(super) async fn put_pair(
    State(state): State<Arc<NodeState>>,
    Path((upload, segment, shard)): Path<(String, String, String)>,
    Query(query): Query<PairQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let upload = parse_upload(&upload)?;
    let segment: u32 = parse_number("segment", &segment)?;
    let shard: u16 = parse_number("shard", &shard)?;
    let root = segment_root(query.root.as_deref())?;
    let proof = parse_hashes("pair proof", query.proof.as_deref().unwrap_or(""))?;
    if !state.ownership.owns(shard) {
        return Err(ApiError::conflict(format!(
            "shard {shard} is not owned by node {}",
            state.name
        )));
    }
    let largest = state
        .fleet
        .as_ref()
        .and_then(|fleet| fleet.get())
        .and_then(|map| largest_pair(map.shards, map.segment_size));
    let [primary, secondary] = read_pair_body(body, &headers, largest).await?;
    blocking(state.stalls.clone(), move || {
        let (slivers, pair) = pair_shape(&primary, &secondary, segment, (&root, shard), &proof)?;
        state
            .store
            .put_upload_pair_checked(
                &upload,
                (segment, &root),
                shard,
                [&primary, &secondary],
                || pair_proven(slivers, (&root, pair), &proof),
            )
            .map_err(|e| match e {
                CheckedPutError::Refused(e) => e,
                CheckedPutError::Store(e) => store_error(&state, e),
            })?;
        Ok(StatusCode::CREATED)
    })
    .await
}

/// A pair's two slivers, parsed.
type ParsedPair = (Sliver<Primary>, Sliver<Secondary>);

/// Checks that two serialized slivers are one pair of segment `segment`
/// and the pair `shard` holds under the segment root, with a proof of the
/// right length; returns them parsed, and the pair's index. Cheap: no
/// hashing.
fn pair_shape(
    primary: &Bytes,
    secondary: &Bytes,
    segment: u32,
    (root, shard): (&Hash, u16),
    proof: &[Hash],
) -> Result<(ParsedPair, usize), ApiError> {
    let primary = Sliver::<Primary>::from_shared(primary.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid primary sliver: {e}")))?;
    let secondary = Sliver::<Secondary>::from_shared(secondary.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid secondary sliver: {e}")))?;
    let n = primary.config().n();
    let one_pair = secondary.config() == primary.config()
        && secondary.index() == primary.index()
        && secondary.symbol_size() == primary.symbol_size()
        && primary.segment() == segment
        && secondary.segment() == segment;
    if !one_pair {
        return Err(ApiError::unprocessable(format!(
            "the slivers are not one pair of segment {segment}: primary {} of segment {}, \
             secondary {} of segment {}",
            primary.index(),
            primary.segment(),
            secondary.index(),
            secondary.segment()
        )));
    }
    if usize::from(shard) >= n {
        return Err(ApiError::bad_request(format!(
            "shard {shard} does not exist: the pair is of {n} shards"
        )));
    }
    let pair = ShardRotation::new(root, n).pair_of_shard(shard.into());
    if usize::from(primary.index()) != pair {
        return Err(ApiError::unprocessable(format!(
            "pair {} is not the pair shard {shard} holds in this segment (pair {pair})",
            primary.index()
        )));
    }
    if proof.len() != merkle::proof_len(n) {
        return Err(ApiError::bad_request(format!(
            "the pair proof has {} hashes; {} shards need {}",
            proof.len(),
            n,
            merkle::proof_len(n)
        )));
    }
    Ok(((primary, secondary), pair))
}

/// Checks that the slivers' hashes are proven under the segment root by
/// `proof` at `pair`; returns the leaf hashes of each sliver's symbols.
fn pair_proven(
    (primary, secondary): ParsedPair,
    (root, pair): (&Hash, usize),
    proof: &[Hash],
) -> Result<[Vec<Hash>; 2], ApiError> {
    let n = primary.config().n();
    let (primary_hash, primary_leaves) = sliver_hash_and_leaves(&primary);
    let (secondary_hash, secondary_leaves) = sliver_hash_and_leaves(&secondary);
    let leaf = merkle::pair_hash(&primary_hash, &secondary_hash);
    if !merkle::verify_proof(root, n, pair, &leaf, proof) {
        return Err(ApiError::unprocessable(format!(
            "pair {pair} does not hash to its commitment under the segment root"
        )));
    }
    Ok([primary_leaves, secondary_leaves])
}

/// The one segment root of a `?root=HEX` query.
fn segment_root(root: Option<&str>) -> Result<Hash, ApiError> {
    let root = root
        .ok_or_else(|| ApiError::bad_request("the segment root is missing: add ?root=HEX"))
        .and_then(|text| parse_hashes("segment root", text))?;
    match root[..] {
        [root] => Ok(root),
        _ => Err(ApiError::bad_request(
            "invalid segment root: expected one hash",
        )),
    }
}

/// `POST /v1/uploads/{upload}/segments/{segment}/reuse?root=R`: files into
/// the session the pairs of the owned shards asked about that another
/// session holds under the same segment and root (they were verified
/// against R when filed there); answers which the session now holds.
pub(super) async fn reuse_pairs(
    State(state): State<Arc<NodeState>>,
    Path((upload, segment)): Path<(String, String)>,
    Query(query): Query<PairQuery>,
    body: axum::body::Bytes,
) -> Result<Json<ReusedPairs>, ApiError> {
    let upload = parse_upload(&upload)?;
    let segment: u32 = parse_number("segment", &segment)?;
    let root = segment_root(query.root.as_deref())?;
    let asked: ReusePairsRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be {{\"shards\": [shards of this node]}}: {e}"
        ))
    })?;
    if let Some(shard) = asked.shards.iter().find(|s| !state.ownership.owns(**s)) {
        return Err(ApiError::conflict(format!(
            "shard {shard} is not owned by node {}",
            state.name
        )));
    }
    blocking(state.stalls.clone(), move || {
        let filed = state
            .store
            .reuse_upload_pairs(&upload, (segment, &root), &asked.shards)
            .map_err(|e| store_error(&state, e))?;
        Ok(Json(ReusedPairs { filed }))
    })
    .await
}

/// `POST /v1/uploads/{upload}/touch`: the writer still uses the session
/// (a segment is long arriving); its TTL counts from now. 404 when the
/// session is gone.
pub(super) async fn touch(
    State(state): State<Arc<NodeState>>,
    Path(upload): Path<String>,
) -> Result<StatusCode, ApiError> {
    let upload = parse_upload(&upload)?;
    blocking(state.stalls.clone(), move || {
        let touched = state
            .store
            .touch_upload(&upload)
            .map_err(|e| store_error(&state, e))?;
        if touched {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::not_found(format!(
                "no upload session {upload} here (never shipped to, given up, or past the staged-write TTL)"
            )))
        }
    })
    .await
}

/// `DELETE /v1/uploads/{upload}`: the writer gave up; its session goes.
pub(super) async fn delete(
    State(state): State<Arc<NodeState>>,
    Path(upload): Path<String>,
) -> Result<StatusCode, ApiError> {
    let upload = parse_upload(&upload)?;
    blocking(state.stalls.clone(), move || {
        state
            .store
            .remove_upload(&upload)
            .map_err(|e| store_error(&state, e))?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
