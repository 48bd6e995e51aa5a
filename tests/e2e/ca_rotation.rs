//! The cluster's CA rotated on a real cluster while a client reads and
//! writes through the gateway: no call fails, no pod's certificate is
//! rejected, and at the end every pod serves a certificate of the new CA
//! only.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::cluster::CLUSTER;
use crate::data::{self, shared_bytes};
use crate::harness::{pattern, wait_for, E2e, NS, RELEASE_NS};

const PODS: &str = "app.kubernetes.io/instance=e2e";

/// A key of the cluster's CA Secret, decoded; `None` when absent.
fn ca_secret_text(e2e: &E2e, key: &str) -> anyhow::Result<Option<String>> {
    let secret = e2e
        .get("secret", &format!("{CLUSTER}-ca"), NS)?
        .ok_or_else(|| anyhow::anyhow!("no {CLUSTER}-ca Secret"))?;
    let Some(encoded) = secret["data"][key].as_str() else {
        return Ok(None);
    };
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded)?;
    Ok(Some(String::from_utf8(bytes)?))
}

/// The certificates in a PEM bundle.
fn certificates_in(pem: &[u8]) -> usize {
    String::from_utf8_lossy(pem)
        .matches("-----BEGIN CERTIFICATE-----")
        .count()
}

