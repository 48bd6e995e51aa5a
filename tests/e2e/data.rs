//! Blobs through the gateway and through Blob resources.

use std::time::Duration;

use serde_json::Value;
use sha2::Digest;

use crate::cluster::CLUSTER;
use crate::harness::{pattern, wait_for, E2e, NS};

/// The blob the scenarios share (the same bytes always get the same id).
pub fn shared_bytes() -> Vec<u8> {
    pattern(3_000_000)
}

/// PUTs `data` through the cluster's gateway; its id.
pub async fn put(e2e: &E2e, data: &[u8]) -> anyhow::Result<String> {
    let (gateway, http) = e2e.gateway(CLUSTER)?;
    let response = http
        .put(format!("{}/v1/blobs", gateway.url))
        .body(data.to_vec())
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 201,
        "PUT: {} {}",
        response.status(),
        response.text().await?
    );
    let stored: Value = response.json().await?;
    Ok(stored["id"].as_str().unwrap_or_default().to_string())
}

/// GETs a blob: its status and bytes.
pub async fn get(
    http: &reqwest::Client,
    gateway: &str,
    id: &str,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let response = http.get(format!("{gateway}/v1/blobs/{id}")).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.bytes().await?.to_vec()))
}

/// Waits until Blob `name` is Healthy on every shard; its status.
pub async fn until_healthy(e2e: &E2e, name: &str, timeout: Duration) -> anyhow::Result<Value> {
    wait_for(&format!("Blob {name} Healthy 4/4"), timeout, || {
        Ok(e2e
            .get("blob", name, NS)?
            .map(|b| b["status"].clone())
            .filter(|s| s["health"] == "Healthy" && s["shards"] == "4/4"))
    })
    .await
}

pub async fn put_and_get(e2e: &E2e) -> anyhow::Result<()> {
    let data = shared_bytes();
    let id = put(e2e, &data).await?;
    let (gateway, http) = e2e.gateway(CLUSTER)?;
    let (status, back) = get(&http, &gateway.url, &id).await?;
    anyhow::ensure!(
        status == 200 && back == data,
        "GET {status}, {} bytes",
        back.len()
    );
    let head = http
        .head(format!("{}/v1/blobs/{id}", gateway.url))
        .send()
        .await?;
    anyhow::ensure!(head.headers()["content-length"] == data.len().to_string().as_str());
    let anonymous = e2e
        .gateway_client_builder(CLUSTER)?
        .build()?
        .put(format!("{}/v1/blobs", gateway.url))
        .body("x")
        .send()
        .await?;
    anyhow::ensure!(
        anonymous.status() == 401,
        "a PUT without the token: {}",
        anonymous.status()
    );
    // The operator records the upload as a Blob of its own.
    let record = redstuff::operator::controller::upload_record_name(CLUSTER, &id).unwrap();
    let status = until_healthy(e2e, &record, Duration::from_secs(120)).await?;
    anyhow::ensure!(status["blobId"] == id.as_str());
    let table = e2e.table(
        NS,
        "blobs",
        &["NAME", "CLUSTER", "SIZE", "HEALTH", "SHARDS"],
        &[],
    )?;
    let row = table.lines().find(|l| l.starts_with(&record)).unwrap_or("");
    anyhow::ensure!(
        row.contains("Healthy") && row.contains("4/4") && row.contains(CLUSTER),
        "row: {row}"
    );
    Ok(())
}

fn probe_manifest(e2e: &E2e) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: probe, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: probe}}}}
  template:
    metadata: {{labels: {{app: probe}}}}
    spec:
      securityContext: {{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}}
      containers:
        - name: probe
          image: {image}
          imagePullPolicy: IfNotPresent
          args: [serve]
          ports: [{{containerPort: 8080}}]
          readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 2}}
---
apiVersion: v1
kind: Service
metadata: {{name: probe, namespace: {NS}}}
spec:
  selector: {{app: probe}}
  ports: [{{port: 8080, targetPort: 8080}}]
