//! The control-loop shell shared by the local fleet (`dev`) and the
//! operator: read every node's inventory, turn them into a view of the
//! fleet (pure), publish blob health as metrics, and start the repairs
//! `fleet::plan_repairs` asks for through the nodes' repair action.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;

use crate::client::NodeClient;
use crate::codec::EncodingConfig;
use crate::fleet::{self, Assignment, BlobObservation, Health, RepairTask, ShardSet};
use crate::metrics::FleetMetrics;
use crate::wire::{InventoryPage, Peer, RepairRequest};

/// A node of the fleet and where its API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    /// The node's name (as in the assignment).
    pub name: String,
    /// Base URL of its API.
    pub url: String,
}

/// What the fleet holds of one blob, from the inventories.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlobView {
    /// Length in bytes.
    pub size: u64,
    /// Segments.
    pub segments: u32,
    /// Shards holding a sliver pair of every segment.
    pub complete_shards: ShardSet,
}

/// The fleet as its inventories show it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FleetView {
    /// Nodes that answered.
    pub ready: BTreeSet<String>,
    /// Blobs with metadata somewhere, by id.
    pub blobs: BTreeMap<String, BlobView>,
    /// Shards each answering node says it owns (ownership files reach
    /// nodes with a delay after the assignment changes).
    pub owned: BTreeMap<String, BTreeSet<u16>>,
}

