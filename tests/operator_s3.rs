//! The cluster reconciler with a gateway serving S3, against a mocked
//! Kubernetes API, real storage nodes and a real gateway with its S3
//! index in-process: the blobs S3 wrote are not recorded as uploads, and
//! the objects a loss took are named; the gateway answers both questions
//! and refuses those it cannot answer.

mod support;

use std::sync::Arc;

use redstuff::operator::context::Context;
use redstuff::operator::controller::reconcile_cluster;
use redstuff::operator::crd::StorageCluster;
use redstuff::operator::upload_records::upload_record_name;
use redstuff::s3::index::Index;
use redstuff::s3::records::ObjectRecord;
use serde_json::{json, Value};
use support::blob_cluster::{
    api, cluster_with_s3, events, no_blobs, stored_bytes, test_context, GROUP,
};
use support::{lines, Recorded, Seen, TestFleet};

/// Whether the reconcile `seen` applied the record of upload `id`.
fn recorded_upload(seen: &[Seen], id: &str) -> bool {
    let name = upload_record_name("media", id).unwrap();
    lines(seen)
        .iter()
        .any(|l| l.ends_with(&format!("/blobs/{name}")))
}

#[tokio::test]
async fn with_s3_the_bytes_s3_wrote_are_not_recorded_as_uploads_and_the_others_are() {
    let fleet = TestFleet::start(4).await;
    let native = stored_bytes(&fleet, vec![1u8; 40_000]).await;
    let of_s3 = stored_bytes(&fleet, vec![2u8; 40_000]).await;
    let of_a_key = stored_bytes(&fleet, vec![3u8; 40_000]).await;
    // The S3 front beside the gateway noted one blob before writing it (a
    // part, or an object whose record is being written) and refers to
    // another from a key.
    let dir = tempfile::tempdir().unwrap();
    let index = Arc::new(Index::open(&dir.path().join("index.redb")).unwrap());
    index.note_unreferenced(&of_s3, 1).unwrap();
    index.create_bucket("media", 1).unwrap();
    let record: redstuff::s3::records::ObjectRecord = serde_json::from_value(json!({
        "parts": [{"blob": of_a_key, "size": 40_000}],
        "size": 40_000, "etag": "e", "modified_ms": 2,
    }))
    .unwrap();
    index
        .put_object("media", "k", &record, &Default::default(), 2)
        .unwrap();
    let gateway = support::start_gateway_guarded(fleet.map.clone(), Some(index)).await;
    let c = cluster_with_s3();
    let (ctx, recorded) = operator_of(&fleet, &gateway.url, &c);
    reconcile_cluster(Arc::new(c.clone()), ctx.clone())
        .await
        .unwrap();
    let seen = recorded.take();
    assert!(recorded_upload(&seen, &native), "{:#?}", lines(&seen));
    assert!(!recorded_upload(&seen, &of_s3), "{:#?}", lines(&seen));
    assert!(!recorded_upload(&seen, &of_a_key), "{:#?}", lines(&seen));

    // Asked once: with the gateway gone, the next reconcile still knows
    // them for S3's, and records nothing it cannot tell.
    drop(gateway);
    reconcile_cluster(Arc::new(c), ctx).await.unwrap();
    let seen = recorded.take();
    assert!(
        !lines(&seen)
            .iter()
            .any(|l| l.contains("/blobs/media-upload-")),
        "{:#?}",
        lines(&seen)
    );
}

#[tokio::test]
async fn with_s3_no_upload_is_recorded_while_the_gateway_cannot_say_which_blobs_are_s3s() {
    let fleet = TestFleet::start(4).await;
    let id = stored_bytes(&fleet, vec![4u8; 40_000]).await;
    // The fleet's gateway serves no S3 (503), and then none answers.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    for endpoints in [
        fleet.endpoints(),
        fleet.endpoints().with_override("media-gateway", closed),
    ] {
        let (client, recorded) = no_blobs(api(Some(&cluster_with_s3()), &[], &[])).serve();
        let ctx = Arc::new(test_context(client).with_endpoints(endpoints));
        reconcile_cluster(Arc::new(cluster_with_s3()), ctx)
            .await
            .unwrap();
        assert!(!recorded_upload(&recorded.take(), &id));
    }
}

