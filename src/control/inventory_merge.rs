//! Every node's inventory read as one merge, a page per node at a time
//! (pure; `control::observe` is the I/O around it). Nodes list their blobs
//! in id order, so once every node still listing has gone past an id, every
//! entry for that blob is in hand: it is folded into the view
//! (`ViewBuilder::fold`) and dropped. The loop holds at most a page per
//! node and the view, never the inventories, whatever the fleet holds.
//!
//! A node that fails its first page did not answer; one that fails a later
//! page (a deadline, a garbled page, more blobs than allowed) stopped: not
//! answering from then on, while blobs already folded keep what it said.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::view::{FleetView, ViewBuilder};
use crate::client::CheckedPage;
use crate::codec::BlobId;
use crate::wire::InventoryBlob;

/// Where the reading of one node's inventory stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// No page read yet.
    First,
    /// More pages follow the blob named.
    After(BlobId),
    /// Its last page was read.
    Done,
    /// It did not answer, or stopped partway.
    Gone,
}

#[derive(Debug)]
struct Cursor {
    name: String,
    /// The shards the assignment gives it.
    assigned: BTreeSet<u16>,
    reading: Reading,
    /// Entries read and not yet folded, in id order.
    buffered: VecDeque<(BlobId, InventoryBlob)>,
    /// Blobs it listed so far.
    listed: usize,
    /// Whether it answered its first page.
    listed_a_page: bool,
}

/// The merge of every node's inventory into a `FleetView`.
#[derive(Debug)]
pub struct InventoryMerge {
    builder: ViewBuilder,
    cursors: Vec<Cursor>,
    max_blobs: usize,
}

impl InventoryMerge {
    /// A merge of the inventories of `nodes` (by name, with the shards the
    /// assignment gives each), each cut once it lists more than
    /// `max_blobs` blobs.
    pub fn new(nodes: impl IntoIterator<Item = (String, BTreeSet<u16>)>, max_blobs: usize) -> Self {
        Self {
            builder: ViewBuilder::new(),
            cursors: nodes
                .into_iter()
                .map(|(name, assigned)| Cursor {
                    name,
                    assigned,
                    reading: Reading::First,
                    buffered: VecDeque::new(),
                    listed: 0,
                    listed_a_page: false,
                })
                .collect(),
            max_blobs,
        }
    }

    /// The pages the merge needs before it can go on: (node index, blob to
    /// read after). Empty once every inventory is read or cut.
    pub fn wanted(&self) -> Vec<(usize, Option<BlobId>)> {
        self.cursors
            .iter()
            .enumerate()
            .filter_map(|(i, cursor)| match cursor.reading {
                Reading::First => Some((i, None)),
                Reading::After(id) if cursor.buffered.is_empty() => Some((i, Some(id))),
                _ => None,
            })
            .collect()
    }

    /// Blobs node `node` listed so far.
    pub fn listed(&self, node: usize) -> usize {
        self.cursors[node].listed
    }

    /// Takes the answer to a page `wanted` asked of node `node`: the
    /// checked page, or why none came.
    pub fn take_page(&mut self, node: usize, answer: Result<CheckedPage, String>) {
        let first = self.cursors[node].reading == Reading::First;
        let page = match answer {
            Ok(page) if self.cursors[node].listed + page.ids.len() <= self.max_blobs => page,
            Ok(_) => {
                let reason = format!("lists more than {} blobs", self.max_blobs);
                return self.cut(node, &reason);
            }
            Err(reason) => return self.cut(node, &reason),
        };
        let cursor = &mut self.cursors[node];
        if first {
            self.builder
                .answered(&cursor.name, &page.page.shards, &cursor.assigned);
            cursor.listed_a_page = true;
        }
        cursor.listed += page.ids.len();
        cursor.reading = match (page.page.next, page.ids.last()) {
            (Some(_), Some(last)) => Reading::After(*last),
            _ => Reading::Done,
        };
        cursor
            .buffered
            .extend(page.ids.into_iter().zip(page.page.blobs));
    }

    /// Node `node` failed a page: not answering from now on.
    fn cut(&mut self, node: usize, reason: &str) {
        let cursor = &mut self.cursors[node];
        tracing::debug!(node = %cursor.name, "inventory: {reason}");
        match cursor.reading {
            Reading::First => self.builder.silent(&cursor.name),
            _ => self.builder.stopped(&cursor.name),
        }
        cursor.reading = Reading::Gone;
        cursor.buffered.clear();
    }

    /// Folds every blob that all nodes still listing have gone past.
    pub fn fold_ready(&mut self) {
        let mut frontier: Option<BlobId> = None;
        for cursor in &self.cursors {
            match cursor.reading {
                Reading::First => return,
                Reading::After(id) => frontier = Some(frontier.map_or(id, |f| f.min(id))),
                Reading::Done | Reading::Gone => {}
            }
        }
        let mut ready: BTreeMap<BlobId, Vec<(usize, InventoryBlob)>> = BTreeMap::new();
        for (i, cursor) in self.cursors.iter_mut().enumerate() {
            while let Some((id, _)) = cursor.buffered.front() {
                if frontier.is_some_and(|f| *id > f) {
                    break;
                }
                let (id, blob) = cursor.buffered.pop_front().expect("front was there");
                ready.entry(id).or_default().push((i, blob));
            }
        }
        for entries in ready.values() {
            let named: Vec<(&str, &InventoryBlob)> = entries
                .iter()
                .map(|(i, blob)| (self.cursors[*i].name.as_str(), blob))
                .collect();
            self.builder.fold(&entries[0].1.id, &named);
        }
    }

    /// Nodes that answered a page and then failed one: the view keeps
    /// what they listed before (unlike nodes that never answered).
    pub fn stopped_partway(&self) -> Vec<String> {
        self.cursors
            .iter()
            .filter(|c| c.reading == Reading::Gone && c.listed_a_page)
            .map(|c| c.name.clone())
            .collect()
    }

    /// The view: nodes still waiting for a page are cut, what is read is
    /// folded.
    pub fn finish(mut self) -> FleetView {
        for node in 0..self.cursors.len() {
            if matches!(
                self.cursors[node].reading,
                Reading::First | Reading::After(_)
            ) {
                self.cut(node, "not read to its end");
            }
        }
        self.fold_ready();
        self.builder.finish()
    }
}

#[cfg(test)]
mod tests;
