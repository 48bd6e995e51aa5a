//! A blob's markers on this node: its state, staging a write with its
//! metadata, commit, abort, and delete (a tombstone); and releasing the
//! pairs of a shard the node no longer owns.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;

use super::api::{blocking, octets, parse_id, parse_number, store_error};
use super::NodeState;
use crate::api_error::ApiError;
use crate::codec::format::{metadata_len_from_prefix, METADATA_PREFIX_LEN};
use crate::codec::BlobMetadata;
use crate::wire::{AdoptedPairs, GenerationBody, NodeBlobState, ReleasedShard};

#[derive(Deserialize)]
pub(super) struct GenerationQuery {
    generation: Option<String>,
}

/// The generation a query gives (`?generation=G`).
fn generation_of(given: Option<&str>) -> Result<u64, ApiError> {
    let text = given.ok_or_else(|| {
        ApiError::bad_request("the write's or delete's generation is missing: add ?generation=G")
    })?;
    let generation: u64 = parse_number("generation", text)?;
    if generation == 0 {
        return Err(ApiError::bad_request("generation 0 is not a generation"));
    }
    Ok(generation)
}

pub(super) async fn state(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
) -> Result<Json<NodeBlobState>, ApiError> {
    let id = parse_id(&id)?;
    blocking(state.stalls.clone(), move || {
        let markers = state
            .store
            .markers(&id)
            .map_err(|e| store_error(&state, e))?;
        let holdings = state
            .store
            .holdings(&id)
            .map_err(|e| store_error(&state, e))?;
        let metadata = if holdings.metadata {
            super::api::load_metadata(&state, &id).ok()
        } else {
            None
        };
        Ok(Json(NodeBlobState {
            state: markers.state,
            size: metadata.as_ref().map(|m| m.len()),
            segments: metadata.as_ref().map(|m| m.segment_count() as u32),
            shards: holdings.shards,
            markers_lost: markers.lost,
        }))
    })
    .await
}

/// Reads a metadata body: its first bytes tell its whole length, which is
/// checked against the limit before anything more is read.
async fn read_metadata_body(
    body: Body,
    headers: &HeaderMap,
    limit: u64,
) -> Result<Vec<u8>, ApiError> {
    let too_large = |len: u64| {
        ApiError::too_large(format!(
            "metadata of {len} bytes is larger than this node accepts ({limit} bytes)"
        ))
    };
    if let Some(declared) = super::slivers::declared_length(headers) {
        if declared > limit {
            return Err(too_large(declared));
        }
    }
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut expected: Option<u64> = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("upload interrupted: {e}")))?;
        bytes.extend_from_slice(&chunk);
        if expected.is_none() && bytes.len() >= METADATA_PREFIX_LEN {
            let len = metadata_len_from_prefix(&bytes[..METADATA_PREFIX_LEN])
                .map_err(|e| ApiError::bad_request(format!("invalid metadata: {e}")))?;
            if len > limit {
                return Err(too_large(len));
            }
            expected = Some(len);
        }
        if let Some(len) = expected {
            if bytes.len() as u64 > len {
                return Err(ApiError::bad_request(format!(
                    "invalid metadata: more than its {len} bytes"
                )));
            }
        }
    }
    Ok(bytes)
}

#[derive(Deserialize)]
pub(super) struct MetadataQuery {
    generation: Option<String>,
    upload: Option<String>,
}

