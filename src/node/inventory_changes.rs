//! What changed in the node's inventory: the blobs whose files changed
//! after a position of the store's journal, and the inventory entries of
//! blobs asked for by id. The control loop reads these between whole
//! inventories, so a reconcile of a fleet at rest reads a few small pages.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::api::{blocking, parse_id, parse_number};
use super::inventory::entry_of;
use super::NodeState;
use crate::api_error::ApiError;
use crate::store::JournalPosition;
use crate::wire::{InventoryChanges, InventoryEntries, InventoryEntriesRequest};

/// Blob ids a page of changes gives at most.
pub const MOST_CHANGES_PER_PAGE: usize = 10_000;

/// Blobs one entries request may name.
pub const MOST_ENTRIES_PER_REQUEST: usize = 1000;

#[derive(Deserialize)]
pub(super) struct ChangesQuery {
    epoch: Option<String>,
    since: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/inventory/changes?epoch=E&since=S&limit=N`: the blobs changed
/// after position S of epoch E (410 when the journal cannot say: another
/// epoch, or changes forgotten); without a position, the journal's head.
pub(super) async fn changes(
    State(state): State<Arc<NodeState>>,
    Query(query): Query<ChangesQuery>,
) -> Result<Json<InventoryChanges>, ApiError> {
    let limit: usize = match query.limit.as_deref() {
        Some(text) => parse_number("limit", text)?,
        None => 1000,
    };
    if !(1..=MOST_CHANGES_PER_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MOST_CHANGES_PER_PAGE}"
        )));
    }
    let after = match (query.epoch.as_deref(), query.since.as_deref()) {
        (Some(epoch), Some(since)) => Some(JournalPosition {
            epoch: parse_number("epoch", epoch)?,
            seq: parse_number("since", since)?,
        }),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "epoch and since go together: both or neither",
            ))
        }
    };
    let (blobs, next, more) = match after {
        None => (Vec::new(), state.store.journal_head(), false),
        Some(after) => {
            let changes = state.store.changes_since(after, limit).map_err(|e| {
                ApiError::new(
                    StatusCode::GONE,
                    format!("{e}: read the whole inventory instead"),
                )
            })?;
            (changes.blobs, changes.next, changes.more)
        }
    };
    Ok(Json(InventoryChanges {
        node: state.name.clone(),
        shards: state.ownership.shards().into_iter().collect(),
        stored_bytes: state.store.used_bytes(),
        epoch: next.epoch,
        blobs: blobs.iter().map(ToString::to_string).collect(),
        next: next.seq,
        more,
    }))
}

/// `POST /v1/inventory/entries`: the inventory entries of the blobs named
/// (at most `MOST_ENTRIES_PER_REQUEST`), leaving out those the node holds
/// nothing of.
pub(super) async fn entries(
    State(state): State<Arc<NodeState>>,
    Json(request): Json<InventoryEntriesRequest>,
) -> Result<Json<InventoryEntries>, ApiError> {
    if request.blobs.len() > MOST_ENTRIES_PER_REQUEST {
        return Err(ApiError::bad_request(format!(
            "at most {MOST_ENTRIES_PER_REQUEST} blobs per request, not {}",
            request.blobs.len()
        )));
    }
    let ids = request
        .blobs
        .iter()
        .map(|text| parse_id(text))
        .collect::<Result<Vec<_>, _>>()?;
    blocking(state.stalls.clone(), move || {
        let mut blobs = Vec::new();
        for id in &ids {
            let entry = entry_of(&state, id)?;
            let holds_something =
                entry.state != Default::default() || !entry.shards.is_empty() || entry.segments > 0;
            if holds_something {
                blobs.push(entry);
            }
        }
        Ok(Json(InventoryEntries {
            node: state.name.clone(),
            shards: state.ownership.shards().into_iter().collect(),
            blobs,
        }))
    })
    .await
}