impl FleetView {
    /// Builds the view from each node's inventory (`None`: no answer).
    /// A blob only some nodes know the metadata of still counts the pairs
    /// of the others; a blob no node has metadata for is left out.
    pub fn from_inventories<'a>(
        inventories: impl IntoIterator<Item = (&'a str, Option<&'a InventoryPage>)>,
    ) -> Self {
        let mut view = FleetView::default();
        let answered: Vec<&InventoryPage> = inventories
            .into_iter()
            .filter_map(|(name, inventory)| {
                let inventory = inventory?;
                view.ready.insert(name.to_string());
                view.owned
                    .insert(name.to_string(), inventory.shards.iter().copied().collect());
                Some(inventory)
            })
            .collect();
        // First what each blob is (from any node with its metadata), then
        // which shards hold all its segments. Hashed by id while building:
        // a million lookups at 10,000 blobs on 100 nodes.
        let mut blobs: HashMap<&str, BlobView> = HashMap::new();
        for inventory in &answered {
            for blob in inventory.blobs.iter().filter(|b| b.segments > 0) {
                let entry = blobs.entry(blob.id.as_str()).or_default();
                entry.size = blob.size;
                entry.segments = blob.segments;
            }
        }
        for inventory in &answered {
            for blob in &inventory.blobs {
                if let Some(view_blob) = blobs.get_mut(blob.id.as_str()) {
                    for (shard, segments) in &blob.shards {
                        if *segments >= view_blob.segments {
                            view_blob.complete_shards.insert(*shard);
                        }
                    }
                }
            }
        }
        view.blobs = blobs
            .into_iter()
            .map(|(id, blob)| (id.to_string(), blob))
            .collect();
        view
    }

    /// The observations `fleet` plans with.
    pub fn observations(&self) -> Vec<BlobObservation> {
        self.blobs
            .iter()
            .map(|(id, blob)| BlobObservation {
                id: id.clone(),
                complete_shards: blob.complete_shards.clone(),
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

    /// Whether every shard `node` owns holds a pair of every blob.
    pub fn node_is_whole(&self, assignment: &Assignment, node: &str) -> bool {
        let shards: Vec<u16> = assignment
            .iter()
            .filter(|(_, owner)| owner.as_str() == node)
            .map(|(s, _)| *s)
            .collect();
        self.blobs
            .values()
            .all(|b| shards.iter().all(|s| b.complete_shards.contains(s)))
    }

    /// (blob, shard) pairs missing across the fleet.
    pub fn missing_pairs(&self, n: usize) -> usize {
        self.blobs
            .values()
            .map(|b| n.saturating_sub(b.complete_shards.len()))
            .sum()
    }

    /// Blobs per health.
    pub fn health_counts(&self, encoding: &EncodingConfig) -> BTreeMap<Health, usize> {
        let mut counts: BTreeMap<Health, usize> = Health::ALL.iter().map(|h| (*h, 0)).collect();
        for blob in self.blobs.values() {
            *counts
                .entry(fleet::health(encoding, blob.complete_shards.len()))
                .or_default() += 1;
        }
        counts
    }

    /// Publishes ready nodes, blobs by health and missing pairs.
    pub fn publish(&self, encoding: &EncodingConfig, metrics: &FleetMetrics) {
        metrics.nodes_ready.set(self.ready.len() as i64);
        metrics
            .shards_missing
            .set(self.missing_pairs(encoding.n()) as i64);
        for (health, count) in self.health_counts(encoding) {
            metrics
                .blobs
                .with_label_values(&[health.name()])
                .set(count as i64);
        }
    }
}

/// Reads every node's whole inventory concurrently; `None` for a node
/// that did not answer.
pub async fn read_inventories(
    http: &reqwest::Client,
    nodes: &[NodeAddress],
) -> Vec<Option<InventoryPage>> {
    join_all(nodes.iter().map(|n| {
        let client = NodeClient::new(http.clone(), &n.url);
        async move { client.full_inventory().await.ok() }
    }))
    .await
}

/// Reads the inventories and builds the view.
pub async fn observe(http: &reqwest::Client, nodes: &[NodeAddress]) -> FleetView {
    let inventories = read_inventories(http, nodes).await;
    FleetView::from_inventories(
        nodes
            .iter()
            .zip(&inventories)
            .map(|(n, inv)| (n.name.as_str(), inv.as_ref())),
    )
}

/// What the repairs of one blob did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RepairTotals {
    /// Bytes fetched from peers.
    pub bytes: u64,
    /// (segment, shard) pairs rebuilt.
    pub pairs: u64,
    /// When the last repair that rebuilt something completed.
    pub last_completed: Option<SystemTime>,
}

/// Starts repairs on nodes and keeps track of those in flight.
#[derive(Clone)]
pub struct Repairer {
    http: reqwest::Client,
    metrics: FleetMetrics,
    in_flight: Arc<Mutex<HashSet<(String, String)>>>,
    totals: Arc<Mutex<HashMap<String, RepairTotals>>>,
}

impl Repairer {
    /// A repairer calling nodes with `http` and counting in `metrics`.
    pub fn new(http: reqwest::Client, metrics: FleetMetrics) -> Self {
        Self {
            http,
            metrics,
            in_flight: Arc::default(),
            totals: Arc::default(),
        }
    }

    /// Repairs in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.lock().expect("not poisoned").len()
    }

    /// Whether a repair of `blob` is in flight.
    pub fn is_repairing(&self, blob: &str) -> bool {
        self.in_flight
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|(b, _)| b == blob)
    }

    /// What the completed repairs of `blob` did.
    pub fn totals(&self, blob: &str) -> RepairTotals {
        self.totals
            .lock()
            .expect("not poisoned")
            .get(blob)
            .copied()
            .unwrap_or_default()
    }

    /// Plans repairs for `view` and starts as many as `max_in_flight`
    /// leaves room for, most at risk first; returns those started.
    pub fn run_plan(
        &self,
        encoding: &EncodingConfig,
        view: &FleetView,
        assignment: &Assignment,
        nodes: &[NodeAddress],
        max_in_flight: usize,
    ) -> Vec<RepairTask> {
        let room = max_in_flight.saturating_sub(self.in_flight());
        let plan = fleet::plan_repairs(
            encoding,
            &view.observations(),
            &view.confirmed(assignment),
            &view.ready,
            usize::MAX,
        );
        let mut started = Vec::new();
        for task in plan {
            if started.len() >= room {
                break;
            }
            if self.start(&task, assignment, nodes) {
                started.push(task);
            }
        }
        started
    }

    /// Starts one repair unless the same (blob, node) is in flight.
    fn start(&self, task: &RepairTask, assignment: &Assignment, nodes: &[NodeAddress]) -> bool {
        let url_of = |name: &str| nodes.iter().find(|n| n.name == name).map(|n| &n.url);
        let Some(target) = url_of(&task.node) else {
            return false;
        };
        let key = (task.blob.clone(), task.node.clone());
        {
            let mut in_flight = self.in_flight.lock().expect("not poisoned");
            if !in_flight.insert(key.clone()) {
                return false;
            }
            self.metrics.repairs_in_flight.set(in_flight.len() as i64);
        }
        let client = NodeClient::new(self.http.clone(), target);
        let request = RepairRequest {
            blob: task.blob.clone(),
            shards: task.shards.clone(),
            peers: assignment
                .iter()
                .filter(|(shard, owner)| **owner != task.node && !task.shards.contains(shard))
                .filter_map(|(shard, owner)| {
                    Some(Peer {
                        shard: *shard,
                        node: owner.clone(),
                        url: url_of(owner)?.clone(),
                    })
                })
                .collect(),
        };
        let this = self.clone();
        self.metrics.repairs_started.inc();
        tokio::spawn(async move {
            let (blob, node) = &key;
            match client.repair(&request).await {
                Ok(report) => {
                    this.metrics.repair_bytes.inc_by(report.bytes_fetched);
                    this.metrics
                        .repair_whole_segment_bytes
                        .inc_by(report.whole_segment_bytes);
                    {
                        let mut totals = this.totals.lock().expect("not poisoned");
                        let entry = totals.entry(blob.clone()).or_default();
                        entry.bytes += report.bytes_fetched;
                        entry.pairs += report.rebuilt;
                        if report.rebuilt > 0 {
                            entry.last_completed = Some(SystemTime::now());
                        }
                    }
                    if report.failed.is_empty() {
                        this.metrics.repairs_completed.inc();
                        tracing::info!(%blob, %node, rebuilt = report.rebuilt, bytes = report.bytes_fetched, "repaired");
                    } else {
                        this.metrics.repairs_failed.inc();
                        tracing::warn!(%blob, %node, failed = ?report.failed, "repair incomplete");
                    }
                }
                Err(e) => {
                    this.metrics.repairs_failed.inc();
                    tracing::warn!(%blob, %node, "repair failed: {e}");
                }
            }
            let mut in_flight = this.in_flight.lock().expect("not poisoned");
            in_flight.remove(&key);
            this.metrics.repairs_in_flight.set(in_flight.len() as i64);
        });
        true
    }

    /// Waits until no repair is in flight, or `timeout` passed; true when idle.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.in_flight() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::InventoryBlob;

    /// (blob id, segments, (shard, segments held) pairs).
    type Held<'a> = (&'a str, u32, &'a [(u16, u32)]);

    fn page(node: &str, blobs: &[Held]) -> InventoryPage {
        InventoryPage {
            node: node.into(),
            shards: vec![],
            stored_bytes: 0,
            blobs: blobs
                .iter()
                .map(|(id, segments, shards)| InventoryBlob {
                    id: id.to_string(),
                    size: 100,
                    segments: *segments,
                    shards: shards.iter().copied().collect(),
                })
                .collect(),
            next: None,
        }
    }

    #[test]
    fn a_shard_counts_only_when_it_holds_every_segment() {
        let a = page("a", &[("x", 2, &[(0, 2), (1, 1)])]);
        let b = page("b", &[("x", 2, &[(2, 2)])]);
        let view = FleetView::from_inventories([("a", Some(&a)), ("b", Some(&b)), ("c", None)]);
        assert_eq!(view.ready, ["a", "b"].map(String::from).into());
        assert_eq!(view.blobs["x"].complete_shards, [0, 2].into());
        assert_eq!(view.blobs["x"].segments, 2);
    }

    #[test]
    fn pairs_on_a_node_without_metadata_still_count() {
        // Node b lost the metadata but kept its slivers (or got them first).
        let a = page("a", &[("x", 1, &[(0, 1)])]);
        let b = page("b", &[("x", 0, &[(1, 1)])]);
        let view = FleetView::from_inventories([("a", Some(&a)), ("b", Some(&b))]);
        assert_eq!(view.blobs["x"].complete_shards, [0, 1].into());
    }

    #[test]
    fn a_blob_without_metadata_anywhere_is_not_a_blob() {
        let a = page("a", &[("x", 0, &[(0, 1)])]);
        let view = FleetView::from_inventories([("a", Some(&a))]);
        assert!(view.blobs.is_empty());
    }

    #[test]
    fn shards_an_owner_does_not_know_of_yet_are_not_repaired_there() {
        let mut a = page("a", &[]);
        a.shards = vec![0];
        let view = FleetView::from_inventories([("a", Some(&a)), ("b", None)]);
        let assignment: Assignment = [(0, "a".into()), (1, "a".into()), (2, "b".into())].into();
        assert_eq!(view.confirmed(&assignment), [(0, "a".to_string())].into());
    }

    #[test]
    fn a_node_is_whole_when_its_shards_hold_every_blob() {
        let a = page("a", &[("x", 1, &[(0, 1), (1, 1)]), ("y", 1, &[(0, 1)])]);
        let view = FleetView::from_inventories([("a", Some(&a))]);
        let assignment: Assignment = [(0, "a".into()), (1, "b".into())].into();
        assert!(view.node_is_whole(&assignment, "a"));
        assert!(!view.node_is_whole(&assignment, "b"), "y misses shard 1");
    }

    #[test]
    fn health_counts_and_missing_pairs_follow_the_view() {
        let encoding = EncodingConfig::new(4).unwrap(); // f 1, p 2, q 3
        let a = page(
            "a",
            &[
                ("whole", 1, &[(0, 1), (1, 1), (2, 1), (3, 1)]),
                ("one-gone", 1, &[(0, 1), (1, 1), (2, 1)]),
                ("lost", 1, &[(0, 1)]),
            ],
        );
        let view = FleetView::from_inventories([("a", Some(&a))]);
        let counts = view.health_counts(&encoding);
        assert_eq!(counts[&Health::Healthy], 1);
        assert_eq!(counts[&Health::Degraded], 1);
        assert_eq!(counts[&Health::Lost], 1);
        assert_eq!(view.missing_pairs(4), 1 + 3);
    }
}
