//! The control loop's readings of a fleet of in-process nodes over real
//! HTTP: after a whole reading, readings of only what changed (each node's
//! journal, then every node's entries of the changed blobs) give the view
//! a whole reading gives, through writes, deletes, markers carried, a
//! node restarted and a node down; and the journal routes refuse what
//! they cannot answer.

mod support;

use std::time::Duration;

use prometheus::Registry;
use redstuff::blob_state::now_nanos;
use redstuff::client::{ChangesAnswer, NodeCalls};
use redstuff::control::{self, FleetView, NodeAddress, Observer, Reading};
use redstuff::metrics::FleetMetrics;
use redstuff::store::JournalPosition;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{node_calls, user_http, TestFleet, CLUSTER_TOKEN};

fn addresses(fleet: &TestFleet) -> Vec<NodeAddress> {
    fleet
        .map
        .nodes
        .iter()
        .zip(&fleet.nodes)
        .map(|(entry, node)| NodeAddress {
            name: entry.name.clone(),
            url: node.url.clone(),
            shards: entry.shards.clone(),
        })
        .collect()
}

/// Stores `len` bytes made from `seed` through the gateway, and waits
/// until every node has its commit (the gateway answers after a quorum
/// and commits the rest behind); its blob id.
async fn put(fleet: &TestFleet, seed: u8, len: usize) -> String {
    put_on(fleet, seed, len, usize::MAX).await
}

