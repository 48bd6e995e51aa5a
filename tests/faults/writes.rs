//! G1-G3: a PUT answered 2xx is durable; one answered with an error never
//! becomes visible; one that got no answer ends as one or the other.

use std::io::Write as _;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use crate::dev_fleet::{
    all_healthy, all_ready, holders_of, pseudo_random, session_holders, DevFleet, WAIT,
};
use crate::{blob_id, bound, within, within_bound};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_put_survives_f_wiped_nodes_and_a_restart_of_every_process() {
    let fleet = DevFleet::start(&[]);
    let mut blobs = Vec::new();
    for (i, len) in [0usize, 1, 300_000, 2_600_000].into_iter().enumerate() {
        let data = pseudo_random(len, 10 + i as u64);
        blobs.push((fleet.put(&data).await, data));
    }
    // Every process dies at once; two nodes lose their disks.
    let mut fleet = fleet;
    fleet.kill_all();
    for name in ["node-1", "node-4"] {
        std::fs::remove_dir_all(fleet.node_dir(name).join("data")).unwrap();
    }
    let fleet = fleet.restart(&[]);
    for (id, data) in &blobs {
        let back = within("a read after the restart", fleet.get(id)).await;
        assert!(back == *data, "blob {id} after the restart");
    }
    fleet
        .wait_for("healed after the restart", |s| {
            all_ready(s) && all_healthy(s, blobs.len())
        })
        .await;
    for (id, data) in &blobs {
        assert!(fleet.get(id).await == *data, "blob {id} after healing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_answered_with_an_error_never_becomes_visible_and_leaves_no_pieces() {
    let fleet = DevFleet::start(&["--node-timeout-secs", "2", "--staged-ttl-secs", "3"]);
    let status = fleet.wait_for("nodes ready", all_ready).await;
    // f + 1 = 3 nodes stopped: 4 shards answer, 5 are needed.
    let stopped: Vec<i32> = ["node-0", "node-1", "node-2"]
        .iter()
        .map(|n| DevFleet::pid_of(&status, n))
        .collect();
    for pid in &stopped {
        fleet.stop(*pid);
    }
    let data = pseudo_random(2_300_000, 77);
    let id = blob_id(&data);
    let response = within_bound(
        "a PUT with f + 1 nodes stopped",
        bound(Duration::from_secs(2), 2),
        fleet.try_put(&data),
    )
    .await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("not durable"),
        "{body}"
    );
    for pid in &stopped {
        fleet.resume(*pid);
    }
    fleet.wait_for("nodes ready again", all_ready).await;
    // Several loop periods later it is still nowhere: not readable, not
    // listed, not repaired, and no node keeps a piece of it.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        assert_eq!(fleet.code("HEAD", &id).await, 404);
        assert_eq!(fleet.code("GET", &id).await, 404);
        let status = fleet.status().await;
        assert!(status["blobs"].as_array().unwrap().is_empty(), "{status:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        holders_of(&fleet, &id).is_empty(),
        "{:?}",
        holders_of(&fleet, &id)
    );
    assert!(!fleet
        .metrics()
        .await
        .contains("redstuff_repairs_started_total 1"));
    // Once the nodes answer, the same bytes store fine.
    assert_eq!(fleet.put(&data).await, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_off_mid_body_leaves_nothing_on_the_nodes_once_its_retry_window_passed() {
    let fleet = DevFleet::start(&["--cut-upload-kept-secs", "1"]);
    fleet.wait_for("nodes ready", all_ready).await;
    let token = std::fs::read_to_string(fleet.data_dir().join("token")).unwrap();
    let address = fleet.gateway.trim_start_matches("http://").to_string();
    let mut socket = std::net::TcpStream::connect(&address).unwrap();
    write!(
        socket,
        "PUT /v1/blobs HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Length: 4000000\r\n\r\n",
        token.trim()
    )
    .unwrap();
    // Two whole 1 MiB segments and part of a third: the first two are
    // shipped to the nodes under the upload's session as they arrive.
    socket.write_all(&pseudo_random(2_500_000, 5)).unwrap();
    let start = Instant::now();
    while session_holders(&fleet).is_empty() {
        assert!(
            start.elapsed() < WAIT,
            "no pair was shipped before the end of the body"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client goes away with more than a third unsent. The gateway
    // gives the upload up: its session goes from every node once the
    // retry window passed (long before the staged-write TTL of 15 minutes).
    drop(socket);
    let start = Instant::now();
    while !session_holders(&fleet).is_empty() {
        assert!(
            start.elapsed() < WAIT,
            "sessions of the cut upload stay on {:?}",
            session_holders(&fleet)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = fleet.status().await;
    assert!(status["blobs"].as_array().unwrap().is_empty());
    for i in 0..7 {
        let blobs = fleet
            .node_dir(&format!("node-{i}"))
            .join("data")
            .join("blobs");
        assert_eq!(std::fs::read_dir(blobs).unwrap().count(), 0, "node-{i}");
    }
    assert_eq!(
        std::fs::read_dir(fleet.data_dir().join("spool"))
            .unwrap()
            .count(),
        0,
        "nothing of a blob upload is spooled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_gateway_was_killed_while_shipping_leaves_nothing_once_its_sessions_expire() {
    let fleet = DevFleet::start(&["--staged-ttl-secs", "3"]);
    fleet.wait_for("nodes ready", all_ready).await;
    let data = pseudo_random(6_500_000, 32); // seven segments
    let id = blob_id(&data);
    // Two and a half segments, then a body that never ends: the upload is
    // still arriving when the processes die.
    let put = put_never_ending(&fleet, &data[..2_500_000]);
    // Kill everything as soon as a node holds a shipped pair: the blob's
    // metadata cannot be staged anywhere yet.
    let start = Instant::now();
    while session_holders(&fleet).is_empty() {
        assert!(start.elapsed() < WAIT, "the upload never reached a node");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let fleet = fleet.kill_all_and_restart(&["--staged-ttl-secs", "3"]);
    let _ = put.await; // no answer, or a broken one
    fleet.wait_for("nodes ready", all_ready).await;
    // Nothing of it is visible, and the restarted nodes collect the
    // sessions nobody will adopt once they are idle for the TTL.
    let start = Instant::now();
    while !session_holders(&fleet).is_empty() || !holders_of(&fleet, &id).is_empty() {
        assert_eq!(fleet.code("HEAD", &id).await, 404);
        assert!(
            start.elapsed() < WAIT,
            "sessions stay on {:?}, staged pieces on {:?}",
            session_holders(&fleet),
            holders_of(&fleet, &id)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(fleet.code("HEAD", &id).await, 404);
    let status = fleet.status().await;
    assert!(status["blobs"].as_array().unwrap().is_empty(), "{status:#}");
}

/// A PUT through the fleet's gateway that sends `head` and then never
/// ends its body.
fn put_never_ending(
    fleet: &DevFleet,
    head: &[u8],
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let head = bytes::Bytes::copy_from_slice(head);
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) })
        .chain(futures_util::stream::pending());
    let (http, gateway) = (fleet.http.clone(), fleet.gateway.clone());
    tokio::spawn(async move {
        http.put(format!("{gateway}/v1/blobs"))
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
    })
}

/// Waits until the nodes hold `pairs` pairs under upload sessions.
pub(crate) async fn wait_for_session_pairs(fleet: &DevFleet, pairs: usize) {
    let start = Instant::now();
    while session_pairs(fleet) < pairs {
        assert!(
            start.elapsed() < WAIT,
            "{} of {pairs} pairs reached the nodes",
            session_pairs(fleet)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The gateway's count of pairs nodes filed from an earlier attempt.
async fn reused_pairs(fleet: &DevFleet) -> usize {
    let metrics = fleet.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("redstuff_gateway_upload_pairs_reused_total "))
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no count of reused pairs in {metrics}"))
}

/// The pairs filed under upload sessions on every node (shipped, not
/// adopted).
fn session_pairs(fleet: &DevFleet) -> usize {
    let mut pairs = 0;
    for node in 0..64 {
        let uploads = fleet
            .node_dir(&format!("node-{node}"))
            .join("data")
            .join("uploads");
        for session in std::fs::read_dir(uploads).into_iter().flatten().flatten() {
            for segment in std::fs::read_dir(session.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                pairs += std::fs::read_dir(segment.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|f| f.file_name().to_string_lossy().ends_with(".secondary"))
                    .count();
            }
        }
    }
    pairs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_retried_after_its_gateway_was_killed_ships_only_the_pairs_not_filed_before() {
    let fleet = DevFleet::start(&[]);
    fleet.wait_for("nodes ready", all_ready).await;
    let data = pseudo_random(6_500_000, 33); // seven segments of 1 MiB
    let id = blob_id(&data);
    // Four segments and a bit, then a body that never ends: the first four
    // segments are encoded and shipped, the rest never arrives.
    let put = put_never_ending(&fleet, &data[..4_500_000]);
    let shipped = 4 * 7;
    wait_for_session_pairs(&fleet, shipped).await;
    // The gateway dies (and every node with it); the sessions stay.
    let fleet = fleet.kill_all_and_restart(&[]);
    let _ = put.await;
    fleet.wait_for("nodes ready", all_ready).await;
    assert_eq!(session_pairs(&fleet), shipped);

    // The client retries the whole write: the nodes file the pairs they
    // hold, and only the others travel.
    assert_eq!(fleet.put(&data).await, id);
    assert_eq!(
        reused_pairs(&fleet).await,
        shipped,
        "every pair filed before"
    );
    assert!(fleet.get(&id).await == data, "reads back whole");
    fleet.wait_for("healthy", |s| all_healthy(s, 1)).await;
    assert!(fleet.get(&id).await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_retried_after_its_client_was_cut_off_ships_only_the_pairs_not_filed_before() {
    let fleet = DevFleet::start(&[]);
    fleet.wait_for("nodes ready", all_ready).await;
    let token = std::fs::read_to_string(fleet.data_dir().join("token")).unwrap();
    let address = fleet.gateway.trim_start_matches("http://").to_string();
    let data = pseudo_random(4_000_000, 34);
    let mut socket = std::net::TcpStream::connect(&address).unwrap();
    write!(
        socket,
        "PUT /v1/blobs HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Length: 4000000\r\n\r\n",
        token.trim()
    )
    .unwrap();
    // Two whole 1 MiB segments and part of a third, then the connection
    // is lost.
    socket.write_all(&data[..2_500_000]).unwrap();
    let shipped = 2 * 7;
    wait_for_session_pairs(&fleet, shipped).await;
    drop(socket);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(session_pairs(&fleet), shipped, "kept for the retry");

    // The retry (as `redstuff put` makes within seconds) sends the nodes
    // only the third and fourth segments.
    let id = fleet.put(&data).await;
    assert_eq!(id, blob_id(&data));
    assert_eq!(
        reused_pairs(&fleet).await,
        shipped,
        "every pair filed before"
    );
    assert!(fleet.get(&id).await == data);
    fleet.wait_for("healthy", |s| all_healthy(s, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_gateway_was_killed_ends_committed_or_gone_and_never_partial() {
    let fleet = DevFleet::start(&["--staged-ttl-secs", "3"]);
    fleet.wait_for("nodes ready", all_ready).await;
    let data = pseudo_random(6_500_000, 31); // seven segments
    let id = blob_id(&data);
    let put = {
        let (http, gateway, data) = (fleet.http.clone(), fleet.gateway.clone(), data.clone());
        tokio::spawn(async move {
            http.put(format!("{gateway}/v1/blobs"))
                .body(data)
                .send()
                .await
        })
    };
    // Kill everything as soon as the first node holds a piece of it.
    let start = Instant::now();
    while holders_of(&fleet, &id).is_empty() {
        assert!(start.elapsed() < WAIT, "the upload never reached a node");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fleet = fleet.kill_all_and_restart(&["--staged-ttl-secs", "3"]);
    let _ = put.await; // no answer, or a broken one
    assert_eq!(
        std::fs::read_dir(fleet.data_dir().join("spool"))
            .unwrap()
            .count(),
        0,
        "the spool is emptied at start"
    );
    fleet.wait_for("nodes ready", all_ready).await;
    // Either it committed (then it reads back whole and heals), or it
    // never did (then it stays invisible and its pieces go).
    let start = Instant::now();
    loop {
        let code = fleet.code("GET", &id).await;
        if code == 200 {
            assert!(
                fleet.get(&id).await == data,
                "a visible blob is the whole blob"
            );
            fleet.wait_for("healthy", |s| all_healthy(s, 1)).await;
            assert!(fleet.get(&id).await == data);
            return;
        }
        assert_eq!(code, 404);
        if holders_of(&fleet, &id).is_empty() {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "staged pieces stay: {:?}",
            holders_of(&fleet, &id)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = fleet.status().await;
    assert!(status["blobs"].as_array().unwrap().is_empty(), "{status:#}");
    assert_eq!(fleet.code("HEAD", &id).await, 404);
}
