//! A storage node in-process on a temp dir, over real HTTP: what it keeps,
//! what it refuses (and that a refusal changes nothing), its markers
//! (staged, committed, deleted), upload sessions and their adoption, the
//! cluster token, repair from peers that lie, and the control loop
//! reading several nodes' inventories of many pages.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use redstuff::auth::TokenSet;
use redstuff::client::{Deadlines, NodeCalls, NodeClient};
use redstuff::codec::merkle::{self, Hash, MerkleTree};
use redstuff::codec::{
    BlobEncoder, BlobId, BlobMetadata, EncodedSegment, EncodingConfig, RecoverySymbol, Secondary,
    ShardRotation, SliverKind,
};
use redstuff::fleet::{FleetMap, MapNode};
use redstuff::node::{Lie, Node, NodeConfig, ShardSource, ShardsFile};
use redstuff::wire::{RepairRequest, UploadId};
use reqwest::StatusCode;

const TOKEN: &str = "node-api-test-token";
/// Every sliver and symbol of these tests is far below this.
const LIMIT: u64 = 64 << 20;

struct TestNode {
    client: NodeClient,
    http: reqwest::Client,
    url: String,
    dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestNode {
    /// What the node's /metrics serves now.
    async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn calls() -> NodeCalls {
    NodeCalls::new(TokenSet::single(TOKEN), Deadlines::default())
}

/// An HTTP client sending the cluster token.
fn authorized_http() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    redstuff::http::client_builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

#[derive(Default)]
struct Setup<'a> {
    shards: &'a [u16],
    /// Ownership from this file instead of `shards`.
    shards_file: Option<PathBuf>,
    capacity: Option<u64>,
    lie: Option<Lie>,
    fleet: Option<PathBuf>,
    listener: Option<std::net::TcpListener>,
    /// Bytes of parsed metadata the node keeps (the default otherwise).
    metadata_cache: Option<u64>,
    /// The staged-write TTL (the default otherwise).
    staged_ttl: Option<std::time::Duration>,
}

async fn start(name: &str, setup: Setup<'_>) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let defaults = NodeConfig::new(
        name,
        dir.path().to_path_buf(),
        ShardSource::Fixed(BTreeSet::new()),
        TokenSet::single(TOKEN),
    );
    let config = NodeConfig {
        capacity: setup.capacity,
        metadata_cache_bytes: setup
            .metadata_cache
            .unwrap_or(defaults.metadata_cache_bytes),
        lie: setup.lie,
        fleet: setup.fleet,
        housekeeping: redstuff::store::Housekeeping {
            staged_ttl: setup.staged_ttl.unwrap_or(defaults.housekeeping.staged_ttl),
            ..defaults.housekeeping
        },
        ..NodeConfig::new(
            name,
            dir.path().to_path_buf(),
            match setup.shards_file {
                Some(path) => ShardSource::File(path),
                None => ShardSource::Fixed(setup.shards.iter().copied().collect::<BTreeSet<_>>()),
            },
            TokenSet::single(TOKEN),
        )
    };
    let addr = match &setup.listener {
        Some(l) => l.local_addr().unwrap(),
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    drop(setup.listener);
    let node = Node::bind(config, addr).await.unwrap();
    let url = format!("http://{}", node.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(node.serve(async move {
        let _ = rx.await;
    }));
    TestNode {
        client: calls().node(&url),
        http: authorized_http(),
        url,
        dir,
        shutdown: Some(tx),
    }
}

async fn start_node(name: &str, shards: &[u16], capacity: Option<u64>) -> TestNode {
    start(
        name,
        Setup {
            shards,
            capacity,
            ..Setup::default()
        },
    )
    .await
}

fn blob(n: u16, len: usize, segment_size: u64) -> (Vec<u8>, BlobMetadata, Vec<EncodedSegment>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let (metadata, segments) = BlobEncoder::new(EncodingConfig::new(n).unwrap(), segment_size)
        .unwrap()
        .encode(&data)
        .unwrap();
    (data, metadata, segments)
}

/// The primary and secondary slivers shard `shard` holds in a segment.
fn pair_for_shard(
    metadata: &BlobMetadata,
    segment: &EncodedSegment,
    shard: u16,
) -> (Vec<u8>, Vec<u8>) {
    let pair = metadata
        .rotation(segment.index)
        .unwrap()
        .pair_of_shard(shard.into());
    (
        segment.primary[pair].to_bytes(),
        segment.secondary[pair].to_bytes(),
    )
}

fn status_of<T: std::fmt::Debug>(result: Result<T, redstuff::client::NodeCallError>) -> StatusCode {
    result.unwrap_err().status().expect("the node answered")
}

/// Stages `metadata` at generation 10 and stores every pair of `shard`.
async fn store_shard(
    node: &TestNode,
    metadata: &BlobMetadata,
    segments: &[EncodedSegment],
    shard: u16,
) {
    let id = metadata.blob_id();
    node.client
        .put_metadata(&id, 10, metadata.to_bytes())
        .await
        .unwrap();
    for segment in segments {
        let (p, s) = pair_for_shard(metadata, segment, shard);
        node.client
            .put_sliver(&id, segment.index, shard, SliverKind::Primary, p)
            .await
            .unwrap();
        node.client
            .put_sliver(&id, segment.index, shard, SliverKind::Secondary, s)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_node_keeps_verified_slivers_of_its_shards_and_their_markers_and_serves_them_back() {
    let node = start_node("node-a", &[1, 2], None).await;
    let (_, metadata, segments) = blob(4, 5000, 2048);
    let id = metadata.blob_id();
    store_shard(&node, &metadata, &segments, 1).await;
    for segment in &segments {
        let (primary, _) = pair_for_shard(&metadata, segment, 1);
        let back = node
            .client
            .sliver(&id, segment.index, 1, SliverKind::Primary, LIMIT)
            .await
            .unwrap();
        assert_eq!(back, Some(primary));
    }
    assert_eq!(
        node.client.metadata(&id, LIMIT).await.unwrap(),
        Some(metadata.to_bytes())
    );
    let state = node.client.state(&id).await.unwrap();
    assert_eq!((state.state.staged, state.state.commit), (Some(10), None));
    assert_eq!((state.size, state.segments), (Some(5000), Some(3)));
    node.client.commit(&id, 10).await.unwrap();
    let inventory = node.client.full_inventory().await.unwrap();
    assert_eq!(inventory.node, "node-a");
    assert_eq!(inventory.shards, vec![1, 2]);
    assert_eq!(inventory.blobs.len(), 1);
    assert_eq!(inventory.blobs[0].segments, 3);
    assert_eq!(inventory.blobs[0].size, 5000);
    assert_eq!(inventory.blobs[0].shards.get(&1), Some(&3));
    assert_eq!(inventory.blobs[0].state.commit, Some(10));

    // A recovery symbol from this node verifies against the metadata.
    let symbol = node
        .client
        .symbol(&id, 0, 1, SliverKind::Secondary, 3, LIMIT)
        .await
        .unwrap()
        .unwrap();
    let symbol = RecoverySymbol::<Secondary>::from_bytes(&symbol).unwrap();
    symbol.verify(&metadata).unwrap();

    let text = node.metrics_text().await;
    for name in [
        "redstuff_node_stored_bytes",
        "redstuff_node_slivers{kind=\"primary\"} 3",
        "redstuff_node_requests_total",
        "redstuff_node_request_duration_seconds_bucket",
        "redstuff_node_recovery_symbols_served_total 1",
        "redstuff_node_metadata_cache_bytes",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }

    // A delete leaves a tombstone and nothing else; it is idempotent.
    node.client.delete(&id, 20).await.unwrap();
    node.client.delete(&id, 20).await.unwrap();
    assert_eq!(node.client.metadata(&id, LIMIT).await.unwrap(), None);
    assert_eq!(
        node.client
            .sliver(&id, 0, 1, SliverKind::Primary, LIMIT)
            .await
            .unwrap(),
        None
    );
    let inventory = node.client.full_inventory().await.unwrap();
    assert_eq!(inventory.blobs[0].state.tombstone, Some(20));
    assert!(inventory.blobs[0].shards.is_empty());
    // A write older than the delete is refused; a newer one is taken.
    let r = node.client.put_metadata(&id, 15, metadata.to_bytes()).await;
    assert_eq!(status_of(r), StatusCode::GONE);
    assert_eq!(
        status_of(node.client.commit(&id, 20).await),
        StatusCode::GONE
    );
    node.client
        .put_metadata(&id, 30, metadata.to_bytes())
        .await
        .unwrap();
    node.client.commit(&id, 30).await.unwrap();
}

/// A blob id made from a number, in the order of the numbers.
fn numbered_id(n: u64) -> BlobId {
    let mut bytes = [7u8; 32];
    bytes[24..].copy_from_slice(&n.to_be_bytes());
    BlobId(bytes)
}

/// Deletes the blobs numbered `range` on `node` (a tombstone each).
async fn tombstones(node: &TestNode, range: std::ops::Range<u64>) {
    use futures_util::StreamExt;
    futures_util::stream::iter(range)
        .for_each_concurrent(16, |n| async move {
            node.client.delete(&numbered_id(n), 5).await.unwrap();
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_loop_merges_inventories_of_many_pages_into_one_view() {
    let a = start_node("node-a", &[0], None).await;
    let b = start_node("node-b", &[1], None).await;
    // Pages of 1,000 that end at different blobs on each node.
    tombstones(&a, 0..2500).await;
    tombstones(&b, 1000..3500).await;
    let nodes = [("node-a", &a, 0), ("node-b", &b, 1)].map(|(name, node, shard)| {
        redstuff::control::NodeAddress {
            name: name.into(),
            url: node.url.clone(),
            shards: [shard].into(),
        }
    });
    let view = redstuff::control::observe(&calls(), &nodes).await;
    assert_eq!(view.ready.len(), 2);
    assert_eq!(view.deleted.len(), 3500);
    assert!(view.deleted.values().all(|generation| *generation == 5));
    // Each node misses the tombstones only the other has.
    let missing = |node: &str| -> Vec<String> {
        view.markers
            .iter()
            .filter(|m| m.node == node)
            .map(|m| m.blob.clone())
            .collect()
    };
    let ids = |range: std::ops::Range<u64>| -> BTreeSet<String> {
        range.map(|n| numbered_id(n).to_string()).collect()
    };
    assert_eq!(
        missing("node-a").into_iter().collect::<BTreeSet<_>>(),
        ids(2500..3500)
    );
    assert_eq!(
        missing("node-b").into_iter().collect::<BTreeSet<_>>(),
        ids(0..1000)
    );
}

/// The node's `redstuff_node_metadata_cache_bytes`.
async fn metadata_cache_bytes(node: &TestNode) -> u64 {
    let text = node.metrics_text().await;
    let line = text
        .lines()
        .find(|l| l.starts_with("redstuff_node_metadata_cache_bytes "))
        .expect("the gauge is served");
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn listing_the_inventory_leaves_the_metadata_cache_as_reads_left_it() {
    let (_, small, small_segments) = blob(4, 1000, 2048);
    let (_, large, large_segments) = blob(4, 5000, 2048);
    // Room for one blob's parsed metadata at a time.
    let room = large.layout().metadata_len() + 256;
    let node = start(
        "node-a",
        Setup {
            shards: &[1],
            metadata_cache: Some(room),
            ..Setup::default()
        },
    )
    .await;
    store_shard(&node, &small, &small_segments, 1).await;
    store_shard(&node, &large, &large_segments, 1).await;
    // A read brings the blob listed first into the cache; one listed after
    // it would push that out again if listing went through the cache.
    let first = [&small, &large]
        .into_iter()
        .min_by_key(|m| m.blob_id())
        .unwrap();
    node.client
        .symbol(&first.blob_id(), 0, 1, SliverKind::Secondary, 3, LIMIT)
        .await
        .unwrap()
        .expect("stored");
    let kept = first.layout().metadata_len() + 256;
    assert_eq!(
        metadata_cache_bytes(&node).await,
        kept,
        "reads keep the one read"
    );

    for _ in 0..2 {
        let inventory = node.client.full_inventory().await.unwrap();
        let mut listed: Vec<(u64, u32)> = inventory
            .blobs
            .iter()
            .map(|b| (b.size, b.segments))
            .collect();
        listed.sort();
        assert_eq!(listed, [(1000, 1), (5000, 3)]);
        assert_eq!(
            metadata_cache_bytes(&node).await,
            kept,
            "listing did not push it out"
        );
    }
}

#[tokio::test]
async fn every_route_but_probes_and_metrics_needs_the_cluster_token() {
    let node = start_node("node-t", &[0], None).await;
    let (_, metadata, _) = blob(4, 100, 1 << 20);
    let id = metadata.blob_id();
    let anonymous = redstuff::http::client();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = anonymous
            .get(format!("{}{path}", node.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let wrong =
        NodeCalls::new(TokenSet::single("not-the-token"), Deadlines::default()).node(&node.url);
    let r = wrong.put_metadata(&id, 1, metadata.to_bytes()).await;
    assert_eq!(status_of(r), StatusCode::UNAUTHORIZED);
    assert_eq!(
        status_of(wrong.delete(&id, 5).await),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_of(wrong.full_inventory().await),
        StatusCode::UNAUTHORIZED
    );
    let response = anonymous
        .delete(format!("{}/v1/blobs/{id}?generation=5", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key("www-authenticate"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("cluster token"),
        "{body}"
    );
    let response = anonymous
        .post(format!("{}/v1/repair", node.url))
        .json(&serde_json::json!({"blob": id.to_string(), "shards": [0], "generation": 1, "size": 1, "segments": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Nothing was stored or deleted.
    assert!(node.client.full_inventory().await.unwrap().blobs.is_empty());
}

/// What a writer ships for `shard`'s pair of a segment under a session:
/// the segment root, the pair's proof under it, and the pair's bytes.
fn session_pair(segment: &EncodedSegment, shard: u16) -> (Hash, Vec<Hash>, Vec<u8>) {
    let n = segment.primary.len();
    let root = segment.hashes.root();
    let pair = ShardRotation::new(&root, n).pair_of_shard(shard.into());
    let tree = MerkleTree::new(
        (0..n)
            .map(|i| merkle::pair_hash(segment.hashes.primary(i), segment.hashes.secondary(i)))
            .collect(),
    );
    assert_eq!(
        tree.root(),
        root,
        "the segment root is the tree of pair hashes"
    );
    let body = [
        segment.primary[pair].to_bytes(),
        segment.secondary[pair].to_bytes(),
    ]
    .concat();
    (root, tree.proof(pair).unwrap(), body)
}

#[tokio::test]
async fn a_session_pair_larger_than_any_pair_of_the_fleet_is_refused_before_it_is_read() {
    let map_dir = tempfile::tempdir().unwrap();
    let map_path = map_dir.path().join("fleet.json");
    let segment_size = 64 << 10;
    FleetMap {
        shards: 4,
        segment_size,
        nodes: vec![],
    }
    .write(&map_path)
    .unwrap();
    let node = start(
        "node-bounded",
        Setup {
            shards: &[0],
            fleet: Some(map_path),
            ..Setup::default()
        },
    )
    .await;
    let (_, _, segments) = blob(4, 150_000, segment_size);
    let (root, proof, body) = session_pair(&segments[0], 0);
    // The primary's header claims the largest symbol any segment can have
    // (a 1 GiB one): the node would reserve hundreds of MiB for the pair.
    let mut inflated = body.clone();
    let largest = redstuff::codec::format::max_symbol_size(&EncodingConfig::new(4).unwrap());
    let at = redstuff::codec::format::SLIVER_OVERHEAD - 4;
    inflated[at..at + 4].copy_from_slice(&(largest as u32).to_le_bytes());
    let upload = UploadId::random();
    let refused = node
        .client
        .put_upload_pair(&upload, (0, &root), 0, &proof, vec![inflated.into()])
        .await;
    let error = refused.unwrap_err();
    assert_eq!(
        error.status(),
        Some(StatusCode::PAYLOAD_TOO_LARGE),
        "{error}"
    );
    assert!(error.to_string().contains("at most"), "{error}");
    // A pair of the fleet's own size is taken.
    node.client
        .put_upload_pair(&upload, (0, &root), 0, &proof, vec![body.into()])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_session_pair_is_verified_against_its_segment_root_and_stays_invisible_until_metadata_adopts_it(
) {
    let node = start_node("node-session", &[0, 1], None).await;
    let (_, metadata, segments) = blob(4, 150_000, 1024 * 64);
    assert_eq!(segments.len(), 3);
    let id = metadata.blob_id();
    let upload = UploadId::random();
    let put = |segment: u32, root: Hash, shard: u16, proof: Vec<Hash>, body: Vec<u8>| {
        let client = node.client.clone();
        async move {
            client
                .put_upload_pair(&upload, (segment, &root), shard, &proof, vec![body.into()])
                .await
        }
    };
    let (root, proof, body) = session_pair(&segments[0], 0);
    let (other_root, other_proof, other_body) = session_pair(&segments[1], 0);
    let (_, _, shard_1_body) = session_pair(&segments[0], 1);
    let mut flipped = body.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let mut long = body.clone();
    long.push(0);
    let unowned = (0..4u16)
        .find(|&s| s > 1)
        .expect("a shard the node does not own");
    for (what, attempt, status) in [
        (
            "a secondary that fails its hash",
            put(0, root, 0, proof.clone(), flipped),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "another pair's proof",
            put(0, root, 0, other_proof.clone(), body.clone()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "the pair of another shard",
            put(0, root, 0, proof.clone(), shard_1_body),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "another segment's root",
            put(0, other_root, 0, other_proof.clone(), body.clone()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "a pair of segment 1 sent as segment 0",
            put(0, other_root, 0, other_proof.clone(), other_body.clone()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "a proof one hash short",
            put(0, root, 0, proof[1..].to_vec(), body.clone()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "one byte too many",
            put(0, root, 0, proof.clone(), long),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "one byte short",
            put(0, root, 0, proof.clone(), body[..body.len() - 1].to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a shard the node does not own",
            put(0, root, unowned, proof.clone(), body.clone()),
            StatusCode::CONFLICT,
        ),
    ] {
        assert_eq!(status_of(attempt.await), status, "{what}");
    }
    let used = |node: &TestNode| {
        let dir = node.dir.path().join("uploads");
        walk_bytes(&dir)
    };
    assert_eq!(used(&node), 0, "nothing refused was filed");

    // Shard 0 of every segment, shard 1 of segment 0 only.
    for segment in &segments {
        let (root, proof, body) = session_pair(segment, 0);
        put(segment.index, root, 0, proof, body).await.unwrap();
    }
    let (root, proof, body) = session_pair(&segments[0], 1);
    put(0, root, 1, proof, body).await.unwrap();
    assert!(used(&node) > 0);
    // Nothing is visible before the metadata adopts the session.
    assert_eq!(
        node.client
            .sliver(&id, 0, 0, SliverKind::Primary, 1 << 20)
            .await
            .unwrap(),
        None
    );
    let state = node.client.state(&id).await.unwrap();
    assert!(state.shards.is_empty() && state.size.is_none(), "{state:?}");

    // Metadata of another blob adopts none of it (its segments have other
    // roots), and ends the session.
    let (_, other, _) = blob(4, 150_000, 1024 * 80);
    let adopted = node
        .client
        .put_metadata_adopting(&other.blob_id(), 5, other.to_bytes().into(), &upload)
        .await
        .unwrap();
    assert_eq!(adopted.segments, vec![Vec::<u16>::new(); 2]);
    assert_eq!(used(&node), 0, "the session is gone");

    // A new session, adopted by the blob's own metadata.
    let upload = UploadId::random();
    for segment in &segments {
        let (root, proof, body) = session_pair(segment, 0);
        node.client
            .put_upload_pair(
                &upload,
                (segment.index, &root),
                0,
                &proof,
                vec![body.into()],
            )
            .await
            .unwrap();
    }
    let (root, proof, body) = session_pair(&segments[0], 1);
    node.client
        .put_upload_pair(&upload, (0, &root), 1, &proof, vec![body.into()])
        .await
        .unwrap();
    let adopted = node
        .client
        .put_metadata_adopting(&id, 7, metadata.to_bytes().into(), &upload)
        .await
        .unwrap();
    assert_eq!(adopted.segments, vec![vec![0, 1], vec![0], vec![0]]);
    assert_eq!(used(&node), 0, "adopted pairs left the session");
    for segment in &segments {
        let (primary, secondary) = pair_for_shard(&metadata, segment, 0);
        let get = |kind| node.client.sliver(&id, segment.index, 0, kind, 1 << 20);
        assert_eq!(get(SliverKind::Primary).await.unwrap(), Some(primary));
        assert_eq!(get(SliverKind::Secondary).await.unwrap(), Some(secondary));
    }
    // Staging again (a retry) answers what is held; nothing is committed.
    let again = node
        .client
        .put_metadata_adopting(&id, 7, metadata.to_bytes().into(), &upload)
        .await
        .unwrap();
    assert_eq!(again, adopted);
    assert_eq!(node.client.state(&id).await.unwrap().state.commit, None);
}

#[tokio::test]
async fn a_retried_upload_is_given_the_pairs_an_earlier_session_filed_under_the_same_root_and_adopts_them(
) {
    let node = start_node("node-reuse", &[0, 1], None).await;
    let (_, metadata, segments) = blob(4, 150_000, 1024 * 64);
    let id = metadata.blob_id();
    let (failed, retry) = (UploadId::random(), UploadId::random());
    // The attempt cut off filed shard 0 of segments 0 and 1, shard 1 of 0.
    for (segment, shard) in [(0usize, 0u16), (1, 0), (0, 1)] {
        let (root, proof, body) = session_pair(&segments[segment], shard);
        node.client
            .put_upload_pair(
                &failed,
                (segment as u32, &root),
                shard,
                &proof,
                vec![body.into()],
            )
            .await
            .unwrap();
    }
    let root_of = |segment: usize| segments[segment].hashes.root();
    let reuse = |segment: u32, root: Hash, shards: Vec<u16>| {
        let client = node.client.clone();
        async move {
            client
                .reuse_upload_pairs(&retry, (segment, &root), &shards)
                .await
        }
    };
    assert_eq!(reuse(0, root_of(0), vec![0, 1]).await.unwrap(), [0, 1]);
    assert_eq!(reuse(1, root_of(1), vec![0, 1]).await.unwrap(), [0]);
    assert_eq!(
        reuse(2, root_of(2), vec![0, 1]).await.unwrap(),
        Vec::<u16>::new(),
        "never filed"
    );
    assert_eq!(
        reuse(1, root_of(0), vec![0]).await.unwrap(),
        Vec::<u16>::new(),
        "another segment's root"
    );
    let unowned = reuse(0, root_of(0), vec![0, 3]).await;
    assert_eq!(status_of(unowned), StatusCode::CONFLICT);
    for (path, body, complaint) in [
        (
            format!(
                "segments/0/reuse?root={}",
                redstuff::hex::encode(&root_of(0))
            ),
            "{\"shard\": 0}",
            "the body must be",
        ),
        (
            "segments/0/reuse".to_string(),
            "{\"shards\": [0]}",
            "the segment root is missing",
        ),
        (
            "segments/x/reuse?root=00".to_string(),
            "{\"shards\": [0]}",
            "segment",
        ),
    ] {
        let r = authorized_http()
            .post(format!("{}/v1/uploads/{retry}/{path}", node.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        let text = r.text().await.unwrap();
        assert!(text.contains(complaint), "{path}: {text}");
    }

    // The earlier session goes (collected, or adopted elsewhere); the
    // retry ships segment 2 and adopts all of it.
    node.client.delete_upload(&failed).await.unwrap();
    let (root, proof, body) = session_pair(&segments[2], 0);
    node.client
        .put_upload_pair(&retry, (2, &root), 0, &proof, vec![body.into()])
        .await
        .unwrap();
    let adopted = node
        .client
        .put_metadata_adopting(&id, 7, metadata.to_bytes().into(), &retry)
        .await
        .unwrap();
    assert_eq!(adopted.segments, vec![vec![0, 1], vec![0], vec![0]]);
    for segment in &segments {
        let (primary, secondary) = pair_for_shard(&metadata, segment, 0);
        let get = |kind| node.client.sliver(&id, segment.index, 0, kind, 1 << 20);
        assert_eq!(get(SliverKind::Primary).await.unwrap(), Some(primary));
        assert_eq!(get(SliverKind::Secondary).await.unwrap(), Some(secondary));
    }
}

#[tokio::test]
async fn a_session_its_writer_gives_up_is_removed_with_everything_it_held() {
    let node = start_node("node-give-up", &[0], None).await;
    let (_, _, segments) = blob(4, 3000, 1024 * 64);
    let upload = UploadId::random();
    let (root, proof, body) = session_pair(&segments[0], 0);
    node.client
        .put_upload_pair(&upload, (0, &root), 0, &proof, vec![body.into()])
        .await
        .unwrap();
    let uploads = node.dir.path().join("uploads");
    assert!(walk_bytes(&uploads) > 0);
    node.client.delete_upload(&upload).await.unwrap();
    assert_eq!(walk_bytes(&uploads), 0);
    // Removing it again, or one never seen, is no error.
    node.client.delete_upload(&upload).await.unwrap();
    let r = authorized_http()
        .delete(format!("{}/v1/uploads/not-an-upload", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_node_releases_the_pairs_of_a_shard_it_no_longer_owns_and_never_of_one_it_owns() {
    let files = tempfile::tempdir().unwrap();
    let shards_file = files.path().join("shards.json");
    let own = |shards: &[u16]| {
        ShardsFile {
            shards: shards.iter().copied().collect(),
        }
        .write(&shards_file)
        .unwrap()
    };
    own(&[0, 1]);
    let node = start(
        "node-release",
        Setup {
            shards_file: Some(shards_file.clone()),
            ..Setup::default()
        },
    )
    .await;
    let (_, metadata, segments) = blob(4, 300_000, 64 << 10);
    assert!(segments.len() > 1);
    let id = metadata.blob_id();
    store_shard(&node, &metadata, &segments, 0).await;
    store_shard(&node, &metadata, &segments, 1).await;
    node.client.commit(&id, 10).await.unwrap();
    let shard_dir = |shard: u16| {
        node.dir
            .path()
            .join("blobs")
            .join(id.to_string())
            .join(shard.to_string())
    };
    let held = walk_bytes(&shard_dir(1));
    assert!(held > 0);

    let refused = node.client.release_shard(&id, 1).await;
    assert_eq!(status_of(refused), StatusCode::CONFLICT, "owned: kept");
    assert_eq!(walk_bytes(&shard_dir(1)), held);

    // Shard 1 moves away. The node decides on its newest file, without
    // waiting for its periodic re-read.
    std::thread::sleep(std::time::Duration::from_millis(20));
    own(&[0]);
    assert_eq!(node.client.release_shard(&id, 1).await.unwrap(), held);
    assert!(!shard_dir(1).exists());
    let state = node.client.state(&id).await.unwrap();
    assert_eq!(state.state.commit, Some(10), "the blob stays committed");
    assert_eq!(
        state.shards,
        [(0, segments.len() as u32)].into(),
        "shard 0's pairs stay"
    );
    let (primary, _) = pair_for_shard(&metadata, &segments[1], 0);
    let served = node
        .client
        .sliver(&id, 1, 0, SliverKind::Primary, LIMIT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(served, primary);
    // Again, or of a blob never held: nothing to free, no error.
    assert_eq!(node.client.release_shard(&id, 1).await.unwrap(), 0);
    let (_, other, _) = blob(4, 1000, 64 << 10);
    assert_eq!(
        node.client
            .release_shard(&other.blob_id(), 3)
            .await
            .unwrap(),
        0
    );
    for bad in ["/shards/x", "/shards/70000"] {
        let r = node
            .http
            .delete(format!("{}/v1/blobs/{id}{bad}", node.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let text = node.metrics_text().await;
    assert!(
        text.contains(&format!("redstuff_node_released_bytes_total {held}")),
        "{text}"
    );

    // A garbled ownership file: the node cannot tell what it owns, so it
    // releases nothing.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&shards_file, "{not json").unwrap();
    let r = node.client.release_shard(&id, 0).await;
    assert_eq!(status_of(r), StatusCode::SERVICE_UNAVAILABLE);
    assert!(walk_bytes(&shard_dir(0)) > 0);
}

/// Bytes of the files below `dir`.
fn walk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                walk_bytes(&path)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

#[tokio::test]
async fn a_pair_upload_is_verified_whole_and_stores_both_slivers_or_neither() {
    let node = start_node("node-pair", &[0], None).await;
    let (_, metadata, segments) = blob(4, 3000, 1024 * 64);
    let id = metadata.blob_id();
    let (primary, secondary) = pair_for_shard(&metadata, &segments[0], 0);
    node.client
        .put_metadata(&id, 1, metadata.to_bytes())
        .await
        .unwrap();
    let joined = |p: &[u8], s: &[u8]| [p, s].concat();
    let mut flipped = secondary.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let mut long = joined(&primary, &secondary);
    long.push(0);
    let short = joined(&primary, &secondary[..secondary.len() - 1]);
    for (what, body, status) in [
        (
            "a secondary that fails its hash",
            joined(&primary, &flipped),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("one byte too many", long, StatusCode::PAYLOAD_TOO_LARGE),
        ("one byte short", short, StatusCode::BAD_REQUEST),
        (
            "the slivers swapped",
            joined(&secondary, &primary),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let r = node.client.put_pair(&id, 0, 0, vec![body.into()]).await;
        assert_eq!(status_of(r), status, "{what}");
        for kind in [SliverKind::Primary, SliverKind::Secondary] {
            let stored = node.client.sliver(&id, 0, 0, kind, 1 << 20).await.unwrap();
            assert_eq!(stored, None, "{what}: no {kind} sliver was stored");
        }
    }
    // A shard the node does not own.
    let (other_p, other_s) = pair_for_shard(&metadata, &segments[0], 1);
    let r = node
        .client
        .put_pair(&id, 0, 1, vec![joined(&other_p, &other_s).into()])
        .await;
    assert_eq!(status_of(r), StatusCode::CONFLICT);
    node.client
        .put_pair(&id, 0, 0, vec![joined(&primary, &secondary).into()])
        .await
        .unwrap();
    let get = |kind| node.client.sliver(&id, 0, 0, kind, 1 << 20);
    assert_eq!(get(SliverKind::Primary).await.unwrap(), Some(primary));
    assert_eq!(get(SliverKind::Secondary).await.unwrap(), Some(secondary));
}

#[tokio::test]
async fn bad_requests_get_their_4xx_and_leave_the_store_unchanged() {
    let node = start_node("node-b", &[0], Some(1 << 20)).await;
    let (_, metadata, segments) = blob(4, 3000, 1024 * 64);
    let (_, other_metadata, _) = blob(4, 3001, 1024 * 64);
    let id = metadata.blob_id();
    let segment = &segments[0];
    let (primary, secondary) = pair_for_shard(&metadata, segment, 0);

    // A sliver before its metadata: unknown blob.
    let r = node
        .client
        .put_sliver(&id, 0, 0, SliverKind::Primary, primary.clone())
        .await;
    assert_eq!(status_of(r), StatusCode::NOT_FOUND);
    // Metadata under another blob's id, and garbled metadata.
    let r = node
        .client
        .put_metadata(&other_metadata.blob_id(), 1, metadata.to_bytes())
        .await;
    assert_eq!(status_of(r), StatusCode::BAD_REQUEST);
    let mut garbled = metadata.to_bytes();
    garbled[40] ^= 1;
    let r = node.client.put_metadata(&id, 1, garbled).await;
    assert_eq!(status_of(r), StatusCode::BAD_REQUEST);
    // Metadata that claims a length far beyond what this node takes is
    // refused from its first bytes.
    let mut huge = metadata.to_bytes();
    huge[17..25].copy_from_slice(&(1u64 << 50).to_le_bytes());
    huge[25..29].copy_from_slice(
        &((1u64 << 50) / (64 << 10))
            .min(u32::MAX as u64)
            .to_le_bytes()[..4],
    );
    let r = node.client.put_metadata(&id, 1, huge).await;
    assert!(
        matches!(
            status_of(r),
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::BAD_REQUEST
        ),
        "an impossible metadata length is refused"
    );
    assert_eq!(node.client.full_inventory().await.unwrap().blobs, vec![]);

    node.client
        .put_metadata(&id, 1, metadata.to_bytes())
        .await
        .unwrap();
    // A shard the node does not own.
    let (other_primary, _) = pair_for_shard(&metadata, segment, 2);
    let r = node
        .client
        .put_sliver(&id, 0, 2, SliverKind::Primary, other_primary.clone())
        .await;
    assert_eq!(status_of(r), StatusCode::CONFLICT);
    // Another shard's sliver sent as this shard's: wrong pair.
    let r = node
        .client
        .put_sliver(&id, 0, 0, SliverKind::Primary, other_primary)
        .await;
    assert_eq!(status_of(r), StatusCode::UNPROCESSABLE_ENTITY);
    // A flipped bit: the hash does not match.
    let mut flipped = primary.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 4;
    let r = node
        .client
        .put_sliver(&id, 0, 0, SliverKind::Primary, flipped)
        .await;
    assert_eq!(status_of(r), StatusCode::UNPROCESSABLE_ENTITY);
    // A secondary sliver sent as primary, and garbage.
    let r = node
        .client
        .put_sliver(&id, 0, 0, SliverKind::Primary, secondary.clone())
        .await;
    assert_eq!(status_of(r), StatusCode::BAD_REQUEST);
    let r = node
        .client
        .put_sliver(&id, 0, 0, SliverKind::Primary, b"garbage".to_vec())
        .await;
    assert_eq!(status_of(r), StatusCode::BAD_REQUEST);
    // Too large for a sliver of this segment.
    let mut large = primary.clone();
    large.extend_from_slice(&[0; 100]);
    let r = node
        .client
        .put_sliver(&id, 0, 0, SliverKind::Primary, large)
        .await;
    assert_eq!(status_of(r), StatusCode::PAYLOAD_TOO_LARGE);
    // A segment that does not exist.
    let r = node
        .client
        .put_sliver(&id, 9, 0, SliverKind::Primary, primary.clone())
        .await;
    assert_eq!(status_of(r), StatusCode::BAD_REQUEST);

    // Malformed paths and queries.
    let base = node.url.clone();
    for (method, url, status) in [
        (
            "GET",
            format!("{base}/v1/blobs/not-an-id/metadata"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            format!("{base}/v1/blobs/{id}/slivers/0/0/tertiary"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            format!("{base}/v1/blobs/{id}/slivers/x/0/primary"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            format!("{base}/v1/blobs/{id}/symbols/0/0/primary?target_shard=99"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            format!("{base}/v1/inventory?limit=0"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "DELETE",
            format!("{base}/v1/blobs/{id}"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "DELETE",
            format!("{base}/v1/blobs/{id}?generation=zero"),
            StatusCode::BAD_REQUEST,
        ),
        ("GET", format!("{base}/v2/nothing"), StatusCode::NOT_FOUND),
    ] {
        let request = match method {
            "DELETE" => node.http.delete(&url),
            _ => node.http.get(&url),
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{method} {url}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{url}: {body}"
        );
    }

    // Nothing above was stored, nothing deleted.
    let inventory = node.client.full_inventory().await.unwrap();
    assert_eq!(inventory.blobs[0].shards.len(), 0);
    assert_eq!(inventory.blobs[0].state.tombstone, None);
    assert_eq!(
        node.client
            .sliver(&id, 0, 0, SliverKind::Primary, LIMIT)
            .await
            .unwrap(),
        None
    );

    // The right sliver is accepted.
    node.client
        .put_sliver(&id, 0, 0, SliverKind::Primary, primary)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_full_store_answers_507_and_keeps_what_it_has() {
    let (_, metadata, segments) = blob(4, 60_000, 1 << 20);
    let id = metadata.blob_id();
    let (primary, secondary) = pair_for_shard(&metadata, &segments[0], 0);
    // metadata, the staged marker and the primary sliver, with checksums
    let room = (metadata.to_bytes().len() + 8 + primary.len() + 3 * 32) as u64;
    let node = start_node("node-c", &[0], Some(room)).await;
    node.client
        .put_metadata(&id, 1, metadata.to_bytes())
        .await
        .unwrap();
    node.client
        .put_sliver(&id, 0, 0, SliverKind::Primary, primary.clone())
        .await
        .unwrap();
    let r = node
        .client
        .put_sliver(&id, 0, 0, SliverKind::Secondary, secondary)
        .await;
    assert_eq!(status_of(r), StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(
        node.client
            .sliver(&id, 0, 0, SliverKind::Secondary, LIMIT)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        node.client
            .sliver(&id, 0, 0, SliverKind::Primary, LIMIT)
            .await
            .unwrap(),
        Some(primary)
    );
}

/// A TCP proxy to `upstream` that holds every chunk a caller sends for
/// `delay` before passing it on; answers pass at once. Returns its URL.
async fn delaying_proxy(upstream: SocketAddr, delay: std::time::Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((caller, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(node) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut from_caller, mut to_caller) = caller.into_split();
                let (mut from_node, mut to_node) = node.into_split();
                let requests = async move {
                    let mut buffer = vec![0u8; 64 << 10];
                    while let Ok(read @ 1..) = from_caller.read(&mut buffer).await {
                        tokio::time::sleep(delay).await;
                        if to_node.write_all(&buffer[..read]).await.is_err() {
                            break;
                        }
                    }
                };
                let answers = tokio::io::copy(&mut from_node, &mut to_caller);
                let _ = tokio::join!(requests, answers);
            });
        }
    });
    url
}

/// Starts n nodes, one shard each, with the lies given, all knowing the
/// same fleet map (the repair finds its peers there). The honest nodes are
/// named in the map through proxies that hold each request for
/// `honest_delay`, so the liars' answers always arrive first.
async fn fleet_of(
    n: u16,
    lies: &[(u16, Lie)],
    honest_delay: std::time::Duration,
    map_dir: &std::path::Path,
    staged_ttl: Option<std::time::Duration>,
) -> Vec<TestNode> {
    // Reserve the addresses first, so the map can name them before the nodes start.
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let map_path = map_dir.join("fleet.json");
    // The liars come first in the map, so they are asked first.
    let liars: Vec<u16> = lies.iter().map(|(s, _)| *s).collect();
    let order: Vec<u16> = liars
        .iter()
        .copied()
        .chain((0..n).filter(|s| !liars.contains(s)))
        .collect();
    let mut nodes_in_map = Vec::new();
    for &shard in &order {
        let addr = listeners[shard as usize].local_addr().unwrap();
        let url = if liars.contains(&shard) {
            format!("http://{addr}")
        } else {
            delaying_proxy(addr, honest_delay).await
        };
        nodes_in_map.push(MapNode {
            name: format!("node-{shard}"),
            url,
            shards: [shard].into(),
        });
    }
    FleetMap {
        shards: n,
        segment_size: 64 << 10,
        nodes: nodes_in_map,
    }
    .write(&map_path)
    .unwrap();
    let mut nodes = Vec::new();
    for (shard, listener) in listeners.into_iter().enumerate() {
        let shard = shard as u16;
        let lie = lies.iter().find(|(s, _)| *s == shard).map(|(_, l)| *l);
        let shards = [shard];
        nodes.push(
            start(
                &format!("node-{shard}"),
                Setup {
                    shards: &shards,
                    lie,
                    fleet: Some(map_path.clone()),
                    listener: Some(listener),
                    staged_ttl,
                    ..Setup::default()
                },
            )
            .await,
        );
    }
    nodes
}

async fn invalid_counts(node: &TestNode) -> Vec<(String, u64)> {
    let text = node.metrics_text().await;
    text.lines()
        .filter_map(|l| l.strip_prefix("redstuff_peer_invalid_responses_total{node=\""))
        .filter_map(|rest| {
            let (node, value) = rest.split_once("\"} ")?;
            Some((node.to_string(), value.parse().ok()?))
        })
        .filter(|(_, count): &(String, u64)| *count > 0)
        .collect()
}

#[tokio::test]
async fn a_repair_completes_past_a_node_flipping_bits_and_one_replaying_others_and_blames_only_them(
) {
    // n = 7, f = 2: node 5 flips bits, node 6 replays the valid answers of
    // the next shard's holder (claiming another shard's index). Honest
    // peers answer half a second late, so the repairer, which stops asking
    // once it holds enough valid symbols, always reads the liars' first.
    let n = 7u16;
    let dir = tempfile::tempdir().unwrap();
    let nodes = fleet_of(
        n,
        &[(6, Lie::Replay), (5, Lie::FlipBits)],
        std::time::Duration::from_millis(500),
        dir.path(),
        None,
    )
    .await;
    let (_, metadata, segments) = blob(n, 200_000, 64 << 10);
    let id = metadata.blob_id();
    for (shard, node) in nodes.iter().enumerate() {
        store_shard(node, &metadata, &segments, shard as u16).await;
        node.client.commit(&id, 10).await.unwrap();
    }
    // Node 0 loses everything.
    nodes[0].client.delete(&id, 10).await.unwrap();
    let request = RepairRequest {
        blob: id.to_string(),
        shards: vec![0],
        generation: 11,
        size: metadata.len(),
        segments: metadata.segment_count() as u32,
    };
    let report = nodes[0].client.repair(&request).await.unwrap();
    assert_eq!(report.rebuilt, segments.len() as u64, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(
        report.invalid_symbols > 0,
        "the liars are noticed: {report:?}"
    );
    for segment in &segments {
        let (p, s) = pair_for_shard(&metadata, segment, 0);
        let back = |kind| nodes[0].client.sliver(&id, segment.index, 0, kind, LIMIT);
        assert_eq!(back(SliverKind::Primary).await.unwrap(), Some(p));
        assert_eq!(back(SliverKind::Secondary).await.unwrap(), Some(s));
    }
    assert_eq!(
        nodes[0].client.state(&id).await.unwrap().state.commit,
        Some(11)
    );
    // Only the liars are counted.
    let blamed = invalid_counts(&nodes[0]).await;
    assert!(!blamed.is_empty());
    for (node, count) in &blamed {
        assert!(
            (node == "node-5" || node == "node-6") && *count > 0,
            "an honest node was blamed: {blamed:?}"
        );
    }
    // Bytes moved: (p + q) symbols and proofs per segment, plus metadata, plus
    // the liars' rejected symbols; far below the blob.
    let layout = metadata.layout();
    let ideal: u64 = (0..layout.segment_count())
        .map(|i| layout.segment(i).unwrap().repair_symbol_bytes())
        .sum();
    assert!(
        report.bytes_fetched < ideal * 2 + 20_000,
        "{} vs {ideal}",
        report.bytes_fetched
    );
    // A second repair finds everything present.
    let again = nodes[0].client.repair(&request).await.unwrap();
    assert_eq!(
        (again.rebuilt, again.already_present),
        (0, segments.len() as u64)
    );
    // A repair of a shard the node does not own is refused.
    let wrong = RepairRequest {
        shards: vec![3],
        ..request.clone()
    };
    assert_eq!(
        status_of(nodes[0].client.repair(&wrong).await),
        StatusCode::CONFLICT
    );
    // Generation 0 is no write's: refused before anything is committed.
    let no_generation = RepairRequest {
        generation: 0,
        ..request.clone()
    };
    assert_eq!(
        status_of(nodes[0].client.repair(&no_generation).await),
        StatusCode::BAD_REQUEST
    );
    // A repair of a generation older than a delete stops and stores nothing.
    nodes[0].client.delete(&id, 50).await.unwrap();
    let stale = RepairRequest {
        generation: 40,
        ..request
    };
    assert!(nodes[0].client.repair(&stale).await.is_err());
    assert!(nodes[0]
        .client
        .sliver(&id, 0, 0, SliverKind::Primary, LIMIT)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_repair_never_calls_an_address_the_caller_chose() {
    // The request format has no addresses: peers come from the node's map.
    // A map-less node refuses to repair instead of guessing.
    let node = start_node("node-m", &[0], None).await;
    let (_, metadata, _) = blob(4, 100, 1 << 20);
    let request = RepairRequest {
        blob: metadata.blob_id().to_string(),
        shards: vec![0],
        generation: 1,
        size: 100,
        segments: 1,
    };
    assert_eq!(
        status_of(node.client.repair(&request).await),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let sneaky = serde_json::json!({
        "blob": metadata.blob_id().to_string(), "shards": [0], "generation": 1, "size": 100,
        "segments": 1, "peers": [{"shard": 1, "node": "evil", "url": "http://127.0.0.1:9"}]
    });
    let response = node
        .http
        .post(format!("{}/v1/repair", node.url))
        .json(&sneaky)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "peers named by the caller are ignored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_write_committed_only_on_a_peer_is_kept_past_its_ttl_with_that_commit_and_one_committed_nowhere_goes(
) {
    // n = 4 (f = 1). The commit of one write reached node 0 only (the
    // others stalled through the commit phase) and no control loop is
    // there to carry it on; another write was committed nowhere.
    let n = 4u16;
    let dir = tempfile::tempdir().unwrap();
    let ttl = std::time::Duration::from_secs(2);
    let nodes = fleet_of(n, &[], std::time::Duration::ZERO, dir.path(), Some(ttl)).await;
    let (_, committed, committed_segments) = blob(n, 150_000, 64 << 10);
    let (_, abandoned, abandoned_segments) = blob(n, 90_000, 64 << 10);
    let (kept, gone) = (committed.blob_id(), abandoned.blob_id());
    store_shard(&nodes[0], &committed, &committed_segments, 0).await;
    nodes[0].client.commit(&kept, 10).await.unwrap();
    for (shard, node) in nodes.iter().enumerate() {
        if shard > 0 {
            store_shard(node, &committed, &committed_segments, shard as u16).await;
        }
        store_shard(node, &abandoned, &abandoned_segments, shard as u16).await;
    }

    let segments = committed_segments.len() as u32;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut settled = true;
        let mut seen = Vec::new();
        for (shard, node) in nodes.iter().enumerate() {
            let kept_state = node.client.state(&kept).await.unwrap();
            let gone_state = node.client.state(&gone).await.unwrap();
            settled &= kept_state.state.commit == Some(10)
                && gone_state.state == Default::default()
                && gone_state.shards.is_empty();
            // Never removed meanwhile: every pair of its shard stays.
            assert_eq!(
                kept_state.shards.get(&(shard as u16)),
                Some(&segments),
                "node-{shard} removed a write committed on node-0: {kept_state:?}"
            );
            seen.push((kept_state, gone_state));
        }
        if settled {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the nodes did not settle both writes: {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for (shard, node) in nodes.iter().enumerate().skip(1) {
        let segment = &committed_segments[0];
        let (primary, _) = pair_for_shard(&committed, segment, shard as u16);
        let served = node
            .client
            .sliver(&kept, 0, shard as u16, SliverKind::Primary, LIMIT)
            .await
            .unwrap();
        assert!(
            served.as_deref() == Some(&primary[..]),
            "node-{shard} serves its primary sliver"
        );
        let metrics = node.metrics_text().await;
        assert!(
            metrics
                .lines()
                .any(|l| l == "redstuff_node_staged_commits_adopted_total 1"),
            "{metrics}"
        );
    }
}

/// The value of the metric line `name` (no labels) in `metrics`.
fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_write_whose_commit_may_be_on_a_silent_node_is_kept_until_that_node_answers() {
    // n = 4 (f = 1). The commit reached node-0 only, and node-0 is hung to
    // its peers (connections accepted, nothing answered) past the TTL: the
    // write staged on every shard may have been committed there.
    let n = 4u16;
    let dir = tempfile::tempdir().unwrap();
    let map_path = dir.path().join("fleet.json");
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let direct: Vec<String> = listeners
        .iter()
        .map(|l| format!("http://{}", l.local_addr().unwrap()))
        .collect();
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_url = format!("http://{}", hung.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((caller, _)) = hung.accept().await {
            held.push(caller);
        }
    });
    let map = |node_0: &str| FleetMap {
        shards: n,
        segment_size: 64 << 10,
        nodes: (0..n)
            .map(|s| MapNode {
                name: format!("node-{s}"),
                url: if s == 0 {
                    node_0.to_string()
                } else {
                    direct[s as usize].clone()
                },
                shards: [s].into(),
            })
            .collect(),
    };
    map(&hung_url).write(&map_path).unwrap();
    let mut nodes = Vec::new();
    for (shard, listener) in listeners.into_iter().enumerate() {
        let shards = [shard as u16];
        let setup = Setup {
            shards: &shards,
            fleet: Some(map_path.clone()),
            listener: Some(listener),
            staged_ttl: Some(std::time::Duration::from_secs(1)),
            ..Setup::default()
        };
        nodes.push(start(&format!("node-{shard}"), setup).await);
    }
    let (_, metadata, segments) = blob(n, 150_000, 64 << 10);
    let id = metadata.blob_id();
    store_shard(&nodes[0], &metadata, &segments, 0).await;
    nodes[0].client.commit(&id, 10).await.unwrap();
    for (shard, node) in nodes.iter().enumerate().skip(1) {
        store_shard(node, &metadata, &segments, shard as u16).await;
    }

    // Past the TTL, each of the others says it keeps one write waiting.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for node in &nodes[1..] {
        while metric_value(
            &node.metrics_text().await,
            "redstuff_node_staged_writes_waiting",
        ) != Some(1.0)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no node reports the write waiting"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    for (shard, node) in nodes.iter().enumerate().skip(1) {
        let state = node.client.state(&id).await.unwrap();
        assert_eq!(state.state.commit, None);
        assert_eq!(
            state.shards.get(&(shard as u16)),
            Some(&(segments.len() as u32)),
            "node-{shard} kept the write while node-0 was silent: {state:?}"
        );
    }
    // node-0 answers again: the others take its commit.
    map(&direct[0]).write(&map_path).unwrap();
    for (shard, node) in nodes.iter().enumerate().skip(1) {
        while node.client.state(&id).await.unwrap().state.commit != Some(10) {
            assert!(
                std::time::Instant::now() < deadline,
                "node-{shard} never took the commit of node-0"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refusing_every_stage_as_deleted_without_a_tombstone_does_not_fail_writes() {
    // n = 4 (f = 1): node-3 answers 410 to every stage and reports no
    // tombstone. Before, the write staged again above it three times and
    // failed (every write, while one node lied).
    let n = 4u16;
    let dir = tempfile::tempdir().unwrap();
    let _nodes = fleet_of(
        n,
        &[(3, Lie::RefuseStages)],
        std::time::Duration::ZERO,
        dir.path(),
        None,
    )
    .await;
    let map = FleetMap::read(&dir.path().join("fleet.json")).unwrap();
    let client = redstuff::client::BlobClient::new(calls(), map, None);
    let (data, metadata, _) = blob(n, 150_000, 64 << 10);
    let file = dir.path().join("blob");
    std::fs::write(&file, &data).unwrap();
    let outcome = client.write_file(&file).await.unwrap();
    assert_eq!(outcome.metadata.blob_id(), metadata.blob_id());
    assert!(outcome.visible_to_every_read());
    assert!(outcome.missing.contains(&3), "{:?}", outcome.missing);
    let visible = client.visible(&metadata.blob_id()).await.unwrap();
    assert_eq!(visible.generation, outcome.generation);
}