#[tokio::test]
async fn the_gateway_says_which_blobs_s3_knows_and_refuses_questions_it_cannot_answer() {
    let fleet = TestFleet::start(4).await;
    let dir = tempfile::tempdir().unwrap();
    let index = Arc::new(Index::open(&dir.path().join("index.redb")).unwrap());
    index.note_unreferenced("s3-blob", 1).unwrap();
    let gateway = support::start_gateway_guarded(fleet.map.clone(), Some(index)).await;
    let ask = |url: &str, body: Value| {
        support::user_http()
            .post(format!("{url}/v1/s3/known-blobs"))
            .json(&body)
            .send()
    };
    let answer = ask(&gateway.url, json!({"blobs": ["native", "s3-blob"]}))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.json::<Value>().await.unwrap(),
        json!({"known": ["s3-blob"]})
    );
    let too_many: Vec<String> = (0..1001).map(|i| format!("b{i}")).collect();
    let answer = ask(&gateway.url, json!({ "blobs": too_many }))
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer.text().await.unwrap().contains("at most 1000"));
    let answer = ask(&gateway.url, json!({"ids": []})).await.unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer.text().await.unwrap().contains("blobs"));
    // A body far past a thousand ids is refused before it is read whole.
    let flood = format!("{{\"blobs\": [\"{}\"]}}", "x".repeat(4 << 20));
    let answer = support::user_http()
        .post(format!("{}/v1/s3/known-blobs", gateway.url))
        .header("content-type", "application/json")
        .body(flood.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    let answer = support::user_http()
        .post(format!("{}/v1/s3/objects-of-blobs", gateway.url))
        .header("content-type", "application/json")
        .body(flood)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    // Without a token: refused.
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/s3/known-blobs", gateway.url))
        .json(&json!({"blobs": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    // A gateway without S3 cannot tell.
    let answer = ask(&fleet.gateway.url, json!({"blobs": ["native"]}))
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    assert!(answer.text().await.unwrap().contains("serves no S3"));
}

/// An operator's context for cluster `cluster` of `fleet` served by the
/// gateway at `gateway`, over a mocked API holding the cluster and no
/// Blobs; what it asks the API is recorded.
fn operator_of(
    fleet: &TestFleet,
    gateway: &str,
    cluster: &StorageCluster,
) -> (Arc<Context>, Recorded) {
    let endpoints = fleet
        .endpoints()
        .with_override("media-gateway", gateway.to_string());
    let (client, recorded) = no_blobs(api(Some(cluster), &[], &[])).serve();
    (
        Arc::new(test_context(client).with_endpoints(endpoints)),
        recorded,
    )
}

/// An object record of `blobs`, each 40,000 bytes.
fn record_of(blobs: &[&str]) -> ObjectRecord {
    serde_json::from_value(json!({
        "parts": blobs.iter().map(|b| json!({"blob": b, "size": 40_000})).collect::<Vec<_>>(),
        "size": 40_000 * blobs.len(), "etag": "e", "modified_ms": 2,
    }))
    .unwrap()
}

/// The cluster's status as the reconcile `seen` last wrote it.
fn status_written(seen: &[Seen]) -> Value {
    let patch = seen
        .iter()
        .rev()
        .find(|s| s.path == format!("{GROUP}/storageclusters/media/status"))
        .expect("a status written");
    let mut status = json!({});
    support::merge_patch(&mut status, &patch.body["status"]);
    status
}

/// Waits until node 0 of `fleet` has the commit of `id` (the gateway
/// answers after a quorum and commits the rest behind).
async fn committed_on_node_0(fleet: &TestFleet, id: &str) {
    let node = support::node_calls().node(&fleet.nodes[0].url);
    for _ in 0..200 {
        if node
            .state(&id.parse().unwrap())
            .await
            .unwrap()
            .state
            .commit
            .is_some()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("node 0 never got the commit of {id}");
}

#[tokio::test]
async fn with_s3_a_lost_blob_names_the_objects_it_held_in_the_status_and_one_event() {
    let mut fleet = TestFleet::start(4).await;
    let lost = stored_bytes(&fleet, vec![7u8; 40_000]).await;
    committed_on_node_0(&fleet, &lost).await;
    // Two keys hold the blob (one as a part among others); one key holds
    // another blob.
    let dir = tempfile::tempdir().unwrap();
    let index = Arc::new(Index::open(&dir.path().join("index.redb")).unwrap());
    for bucket in ["media", "logs"] {
        index.create_bucket(bucket, 1).unwrap();
    }
    let put = |bucket: &str, key: &str, blobs: &[&str]| {
        index
            .put_object(bucket, key, &record_of(blobs), &Default::default(), 2)
            .unwrap()
    };
    put("media", "film", &[&lost]);
    put("media", "poster", &["another-blob"]);
    put("logs", "day one", &["another-blob", &lost]);
    let index_again = index.clone();
    let gateway = support::start_gateway_guarded(fleet.map.clone(), Some(index)).await;
    // Three of four volumes lost: one shard holds the blob, p is 2.
    for node in 1..4 {
        fleet.wipe_node(node).await;
    }
    let c = cluster_with_s3();
    let (ctx, recorded) = operator_of(&fleet, &gateway.url, &c);
    reconcile_cluster(Arc::new(c.clone()), ctx.clone())
        .await
        .unwrap();
    let seen = recorded.take();
    let status = status_written(&seen);
    assert_eq!(status["blobs"]["lost"], 1, "{status:#}");
    assert_eq!(status["lostBlobs"], json!([lost]));
    assert_eq!(status["lostObjects"], json!(["logs/day one", "media/film"]));
    let degraded = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap();
    assert_eq!(degraded["reason"], "BlobsLost");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("nor the S3 objects they hold: logs/day one, media/film"),
        "{degraded:#}"
    );
    let told: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path.ends_with("/events") && s.body["reason"] == "ObjectsLost")
        .collect();
    assert_eq!(told.len(), 1, "{:?}", events(&seen));
    assert_eq!(told[0].body["type"], "Warning");
    let note = told[0].body["note"].as_str().unwrap();
    assert!(
        note.contains(&format!(
            "logs/day one (blob {lost}), media/film (blob {lost})"
        )),
        "{note}"
    );

    // Asked once per set of Lost blobs: with the gateway gone, the next
    // reconcile still names them, and tells nobody again.
    drop(gateway);
    reconcile_cluster(Arc::new(c.clone()), ctx).await.unwrap();
    let seen = recorded.take();
    assert!(!events(&seen).contains(&"ObjectsLost".to_string()));
    assert_eq!(
        status_written(&seen)["lostObjects"],
        json!(["logs/day one", "media/film"])
    );

    // A new operator process (a restart, another leader) does not tell
    // again what the status already lists.
    let gateway = support::start_gateway_guarded(fleet.map.clone(), Some(index_again)).await;
    let mut listed = c.clone();
    listed.status.as_mut().unwrap().lost_objects = vec!["media/film".into()];
    let (ctx, recorded) = operator_of(&fleet, &gateway.url, &listed);
    reconcile_cluster(Arc::new(listed), ctx).await.unwrap();
    let seen = recorded.take();
    let told: Vec<&str> = seen
        .iter()
        .filter(|s| s.path.ends_with("/events") && s.body["reason"] == "ObjectsLost")
        .map(|s| s.body["note"].as_str().unwrap())
        .collect();
    assert_eq!(told.len(), 1, "{:?}", events(&seen));
    assert!(told[0].contains("the bytes of 1 S3 objects"), "{}", told[0]);
    assert!(told[0].contains("logs/day one") && !told[0].contains("media/film"));
}

#[tokio::test]
async fn the_gateway_names_the_keys_holding_asked_blobs_and_refuses_questions_it_cannot_answer() {
    let fleet = TestFleet::start(4).await;
    let dir = tempfile::tempdir().unwrap();
    let index = Arc::new(Index::open(&dir.path().join("index.redb")).unwrap());
    index.create_bucket("media", 1).unwrap();
    index
        .put_object("media", "a", &record_of(&["x"]), &Default::default(), 2)
        .unwrap();
    index
        .put_object(
            "media",
            "b",
            &record_of(&["y", "x"]),
            &Default::default(),
            2,
        )
        .unwrap();
    let gateway = support::start_gateway_guarded(fleet.map.clone(), Some(index)).await;
    let ask = |url: &str, body: Value| {
        support::user_http()
            .post(format!("{url}/v1/s3/objects-of-blobs"))
            .json(&body)
            .send()
    };
    let answer = ask(&gateway.url, json!({"blobs": ["x"], "limit": 10}))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.json::<Value>().await.unwrap(),
        json!({"objects": [
            {"bucket": "media", "key": "a", "blob": "x"},
            {"bucket": "media", "key": "b", "blob": "x"},
        ], "truncated": false})
    );
    let answer = ask(&gateway.url, json!({"blobs": ["x"], "limit": 1}))
        .await
        .unwrap();
    assert_eq!(answer.json::<Value>().await.unwrap()["truncated"], true);
    // The rest, after the last key of that answer.
    let answer = ask(
        &gateway.url,
        json!({"blobs": ["x"], "limit": 1, "after": "media/a"}),
    )
    .await
    .unwrap();
    assert_eq!(
        answer.json::<Value>().await.unwrap(),
        json!({"objects": [{"bucket": "media", "key": "b", "blob": "x"}], "truncated": false})
    );
    // A bounded scan says where to resume.
    let answer = ask(
        &gateway.url,
        json!({"blobs": ["y"], "limit": 10, "most_records": 1}),
    )
    .await
    .unwrap();
    assert_eq!(
        answer.json::<Value>().await.unwrap(),
        json!({"objects": [], "truncated": false, "resume_after": "media/a"})
    );
    let answer = ask(
        &gateway.url,
        json!({"blobs": ["y"], "limit": 10, "most_records": 1, "after": "media/a"}),
    )
    .await
    .unwrap();
    assert_eq!(
        answer.json::<Value>().await.unwrap(),
        json!({"objects": [{"bucket": "media", "key": "b", "blob": "y"}], "truncated": false, "resume_after": "media/b"})
    );
    let too_many: Vec<String> = (0..1001).map(|i| format!("b{i}")).collect();
    for (body, complaint) in [
        (json!({"blobs": too_many, "limit": 1}), "at most 1000"),
        (
            json!({"blobs": ["x"], "limit": 0}),
            "limit 0 is out of range",
        ),
        (
            json!({"blobs": ["x"], "limit": 1001}),
            "limit 1001 is out of range",
        ),
        (json!({"blobs": ["x"]}), "the body must be"),
        (
            json!({"blobs": ["x"], "limit": 1, "most_records": 0}),
            "most_records 0 reads nothing",
        ),
        (
            json!({"blobs": ["x"], "limit": 1, "after": "no-slash"}),
            "is not bucket/key",
        ),
    ] {
        let answer = ask(&gateway.url, body).await.unwrap();
        assert_eq!(answer.status(), 400);
        let text = answer.text().await.unwrap();
        assert!(text.contains(complaint), "{text}");
    }
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/s3/objects-of-blobs", gateway.url))
        .json(&json!({"blobs": ["x"], "limit": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    let answer = ask(&fleet.gateway.url, json!({"blobs": ["x"], "limit": 1}))
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    assert!(answer.text().await.unwrap().contains("serves no S3"));
}
