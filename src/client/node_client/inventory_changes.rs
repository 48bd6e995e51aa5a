//! Calls for what changed in a node's inventory: the blobs changed after a
//! position of its journal, and its entries of named blobs. Both answers
//! are checked so that a node cannot slip into the control loop's view
//! entries of blobs nobody asked it about.

use std::collections::HashSet;

use reqwest::StatusCode;

use super::{NodeCallError, NodeClient};
use crate::codec::BlobId;
use crate::store::JournalPosition;
use crate::wire::{InventoryChanges, InventoryEntries, InventoryEntriesRequest};

/// Blob ids asked per page of changes.
pub const CHANGES_PAGE: usize = 10_000;

/// Blobs named per entries request.
pub const ENTRIES_PER_REQUEST: usize = 1000;

/// A page of changes whose ids parsed.
#[derive(Debug, Clone)]
pub struct CheckedChanges {
    /// The answer.
    pub changes: InventoryChanges,
    /// Its blobs' ids.
    pub ids: Vec<BlobId>,
    /// The position after them.
    pub next: JournalPosition,
}

/// What a node said to a position it was asked about.
#[derive(Debug, Clone)]
pub enum ChangesAnswer {
    /// The changes after it (a page).
    Changes(CheckedChanges),
    /// The node's journal no longer knows that position (it restarted, or
    /// forgot the changes since): read its whole inventory.
    Forgotten(String),
}

/// Checks a page of changes asked after `after`: at most a page of ids,
/// each a blob id, of the epoch asked and not before the position asked;
/// a page with blobs moves past that position, and one saying there is
/// more brings some (else asking on from it would never end).
fn check_changes(
    changes: &InventoryChanges,
    after: Option<JournalPosition>,
) -> Result<Vec<BlobId>, String> {
    if changes.blobs.len() > CHANGES_PAGE {
        return Err(format!(
            "{} blobs on a page of at most {CHANGES_PAGE}",
            changes.blobs.len()
        ));
    }
    if let Some(after) = after {
        if changes.epoch != after.epoch || changes.next < after.seq {
            return Err(format!(
                "asked after {}/{}, answered up to {}/{}",
                after.epoch, after.seq, changes.epoch, changes.next
            ));
        }
        if changes.more && changes.blobs.is_empty() {
            return Err("said there are more changes and brought none".to_string());
        }
        if !changes.blobs.is_empty() && changes.next == after.seq {
            return Err(format!(
                "brought changes and stayed at {}/{}",
                after.epoch, after.seq
            ));
        }
    } else if !changes.blobs.is_empty() || changes.more {
        return Err("asked for the journal's head, answered changes".to_string());
    }
    changes
        .blobs
        .iter()
        .map(|id| {
            id.parse::<BlobId>()
                .map_err(|e| format!("invalid blob id {id:?}: {e}"))
        })
        .collect()
}

/// Checks entries answered for `asked`: each of a blob asked, none twice.
fn check_entries(entries: &InventoryEntries, asked: &[BlobId]) -> Result<(), String> {
    let asked: HashSet<String> = asked.iter().map(ToString::to_string).collect();
    let mut seen = HashSet::new();
    for entry in &entries.blobs {
        if !asked.contains(&entry.id) {
            return Err(format!("an entry of blob {:?}, not asked", entry.id));
        }
        if !seen.insert(entry.id.as_str()) {
            return Err(format!("two entries of blob {}", entry.id));
        }
    }
    Ok(())
}

impl NodeClient {
    /// The blobs changed on the node after `after` (a page of at most
    /// `CHANGES_PAGE`), or with `None` only its journal's head.
    pub async fn inventory_changes(
        &self,
        after: Option<JournalPosition>,
    ) -> Result<ChangesAnswer, NodeCallError> {
        const WHAT: &str = "the inventory's changes";
        let mut path = format!("/v1/inventory/changes?limit={CHANGES_PAGE}");
        if let Some(after) = after {
            path.push_str(&format!("&epoch={}&since={}", after.epoch, after.seq));
        }
        let cap = 64 * 1024 + 16 * 1000 + CHANGES_PAGE as u64 * 64;
        let changes: InventoryChanges = match self.get_json(&path, cap, WHAT).await {
            Ok(changes) => changes,
            Err(NodeCallError::Status {
                status: StatusCode::GONE,
                message,
                ..
            }) => return Ok(ChangesAnswer::Forgotten(message)),
            Err(e) => return Err(e),
        };
        let ids = check_changes(&changes, after).map_err(|reason| NodeCallError::Garbled {
            url: self.base.clone(),
            what: WHAT,
            reason,
        })?;
        let next = JournalPosition {
            epoch: changes.epoch,
            seq: changes.next,
        };
        Ok(ChangesAnswer::Changes(CheckedChanges {
            changes,
            ids,
            next,
        }))
    }

