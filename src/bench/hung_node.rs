//! The hung-node stage of `redstuff bench fleet`: small PUTs, GETs and
//! DELETEs through the gateway with every node answering, then with one
//! node stopped (SIGSTOP: its connections accepted, nothing answered).
//! The first operation after the stop waits out the node deadline once;
//! the gateway then passes the node over (`client::unanswering`), so the
//! later operations should cost about what they cost with every node
//! answering. The node is resumed and the fleet healed before the bench
//! goes on.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Bytes of each blob of this stage.
const BLOB_BYTES: usize = 4 << 20;
/// Operations of each kind timed in each phase.
const OPERATIONS: usize = 6;
/// The node stopped.
const STOPPED: usize = 3;

/// Mean and slowest of a set of timed operations, in seconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// The mean.
    pub mean_seconds: f64,
    /// The slowest.
    pub slowest_seconds: f64,
}

impl Latency {
    fn of(times: &[Duration]) -> Self {
        let seconds: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
        Self {
            mean_seconds: seconds.iter().sum::<f64>() / seconds.len().max(1) as f64,
            slowest_seconds: seconds.iter().copied().fold(0.0, f64::max),
        }
    }
}

/// Operations with every node answering, and with one stopped.
#[derive(Debug, Clone, Serialize)]
pub struct HungNodeReport {
    /// Bytes of each blob.
    pub blob_bytes: u64,
    /// Operations of each kind timed per phase.
    pub operations: usize,
    /// PUTs with every node answering.
    pub healthy_put: Latency,
    /// GETs with every node answering.
    pub healthy_get: Latency,
    /// The first PUT after the node stopped, seconds: it waits the node
    /// deadline.
    pub first_put_seconds: f64,
    /// Later PUTs of new blobs while the node is stopped.
    pub hung_put: Latency,
    /// GETs of the blobs stored before, while the node is stopped.
    pub hung_get: Latency,
    /// DELETEs while the node is stopped.
    pub hung_delete: Latency,
    /// hung_put mean / healthy_put mean.
    pub put_ratio: f64,
    /// hung_get mean / healthy_get mean.
    pub get_ratio: f64,
}

/// Runs the stage against the fleet of `gateway` (its `/v1/status` names
/// the node processes), and leaves every node answering and every blob
/// Healthy.
pub async fn measure(
    http: &reqwest::Client,
    gateway: &str,
    log: &mut impl FnMut(&str),
) -> anyhow::Result<HungNodeReport> {
    // Seeds of their own: the fleet bench's other blobs use lower ones.
    let blob = |seed: usize| -> Vec<u8> {
        let mut data = vec![0u8; BLOB_BYTES];
        super::fill(&mut data, 50_000 + seed as u64);
        data
    };
    // Twice as many blobs as GETs timed: those read with every node
    // answering are in the gateway's cache, so the GETs with the node
    // stopped read the others.
    let (mut read, mut stored) = (Vec::new(), Vec::new());
    let (mut healthy_put, mut healthy_get) = (Vec::new(), Vec::new());
    for seed in 0..2 * OPERATIONS {
        let data = blob(1000 + seed);
        let (id, took) = timed(put(http, gateway, &data)).await;
        healthy_put.push(took);
        let id = id?;
        if seed % 2 == 0 {
            let (got, took) = timed(get(http, gateway, &id, &data)).await;
            got?;
            healthy_get.push(took);
            read.push(id);
        } else {
            stored.push((id, data));
        }
    }

    let seen = status(http, gateway).await?;
    let pid = super::nodes::node_pid(&seen, &format!("node-{STOPPED}"))?;
    super::nodes::signal(pid, libc::SIGSTOP);
    let resume = Resume(pid);
    let outcome = measure_stopped(http, gateway, &stored, &blob).await;
    drop(resume);
    let (first_put, hung_put, hung_get, hung_delete, left) = outcome?;
    log(&format!(
        "node-{STOPPED} stopped: the first PUT took {:.2} s, the later ones {:.2} s on average \
         ({:.2} s with every node answering)",
        first_put.as_secs_f64(),
        Latency::of(&hung_put).mean_seconds,
        Latency::of(&healthy_put).mean_seconds
    ));
    wait_healed(http, gateway).await?;
    // The stage leaves no blob behind (the fill after it counts bytes).
    for id in left
        .iter()
        .chain(&read)
        .chain(stored.iter().map(|(id, _)| id))
    {
        delete(http, gateway, id).await?;
    }
    let (healthy_put, healthy_get) = (Latency::of(&healthy_put), Latency::of(&healthy_get));
    let (hung_put, hung_get) = (Latency::of(&hung_put), Latency::of(&hung_get));
    Ok(HungNodeReport {
        blob_bytes: BLOB_BYTES as u64,
        operations: OPERATIONS,
        healthy_put,
        healthy_get,
        first_put_seconds: first_put.as_secs_f64(),
        hung_put,
        hung_get,
        hung_delete: Latency::of(&hung_delete),
        put_ratio: hung_put.mean_seconds / healthy_put.mean_seconds.max(1e-9),
        get_ratio: hung_get.mean_seconds / healthy_get.mean_seconds.max(1e-9),
    })
}

