//! The fleet as its inventories show it (pure): which blobs are visible
//! and how healthy, which are deleted, which markers must be carried to
//! nodes that missed them, and which pairs a node keeps of shards it no
//! longer owns that their owner now holds (to release).
//!
//! A node's pairs count for a blob's health only in the shards the node
//! says it owns and the assignment gives it: reads and repairs ask the
//! owner, so a copy left behind on the node a shard moved away from serves
//! nobody, and a node claiming shards that are not its own (lying, or its
//! ownership file behind the assignment) can neither make a blob look
//! whole nor outvote the others on its layout.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::blob_state::{BlobState, Verdict};
use crate::codec::EncodingConfig;
use crate::fleet::{self, Assignment, BlobObservation, Health, ShardSet};
use crate::metrics::FleetMetrics;
use crate::wire::{InventoryBlob, InventoryPage};

/// What the fleet holds of one visible blob, from the inventories.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlobView {
    /// Length in bytes.
    pub size: u64,
    /// Segments.
    pub segments: u32,
    /// The generation of its newest commit.
    pub generation: u64,
    /// Shards holding a sliver pair of every segment.
    pub complete_shards: ShardSet,
}

/// A marker a node lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Marker {
    /// The commit of this generation (the node holds the blob's data but
    /// does not know it was committed).
    Commit(u64),
    /// The tombstone of this generation (the node slept through a delete,
    /// or holds nothing of the blob and keeps the tombstone for safety).
    Tombstone(u64),
}

/// One marker to carry: `node` gets `marker` for `blob`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MarkerTask {
    /// The node.
    pub node: String,
    /// The blob id.
    pub blob: String,
    /// What it misses.
    pub marker: Marker,
}

/// Pairs of one shard of a blob that a node holds but does not own, and
/// the shard's owner holds too: the node may drop them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReleaseTask {
    /// The node holding the pairs.
    pub node: String,
    /// The blob id.
    pub blob: String,
    /// The shard it no longer owns.
    pub shard: u16,
}

/// The fleet as its inventories show it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FleetView {
    /// Nodes that answered.
    pub ready: BTreeSet<String>,
    /// Nodes that did not answer (down, stopped, partitioned).
    pub silent: BTreeSet<String>,
    /// Visible blobs, by id.
    pub blobs: BTreeMap<String, BlobView>,
    /// Deleted blobs, by id, with the tombstone's generation.
    pub deleted: BTreeMap<String, u64>,
    /// Shards each answering node says it owns (ownership files reach
    /// nodes with a delay after the assignment changes).
    pub owned: BTreeMap<String, BTreeSet<u16>>,
    /// Of those, the shards the assignment gives the node too: only their
    /// pairs count, and only they are within reach.
    pub counted: BTreeMap<String, BTreeSet<u16>>,
    /// Markers answering nodes miss.
    pub markers: Vec<MarkerTask>,
    /// Pairs held outside their shard's owner that the owner holds whole
    /// (see `releases` for the ones to act on).
    pub strays: Vec<ReleaseTask>,
}

/// Everything the inventories say about one blob, gathered in one pass.
#[derive(Default)]
struct Gathered {
    state: BlobState,
    staged: bool,
    /// (size, segments) -> shards of nodes reporting it from their metadata.
    layouts: Vec<((u64, u32), usize)>,
}

impl Gathered {
    fn verdict(&self) -> Verdict {
        let combined = BlobState {
            staged: self.staged.then_some(1),
            ..self.state
        };
        crate::blob_state::resolve([&combined])
    }

    /// The layout most shards report; a liar's cannot outvote the others.
    fn layout(&self) -> (u64, u32) {
        self.layouts
            .iter()
            .max_by_key(|(_, votes)| *votes)
            .map_or((0, 0), |(layout, _)| *layout)
    }
}

