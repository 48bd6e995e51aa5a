//! Releasing what a node keeps of shards that moved away from it: once
//! the shard's owner holds a blob's pairs whole, the copy left on the node
//! the shard left serves no read or repair, and would hold its disk space
//! until the volume was wiped. The node refuses (409) for a shard it owns
//! by its newest ownership file.

use super::{on_nodes, NodeAddress, ReleaseTask};
use crate::client::NodeCalls;
use crate::metrics::FleetMetrics;

/// Sends up to `limit` of `tasks` (each within the call deadline); returns
/// how many nodes released their pairs.
pub async fn release_strays(
    calls: &NodeCalls,
    tasks: &[ReleaseTask],
    nodes: &[NodeAddress],
    metrics: &FleetMetrics,
    limit: usize,
) -> usize {
    on_nodes(
        calls,
        nodes,
        tasks.iter().map(|t| (t.node.as_str(), t.blob.as_str())),
        limit,
        |index, id, client| {
            let task = tasks[index].clone();
            let metrics = metrics.clone();
            async move {
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
        },
    )
    .await
}
