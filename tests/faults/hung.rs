//! G5 and G6: f nodes that are stopped (SIGSTOP: connections accepted,
//! nothing answered) or lying stall nothing: reads, writes, deletes,
//! status and the control loop go on, and the fleet names them. A read
//! asks several holders for the metadata at once, so one that hangs on
//! it costs no deadline.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::dev_fleet::{all_healthy, all_ready, kill9, pseudo_random, DevFleet};
use crate::procs::{proxy, user_http, Cluster, Refusals};
use crate::{bound, within, within_bound, NO_HANG};

/// The reader's fixed hedge delay: a sliver request unanswered this long
/// gets the next shard asked beside it.
const HEDGE: Duration = Duration::from_secs(2);

/// The fleet's node deadline (`--node-timeout-secs 2`).
const DEADLINE: Duration = Duration::from_secs(2);

/// `redstuff status` against the fleet's gateway with `--token`, ready to run.
fn status_cli(fleet: &DevFleet) -> std::process::Command {
    let token = std::fs::read_to_string(fleet.data_dir().join("token")).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_redstuff"));
    command
        .args([
            "status",
            "--gateway",
            &fleet.gateway,
            "--token",
            token.trim(),
        ])
        .env_remove("REDSTUFF_TOKEN")
        .current_dir(fleet.dir.path());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_f_nodes_stopped_every_operation_and_the_status_cli_finish_within_a_bound_from_the_node_deadline(
) {
    let fleet = DevFleet::start(&["--node-timeout-secs", "2"]);
    let before = pseudo_random(2_200_000, 8);
    let old = fleet.put(&before).await;
    let status = fleet.wait_for("healthy", |s| all_healthy(s, 1)).await;
    let stopped = ["node-2", "node-5"].map(|n| DevFleet::pid_of(&status, n));
    for pid in stopped {
        fleet.stop(pid);
    }
    let data = pseudo_random(3_100_000, 9);
    // Bounds: each operation waits out a stopped node's deadline at most
    // once per phase (markers; staging, after which the write sends it
    // nothing more; a delete's tombstone), a read at most one hedge.
    let response = within_bound("PUT", bound(DEADLINE, 2), fleet.try_put(&data)).await;
    assert_eq!(response.status(), 201);
    let stored: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        stored["shards_missing"].as_array().unwrap().len(),
        2,
        "{stored}"
    );
    let id = stored["id"].as_str().unwrap().to_string();
    let read = bound(DEADLINE, 1) + HEDGE;
    assert!(within_bound("GET", read, fleet.get(&id)).await == data);
    assert!(within_bound("GET", read, fleet.get(&old)).await == before);
    assert_eq!(
        within_bound("HEAD", bound(DEADLINE, 1), fleet.code("HEAD", &old)).await,
        200
    );
    assert_eq!(
        within_bound("DELETE", bound(DEADLINE, 2), fleet.code("DELETE", &old)).await,
        204
    );
    // The loop reads each inventory within the node deadline (a page) and
    // publishes after its period (200 ms).
    let status = within_bound(
        "status naming the stopped nodes",
        bound(DEADLINE, 2),
        fleet.wait_for("stopped nodes named", |s| {
            DevFleet::state_of(s, "node-2") == "not answering"
                && DevFleet::state_of(s, "node-5") == "not answering"
        }),
    )
    .await;
    assert_eq!(DevFleet::state_of(&status, "node-0"), "ready");
    // `redstuff status` (the binary, with --token) finishes and names them.
    let output = within_bound(
        "redstuff status",
        bound(DEADLINE, 1),
        tokio::task::spawn_blocking({
            let mut command = status_cli(&fleet);
            move || command.output().unwrap()
        }),
    )
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8(output.stdout).unwrap();
    let line_of = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no line for {name}:\n{table}"))
            .to_string()
    };
    for name in ["node-2", "node-5"] {
        assert!(line_of(name).contains("not answering"), "{table}");
    }
    for name in ["node-0", "node-1", "node-3", "node-4", "node-6"] {
        assert!(line_of(name).contains("ready"), "{table}");
    }
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
    let blamed = crate::dev_fleet::blamed(&fleet.metrics().await);
    assert!(
        blamed.keys().all(|n| n == "node-3" || n == "node-5"),
        "an honest node was blamed: {blamed:?}"
    );
    assert!(blamed.contains_key("node-3"), "{blamed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_completes_past_f_nodes_replaying_at_once_and_blames_only_them() {
    // n = 7, f = 2: nodes 3 and 5 both serve the next shard's valid
    // slivers and symbols instead of their own.
    let fleet = DevFleet::start(&["--test-replaying-node", "3", "--test-replaying-node", "5"]);
    let mut blobs = Vec::new();
    for (i, len) in [900_000usize, 3_300_000, 6_100_000].into_iter().enumerate() {
        let data = pseudo_random(len, 90 + i as u64);
        blobs.push((fleet.put(&data).await, data));
    }
    fleet.wait_for("healthy", |s| all_healthy(s, 3)).await;
    // Two honest nodes are wiped in turn: each is rebuilt with both liars
    // among its peers.
    for wiped in ["node-1", "node-6"] {
        let status = fleet.status().await;
        fleet.kill_and_wipe(&status, wiped);
        fleet.release(wiped);
        fleet
            .wait_for("rebuilt past two replaying peers", |s| {
                all_ready(s)
                    && all_healthy(s, 3)
                    && s["blobs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|b| b["shards_complete"] == 7)
            })
            .await;
        for (id, data) in &blobs {
            assert!(
                fleet.get(id).await == *data,
                "blob {id} after {wiped} was rebuilt"
            );
        }
    }
    let mut caught = crate::dev_fleet::blamed(&fleet.metrics().await);
    assert!(
        caught.keys().all(|n| n == "node-3" || n == "node-5"),
        "an honest node was blamed: {caught:?}"
    );
    // Both liars were caught, by reads or by the repairs.
    let node_metrics = |name: &str| {
        let address = fleet_address(&fleet, name);
        async move {
            redstuff::http::client()
                .get(format!("{address}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    for wiped in ["node-1", "node-6"] {
        let blamed = crate::dev_fleet::blamed(&node_metrics(wiped).await);
        assert!(
            blamed.keys().all(|n| n == "node-3" || n == "node-5"),
            "{wiped}'s repair blamed an honest node: {blamed:?}"
        );
        caught.extend(blamed);
    }
    for liar in ["node-3", "node-5"] {
        assert!(
            caught.contains_key(liar),
            "{liar} was never caught: {caught:?}"
        );
    }
}

/// The API address the loop reports for node `name`.
fn fleet_address(fleet: &DevFleet, name: &str) -> String {
    let data = fleet.data_dir().join("fleet.json");
    let map = redstuff::fleet::FleetMap::read(&data).unwrap();
    map.nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap()
        .url
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_gets_the_metadata_from_another_holder_while_the_first_one_asked_hangs() {
    // n = 4, every node behind a proxy; the node deadline (of the gateway
    // too) is four times this test's bound: a reader that asked one holder
    // at a time would still be waiting on the hung one when the test fails.
    let cluster = Cluster::start(4, &(4 * NO_HANG.as_secs()).to_string());
    let held = Arc::new(Refusals::default());
    let mut urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
    for url in urls.iter_mut() {
        *url = proxy(url.clone(), held.clone()).await;
    }
    let map = cluster.write_map("proxied.json", &urls);
    let (_gateway, gateway) = cluster.gateway(&map, &[]);
    let http = user_http();
    let data = pseudo_random(1_500_000, 91);
    let (status, stored) = crate::put_within("a PUT", NO_HANG, &http, &gateway, &data).await;
    assert_eq!(status, 201);
    let id = stored["id"].as_str().unwrap().to_string();
    assert_eq!(cluster.holders_of(&id).len(), 4);
    // The first metadata request to reach any holder is never answered.
    held.hold_next_metadata_read();
    let read = within("a GET whose first metadata holder hangs", async {
        let response = http
            .get(format!("{gateway}/v1/blobs/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap()
    })
    .await;
    assert!(read == data, "the blob read back");
    assert_eq!(
        held.metadata_reads_held.load(Ordering::SeqCst),
        1,
        "the read asked a holder for the metadata, and that one hung"
    );
}

/// The value of metric `series` (name and labels, as the text shows them)
/// in `text`, 0 when absent.
fn series_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_found_hung_is_passed_over_by_later_reads_writes_and_deletes_without_waiting_until_it_answers_again(
) {
    let fleet = DevFleet::start(&["--node-timeout-secs", "2"]);
    // Six blobs of two segments: node-3 holds systematic slivers of some.
    let mut blobs = Vec::new();
    for seed in 0..6 {
        let data = pseudo_random(1_500_000, 70 + seed);
        blobs.push((fleet.put(&data).await, data));
    }
    let status = fleet.wait_for("healthy", |s| all_healthy(s, 6)).await;
    let hung = DevFleet::pid_of(&status, "node-3");
    let unanswered = r#"redstuff_gateway_node_calls_unanswered_total{node="node-3"}"#;
    let silent = r#"redstuff_gateway_node_unanswering{node="node-3"}"#;
    assert_eq!(series_value(&fleet.metrics().await, silent), 0.0);
    fleet.stop(hung);

    // The first write waits out its deadline and finds it silent.
    let response = within_bound("PUT", bound(DEADLINE, 2), fleet.try_put(&blobs[0].1)).await;
    assert_eq!(response.status(), 201);
    let metrics = fleet.metrics().await;
    assert_eq!(series_value(&metrics, silent), 1.0, "{metrics}");
    let waited_out = series_value(&metrics, unanswered);
    assert!(waited_out >= 1.0, "{metrics}");

    // From then on nothing waits on it: no call to it is waited out, and
    // writes store their blob without its shard.
    for (id, data) in &blobs {
        assert!(within("GET", fleet.get(id)).await == *data);
    }
    for seed in 0..3 {
        let response = within("PUT", fleet.try_put(&pseudo_random(700_000, 90 + seed))).await;
        assert_eq!(response.status(), 201);
        let stored: serde_json::Value = response.json().await.unwrap();
        assert_eq!(stored["shards_missing"], serde_json::json!([3]), "{stored}");
    }
    assert_eq!(
        within("DELETE", fleet.code("DELETE", &blobs[5].0)).await,
        204
    );
    assert_eq!(fleet.code("GET", &blobs[5].0).await, 404);
    let metrics = fleet.metrics().await;
    assert_eq!(
        series_value(&metrics, unanswered),
        waited_out,
        "a call to the hung node was waited out again:\n{metrics}"
    );

    // Resumed, it answers the gateway's probe and takes writes again.
    fleet.resume(hung);
    within("node-3 answering the gateway again", async {
        while series_value(&fleet.metrics().await, silent) != 0.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let response = within("PUT", fleet.try_put(&pseudo_random(700_000, 99))).await;
    assert_eq!(response.status(), 201);
    let stored: serde_json::Value = response.json().await.unwrap();
    assert_eq!(stored["shards_missing"], serde_json::json!([]), "{stored}");
    fleet
        .wait_for("healed", |s| all_ready(s) && all_healthy(s, 9))
        .await;
}
