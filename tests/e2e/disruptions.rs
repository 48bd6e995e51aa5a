//! What goes wrong in a cluster, done for real: pods and claims deleted,
//! a rollout, the leader killed and stopped, a node pod kept away, a drain.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::cluster::{self, CLUSTER};
use crate::data::{self, shared_bytes};
use crate::harness::{pod_ready, wait_for, E2e, LEASE, NS, RELEASE_NS};
use crate::settled::{self, reasons_since, until_settled};

const NODE_PODS: &str = "app.kubernetes.io/instance=e2e,app.kubernetes.io/component=node";
/// The port node pods serve their metrics on.
const NODE_METRICS_PORT: u16 = 7801;

/// The sum of a metric's samples for the e2e cluster.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains("storagecluster=\"e2e\""))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// At rest, the operator reads only what changed in the nodes' inventories
/// (their journals) instead of every inventory whole.
pub async fn operator_reads_only_changes_at_rest(e2e: &E2e) -> anyhow::Result<()> {
    let changes = wait_for(
        "the operator to read the inventories' changes",
        Duration::from_secs(180),
        || {
            let text = e2e.operator_metrics()?;
            let changes: f64 = text
                .lines()
                .filter(|l| l.starts_with("redstuff_inventory_reads_total{"))
                .filter(|l| l.contains("kind=\"changes\"") && l.contains("storagecluster=\"e2e\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            Ok((changes >= 1.0).then_some(changes))
        },
    )
    .await?;
    let whole = metric(&e2e.operator_metrics()?, "redstuff_inventory_reads_total") - changes;
    eprintln!("operator readings of the inventories: {changes} of changes, about {whole} whole");
    Ok(())
}

/// Node pods not ready (or missing) now.
fn not_ready_node_pods(e2e: &E2e) -> anyhow::Result<usize> {
    let pods = e2e.list("pods", NS, NODE_PODS)?;
    let ready = pods.iter().filter(|p| pod_ready(p)).count();
    Ok(4usize.saturating_sub(ready))
}

pub fn uid(e2e: &E2e, pod: &str) -> anyhow::Result<Option<String>> {
    Ok(e2e
        .get("pod", pod, NS)?
        .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_string)))
}

/// Reasons of the Events about the cluster.
pub fn event_reasons(e2e: &E2e) -> anyhow::Result<Vec<String>> {
    let events = e2e.list("events.events.k8s.io", NS, "")?;
    Ok(events
        .iter()
        .filter(|e| e["regarding"]["kind"] == "StorageCluster")
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect())
}

/// The shared blob reads back exactly.
pub async fn shared_blob_reads_back(e2e: &E2e) -> anyhow::Result<()> {
    let data = shared_bytes();
    let id = data::put(e2e, &data).await?;
    let (gateway, http) = e2e.gateway(CLUSTER)?;
    let (code, back) = data::get(&http, &gateway.url, &id).await?;
    anyhow::ensure!(
        code == 200 && back == data,
        "GET {code}, {} bytes",
        back.len()
    );
    Ok(())
}

pub fn shared_record() -> String {
    upload_record_of(&shared_bytes())
}

/// A Blob a person made naming the shared blob (the operator's record of
/// it is deleted by the S3 scenario and not made again: S3 holds those
/// bytes), made if missing; its name.
pub fn shared_blob(e2e: &E2e) -> anyhow::Result<String> {
    e2e.apply(&format!(
        r#"apiVersion: redstuff.dev/v1alpha1
kind: Blob
metadata: {{name: shared, namespace: {NS}}}
spec:
  cluster: {CLUSTER}
  source: {{upload: {{blobId: "{}"}}}}
"#,
        blob_id_of(&shared_bytes())
    ))?;
    Ok("shared".to_string())
}

/// The name of the Blob the operator would record an upload of `data`
/// under, on the e2e cluster (n = 4).
pub fn upload_record_of(data: &[u8]) -> String {
    redstuff::operator::controller::upload_record_name(CLUSTER, &blob_id_of(data)).unwrap()
}

