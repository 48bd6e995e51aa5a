//! Starts the repairs `fleet::plan_repairs` asks for on the nodes that
//! own the missing shards, and keeps track of those in flight. A repair
//! names the blob, the shards and the committed generation; the node finds
//! its peers through its own fleet map.
//!
//! The tasks of the last plan that found no room wait in a queue: each
//! repair that ends starts the next one, so a fleet with many blobs to
//! heal keeps its repairs running between two observations of the fleet
//! (which read every node's inventory) instead of starting a handful per
//! observation. The next plan replaces the queue, so it keeps at most
//! `MOST_QUEUED` repairs, far more than can end before that plan comes:
//! a fleet of a million blobs that lost a node queues ten thousand, not a
//! million. A queued repair that
//! runs late is still safe: it names the generation it repairs, and the
//! node rebuilds only what it misses. A plan leaves out what it cannot
//! know is still missing: a (blob, node) whose repair is in flight (it
//! would run again when that one ends), or whose repair ended after the
//! view was read (the view predates it), so a repair is not run twice
//! for nothing.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::{FleetView, NodeAddress};
use crate::client::{NodeCallError, NodeCalls};
use crate::codec::EncodingConfig;
use crate::fleet::{self, Assignment, RepairTask};
use crate::metrics::FleetMetrics;
use crate::wire::RepairRequest;

/// Repairs a plan queues at most beyond those it starts.
pub const MOST_QUEUED: usize = 10_000;

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

/// A repair started, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedRepair {
    /// What it repairs.
    pub task: RepairTask,
    /// When it was started.
    pub at: Instant,
}

/// Repairs on one node that failed since its last one that completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairFailures {
    /// The node the repairs ran on.
    pub node: String,
    /// How many failed in a row.
    pub count: u64,
    /// The blob of the last one.
    pub blob: String,
    /// Why the last one failed, as the node or the call said.
    pub why: String,
    /// When the last one failed.
    pub at: SystemTime,
    /// Whether these failures were reported (`untold_failures`).
    pub told: bool,
}

/// Why a repair whose report lists pairs it could not rebuild fell short:
/// the first reason and how many pairs.
fn incomplete_why(failed: &[(u32, u16, String)]) -> String {
    match failed.first() {
        Some((segment, shard, reason)) => format!(
            "{} pairs not rebuilt; segment {segment}, shard {shard}: {reason}",
            failed.len()
        ),
        None => "no pair was left missing".into(),
    }
}

/// A planned repair, ready to be sent.
#[derive(Debug, Clone)]
struct QueuedRepair {
    task: RepairTask,
    url: String,
    request: RepairRequest,
}

/// The repairs of the last plan not started yet, and how many may run.
#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<QueuedRepair>,
    max_in_flight: usize,
    /// Started since the last plan (by repairs that ended).
    started: Vec<StartedRepair>,
}

/// Starts repairs on nodes and keeps track of those in flight.
#[derive(Clone)]
pub struct Repairer {
    calls: NodeCalls,
    metrics: FleetMetrics,
    in_flight: Arc<Mutex<HashSet<(String, String)>>>,
    /// When each (blob, node) repair last ended whole, until a plan from a
    /// view read after that comes.
    ended: Arc<Mutex<HashMap<(String, String), Instant>>>,
    totals: Arc<Mutex<HashMap<String, RepairTotals>>>,
    queue: Arc<Mutex<Queue>>,
    /// Per node, the repairs that failed since its last complete one.
    failures: Arc<Mutex<BTreeMap<String, RepairFailures>>>,
}

impl Repairer {
    /// A repairer calling nodes with `calls` and counting in `metrics`.
    pub fn new(calls: NodeCalls, metrics: FleetMetrics) -> Self {
        Self {
            calls,
            metrics,
            in_flight: Arc::default(),
            ended: Arc::default(),
            totals: Arc::default(),
            queue: Arc::default(),
            failures: Arc::default(),
        }
    }

