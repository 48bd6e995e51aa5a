//! Starts the repairs `fleet::plan_repairs` asks for on the nodes that
//! own the missing shards, and keeps track of those in flight. A repair
//! names the blob, the shards and the committed generation; the node finds
//! its peers through its own fleet map.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{FleetView, NodeAddress};
use crate::client::NodeCalls;
use crate::codec::EncodingConfig;
use crate::fleet::{self, Assignment, RepairTask};
use crate::metrics::FleetMetrics;
use crate::wire::RepairRequest;

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
    calls: NodeCalls,
    metrics: FleetMetrics,
    in_flight: Arc<Mutex<HashSet<(String, String)>>>,
    totals: Arc<Mutex<HashMap<String, RepairTotals>>>,
}

impl Repairer {
    /// A repairer calling nodes with `calls` and counting in `metrics`.
    pub fn new(calls: NodeCalls, metrics: FleetMetrics) -> Self {
        Self {
            calls,
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
            if self.start(&task, view, nodes) {
                started.push(task);
            }
        }
        started
    }

    /// Starts one repair unless the same (blob, node) is in flight.
    fn start(&self, task: &RepairTask, view: &FleetView, nodes: &[NodeAddress]) -> bool {
        let Some(target) = nodes.iter().find(|n| n.name == task.node).map(|n| &n.url) else {
            return false;
        };
        let Some(blob) = view.blobs.get(&task.blob) else {
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
        let client = self.calls.node(target);
        let request = RepairRequest {
            blob: task.blob.clone(),
            shards: task.shards.clone(),
            generation: blob.generation,
            size: blob.size,
            segments: blob.segments,
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
