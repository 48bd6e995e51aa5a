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

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
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
use crate::store::SliverFile;
use crate::wire::UploadId;

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

/// Pair bodies kept for the next pair: a pair is as long as a few symbols
/// of a segment (34 MiB at n = 7 and 64 MiB segments), and a fresh buffer
/// of that size costs the kernel zeroing every page of it again.
static SPARE_BODIES: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// At most this many spare bodies are kept (a writer ships two segments
/// at once).
const SPARE_BODIES_KEPT: usize = 2;

/// A pair body whose buffer goes back to the spares once every slice of
/// it is dropped.
struct PairBody(Vec<u8>);

impl PairBody {
    /// An empty body with room for `len` bytes, a spare one if any fits.
    fn with_capacity(len: usize) -> Self {
        let mut spares = SPARE_BODIES.lock().unwrap_or_else(|e| e.into_inner());
        let buffer = match spares.iter().position(|b| b.capacity() >= len) {
            Some(at) => spares.swap_remove(at),
            None => Vec::with_capacity(len),
        };
        Self(buffer)
    }
}

impl AsRef<[u8]> for PairBody {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for PairBody {
    fn drop(&mut self) {
        let mut buffer = std::mem::take(&mut self.0);
        buffer.clear();
        let mut spares = SPARE_BODIES.lock().unwrap_or_else(|e| e.into_inner());
        if spares.len() < SPARE_BODIES_KEPT {
            spares.push(buffer);
        } else if let Some(smallest) = spares.iter_mut().min_by_key(|b| b.capacity()) {
            if smallest.capacity() < buffer.capacity() {
                *smallest = buffer;
            }
        }
    }
}

/// Reads a pair body: the primary's header tells the pair's length, which
/// is checked against the declared length before the rest is read.
async fn read_pair_body(body: Body, headers: &HeaderMap) -> Result<(PairLengths, Bytes), ApiError> {
    let mut stream = body.into_data_stream();
    let mut prefix = Vec::new();
    let mut pair: Option<(PairLengths, PairBody)> = None;
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
            if prefix.len() > found.total {
                return Err(too_large(found.total, "more".to_string()));
            }
            let mut body = PairBody::with_capacity(found.total);
            body.0.extend_from_slice(&prefix);
            pair = Some((found, body));
            continue;
        };
        if body.0.len() + chunk.len() > found.total {
            return Err(too_large(found.total, "more".to_string()));
        }
        body.0.extend_from_slice(&chunk);
    }
    match pair {
        Some((found, body)) if body.0.len() == found.total => Ok((found, Bytes::from_owner(body))),
        Some((found, body)) => Err(ApiError::bad_request(format!(
            "the pair is {} bytes; got {}",
            found.total,
            body.0.len()
        ))),
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
    let root = query
        .root
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("the segment root is missing: add ?root=HEX"))
        .and_then(|text| parse_hashes("segment root", text))?;
    let [root] = root[..] else {
        return Err(ApiError::bad_request(
            "invalid segment root: expected one hash",
        ));
    };
    let proof = parse_hashes("pair proof", query.proof.as_deref().unwrap_or(""))?;
    if !state.ownership.owns(shard) {
        return Err(ApiError::conflict(format!(
            "shard {shard} is not owned by node {}",
            state.name
        )));
    }
    let (lengths, body) = read_pair_body(body, &headers).await?;
    blocking(move || {
        let (primary, secondary) = (body.slice(..lengths.primary), body.slice(lengths.primary..));
        let [primary_leaves, secondary_leaves] =
            check_pair(&primary, &secondary, (segment, &root), shard, &proof)?;
        state
            .store
            .put_upload_pair(
                &upload,
                (segment, &root),
                shard,
                SliverFile::verified(&primary, &primary_leaves),
                SliverFile::verified(&secondary, &secondary_leaves),
            )
            .map_err(|e| store_error(&state, e))?;
        Ok(StatusCode::CREATED)
    })
    .await
}

/// Checks that two serialized slivers are the pair `shard` holds in the
/// segment of root `root`, their hashes proven under it by `proof`;
/// returns the leaf hashes of each sliver's symbols.
fn check_pair(
    primary: &Bytes,
    secondary: &Bytes,
    (segment, root): (u32, &Hash),
    shard: u16,
    proof: &[Hash],
) -> Result<[Vec<Hash>; 2], ApiError> {
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

/// `DELETE /v1/uploads/{upload}`: the writer gave up; its session goes.
pub(super) async fn delete(
    State(state): State<Arc<NodeState>>,
    Path(upload): Path<String>,
) -> Result<StatusCode, ApiError> {
    let upload = parse_upload(&upload)?;
    blocking(move || {
        state
            .store
            .remove_upload(&upload)
            .map_err(|e| store_error(&state, e))?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_bodys_buffer_serves_the_next_pair_once_every_slice_of_it_is_dropped() {
        let mut body = PairBody::with_capacity(1 << 20);
        body.0.resize(1 << 20, 7);
        let address = body.0.as_ptr();
        let shared = Bytes::from_owner(body);
        let (head, tail) = (shared.slice(..10), shared.slice(10..));
        drop(shared);
        drop(head);
        let before = PairBody::with_capacity(1000);
        assert_ne!(before.0.as_ptr(), address, "a slice still holds the buffer");
        drop(tail);
        let next = PairBody::with_capacity(1000);
        assert_eq!(next.0.as_ptr(), address, "the spare buffer is reused");
        assert!(next.0.is_empty());
    }
}