    /// Per node (in name order), the repairs that failed since its last
    /// complete one, for nodes where the last repair failed.
    pub fn failing(&self) -> Vec<RepairFailures> {
        self.failures
            .lock()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// The nodes whose repairs failed `at_least` times in a row and were
    /// not reported yet; they are marked reported (a node is reported again
    /// only after a repair on it completed and failures began anew).
    pub fn untold_failures(&self, at_least: u64) -> Vec<RepairFailures> {
        let mut failures = self.failures.lock().expect("not poisoned");
        failures
            .values_mut()
            .filter(|f| !f.told && f.count >= at_least)
            .map(|f| {
                f.told = true;
                f.clone()
            })
            .collect()
    }

    /// Notes a repair of `blob` on `node` that failed for `why`.
    fn note_failure(&self, blob: &str, node: &str, why: String) {
        self.metrics.repairs_failed.inc();
        let mut failures = self.failures.lock().expect("not poisoned");
        let entry = failures
            .entry(node.to_string())
            .or_insert_with(|| RepairFailures {
                node: node.to_string(),
                count: 0,
                blob: String::new(),
                why: String::new(),
                at: SystemTime::now(),
                told: false,
            });
        entry.count += 1;
        entry.blob = blob.to_string();
        entry.why = why;
        entry.at = SystemTime::now();
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

    /// Plans repairs for `view` (read from `observed_at` on), starts as
    /// many as `max_in_flight` leaves room for, most at risk first, and
    /// queues the rest (replacing the last plan's queue) for repairs that
    /// end to start. A (blob, node) repair in flight, or ended whole since
    /// `observed_at`, is left out. Returns the repairs started since the
    /// last plan, these included.
    pub fn run_plan(
        &self,
        encoding: &EncodingConfig,
        view: &FleetView,
        assignment: &Assignment,
        nodes: &[NodeAddress],
        max_in_flight: usize,
        observed_at: Instant,
    ) -> Vec<StartedRepair> {
        let settled = self.settled_since(observed_at);
        // Failures of nodes that left the fleet are not theirs to fix; nor
        // are those of a node left with nothing to repair (the blobs that
        // failed were deleted, lost, or healed another way), which would
        // otherwise stand in the status for ever.
        let confirmed = view.confirmed(assignment);
        self.failures
            .lock()
            .expect("not poisoned")
            .retain(|node, _| {
                nodes.iter().any(|n| &n.name == node)
                    && (!view.ready.contains(node)
                        || view.node_has_repairs(encoding, &confirmed, node))
            });
        // Nor are the totals of blobs gone from the view (deleted) kept.
        self.totals
            .lock()
            .expect("not poisoned")
            .retain(|blob, _| view.blobs.contains_key(blob));
        let plan = fleet::plan_repairs(
            encoding,
            &view.observations(),
            &view.confirmed(assignment),
            &view.ready,
            max_in_flight + MOST_QUEUED,
        );
        let waiting = plan
            .into_iter()
            .filter(|task| !settled.contains(&(task.blob.clone(), task.node.clone())))
            .filter_map(|task| {
                let url = nodes.iter().find(|n| n.name == task.node)?.url.clone();
                let blob = view.blobs.get(&task.blob)?;
                let request = RepairRequest {
                    blob: task.blob.clone(),
                    shards: task.shards.clone(),
                    generation: blob.generation,
                    size: blob.size,
                    segments: blob.segments,
                };
                Some(QueuedRepair { task, url, request })
            })
            .collect();
        {
            let mut queue = self.queue.lock().expect("not poisoned");
            queue.waiting = waiting;
            queue.max_in_flight = max_in_flight;
        }
        self.start_queued();
        std::mem::take(&mut self.queue.lock().expect("not poisoned").started)
    }

    /// The (blob, node) repairs a view read from `observed_at` on cannot
    /// know the outcome of: in flight, or ended whole since. Forgets the
    /// ends before `observed_at` (later views see what they did).
    fn settled_since(&self, observed_at: Instant) -> HashSet<(String, String)> {
        let mut ended = self.ended.lock().expect("not poisoned");
        ended.retain(|_, at| *at > observed_at);
        let mut settled: HashSet<(String, String)> = ended.keys().cloned().collect();
        settled.extend(self.in_flight.lock().expect("not poisoned").iter().cloned());
        settled
    }

    /// Repairs queued and not started yet.
    pub fn queued(&self) -> usize {
        self.queue.lock().expect("not poisoned").waiting.len()
    }

    /// Starts queued repairs while there is room, skipping any whose
    /// (blob, node) is in flight.
    fn start_queued(&self) {
        let mut queue = self.queue.lock().expect("not poisoned");
        while self.in_flight() < queue.max_in_flight {
            let Some(next) = queue.waiting.pop_front() else {
                break;
            };
            if self.start(&next) {
                queue.started.push(StartedRepair {
                    task: next.task,
                    at: Instant::now(),
                });
            }
        }
    }

    /// Starts one repair unless the same (blob, node) is in flight.
    fn start(&self, queued: &QueuedRepair) -> bool {
        let task = &queued.task;
        let key = (task.blob.clone(), task.node.clone());
        {
            let mut in_flight = self.in_flight.lock().expect("not poisoned");
            if !in_flight.insert(key.clone()) {
                return false;
            }
            self.metrics.repairs_in_flight.set(in_flight.len() as i64);
        }
        let client = self.calls.node(&queued.url);
        let request = queued.request.clone();
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
                        this.ended
                            .lock()
                            .expect("not poisoned")
                            .insert(key.clone(), Instant::now());
                        this.metrics.repairs_completed.inc();
                        this.failures.lock().expect("not poisoned").remove(node);
                        tracing::info!(%blob, %node, rebuilt = report.rebuilt, bytes = report.bytes_fetched, "repaired");
                    } else {
                        tracing::warn!(%blob, %node, failed = ?report.failed, "repair incomplete");
                        this.note_failure(blob, node, incomplete_why(&report.failed));
                    }
                }
                Err(e) => {
                    tracing::warn!(%blob, %node, "repair failed: {e}");
                    this.note_failure(blob, node, e.to_string());
                    // A node that answered about this blob (it was deleted
                    // meanwhile, no peer had valid metadata) goes on with
                    // its other repairs; one that did not answer has them
                    // wait for the next plan, which sees whether it is
                    // still there.
                    let about_this_blob = matches!(
                        &e,
                        NodeCallError::Status { status, .. } if status.is_client_error()
                    );
                    if !about_this_blob {
                        this.queue
                            .lock()
                            .expect("not poisoned")
                            .waiting
                            .retain(|q| &q.task.node != node);
                    }
                }
            }
            {
                let mut in_flight = this.in_flight.lock().expect("not poisoned");
                in_flight.remove(&key);
                this.metrics.repairs_in_flight.set(in_flight.len() as i64);
            }
            this.start_queued();
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
    use crate::blob_state::BlobState;
    use crate::wire::{InventoryBlob, InventoryPage, RepairLine, RepairReport};

