//! The node's inventory: every blob it holds anything of (data or a
//! tombstone), with its markers and the pairs held per shard, a page at a
//! time. The control loop reads it to see health and to spread commits
//! and tombstones.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;

use super::api::{blocking, load_metadata, parse_id, parse_number, store_error};
use super::NodeState;
use crate::api_error::ApiError;
use crate::wire::{InventoryBlob, InventoryPage};

#[derive(Deserialize)]
pub(super) struct InventoryQuery {
    after: Option<String>,
    limit: Option<String>,
}

pub(super) async fn inventory(
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
            let markers = state.store.state(&id).map_err(|e| store_error(&state, e))?;
            let holdings = state
                .store
                .holdings(&id)
                .map_err(|e| store_error(&state, e))?;
            let (size, segments) = match holdings.metadata.then(|| load_metadata(&state, &id)) {
                Some(Ok(m)) => (m.len(), m.segment_count() as u32),
                _ => (0, 0),
            };
            blobs.push(InventoryBlob {
                id: id.to_string(),
                size,
                segments,
                shards: holdings.shards,
                state: markers,
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
