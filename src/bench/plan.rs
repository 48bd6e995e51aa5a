//! `redstuff bench plan`: the control loop's pure work at scale. Synthetic
//! inventories of `nodes` nodes holding `blobs` blobs of `shards` shards,
//! some nodes down, go through the same steps as every reconcile: shard
//! assignment, the inventory pages merged into the view as
//! `control::observe` does (each page made when the merge asks for it, as
//! a node would answer it), health counts, repair planning, and a reading
//! of changes (every hundredth blob folded again into the view). The
//! baseline is one plain pass over every inventory entry, its pages made
//! the same way (the least any planner must do); each step is reported as
//! time, a ratio to that baseline, and the memory it holds.

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::memory::current_rss_bytes;
use crate::client::CheckedPage;
use crate::codec::{BlobId, EncodingConfig};
use crate::control::{InventoryMerge, ViewBuilder};
use crate::fleet::{self, Assignment, NodeSpec};
use crate::wire::{InventoryBlob, InventoryPage};

/// What to plan for.
#[derive(Debug, Clone)]
pub struct PlanBenchOptions {
    /// Blobs in the fleet.
    pub blobs: usize,
    /// Node pods.
    pub nodes: usize,
    /// Shards n.
    pub shards: u16,
    /// Nodes back on empty volumes: they answer, own their shards, hold nothing.
    pub nodes_wiped: usize,
    /// Repairs planned at most (the planner still ranks every blob that
    /// needs one).
    pub limit: usize,
}

/// One step's cost.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// The step.
    pub step: String,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Time over the baseline pass.
    pub ratio: f64,
    /// Resident memory the step's result holds, in bytes (None: unknown).
    pub memory_bytes: Option<u64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct PlanBenchReport {
    /// Blobs.
    pub blobs: usize,
    /// Nodes.
    pub nodes: usize,
    /// Shards.
    pub shards: u16,
    /// Nodes wiped.
    pub nodes_wiped: usize,
    /// Inventory entries ((blob, shard) pairs) the nodes report.
    pub entries: usize,
    /// The baseline pass in seconds.
    pub baseline_seconds: f64,
    /// The steps.
    pub steps: Vec<StepResult>,
    /// Repairs planned.
    pub tasks: usize,
    /// Blobs Degraded or AtRisk.
    pub unhealthy_blobs: usize,
}

fn blob_id(i: usize) -> BlobId {
    // Distinct and in the order of their index.
    let mut bytes = [0u8; 32];
    bytes[24..].copy_from_slice(&(i as u64).to_be_bytes());
    BlobId(bytes)
}

/// One synthetic node: its name, its shards, and how many blobs it holds.
struct SyntheticNode {
    name: String,
    shards: Vec<u16>,
    blobs: usize,
}

impl SyntheticNode {
    /// The nodes: every node holds a complete pair of every blob for each
    /// of its shards, except the wiped ones, which hold nothing.
    fn all(options: &PlanBenchOptions, assignment: &Assignment, names: &[String]) -> Vec<Self> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| SyntheticNode {
                name: name.clone(),
                shards: crate::fleet::shards_of(assignment, name)
                    .into_iter()
                    .collect(),
                blobs: if i < options.nodes_wiped {
                    0
                } else {
                    options.blobs
                },
            })
            .collect()
    }

    /// Its entry of blob `id` (one it holds).
    fn entry(&self, id: &BlobId) -> InventoryBlob {
        InventoryBlob {
            id: id.to_string(),
            size: 64 << 20,
            segments: 1,
            shards: self.shards.iter().map(|s| (*s, 1)).collect(),
            state: crate::blob_state::BlobState {
                commit: Some(1),
                ..Default::default()
            },
        }
    }

    /// Its inventory page after `after`, as the node would answer it.
    fn page(&self, after: Option<BlobId>) -> CheckedPage {
        let first = after.map_or(0, |a| {
            u64::from_be_bytes(a.0[24..].try_into().expect("8 bytes")) as usize + 1
        });
        let end = (first + PAGE).min(self.blobs);
        let ids: Vec<BlobId> = (first..end).map(blob_id).collect();
        let blobs: Vec<InventoryBlob> = ids.iter().map(|id| self.entry(id)).collect();
        let next = (end < self.blobs)
            .then(|| blobs.last().map(|b| b.id.clone()))
            .flatten();
        CheckedPage {
            page: InventoryPage {
                node: self.name.clone(),
                shards: self.shards.clone(),
                stored_bytes: 0,
                blobs,
                next,
            },
            ids,
        }
    }
}

