//! End-to-end: against the cluster KUBECONFIG names (kind in CI, see
//! tests/e2e/kind.sh), or skipped with a message when it is unset.
//!
//! Applies crds/ and deploy/ (unless REDSTUFF_E2E_OPERATOR_INSTALLED=1,
//! e.g. after a Helm install), runs the operator image REDSTUFF_E2E_IMAGE,
//! creates a StorageCluster in a fresh namespace, waits for Ready, stores a
//! blob through the gateway, deletes a node pod and its claim, waits for
//! the blob to be Healthy again, reads it back byte for byte, and deletes
//! everything. Uses kubectl for applying manifests and port-forwarding.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use redstuff::operator::crd::{Blob, StorageCluster};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(600);

fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("kubectl").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn wait_for<T>(
    what: &str,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => eprintln!("  ({what}: {e})"),
        }
        anyhow::ensure!(start.elapsed() < TIMEOUT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `kubectl port-forward` to a service; killed on drop.
struct PortForward {
    child: Child,
    url: String,
}

impl PortForward {
    fn start(namespace: &str, service: &str, port: u16) -> anyhow::Result<Self> {
        let mut child = Command::new("kubectl")
            .args([
                "-n",
                namespace,
                "port-forward",
                &format!("svc/{service}"),
                &format!(":{port}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        // "Forwarding from 127.0.0.1:43121 -> 7700"
        let local = line
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .ok_or_else(|| anyhow::anyhow!("unexpected port-forward output: {line}"))?
            .to_string();
        Ok(Self {
            child,
            url: format!("http://{local}"),
        })
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_cluster_stores_a_blob_survives_a_lost_pod_and_volume_and_is_deleted_cleanly() {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!(
            "SKIPPED: KUBECONFIG is not set. The end-to-end test needs a Kubernetes cluster \
             (tests/e2e/kind.sh creates one with kind)."
        );
        return;
    }
    run().await.unwrap();
}

async fn run() -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let image = std::env::var("REDSTUFF_E2E_IMAGE").unwrap_or_else(|_| "redstuff:e2e".into());

    if std::env::var("REDSTUFF_E2E_OPERATOR_INSTALLED").as_deref() != Ok("1") {
        eprintln!("applying crds/ and deploy/ with image {image}");
        kubectl(&[
            "apply",
            "--server-side",
            "-f",
            &root.join("crds").display().to_string(),
        ])?;
        kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/storageclusters.redstuff.dev",
            "crd/blobs.redstuff.dev",
        ])?;
        kubectl(&[
            "apply",
            "--server-side",
            "-f",
            &root.join("deploy").display().to_string(),
        ])?;
        kubectl(&[
            "-n",
            "redstuff-system",
            "set",
            "image",
            "deployment/redstuff-operator",
            &format!("operator={image}"),
        ])?;
        kubectl(&[
            "-n",
            "redstuff-system",
            "set",
            "env",
            "deployment/redstuff-operator",
            &format!("REDSTUFF_IMAGE={image}"),
        ])?;
        kubectl(&[
            "-n",
            "redstuff-system",
            "rollout",
            "status",
            "deployment/redstuff-operator",
            "--timeout=300s",
        ])?;
    }

    let namespace = format!("redstuff-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}}))?,
        )
        .await?;
    let result = exercise(&client, &namespace, &image).await;
    eprintln!("deleting namespace {namespace}");
    namespaces
        .delete(&namespace, &DeleteParams::default())
        .await?;
    result
}

async fn exercise(client: &Client, namespace: &str, image: &str) -> anyhow::Result<()> {
    let clusters: Api<StorageCluster> = Api::namespaced(client.clone(), namespace);
    let blobs: Api<Blob> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let apply = PatchParams::apply("redstuff-e2e");

    eprintln!("creating StorageCluster e2e (4 shards, 4 nodes)");
    let cluster: StorageCluster = serde_json::from_value(json!({
        "apiVersion": "redstuff.dev/v1alpha1", "kind": "StorageCluster",
        "metadata": {"name": "e2e", "namespace": namespace},
        "spec": {"shards": 4, "nodes": 4, "image": image, "storage": {"size": "1Gi"},
                 "repair": {"gracePeriod": "10m", "maxConcurrent": 4}}
    }))?;
    clusters
        .patch("e2e", &apply, &Patch::Apply(&cluster))
        .await?;
    let phase_is = |want: &'static str| {
        let clusters = clusters.clone();
        async move || -> anyhow::Result<Option<()>> {
            let c = clusters.get("e2e").await?;
            Ok((c.status.and_then(|s| s.phase).as_deref() == Some(want)).then_some(()))
        }
    };
    wait_for("cluster Ready", phase_is("Ready")).await?;

    let gateway = PortForward::start(namespace, "e2e-gateway", 7700)?;
    // The user token of the cluster's gateway, from the Secret the operator made.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), namespace);
    let secret = secrets.get("e2e-gateway-token").await?;
    let token = secret
        .data
        .and_then(|d| {
            d.get("token")
                .map(|t| String::from_utf8_lossy(&t.0).into_owned())
        })
        .and_then(|t| redstuff::auth::parse_tokens(&t).into_iter().next())
        .ok_or_else(|| anyhow::anyhow!("the gateway token Secret holds no token"))?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    let http = redstuff::http::client_builder()
        .default_headers(headers)
        .build()?;
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let stored: serde_json::Value = http
        .put(format!("{}/v1/blobs", gateway.url))
        .body(data.clone())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = stored["id"].as_str().unwrap().to_string();
    eprintln!("stored blob {id}");
    // The operator records the upload as a Blob of its own.
    let record = redstuff::operator::controller::upload_record_name(&id).unwrap();
    eprintln!("waiting for the operator to record it as Blob {record}");
    let healthy = || {
        let blobs = blobs.clone();
        let record = record.clone();
        async move || -> anyhow::Result<Option<()>> {
            let b = blobs.get(&record).await?;
            let health = b.status.and_then(|s| s.health);
            Ok((health == Some(redstuff::operator::crd::BlobHealth::Healthy)).then_some(()))
        }
    };
    wait_for("blob Healthy", healthy()).await?;

    eprintln!("deleting node pod e2e-node-1 and its claim");
    let old_claim = claims.get("e2e-data-1").await?.metadata.uid;
    claims
        .delete("e2e-data-1", &DeleteParams::default())
        .await?;
    pods.delete("e2e-node-1", &DeleteParams::default()).await?;
    wait_for("a new claim for node 1", async || {
        Ok(claims
            .get_opt("e2e-data-1")
            .await?
            .filter(|c| c.metadata.uid != old_claim && c.metadata.deletion_timestamp.is_none())
            .map(|_| ()))
    })
    .await?;
    wait_for("cluster Ready again", phase_is("Ready")).await?;
    wait_for("blob Healthy again", healthy()).await?;

    let read = http
        .get(format!("{}/v1/blobs/{id}", gateway.url))
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    anyhow::ensure!(
        read.as_ref() == data.as_slice(),
        "the blob read back differs"
    );
    eprintln!("read back byte for byte");

    eprintln!("deleting Blob {record} (its finalizer deletes the slivers)");
    blobs.delete(&record, &DeleteParams::default()).await?;
    wait_for("Blob gone", async || {
        Ok(blobs.get_opt(&record).await?.is_none().then_some(()))
    })
    .await?;
    let after = http
        .get(format!("{}/v1/blobs/{id}", gateway.url))
        .send()
        .await?
        .status();
    anyhow::ensure!(
        after == reqwest::StatusCode::NOT_FOUND,
        "the blob is still readable after its Blob was deleted: {after}"
    );
    drop(gateway);

    eprintln!("deleting the cluster");
    clusters.delete("e2e", &DeleteParams::default()).await?;
    wait_for("node pods gone", async || {
        Ok(pods
            .list(&Default::default())
            .await?
            .items
            .iter()
            .all(|p| {
                !p.metadata
                    .name
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("e2e-node")
            })
            .then_some(()))
    })
    .await?;
    Ok(())
}
