//! The local fleet for real: `redstuff dev` starts node processes on
//! loopback; nodes are killed with SIGKILL and their data wiped; blobs must
//! read back byte for byte throughout and return to Healthy through repair.
//! Every wait is bounded; every process is ours and ended by PID.

mod dev_fleet;

use std::time::Duration;

use dev_fleet::{
    all_healthy, all_ready, healed, ideal_repair_bytes_per_shard, kill9, pseudo_random,
    put_holding_body_back, wait_gone, DevFleet,
};

/// Node `name`'s address in the fleet map the gateway and the nodes read.
fn mapped_url(fleet: &DevFleet, name: &str) -> String {
    let map = redstuff::fleet::FleetMap::read(&fleet.data_dir().join("fleet.json")).unwrap();
    map.nodes.into_iter().find(|n| n.name == name).unwrap().url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_port_was_taken_while_it_was_down_comes_back_on_another_and_the_map_follows() {
    let fleet = DevFleet::start(&[]);
    let status = fleet.wait_for("nodes ready", all_ready).await;
    let data = pseudo_random(1_500_000, 61);
    let id = fleet.put(&data).await;
    let old = mapped_url(&fleet, "node-2");
    let port: u16 = old.rsplit(':').next().unwrap().parse().unwrap();
    // The loop is held while the node dies and something else takes its
    // port, so that it cannot start the node again on it first.
    let dev = fleet.child.id() as i32;
    fleet.stop(dev);
    let victim = DevFleet::pid_of(&status, "node-2");
    kill9(victim);
    wait_gone(victim);
    let squatter =
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the node's port is free");
    fleet.resume(dev);
    let back = fleet
        .wait_for("node-2 back on another port", |s| {
            all_ready(s)
                && s["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n["name"] == "node-2" && n["address"] != old.as_str())
        })
        .await;
    let new = mapped_url(&fleet, "node-2");
    assert_ne!(new, old, "the map names its new address");
    let restarts = back["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-2")
        .unwrap()["restarts"]
        .as_u64()
        .unwrap();
    assert_eq!(
        restarts, 1,
        "started again once, on another port at the first try"
    );
    // The gateway and the loop reach it there: a blob written now is
    // Healthy, its pairs on node-2 too.
    assert!(fleet.get(&id).await == data);
    let again = pseudo_random(700_000, 62);
    let id = fleet.put(&again).await;
    assert!(fleet.get(&id).await == again);
    fleet
        .wait_for("healthy with node-2 back", |s| {
            all_ready(s) && all_healthy(s, 2)
        })
        .await;
    drop(squatter);
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
    // Healthy as soon as the rebuilt pairs are on the nodes; the repairs'
    // traffic is counted once each repair has ended.
    let healed = fleet
        .wait_for("every blob Healthy again, no repair running", |s| {
            healed(s, 20)
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
    // symbols per rebuilt pair, proofs and metadata included; at least the
    // (p + q - 1) fetched (the node's own rebuilt secondary sliver gives
    // one symbol of its primary: 7/8 at n = 7).
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
                (0.85..=1.2).contains(&ratio),
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
        let http = fleet.http.clone();
        tokio::spawn(async move {
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
    // Without the user token: refused, with a hint.
    let anonymous = redstuff::http::client();
    for method in ["PUT", "DELETE", "GET"] {
        let response = anonymous
            .request(method.parse().unwrap(), format!("{g}/v1/blobs/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{method} without a token");
    }
    let response = anonymous
        .put(format!("{g}/v1/blobs"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{body}"
    );
    let metrics = anonymous.get(format!("{g}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200, "metrics need no token");
    // curl holds a large body back (Expect: 100-continue); refused before
    // sending it, it must not find the connection waiting for those bytes.
    let url = g.clone();
    let answer = tokio::task::spawn_blocking(move || put_holding_body_back(&url, "/v1/blobs"))
        .await
        .unwrap();
    assert!(answer.starts_with("http/1.1 401"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
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
    let blamed = dev_fleet::blamed(&metrics);
    for liar in ["node-2", "node-5"] {
        assert!(blamed.contains_key(liar), "{liar} is named:\n{metrics}");
    }
    assert!(!blamed.contains_key("node-0"), "{blamed:?}");
}

#[test]
fn a_client_stall_bound_of_zero_seconds_is_refused_before_anything_starts() {
    let data_dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["dev", "--client-stall-secs", "0", "--data-dir"],
        vec![
            "gateway",
            "--fleet",
            "fleet.json",
            "--cluster-token-file",
            "t",
            "--user-tokens-file",
            "u",
            "--client-stall-secs",
            "0",
            "--spool-dir",
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_redstuff"))
            .args(&args)
            .arg(data_dir.path().join("never"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("must be more than 0"), "{stderr}");
        assert!(
            !data_dir.path().join("never").exists(),
            "{args:?} made its directory"
        );
    }
}
