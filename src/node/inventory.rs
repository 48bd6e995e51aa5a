//! The node's inventory: every blob it holds anything of (data or a
//! tombstone), with its markers and the pairs held per shard, a page at a
//! time. The control loop reads it to see health and to spread commits
//! and tombstones.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;

use super::api::{blocking, parse_id, parse_number, read_metadata, store_error};
use super::NodeState;
use crate::api_error::ApiError;
use crate::codec::BlobId;
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
    blocking(state.stalls.clone(), move || {
        let ids = state
            .store
            .list_blobs(after.as_ref(), limit + 1)
            .map_err(|e| store_error(&state, e))?;
        let next = (ids.len() > limit).then(|| ids[limit - 1].to_string());
        let blobs = ids
            .iter()
            .take(limit)
            .map(|id| entry_of(&state, id))
            .collect::<Result<Vec<_>, _>>()?;
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

/// What the node holds of one blob, as its inventory lists it.
pub(super) fn entry_of(state: &NodeState, id: &BlobId) -> Result<InventoryBlob, ApiError> {
    let markers = state.store.state(id).map_err(|e| store_error(state, e))?;
    let holdings = match state.store.holdings(id) {
        Ok(holdings) => holdings,
        // A blob directory that cannot be listed for good (EIO) holds
        // nothing the node can serve: listed with no pairs, so the loop
        // repairs them, and the inventory pages on past it (a failed page
        // would stop every listing there). A failure of the moment still
        // fails the page (asked again on the next pass).
        Err(e @ crate::store::StoreError::Io { .. }) => {
            tracing::warn!(node = %state.name, "listing what is held of {id}: {e}; counted as holding none of it");
            crate::store::BlobHoldings::default()
        }
        Err(e) => return Err(store_error(state, e)),
    };
    let (size, segments) = if holdings.metadata {
        layout_of(state, id).unwrap_or((0, 0))
    } else {
        (0, 0)
    };
    Ok(InventoryBlob {
        id: id.to_string(),
        size,
        segments,
        shards: holdings.shards,
        state: markers,
    })
}

/// A blob's length and segments from its metadata: from the cache when it
/// holds the metadata, else read past it once and remembered (see
/// `layouts`), so listing a large store neither rereads every metadata file
/// each time nor pushes out what reads use.
fn layout_of(state: &NodeState, id: &BlobId) -> Option<(u64, u32)> {
    if let Some(layout) = state.layouts.get(id) {
        return Some(layout);
    }
    let layout = match state.metadata.get(id) {
        Some(m) => (m.len(), m.segment_count() as u32),
        None => {
            let m = read_metadata(state, id).ok()?;
            (m.len(), m.segment_count() as u32)
        }
    };
    state.layouts.insert(*id, layout);
    Some(layout)
}
