//! The local fleet for real: `redstuff dev` starts node processes on
//! loopback; nodes are killed with SIGKILL and their data wiped; blobs must
//! read back byte for byte throughout and return to Healthy through repair.
//! Every wait is bounded; every process is ours and ended by PID.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redstuff::codec::EncodingConfig;

const WAIT: Duration = Duration::from_secs(90);

struct DevFleet {
    child: Child,
    gateway: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl DevFleet {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_redstuff"))
            .args([
                "dev",
                "--gateway-addr",
                "127.0.0.1:0",
                "--period-ms",
                "200",
                "--segment-size",
                "1MiB",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("fleet"))
            .args(extra)
            .env("REDSTUFF_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut gateway = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.trim().strip_prefix("gateway:") {
                gateway = Some(rest.split_whitespace().next().unwrap().to_string());
                break;
            }
        }
        // Keep reading, so the fleet never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let gateway = gateway.expect("redstuff dev printed its gateway");
        Self {
            child,
            gateway,
            dir,
            http: redstuff::http::client(),
        }
    }

    fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("fleet").join(name)
    }

    async fn status(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/v1/status", self.gateway))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn wait_for(
        &self,
        what: &str,
        mut done: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            if let Ok(response) = self
                .http
                .get(format!("{}/v1/status", self.gateway))
                .send()
                .await
            {
                let status = response
                    .json::<serde_json::Value>()
                    .await
                    .unwrap_or_default();
                if status.get("nodes").is_some() {
                    if done(&status) {
                        return status;
                    }
                    assert!(
                        start.elapsed() < WAIT,
                        "timed out waiting for {what}: {status:#}"
                    );
                }
            }
            assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn put(&self, data: &[u8]) -> String {
        let response = self
            .http
            .put(format!("{}/v1/blobs", self.gateway))
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["size"], data.len() as u64);
        body["id"].as_str().unwrap().to_string()
    }

    async fn get(&self, id: &str) -> Vec<u8> {
        let response = self
            .http
            .get(format!("{}/v1/blobs/{id}", self.gateway))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {id}");
        response.bytes().await.unwrap().to_vec()
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.gateway))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    fn pid_of(status: &serde_json::Value, name: &str) -> i32 {
        let node = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap();
        node["pid"].as_u64().expect("running") as i32
    }

    /// Kills a node with SIGKILL and wipes its data; its data directory is
    /// replaced by a plain file, so every restart fails until `release`.
    fn kill_and_wipe(&self, status: &serde_json::Value, name: &str) {
        let data = self.node_dir(name).join("data");
        let old = self.node_dir(name).join("data.old");
        std::fs::rename(&data, &old).unwrap();
        std::fs::write(&data, b"not a directory").unwrap();
        kill9(Self::pid_of(status, name));
        std::fs::remove_dir_all(old).unwrap();
    }

    fn release(&self, name: &str) {
        std::fs::remove_file(self.node_dir(name).join("data")).unwrap();
    }
}

impl Drop for DevFleet {
    fn drop(&mut self) {
        // SAFETY: a signal to the dev process this test started.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kill9(pid: i32) {
    // SAFETY: a signal to a node process started by the fleet under test.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGKILL) },
        0,
        "kill -9 {pid}"
    );
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

fn all_healthy(status: &serde_json::Value, count: usize) -> bool {
    let blobs = status["blobs"].as_array().unwrap();
    blobs.len() == count && blobs.iter().all(|b| b["health"] == "Healthy")
}

fn all_ready(status: &serde_json::Value) -> bool {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["state"] == "ready")
}