    /// A node that answers every repair with an empty report after a short
    /// wait, counting the repairs it was asked for.
    async fn counting_node() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        node_reporting(RepairReport::default()).await
    }

    /// A node that answers every repair with `report` after a short wait,
    /// counting the repairs it was asked for.
    async fn node_reporting(report: RepairReport) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        node_answering(RepairLine::Report(report)).await
    }

    /// A node that answers every repair with `line` after a short wait,
    /// counting the repairs it was asked for.
    async fn node_answering(line: RepairLine) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = asked.clone();
        let app = axum::Router::new().route(
            "/v1/repair",
            axum::routing::post(move || {
                let counter = counter.clone();
                let line = line.clone();
                async move {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    format!("{}\n", serde_json::to_string(&line).expect("json"))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, asked)
    }

    /// Shards 0-3 on nodes a-d; `blobs` blobs held whole by a, b and c and
    /// not at all by d.
    fn view_missing_d(blobs: usize) -> (FleetView, Assignment) {
        let held: Vec<InventoryBlob> = (0..blobs)
            .map(|i| InventoryBlob {
                id: format!("blob-{i}"),
                size: 100,
                segments: 1,
                shards: [].into(),
                state: BlobState {
                    commit: Some(1),
                    ..BlobState::default()
                },
            })
            .collect();
        let page = |node: &str, shard: u16, blobs: &[InventoryBlob]| InventoryPage {
            node: node.into(),
            shards: vec![shard],
            stored_bytes: 0,
            blobs: blobs
                .iter()
                .cloned()
                .map(|b| InventoryBlob {
                    shards: [(shard, 1)].into_iter().collect(),
                    ..b
                })
                .collect(),
            next: None,
        };
        let pages = [
            page("a", 0, &held),
            page("b", 1, &held),
            page("c", 2, &held),
            page("d", 3, &[]),
        ];
        let assignment: Assignment = [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
            .into_iter()
            .map(|(shard, node)| (shard, node.to_string()))
            .collect();
        let view = FleetView::from_inventories(
            &assignment,
            ["a", "b", "c", "d"].into_iter().zip(pages.iter().map(Some)),
        );
        (view, assignment)
    }

    /// Nodes a-d, all answering at `url`.
    fn nodes_at(url: &str) -> Vec<NodeAddress> {
        ["a", "b", "c", "d"]
            .into_iter()
            .zip(0u16..)
            .map(|(name, shard)| NodeAddress {
                name: name.into(),
                url: url.to_string(),
                shards: [shard].into(),
            })
            .collect()
    }

    #[tokio::test]
    async fn repairs_beyond_the_room_start_as_earlier_ones_end_without_a_new_plan() {
        let (url, asked) = counting_node().await;
        let (view, assignment) = view_missing_d(6);
        let nodes = nodes_at(&url);
        let repairer = Repairer::new(
            NodeCalls::new(crate::auth::TokenSet::single("t"), Default::default()),
            FleetMetrics::new(&prometheus::Registry::new()),
        );
        let encoding = EncodingConfig::new(4).unwrap();
        let started = repairer.run_plan(&encoding, &view, &assignment, &nodes, 1, Instant::now());
        assert_eq!(started.len(), 1, "one at a time");
        assert!(started.iter().all(|s| s.task.node == "d"));
        assert_eq!(repairer.queued(), 5);
        // No further plan: the queue drains as repairs end.
        let deadline = Instant::now() + Duration::from_secs(20);
        while asked.load(std::sync::atomic::Ordering::SeqCst) < 6 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 6);
        assert!(repairer.wait_idle(Duration::from_secs(10)).await);
        assert_eq!(repairer.queued(), 0);
        // The next plan reports the repairs the queue started.
        let reported = repairer.run_plan(&encoding, &view, &assignment, &nodes, 0, Instant::now());
        assert_eq!(reported.len(), 5);
        assert_eq!(
            repairer.queued(),
            6,
            "a plan without room queues everything"
        );
    }

    #[tokio::test]
    async fn a_plan_queues_at_most_its_bound_of_repairs_however_many_blobs_need_one() {
        let (url, _asked) = counting_node().await;
        let (view, assignment) = view_missing_d(MOST_QUEUED + 50);
        let repairer = Repairer::new(
            NodeCalls::new(crate::auth::TokenSet::single("t"), Default::default()),
            FleetMetrics::new(&prometheus::Registry::new()),
        );
        let encoding = EncodingConfig::new(4).unwrap();
        repairer.run_plan(
            &encoding,
            &view,
            &assignment,
            &nodes_at(&url),
            0,
            Instant::now(),
        );
        assert_eq!(repairer.queued(), MOST_QUEUED);
    }

    #[tokio::test]
    async fn a_node_that_cannot_be_reached_has_its_queued_repairs_dropped() {
        // Nothing listens at this address once the listener is dropped.
        let url = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let (view, assignment) = view_missing_d(4);
        let nodes = nodes_at(&url);
        let metrics = FleetMetrics::new(&prometheus::Registry::new());
        let repairer = Repairer::new(
            NodeCalls::new(crate::auth::TokenSet::single("t"), Default::default()),
            metrics.clone(),
        );
        let encoding = EncodingConfig::new(4).unwrap();
        repairer.run_plan(&encoding, &view, &assignment, &nodes, 1, Instant::now());
        assert!(repairer.wait_idle(Duration::from_secs(10)).await);
        assert_eq!(repairer.queued(), 0);
        assert_eq!(metrics.repairs_failed.get(), 1, "only the first was tried");
    }

    #[tokio::test]
    async fn a_blob_deleted_during_its_repair_leaves_the_nodes_other_queued_repairs_running() {
        let (url, asked) =
            node_answering(RepairLine::Error("repair stopped: deleted".into())).await;
        let (view, assignment) = view_missing_d(4);
        let metrics = FleetMetrics::new(&prometheus::Registry::new());
        let repairer = Repairer::new(
            NodeCalls::new(crate::auth::TokenSet::single("t"), Default::default()),
            metrics.clone(),
        );
        let encoding = EncodingConfig::new(4).unwrap();
        repairer.run_plan(
            &encoding,
            &view,
            &assignment,
            &nodes_at(&url),
            1,
            Instant::now(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while (asked.load(std::sync::atomic::Ordering::SeqCst) < 4 || repairer.in_flight() > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 4);
        assert_eq!(repairer.queued(), 0);
        assert_eq!(metrics.repairs_failed.get(), 4);
    }

    #[tokio::test]
    async fn repair_totals_are_forgotten_once_their_blob_leaves_the_view() {
        let (url, _asked) = node_reporting(RepairReport {
            rebuilt: 2,
            bytes_fetched: 10,
            ..RepairReport::default()
        })
        .await;
        let (view, assignment) = view_missing_d(1);
        let repairer = Repairer::new(
            NodeCalls::new(crate::auth::TokenSet::single("t"), Default::default()),
            FleetMetrics::new(&prometheus::Registry::new()),
        );
        let encoding = EncodingConfig::new(4).unwrap();
        let nodes = nodes_at(&url);
        repairer.run_plan(&encoding, &view, &assignment, &nodes, 1, Instant::now());
        assert!(repairer.wait_idle(Duration::from_secs(10)).await);
        assert_eq!(repairer.totals("blob-0").pairs, 2);
        repairer.run_plan(&encoding, &view, &assignment, &nodes, 0, Instant::now());
        assert_eq!(repairer.totals("blob-0").pairs, 2, "kept while it is there");
        let (gone, _) = view_missing_d(0);
        repairer.run_plan(&encoding, &gone, &assignment, &nodes, 0, Instant::now());
        assert_eq!(repairer.totals("blob-0"), RepairTotals::default());
    }

    #[tokio::test]
    async fn failures_in_a_row_are_kept_per_node_with_why_told_once_and_forgotten_once_a_repair_completes(
    ) {
        let unreachable = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let (short, _) = node_reporting(RepairReport {
            failed: vec![(
                0,
                3,
                "2 of 3 peers answered; p = 2 valid symbols needed".into(),
            )],
            ..RepairReport::default()
        })
        .await;
        let (whole, _) = counting_node().await;
        let (view, assignment) = view_missing_d(1);
        let repairer = Repairer::new(
            NodeCalls::new(crate::auth::TokenSet::single("t"), Default::default()),
            FleetMetrics::new(&prometheus::Registry::new()),
        );
        let encoding = EncodingConfig::new(4).unwrap();
        let run = |url: &str| {
            repairer.run_plan(
                &encoding,
                &view,
                &assignment,
                &nodes_at(url),
                1,
                Instant::now(),
            );
        };
        run(&unreachable);
        assert!(repairer.wait_idle(Duration::from_secs(10)).await);
        let failing = repairer.failing();
        assert_eq!(failing.len(), 1);
        assert_eq!((failing[0].node.as_str(), failing[0].count), ("d", 1));
        assert_eq!(failing[0].blob, "blob-0");
        assert!(
            repairer.untold_failures(2).is_empty(),
            "one failure is not told"
        );
        run(&short);
        assert!(repairer.wait_idle(Duration::from_secs(10)).await);
        let failing = repairer.failing();
        assert_eq!(failing[0].count, 2);
        assert_eq!(
            failing[0].why,
            "1 pairs not rebuilt; segment 0, shard 3: 2 of 3 peers answered; p = 2 valid symbols needed"
        );
        let told = repairer.untold_failures(2);
        assert_eq!(told.len(), 1);
        assert!(repairer.untold_failures(2).is_empty(), "told once");
        // A node that leaves the fleet takes its failures along; one that
        // completes a repair starts anew.
        repairer.run_plan(
            &encoding,
            &view,
            &assignment,
            &nodes_at(&whole)[..3],
            1,
            Instant::now(),
        );
        assert!(repairer.failing().is_empty());
        run(&short);
        assert!(repairer.wait_idle(Duration::from_secs(10)).await);
        assert_eq!(repairer.failing()[0].count, 1);
        run(&whole);
        assert!(repairer.wait_idle(Duration::from_secs(10)).await);
        assert!(
            repairer.failing().is_empty(),
            "a complete repair clears them"
        );
    }

    #[tokio::test]
    async fn failures_of_a_node_left_with_nothing_to_repair_are_forgotten() {
        let unreachable = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let (view, assignment) = view_missing_d(1);
        let repairer = Repairer::new(
            NodeCalls::new(crate::auth::TokenSet::single("t"), Default::default()),
            FleetMetrics::new(&prometheus::Registry::new()),
        );
        let encoding = EncodingConfig::new(4).unwrap();
        let nodes = nodes_at(&unreachable);
        repairer.run_plan(&encoding, &view, &assignment, &nodes, 1, Instant::now());
        assert!(repairer.wait_idle(Duration::from_secs(10)).await);
        assert_eq!(repairer.failing().len(), 1);
        // A plan with the repair still to do keeps them (none runs: no room).
        repairer.run_plan(&encoding, &view, &assignment, &nodes, 0, Instant::now());
        assert_eq!(repairer.failing().len(), 1);
        // The blob was deleted: nothing is left to repair on d.
        let (deleted, _) = view_missing_d(0);
        repairer.run_plan(&encoding, &deleted, &assignment, &nodes, 0, Instant::now());
        assert!(repairer.failing().is_empty());
    }

    #[tokio::test]
    async fn a_repair_is_not_run_again_from_a_view_read_before_it_ended_or_while_it_runs() {
        let (url, asked) = counting_node().await;
        let (view, assignment) = view_missing_d(2);
        let nodes = nodes_at(&url);
        let repairer = Repairer::new(
            NodeCalls::new(crate::auth::TokenSet::single("t"), Default::default()),
            FleetMetrics::new(&prometheus::Registry::new()),
        );
        let encoding = EncodingConfig::new(4).unwrap();
        let read_at = Instant::now();
        let count = || asked.load(std::sync::atomic::Ordering::SeqCst);
        // One runs, one waits; a plan from a view read meanwhile leaves the
        // running one out of the queue it replaces.
        let started = repairer.run_plan(&encoding, &view, &assignment, &nodes, 1, read_at);
        assert_eq!(started.len(), 1);
        let again = repairer.run_plan(&encoding, &view, &assignment, &nodes, 1, Instant::now());
        assert!(again.is_empty());
        assert_eq!(repairer.queued(), 1, "only the blob not in flight waits");
        assert!(repairer.wait_idle(Duration::from_secs(10)).await);
        let deadline = Instant::now() + Duration::from_secs(10);
        while (count() < 2 || repairer.in_flight() > 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(count(), 2, "each blob repaired once");
        // A plan from a view read before they ended starts neither again; a
        // view read after them says what is still missing, and is followed.
        let reported = repairer.run_plan(&encoding, &view, &assignment, &nodes, 2, read_at);
        assert_eq!(reported.len(), 1, "only the one the queue started");
        assert_eq!((repairer.in_flight(), repairer.queued()), (0, 0));
        let fresh = repairer.run_plan(&encoding, &view, &assignment, &nodes, 2, Instant::now());
        assert_eq!(fresh.len(), 2);
        assert!(repairer.wait_idle(Duration::from_secs(10)).await);
        assert_eq!(count(), 4);
    }
}
