//! Changing spec.nodes for real: a lowered count retires the node pods
//! beyond it only once their shards have moved and been rebuilt; a raised
//! one brings them back with an even share.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use crate::cluster::{self, CLUSTER};
use crate::data;
use crate::disruptions::{shards_of, shared_blob, shared_blob_reads_back, uid};
use crate::harness::{wait_for, E2e, NS};
use crate::settled::{self, reasons_since, until_settled};

const RETIRING: &str = "e2e-node-3";

fn set_nodes(e2e: &E2e, nodes: u16) -> anyhow::Result<()> {
    let patch = format!(r#"{{"spec":{{"nodes":{nodes}}}}}"#);
    e2e.merge_patch("storagecluster", CLUSTER, &patch)?;
    Ok(())
}

fn owns_shards(status: &Value, node: &str) -> bool {
    !shards_of(&status["shardAssignment"], node).is_empty()
}

pub async fn nodes_lowered_then_raised(e2e: &E2e) -> anyhow::Result<()> {
    let record = shared_blob(e2e)?;
    cluster::until_phase(e2e, "Ready", Duration::from_secs(300)).await?;
    // The scenario's premise: e2e-node-3 owns a shard (the rebalance that
    // gave it one back after an earlier scenario may still be under way).
    wait_for("e2e-node-3 owns a shard", Duration::from_secs(300), || {
        let status = e2e.cluster_status(CLUSTER)?;
        Ok(owns_shards(&status, RETIRING).then_some(()))
    })
    .await?;
    data::until_healthy(e2e, &record, Duration::from_secs(180)).await?;
    let pod = uid(e2e, RETIRING)?.context("e2e-node-3 runs")?;

    let since = settled::moment();
    set_nodes(e2e, 3)?;
    let result = async {
        // Its shard moves to another node pod while it still runs.
        let still_running = wait_for(
            "e2e-node-3's shard assigned elsewhere",
            Duration::from_secs(180),
            || {
                let status = e2e.cluster_status(CLUSTER)?;
                if status["shardAssignment"].is_null() || owns_shards(&status, RETIRING) {
                    return Ok(None);
                }
                Ok(Some(uid(e2e, RETIRING)?.as_ref() == Some(&pod)))
            },
        )
        .await?;
        anyhow::ensure!(
            still_running,
            "e2e-node-3 was deleted before its shard had moved"
        );
        anyhow::ensure!(reasons_since(e2e, since)?.contains(&"NodesRetiring".to_string()));
        // Deleted once its shard is rebuilt elsewhere and the blob Healthy.
        wait_for("e2e-node-3 retired", Duration::from_secs(300), || {
            Ok(uid(e2e, RETIRING)?.is_none().then_some(()))
        })
        .await?;
        let status = data::until_healthy(e2e, &record, Duration::from_secs(60)).await?;
        anyhow::ensure!(status["shards"] == "4/4", "{status}");
        anyhow::ensure!(reasons_since(e2e, since)?.contains(&"NodeRetired".to_string()));
        anyhow::ensure!(
            e2e.get("pvc", "e2e-data-3", NS)?.is_some(),
            "the retired pod's claim stays"
        );
        // The status written after the deletion (the one before it may
        // still count e2e-node-3, retiring and ready).
        wait_for(
            "the cluster Ready on 3 node pods, none retiring",
            Duration::from_secs(120),
            || {
                let status = cluster::current_status(e2e)?;
                Ok(status.filter(|s| {
                    s["phase"] == "Ready"
                        && s["readyNodes"] == 3
                        && s.get("retiringNodes").is_none()
                }))
            },
        )
        .await?;
        shared_blob_reads_back(e2e).await
    }
    .await;

    // Raised again: e2e-node-3 comes back and gets an even share of shards.
    set_nodes(e2e, 4)?;
    result?;
    wait_for(
        "e2e-node-3 owns a shard again",
        Duration::from_secs(300),
        || {
            let status = e2e.cluster_status(CLUSTER)?;
            Ok(owns_shards(&status, RETIRING).then_some(()))
        },
    )
    .await?;
    until_settled(e2e, Duration::from_secs(300)).await?;
    data::until_healthy(e2e, &record, Duration::from_secs(300)).await?;
    shared_blob_reads_back(e2e).await
}