/// The TLS handshakes each running node and gateway pod of the cluster
/// counted as failed (refused) and as abandoned (the caller left), by pod.
fn handshake_counts(e2e: &E2e) -> anyhow::Result<BTreeMap<String, (f64, f64)>> {
    let mut counts = BTreeMap::new();
    for pod in e2e.list("pods", NS, PODS)? {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let (port, component) =
            match pod["metadata"]["labels"]["app.kubernetes.io/component"].as_str() {
                Some("node") => (7801, "node"),
                Some("gateway") => (7701, "gateway"),
                _ => continue,
            };
        if pod["status"]["phase"] != "Running" || !pod["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let text = e2e.pod_metrics(NS, name, port)?;
        let sum = |metric: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        counts.insert(
            name.to_string(),
            (
                sum(&format!(
                    "redstuff_{component}_tls_handshake_failures_total"
                )),
                sum(&format!(
                    "redstuff_{component}_tls_handshakes_abandoned_total"
                )),
            ),
        );
    }
    Ok(counts)
}

/// A reader and writer through the gateway, with a client that can be
/// swapped for one trusting a new `ca.crt`, as a user's would be.
struct Traffic {
    stop: Arc<AtomicBool>,
    client: Arc<RwLock<reqwest::Client>>,
    done: (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>),
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(url: String, client: reqwest::Client, id: String, data: Vec<u8>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let client = Arc::new(RwLock::new(client));
        let done = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let task = {
            let (stop, client) = (stop.clone(), client.clone());
            let (reads, writes, failures) = (done.0.clone(), done.1.clone(), done.2.clone());
            tokio::spawn(async move {
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let http = client.read().expect("client lock").clone();
                    match data::get(&http, &url, &id).await {
                        Ok((200, back)) if back == data => reads.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("  failed read: {:?}", other.map(|(c, b)| (c, b.len())));
                            failures.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    if round.is_multiple_of(5) {
                        let mut body = pattern(200_000);
                        body.extend_from_slice(format!("ca rotation write {round}").as_bytes());
                        let answer = http.put(format!("{url}/v1/blobs")).body(body).send().await;
                        match answer {
                            Ok(r) if r.status() == 201 => writes.fetch_add(1, Ordering::Relaxed),
                            other => {
                                eprintln!("  failed write: {:?}", other.map(|r| r.status()));
                                failures.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        Self {
            stop,
            client,
            done,
            task,
        }
    }

    /// Stops; (reads, writes, failures).
    async fn finish(self) -> anyhow::Result<(u64, u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?;
        let load = |c: &Arc<AtomicU64>| c.load(Ordering::Relaxed);
        Ok((load(&self.done.0), load(&self.done.1), load(&self.done.2)))
    }
}

/// Annotated for a rotation, the cluster trusts a new CA beside the old,
/// then signs with it once every pod serves its renewed certificate and
/// the overlap passed, then drops the old once every pod serves from the
/// new; a client that takes the new `ca.crt` when the Event asks it to
/// reads and writes throughout without one failure, and no caller of a
/// node or gateway pod rejects its certificate.
pub async fn rotates_the_ca_without_a_failed_call(e2e: &E2e) -> anyhow::Result<()> {
    let data = shared_bytes();
    let id = data::put(e2e, &data).await?;
    let old_ca = ca_secret_text(e2e, "ca.crt")?.ok_or_else(|| anyhow::anyhow!("no ca.crt"))?;
    let handshakes_before = handshake_counts(e2e)?;
    let (gateway, http) = e2e.gateway(CLUSTER)?;
    let traffic = Traffic::start(gateway.url.clone(), http, id.clone(), data.clone());

    let started = k8s_openapi::jiff::Timestamp::now().to_string();
    e2e.merge_patch(
        "storagecluster",
        CLUSTER,
        r#"{"metadata":{"annotations":{"redstuff.dev/rotate-ca":"e2e-1"}},"spec":{"tls":{"caRotationOverlap":"20s"}}}"#,
    )?;
    // Step 1: the gateway's ca.crt holds both CAs; the client takes it.
    wait_for(
        "the new CA trusted beside the old in the gateway's ca.crt",
        Duration::from_secs(120),
        || {
            Ok(e2e
                .gateway_ca(CLUSTER)?
                .filter(|pem| certificates_in(pem) == 2))
        },
    )
    .await?;
    anyhow::ensure!(ca_secret_text(e2e, "next-ca.crt")?.is_some());
    let (_, bundle_client) = e2e.gateway(CLUSTER)?;
    *traffic.client.write().expect("client lock") = bundle_client;
    // The StorageCluster's status tells where the rotation is.
    let told = wait_for(
        "the rotation's step in the StorageCluster's status",
        Duration::from_secs(60),
        || {
            let status = e2e.cluster_status(CLUSTER)?;
            let rotation = &status["caRotation"];
            let told = matches!(
                rotation["step"].as_str(),
                Some("TrustingNewCa" | "NewCaSigning")
            ) && rotation["nextStepAfter"].is_string()
                && status["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Progressing" && c["status"] == "True")
                });
            Ok(told.then_some(rotation.clone()))
        },
    )
    .await?;
    eprintln!("    status.caRotation: {told}");

    let result = wait_for(
        "the rotation done: a new CA alone",
        Duration::from_secs(600),
        || {
            let current = ca_secret_text(e2e, "ca.crt")?;
            let done = current.as_ref().is_some_and(|ca| *ca != old_ca)
                && ca_secret_text(e2e, "next-ca.crt")?.is_none()
                && ca_secret_text(e2e, "previous-ca.crt")?.is_none();
            Ok(done.then_some(current))
        },
    )
    .await;
    // Traffic goes on a little after the last step, while pods read it.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (reads, writes, failures) = traffic.finish().await?;
    let new_ca = result?.unwrap_or_default();
    eprintln!("    {reads} reads and {writes} writes during the rotation, {failures} failed");
    anyhow::ensure!(failures == 0, "{failures} calls failed during the rotation");
    anyhow::ensure!(reads > 0 && writes > 0, "{reads} reads, {writes} writes");

    // No pod refused a handshake: a caller that does not trust what a pod
    // serves ends its handshake with a fatal alert, which the pod counts as
    // failed and logs with the reason. (Callers that merely leave a
    // handshake, a call cancelled while it connected, are counted apart.)
    let handshakes_after = handshake_counts(e2e)?;
    eprintln!(
        "    handshakes (failed, abandoned) by pod: {handshakes_before:?} then {handshakes_after:?}"
    );
    let mut refused_during = Vec::new();
    for (pod, (failed, _)) in &handshakes_after {
        let before = handshakes_before.get(pod).map_or(0.0, |counts| counts.0);
        if *failed <= before {
            continue;
        }
        let log = e2e.kubectl(&["-n", NS, "logs", pod, &format!("--since-time={started}")])?;
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("refused a TLS handshake"))
            .collect();
        refused_during.push(format!(
            "{pod}: {} failed handshakes, its log says: {refused:#?}",
            failed - before
        ));
    }
    if !refused_during.is_empty() {
        // Who the callers' addresses are.
        let operators = e2e.list("pods", RELEASE_NS, "app.kubernetes.io/component=operator")?;
        for pod in operators.iter().chain(&e2e.list("pods", NS, PODS)?) {
            eprintln!(
                "    {} is {}",
                pod["status"]["podIP"].as_str().unwrap_or("?"),
                pod["metadata"]["name"].as_str().unwrap_or("?")
            );
        }
    }
    anyhow::ensure!(
        refused_during.is_empty(),
        "handshakes were refused during the rotation: {refused_during:#?}"
    );

    wait_for(
        "no rotation in the StorageCluster's status",
        Duration::from_secs(60),
        || {
            Ok(e2e.cluster_status(CLUSTER)?["caRotation"]
                .is_null()
                .then_some(()))
        },
    )
    .await?;

    // The gateway's ca.crt is the new CA alone, and a client trusting only
    // it reads the blob; one trusting only the old CA is refused.
    let gateway_ca = e2e
        .gateway_ca(CLUSTER)?
        .ok_or_else(|| anyhow::anyhow!("no gateway ca.crt"))?;
    anyhow::ensure!(String::from_utf8(gateway_ca)? == new_ca);
    let (_, new_client) = e2e.gateway(CLUSTER)?;
    let (code, back) = data::get(&new_client, &gateway.url, &id).await?;
    anyhow::ensure!(code == 200 && back == data, "read with the new CA: {code}");
    let old_trust =
        redstuff::tls::TrustedCa::from_pem(std::path::Path::new("old"), old_ca.as_bytes())?;
    let old_client = redstuff::http::client_builder_trusting(Some(&old_trust)).build()?;
    anyhow::ensure!(
        old_client
            .get(format!("{}/healthz", gateway.url))
            .send()
            .await
            .is_err(),
        "the gateway still serves a certificate of the old CA"
    );

    let steps = crate::disruptions::event_reasons(e2e)?
        .into_iter()
        .filter(|reason| reason.starts_with("CaRotation"))
        .collect::<std::collections::BTreeSet<_>>();
    anyhow::ensure!(
        steps.len() == 3,
        "CaRotation Events: {steps:?}, not one for each step"
    );
    let phase = e2e
        .operator_metrics()?
        .lines()
        .find(|l| {
            l.starts_with("redstuff_tls_ca_rotation_phase{") && l.contains("storagecluster=\"e2e\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    anyhow::ensure!(phase == Some(0.0), "rotation phase after: {phase:?}");
    Ok(())
}
