//! G5: a node that answers, but never finishes answering, holds nobody.
//! A node that trickles every answer a byte at a time is cut at the call
//! deadline (a download at the call deadline plus its size at the slowest
//! transfer rate), so writes, reads and deletes beside it finish within a
//! bound derived from `--node-timeout-secs`; a node answering an endless
//! or circular chain of inventory pages is cut by page count and by the
//! inventory deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Query;
use axum::routing::get;
use axum::Router;
use redstuff::auth::TokenSet;
use redstuff::client::{Deadlines, NodeCallError, NodeCalls, MIN_INVENTORY_RATE};
use redstuff::codec::{BlobId, SliverKind};
use redstuff::control::NodeAddress;
use redstuff::wire::{InventoryBlob, InventoryPage};

use crate::dev_fleet::pseudo_random;
use crate::procs::{trickler, user_http, Cluster, CLUSTER_TOKEN};
use crate::{blob_id, bound, within_bound};

/// How long the trickling node would go on: far past every bound here.
const TRICKLE: Duration = Duration::from_secs(120);

/// Asserts `call` ends within `limit` and returns what it returned.
async fn timed<T>(what: &str, limit: Duration, call: impl std::future::Future<Output = T>) -> T {
    let start = Instant::now();
    let answer = within_bound(what, limit, call).await;
    eprintln!("{what}: {:?}", start.elapsed());
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_to_a_node_that_trickles_its_answer_is_cut_at_its_deadline() {
    let url = trickler(TRICKLE).await;
    let deadlines = Deadlines::from_secs(1.0);
    let calls = NodeCalls::new(TokenSet::single(CLUSTER_TOKEN), deadlines);
    let node = calls.node(&url);
    let id: BlobId = blob_id(b"trickled").parse().unwrap();
    // Small calls: the whole exchange within the call deadline.
    let small = bound(deadlines.call, 1);
    let answer = timed("the state", small, node.state(&id)).await;
    assert!(
        matches!(answer, Err(NodeCallError::TimedOut { .. })),
        "{answer:?}"
    );
    let answer = timed("an inventory page", small, node.inventory(None, 10)).await;
    assert!(
        matches!(answer, Err(NodeCallError::TimedOut { .. })),
        "{answer:?}"
    );
    // Downloads: the call deadline plus their most size at the slowest
    // transfer rate.
    for (what, limit) in [
        ("the metadata", 4096u64),
        ("a symbol", 20_000),
        ("a sliver", 500_000),
    ] {
        let answer = timed(what, bound(deadlines.transfer(limit), 1), async {
            match what {
                "the metadata" => node.metadata(&id, limit).await,
                "a symbol" => node.symbol(&id, 0, 1, SliverKind::Primary, 2, limit).await,
                _ => node.sliver(&id, 0, 1, SliverKind::Primary, limit).await,
            }
        })
        .await;
        assert!(
            matches!(answer, Err(NodeCallError::TimedOut { .. })),
            "{what}: {answer:?}"
        );
    }
    // An upload's answer, read after its last byte, whole within the call
    // deadline: one that never ends does not count as taken.
    let answer = timed(
        "a metadata upload",
        small,
        node.put_metadata(&id, 1, vec![0; 1000]),
    )
    .await;
    assert!(
        matches!(answer, Err(NodeCallError::TimedOut { .. })),
        "{answer:?}"
    );
    // A repair: a whole line (a segment done) within the repair stall
    // time, however many bytes trickle in without one.
    let repairs = Deadlines {
        repair_stall: Duration::from_secs(2),
        ..deadlines
    };
    let repairing = NodeCalls::new(TokenSet::single(CLUSTER_TOKEN), repairs).node(&url);
    let request = redstuff::wire::RepairRequest {
        blob: id.to_string(),
        shards: vec![0],
        generation: 1,
        size: 1,
        segments: 1,
    };
    let answer = timed(
        "a repair",
        bound(repairs.repair_stall, 1),
        repairing.repair(&request),
    )
    .await;
    assert!(
        matches!(answer, Err(NodeCallError::TimedOut { .. })),
        "{answer:?}"
    );
    // Commits and deletes read no success body.
    timed("a commit", small, node.commit(&id, 1)).await.unwrap();
    timed("a delete", small, node.delete(&id, 2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_gets_and_deletes_beside_a_trickling_node_finish_within_a_bound_from_the_node_deadline(
) {
    // n = 4, f = 1: node-3's place in the gateway's map is taken by a
    // node that trickles every answer.
    let cluster = Cluster::start(4, "1");
    let deadline = Duration::from_secs(1);
    let mut urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
    urls[3] = trickler(TRICKLE).await;
    let map = cluster.write_map("trickling.json", &urls);
    let (_gateway, gateway) = cluster.gateway(&map, &[]);
    let http = user_http();
    let data = pseudo_random(1_500_000, 21); // two segments
                                             // A write waits out the trickler's deadline at most twice (its state
                                             // and its staging answer), then sends it nothing more.
    let response = timed(
        "a PUT",
        bound(deadline, 2),
        http.put(format!("{gateway}/v1/blobs"))
            .body(data.clone())
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    let stored: serde_json::Value = response.json().await.unwrap();
    assert_eq!(stored["shards_missing"], serde_json::json!([3]), "{stored}");
    let id = stored["id"].as_str().unwrap().to_string();
    // A read hedges a slow sliver after the client's fixed 2 s, once per
    // read (the slow node is asked last afterwards), and waits out at most
    // one deadline for the markers and one for the metadata.
    let hedge = Duration::from_secs(2);
    let read = timed("a GET", bound(deadline, 2) + hedge, async {
        let response = http.get(format!("{gateway}/v1/blobs/{id}")).send().await?;
        assert_eq!(response.status(), 200);
        response.bytes().await
    })
    .await
    .unwrap();
    assert!(read == data, "the blob read back beside the trickler");
    let head = timed(
        "a HEAD",
        bound(deadline, 2),
        http.head(format!("{gateway}/v1/blobs/{id}")).send(),
    )
    .await
    .unwrap();
    assert_eq!(head.status(), 200);
    let delete = timed(
        "a DELETE",
        bound(deadline, 2),
        http.delete(format!("{gateway}/v1/blobs/{id}")).send(),
    )
    .await
    .unwrap();
    assert_eq!(delete.status(), 204);
    let gone = timed(
        "a GET after the delete",
        bound(deadline, 2),
        http.get(format!("{gateway}/v1/blobs/{id}")).send(),
    )
    .await
    .unwrap();
    assert_eq!(gone.status(), 404);
}

/// How a lying inventory answers.
#[derive(Clone, Copy)]
enum Chain {
    /// Full pages of new ids, each naming a next page, at once.
    Endless,
    /// The same, each page a little under the call deadline.
    Slow(Duration),
    /// A page whose `next` leads back to itself.
    Circular,
}

fn id_of(counter: u64) -> String {
    let mut bytes = [0u8; 32];
    bytes[24..].copy_from_slice(&counter.to_be_bytes());
    BlobId(bytes).to_string()
}

/// Serves a node whose inventory lies as `chain` says; returns its URL and
/// the count of pages it served.
async fn lying_inventory(chain: Chain) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let pages = Arc::new(AtomicUsize::new(0));
    let served = pages.clone();
    let router = Router::new().route(
        "/v1/inventory",
        get(move |Query(query): Query<HashMap<String, String>>| {
            let served = served.clone();
            async move {
                served.fetch_add(1, Ordering::SeqCst);
                let after: u64 = match query.get("after") {
                    Some(after) => {
                        let id: BlobId = after.parse().unwrap();
                        u64::from_be_bytes(id.0[24..].try_into().unwrap())
                    }
                    None => 0,
                };
                if let Chain::Slow(delay) = chain {
                    tokio::time::sleep(delay).await;
                }
                let first = match chain {
                    Chain::Circular => 1,
                    _ => after + 1,
                };
                let blobs: Vec<InventoryBlob> = (first..first + 1000)
                    .map(|i| InventoryBlob {
                        id: id_of(i),
                        size: 1,
                        segments: 1,
                        shards: Default::default(),
                        state: Default::default(),
                    })
                    .collect();
                let next = Some(blobs.last().unwrap().id.clone());
                axum::Json(InventoryPage {
                    node: "liar".into(),
                    shards: vec![0],
                    stored_bytes: 0,
                    blobs,
                    next,
                })
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, pages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answering_an_endless_chain_of_inventory_pages_is_cut_by_page_count_and_its_time_budget(
) {
    let deadlines = Deadlines::from_secs(1.0);
    let mut calls = NodeCalls::new(TokenSet::single(CLUSTER_TOKEN), deadlines);
    // Fast pages of new ids: refused once past the most blobs allowed, so
    // at most that many pages were read and held.
    calls.max_inventory_blobs = 20_000;
    let (url, pages) = lying_inventory(Chain::Endless).await;
    let answer = timed(
        "an endless inventory",
        bound(deadlines.inventory, 1),
        calls.node(&url).full_inventory(),
    )
    .await;
    assert!(
        matches!(answer, Err(NodeCallError::TooLarge { limit: 20_000, .. })),
        "{answer:?}"
    );
    assert!(pages.load(Ordering::SeqCst) <= 20, "{pages:?} pages read");

    // A page that leads back to itself: refused on the second page.
    let (url, pages) = lying_inventory(Chain::Circular).await;
    let answer = timed(
        "a circular inventory",
        bound(deadlines.call, 2),
        calls.node(&url).full_inventory(),
    )
    .await;
    assert!(
        matches!(answer, Err(NodeCallError::Garbled { .. })),
        "{answer:?}"
    );
    assert_eq!(pages.load(Ordering::SeqCst), 2);

    // Slow pages, each within the call deadline, listing blobs slower
    // than the least inventory rate: cut at its inventory budget, while the
    // control loop reads a real node beside it and sees it whole.
    calls.max_inventory_blobs = usize::MAX;
    let page_time = deadlines.call * 9 / 10;
    let (url, pages) = lying_inventory(Chain::Slow(page_time)).await;
    let cluster = Cluster::start(1, "1");
    let nodes = [
        NodeAddress {
            name: "node-0".into(),
            url: cluster.nodes[0].url.clone(),
            shards: [0].into(),
        },
        NodeAddress {
            name: "liar".into(),
            url,
            shards: Default::default(),
        },
    ];
    // 1,000 blobs per page, a page every 0.9 deadlines: the budget runs
    // out once inventory + t * rate / MIN_INVENTORY_RATE < t.
    let rate = 1000.0 / page_time.as_secs_f64();
    let cut_at = deadlines.inventory.as_secs_f64() / (1.0 - rate / MIN_INVENTORY_RATE as f64);
    let start = Instant::now();
    let view = timed(
        "the loop's view",
        bound(Duration::from_secs_f64(cut_at) + deadlines.call, 1),
        redstuff::control::observe(&calls, &nodes),
    )
    .await;
    let served = pages.load(Ordering::SeqCst);
    assert!(
        start.elapsed() >= deadlines.inventory_budget((served - 1) * 1000),
        "the liar was cut before its budget: {:?} after {served} pages",
        start.elapsed()
    );
    assert_eq!(
        view.ready,
        ["node-0".to_string()].into(),
        "the real node is read"
    );
    assert_eq!(
        view.silent,
        ["liar".to_string()].into(),
        "the liar stopped answering"
    );
    let most = (cut_at / page_time.as_secs_f64()).ceil() as usize + 1;
    assert!(served <= most, "{served} pages read, at most {most}");
}

/// A node whose repair answer says the same segment is done again and
/// again, each line inside the repair stall time, would hold its repair
/// (and one of the loop's repair slots) for ever: the second line for a
/// segment already done ends the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_answer_repeating_a_segment_done_is_cut_at_the_repeat() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let lines = Arc::new(AtomicUsize::new(0));
    let sent = lines.clone();
    let router = Router::new().route(
        "/v1/repair",
        axum::routing::post(move || {
            let sent = sent.clone();
            async move {
                let body = futures_util::stream::unfold((), move |()| {
                    let sent = sent.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        sent.fetch_add(1, Ordering::SeqCst);
                        Some((
                            Ok::<_, std::io::Error>(bytes::Bytes::from_static(
                                b"{\"segment\":0}\n",
                            )),
                            (),
                        ))
                    }
                });
                axum::body::Body::from_stream(body)
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    let deadlines = Deadlines {
        repair_stall: Duration::from_secs(2),
        ..Deadlines::from_secs(1.0)
    };
    let node = NodeCalls::new(TokenSet::single(CLUSTER_TOKEN), deadlines).node(&url);
    let request = redstuff::wire::RepairRequest {
        blob: BlobId([3; 32]).to_string(),
        shards: vec![0],
        generation: 1,
        size: 1,
        segments: 2,
    };
    let answer = within_bound(
        "a repeating repair",
        bound(deadlines.repair_stall, 2),
        node.repair(&request),
    )
    .await;
    assert!(
        matches!(&answer, Err(NodeCallError::Garbled { reason, .. }) if reason.contains("segment 0 done again")),
        "{answer:?}"
    );
    assert!(lines.load(Ordering::SeqCst) <= 4, "cut at the second line");
}
