//! A storage node in-process on a temp dir, over real HTTP: what it keeps,
//! what it refuses (and that a refusal changes nothing), and repair.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use redstuff::client::NodeClient;
use redstuff::codec::{
    BlobEncoder, BlobMetadata, EncodedSegment, EncodingConfig, RecoverySymbol, Secondary,
    SliverKind,
};
use redstuff::node::{Node, NodeConfig, ShardSource};
use redstuff::wire::{Peer, RepairRequest};
use reqwest::StatusCode;

struct TestNode {
    client: NodeClient,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn start_node(name: &str, shards: &[u16], capacity: Option<u64>, corrupt: bool) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        name: name.to_string(),
        data_dir: dir.path().to_path_buf(),
        shards: ShardSource::Fixed(shards.iter().copied().collect::<BTreeSet<_>>()),
        capacity,
        max_body_bytes: 64 << 20,
        corrupt_reads: corrupt,
        scrub_interval: None,
    };
    let node = Node::bind(config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let url = format!("http://{}", node.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(node.serve(async move {
        let _ = rx.await;
    }));
    let http = redstuff::http::client();
    TestNode {
        client: NodeClient::new(http.clone(), url),
        http,
        _dir: dir,
        shutdown: Some(tx),
    }
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

async fn status_of(result: Result<(), redstuff::client::NodeCallError>) -> StatusCode {
    result.unwrap_err().status().expect("the node answered")
}

#[tokio::test]
async fn a_node_keeps_verified_slivers_of_its_shards_and_serves_them_back() {
    let node = start_node("node-a", &[1, 2], None, false).await;
    let (_, metadata, segments) = blob(4, 5000, 2048);
    let id = metadata.blob_id();
    node.client
        .put_metadata(&id, metadata.to_bytes())
        .await
        .unwrap();
    for segment in &segments {
        let (primary, secondary) = pair_for_shard(&metadata, segment, 1);
        node.client
            .put_sliver(&id, segment.index, 1, SliverKind::Primary, primary.clone())
            .await
            .unwrap();
        node.client
            .put_sliver(&id, segment.index, 1, SliverKind::Secondary, secondary)
            .await
            .unwrap();
        let back = node
            .client
            .sliver(&id, segment.index, 1, SliverKind::Primary)
            .await
            .unwrap();
        assert_eq!(back, Some(primary));
    }
    assert_eq!(
        node.client.metadata(&id).await.unwrap(),
        Some(metadata.to_bytes())
    );
    let inventory = node.client.full_inventory().await.unwrap();
    assert_eq!(inventory.node, "node-a");
    assert_eq!(inventory.shards, vec![1, 2]);
    assert_eq!(inventory.blobs.len(), 1);
    assert_eq!(inventory.blobs[0].segments, 3);
    assert_eq!(inventory.blobs[0].size, 5000);
    assert_eq!(inventory.blobs[0].shards.get(&1), Some(&3));

    // A recovery symbol from this node verifies against the metadata.
    let symbol = node
        .client
        .symbol(&id, 0, 1, SliverKind::Secondary, 3)
        .await
        .unwrap()
        .unwrap();
    let symbol = RecoverySymbol::<Secondary>::from_bytes(&symbol).unwrap();
    symbol.verify(&metadata).unwrap();

    let text = node
        .http
        .get(format!("{}/metrics", node.client.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "redstuff_node_stored_bytes",
        "redstuff_node_slivers{kind=\"primary\"} 3",
        "redstuff_node_requests_total",
        "redstuff_node_request_duration_seconds_bucket",
        "redstuff_node_recovery_symbols_served_total 1",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }

    assert!(node.client.delete(&id).await.unwrap());
    assert!(!node.client.delete(&id).await.unwrap());
    assert_eq!(node.client.metadata(&id).await.unwrap(), None);
}

#[tokio::test]
async fn bad_requests_get_their_4xx_and_leave_the_store_unchanged() {
    let node = start_node("node-b", &[0], Some(1 << 20), false).await;
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
    assert_eq!(status_of(r).await, StatusCode::NOT_FOUND);
    // Metadata under another blob's id, and garbled metadata.
    let r = node
        .client
        .put_metadata(&other_metadata.blob_id(), metadata.to_bytes())
        .await;
    assert_eq!(status_of(r).await, StatusCode::BAD_REQUEST);
    let mut garbled = metadata.to_bytes();
    garbled[40] ^= 1;
    let r = node.client.put_metadata(&id, garbled).await;
    assert_eq!(status_of(r).await, StatusCode::BAD_REQUEST);
    assert_eq!(node.client.full_inventory().await.unwrap().blobs, vec![]);

    node.client
        .put_metadata(&id, metadata.to_bytes())
        .await
        .unwrap();
    // A shard the node does not own.
    let (other_primary, _) = pair_for_shard(&metadata, segment, 2);
    let r = node
        .client
        .put_sliver(&id, 0, 2, SliverKind::Primary, other_primary.clone())
        .await;
    assert_eq!(status_of(r).await, StatusCode::CONFLICT);
    // Another shard's sliver sent as this shard's: wrong pair.
    let r = node
        .client
        .put_sliver(&id, 0, 0, SliverKind::Primary, other_primary)
        .await;
    assert_eq!(status_of(r).await, StatusCode::UNPROCESSABLE_ENTITY);
    // A flipped bit: the hash does not match.
    let mut flipped = primary.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 4;
    let r = node
        .client
        .put_sliver(&id, 0, 0, SliverKind::Primary, flipped)
        .await;
    assert_eq!(status_of(r).await, StatusCode::UNPROCESSABLE_ENTITY);
    // A secondary sliver sent as primary, and garbage.
    let r = node
        .client
        .put_sliver(&id, 0, 0, SliverKind::Primary, secondary.clone())
        .await;
    assert_eq!(status_of(r).await, StatusCode::BAD_REQUEST);
    let r = node
        .client
        .put_sliver(&id, 0, 0, SliverKind::Primary, b"garbage".to_vec())
        .await;
    assert_eq!(status_of(r).await, StatusCode::BAD_REQUEST);
    // Too large for a sliver of this segment.
    let mut large = primary.clone();
    large.extend_from_slice(&[0; 100]);
    let r = node
        .client
        .put_sliver(&id, 0, 0, SliverKind::Primary, large)
        .await;
    assert_eq!(status_of(r).await, StatusCode::PAYLOAD_TOO_LARGE);
    // A segment that does not exist.
    let r = node
        .client
        .put_sliver(&id, 9, 0, SliverKind::Primary, primary.clone())
        .await;
    assert_eq!(status_of(r).await, StatusCode::BAD_REQUEST);

    // Malformed paths and queries.
    let base = node.client.url().to_string();
    for (url, status) in [
        (
            format!("{base}/v1/blobs/not-an-id/metadata"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("{base}/v1/blobs/{id}/slivers/0/0/tertiary"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("{base}/v1/blobs/{id}/slivers/x/0/primary"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("{base}/v1/blobs/{id}/symbols/0/0/primary?target_shard=99"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("{base}/v1/inventory?limit=0"),
            StatusCode::BAD_REQUEST,
        ),
        (format!("{base}/v2/nothing"), StatusCode::NOT_FOUND),
    ] {
        let response = node.http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), status, "{url}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{url}: {body}"
        );
    }

    // Nothing above was stored.
    let inventory = node.client.full_inventory().await.unwrap();
    assert_eq!(inventory.blobs[0].shards.len(), 0);
    assert_eq!(
        node.client
            .sliver(&id, 0, 0, SliverKind::Primary)
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
    let room = (metadata.to_bytes().len() + primary.len() + 2 * 32) as u64;
    let node = start_node("node-c", &[0], Some(room), false).await;
    node.client
        .put_metadata(&id, metadata.to_bytes())
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
    assert_eq!(status_of(r).await, StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(
        node.client
            .sliver(&id, 0, 0, SliverKind::Secondary)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        node.client
            .sliver(&id, 0, 0, SliverKind::Primary)
            .await
            .unwrap(),
        Some(primary)
    );
}

#[tokio::test]
async fn a_node_rebuilds_its_lost_pairs_from_peers_symbols_and_skips_a_lying_peer() {
    // n = 7, one shard per node; node 6 lies about everything it serves.
    let n = 7u16;
    let mut nodes = Vec::new();
    for shard in 0..n {
        nodes.push(start_node(&format!("node-{shard}"), &[shard], None, shard == 6).await);
    }
    let (_, metadata, segments) = blob(n, 200_000, 64 << 10);
    let id = metadata.blob_id();
    for (shard, node) in nodes.iter().enumerate() {
        node.client
            .put_metadata(&id, metadata.to_bytes())
            .await
            .unwrap();
        for segment in &segments {
            let (p, s) = pair_for_shard(&metadata, segment, shard as u16);
            node.client
                .put_sliver(&id, segment.index, shard as u16, SliverKind::Primary, p)
                .await
                .unwrap();
            node.client
                .put_sliver(&id, segment.index, shard as u16, SliverKind::Secondary, s)
                .await
                .unwrap();
        }
    }
    // Node 0 loses everything.
    assert!(nodes[0].client.delete(&id).await.unwrap());
    // The liar is asked first.
    let peers: Vec<Peer> = [6, 1, 2, 3, 4, 5]
        .into_iter()
        .map(|shard| Peer {
            shard,
            node: format!("node-{shard}"),
            url: nodes[shard as usize].client.url().to_string(),
        })
        .collect();
    let request = RepairRequest {
        blob: id.to_string(),
        shards: vec![0],
        peers,
    };
    let report = nodes[0].client.repair(&request).await.unwrap();
    assert_eq!(report.rebuilt, segments.len() as u64, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(
        report.invalid_symbols > 0,
        "the lying node is noticed: {report:?}"
    );
    for segment in &segments {
        let (p, s) = pair_for_shard(&metadata, segment, 0);
        assert_eq!(
            nodes[0]
                .client
                .sliver(&id, segment.index, 0, SliverKind::Primary)
                .await
                .unwrap(),
            Some(p)
        );
        assert_eq!(
            nodes[0]
                .client
                .sliver(&id, segment.index, 0, SliverKind::Secondary)
                .await
                .unwrap(),
            Some(s)
        );
    }
    // Bytes moved: (p + q) symbols and proofs per segment, plus metadata, plus
    // the lying node's rejected symbols; far below the blob.
    let layout = metadata.layout();
    let ideal: u64 = (0..layout.segment_count())
        .map(|i| layout.segment(i).unwrap().repair_symbol_bytes())
        .sum();
    assert!(
        report.bytes_fetched < ideal * 3 / 2 + 20_000,
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
        ..request
    };
    let err = nodes[0].client.repair(&wrong).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
}