/// `put`, waiting for the commit on every node but node `down`.
async fn put_on(fleet: &TestFleet, seed: u8, len: usize, down: usize) -> String {
    let body: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
    let answer: Value = user_http()
        .put(format!("{}/v1/blobs", fleet.gateway.url))
        .body(body)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let id: String = answer["id"].as_str().unwrap().to_string();
    let calls = node_calls();
    for (i, node) in fleet.nodes.iter().enumerate() {
        if i == down {
            continue;
        }
        let client = calls.node(&node.url);
        let mut waited = 0;
        while client
            .state(&id.parse().unwrap())
            .await
            .unwrap()
            .state
            .commit
            .is_none()
        {
            waited += 1;
            assert!(waited < 200, "node {} never got the commit", node.url);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    id
}

async fn delete(fleet: &TestFleet, id: &str) {
    user_http()
        .delete(format!("{}/v1/blobs/{id}", fleet.gateway.url))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
}

/// A reading by `observer`, checked against a whole reading made right
/// after (nothing changes the fleet in between).
async fn read(
    observer: &mut Observer,
    calls: &NodeCalls,
    nodes: &[NodeAddress],
    metrics: &FleetMetrics,
) -> (FleetView, Reading) {
    let (view, reading) = observer.observe(calls, nodes, metrics).await;
    let whole = control::observe(calls, nodes).await;
    assert_eq!(
        *view, whole,
        "a {reading:?} reading differs from a whole one"
    );
    (std::sync::Arc::unwrap_or_clone(view), reading)
}

fn changed_blobs(metrics: &FleetMetrics) -> u64 {
    metrics.inventory_changed_blobs.get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_of_only_what_changed_give_the_view_a_whole_reading_gives() {
    let mut fleet = TestFleet::start(4).await;
    let calls = node_calls();
    let metrics = FleetMetrics::new(&Registry::new());
    let mut observer = Observer::new();
    let nodes = addresses(&fleet);
    let kept = put(&fleet, 1, 300_000).await;
    let doomed = put(&fleet, 2, 200_000).await;

    let (view, reading) = read(&mut observer, &calls, &nodes, &metrics).await;
    assert_eq!(reading, Reading::Whole, "the first reading is whole");
    assert_eq!(view.blobs.len(), 2);

    // Nothing changed: a reading of changes, with no blob read again.
    let (_, reading) = read(&mut observer, &calls, &nodes, &metrics).await;
    assert_eq!(reading, Reading::Changes);
    assert_eq!(changed_blobs(&metrics), 0);

    // Writes and a delete: only those blobs are read again.
    let added = put(&fleet, 3, 100_000).await;
    delete(&fleet, &doomed).await;
    let (view, reading) = read(&mut observer, &calls, &nodes, &metrics).await;
    assert_eq!(reading, Reading::Changes);
    assert_eq!(changed_blobs(&metrics), 2);
    assert!(view.blobs.contains_key(&kept) && view.blobs.contains_key(&added));
    assert!(view.deleted.contains_key(&doomed));

    // A tombstone only node 0 got: the others miss it; carried, it is
    // theirs too, and the markers go from the view.
    let id = kept.parse().unwrap();
    calls
        .node(&nodes[0].url)
        .delete(&id, now_nanos())
        .await
        .unwrap();
    let (view, reading) = read(&mut observer, &calls, &nodes, &metrics).await;
    assert_eq!(reading, Reading::Changes);
    assert!(view.deleted.contains_key(&kept));
    assert_eq!(view.markers.len(), 3, "{:?}", view.markers);
    let carried = control::spread_markers(&calls, &view.markers, &nodes, &metrics, 100).await;
    assert_eq!(carried, 3);
    let (view, reading) = read(&mut observer, &calls, &nodes, &metrics).await;
    assert_eq!(reading, Reading::Changes);
    assert!(view.markers.is_empty(), "{:?}", view.markers);
    assert_eq!(changed_blobs(&metrics), 2 + 1 + 1);

    // A node restarted: its journal starts anew, so the next reading is
    // whole, and the one after reads changes again.
    fleet.restart_node(2).await;
    let again = put(&fleet, 4, 50_000).await;
    let (view, reading) = read(&mut observer, &calls, &nodes, &metrics).await;
    assert_eq!(reading, Reading::Whole);
    assert!(view.blobs.contains_key(&again));
    let (_, reading) = read(&mut observer, &calls, &nodes, &metrics).await;
    assert_eq!(reading, Reading::Changes);
    assert_eq!(
        metrics.inventory_reads.with_label_values(&["whole"]).get(),
        2
    );
    assert_eq!(
        metrics
            .inventory_reads
            .with_label_values(&["changes"])
            .get(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_not_answering_stays_out_of_readings_of_changes_until_it_answers_again() {
    let mut fleet = TestFleet::start(4).await;
    let calls = node_calls();
    let metrics = FleetMetrics::new(&Registry::new());
    put(&fleet, 5, 100_000).await;
    let nodes = addresses(&fleet);
    let mut observer = Observer::new();
    let (_, reading) = read(&mut observer, &calls, &nodes, &metrics).await;
    assert_eq!(reading, Reading::Whole);

    // Node 3 stops: its changes cannot be read, so the next reading is
    // whole and says it is silent; the ones after read the others' changes
    // and leave it out, writes made meanwhile included.
    fleet.stop_node(3).await;
    let (view, reading) = read(&mut observer, &calls, &nodes, &metrics).await;
    assert_eq!(reading, Reading::Whole);
    assert_eq!(view.silent, ["media-node-3".to_string()].into());
    let id = put_on(&fleet, 6, 80_000, 3).await;
    let (view, reading) = read(&mut observer, &calls, &nodes, &metrics).await;
    assert_eq!(reading, Reading::Changes);
    assert_eq!(view.silent.len(), 1);
    assert_eq!(view.blobs[&id].complete_shards.len(), 3);

    // Back: a whole reading, then changes again.
    fleet.start_node_again(3).await;
    let (view, reading) = read(&mut observer, &calls, &nodes, &metrics).await;
    assert_eq!(reading, Reading::Whole);
    assert!(view.silent.is_empty());
    let (_, reading) = read(&mut observer, &calls, &nodes, &metrics).await;
    assert_eq!(reading, Reading::Changes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_nodes_another_assignment_or_a_passed_interval_bring_a_whole_reading() {
    let fleet = TestFleet::start(4).await;
    let calls = node_calls();
    let metrics = FleetMetrics::new(&Registry::new());
    put(&fleet, 5, 100_000).await;
    let nodes = addresses(&fleet);

    // Every reading whole when the interval is zero.
    let mut eager = Observer::with_whole_reading_every(Duration::ZERO);
    for _ in 0..2 {
        let (_, reading) = read(&mut eager, &calls, &nodes, &metrics).await;
        assert_eq!(reading, Reading::Whole);
    }
    // Another set of nodes (a node left the fleet): whole.
    let mut observer = Observer::new();
    let (_, reading) = observer.observe(&calls, &nodes, &metrics).await;
    assert_eq!(reading, Reading::Whole);
    let (_, reading) = observer.observe(&calls, &nodes[..3], &metrics).await;
    assert_eq!(reading, Reading::Whole);
    let (_, reading) = observer.observe(&calls, &nodes[..3], &metrics).await;
    assert_eq!(reading, Reading::Changes);
    // The same nodes under another assignment (shard 2 given to node 0,
    // whose ownership file has not caught up): whole, and shard 2 counts
    // for no blob any more.
    let mut moved = nodes[..3].to_vec();
    let shard = *moved[2].shards.first().unwrap();
    moved[2].shards.remove(&shard);
    moved[0].shards.insert(shard);
    let (view, reading) = read(&mut observer, &calls, &moved, &metrics).await;
    assert_eq!(reading, Reading::Whole);
    assert!(view
        .blobs
        .values()
        .all(|blob| !blob.complete_shards.contains(&shard)));
}

#[tokio::test]
async fn the_journal_routes_refuse_what_they_cannot_answer_and_change_nothing() {
    let fleet = TestFleet::start(4).await;
    let node = &fleet.nodes[0];
    let client = node_calls().node(&node.url);
    let id = put(&fleet, 6, 10_000).await;
    let ChangesAnswer::Changes(head) = client.inventory_changes(None).await.unwrap() else {
        panic!("a node answers its journal's head");
    };
    assert!(head.ids.is_empty());
    // Positions it cannot answer: another epoch, or ahead of its head.
    for position in [
        JournalPosition {
            epoch: head.next.epoch + 1,
            seq: head.next.seq,
        },
        JournalPosition {
            epoch: head.next.epoch,
            seq: head.next.seq + 1,
        },
    ] {
        let answer = client.inventory_changes(Some(position)).await.unwrap();
        assert!(
            matches!(&answer, ChangesAnswer::Forgotten(why) if why.contains("whole inventory")),
            "{answer:?}"
        );
    }
    // From the start of the epoch: the blob written.
    let start = JournalPosition {
        epoch: head.next.epoch,
        seq: 0,
    };
    let ChangesAnswer::Changes(changes) = client.inventory_changes(Some(start)).await.unwrap()
    else {
        panic!("changes since the start are known");
    };
    assert_eq!(changes.ids, vec![id.parse().unwrap()]);

    let http = reqwest::Client::new();
    let get = |query: &str| {
        http.get(format!("{}/v1/inventory/changes?{query}", node.url))
            .bearer_auth(CLUSTER_TOKEN)
            .send()
    };
    for query in [
        "epoch=1",
        "since=1",
        "limit=0",
        "limit=10001",
        "epoch=x&since=1",
    ] {
        let response = get(query).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{query}: {body}");
    }
    let entries = |body: Value| {
        http.post(format!("{}/v1/inventory/entries", node.url))
            .bearer_auth(CLUSTER_TOKEN)
            .json(&body)
            .send()
    };
    let too_many = vec![id.clone(); 1001];
    for body in [json!({"blobs": too_many}), json!({"blobs": ["not-an-id"]})] {
        let response = entries(body).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    let unknown = redstuff::codec::BlobId([9; 32]).to_string();
    let answer: Value = entries(json!({"blobs": [id, unknown]}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> = answer["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        vec![id.as_str()],
        "no entry of a blob it holds nothing of"
    );
    // Without the cluster token: 401 on both.
    let anonymous = reqwest::Client::new();
    let response = anonymous
        .get(format!("{}/v1/inventory/changes", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = anonymous
        .post(format!("{}/v1/inventory/entries", node.url))
        .json(&json!({"blobs": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Asking changed nothing.
    let ChangesAnswer::Changes(after) = client.inventory_changes(None).await.unwrap() else {
        panic!("a node answers its journal's head");
    };
    assert_eq!(after.next, head.next);
}
