//! A StorageCluster `media` of in-memory node pods beside a mocked
//! Kubernetes API, for tests of the Blob reconciler and of what the
//! cluster reconciler does with blobs (uploads recorded, losses named).

use redstuff::operator::context::Context;
use redstuff::operator::crd::{
    Blob, ShardAssignment, StorageCluster, StorageClusterSpec, StorageClusterStatus, StorageSpec,
};
use redstuff::operator::rollout::SPEC_HASH_ANNOTATION;
use redstuff::operator::source_addresses::{LocalAddresses, SourceReach};
use serde_json::{json, Value};

use super::{spec_hash, MockApi, Seen, TestFleet};

/// The namespace of the mocked API's core objects.
pub const NS: &str = "/api/v1/namespaces/storage";

/// The namespace of its redstuff objects.
pub const GROUP: &str = "/apis/redstuff.dev/v1alpha1/namespaces/storage";

/// Cluster `media` of `shards` ephemeral node pods, node i holding shard
/// i as the cluster controller assigned them.
pub fn cluster(shards: u16) -> StorageCluster {
    let mut c = StorageCluster::new(
        "media",
        StorageClusterSpec {
            shards,
            nodes: shards,
            image: None,
            storage: StorageSpec {
                size: None,
                storage_class_name: None,
                ephemeral: Some(true),
                when_deleted: None,
            },
            resources: None,
            placement: None,
            repair: None,
            s3: None,
            record_uploads: None,
            tls: None,
            gateway: None,
            scrub: None,
        },
    );
    c.metadata.namespace = Some("storage".into());
    c.metadata.uid = Some("c-uid".into());
    // Node i holds shard i, as the cluster controller assigned them.
    c.status = Some(StorageClusterStatus {
        shard_assignment: (0..shards)
            .map(|i| ShardAssignment {
                shard: i,
                node: format!("media-node-{i}"),
            })
            .collect(),
        ..StorageClusterStatus::default()
    });
    c
}

/// Its `count` node pods, ready and of the current spec.
pub fn ready_pods(count: u16) -> Vec<Value> {
    (0..count)
        .map(|i| {
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("media-node-{i}"), "namespace": "storage",
                             "annotations": {SPEC_HASH_ANNOTATION: spec_hash(&cluster(count), usize::from(i))}},
                "spec": {"containers": []},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
            })
        })
        .collect()
}

/// A fake API holding the cluster (unless `cluster` is None), the blobs
/// and `extra` objects.
pub fn api(
    cluster: Option<&StorageCluster>,
    blobs: &[&Blob],
    extra: &[(String, Value)],
) -> MockApi {
    let mut api = MockApi::default();
    if let Some(c) = cluster {
        api.objects.insert(
            format!("{GROUP}/storageclusters/media"),
            serde_json::to_value(c).unwrap(),
        );
        api.lists
            .insert(format!("{NS}/pods"), ready_pods(c.spec.shards));
    }
    for b in blobs {
        api.objects.insert(
            format!("{GROUP}/blobs/{}", b.metadata.name.as_deref().unwrap()),
            serde_json::to_value(b).unwrap(),
        );
    }
    for (path, object) in extra.iter().cloned().chain(super::token_secrets()) {
        api.objects.insert(path, object);
    }
    api
}

/// The reasons of the Events published, in order.
pub fn events(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/events"))
        .map(|s| s.body["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// An operator context whose ingest spool lives in this test binary's own
/// scratch directory (the default, the system temp dir, would outlive the
/// run) and whose URL sources may reach loopback, where tests serve them.
pub fn test_context(client: kube::Client) -> Context {
    let mut ctx = Context::new(client, "redstuff:test")
        .with_source_reach(SourceReach::allowing([LocalAddresses::Loopback]));
    ctx.spool_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("redstuff-ingest");
    ctx
}

/// `cluster(4)` serving S3: its gateway deletes blobs.
pub fn cluster_with_s3() -> StorageCluster {
    let mut c = cluster(4);
    c.spec.s3 = Some(serde_json::from_value(json!({})).unwrap());
    c
}

/// `api` answering the list of Blobs with an empty list.
pub fn no_blobs(mut api: MockApi) -> MockApi {
    api.lists.insert(format!("{GROUP}/blobs"), vec![]);
    api
}

/// Blob `bytes` stored through the fleet's gateway; its id.
pub async fn stored_bytes(fleet: &TestFleet, bytes: Vec<u8>) -> String {
    let answer: Value = super::user_http()
        .put(format!("{}/v1/blobs", fleet.gateway.url))
        .body(bytes)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["id"].as_str().unwrap().to_string()
}
