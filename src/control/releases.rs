//! Releasing what a node keeps of shards that moved away from it: once
//! the shard's owner holds a blob's pairs whole, the copy left on the node
//! the shard left serves no read or repair, and would hold its disk space
//! until the volume was wiped. The node refuses (409) for a shard it owns
//! by its newest ownership file.

use super::node_tasks::on_nodes;
use super::{NodeAddress, ReleaseTask};
use crate::client::{NodeCalls, NodeClient};
use crate::codec::BlobId;
use crate::metrics::FleetMetrics;

/// Asks up to `limit` of `tasks`' nodes to release their pairs; returns
/// how many did.
pub async fn release_strays(
    calls: &NodeCalls,
    tasks: &[ReleaseTask],
    nodes: &[NodeAddress],
    metrics: &FleetMetrics,
    limit: usize,
) -> usize {
    on_nodes(calls, nodes, tasks, limit, |task, id, client| {
        release(task, id, client, metrics.clone())
    })
    .await
}

async fn release(task: ReleaseTask, id: BlobId, client: NodeClient, metrics: FleetMetrics) -> bool {
    match client.release_shard(&id, task.shard).await {
        Ok(bytes) => {
            metrics.shards_released.inc();
            tracing::info!(node = %task.node, blob = %task.blob, shard = task.shard, bytes, "released a shard's pairs from the node it moved away from");
            true
        }
        Err(e) => {
            tracing::warn!(node = %task.node, blob = %task.blob, shard = task.shard, "cannot release a shard's pairs: {e}");
            false
        }
    }
}