/// Blobs per synthetic page, as a node answers the control loop.
const PAGE: usize = 1000;

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Option<u64>) {
    let before = current_rss_bytes();
    let start = Instant::now();
    let value = f();
    let elapsed = start.elapsed();
    let after = current_rss_bytes();
    let memory = before.zip(after).map(|(b, a)| a.saturating_sub(b));
    (value, elapsed, memory)
}

/// Runs the benchmark; `progress` gets a line per step.
pub fn run(
    options: &PlanBenchOptions,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<PlanBenchReport> {
    let encoding = EncodingConfig::new(options.shards)?;
    anyhow::ensure!(
        options.nodes >= 1 && options.nodes <= usize::from(options.shards),
        "nodes must be between 1 and shards"
    );
    anyhow::ensure!(
        options.nodes_wiped <= options.nodes,
        "--wiped {} is more than the {} nodes",
        options.nodes_wiped,
        options.nodes
    );
    let specs: Vec<NodeSpec> = (0..options.nodes)
        .map(|i| NodeSpec {
            name: format!("node-{i}"),
            domain: format!("zone-{}", i % 3),
        })
        .collect();
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();

    let (assignment, assign_time, _) =
        timed(|| fleet::assign(options.shards, &specs, &Assignment::new()));
    progress(&format!("assign: {assign_time:?}"));
    let nodes = SyntheticNode::all(options, &assignment, &names);
    let entries: usize = nodes.iter().map(|n| n.blobs * n.shards.len()).sum();

    // Baseline: make every page and touch every entry once.
    let (_, baseline, _) = timed(|| {
        let mut sum = 0u64;
        for node in &nodes {
            let mut after = None;
            loop {
                let page = node.page(after);
                for blob in &page.page.blobs {
                    for (shard, segments) in &blob.shards {
                        sum = sum.wrapping_add(u64::from(*shard) ^ u64::from(*segments));
                    }
                    sum = sum.wrapping_add(blob.id.len() as u64);
                }
                if page.page.next.is_none() {
                    break;
                }
                after = page.ids.last().copied();
            }
        }
        black_box(sum)
    });
    progress(&format!("baseline pass: {baseline:?}"));

    let (view, view_time, view_memory) = timed(|| {
        let mut merge = InventoryMerge::new(
            nodes
                .iter()
                .map(|n| (n.name.clone(), n.shards.iter().copied().collect())),
            usize::MAX,
        );
        loop {
            let wanted = merge.wanted();
            if wanted.is_empty() {
                break;
            }
            for (node, after) in wanted {
                merge.take_page(node, Ok(nodes[node].page(after)));
            }
            merge.fold_ready();
        }
        merge.finish()
    });
    progress(&format!("view: {view_time:?}"));
    let (counts, health_time, _) = timed(|| view.health_counts(&encoding));
    let (plan, plan_time, plan_memory) = timed(|| {
        let observations = view.observations();
        fleet::plan_repairs(
            &encoding,
            &observations,
            &view.confirmed(&assignment),
            &view.ready,
            options.limit,
        )
    });
    progress(&format!("plan: {plan_time:?}"));
    let unhealthy = counts[&fleet::Health::Degraded] + counts[&fleet::Health::AtRisk];

    // A reading of changes: every hundredth blob changed, every node's
    // entries of them folded again into the view (the last step: it takes
    // the view).
    let changed: Vec<usize> = (0..options.blobs).step_by(100).collect();
    let (refolded, refold_time, _) = timed(|| {
        let ids: Vec<String> = changed.iter().map(|i| blob_id(*i).to_string()).collect();
        let mut builder = ViewBuilder::resume(view);
        builder.forget(&ids.iter().cloned().collect());
        for (i, id) in changed.iter().zip(&ids) {
            let entries: Vec<(&str, InventoryBlob)> = nodes
                .iter()
                .filter(|node| *i < node.blobs)
                .map(|node| (node.name.as_str(), node.entry(&blob_id(*i))))
                .collect();
            let borrowed: Vec<(&str, &InventoryBlob)> =
                entries.iter().map(|(n, e)| (*n, e)).collect();
            builder.fold(id, &borrowed);
        }
        builder.finish()
    });
    progress(&format!("refold: {refold_time:?}"));
    anyhow::ensure!(
        refolded.blobs.len() == options.blobs,
        "the view lost blobs when refolded"
    );

    let base = baseline.as_secs_f64().max(1e-9);
    let step = |name: &str, time: Duration, memory: Option<u64>| StepResult {
        step: name.to_string(),
        seconds: time.as_secs_f64(),
        ratio: time.as_secs_f64() / base,
        memory_bytes: memory,
    };
    Ok(PlanBenchReport {
        blobs: options.blobs,
        nodes: options.nodes,
        shards: options.shards,
        nodes_wiped: options.nodes_wiped,
        entries,
        baseline_seconds: baseline.as_secs_f64(),
        steps: vec![
            step("assign shards", assign_time, None),
            step(
                "merge the inventories into the view",
                view_time,
                view_memory,
            ),
            step("health counts", health_time, None),
            step("plan repairs", plan_time, plan_memory),
            step(
                &format!("fold {} changed blobs into the last view", changed.len()),
                refold_time,
                None,
            ),
        ],
        tasks: plan.len(),
        unhealthy_blobs: unhealthy,
    })
}

/// The report as a table.
pub fn render_table(r: &PlanBenchReport) -> String {
    let mut out = format!(
        "planning for {} blobs, {} nodes ({} wiped), {} shards: {} inventory entries; baseline pass {:.1} ms\n",
        r.blobs,
        r.nodes,
        r.nodes_wiped,
        r.shards,
        r.entries,
        r.baseline_seconds * 1e3
    );
    out.push_str("| step | time | x baseline | memory held |\n|---|---|---|---|\n");
    for s in &r.steps {
        out.push_str(&format!(
            "| {} | {:.1} ms | {:.1} | {} |\n",
            s.step,
            s.seconds * 1e3,
            s.ratio,
            s.memory_bytes
                .map_or("-".to_string(), crate::units::format_bytes)
        ));
    }
    out.push_str(&format!(
        "{} blobs need repair; {} repair tasks planned\n",
        r.unhealthy_blobs, r.tasks
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_plans_a_repair_of_every_blob_on_the_wiped_node() {
        // More blobs than a page: the merge reads several.
        let options = PlanBenchOptions {
            blobs: 2500,
            nodes: 7,
            shards: 7,
            nodes_wiped: 1,
            limit: usize::MAX,
        };
        let report = run(&options, |_| {}).unwrap();
        assert_eq!(report.entries, 2500 * 6);
        assert_eq!(report.unhealthy_blobs, 2500);
        assert_eq!(report.tasks, 2500);
        assert_eq!(report.steps.len(), 5);
    }

    #[test]
    fn more_wiped_nodes_than_nodes_are_refused() {
        let options = PlanBenchOptions {
            blobs: 10,
            nodes: 3,
            shards: 7,
            nodes_wiped: 4,
            limit: usize::MAX,
        };
        let refused = run(&options, |_| {}).unwrap_err().to_string();
        assert!(refused.contains("--wiped 4"), "{refused}");
    }
}