/// Timed operations while the node is stopped: the first PUT, later PUTs,
/// GETs of the blobs in `stored` (never read yet), DELETEs of the blobs the
/// PUTs stored;
/// and the ids of those PUTs not deleted.
async fn measure_stopped(
    http: &reqwest::Client,
    gateway: &str,
    stored: &[(String, Vec<u8>)],
    blob: &impl Fn(usize) -> Vec<u8>,
) -> anyhow::Result<(
    Duration,
    Vec<Duration>,
    Vec<Duration>,
    Vec<Duration>,
    Vec<String>,
)> {
    let (first, first_put) = timed(put(http, gateway, &blob(2000))).await;
    let mut new = vec![first?];
    let mut puts = Vec::new();
    for seed in 0..OPERATIONS {
        let (id, took) = timed(put(http, gateway, &blob(2001 + seed))).await;
        new.push(id?);
        puts.push(took);
    }
    let mut gets = Vec::new();
    for (id, data) in stored {
        let (got, took) = timed(get(http, gateway, id, data)).await;
        got?;
        gets.push(took);
    }
    let mut deletes = Vec::new();
    for id in new.iter().take(OPERATIONS) {
        let (deleted, took) = timed(delete(http, gateway, id)).await;
        deleted?;
        deletes.push(took);
    }
    Ok((first_put, puts, gets, deletes, new.split_off(OPERATIONS)))
}

async fn timed<T>(work: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = work.await;
    (out, start.elapsed())
}

async fn put(http: &reqwest::Client, gateway: &str, data: &[u8]) -> anyhow::Result<String> {
    let response = http
        .put(format!("{gateway}/v1/blobs"))
        .body(data.to_vec())
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "PUT failed: {}",
        response.status()
    );
    let body: serde_json::Value = response.json().await?;
    Ok(body["id"].as_str().unwrap_or_default().to_string())
}

async fn get(http: &reqwest::Client, gateway: &str, id: &str, data: &[u8]) -> anyhow::Result<()> {
    let response = http.get(format!("{gateway}/v1/blobs/{id}")).send().await?;
    anyhow::ensure!(
        response.status().is_success(),
        "GET failed: {}",
        response.status()
    );
    anyhow::ensure!(
        response.bytes().await? == data,
        "the blob read back differs"
    );
    Ok(())
}

async fn delete(http: &reqwest::Client, gateway: &str, id: &str) -> anyhow::Result<()> {
    let response = http
        .delete(format!("{gateway}/v1/blobs/{id}"))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "DELETE failed: {}",
        response.status()
    );
    Ok(())
}

async fn status(http: &reqwest::Client, gateway: &str) -> anyhow::Result<serde_json::Value> {
    Ok(http
        .get(format!("{gateway}/v1/status"))
        .send()
        .await?
        .json()
        .await?)
}

/// Resumes the stopped node when dropped: after the timed operations,
/// whatever their outcome, and when the bench is interrupted meanwhile.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        super::nodes::signal(self.0, libc::SIGCONT);
    }
}

/// Waits until every node is ready and every blob Healthy (the writes of
/// the stop repaired on the resumed node), at most 10 minutes.
async fn wait_healed(http: &reqwest::Client, gateway: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let status = status(http, gateway).await?;
        let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
        let blobs = status["blobs"].as_array().cloned().unwrap_or_default();
        if nodes.iter().all(|n| n["state"] == "ready")
            && blobs.iter().all(|b| b["health"] == "Healthy")
        {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(600),
            "the fleet did not heal within 10 minutes of the node's resumption"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The stage as lines of the bench's table.
pub fn render(r: &HungNodeReport) -> String {
    let row = |what: &str, l: &Latency| {
        format!(
            "  {what:<36} {:>7.3} s mean, {:>7.3} s slowest\n",
            l.mean_seconds, l.slowest_seconds
        )
    };
    let mut out = format!(
        "one node stopped (SIGSTOP), {} operations of each kind on {} blobs:\n",
        r.operations,
        crate::units::format_bytes(r.blob_bytes)
    );
    out.push_str(&row("PUT, every node answering", &r.healthy_put));
    out.push_str(&row("GET, every node answering", &r.healthy_get));
    out.push_str(&format!(
        "  {:<36} {:>7.3} s (waits out the node deadline once)\n",
        "first PUT after the stop", r.first_put_seconds
    ));
    out.push_str(&row("later PUTs, node stopped", &r.hung_put));
    out.push_str(&row("GETs, node stopped", &r.hung_get));
    out.push_str(&row("DELETEs, node stopped", &r.hung_delete));
    out.push_str(&format!(
        "  stopped / answering: PUT {:.2}, GET {:.2}\n",
        r.put_ratio, r.get_ratio
    ));
    out
}
