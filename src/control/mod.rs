//! The control-loop shell shared by the local fleet (`dev`) and the
//! operator: read every node's inventory as one merge of pages (each node
//! within its deadline, so one hung node never holds the view, and a page
//! per node held at a time, `inventory_merge`), fold it into a view of the
//! fleet (pure, `view`), publish blob health as metrics, carry commit
//! markers and tombstones to nodes that missed them (`markers`), release
//! the pairs nodes keep of shards that moved away (`releases`), and start
//! the repairs `fleet::plan_repairs` asks for (`repairer`).

mod inventory_merge;
mod markers;
mod node_tasks;
mod observer;
mod releases;
mod repairer;
mod view;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::client::{NodeCalls, NodeClient};
pub use inventory_merge::InventoryMerge;
pub use markers::spread_markers;
pub use observer::{Observer, Reading, MOST_CHANGED, WHOLE_READING_EVERY};
pub use releases::release_strays;
pub use repairer::{RepairFailures, RepairTotals, Repairer, StartedRepair, MOST_QUEUED};
pub use view::{BlobView, FleetView, Marker, MarkerTask, ReleaseTask, ViewBuilder};

/// A node of the fleet and where its API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    /// The node's name (as in the assignment).
    pub name: String,
    /// Base URL of its API.
    pub url: String,
    /// The shards the assignment gives it: only pairs of those count in
    /// the view, whatever the node says it owns.
    pub shards: BTreeSet<u16>,
}

/// Reads every node's inventory as one merge, a page of each node at a
/// time, and builds the view (see `InventoryMerge`). Each page has the call
/// deadline; a node's pages together have `Deadlines::inventory_budget` of
/// the blobs it listed, counting only the time spent waiting on that
/// node, so a slow node holds the loop no longer than that and a large
/// fleet's honest nodes are never cut for their size.
pub async fn observe(calls: &NodeCalls, nodes: &[NodeAddress]) -> FleetView {
    observe_whole(calls, nodes).await.0
}

/// `observe`, and the nodes that stopped partway through their inventory.
async fn observe_whole(calls: &NodeCalls, nodes: &[NodeAddress]) -> (FleetView, Vec<String>) {
    let clients: Vec<NodeClient> = nodes.iter().map(|n| calls.node(&n.url)).collect();
    let mut merge = InventoryMerge::new(
        nodes.iter().map(|n| (n.name.clone(), n.shards.clone())),
        calls.max_inventory_blobs,
    );
    let mut spent = vec![Duration::ZERO; nodes.len()];
    loop {
        let wanted = merge.wanted();
        if wanted.is_empty() {
            break;
        }
        let asked = wanted.into_iter().map(|(node, after)| {
            let budget = calls
                .deadlines
                .inventory_budget(merge.listed(node))
                .saturating_sub(spent[node]);
            let client = &clients[node];
            async move {
                let start = Instant::now();
                let answer = match tokio::time::timeout(budget, client.inventory_after(after)).await
                {
                    Ok(page) => page.map_err(|e| e.to_string()),
                    Err(_) => Err("its inventory took longer than its deadline".to_string()),
                };
                (node, answer, start.elapsed())
            }
        });
        for (node, answer, took) in join_all(asked).await {
            spent[node] += took;
            merge.take_page(node, answer);
        }
        merge.fold_ready();
    }
    let stopped = merge.stopped_partway();
    (merge.finish(), stopped)
}
