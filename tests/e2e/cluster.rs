//! A StorageCluster's life: Ready, and gone with everything it owns but
//! its claims, which a cluster of the same name takes up again.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{wait_for, E2e, NS};

/// The cluster every scenario uses: 4 shards (f = 1) on 4 node pods,
/// serving the node API over TLS (so every scenario's node calls are TLS).
pub const CLUSTER: &str = "e2e";

/// The cluster's grace period: longer than a node pod takes to come back
/// on a slow machine (a claim provisioned again, probes passed), so only
/// the scenario about it, which shortens it, sees shards move.
pub const GRACE_PERIOD: &str = "120s";

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
  repair: {{gracePeriod: {GRACE_PERIOD}}}
  s3: {{indexSize: 64Mi}}
  tls: {{enabled: true}}
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
    // The operator reads the gateway Deployment too.
    wait_for(
        "status.gatewaysAvailable 1",
        Duration::from_secs(180),
        || Ok(current_status(e2e)?.filter(|s| s["gatewaysAvailable"] == 1)),
    )
    .await?;
    let table = e2e.table(
        NS,
        "storageclusters",
        &["NAME", "SHARDS", "NODES", "READY", "TOLERATES"],
        &["PHASE", "WHY"],
    )?;
    let row = table
        .lines()
        .find(|l| l.starts_with(CLUSTER))
        .ok_or_else(|| anyhow::anyhow!("no row for {CLUSTER}"))?;
    // WHY is the Degraded condition's reason, read by the API server's
    // JSONPath filter.
    anyhow::ensure!(
        row.contains(" 4 ")
            && row.contains("Ready")
            && row.contains("shard")
            && row.contains("AllNodesReady"),
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
    serves_tls(e2e).await
}

/// The node API and the gateway are TLS with the cluster's CA: the fleet
/// map names `https://` URLs, the serving certificates' Secrets carry that
/// CA, a node pod shows a certificate it signed for its DNS name, the
/// gateway one for its Service's, and the spec's `tls` cannot be turned
/// off.
async fn serves_tls(e2e: &E2e) -> anyhow::Result<()> {
    let config = e2e
        .get("configmap", "e2e-shards", NS)?
        .ok_or_else(|| anyhow::anyhow!("no e2e-shards ConfigMap"))?;
    let map: Value = serde_json::from_str(config["data"]["fleet.json"].as_str().unwrap_or("{}"))?;
    let urls: Vec<&str> = map["nodes"]
        .as_array()
        .map(|nodes| nodes.iter().filter_map(|n| n["url"].as_str()).collect())
        .unwrap_or_default();
    anyhow::ensure!(
        urls.len() == 4 && urls.iter().all(|u| u.starts_with("https://")),
        "node URLs: {urls:?}"
    );
    let secret = e2e
        .get("secret", "e2e-node-tls", NS)?
        .ok_or_else(|| anyhow::anyhow!("no e2e-node-tls Secret"))?;
    anyhow::ensure!(secret["type"] == "kubernetes.io/tls", "{}", secret["type"]);
    let ca_secret = e2e
        .get("secret", "e2e-ca", NS)?
        .ok_or_else(|| anyhow::anyhow!("no e2e-ca Secret"))?;
    anyhow::ensure!(secret["data"]["ca.crt"] == ca_secret["data"]["ca.crt"]);
    use base64::Engine as _;
    let ca_pem = base64::engine::general_purpose::STANDARD
        .decode(ca_secret["data"]["ca.crt"].as_str().unwrap_or_default())?;
    let ca = redstuff::tls::TrustedCa::from_pem(std::path::Path::new("e2e-ca"), &ca_pem)?;

    // Through a port-forward to node pod 0, by its own name.
    let forward = e2e.port_forward_pod(NS, "e2e-node-0", 7800)?;
    let name = format!("e2e-node-0.e2e-nodes.{NS}.svc");
    let addr: std::net::SocketAddr = forward.url.trim_start_matches("http://").parse()?;
    let trusting = redstuff::http::client_builder_trusting(Some(&ca))
        .resolve(&name, addr)
        .build()?;
    let healthz = format!("https://{name}:{}/healthz", addr.port());
    let answer = trusting.get(&healthz).send().await?;
    anyhow::ensure!(answer.status() == 200, "{}", answer.status());
    let untrusting = redstuff::http::client_builder()
        .resolve(&name, addr)
        .build()?;
    anyhow::ensure!(
        untrusting.get(&healthz).send().await.is_err(),
        "a client without the cluster's CA was answered"
    );
    drop(forward);

    // The gateway serves https too, with a certificate of its own from the
    // same CA, for its Service's name; its probes and metrics stay plain
    // on their own port (the kubelet found it ready through them).
    let gateway_secret = e2e
        .get("secret", "e2e-gateway-tls", NS)?
        .ok_or_else(|| anyhow::anyhow!("no e2e-gateway-tls Secret"))?;
    anyhow::ensure!(gateway_secret["data"]["ca.crt"] == ca_secret["data"]["ca.crt"]);
    anyhow::ensure!(gateway_secret["data"]["tls.key"] != secret["data"]["tls.key"]);
    let forward = e2e.port_forward(NS, "e2e-gateway", 7700)?;
    let service = format!("e2e-gateway.{NS}.svc");
    let addr: std::net::SocketAddr = forward.url.trim_start_matches("http://").parse()?;
    let trusting = redstuff::http::client_builder_trusting(Some(&ca))
        .resolve(&service, addr)
        .build()?;
    let healthz = format!("https://{service}:{}/healthz", addr.port());
    let answer = trusting.get(&healthz).send().await?;
    anyhow::ensure!(answer.status() == 200, "gateway: {}", answer.status());
    let plain = format!("http://{service}:{}/healthz", addr.port());
    anyhow::ensure!(
        trusting.get(&plain).send().await.is_err(),
        "the gateway answered plain HTTP on its API port"
    );
    drop(forward);

    let refused = e2e.merge_patch(
        "storagecluster",
        CLUSTER,
        r#"{"spec":{"tls":{"enabled":false}}}"#,
    );
    anyhow::ensure!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("tls is fixed")),
        "turning TLS off was not refused: {refused:?}"
    );
    Ok(())
}

