//! G7: memory is bounded by configuration, never by input. Peers that
//! answer far more than expected, bodies far larger than a sliver, more
//! uploads than the gateway takes, and a full spool: each is refused
//! before it is read, and the process' peak memory does not move.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use futures_util::{stream, StreamExt as _};
use redstuff::auth::TokenSet;
use redstuff::client::{Deadlines, NodeCalls};
use redstuff::codec::format::SLIVER_OVERHEAD;
use redstuff::codec::{BlobEncoder, BlobLayout, EncodingConfig};
use redstuff::fleet::{FleetMap, MapNode};
use redstuff::gateway::upload_slots::WAITING_PER_SLOT;

use crate::dev_fleet::{all_ready, pseudo_random, DevFleet};
use crate::procs::{peak_kib, spawn, token_file};
use crate::within;

const TOKEN: &str = "limits-cluster-token";
const USER: &str = "limits-user-token";
/// What a lying peer sends: far more than any answer can be.
const FLOOD: u64 = 300 << 20;
/// The segment size of these fleets' maps.
const SEGMENT: u64 = 1 << 20;

/// How much a process' peak memory may grow while it refuses floods, from
/// what its configuration lets it hold. Every answer and body is read up
/// to its expected size, so the growth is at most:
///
/// - what each request in flight may legitimately hold (`held`, derived
///   per scenario from n, the segment size and `--max-metadata`),
/// - plus, per connection in flight, hyper's read buffer (it reads at most
///   about 400 KiB ahead of the caller: `CONNECTION_BUFFER`),
/// - plus a fixed allowance for the runtime itself (`RUNTIME_ALLOWANCE`):
///   HTTP pools and task state, and above all the allocator: every tokio
///   worker and blocking thread gets its own mimalloc heap the first time
///   it allocates, a few MiB each. Measured on the scenarios here: 2 to
///   20 MiB.
///
/// A read past the expected size would show as growth near `FLOOD`
/// (300 MiB), an order of magnitude above every bound derived here.
fn growth_bound_kib(held: u64, connections: u64) -> u64 {
    const CONNECTION_BUFFER: u64 = 512 << 10;
    const RUNTIME_ALLOWANCE: u64 = 32 << 20;
    (RUNTIME_ALLOWANCE + held + connections * CONNECTION_BUFFER) >> 10
}

/// The largest serialized primary sliver of a segment of `segment_size`
/// bytes at `n` shards.
fn sliver_cap(n: u16, segment_size: u64) -> u64 {
    let config = EncodingConfig::new(n).unwrap();
    let layout = BlobLayout::new(config, segment_size, segment_size).unwrap();
    let segment = layout.segment(0).unwrap();
    (SLIVER_OVERHEAD
        + segment
            .primary_sliver_len()
            .max(segment.secondary_sliver_len())) as u64
}

/// A body of `len` zero bytes in 1 MiB chunks, with no declared length.
fn flood_body(len: u64) -> Body {
    let chunks = len.div_ceil(1 << 20);
    Body::from_stream(stream::iter(
        (0..chunks).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 1 << 20]))),
    ))
}