/// Builds a `FleetView` one blob at a time: every node is first said to
/// have answered (with the shards it owns) or not, then each blob is
/// folded once with every answering node's entry for it. What a fold adds
/// depends only on that blob's entries and the nodes answering, so blobs
/// may come in any order and the inventories need never be held whole.
#[derive(Debug, Default)]
pub struct ViewBuilder {
    view: FleetView,
}

impl ViewBuilder {
    /// A builder of an empty view.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder that goes on from `view`: blobs `forget` drops can be
    /// folded again with new entries, every other blob stays as it was.
    pub fn resume(view: FleetView) -> Self {
        Self { view }
    }

    /// Drops what the view says of the blobs `ids` (their health, deletion,
    /// markers and strays), before they are folded again.
    pub fn forget(&mut self, ids: &std::collections::HashSet<String>) {
        let view = &mut self.view;
        for id in ids {
            view.blobs.remove(id);
            view.deleted.remove(id);
        }
        view.markers.retain(|task| !ids.contains(&task.blob));
        view.strays.retain(|task| !ids.contains(&task.blob));
    }

    /// `node` answered, saying it owns `claimed`; the assignment gives it
    /// `assigned`.
    pub fn answered(&mut self, node: &str, claimed: &[u16], assigned: &BTreeSet<u16>) {
        let claimed: BTreeSet<u16> = claimed.iter().copied().collect();
        let counted = claimed.intersection(assigned).copied().collect();
        self.view.ready.insert(node.to_string());
        self.view.owned.insert(node.to_string(), claimed);
        self.view.counted.insert(node.to_string(), counted);
    }

    /// `node` did not answer (down, stopped, partitioned).
    pub fn silent(&mut self, node: &str) {
        self.view.silent.insert(node.to_string());
    }

    /// `node` answered and then stopped partway through its inventory: it
    /// is not answering from now on; blobs already folded keep what it said.
    pub fn stopped(&mut self, node: &str) {
        self.view.ready.remove(node);
        self.view.owned.remove(node);
        self.view.counted.remove(node);
        self.silent(node);
    }

    /// Folds blob `id` with the entries answering nodes list for it (a node
    /// listing nothing of it holds nothing of it). A blob is visible when
    /// its newest commit beats every tombstone (see `blob_state`); a visible
    /// blob only some nodes know the metadata of still counts the pairs of
    /// the others.
    pub fn fold(&mut self, id: &str, entries: &[(&str, &InventoryBlob)]) {
        let view = &mut self.view;
        let mut gathered = Gathered::default();
        for (node, blob) in entries {
            // A node given none of the shards it claims still reports a
            // layout (the only one, if no owner knows the blob's metadata),
            // but outweighs no owner.
            let weight = view.counted.get(*node).map_or(0, BTreeSet::len);
            let s = &blob.state;
            gathered.state.commit = gathered.state.commit.max(s.commit);
            gathered.state.tombstone = gathered.state.tombstone.max(s.tombstone);
            gathered.staged |= s.staged.is_some();
            if blob.segments > 0 {
                let layout = (blob.size, blob.segments);
                match gathered.layouts.iter_mut().find(|(l, _)| *l == layout) {
                    Some((_, votes)) => *votes += weight,
                    None => gathered.layouts.push((layout, weight)),
                }
            }
        }
        match gathered.verdict() {
            Verdict::Visible(generation) => {
                for (node, blob) in entries {
                    let holds_data = blob.segments > 0 || !blob.shards.is_empty();
                    if holds_data && blob.state.commit < Some(generation) {
                        view.markers.push(MarkerTask {
                            node: node.to_string(),
                            blob: id.to_string(),
                            marker: Marker::Commit(generation),
                        });
                    }
                }
                let (size, segments) = gathered.layout();
                if segments == 0 {
                    return;
                }
                let mut complete_shards = ShardSet::default();
                let mut strays = Vec::new();
                for (node, blob) in entries {
                    let (Some(owned), Some(counted)) =
                        (view.owned.get(*node), view.counted.get(*node))
                    else {
                        continue;
                    };
                    for (shard, held) in &blob.shards {
                        if !owned.contains(shard) {
                            strays.push(ReleaseTask {
                                node: node.to_string(),
                                blob: id.to_string(),
                                shard: *shard,
                            });
                        } else if *held >= segments && counted.contains(shard) {
                            complete_shards.insert(*shard);
                        }
                    }
                }
                strays.retain(|t| complete_shards.contains(&t.shard));
                view.strays.append(&mut strays);
                view.blobs.insert(
                    id.to_string(),
                    BlobView {
                        size,
                        segments,
                        generation,
                        complete_shards,
                    },
                );
            }
            Verdict::Deleted(generation) => {
                view.deleted.insert(id.to_string(), generation);
                // The tombstone also goes to answering nodes that hold
                // nothing of the blob: it must outlive the loss of the
                // nodes that have it.
                let listed = |node: &str| {
                    entries
                        .iter()
                        .find(|(n, _)| *n == node)
                        .map(|(_, blob)| blob.state.tombstone)
                };
                for node in &view.ready {
                    if listed(node).is_none_or(|tombstone| tombstone < Some(generation)) {
                        view.markers.push(MarkerTask {
                            node: node.clone(),
                            blob: id.to_string(),
                            marker: Marker::Tombstone(generation),
                        });
                    }
                }
            }
            Verdict::Staged | Verdict::Absent => {}
        }
    }