/// The names of the cluster's objects of `kinds` still there.
fn left_of(e2e: &E2e, kinds: &str) -> anyhow::Result<Vec<String>> {
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
    Ok(left.lines().map(str::to_string).collect())
}

/// Deletes the StorageCluster and waits until everything it owned is
/// gone: all but its claims, which outlive it (storage.whenDeleted).
async fn delete_cluster(e2e: &E2e) -> anyhow::Result<()> {
    e2e.kubectl(&[
        "-n",
        NS,
        "delete",
        "storagecluster",
        CLUSTER,
        "--wait=true",
        "--timeout=120s",
    ])?;
    let kinds = "pods,services,configmaps,secrets,deployments,poddisruptionbudgets,networkpolicies";
    wait_for(
        "everything the cluster owned to go",
        Duration::from_secs(180),
        || Ok(left_of(e2e, kinds)?.is_empty().then_some(())),
    )
    .await
}

pub async fn deleted(e2e: &E2e) -> anyhow::Result<()> {
    delete_cluster(e2e).await?;
    // The claims hold every blob and the S3 index: they stay, and the
    // cluster created again takes them up with its blobs.
    let mut claims = left_of(e2e, "pvc")?;
    claims.sort();
    let expected: Vec<String> = [
        "e2e-data-0",
        "e2e-data-1",
        "e2e-data-2",
        "e2e-data-3",
        "e2e-s3-index",
    ]
    .iter()
    .map(|c| format!("persistentvolumeclaim/{c}"))
    .collect();
    anyhow::ensure!(claims == expected, "claims left: {claims:?}");
    // A cluster of another shard count could not read the blobs there: it
    // is refused, and makes nothing.
    e2e.apply(&manifest("10m").replace("shards: 4", "shards: 7"))?;
    let refused = until_phase(e2e, "Failed", Duration::from_secs(120)).await?;
    let ready = refused["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or_default();
    anyhow::ensure!(
        ready["reason"] == "ClaimsOfAnotherCluster"
            && ready["message"]
                .as_str()
                .is_some_and(|m| m.contains("shards: 4")),
        "{refused:#}"
    );
    anyhow::ensure!(
        left_of(e2e, "pods,services,deployments")?.is_empty(),
        "a refused cluster made objects"
    );
    anyhow::ensure!(
        crate::disruptions::event_reasons(e2e)?.contains(&"ClaimsOfAnotherCluster".to_string()),
        "no ClaimsOfAnotherCluster Event"
    );
    delete_cluster(e2e).await?;
    e2e.apply(&manifest("10m"))?;
    until_phase(e2e, "Ready", Duration::from_secs(300)).await?;
    // Ready counts node pods; the new gateway pod may still be starting.
    wait_for(
        "status.gatewaysAvailable 1",
        Duration::from_secs(180),
        || Ok(current_status(e2e)?.filter(|s| s["gatewaysAvailable"] == 1)),
    )
    .await?;
    // Read, never stored again: the blob came back with the claims, and
    // the S3 key naming it with the index's claim.
    let data = crate::data::shared_bytes();
    let id = crate::disruptions::blob_id_of(&data);
    let (gateway, http) = e2e.gateway(CLUSTER)?;
    let (code, back) = crate::data::get(&http, &gateway.url, &id).await?;
    anyhow::ensure!(
        code == 200 && back == data,
        "GET of the shared blob from the retained claims: {code}, {} bytes",
        back.len()
    );
    drop(gateway);
    crate::s3::the_object_reads_back(e2e)?;
    delete_cluster(e2e).await?;
    e2e.kubectl(&[
        "-n",
        NS,
        "delete",
        "pvc",
        "-l",
        "app.kubernetes.io/instance=e2e",
        "--wait=true",
        "--timeout=120s",
    ])?;
    anyhow::ensure!(left_of(e2e, "pvc")?.is_empty());
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
                        .is_some_and(|n| n.starts_with("e2e-upload-"))
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
