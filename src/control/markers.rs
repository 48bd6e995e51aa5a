//! Carrying markers to nodes that missed them: the commit of a visible
//! blob to a node that holds its slivers without knowing it was committed
//! (it was slow or away during the commit), and the tombstone of a deleted
//! blob to every node without it (a node that slept through the delete
//! drops its slivers; the others keep the tombstone so it outlives the
//! loss of any f nodes).

use super::node_tasks::on_nodes;
use super::{Marker, MarkerTask, NodeAddress};
use crate::client::NodeCalls;
use crate::codec::BlobId;
use crate::metrics::FleetMetrics;

/// Sends up to `limit` of `tasks`; returns how many nodes took their
/// marker.
pub async fn spread_markers(
    calls: &NodeCalls,
    tasks: &[MarkerTask],
    nodes: &[NodeAddress],
    metrics: &FleetMetrics,
    limit: usize,
) -> usize {
    on_nodes(calls, nodes, tasks, limit, |task, id, client| {
        carry(task, id, client, metrics.clone())
    })
    .await
}

async fn carry(
    task: MarkerTask,
    id: BlobId,
    client: crate::client::NodeClient,
    metrics: FleetMetrics,
) -> bool {
    let (result, label) = match task.marker {
        Marker::Commit(generation) => (client.commit(&id, generation).await, "commit"),
        Marker::Tombstone(generation) => (client.delete(&id, generation).await, "tombstone"),
    };
    match result {
        Ok(()) => {
            metrics.markers_spread.with_label_values(&[label]).inc();
            tracing::info!(node = %task.node, blob = %task.blob, marker = ?task.marker, "carried a missed marker");
            true
        }
        Err(e) => {
            tracing::warn!(node = %task.node, blob = %task.blob, marker = ?task.marker, "cannot carry a marker: {e}");
            false
        }
    }
}