/// A fake node: its state claims a committed blob of `metadata`'s layout;
/// it answers metadata truthfully when `honest_metadata`, else with a
/// flood; slivers and symbols always with a flood, half of them declaring
/// their length.
async fn fake_node(metadata: Vec<u8>, size: u64, segments: u32, honest_metadata: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = serde_json::json!({
        "state": {"commit": 5}, "size": size, "segments": segments, "shards": {}
    });
    let router = Router::new()
        .route(
            "/v1/blobs/{id}/state",
            get(move || {
                let state = state.clone();
                async move { axum::Json(state) }
            }),
        )
        .route(
            "/v1/blobs/{id}/metadata",
            get(move || {
                let metadata = metadata.clone();
                async move {
                    if honest_metadata {
                        Body::from(metadata)
                    } else {
                        flood_body(FLOOD)
                    }
                }
            }),
        )
        .route(
            "/v1/blobs/{id}/slivers/{segment}/{shard}/{kind}",
            get(
                |Path((_, _, shard, _)): Path<(String, u32, u16, String)>| async move {
                    if shard % 2 == 0 {
                        flood_body(FLOOD).into_response_with_length(FLOOD)
                    } else {
                        axum::response::IntoResponse::into_response(flood_body(FLOOD))
                    }
                },
            ),
        )
        .route(
            "/v1/blobs/{id}/symbols/{segment}/{shard}/{kind}",
            get(
                |Path((_, _, shard, _)): Path<(String, u32, u16, String)>| async move {
                    if shard % 2 == 0 {
                        flood_body(FLOOD).into_response_with_length(FLOOD)
                    } else {
                        axum::response::IntoResponse::into_response(flood_body(FLOOD))
                    }
                },
            ),
        );
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

trait WithLength {
    fn into_response_with_length(self, len: u64) -> axum::response::Response;
}

impl WithLength for Body {
    fn into_response_with_length(self, len: u64) -> axum::response::Response {
        let mut response = axum::response::Response::new(self);
        response
            .headers_mut()
            .insert("content-length", len.to_string().parse().unwrap());
        response
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_answering_far_more_than_expected_do_not_raise_the_gateways_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(200_000, 1);
    let (metadata, _) = BlobEncoder::new(EncodingConfig::new(4).unwrap(), 1 << 20)
        .unwrap()
        .encode(&data)
        .unwrap();
    let id = metadata.blob_id().to_string();
    let bytes = metadata.to_bytes();
    // Four liars flooding the metadata, then four flooding the slivers.
    for honest_metadata in [false, true] {
        let mut nodes = Vec::new();
        for shard in 0..4u16 {
            let url = fake_node(bytes.clone(), metadata.len(), 1, honest_metadata).await;
            nodes.push(MapNode {
                name: format!("liar-{shard}"),
                url,
                shards: [shard].into(),
            });
        }
        let map = dir.path().join(format!("fleet-{honest_metadata}.json"));
        FleetMap {
            shards: 4,
            segment_size: 1 << 20,
            nodes,
        }
        .write(&map)
        .unwrap();
        let spool = dir.path().join(format!("spool-{honest_metadata}"));
        let (gateway, url) = spawn(&[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--fleet",
            map.to_str().unwrap(),
            "--spool-dir",
            spool.to_str().unwrap(),
            "--cluster-token-file",
            &token_file(dir.path(), "cluster", TOKEN),
            "--user-tokens-file",
            &token_file(dir.path(), "users", USER),
            "--anonymous-reads",
        ]);
        let http = redstuff::http::client();
        // Warm up the gateway's pools with a request that reads nothing big.
        let _ = http.get(format!("{url}/readyz")).send().await;
        let before = peak_kib(gateway.0.id());
        for method in ["HEAD", "GET"] {
            let response = within(
                "a read from flooding peers",
                http.request(method.parse().unwrap(), format!("{url}/v1/blobs/{id}"))
                    .send(),
            )
            .await
            .unwrap();
            // Honest metadata makes HEAD true; no GET gets bytes from liars.
            let may_succeed = method == "HEAD" && honest_metadata;
            assert!(
                may_succeed || !response.status().is_success(),
                "{method} succeeded from liars: {}",
                response.status()
            );
        }
        let metrics = http
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            crate::dev_fleet::blamed(&metrics)
                .keys()
                .any(|n| n.starts_with("liar-")),
            "the floods are counted as invalid answers:\n{metrics}"
        );
        // A HEAD holds the metadata (one segment's); a GET the slivers of
        // every shard at once (hedged) and the decoded segment and its
        // answer; one connection per liar.
        let held = EncodingConfig::new(4).unwrap().metadata_len(1)
            + 4 * sliver_cap(4, SEGMENT)
            + 2 * SEGMENT;
        let bound = growth_bound_kib(held, 4);
        let growth = peak_kib(gateway.0.id()).saturating_sub(before);
        eprintln!("gateway growth {growth} KiB, bound {bound} KiB");
        assert!(
            growth < bound,
            "the gateway's peak memory grew by {growth} KiB (bound {bound} KiB) reading from liars that each sent {} MiB",
            FLOOD >> 20
        );
    }
}

/// A stream of `len` zero bytes for a request body.
fn upload_flood(len: u64) -> reqwest::Body {
    let chunks = len.div_ceil(1 << 20);
    reqwest::Body::wrap_stream(stream::iter(
        (0..chunks).map(|_| Ok::<_, std::io::Error>(vec![0u8; 1 << 20])),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_checks_ownership_and_length_before_it_reads_a_body() {
    let dir = tempfile::tempdir().unwrap();
    let (node, url) = spawn(&[
        "node",
        "--name",
        "n0",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--shards",
        "0",
        "--token-file",
        &token_file(dir.path(), "token", TOKEN),
        "--max-metadata",
        "1MiB",
    ]);
    let data = pseudo_random(100_000, 2);
    let (metadata, segments) = BlobEncoder::new(EncodingConfig::new(4).unwrap(), 1 << 20)
        .unwrap()
        .encode(&data)
        .unwrap();
    let id = metadata.blob_id();
    let calls = NodeCalls::new(TokenSet::single(TOKEN), Deadlines::default());
    calls
        .node(&url)
        .put_metadata(&id, 1, metadata.to_bytes())
        .await
        .unwrap();
    let http = redstuff::http::client();
    let before = peak_kib(node.0.id());
    let put = |path: String, declared: Option<u64>, mib: u64| {
        // A session pair is sized by its primary's header: the flood
        // follows a real one.
        let body = if path.starts_with("/v1/uploads/") {
            let header = bytes::Bytes::from(segments[0].primary[0].header_bytes());
            reqwest::Body::wrap_stream(
                stream::once(async move { Ok::<_, std::io::Error>(header) }).chain(stream::iter(
                    (0..mib).map(|_| Ok(bytes::Bytes::from(vec![0u8; 1 << 20]))),
                )),
            )
        } else {
            upload_flood(mib << 20)
        };
        let mut request = http
            .put(format!("{url}{path}"))
            .bearer_auth(TOKEN)
            .body(body);
        if let Some(len) = declared {
            request = request.header("content-length", len);
        }
        async move {
            match within("a flooding upload", request.send()).await {
                Ok(response) => Ok(response.status().as_u16()),
                Err(e) => Err(format!("{e:#}")),
            }
        }
    };
    // A shard it does not own, a length past the sliver's (or the
    // pair's), a chunked body past it, on the sliver route, the pair route
    // and the session pair route writers use, and metadata that never
    // ends.
    let session = format!("/v1/uploads/{}", redstuff::wire::UploadId::random());
    let root = redstuff::hex::encode(&segments[0].hashes.root());
    let cases = [
        (format!("/v1/blobs/{id}/slivers/0/1/primary"), None, 409),
        (
            format!("/v1/blobs/{id}/slivers/0/0/primary"),
            Some(200 << 20),
            413,
        ),
        (format!("/v1/blobs/{id}/slivers/0/0/primary"), None, 413),
        (format!("/v1/blobs/{id}/pairs/0/1"), None, 409),
        (format!("/v1/blobs/{id}/pairs/0/0"), Some(200 << 20), 413),
        (format!("/v1/blobs/{id}/pairs/0/0"), None, 413),
        (format!("/v1/blobs/{id}/metadata?generation=2"), None, 400),
        (format!("{session}/pairs/0/1?root={root}"), None, 409),
        (
            format!("{session}/pairs/0/0?root={root}"),
            Some(200 << 20),
            413,
        ),
        (format!("{session}/pairs/0/0?root={root}"), None, 413),
    ];
    let refused = cases.len();
    for (path, declared, expected) in cases {
        let answer = put(path.clone(), declared, 200).await;
        assert!(
            answer.is_err() || answer == Ok(expected),
            "{path}: {answer:?}, expected {expected}"
        );
    }
    // A refused body within what the node reads on after a refusal
    // (refused_body::LINGER_BYTES): the sender reads the refusal itself,
    // not a reset connection. (A flood past it may meet the close first.)
    let within_read_on = (redstuff::refused_body::LINGER_BYTES / 3) >> 20;
    for path in [
        format!("/v1/blobs/{id}/slivers/0/1/primary"),
        format!("/v1/blobs/{id}/pairs/0/1"),
        format!("{session}/pairs/0/1?root={root}"),
    ] {
        let answer = put(path.clone(), None, within_read_on).await;
        assert_eq!(answer, Ok(409), "{path}");
    }
    // One request at a time: at most a metadata of `--max-metadata` or
    // one pair (two slivers) of a 1 MiB segment is ever read. But a
    // refused body is read on and discarded after the answer (for up to
    // `LINGER_TIME`), so on a loaded machine every connection above may
    // still be lingering at once, each with its read buffer.
    let lingering = (refused + 3) as u64;
    let bound = growth_bound_kib((1 << 20) + 2 * sliver_cap(4, SEGMENT), lingering);
    let growth = peak_kib(node.0.id()).saturating_sub(before);
    eprintln!("node growth {growth} KiB, bound {bound} KiB");
    assert!(
        growth < bound,
        "the node's peak memory grew by {growth} KiB (bound {bound} KiB) on bodies it had to refuse"
    );
    // And it still serves.
    assert!(calls.node(&url).state(&id).await.unwrap().size == Some(100_000));
}

/// Starts `count` uploads to `url` that send a little and then wait for
/// `held` to turn true.
pub(crate) fn held_uploads(
    http: &reqwest::Client,
    url: &str,
    count: u64,
    held: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>> {
    (0..count)
        .map(|i| {
            let held = held.clone();
            let chunks = stream::unfold(0u8, move |sent| {
                let mut held = held.clone();
                async move {
                    match sent {
                        0 => Some((Ok::<_, std::io::Error>(pseudo_random(64 << 10, 70 + i)), 1)),
                        1 => {
                            let _ = held.wait_for(|go| *go).await;
                            Some((Ok(pseudo_random(64 << 10, 80 + i)), 2))
                        }
                        _ => None,
                    }
                }
            });
            let request = http
                .put(format!("{url}/v1/blobs"))
                .body(reqwest::Body::wrap_stream(chunks))
                .send();
            tokio::spawn(request)
        })
        .collect()
}

/// Waits until the gateway's metrics show `line`.
pub(crate) async fn wait_for_metric(http: &reqwest::Client, url: &str, line: &str) {
    let start = std::time::Instant::now();
    while !gateway_metrics(http, url).await.contains(line) {
        assert!(start.elapsed() < crate::NO_HANG, "never saw {line}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_beyond_the_gateways_bound_wait_in_a_bounded_queue_then_get_503_with_retry_after_and_none_is_spooled(
) {
    let fleet = DevFleet::start(&[]);
    fleet.wait_for("nodes ready", all_ready).await;
    let spool = tempfile::tempdir().unwrap();
    let (_gateway, url) = gateway_process(
        &fleet,
        spool.path(),
        &[
            "--max-uploads",
            "2",
            "--max-spool",
            "4MiB",
            "--upload-wait-secs",
            "5",
        ],
    );
    let http = fleet.http.clone();
    // Two uploads that send a little and then wait hold both slots.
    let (release, held) = tokio::sync::watch::channel(false);
    let slow = held_uploads(&http, &url, 2, &held);
    wait_for_metric(&http, &url, "redstuff_gateway_uploads_in_flight 2").await;
    // More wait for a slot, a bounded number per slot.
    let small = |seed| {
        let request = http
            .put(format!("{url}/v1/blobs"))
            .body(pseudo_random(1000, seed))
            .send();
        tokio::spawn(request)
    };
    let queue = 2 * WAITING_PER_SLOT;
    let waiting: Vec<_> = (0..queue as u64).map(|i| small(100 + i)).collect();
    wait_for_metric(
        &http,
        &url,
        &format!("redstuff_gateway_uploads_waiting {queue}"),
    )
    .await;
    // The next is turned away at once, told when to come back.
    let refused = http
        .put(format!("{url}/v1/blobs"))
        .body(vec![1u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    // Slots given back go to the waiting uploads, which are stored.
    release.send(true).unwrap();
    for upload in slow.into_iter().chain(waiting) {
        let response = within("a held or waiting upload", upload)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    wait_for_metric(&http, &url, "redstuff_gateway_uploads_waiting 0").await;
    // An upload that waits past --upload-wait-secs gets 503 too.
    let (release, held) = tokio::sync::watch::channel(false);
    let slow = held_uploads(&http, &url, 2, &held);
    wait_for_metric(&http, &url, "redstuff_gateway_uploads_in_flight 2").await;
    let waited_out = within("an upload waiting for a slot", small(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(waited_out.status(), 503);
    assert_eq!(waited_out.headers()["retry-after"], "1");
    release.send(true).unwrap();
    for upload in slow {
        let response = within("a held upload", upload).await.unwrap().unwrap();
        assert_eq!(response.status(), 201);
    }
    // Nothing of a blob upload is spooled: a blob larger than the spool
    // bound (which only S3 uploads use) is stored, streamed through.
    let data = pseudo_random(5 << 20, 90);
    let streamed = http
        .put(format!("{url}/v1/blobs"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 201);
    let stored: serde_json::Value = streamed.json().await.unwrap();
    let back = http
        .get(format!("{url}/v1/blobs/{}", stored["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(back[..] == data[..], "the streamed blob reads back");
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_repair_peers_flood_their_symbols_keeps_its_memory_within_its_configured_bound(
) {
    let dir = tempfile::tempdir().unwrap();
    // Three segments: every one asks the three liars for symbols.
    let data = pseudo_random(2_500_000, 3);
    let (metadata, _) = BlobEncoder::new(EncodingConfig::new(4).unwrap(), SEGMENT)
        .unwrap()
        .encode(&data)
        .unwrap();
    let id = metadata.blob_id();
    let segments = metadata.segment_count() as u32;
    let map = dir.path().join("fleet.json");
    let (node, url) = spawn(&[
        "node",
        "--name",
        "node-0",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--shards",
        "0",
        "--token-file",
        &token_file(dir.path(), "token", TOKEN),
        "--fleet",
        map.to_str().unwrap(),
        "--node-timeout-secs",
        "2",
        "--max-metadata",
        "1MiB",
    ]);
    let mut nodes = vec![MapNode {
        name: "node-0".into(),
        url: url.clone(),
        shards: [0].into(),
    }];
    for shard in 1..4u16 {
        nodes.push(MapNode {
            name: format!("liar-{shard}"),
            url: fake_node(metadata.to_bytes(), metadata.len(), segments, true).await,
            shards: [shard].into(),
        });
    }
    FleetMap {
        shards: 4,
        segment_size: SEGMENT,
        nodes,
    }
    .write(&map)
    .unwrap();
    let calls = NodeCalls::new(TokenSet::single(TOKEN), Deadlines::from_secs(2.0));
    let client = calls.node(&url);
    client
        .put_metadata(&id, 7, metadata.to_bytes())
        .await
        .unwrap();
    let before = peak_kib(node.0.id());
    let report = within(
        "a repair from flooding peers",
        client.repair(&redstuff::wire::RepairRequest {
            blob: id.to_string(),
            shards: vec![0],
            generation: 7,
            size: metadata.len(),
            segments,
        }),
    )
    .await
    .unwrap();
    // Nothing valid came: every pair failed, and the liars are blamed.
    assert_eq!(report.rebuilt, 0, "{report:?}");
    assert_eq!(report.failed.len(), segments as usize, "{report:?}");
    let metrics = redstuff::http::client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        crate::dev_fleet::blamed(&metrics)
            .keys()
            .any(|n| n.starts_with("liar-")),
        "the floods are counted as invalid answers:\n{metrics}"
    );
    // A segment's repair asks at most p + 2 peers at once, each answer
    // capped at a symbol with its proof; it holds the segment's slivers
    // (a few times the segment size, bounded by the segment size of the
    // map). The metadata the node keeps is at most `--max-metadata`.
    let config = EncodingConfig::new(4).unwrap();
    let held = (1 << 20) + (config.p() as u64 + 2) * sliver_cap(4, SEGMENT) + 4 * SEGMENT;
    let bound = growth_bound_kib(held, config.p() as u64 + 2);
    let growth = peak_kib(node.0.id()).saturating_sub(before);
    eprintln!("repairing node growth {growth} KiB, bound {bound} KiB");
    assert!(
        growth < bound,
        "the node's peak memory grew by {growth} KiB (bound {bound} KiB) while peers flooded {} MiB symbols",
        FLOOD >> 20
    );
}

/// Starts a gateway process in front of `fleet`, its uploads spooled to
/// `spool`, with `limits` (further arguments).
pub(crate) fn gateway_process(
    fleet: &DevFleet,
    spool: &std::path::Path,
    limits: &[&str],
) -> (crate::procs::Process, String) {
    let data_dir = fleet.data_dir();
    let path = |name: &str| data_dir.join(name).to_str().unwrap().to_string();
    let (fleet_file, cluster_token, user_tokens) =
        (path("fleet.json"), path("cluster-token"), path("token"));
    let mut args = vec![
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--fleet",
        &fleet_file,
        "--cluster-token-file",
        &cluster_token,
        "--user-tokens-file",
        &user_tokens,
        "--spool-dir",
        spool.to_str().unwrap(),
    ];
    args.extend_from_slice(limits);
    spawn(&args)
}

/// The metrics text of the gateway at `url`.
pub(crate) async fn gateway_metrics(http: &reqwest::Client, url: &str) -> String {
    http.get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Puts one blob of `len` bytes through `url` (the gateway warms up: its
/// threads, pools and allocator), then `count` different ones at once, and
/// reads each back; returns how much the concurrent puts raised the
/// gateway's peak memory over the single one's, in KiB.
async fn concurrent_puts_growth_kib(
    http: &reqwest::Client,
    url: &str,
    pid: u32,
    count: u64,
    len: usize,
) -> u64 {
    let warm_up = http
        .put(format!("{url}/v1/blobs"))
        .body(pseudo_random(len, 899))
        .send()
        .await
        .unwrap();
    assert_eq!(warm_up.status(), 201);
    let blobs: Vec<Vec<u8>> = (0..count).map(|i| pseudo_random(len, 900 + i)).collect();
    let before = peak_kib(pid);
    let puts = futures_util::future::join_all(blobs.iter().map(|blob| {
        let request = http
            .put(format!("{url}/v1/blobs"))
            .body(blob.clone())
            .send();
        async move {
            let response = request.await.unwrap();
            assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
            let answer: serde_json::Value = response.json().await.unwrap();
            answer["id"].as_str().unwrap().to_string()
        }
    }));
    let ids = within("the concurrent uploads", puts).await;
    let growth = peak_kib(pid).saturating_sub(before);
    for (id, blob) in ids.iter().zip(&blobs) {
        let got = http
            .get(format!("{url}/v1/blobs/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200);
        assert!(
            got.bytes().await.unwrap() == blob[..],
            "blob {id} reads back"
        );
    }
    growth
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_hold_no_more_memory_than_the_gateways_upload_budget_and_all_complete() {
    let fleet = DevFleet::start(&[]);
    fleet.wait_for("nodes ready", all_ready).await;
    let spool = tempfile::tempdir().unwrap();
    // A budget below one segment's footprint (1 MiB segments at n = 7
    // need about 4 MiB each): every segment takes the whole budget, so the
    // sixteen uploads hold one segment at a time between them, and still
    // all complete.
    let (gateway, url) = gateway_process(
        &fleet,
        spool.path(),
        &["--max-uploads", "16", "--upload-memory", "2MiB"],
    );
    let growth = concurrent_puts_growth_kib(&fleet.http, &url, gateway.0.id(), 16, 6 << 20).await;
    // What the budget lets through: one segment at a time, whose encoding
    // and its buffers take up to about 8 MiB (the budget counts 4: the
    // slivers and leaf hashes). Beside it each upload in flight holds what
    // no budget covers: a hyper buffer (counted per connection), the
    // spool's 256 KiB write buffer and tokio's copy of it, and its share of
    // the allocator's per-thread caches: 1 MiB more each. Without the
    // budget the same uploads raised the peak by 180 MiB.
    let bound = growth_bound_kib((8 << 20) + 16 * (1 << 20), 16);
    eprintln!("16 uploads raised the gateway's peak by {growth} KiB (bound {bound} KiB)");
    assert!(
        growth < bound,
        "the gateway's peak memory grew by {growth} KiB during 16 uploads (bound {bound} KiB)"
    );
    let metrics = gateway_metrics(&fleet.http, &url).await;
    assert!(
        metrics.contains("redstuff_gateway_upload_memory_reserved_bytes 0")
            && metrics.contains("redstuff_gateway_upload_memory_budget_bytes 2097152"),
        "every reservation is given back once the uploads end:\n{metrics}"
    );
}