    /// The node's inventory entries of `ids` (at most
    /// `ENTRIES_PER_REQUEST`): those it holds anything of.
    pub async fn inventory_entries(
        &self,
        ids: &[BlobId],
    ) -> Result<InventoryEntries, NodeCallError> {
        const WHAT: &str = "inventory entries";
        let request = InventoryEntriesRequest {
            blobs: ids.iter().map(ToString::to_string).collect(),
        };
        let until = self.call_deadline();
        let response = self
            .post_json("/v1/inventory/entries", &request, WHAT)
            .await?;
        let cap = 64 * 1024 + ids.len() as u64 * (512 + 16 * 1000);
        let body = self.read(response, cap, WHAT, until).await?;
        let entries: InventoryEntries = self.parse_json(&body, WHAT)?;
        check_entries(&entries, ids).map_err(|reason| NodeCallError::Garbled {
            url: self.base.clone(),
            what: WHAT,
            reason,
        })?;
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::InventoryBlob;

    fn id(n: u8) -> BlobId {
        BlobId([n; 32])
    }

    fn changes(epoch: u64, blobs: Vec<String>, next: u64, more: bool) -> InventoryChanges {
        InventoryChanges {
            node: "n".into(),
            shards: vec![0],
            stored_bytes: 0,
            epoch,
            blobs,
            next,
            more,
        }
    }

    #[test]
    fn a_page_of_changes_of_another_epoch_or_before_the_position_asked_is_garbled() {
        let at = JournalPosition { epoch: 5, seq: 10 };
        let ok = changes(5, vec![id(1).to_string()], 11, false);
        assert_eq!(check_changes(&ok, Some(at)).unwrap(), vec![id(1)]);
        assert!(check_changes(&changes(6, vec![], 11, false), Some(at)).is_err());
        assert!(check_changes(&changes(5, vec![], 9, false), Some(at)).is_err());
        assert!(check_changes(&changes(5, vec!["nope".into()], 11, false), Some(at)).is_err());
        let too_many = vec![id(1).to_string(); CHANGES_PAGE + 1];
        assert!(check_changes(&changes(5, too_many, 11, false), Some(at)).is_err());
        // More with nothing, or changes without moving on: asking again
        // from the same place would go on for ever.
        assert!(check_changes(&changes(5, vec![], 10, true), Some(at)).is_err());
        assert!(check_changes(&changes(5, vec![], 11, true), Some(at)).is_err());
        assert!(check_changes(&changes(5, vec![id(1).to_string()], 10, true), Some(at)).is_err());
        assert!(check_changes(&changes(5, vec![id(1).to_string()], 11, true), Some(at)).is_ok());
        // Asked for the head: no changes come with it.
        assert!(check_changes(&changes(5, vec![], 11, false), None).is_ok());
        assert!(check_changes(&changes(5, vec![id(1).to_string()], 11, false), None).is_err());
    }

    #[test]
    fn entries_of_blobs_not_asked_or_twice_of_one_blob_are_garbled() {
        let entry = |n: u8| InventoryBlob {
            id: id(n).to_string(),
            size: 1,
            segments: 1,
            shards: Default::default(),
            state: Default::default(),
        };
        let answer = |blobs| InventoryEntries {
            node: "n".into(),
            shards: vec![],
            blobs,
        };
        let asked = [id(1), id(2)];
        assert!(check_entries(&answer(vec![entry(2)]), &asked).is_ok());
        assert!(check_entries(&answer(vec![entry(3)]), &asked).is_err());
        assert!(check_entries(&answer(vec![entry(1), entry(1)]), &asked).is_err());
    }
}