/// The id of `data` stored on the e2e cluster (n = 4).
pub fn blob_id_of(data: &[u8]) -> String {
    let config = redstuff::codec::EncodingConfig::new(4).unwrap();
    let (metadata, _) =
        redstuff::codec::BlobEncoder::new(config, redstuff::codec::DEFAULT_SEGMENT_SIZE)
            .unwrap()
            .encode(data)
            .unwrap();
    metadata.blob_id().to_string()
}

pub async fn pod_deleted(e2e: &E2e) -> anyhow::Result<()> {
    shared_blob_reads_back(e2e).await?;
    let shared = shared_blob(e2e)?;
    data::until_healthy(e2e, &shared, Duration::from_secs(120)).await?;
    let before = metric(&e2e.operator_metrics()?, "redstuff_repair_bytes_total");
    let old = uid(e2e, "e2e-node-1")?;
    let since = settled::moment();
    e2e.kubectl(&["-n", NS, "delete", "pod", "e2e-node-1", "--wait=true"])?;
    wait_for(
        "e2e-node-1 back and ready",
        Duration::from_secs(180),
        || {
            let pod = e2e.get("pod", "e2e-node-1", NS)?;
            Ok(pod
                .filter(|p| {
                    p["metadata"]["uid"].as_str().map(str::to_string) != old && pod_ready(p)
                })
                .map(|_| ()))
        },
    )
    .await?;
    let claim = e2e.get("pod", "e2e-node-1", NS)?.unwrap()["spec"]["volumes"][0]
        ["persistentVolumeClaim"]["claimName"]
        .clone();
    anyhow::ensure!(claim == "e2e-data-1", "the new pod is on claim {claim}");
    cluster::until_phase(e2e, "Ready", Duration::from_secs(120)).await?;
    data::until_healthy(e2e, &shared, Duration::from_secs(60)).await?;
    shared_blob_reads_back(e2e).await?;
    anyhow::ensure!(reasons_since(e2e, since)?.contains(&"NodePodReplaced".to_string()));
    let after = metric(&e2e.operator_metrics()?, "redstuff_repair_bytes_total");
    anyhow::ensure!(
        after == before,
        "repairs moved {} bytes for a pod on its own claim",
        after - before
    );
    Ok(())
}

pub async fn claim_deleted(e2e: &E2e) -> anyhow::Result<()> {
    let record = shared_blob(e2e)?;
    let metrics = e2e.operator_metrics()?;
    let delays_before = metric(&metrics, "redstuff_repair_start_delay_seconds_count");
    let deleted_at = Instant::now();
    let since = settled::moment();
    // Only the claim: the pod using it keeps it (the claim's protection
    // finalizer) until the operator deletes the pod, which is what
    // VolumeLost tells.
    e2e.kubectl(&["-n", NS, "delete", "pvc", "e2e-data-2", "--wait=false"])?;
    let mut seen: Vec<String> = Vec::new();
    wait_for(
        "the blob Degraded, then Healthy again",
        Duration::from_secs(300),
        || {
            let health = e2e
                .get("blob", &record, NS)?
                .and_then(|b| b["status"]["health"].as_str().map(str::to_string))
                .unwrap_or_default();
            if seen.last() != Some(&health) {
                eprintln!("  {:.0} s: {health}", deleted_at.elapsed().as_secs_f64());
                seen.push(health.clone());
            }
            let degraded_then_healthy = seen.iter().any(|h| h != "Healthy") && health == "Healthy";
            Ok(degraded_then_healthy.then_some(()))
        },
    )
    .await?;
    let status = data::until_healthy(e2e, &record, Duration::from_secs(60)).await?;
    anyhow::ensure!(status["shards"] == "4/4");
    shared_blob_reads_back(e2e).await?;
    let metrics = e2e.operator_metrics()?;
    let count = metric(&metrics, "redstuff_repair_start_delay_seconds_count");
    let sum = metric(&metrics, "redstuff_repair_start_delay_seconds_sum");
    anyhow::ensure!(count > delays_before, "no repair start was measured");
    eprintln!(
        "time from the claim's deletion to the repair's start: {:.1} s (mean over {count} repairs; redstuff_repair_start_delay_seconds)",
        sum / count
    );
    anyhow::ensure!(reasons_since(e2e, since)?.contains(&"VolumeLost".to_string()));
    until_settled(e2e, Duration::from_secs(300)).await?;
    Ok(())
}

