//! G4: a DELETE answered 2xx is final, even for the nodes that slept
//! through it; storing the same bytes again works; a delete that reached
//! too few nodes says so, and a retry completes it; a delete racing a
//! repair leaves nothing behind.

use std::time::{Duration, Instant};

use crate::dev_fleet::{all_healthy, all_ready, holders_of, pseudo_random, DevFleet, WAIT};
use crate::{bound, within, within_bound};

/// The node deadline of these fleets (`--node-timeout-secs 2`).
const DEADLINE: Duration = Duration::from_secs(2);

/// Waits until no node holds data of `id`.
async fn until_gone_everywhere(fleet: &DevFleet, id: &str) {
    let start = Instant::now();
    while !holders_of(fleet, id).is_empty() {
        assert!(
            start.elapsed() < WAIT,
            "slivers of the deleted blob stay on {:?}",
            holders_of(fleet, id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts for a while that `id` stays deleted, once the loop's status
/// (published from its last view, one step behind) no longer lists it.
async fn stays_deleted(fleet: &DevFleet, id: &str, for_how_long: Duration) {
    fleet
        .wait_for("the status to drop the deleted blob", |s| {
            s["blobs"].as_array().unwrap().iter().all(|b| b["id"] != id)
        })
        .await;
    let start = Instant::now();
    while start.elapsed() < for_how_long {
        assert_eq!(
            fleet.code("GET", id).await,
            404,
            "the deleted blob came back"
        );
        assert_eq!(fleet.code("HEAD", id).await, 404);
        let status = fleet.status().await;
        assert!(
            status["blobs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["id"] != id),
            "{status:#}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_is_final_though_f_nodes_slept_through_it_and_their_slivers_go_when_they_return() {
    let fleet = DevFleet::start(&["--node-timeout-secs", "2"]);
    let data = pseudo_random(1_500_000, 3);
    let id = fleet.put(&data).await;
    let status = fleet.wait_for("healthy", |s| all_healthy(s, 1)).await;
    // node-2 is stopped, node-5 killed (and held down by its data dir
    // being in the way until released).
    let sleeper = DevFleet::pid_of(&status, "node-2");
    fleet.stop(sleeper);
    let dead = fleet.node_dir("node-5").join("data");
    let aside = fleet.node_dir("node-5").join("data.aside");
    std::fs::rename(&dead, &aside).unwrap();
    std::fs::write(&dead, b"not now").unwrap();
    crate::dev_fleet::kill9(DevFleet::pid_of(&status, "node-5"));
    let code = within_bound(
        "a DELETE with f nodes away",
        bound(DEADLINE, 2),
        fleet.code("DELETE", &id),
    )
    .await;
    assert_eq!(code, 204);
    // Both come back with their slivers.
    std::fs::remove_file(&dead).unwrap();
    std::fs::rename(&aside, &dead).unwrap();
    fleet.resume(sleeper);
    assert!(holders_of(&fleet, &id).contains(&"node-5".to_string()));
    fleet.wait_for("nodes ready", all_ready).await;
    until_gone_everywhere(&fleet, &id).await;
    stays_deleted(&fleet, &id, Duration::from_secs(3)).await;
    let metrics = fleet.metrics().await;
    assert!(
        metrics.contains("redstuff_markers_spread_total{marker=\"tombstone\"}"),
        "{metrics}"
    );

    // The same bytes stored again: visible, and healed everywhere.
    assert_eq!(fleet.put(&data).await, id);
    fleet.wait_for("healthy again", |s| all_healthy(s, 1)).await;
    assert!(fleet.get(&id).await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_slept_through_a_delete_and_the_rewrite_ends_holding_the_rewrite() {
    let fleet = DevFleet::start(&["--node-timeout-secs", "2"]);
    let data = pseudo_random(700_000, 4);
    let id = fleet.put(&data).await;
    let status = fleet.wait_for("healthy", |s| all_healthy(s, 1)).await;
    let sleeper = DevFleet::pid_of(&status, "node-3");
    fleet.stop(sleeper);
    assert_eq!(
        within_bound("delete", bound(DEADLINE, 2), fleet.code("DELETE", &id)).await,
        204
    );
    assert_eq!(
        within_bound("rewrite", bound(DEADLINE, 2), fleet.put(&data)).await,
        id
    );
    fleet.resume(sleeper);
    // node-3 keeps (or gets back) its pair and the newer commit: Healthy 7/7.
    fleet
        .wait_for("healthy 7/7", |s| {
            all_ready(s) && all_healthy(s, 1) && s["blobs"][0]["shards_complete"] == 7
        })
        .await;
    assert!(holders_of(&fleet, &id).contains(&"node-3".to_string()));
    assert!(fleet.get(&id).await == data);
    // Stays so: the old tombstone never wins over the rewrite.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(fleet.get(&id).await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_reaches_too_few_nodes_says_so_and_a_retry_completes_it() {
    let fleet = DevFleet::start(&["--node-timeout-secs", "2"]);
    let data = pseudo_random(400_000, 5);
    let id = fleet.put(&data).await;
    let status = fleet.wait_for("healthy", |s| all_healthy(s, 1)).await;
    for name in ["node-0", "node-1", "node-2"] {
        fleet.stop(DevFleet::pid_of(&status, name));
    }
    let response = within_bound(
        "a DELETE with f + 1 nodes stopped",
        bound(DEADLINE, 1),
        fleet
            .http
            .delete(format!("{}/v1/blobs/{id}", fleet.gateway))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    // Too few answered to decide: nothing was deleted (the delete that
    // lands on some shards but too few is tests/faults/refusals.rs).
    assert_eq!(
        body["error"].as_str().unwrap(),
        format!("only 4 shards answered about blob {id} within their deadline, 5 needed to decide"),
        "{body}"
    );
    for name in ["node-0", "node-1", "node-2"] {
        fleet.resume(DevFleet::pid_of(&status, name));
    }
    fleet.wait_for("nodes ready", all_ready).await;
    assert_eq!(within("the retry", fleet.code("DELETE", &id)).await, 204);
    until_gone_everywhere(&fleet, &id).await;
    stays_deleted(&fleet, &id, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_racing_a_repair_leaves_no_sliver_and_no_cached_metadata() {
    let fleet = DevFleet::start(&["--node-timeout-secs", "2"]);
    let data = pseudo_random(5_000_000, 6);
    let id = fleet.put(&data).await;
    let status = fleet.wait_for("healthy", |s| all_healthy(s, 1)).await;
    // node-0 and node-1, the first peers a repairing node asks for the
    // metadata (one at a time, in the map's order), are stopped: a repair
    // of node-4 waits out their deadlines (2 x 2 s) before it can commit
    // or rebuild anything, so the delete below lands while it is in flight.
    let stopped = ["node-0", "node-1"].map(|n| DevFleet::pid_of(&status, n));
    for pid in stopped {
        fleet.stop(pid);
    }
    // node-4 comes back empty: the loop starts rebuilding it...
    fleet.kill_and_wipe(&status, "node-4");
    fleet.release("node-4");
    let node_4 = {
        let map = redstuff::fleet::FleetMap::read(&fleet.data_dir().join("fleet.json")).unwrap();
        map.nodes
            .iter()
            .find(|n| n.name == "node-4")
            .unwrap()
            .url
            .clone()
    };
    let node_metrics = |url: String| async move {
        match redstuff::http::client()
            .get(format!("{url}/metrics"))
            .send()
            .await
        {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(), // not started again yet
        }
    };
    let start = Instant::now();
    while !node_metrics(node_4.clone())
        .await
        .contains("redstuff_node_requests_total{code=\"200\",route=\"/v1/repair\"}")
    {
        assert!(start.elapsed() < WAIT, "the repair of node-4 never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and the blob is deleted while it does (f nodes stopped: the
    // delete waits out their deadline once).
    assert_eq!(
        within_bound(
            "delete during a repair",
            bound(DEADLINE, 2),
            fleet.code("DELETE", &id)
        )
        .await,
        204
    );
    for pid in stopped {
        fleet.resume(pid);
    }
    until_gone_everywhere(&fleet, &id).await;
    stays_deleted(&fleet, &id, Duration::from_secs(2)).await;
    assert!(holders_of(&fleet, &id).is_empty());
    // The delete landed mid-repair: the repair, still waiting for the
    // metadata, ended refused (the tombstone is newer than the write it
    // repairs) before it rebuilt a single pair, and none completed.
    let rebuilt = node_metrics(node_4.clone()).await;
    assert!(
        rebuilt.contains("redstuff_node_pairs_rebuilt_total 0"),
        "node-4 rebuilt pairs before the delete landed: {}",
        rebuilt
            .lines()
            .find(|l| l.starts_with("redstuff_node_pairs_rebuilt_total"))
            .unwrap_or("")
    );
    let start = Instant::now();
    let repairs = loop {
        let metrics = fleet.metrics().await;
        if metrics.contains("redstuff_repairs_in_flight 0") {
            break metrics;
        }
        assert!(start.elapsed() < WAIT, "the repair of node-4 never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let counter = |name: &str| {
        repairs
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in the loop's metrics"))
    };
    assert_eq!(counter("redstuff_repairs_completed_total"), 0);
    assert!(counter("redstuff_repairs_failed_total") >= 1);
    // No node keeps its parsed metadata either.
    let status = fleet.status().await;
    for node in status["nodes"].as_array().unwrap() {
        let url = node["address"].as_str().unwrap();
        let metrics = node_metrics(url.to_string()).await;
        assert!(
            metrics.contains("redstuff_node_metadata_cache_bytes 0"),
            "{}: {}",
            node["name"],
            metrics
                .lines()
                .find(|l| l.starts_with("redstuff_node_metadata_cache_bytes"))
                .unwrap_or("")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_decided_before_the_same_bytes_were_stored_again_leaves_the_new_write() {
    // The S3 collector, and a delete the S3 index guards, delete only the
    // writes up to the moment they decided: stopped past their claim while
    // S3 stored the same bytes again, they must not delete those.
    use redstuff::client::{BlobClient, BlobIoError, Deadlines, DeleteOutcome, NodeCalls};
    let fleet = DevFleet::start(&[]);
    let data = pseudo_random(400_000, 91);
    let id = fleet.put(&data).await;
    let decided = redstuff::blob_state::now_nanos();
    assert_eq!(fleet.put(&data).await, id, "the same bytes stored again");
    let token = std::fs::read_to_string(fleet.data_dir().join("cluster-token")).unwrap();
    let token = token.lines().next().unwrap().trim().to_string();
    let map = redstuff::fleet::FleetMap::read(&fleet.data_dir().join("fleet.json")).unwrap();
    let client = BlobClient::new(
        NodeCalls::new(
            redstuff::auth::TokenSet::single(token),
            Deadlines::default(),
        ),
        map,
        None,
    );
    let blob: redstuff::codec::BlobId = id.parse().unwrap();
    match client.delete_written_before(&blob, decided).await {
        Err(BlobIoError::WrittenSince { .. }) => {}
        other => panic!("a delete decided before the second write: {other:?}"),
    }
    assert!(fleet.get(&id).await == data, "the second write stays");
    stays_visible_for(&fleet, &id, Duration::from_secs(2)).await;
    // Decided now, the delete covers both writes.
    let now = redstuff::blob_state::now_nanos();
    assert!(matches!(
        client.delete_written_before(&blob, now).await,
        Ok(DeleteOutcome::Deleted { generation }) if generation == now
    ));
    assert_eq!(fleet.code("GET", &id).await, 404);
    until_gone_everywhere(&fleet, &id).await;
}

/// Asserts for a while (loop periods) that `id` stays readable.
async fn stays_visible_for(fleet: &DevFleet, id: &str, for_how_long: Duration) {
    let start = Instant::now();
    while start.elapsed() < for_how_long {
        assert_eq!(fleet.code("HEAD", id).await, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
