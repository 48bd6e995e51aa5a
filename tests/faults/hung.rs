//! G5 and G6: f nodes that are stopped (SIGSTOP: connections accepted,
//! nothing answered) or lying stall nothing: reads, writes, deletes,
//! status and the control loop go on, and the fleet names them.

use crate::dev_fleet::{all_healthy, all_ready, kill9, pseudo_random, DevFleet};
use crate::within;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_f_nodes_stopped_every_operation_finishes_and_status_names_them() {
    let fleet = DevFleet::start(&["--node-timeout-secs", "2"]);
    let before = pseudo_random(2_200_000, 8);
    let old = fleet.put(&before).await;
    let status = fleet.wait_for("healthy", |s| all_healthy(s, 1)).await;
    let stopped = ["node-2", "node-5"].map(|n| DevFleet::pid_of(&status, n));
    for pid in stopped {
        fleet.stop(pid);
    }
    let data = pseudo_random(3_100_000, 9);
    let response = within("PUT", fleet.try_put(&data)).await;
    assert_eq!(response.status(), 201);
    let stored: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        stored["shards_missing"].as_array().unwrap().len(),
        2,
        "{stored}"
    );
    let id = stored["id"].as_str().unwrap().to_string();
    assert!(within("GET", fleet.get(&id)).await == data);
    assert!(within("GET", fleet.get(&old)).await == before);
    assert_eq!(within("HEAD", fleet.code("HEAD", &old)).await, 200);
    assert_eq!(within("DELETE", fleet.code("DELETE", &old)).await, 204);
    let status = within(
        "status naming the stopped nodes",
        fleet.wait_for("stopped nodes named", |s| {
            DevFleet::state_of(s, "node-2") == "not answering"
                && DevFleet::state_of(s, "node-5") == "not answering"
        }),
    )
    .await;
    assert_eq!(DevFleet::state_of(&status, "node-0"), "ready");
    assert!(fleet
        .metrics()
        .await
        .contains("redstuff_nodes_not_answering 2"));
    // A node that dies meanwhile is still restarted by the loop.
    let restarts = status["nodes"][0]["restarts"].as_u64().unwrap();
    kill9(DevFleet::pid_of(&status, "node-0"));
    within(
        "the dead node restarted while two are hung",
        fleet.wait_for("node-0 restarted", |s| {
            s["nodes"][0]["restarts"].as_u64() > Some(restarts)
                && DevFleet::state_of(s, "node-0") == "ready"
        }),
    )
    .await;
    for pid in stopped {
        fleet.resume(pid);
    }
    fleet
        .wait_for("healed", |s| all_ready(s) && all_healthy(s, 1))
        .await;
    assert!(fleet.get(&id).await == data);
    assert_eq!(fleet.code("GET", &old).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_repairs_go_on_while_f_nodes_replay_or_corrupt_and_only_they_are_blamed() {
    // n = 7, f = 2: node 3 replays the valid answers of the next shard's
    // holder, node 5 flips bits.
    let fleet = DevFleet::start(&["--test-replaying-node", "3", "--test-corrupt-node", "5"]);
    let mut blobs = Vec::new();
    // 15 segments: the liars hold systematic pairs of some of them.
    for (i, len) in [600_000usize, 2_500_000, 4_500_000, 5_500_000]
        .into_iter()
        .enumerate()
    {
        let data = pseudo_random(len, 40 + i as u64);
        blobs.push((fleet.put(&data).await, data));
    }
    let status = fleet.wait_for("healthy", |s| all_healthy(s, 4)).await;
    for (id, data) in &blobs {
        assert!(
            fleet.get(id).await == *data,
            "blob {id} read past two liars"
        );
    }
    fleet.kill_and_wipe(&status, "node-1");
    fleet.release("node-1");
    fleet
        .wait_for("node-1 rebuilt past the liars", |s| {
            all_ready(s) && all_healthy(s, 4)
        })
        .await;
    for (id, data) in &blobs {
        assert!(fleet.get(id).await == *data);
    }
    let metrics = fleet.metrics().await;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("redstuff_peer_invalid_responses_total{"))
    {
        assert!(
            line.contains("node=\"node-3\"") || line.contains("node=\"node-5\""),
            "an honest node was blamed: {line}"
        );
    }
    assert!(
        metrics.contains("redstuff_peer_invalid_responses_total{node=\"node-3\"}"),
        "{metrics}"
    );
}