"#,
        image = e2e.probe_image
    )
}

pub async fn ingest(e2e: &E2e) -> anyhow::Result<()> {
    let content = "{\"layers\": 32, \"heads\": 8}\n".repeat(3000);
    e2e.kubectl_stdin(
        &[
            "-n",
            NS,
            "create",
            "configmap",
            "settings",
            "--from-file=model.json=/dev/stdin",
        ],
        &content,
    )?;
    let url_bytes = pattern(1_000_000);
    let digest = redstuff::hex::encode(&sha2::Sha256::digest(&url_bytes));
    e2e.apply(&probe_manifest(e2e))?;
    e2e.kubectl(&[
        "-n",
        NS,
        "rollout",
        "status",
        "deployment/probe",
        "--timeout=120s",
    ])?;
    e2e.apply(&format!(
        r#"apiVersion: redstuff.dev/v1alpha1
kind: Blob
metadata: {{name: settings, namespace: {NS}}}
spec:
  cluster: {CLUSTER}
  source: {{configMapKey: {{name: settings, key: model.json}}}}
---
apiVersion: redstuff.dev/v1alpha1
kind: Blob
metadata: {{name: dataset, namespace: {NS}}}
spec:
  cluster: {CLUSTER}
  source:
    url: {{url: "http://probe.{NS}.svc:8080/bytes?size=1000000", sha256: {digest}}}
"#
    ))?;
    let (gateway, http) = e2e.gateway(CLUSTER)?;
    let mut ingested = Vec::new();
    for (name, expected) in [
        ("settings", content.as_bytes().to_vec()),
        ("dataset", url_bytes),
    ] {
        let status = until_healthy(e2e, name, Duration::from_secs(180)).await?;
        let id = status["blobId"].as_str().unwrap_or_default();
        let (code, back) = get(&http, &gateway.url, id).await?;
        anyhow::ensure!(
            code == 200 && back == expected,
            "{name}: GET {code}, {} bytes",
            back.len()
        );
        ingested.push(id.to_string());
    }
    // An ingest's blob is its Blob's, never taken for an upload through
    // the gateway (a record naming it kept it when its Blob was deleted):
    // looked at once the operator has had its reconciles to record it.
    crate::settled::after_a_reconcile_from_now(e2e).await?;
    for record in e2e.list("blobs", NS, "")? {
        let named = record["spec"]["source"]["upload"]["blobId"].as_str();
        anyhow::ensure!(
            !named.is_some_and(|id| ingested.iter().any(|i| i == id)),
            "the ingested blob {named:?} was recorded as an upload: {}",
            record["metadata"]["name"]
        );
    }
    Ok(())
}

pub async fn blob_deleted(e2e: &E2e) -> anyhow::Result<()> {
    let status = e2e
        .get("blob", "dataset", NS)?
        .ok_or_else(|| anyhow::anyhow!("no Blob dataset"))?["status"]
        .clone();
    let id = status["blobId"].as_str().unwrap_or_default().to_string();
    e2e.kubectl(&[
        "-n",
        NS,
        "delete",
        "blob",
        "dataset",
        "--wait=true",
        "--timeout=120s",
    ])?;
    let (gateway, http) = e2e.gateway(CLUSTER)?;
    let (code, _) = get(&http, &gateway.url, &id).await?;
    anyhow::ensure!(code == 404, "GET of the deleted blob: {code}");
    let head = http
        .head(format!("{}/v1/blobs/{id}", gateway.url))
        .send()
        .await?;
    anyhow::ensure!(head.status() == 404);
    // And it stays deleted once the operator spread the tombstones.
    crate::settled::after_a_reconcile_from_now(e2e).await?;
    let (code, _) = get(&http, &gateway.url, &id).await?;
    anyhow::ensure!(code == 404, "the deleted blob came back: {code}");
    Ok(())
}