/// Stages a write with its metadata. With `upload=U`, the pairs shipped
/// under upload session U are adopted (see `store::uploads`) and the
/// answer tells, per segment, the shards here holding the blob's pair.
pub(super) async fn put_metadata(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
    Query(query): Query<MetadataQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let generation = generation_of(query.generation.as_deref())?;
    if state.lie == Some(super::Lie::RefuseStages) {
        return Err(ApiError::new(
            StatusCode::GONE,
            format!("blob {id} was deleted at a newer generation"),
        ));
    }
    let upload = query
        .upload
        .as_deref()
        .map(super::uploads::parse_upload)
        .transpose()?;
    let body = read_metadata_body(body, &headers, state.max_metadata_bytes).await?;
    blocking(state.stalls.clone(), move || {
        let metadata = BlobMetadata::from_bytes(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid metadata: {e}")))?;
        if metadata.blob_id() != id {
            return Err(ApiError::bad_request(format!(
                "metadata is of blob {}, not {id}",
                metadata.blob_id()
            )));
        }
        let lock = state.store.lock(&id);
        lock.stage(generation, &body)
            .map_err(|e| store_error(&state, e))?;
        let Some(upload) = upload else {
            return Ok(StatusCode::CREATED.into_response());
        };
        let roots: Vec<_> = (0..metadata.segment_count() as u32)
            .map(|k| (k, metadata.segment(k).expect("below the count").root()))
            .collect();
        lock.adopt_upload(&upload, &roots)
            .map_err(|e| store_error(&state, e))?;
        let segments = lock
            .pairs_by_segment(roots.len() as u32)
            .map_err(|e| store_error(&state, e))?;
        Ok((StatusCode::CREATED, Json(AdoptedPairs { segments })).into_response())
    })
    .await
}

pub(super) async fn get_metadata(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    blocking(state.stalls.clone(), move || {
        let lock = state.store.lock(&id);
        let claimed = lock
            .state()
            .map_err(|e| store_error(&state, e))?
            .claims_data();
        let bytes = lock
            .metadata()
            .map_err(|e| store_error(&state, e))?
            .filter(|_| claimed)
            .ok_or_else(|| ApiError::not_found(format!("unknown blob {id}")))?;
        Ok(octets(bytes))
    })
    .await
}

pub(super) async fn commit(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
    Json(body): Json<GenerationBody>,
) -> Result<Json<NodeBlobState>, ApiError> {
    let id = parse_id(&id)?;
    if body.generation == 0 {
        return Err(ApiError::bad_request("generation 0 is not a generation"));
    }
    blocking(state.stalls.clone(), move || {
        let markers = state
            .store
            .commit(&id, body.generation, None)
            .map_err(|e| store_error(&state, e))?;
        Ok(Json(NodeBlobState {
            state: markers,
            ..NodeBlobState::default()
        }))
    })
    .await
}

pub(super) async fn abort(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
    Json(body): Json<GenerationBody>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    blocking(state.stalls.clone(), move || {
        let lock = state.store.lock(&id);
        let removed = lock
            .abort(body.generation)
            .map_err(|e| store_error(&state, e))?;
        if removed {
            state.metadata.forget(&id);
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

pub(super) async fn delete(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
    Query(query): Query<GenerationQuery>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let generation = generation_of(query.generation.as_deref())?;
    blocking(state.stalls.clone(), move || {
        let lock = state.store.lock(&id);
        let outcome = lock
            .tombstone(generation)
            .map_err(|e| store_error(&state, e))?;
        if outcome.removed_data {
            state.metadata.forget(&id);
            state.metrics.blobs_deleted.inc();
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Drops this node's pairs of one shard of a blob, a shard it does not own
/// (it moved away, and the control loop saw its owner hold it whole):
/// 409 while the node owns it, deciding on its newest ownership file.
pub(super) async fn release_shard(
    State(state): State<Arc<NodeState>>,
    Path((id, shard)): Path<(String, String)>,
) -> Result<Json<ReleasedShard>, ApiError> {
    let id = parse_id(&id)?;
    let shard: u16 = parse_number("shard", &shard)?;
    blocking(state.stalls.clone(), move || {
        if let Err(e) = state.ownership.refresh() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("node {} cannot read its shard ownership, so it releases nothing: {e:#}", state.name),
            ));
        }
        if state.ownership.owns(shard) {
            return Err(ApiError::conflict(format!(
                "shard {shard} is owned by node {}: its pairs stay",
                state.name
            )));
        }
        let released_bytes = state
            .store
            .delete_shard(&id, shard)
            .map_err(|e| store_error(&state, e))?;
        if released_bytes > 0 {
            state.metrics.released_bytes.inc_by(released_bytes);
            tracing::info!(node = %state.name, blob = %id, shard, released_bytes, "released the pairs of a shard it no longer owns");
        }
        Ok(Json(ReleasedShard { released_bytes }))
    })
    .await
}