/// (p + q) symbols of every segment of a blob of `len` bytes, in 1 MiB segments.
fn ideal_repair_bytes_per_shard(len: u64) -> u64 {
    let config = EncodingConfig::new(7).unwrap();
    let layout = redstuff::codec::BlobLayout::new(config, 1 << 20, len).unwrap();
    (0..layout.segment_count())
        .map(|i| layout.segment(i).unwrap().repair_symbol_bytes())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_survive_f_wiped_nodes_and_heal_with_repair_traffic_near_p_plus_q_symbols() {
    let fleet = DevFleet::start(&[]);
    let sizes: [usize; 20] = [
        0,
        1,
        2,
        3,
        7,
        100,
        1000,
        4095,
        12_345,
        65_537,
        333_333,
        700_001,
        1_000_001,
        1 << 20,
        (3 << 19) + 3,
        2 << 20,
        (2 << 20) + 1,
        (3 << 20) + 7,
        4 << 20,
        (5 << 20) - 1,
    ];
    let mut blobs = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let data = pseudo_random(*size, i as u64 + 1);
        let id = fleet.put(&data).await;
        blobs.push((id, data));
    }
    let status = fleet
        .wait_for("20 healthy blobs", |s| all_healthy(s, 20))
        .await;

    // f = 2 of 7 nodes lose their process and their disk, and stay down.
    fleet.kill_and_wipe(&status, "node-1");
    fleet.kill_and_wipe(&status, "node-4");
    fleet
        .wait_for("two nodes down", |s| {
            s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["state"] != "ready")
                .count()
                == 2
        })
        .await;
    for (id, data) in &blobs {
        assert!(
            fleet.get(id).await == *data,
            "blob {id} ({} bytes) while 2 nodes are down",
            data.len()
        );
    }
    let degraded = fleet.status().await;
    assert!(
        degraded["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["health"] == "Degraded"),
        "{degraded:#}"
    );

    // They come back empty; the loop rebuilds their pairs from recovery symbols.
    fleet.release("node-1");
    fleet.release("node-4");
    let healed = fleet
        .wait_for("every blob Healthy again", |s| {
            all_ready(s) && all_healthy(s, 20)
        })
        .await;
    for (id, data) in &blobs {
        assert!(fleet.get(id).await == *data, "blob {id} after repair");
    }
    let restarts: Vec<u64> = healed["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["restarts"].as_u64().unwrap())
        .collect();
    assert!(restarts[1] >= 1 && restarts[4] >= 1, "{restarts:?}");

    // Repair traffic: for blobs of 1 MiB and more, within 1.2x of (p + q)
    // symbols per rebuilt pair, proofs and metadata included.
    for blob in healed["blobs"].as_array().unwrap() {
        let size = blob["size"].as_u64().unwrap();
        let moved = blob["repair_bytes"].as_u64().unwrap();
        let ideal = 2 * ideal_repair_bytes_per_shard(size);
        if size > 0 {
            assert!(moved > 0, "blob of {size} bytes was not repaired: {blob}");
        }
        if size >= 1 << 20 {
            let ratio = moved as f64 / ideal as f64;
            assert!(
                (1.0..=1.2).contains(&ratio),
                "blob of {size} bytes: {moved} moved for {ideal} ideal ({ratio:.3})"
            );
        }
    }
    let metrics = fleet.metrics().await;
    assert!(
        metrics.contains("redstuff_repairs_completed_total"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("redstuff_repairs_failed_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_node_does_not_break_reads_or_repairs_and_shows_in_metrics() {
    let fleet = DevFleet::start(&["--test-corrupt-node", "3"]);
    let mut blobs = Vec::new();
    for i in 0..8u64 {
        let data = pseudo_random(200_000 + i as usize * 77_777, 100 + i);
        blobs.push((fleet.put(&data).await, data));
    }
    let status = fleet
        .wait_for("8 healthy blobs", |s| all_healthy(s, 8))
        .await;
    for (id, data) in &blobs {
        assert!(
            fleet.get(id).await == *data,
            "blob {id} read past a lying node"
        );
    }
    // One more node is lost: its repair must get past the liar's symbols.
    fleet.kill_and_wipe(&status, "node-0");
    fleet.release("node-0");
    let healed = fleet
        .wait_for("healthy again", |s| {
            all_ready(s)
                && all_healthy(s, 8)
                && s["blobs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|b| b["repair_bytes"].as_u64() > Some(0))
        })
        .await;
    assert_eq!(healed["blobs"].as_array().unwrap().len(), 8);
    for (id, data) in &blobs {
        assert!(fleet.get(id).await == *data);
    }
    let metrics = fleet.metrics().await;
    let invalid: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("redstuff_peer_invalid_responses_total{node=\"node-3\"}"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(invalid > 0, "the gateway names the lying node:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_in_the_middle_of_writes_never_serves_corrupt_data_and_the_fleet_heals() {
    let fleet = DevFleet::start(&[]);
    let status = fleet.wait_for("nodes ready", all_ready).await;
    let victim = DevFleet::pid_of(&status, "node-2");
    let writer = {
        let gateway = fleet.gateway.clone();
        tokio::spawn(async move {
            let http = redstuff::http::client();
            let mut stored = Vec::new();
            for i in 0..12u64 {
                let data = pseudo_random(150_000 + (i as usize) * 100_003, 500 + i);
                let response = http
                    .put(format!("{gateway}/v1/blobs"))
                    .body(data.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201, "writes go on with one node down");
                let body: serde_json::Value = response.json().await.unwrap();
                stored.push((body["id"].as_str().unwrap().to_string(), data));
            }
            stored
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill9(victim);
    let stored = writer.await.unwrap();
    for (id, data) in &stored {
        assert!(fleet.get(id).await == *data, "blob {id} after the kill");
    }
    fleet
        .wait_for("healed after the kill", |s| {
            all_ready(s) && all_healthy(s, stored.len())
        })
        .await;
    for (id, data) in &stored {
        assert!(fleet.get(id).await == *data, "blob {id} after healing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_bad_requests_with_clear_errors() {
    let fleet = DevFleet::start(&["--shards", "4", "--nodes", "2"]);
    fleet.wait_for("nodes ready", all_ready).await;
    let http = &fleet.http;
    let g = &fleet.gateway;
    let unknown = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for (method, url, status) in [
        ("GET", format!("{g}/v1/blobs/not-an-id"), 400),
        ("GET", format!("{g}/v1/blobs/{unknown}"), 404),
        ("HEAD", format!("{g}/v1/blobs/{unknown}"), 404),
        ("DELETE", format!("{g}/v1/blobs/{unknown}"), 404),
        ("GET", format!("{g}/v2/blobs"), 404),
    ] {
        let response = http
            .request(method.parse().unwrap(), &url)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{method} {url}");
        if method != "HEAD" {
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{method} {url}"
            );
        }
    }
    let data = pseudo_random(10_000, 9);
    let id = fleet.put(&data).await;
    let head = http
        .head(format!("{g}/v1/blobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["content-length"], "10000");
    let deleted = http
        .delete(format!("{g}/v1/blobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = http.get(format!("{g}/v1/blobs/{id}")).send().await.unwrap();
    assert_eq!(gone.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitrot_on_a_disk_is_found_by_scrubbing_and_repaired() {
    let fleet = DevFleet::start(&["--scrub-interval-secs", "1"]);
    let data = pseudo_random(300_000, 77);
    let id = fleet.put(&data).await;
    fleet.wait_for("healthy", |s| all_healthy(s, 1)).await;
    // Flip one byte in the middle of one stored sliver file of node-5.
    let shard_dir = fleet
        .node_dir("node-5")
        .join("data")
        .join("blobs")
        .join(&id);
    let sliver = std::fs::read_dir(&shard_dir)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .map(|e| e.path().join("0.primary"))
        .unwrap();
    let mut bytes = std::fs::read(&sliver).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&sliver, bytes).unwrap();
    // The scrub quarantines it, the loop sees the pair missing and repairs it.
    fleet
        .wait_for("the damaged pair repaired", |s| {
            s["blobs"][0]["health"] == "Healthy"
                && s["blobs"][0]["pairs_rebuilt"].as_u64() >= Some(1)
        })
        .await;
    assert!(fleet.get(&id).await == data);
    assert!(std::fs::read(&sliver).is_ok(), "the sliver is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_on_with_f_nodes_answering_garbage() {
    // n = 7, f = 2: nodes 2 and 5 corrupt every sliver they serve.
    let fleet = DevFleet::start(&["--test-corrupt-node", "2", "--test-corrupt-node", "5"]);
    let mut blobs = Vec::new();
    for i in 0..6u64 {
        let data = pseudo_random(50_000 + i as usize * 400_001, 900 + i);
        blobs.push((fleet.put(&data).await, data));
    }
    for (id, data) in &blobs {
        assert!(
            fleet.get(id).await == *data,
            "blob {id} read past two lying nodes"
        );
    }
    let metrics = fleet.metrics().await;
    for liar in ["node-2", "node-5"] {
        let prefix = format!("redstuff_peer_invalid_responses_total{{node=\"{liar}\"}}");
        assert!(
            metrics.lines().any(|l| l.starts_with(&prefix)),
            "{liar} is named:\n{metrics}"
        );
    }
    assert!(!metrics.contains("redstuff_peer_invalid_responses_total{node=\"node-0\"}"));
}