pub async fn rollout(e2e: &E2e) -> anyhow::Result<()> {
    let data = shared_bytes();
    let id = data::put(e2e, &data).await?;
    let (gateway, http) = e2e.gateway(CLUSTER)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader = {
        let (stop, reads, failures) = (stop.clone(), reads.clone(), failures.clone());
        let url = gateway.url.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match data::get(&http, &url, &id).await {
                    Ok((200, back)) if back == data => reads.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("  failed read: {:?}", other.map(|(c, b)| (c, b.len())));
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let old_hashes: Vec<String> = e2e
        .list("pods", NS, NODE_PODS)?
        .iter()
        .filter_map(|p| {
            p["metadata"]["annotations"]["redstuff.dev/spec-hash"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    let since = settled::moment();
    e2e.apply(&cluster::manifest("20m"))?;
    let mut most_down = 0;
    let result = wait_for(
        "every node pod on the new spec, the cluster Ready",
        Duration::from_secs(600),
        || {
            most_down = most_down.max(not_ready_node_pods(e2e)?);
            let pods = e2e.list("pods", NS, NODE_PODS)?;
            let renewed = pods.len() == 4
                && pods.iter().all(|p| {
                    pod_ready(p)
                        && p["metadata"]["annotations"]["redstuff.dev/spec-hash"]
                            .as_str()
                            .is_some_and(|h| !old_hashes.iter().any(|o| o == h))
                });
            let status = cluster::current_status(e2e)?;
            Ok((renewed && status.is_some_and(|s| s["phase"] == "Ready")).then_some(()))
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    reader.await?;
    result?;
    let (reads, failures) = (
        reads.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    eprintln!("{reads} reads during the rollout, {failures} failed; at most {most_down} node pods down at once");
    anyhow::ensure!(failures == 0, "{failures} reads failed during the rollout");
    anyhow::ensure!(reads > 0);
    anyhow::ensure!(most_down <= 1, "{most_down} node pods were down at once");
    anyhow::ensure!(reasons_since(e2e, since)?.contains(&"NodePodUpdated".to_string()));
    until_settled(e2e, Duration::from_secs(300)).await?;
    Ok(())
}

fn operator_pods(e2e: &E2e) -> anyhow::Result<Vec<String>> {
    Ok(e2e
        .list("pods", RELEASE_NS, "app.kubernetes.io/component=operator")?
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect())
}

/// How often the operator container of `pod` was restarted.
fn restarts(e2e: &E2e, pod: &str) -> anyhow::Result<u64> {
    let pod = e2e
        .get("pod", pod, RELEASE_NS)?
        .ok_or_else(|| anyhow::anyhow!("no operator pod {pod}"))?;
    Ok(pod["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0))
}

/// The operator's Lease duration, in seconds (`redstuff operator`).
const LEASE_SECONDS: i64 = 15;

/// When `holder` last renewed the leader Lease, while it holds it
/// (`None` once it holds it no more).
fn lease_renewal(e2e: &E2e, holder: &str) -> anyhow::Result<Option<Timestamp>> {
    let lease = e2e
        .get("lease", LEASE, RELEASE_NS)?
        .context("no leader Lease")?;
    if lease["spec"]["holderIdentity"] != holder {
        return Ok(None);
    }
    let renewed = lease["spec"]["renewTime"]
        .as_str()
        .context("a held Lease without renewTime")?;
    Ok(Some(renewed.parse()?))
}

/// Waits until the Lease is held by a pod other than `old`; how long it took.
async fn new_leader(e2e: &E2e, old: &str, timeout: Duration) -> anyhow::Result<(String, Duration)> {
    let start = Instant::now();
    let leader = wait_for("another leader", timeout, || {
        Ok(e2e.leader().ok().filter(|l| l != old))
    })
    .await?;
    Ok((leader, start.elapsed()))
}

pub async fn leader_failover(e2e: &E2e) -> anyhow::Result<()> {
    wait_for("two operator pods ready", Duration::from_secs(120), || {
        let pods = e2e.list("pods", RELEASE_NS, "app.kubernetes.io/component=operator")?;
        Ok((pods.iter().filter(|p| pod_ready(p)).count() == 2).then_some(()))
    })
    .await?;
    let leader = e2e.leader()?;
    anyhow::ensure!(
        operator_pods(e2e)?.contains(&leader),
        "the Lease holder {leader} is no operator pod"
    );
    // Hung (SIGSTOP): it renews nothing and releases nothing, so the
    // standby takes the Lease once it expires (15 s). (A SIGKILLed leader
    // is restarted by the kubelet in the same pod, under the same
    // identity, and resumes its own Lease: no two leaders either way.)
    let restarts_before = restarts(e2e, &leader)?;
    e2e.signal_container(RELEASE_NS, &leader, "STOP")?;
    let taken = new_leader(e2e, &leader, Duration::from_secs(60)).await;
    let (second, took) = match taken {
        Ok(taken) => taken,
        Err(e) => {
            e2e.signal_container(RELEASE_NS, &leader, "CONT")?;
            return Err(e);
        }
    };
    eprintln!(
        "hung leader {leader}: {second} leads after {:.1} s (Lease duration 15 s)",
        took.as_secs_f64()
    );
    anyhow::ensure!(took <= Duration::from_secs(25), "the standby took {took:?}");
    // Woken, the old leader finds its Lease gone and ends (the kubelet
    // restarts it as a standby); the new leader keeps the Lease.
    e2e.signal_container(RELEASE_NS, &leader, "CONT")?;
    wait_for(
        "the woken leader to end itself",
        Duration::from_secs(60),
        || Ok((restarts(e2e, &leader)? > restarts_before).then_some(())),
    )
    .await?;
    anyhow::ensure!(
        e2e.leader()? == second,
        "the woken leader took the Lease back from {second}"
    );
    wait_for(
        "two operator pods ready again",
        Duration::from_secs(120),
        || {
            let pods = e2e.list("pods", RELEASE_NS, "app.kubernetes.io/component=operator")?;
            Ok((pods.iter().filter(|p| pod_ready(p)).count() == 2).then_some(()))
        },
    )
    .await?;
    // Terminated (SIGTERM): it lets its reconciles end (bounded) and
    // releases the Lease, renewing it meanwhile; so the Lease is free
    // before it would have expired (a standby looks at it again at the
    // latest when it would, and a new pod at once).
    let mut renewed = lease_renewal(e2e, &second)?;
    e2e.kubectl(&["-n", RELEASE_NS, "delete", "pod", &second, "--wait=false"])?;
    let left_at = wait_for(
        &format!("the Lease left by {second}"),
        Duration::from_secs(60),
        || match lease_renewal(e2e, &second)? {
            Some(at) => {
                renewed = renewed.max(Some(at));
                Ok(None)
            }
            None => Ok(Some(Timestamp::now())),
        },
    )
    .await?;
    let renewed = renewed.context("the Lease was never seen renewed")?;
    let expiry = renewed + SignedDuration::from_secs(LEASE_SECONDS);
    anyhow::ensure!(
        left_at < expiry,
        "after a SIGTERM the Lease was left at {left_at}, once it expired ({expiry}): it was not released"
    );
    let (third, took) = new_leader(e2e, &second, Duration::from_secs(60)).await?;
    eprintln!(
        "terminated leader {second}: the Lease free {:.1} s before it would have expired; {third} leads after {:.1} s",
        expiry.duration_since(left_at).as_secs_f64(),
        took.as_secs_f64()
    );
    // The new leader goes on reconciling.
    cluster::until_phase(e2e, "Ready", Duration::from_secs(120)).await?;
    Ok(())
}

fn kubernetes_nodes(e2e: &E2e) -> anyhow::Result<Vec<String>> {
    Ok(e2e
        .list("nodes", "default", "")?
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .collect())
}

fn uncordon_all(e2e: &E2e) -> anyhow::Result<()> {
    for node in kubernetes_nodes(e2e)? {
        e2e.kubectl(&["uncordon", &node])?;
    }
    Ok(())
}

pub async fn grace_period(e2e: &E2e) -> anyhow::Result<()> {
    let short = r#"{"spec":{"repair":{"gracePeriod":"40s"}}}"#;
    e2e.merge_patch("storagecluster", CLUSTER, short)?;
    let result = kept_away_past_the_grace_period(e2e).await;
    let restored = format!(
        r#"{{"spec":{{"repair":{{"gracePeriod":"{}"}}}}}}"#,
        cluster::GRACE_PERIOD
    );
    e2e.merge_patch("storagecluster", CLUSTER, &restored)?;
    result
}

async fn kept_away_past_the_grace_period(e2e: &E2e) -> anyhow::Result<()> {
    let record = shared_blob(e2e)?;
    cluster::until_phase(e2e, "Ready", Duration::from_secs(120)).await?;
    data::until_healthy(e2e, &record, Duration::from_secs(120)).await?;
    let since = settled::moment();
    for node in kubernetes_nodes(e2e)? {
        e2e.kubectl(&["cordon", &node])?;
    }
    let result = async {
        // The pod comes back, but cannot be scheduled: it stays away.
        e2e.kubectl(&["-n", NS, "delete", "pod", "e2e-node-3", "--wait=true"])?;
        let status = wait_for(
            "e2e-node-3's shards moved",
            Duration::from_secs(180),
            || {
                let status = e2e.cluster_status(CLUSTER)?;
                let holds = !shards_of(&status["shardAssignment"], "e2e-node-3").is_empty();
                Ok((!holds && !status["shardAssignment"].is_null()).then_some(status))
            },
        )
        .await?;
        eprintln!(
            "assignment after the grace period: {}",
            status["shardAssignment"]
        );
        anyhow::ensure!(reasons_since(e2e, since)?.contains(&"ShardsMoved".to_string()));
        // Rebuilt on the others, while e2e-node-3 is still away.
        data::until_healthy(e2e, &record, Duration::from_secs(180)).await?;
        shared_blob_reads_back(e2e).await?;
        // What each other node pod has released so far: e2e-node-3's own
        // stale copies, released once it is back, must not pass for the
        // release of the shards it gets back.
        let released_before = wait_for(
            "the bytes the other node pods released so far",
            Duration::from_secs(60),
            || {
                let released = node_released_bytes(e2e)?;
                let others = ["e2e-node-0", "e2e-node-1", "e2e-node-2"];
                Ok(others
                    .iter()
                    .all(|pod| released.contains_key(*pod))
                    .then_some(released))
            },
        )
        .await?;
        Ok((status["shardAssignment"].clone(), released_before))
    }
    .await;
    uncordon_all(e2e)?;
    let (moved, released_before) = result?;
    cluster::until_phase(e2e, "Ready", Duration::from_secs(300)).await?;
    // Back, e2e-node-3 gets an even share of shards again, each from a node
    // that holds it whole; that node releases its copy once e2e-node-3
    // holds the shard too (its old volume, or a rebuild).
    let back = wait_for(
        "e2e-node-3 owns a shard again",
        Duration::from_secs(300),
        || {
            let status = e2e.cluster_status(CLUSTER)?;
            Ok(shards_of(&status["shardAssignment"], "e2e-node-3")
                .first()
                .copied())
        },
    )
    .await?;
    let giver =
        owner_of(&moved, back).with_context(|| format!("no owner of shard {back} in {moved}"))?;
    let before = released_before
        .get(&giver)
        .copied()
        .with_context(|| format!("{giver} gave shard {back}: no node pod of the fleet"))?;
    let released = wait_for(
        "the copy of the shard e2e-node-3 got back released",
        Duration::from_secs(300),
        || {
            let now = node_released_bytes(e2e)?.get(&giver).copied();
            Ok(now.filter(|now| *now > before))
        },
    )
    .await?;
    eprintln!(
        "shard {back} came back to e2e-node-3 from {giver}, which released {} bytes of it",
        released - before
    );
    until_settled(e2e, Duration::from_secs(300)).await?;
    data::until_healthy(e2e, &record, Duration::from_secs(180)).await?;
    shared_blob_reads_back(e2e).await
}

/// The shards `node` owns in a status' shard assignment.
pub fn shards_of(assignment: &Value, node: &str) -> Vec<u64> {
    assignment
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["node"] == node)
        .filter_map(|a| a["shard"].as_u64())
        .collect()
}

/// The node pod owning `shard` in a status' shard assignment.
fn owner_of(assignment: &Value, shard: u64) -> Option<String> {
    assignment
        .as_array()?
        .iter()
        .find(|a| a["shard"] == shard)?["node"]
        .as_str()
        .map(str::to_string)
}

/// Bytes of pairs each running node pod has released since it started.
fn node_released_bytes(e2e: &E2e) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut released = BTreeMap::new();
    for pod in e2e.list("pods", NS, NODE_PODS)? {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        if !pod_ready(&pod) {
            continue;
        }
        let text = e2e.pod_metrics(NS, name, NODE_METRICS_PORT)?;
        let bytes = text
            .lines()
            .filter_map(|l| l.strip_prefix("redstuff_node_released_bytes_total"))
            .filter(|rest| rest.starts_with(['{', ' ']))
            .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        released.insert(name.to_string(), bytes);
    }
    Ok(released)
}

pub async fn drain(e2e: &E2e) -> anyhow::Result<()> {
    cluster::until_phase(e2e, "Ready", Duration::from_secs(120)).await?;
    let budget = wait_for(
        "the budget to allow one disruption",
        Duration::from_secs(60),
        || {
            let pdb = e2e
                .get("pdb", "e2e-nodes", NS)?
                .map(|p| p["status"].clone());
            Ok(pdb.filter(|s| s["disruptionsAllowed"] == 1))
        },
    )
    .await?;
    let sync_failed = budget["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["reason"] == "SyncFailed");
    anyhow::ensure!(
        !sync_failed,
        "the PodDisruptionBudget is SyncFailed: {budget}"
    );
    let nodes = kubernetes_nodes(e2e)?;
    let single = nodes.len() == 1;
    let mut drain = std::process::Command::new(&e2e.kubectl)
        .args([
            "drain",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=60s",
        ])
        .arg(format!("--pod-selector={NODE_PODS}"))
        .args(&nodes)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut most_down = 0;
    let start = Instant::now();
    let drained = async {
        loop {
            most_down = most_down.max(not_ready_node_pods(e2e)?);
            if let Some(status) = drain.try_wait()? {
                return Ok(status.success());
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(180),
                "kubectl drain did not end"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    .await;
    // Whatever happened, the drain ends and the nodes take pods again, so
    // the scenarios after this one run on a whole cluster.
    let _ = drain.kill();
    let _ = drain.wait();
    uncordon_all(e2e)?;
    let drained = drained?;
    eprintln!(
        "drain of {nodes:?}: {}; at most {most_down} node pods down at once",
        if drained {
            "completed"
        } else {
            "stopped by the budget"
        }
    );
    anyhow::ensure!(most_down <= 1, "{most_down} node pods were down at once");
    anyhow::ensure!(most_down == 1, "the drain evicted no node pod");
    // On one Kubernetes node an evicted pod has nowhere to go until the
    // node is uncordoned, so the budget stops the drain after one pod.
    anyhow::ensure!(
        drained || single,
        "the drain of {} nodes did not complete",
        nodes.len()
    );
    until_settled(e2e, Duration::from_secs(300)).await?;
    data::until_healthy(e2e, &shared_blob(e2e)?, Duration::from_secs(180)).await?;
    Ok(())
}
