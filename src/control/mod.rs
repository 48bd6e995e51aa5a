//! The control-loop shell shared by the local fleet (`dev`) and the
//! operator: read every node's inventory (each node within its deadline,
//! so one hung node never holds the view), turn them into a view of the
//! fleet (pure, `view`), publish blob health as metrics, carry commit
//! markers and tombstones to nodes that missed them (`markers`), release
//! the pairs nodes keep of shards that moved away (`releases`), and start
//! the repairs `fleet::plan_repairs` asks for (`repairer`).

mod markers;
mod releases;
mod repairer;
mod view;

use std::future::Future;

use futures_util::future::join_all;
use futures_util::stream::{self, StreamExt};

use crate::client::{NodeCalls, NodeClient};
use crate::codec::BlobId;
use crate::wire::InventoryPage;
pub use markers::spread_markers;
pub use releases::release_strays;
pub use repairer::{RepairTotals, Repairer, StartedRepair};
pub use view::{BlobView, FleetView, Marker, MarkerTask, ReleaseTask};

/// Calls to nodes made at once by `on_nodes`.
const CONCURRENCY: usize = 16;

/// A call the control loop makes to one node about one blob.
trait NodeTask: Clone {
    /// The node's name.
    fn node(&self) -> &str;
    /// The blob id, as the inventory gave it.
    fn blob(&self) -> &str;
}

impl NodeTask for MarkerTask {
    fn node(&self) -> &str {
        &self.node
    }
    fn blob(&self) -> &str {
        &self.blob
    }
}

impl NodeTask for ReleaseTask {
    fn node(&self) -> &str {
        &self.node
    }
    fn blob(&self) -> &str {
        &self.blob
    }
}

/// Runs `act` on each of the first `limit` tasks with the parsed blob id
/// and a client of the task's node, `CONCURRENCY` at once (each call
/// within the call deadline); tasks of nodes not in `nodes`, or with an id
/// that does not parse, are skipped. Returns how many `act` calls
/// succeeded.
async fn on_nodes<T, F, Fut>(
    calls: &NodeCalls,
    nodes: &[NodeAddress],
    tasks: &[T],
    limit: usize,
    act: F,
) -> usize
where
    T: NodeTask,
    F: Fn(T, BlobId, NodeClient) -> Fut,
    Fut: Future<Output = bool>,
{
    let prepared: Vec<(T, BlobId, NodeClient)> = tasks
        .iter()
        .take(limit)
        .filter_map(|task| {
            let node = nodes.iter().find(|n| n.name == task.node())?;
            let id = task.blob().parse().ok()?;
            Some((task.clone(), id, calls.node(&node.url)))
        })
        .collect();
    stream::iter(
        prepared
            .into_iter()
            .map(|(task, id, client)| act(task, id, client)),
    )
    .buffer_unordered(CONCURRENCY)
    .filter(|done| std::future::ready(*done))
    .count()
    .await
}

/// A node of the fleet and where its API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    /// The node's name (as in the assignment).
    pub name: String,
    /// Base URL of its API.
    pub url: String,
}

/// Reads every node's whole inventory concurrently; `None` for a node
/// that did not answer (each page has the call deadline).
pub async fn read_inventories(
    calls: &NodeCalls,
    nodes: &[NodeAddress],
) -> Vec<Option<InventoryPage>> {
    join_all(nodes.iter().map(|n| {
        let client = calls.node(&n.url);
        async move {
            match client.full_inventory().await {
                Ok(page) => Some(page),
                Err(e) => {
                    tracing::debug!(node = %n.name, "inventory: {e}");
                    None
                }
            }
        }
    }))
    .await
}

/// Reads the inventories and builds the view.
pub async fn observe(calls: &NodeCalls, nodes: &[NodeAddress]) -> FleetView {
    let inventories = read_inventories(calls, nodes).await;
    FleetView::from_inventories(
        nodes
            .iter()
            .zip(&inventories)
            .map(|(n, inv)| (n.name.as_str(), inv.as_ref())),
    )
}
