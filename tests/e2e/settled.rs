//! What a scenario waits for before the next one starts, and what it
//! checks only of its own time: scenarios share one cluster, so a
//! rebalance an earlier one set going, or an Event it caused, must not
//! decide a later one.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use crate::cluster::{current_status, CLUSTER};
use crate::harness::{wait_for, E2e, NS};

/// Whether a (current) status says the cluster has nothing left to do:
/// Ready, not Progressing (no shard to move, repair in flight, rollout or
/// retirement), every node pod available and answering, and no blob
/// Degraded, AtRisk or Lost.
pub fn is_settled(status: &Value) -> bool {
    let condition = |kind: &str| {
        status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == kind)
            .map(|c| c["status"].as_str().unwrap_or_default().to_string())
    };
    let empty = |field: &str| status[field].as_array().is_none_or(Vec::is_empty);
    let blobs = &status["blobs"];
    let none_unwell = ["degraded", "atRisk", "lost"]
        .iter()
        .all(|health| blobs[health].as_u64().unwrap_or(0) == 0);
    status["phase"] == "Ready"
        && condition("Progressing").as_deref() == Some("False")
        && empty("unavailableNodes")
        && empty("notAnsweringNodes")
        && empty("retiringNodes")
        && none_unwell
}

/// Waits until the cluster has settled ([`is_settled`]); its status.
pub async fn until_settled(e2e: &E2e, timeout: Duration) -> anyhow::Result<Value> {
    let mut last = Value::Null;
    let settled = wait_for("the cluster settled", timeout, || {
        let status = current_status(e2e)?;
        if let Some(status) = &status {
            last = status.clone();
        }
        Ok(status.filter(is_settled))
    })
    .await;
    settled.map_err(|e| anyhow::anyhow!("{e:#}; its status: {last}"))
}

/// A moment to compare Events with: now, a little early (the operator's
/// clock is this host's, the Event's time is its own).
pub fn moment() -> Timestamp {
    Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(2)
}

/// Reasons of the Events about the e2e cluster made or repeated since
/// `since`: an Event repeated within minutes is folded into the first
/// (its `series.lastObservedTime` moves on, its `eventTime` stays).
pub fn reasons_since(e2e: &E2e, since: Timestamp) -> anyhow::Result<Vec<String>> {
    let events = e2e.list("events.events.k8s.io", NS, "")?;
    let at = |value: &Value| {
        value
            .as_str()
            .and_then(|text| text.parse::<Timestamp>().ok())
    };
    Ok(events
        .iter()
        .filter(|e| e["regarding"]["kind"] == "StorageCluster" && e["regarding"]["name"] == CLUSTER)
        .filter(|e| {
            [&e["eventTime"], &e["series"]["lastObservedTime"]]
                .into_iter()
                .filter_map(at)
                .any(|t| t >= since)
        })
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect())
}

/// StorageCluster reconciles the leading operator has run.
fn cluster_reconciles(e2e: &E2e) -> anyhow::Result<f64> {
    let metrics = e2e.operator_metrics()?;
    Ok(metrics
        .lines()
        .filter(|l| {
            l.starts_with("redstuff_reconcile_total{")
                && l.contains(r#"controller="storagecluster""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Waits until the leading operator has run a StorageCluster reconcile
/// begun after now, to its end: what it does on each, it has done since
/// now. The cluster is nudged (an annotation, which starts a reconcile)
/// twice: the reconcile ending after the first nudge may have begun
/// before it, the one after the second cannot have.
pub async fn after_a_reconcile_from_now(e2e: &E2e) -> anyhow::Result<()> {
    for round in 0..2 {
        let before = wait_for(
            "the operator's reconcile count",
            Duration::from_secs(60),
            || cluster_reconciles(e2e).map(Some),
        )
        .await?;
        let nudge = format!(
            "e2e.redstuff.dev/nudge={}-{round}",
            Timestamp::now().as_millisecond()
        );
        e2e.kubectl(&[
            "-n",
            NS,
            "annotate",
            "storagecluster",
            CLUSTER,
            &nudge,
            "--overwrite",
        ])?;
        wait_for(
            "a reconcile after the nudge",
            Duration::from_secs(120),
            || Ok((cluster_reconciles(e2e)? > before).then_some(())),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(progressing: &str, degraded: u64) -> Value {
        serde_json::json!({
            "phase": "Ready",
            "conditions": [{"type": "Progressing", "status": progressing}],
            "blobs": {"healthy": 3, "degraded": degraded, "atRisk": 0, "lost": 0},
        })
    }

    #[test]
    fn a_cluster_is_settled_only_when_ready_idle_and_every_blob_healthy() {
        assert!(is_settled(&status("False", 0)));
        assert!(!is_settled(&status("True", 0)));
        assert!(!is_settled(&status("False", 1)));
        let mut retiring = status("False", 0);
        retiring["retiringNodes"] = serde_json::json!(["e2e-node-3"]);
        assert!(!is_settled(&retiring));
    }
}
