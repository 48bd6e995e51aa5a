//! A StorageCluster's life: Ready, and gone with everything it owns.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{wait_for, E2e, NS};

/// The cluster every scenario uses: 4 shards (f = 1) on 4 node pods.
pub const CLUSTER: &str = "e2e";

/// Its manifest; `resources` changes its pods' spec (a rollout).
pub fn manifest(cpu_request: &str) -> String {
    format!(
        r#"apiVersion: redstuff.dev/v1alpha1
kind: StorageCluster
metadata: {{name: {CLUSTER}, namespace: {NS}}}
spec:
  shards: 4
  nodes: 4
  storage: {{size: 256Mi}}
  resources:
    requests: {{cpu: {cpu_request}, memory: 32Mi}}
  repair: {{gracePeriod: 40s}}
  s3: {{indexSize: 64Mi}}
"#
    )
}

/// The cluster's status once it describes the current spec.
pub fn current_status(e2e: &E2e) -> anyhow::Result<Option<Value>> {
    let Some(cluster) = e2e.get("storagecluster", CLUSTER, NS)? else {
        return Ok(None);
    };
    let status = &cluster["status"];
    Ok((status["observedGeneration"] == cluster["metadata"]["generation"]).then(|| status.clone()))
}

/// Waits until the (current) status says `phase`.
pub async fn until_phase(e2e: &E2e, phase: &str, timeout: Duration) -> anyhow::Result<Value> {
    wait_for(&format!("the cluster {phase}"), timeout, || {
        Ok(current_status(e2e)?.filter(|s| s["phase"] == phase))
    })
    .await
}

pub async fn becomes_ready(e2e: &E2e) -> anyhow::Result<()> {
    e2e.apply(&manifest("10m"))?;
    let status = until_phase(e2e, "Ready", Duration::from_secs(300)).await?;
    anyhow::ensure!(status["readyNodes"] == 4, "{status:#}");
    anyhow::ensure!(status["faultTolerance"] == 1, "{status:#}");
    anyhow::ensure!(status["shardAssignment"].as_array().map(Vec::len) == Some(4));
    let table = e2e.table(
        NS,
        "storageclusters",
        &["NAME", "SHARDS", "NODES", "READY", "TOLERATES"],
        &["PHASE"],
    )?;
    let row = table
        .lines()
        .find(|l| l.starts_with(CLUSTER))
        .ok_or_else(|| anyhow::anyhow!("no row for {CLUSTER}"))?;
    anyhow::ensure!(
        row.contains(" 4 ") && row.contains("Ready") && row.contains("shard"),
        "row: {row}"
    );
    // Node pods run the operator's image, non-root, on their claims.
    let pods = e2e.list(
        "pods",
        NS,
        "app.kubernetes.io/instance=e2e,app.kubernetes.io/component=node",
    )?;
    anyhow::ensure!(pods.len() == 4, "{} node pods", pods.len());
    for pod in &pods {
        anyhow::ensure!(pod["spec"]["containers"][0]["image"] == e2e.image.as_str());
        anyhow::ensure!(pod["spec"]["securityContext"]["runAsNonRoot"] == true);
    }
    e2e.kubectl(&[
        "-n",
        NS,
        "rollout",
        "status",
        "deployment/e2e-gateway",
        "--timeout=120s",
    ])?;
    let claims = e2e.list(
        "pvc",
        NS,
        "app.kubernetes.io/instance=e2e,app.kubernetes.io/component=node",
    )?;
    anyhow::ensure!(
        claims.len() == 4 && claims.iter().all(|c| c["status"]["phase"] == "Bound"),
        "node claims: {}",
        claims.len()
    );
    Ok(())
}

pub async fn deleted(e2e: &E2e) -> anyhow::Result<()> {
    e2e.kubectl(&[
        "-n",
        NS,
        "delete",
        "storagecluster",
        CLUSTER,
        "--wait=true",
        "--timeout=120s",
    ])?;
    let kinds =
        "pods,pvc,services,configmaps,secrets,deployments,poddisruptionbudgets,networkpolicies";
    wait_for(
        "everything the cluster owned to go",
        Duration::from_secs(180),
        || {
            let left = e2e.kubectl(&[
                "-n",
                NS,
                "get",
                kinds,
                "-l",
                "app.kubernetes.io/instance=e2e",
                "-o",
                "name",
            ])?;
            Ok(left.trim().is_empty().then_some(()))
        },
    )
    .await?;
    // The upload records were the cluster's: collected with it. The Blobs
    // people made stay, saying their cluster is gone, and a delete
    // releases them at once.
    wait_for(
        "the upload records to go with the cluster",
        Duration::from_secs(120),
        || {
            let records = e2e
                .list("blobs", NS, "")?
                .into_iter()
                .filter(|b| {
                    b["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("upload-"))
                })
                .count();
            Ok((records == 0).then_some(()))
        },
    )
    .await?;
    let left = e2e.list("blobs", NS, "")?;
    for blob in &left {
        let name = blob["metadata"]["name"].as_str().unwrap_or_default();
        let reason = blob["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Healthy")
            .map(|c| c["reason"].clone());
        eprintln!("Blob {name} after its cluster went: {reason:?}");
    }
    e2e.kubectl(&[
        "-n",
        NS,
        "delete",
        "blobs",
        "--all",
        "--wait=true",
        "--timeout=60s",
    ])?;
    Ok(())
}