    /// The view, its task lists in order.
    pub fn finish(mut self) -> FleetView {
        self.view.markers.sort();
        self.view.strays.sort();
        self.view
    }
}

impl FleetView {
    /// Builds the view from each node's whole inventory (`None`: no
    /// answer) under `assignment`; `control::observe` builds it page by
    /// page instead.
    pub fn from_inventories<'a>(
        assignment: &Assignment,
        inventories: impl IntoIterator<Item = (&'a str, Option<&'a InventoryPage>)>,
    ) -> Self {
        let mut builder = ViewBuilder::new();
        let mut by_blob: HashMap<&str, Vec<(&str, &InventoryBlob)>> = HashMap::new();
        for (node, inventory) in inventories {
            let Some(inventory) = inventory else {
                builder.silent(node);
                continue;
            };
            builder.answered(node, &inventory.shards, &fleet::shards_of(assignment, node));
            for blob in &inventory.blobs {
                by_blob
                    .entry(blob.id.as_str())
                    .or_default()
                    .push((node, blob));
            }
        }
        for (id, entries) in &by_blob {
            builder.fold(id, entries);
        }
        builder.finish()
    }

    /// The strays to release now: those whose node `assignment` does not
    /// give the shard either (an ownership file that has not caught up
    /// with a shard given back to its holder must not cost that copy).
    pub fn releases(&self, assignment: &Assignment) -> Vec<ReleaseTask> {
        self.strays
            .iter()
            .filter(|t| assignment.get(&t.shard) != Some(&t.node))
            .cloned()
            .collect()
    }

    /// The observations `fleet` plans with.
    pub fn observations(&self) -> Vec<BlobObservation<'_>> {
        self.blobs
            .iter()
            .map(|(id, blob)| BlobObservation {
                id,
                complete_shards: &blob.complete_shards,
            })
            .collect()
    }

    /// The assignment without the shards whose owner does not know yet
    /// that it owns them: repairs of those would be refused.
    pub fn confirmed(&self, assignment: &Assignment) -> Assignment {
        assignment
            .iter()
            .filter(|(shard, owner)| {
                self.owned
                    .get(owner.as_str())
                    .is_some_and(|owned| owned.contains(shard))
            })
            .map(|(shard, owner)| (*shard, owner.clone()))
            .collect()
    }

    /// Whether every answering node says it owns exactly what `assignment`
    /// gives it (its ownership file has caught up).
    pub fn ownership_matches(&self, assignment: &Assignment) -> bool {
        self.owned
            .iter()
            .all(|(node, owned)| *owned == fleet::shards_of(assignment, node))
    }

    /// Whether every shard `node` owns holds a pair of every blob.
    pub fn node_is_whole(&self, assignment: &Assignment, node: &str) -> bool {
        let shards = fleet::shards_of(assignment, node);
        self.blobs
            .values()
            .all(|b| shards.iter().all(|s| b.complete_shards.contains(s)))
    }

    /// Whether some blob that can be rebuilt misses a pair of a shard
    /// `assignment` gives `node`: a repair on it is still to do.
    pub fn node_has_repairs(
        &self,
        encoding: &EncodingConfig,
        assignment: &Assignment,
        node: &str,
    ) -> bool {
        let shards = fleet::shards_of(assignment, node);
        // Lost as the repair planner sees it: with fewer than p pairs held
        // no repair is planned, whatever is out of reach.
        !shards.is_empty()
            && self.blobs.values().any(|blob| {
                shards.iter().any(|s| !blob.complete_shards.contains(s))
                    && fleet::health(encoding, blob.complete_shards.len()) != Health::Lost
            })
    }

    /// Shards of the `n` whose owner by the assignment did not say it owns
    /// them: it did not answer, was not asked (its pod not ready), or has
    /// not heard it owns them yet.
    pub fn unanswered_shards(&self, n: usize) -> usize {
        let reached: BTreeSet<u16> = self.counted.values().flatten().copied().collect();
        (0..n).filter(|s| !reached.contains(&(*s as u16))).count()
    }

    /// The health of `blob` in this reading: Lost only when the shards out
    /// of reach could not make it readable either
    /// ([`fleet::health_in_reach`]).
    pub fn health_of(&self, encoding: &EncodingConfig, blob: &BlobView) -> Health {
        let unanswered = self.unanswered_shards(encoding.n());
        fleet::health_in_reach(encoding, blob.complete_shards.len(), unanswered)
    }

    /// (blob, shard) pairs missing across the fleet, of blobs that can be
    /// rebuilt: a Lost blob's pairs never will be (it is counted Lost).
    pub fn missing_pairs(&self, encoding: &EncodingConfig) -> usize {
        self.blobs
            .values()
            .filter(|b| self.health_of(encoding, b) != Health::Lost)
            .map(|b| encoding.n().saturating_sub(b.complete_shards.len()))
            .sum()
    }

    /// Ids of the Lost blobs (too few pairs held to read them, even with
    /// the shards out of reach), in order.
    pub fn lost_blobs<'a>(&'a self, encoding: &'a EncodingConfig) -> impl Iterator<Item = &'a str> {
        self.blobs
            .iter()
            .filter(|(_, b)| self.health_of(encoding, b) == Health::Lost)
            .map(|(id, _)| id.as_str())
    }

    /// Blobs per health.
    pub fn health_counts(&self, encoding: &EncodingConfig) -> BTreeMap<Health, usize> {
        let mut counts: BTreeMap<Health, usize> = Health::ALL.iter().map(|h| (*h, 0)).collect();
        for blob in self.blobs.values() {
            *counts.entry(self.health_of(encoding, blob)).or_default() += 1;
        }
        counts
    }

    /// Publishes ready and silent nodes, blobs by health and missing pairs.
    pub fn publish(&self, encoding: &EncodingConfig, metrics: &FleetMetrics) {
        metrics.nodes_ready.set(self.ready.len() as i64);
        metrics.nodes_not_answering.set(self.silent.len() as i64);
        metrics
            .shards_missing
            .set(self.missing_pairs(encoding) as i64);
        for (health, count) in self.health_counts(encoding) {
            metrics
                .blobs
                .with_label_values(&[health.name()])
                .set(count as i64);
        }
    }
}

#[cfg(test)]
mod tests;
