//! The control-loop shell shared by the local fleet (`dev`) and the
//! operator: read every node's inventory (each node within its deadline,
//! so one hung node never holds the view), turn them into a view of the
//! fleet (pure, `view`), publish blob health as metrics, carry commit
//! markers and tombstones to nodes that missed them (`markers`), and start
//! the repairs `fleet::plan_repairs` asks for (`repairer`).

mod markers;
mod repairer;
mod view;

use futures_util::future::join_all;

use crate::client::NodeCalls;
use crate::wire::InventoryPage;
pub use markers::spread_markers;
pub use repairer::{RepairTotals, Repairer, StartedRepair};
pub use view::{BlobView, FleetView, Marker, MarkerTask};

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
