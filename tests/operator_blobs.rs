//! The Blob reconciler against a mocked Kubernetes API, with real storage
//! nodes and a real gateway in-process: ingest from each kind of source,
//! refusals that store nothing, health from the node inventories, and the
//! finalizer that deletes slivers (and never blocks when the cluster is gone).

mod support;

use std::sync::Arc;

use redstuff::operator::blob_controller::{reconcile_blob, BLOB_FINALIZER};
use redstuff::operator::context::{Context, Endpoints};
use redstuff::operator::controller::reconcile_cluster;
use redstuff::operator::crd::{
    Blob, BlobHealth, BlobSource, BlobSpec, BlobStatus, KeySource, UploadSource, UrlSource,
};
use redstuff::operator::ingest;
use redstuff::operator::upload_records::{upload_record_name, RECORDED_BY_ANNOTATION};
use serde_json::{json, Value};
use sha2::Digest;
use support::blob_cluster::{
    api, cluster, cluster_with_s3, events, no_blobs, stored_bytes, test_context, GROUP, NS,
};
use support::{lines, serve_bytes, MockApi, Seen, TestFleet};

#[path = "operator_blobs/url_sources.rs"]
mod url_sources;

fn blob(name: &str, source: BlobSource) -> Blob {
    let mut b = Blob::new(
        name,
        BlobSpec {
            cluster: "media".into(),
            source,
        },
    );
    b.metadata.namespace = Some("storage".into());
    b.metadata.uid = Some(format!("uid-{name}"));
    b.metadata.generation = Some(1);
    b.metadata.finalizers = Some(vec![BLOB_FINALIZER.into()]);
    b
}

fn config_map_source() -> BlobSource {
    BlobSource {
        config_map_key: Some(KeySource {
            name: "settings".into(),
            key: "model.json".into(),
        }),
        ..BlobSource::default()
    }
}

fn status_patches(seen: &[Seen], name: &str) -> Vec<Value> {
    seen.iter()
        .filter(|s| s.path == format!("{GROUP}/blobs/{name}/status"))
        .map(|s| {
            let mut status = json!({});
            support::merge_patch(&mut status, &s.body["status"]);
            status
        })
        .collect()
}

fn condition<'a>(status: &'a Value, type_: &str) -> (&'a str, &'a str) {
    let c = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap();
    (c["status"].as_str().unwrap(), c["reason"].as_str().unwrap())
}

async fn run(api: MockApi, endpoints: Endpoints, blob: &Blob) -> (Vec<Seen>, Arc<Context>) {
    let (client, recorded) = api.serve();
    let ctx = Arc::new(test_context(client).with_endpoints(endpoints));
    reconcile_blob(Arc::new(blob.clone()), ctx.clone())
        .await
        .unwrap();
    (recorded.take(), ctx)
}

#[tokio::test]
async fn a_new_blob_gets_the_finalizer_before_anything_else() {
    let mut b = blob("weights", config_map_source());
    b.metadata.finalizers = None;
    let (seen, _) = run(api(Some(&cluster(4)), &[&b], &[]), Endpoints::default(), &b).await;
    assert_eq!(lines(&seen), vec![format!("PATCH {GROUP}/blobs/weights")]);
    assert_eq!(seen[0].content_type, "application/json-patch+json");
    assert!(seen[0].body.to_string().contains(BLOB_FINALIZER));
}

#[tokio::test]
async fn a_config_map_key_is_stored_through_the_gateway_and_its_health_comes_from_the_inventories()
{
    let fleet = TestFleet::start(4).await;
    let content = "{\"layers\": 32}\n".repeat(2000);
    let c = cluster(4);
    let b = blob("weights", config_map_source());
    let mock = api(Some(&c), &[&b], &[settings(&content)]);
    let (client, recorded) = mock.clone().serve();
    let ctx = Arc::new(test_context(client).with_endpoints(fleet.endpoints()));
    reconcile_blob(Arc::new(b.clone()), ctx.clone())
        .await
        .unwrap();
    let seen = recorded.take();
    let statuses = status_patches(&seen, "weights");
    assert_eq!(condition(&statuses[0], "Ingested"), ("False", "Ingesting"));
    let stored = statuses.last().unwrap();
    assert_eq!(condition(stored, "Ingested"), ("True", "Stored"));
    let id = stored["blobId"].as_str().unwrap().to_string();
    assert!(events(&seen).contains(&"Ingested".to_string()));
    assert!(fleet.held().await.iter().all(|held| held.contains(&id)));
    let bytes = read_back(&fleet, &id).await;
    assert_eq!(
        bytes,
        content.as_bytes(),
        "the bytes read back are the source"
    );

    // The cluster controller reads the inventories; the Blob then shows them.
    reconcile_cluster(Arc::new(c), ctx.clone()).await.unwrap();
    let cluster_requests = lines(&recorded.take());
    assert!(
        !cluster_requests
            .iter()
            .any(|l| l.contains("/blobs/media-upload-")),
        "a blob its Blob names is not recorded again: {cluster_requests:#?}"
    );
    let mut ingested = b.clone();
    ingested.status = Some(serde_json::from_value(stored.clone()).unwrap());
    reconcile_blob(Arc::new(ingested), ctx.clone())
        .await
        .unwrap();
    let seen = recorded.take();
    let status = status_patches(&seen, "weights").pop().unwrap();
    assert_eq!(status["health"], "Healthy", "{status:#}");
    assert_eq!(status["shards"], "4/4");
    assert_eq!(status["size"], content.len());
    assert_eq!(condition(&status, "Healthy"), ("True", "AllShardsValid"));
    assert!(events(&seen).contains(&"BlobHealthy".to_string()));
}

/// The settings ConfigMap holding `content`, for `config_map_source`.
fn settings(content: &str) -> (String, Value) {
    (
        format!("{NS}/configmaps/settings"),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "storage"},
            "data": {"model.json": content}
        }),
    )
}

/// Reconciles Blob `b` of `cluster(4)` on `fleet` once with every status
/// write after the "Ingesting" one failing: the ingest stores its bytes,
/// its status never names them. The context, holding what it stored,
/// and the id the fleet holds.
async fn ingest_whose_status_write_fails(fleet: &TestFleet, b: &Blob) -> (Arc<Context>, String) {
    let mut mock = api(Some(&cluster(4)), &[b], &[settings("{\"layers\": 32}\n")]);
    mock.status_writes_before_failing = Some(1);
    let (client, recorded) = mock.serve();
    let ctx = Arc::new(test_context(client).with_endpoints(fleet.endpoints()));
    let failed = reconcile_blob(Arc::new(b.clone()), ctx.clone()).await;
    assert!(failed.is_err(), "the status write failed: {failed:?}");
    assert!(events(&recorded.take()).contains(&"Ingested".to_string()));
    let held = fleet.held().await;
    assert_eq!(held[0].len(), 1, "stored: {held:?}");
    let id = held[0].iter().next().unwrap().clone();
    (ctx, id)
}

/// A new operator context on `api` that remembers what `before` stored.
fn same_process(
    before: &Context,
    api: MockApi,
    fleet: &TestFleet,
) -> (Arc<Context>, support::Recorded) {
    let (client, recorded) = api.serve();
    let mut ctx = test_context(client).with_endpoints(fleet.endpoints());
    ctx.stored_ingests = before.stored_ingests.clone();
    ctx.written_statuses = before.written_statuses.clone();
    (Arc::new(ctx), recorded)
}

#[tokio::test]
async fn an_ingest_whose_status_write_failed_is_named_next_time_without_fetching_again_and_is_never_taken_for_an_upload(
) {
    let fleet = TestFleet::start(4).await;
    let b = blob("weights", config_map_source());
    let (ctx, id) = ingest_whose_status_write_fails(&fleet, &b).await;

    // No Blob names the blob, yet it is the ingest's: no upload record.
    let (cluster_ctx, recorded) = same_process(&ctx, api(Some(&cluster(4)), &[&b], &[]), &fleet);
    reconcile_cluster(Arc::new(cluster(4)), cluster_ctx)
        .await
        .unwrap();
    let requests = lines(&recorded.take());
    assert!(
        !requests.iter().any(|l| l.contains("/blobs/media-upload-")),
        "{requests:#?}"
    );
    // A process that does not remember it takes it for an upload.
    let (client, recorded) = api(Some(&cluster(4)), &[&b], &[]).serve();
    let forgetful = Arc::new(test_context(client).with_endpoints(fleet.endpoints()));
    reconcile_cluster(Arc::new(cluster(4)), forgetful)
        .await
        .unwrap();
    assert!(lines(&recorded.take())
        .iter()
        .any(|l| l.contains("/blobs/media-upload-")));

    // The next reconcile writes the id; the source is not read again.
    let (ctx, recorded) = same_process(&ctx, api(Some(&cluster(4)), &[&b], &[]), &fleet);
    reconcile_blob(Arc::new(b.clone()), ctx.clone())
        .await
        .unwrap();
    let seen = recorded.take();
    let status = status_patches(&seen, "weights").pop().unwrap();
    assert_eq!(status["blobId"], json!(id));
    assert_eq!(condition(&status, "Ingested"), ("True", "Stored"));
    assert!(
        !lines(&seen).iter().any(|l| l.contains("/configmaps/")),
        "fetched again: {:#?}",
        lines(&seen)
    );
    assert_eq!(ctx.stored_ingests.of("uid-weights"), None, "named now");
}

/// Reconciles Blob `b` of `cluster(4)` on `fleet` once, its ingest
/// succeeding: the context and the id its status names.
async fn ingested(fleet: &TestFleet, b: &Blob) -> (Arc<Context>, String) {
    let mock = api(Some(&cluster(4)), &[b], &[settings("{\"layers\": 32}\n")]);
    let (client, recorded) = mock.serve();
    let ctx = Arc::new(test_context(client).with_endpoints(fleet.endpoints()));
    reconcile_blob(Arc::new(b.clone()), ctx.clone())
        .await
        .unwrap();
    let status = status_patches(&recorded.take(), "weights").pop().unwrap();
    let id = status["blobId"].as_str().expect("stored").to_string();
    (ctx, id)
}

#[tokio::test]
async fn a_reconcile_reading_a_blob_from_a_cache_that_trails_its_status_write_does_not_ingest_again(
) {
    // A Blob's status write wakes its reconcile again at once, and the
    // watch cache may still hold the Blob as it was before the ingest.
    let fleet = TestFleet::start(4).await;
    let b = blob("weights", config_map_source());
    let (ctx, id) = ingested(&fleet, &b).await;
    let (again, recorded) = same_process(
        &ctx,
        api(Some(&cluster(4)), &[&b], &[settings("changed")]),
        &fleet,
    );
    reconcile_blob(Arc::new(b.clone()), again).await.unwrap();
    let requests = recorded.take();
    let seen = lines(&requests);
    assert!(
        !seen.iter().any(|l| l.contains("/configmaps/")),
        "fetched again: {seen:#?}"
    );
    assert!(
        status_patches(&requests, "weights").is_empty(),
        "the status written is the newest: {seen:#?}"
    );
    let held = fleet.held().await;
    assert!(
        held.iter().all(|h| h.len() == 1 && h.contains(&id)),
        "stored again: {held:?}"
    );
}

#[tokio::test]
async fn a_failed_ingest_is_not_tried_again_early_by_a_reconcile_reading_a_cache_that_trails() {
    let b = blob("weights", config_map_source());
    let (client, recorded) = api(Some(&cluster(4)), &[&b], &[]).serve();
    let ctx = Arc::new(test_context(client));
    reconcile_blob(Arc::new(b.clone()), ctx.clone())
        .await
        .unwrap();
    let failed = status_patches(&recorded.take(), "weights").pop().unwrap();
    assert!(failed["nextIngestAttempt"].is_string(), "{failed:#}");
    let (client, recorded) = api(Some(&cluster(4)), &[&b], &[]).serve();
    let mut again = test_context(client);
    again.written_statuses = ctx.written_statuses.clone();
    reconcile_blob(Arc::new(b.clone()), Arc::new(again))
        .await
        .unwrap();
    let seen = lines(&recorded.take());
    assert!(
        !seen.iter().any(|l| l.contains("/configmaps/")),
        "tried again before its next attempt: {seen:#?}"
    );
}

#[tokio::test]
async fn a_blob_deleted_while_it_ingests_deletes_what_it_stored_though_the_cache_trails() {
    let fleet = TestFleet::start(4).await;
    let b = blob("weights", config_map_source());
    let (ctx, id) = ingested(&fleet, &b).await;
    deleting_it_deletes(&fleet, &ctx, &b, &id).await;
}

/// Reconciles `b`, being deleted, in the process of `ctx`: the fleet no
/// longer holds `id`.
async fn deleting_it_deletes(fleet: &TestFleet, ctx: &Context, b: &Blob, id: &str) {
    let gone = being_deleted(b);
    let (ctx, recorded) = same_process(ctx, api(Some(&cluster(4)), &[&gone], &[]), fleet);
    reconcile_blob(Arc::new(gone), ctx.clone()).await.unwrap();
    assert!(
        fleet.held().await.iter().all(|h| !h.contains(id)),
        "its bytes were left"
    );
    assert!(events(&recorded.take()).contains(&"SliversDeleted".to_string()));
}

/// `b` with a deletion timestamp.
fn being_deleted(b: &Blob) -> Blob {
    let mut gone = b.clone();
    gone.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    gone
}

/// A stand-in for the gateway at `gateway` that passes every request on
/// and gives its answer `delay` after the gateway gave it; its URL.
async fn gateway_answering_late(gateway: String, delay: std::time::Duration) -> String {
    let http = support::user_http();
    let forward = move |request: axum::extract::Request| {
        let (http, gateway) = (http.clone(), gateway.clone());
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let answer = http
                .request(parts.method, format!("{gateway}{}", parts.uri))
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = answer.status();
            let headers = answer.headers().clone();
            let body = answer.bytes().await.unwrap();
            tokio::time::sleep(delay).await;
            (status, headers, body)
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(forward);
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_blob_deleted_while_its_upload_runs_lets_the_upload_end_and_deletes_what_it_stored() {
    let fleet = TestFleet::start(4).await;
    let b = blob("weights", config_map_source());
    // The API server holds it deleted from the start, the reconcile took
    // it from before; the gateway stores the bytes and answers 2 s later,
    // while the ingest asks every 100 ms whether its Blob is being deleted.
    let late =
        gateway_answering_late(fleet.gateway.url.clone(), std::time::Duration::from_secs(2)).await;
    let mock = api(
        Some(&cluster(4)),
        &[&being_deleted(&b)],
        &[settings("{\"layers\": 32}\n")],
    );
    let (client, recorded) = mock.serve();
    let mut ctx =
        test_context(client).with_endpoints(fleet.endpoints().with_override("media-gateway", late));
    ctx.deletion_poll = std::time::Duration::from_millis(100);
    let ctx = Arc::new(ctx);
    reconcile_blob(Arc::new(b.clone()), ctx.clone())
        .await
        .unwrap();
    let seen = events(&recorded.take());
    assert!(seen.contains(&"Ingested".to_string()), "{seen:?}");
    let held = fleet.held().await;
    assert_eq!(held[0].len(), 1, "stored: {held:?}");
    let id = held[0].iter().next().unwrap().clone();
    deleting_it_deletes(&fleet, &ctx, &b, &id).await;
}

#[tokio::test]
async fn a_blob_deleted_before_its_status_named_what_its_ingest_stored_deletes_it() {
    let fleet = TestFleet::start(4).await;
    let b = blob("weights", config_map_source());
    let (ctx, id) = ingest_whose_status_write_fails(&fleet, &b).await;
    deleting_it_deletes(&fleet, &ctx, &b, &id).await;
}

#[tokio::test]
async fn an_ingest_whose_gateway_stops_answering_fails_after_the_stall_time_and_holds_nothing() {
    // Connections are taken (the kernel's backlog) but nothing is read or
    // answered, as of a stopped gateway process.
    let stopped = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gateway = format!("http://{}", stopped.local_addr().unwrap());
    let b = blob("weights", config_map_source());
    let content = "{\"layers\": 32}\n".repeat(2000);
    let (client, recorded) = api(Some(&cluster(4)), &[&b], &[settings(&content)]).serve();
    let ctx = Arc::new(
        test_context(client)
            .with_endpoints(Endpoints::default().with_override("media-gateway", gateway))
            .with_ingest_stall(std::time::Duration::from_secs(1)),
    );
    let reconciled = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        reconcile_blob(Arc::new(b.clone()), ctx.clone()),
    )
    .await
    .expect("the ingest is not held for ever");
    reconciled.unwrap();
    let status = status_patches(&recorded.take(), "weights").pop().unwrap();
    let (state, reason) = condition(&status, "Ingested");
    assert_eq!((state, reason), ("False", "GatewayFailed"), "{status:#}");
    let message = status["conditions"].to_string();
    // Taking no bytes or giving no answer, by how much the kernel buffers.
    assert!(
        message.contains("no bytes of the upload for 1 s") || message.contains("no answer for 1 s"),
        "{message}"
    );
    // Its slot, and the cluster's deletes, are free again; upload records
    // wait, as the gateway may have stored the bytes all the same.
    let key = ("storage".to_string(), "media".to_string());
    assert_eq!(
        ctx.ingest_slots.available_permits(),
        ctx.max_concurrent_ingests
    );
    assert!(ctx.uploads_in_flight.delete(&key).is_some());
    assert_eq!(ctx.uploads_in_flight.none_in_flight(&key), None);
    drop(stopped);
}

#[tokio::test]
async fn a_url_is_downloaded_checked_against_its_digest_and_stored() {
    let fleet = TestFleet::start(4).await;
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let digest = redstuff::hex::encode(&sha2::Sha256::digest(&body));
    let (url, _stop) = serve_bytes(body.clone()).await;
    let b = blob(
        "dataset",
        BlobSource {
            url: Some(UrlSource {
                url,
                sha256: Some(digest),
            }),
            ..BlobSource::default()
        },
    );
    let (seen, _) = run(api(Some(&cluster(4)), &[&b], &[]), fleet.endpoints(), &b).await;
    let stored = status_patches(&seen, "dataset").pop().unwrap();
    assert_eq!(condition(&stored, "Ingested"), ("True", "Stored"));
    let id = stored["blobId"].as_str().unwrap();
    assert!(fleet.held().await[0].contains(id));
    assert!(
        read_back(&fleet, id).await == body,
        "the bytes read back are the download"
    );
}

#[tokio::test]
async fn a_download_is_kept_through_a_failed_upload_and_the_next_attempt_does_not_download_again() {
    let fleet = TestFleet::start(4).await;
    let body: Vec<u8> = (0..400_000u32).map(|i| (i % 247) as u8).collect();
    let digest = redstuff::hex::encode(&sha2::Sha256::digest(&body));
    let source =
        support::serve_range_source(vec![("\"v1\"".into(), body.clone())], vec![], true).await;
    let mut b = url_blob("kept-download", source.url.clone(), Some(digest));
    b.metadata.uid = Some(format!("uid-kept-{}", std::process::id()));
    // The gateway is away: the download arrives whole, the upload fails.
    let away = fleet
        .endpoints()
        .with_override("media-gateway", "http://127.0.0.1:9");
    let (seen, _) = run(api(Some(&cluster(4)), &[&b], &[]), away, &b).await;
    let failed = status_patches(&seen, "kept-download").pop().unwrap();
    assert_eq!(condition(&failed, "Ingested"), ("False", "GatewayFailed"));
    // The gateway is back: the kept download is stored, not fetched again.
    let (seen, ctx) = run(api(Some(&cluster(4)), &[&b], &[]), fleet.endpoints(), &b).await;
    let stored = status_patches(&seen, "kept-download").pop().unwrap();
    assert_eq!(condition(&stored, "Ingested"), ("True", "Stored"));
    assert_eq!(source.asked.lock().unwrap().len(), 1, "downloaded once");
    let id = stored["blobId"].as_str().unwrap();
    assert!(read_back(&fleet, id).await == body);
    let kept = std::fs::read_dir(&ctx.spool_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("uid-kept-"))
        .count();
    assert_eq!(kept, 0, "the kept download goes once stored");
}

#[tokio::test]
async fn sources_past_the_ingest_slots_wait_queued_and_fetch_nothing() {
    let fleet = TestFleet::start(4).await;
    let source =
        support::serve_range_source(vec![("\"v1\"".into(), vec![7; 1000])], vec![], true).await;
    let b = url_blob("queued", source.url.clone(), None);
    let (client, recorded) = api(Some(&cluster(4)), &[&b], &[]).serve();
    let ctx = Arc::new(
        test_context(client)
            .with_endpoints(fleet.endpoints())
            .with_max_concurrent_ingests(1),
    );
    // The one slot is taken (another Blob's source being fetched).
    let busy = ctx.ingest_slots.clone().try_acquire_owned().unwrap();
    reconcile_blob(Arc::new(b.clone()), ctx.clone())
        .await
        .unwrap();
    let queued = status_patches(&recorded.take(), "queued").pop().unwrap();
    assert_eq!(condition(&queued, "Ingested"), ("False", "Queued"));
    assert!(source.asked.lock().unwrap().is_empty(), "nothing fetched");
    // The slot comes free: the source is fetched and stored.
    drop(busy);
    reconcile_blob(Arc::new(b.clone()), ctx.clone())
        .await
        .unwrap();
    let stored = status_patches(&recorded.take(), "queued").pop().unwrap();
    assert_eq!(condition(&stored, "Ingested"), ("True", "Stored"));
}

#[tokio::test]
async fn a_url_whose_bytes_do_not_match_the_digest_stores_nothing() {
    let fleet = TestFleet::start(4).await;
    let (url, _stop) = serve_bytes(b"not the model you asked for".to_vec()).await;
    let b = blob(
        "dataset",
        BlobSource {
            url: Some(UrlSource {
                url,
                sha256: Some("0".repeat(64)),
            }),
            ..BlobSource::default()
        },
    );
    let (seen, _) = run(api(Some(&cluster(4)), &[&b], &[]), fleet.endpoints(), &b).await;
    let status = status_patches(&seen, "dataset").pop().unwrap();
    assert_eq!(
        condition(&status, "Ingested"),
        ("False", "ChecksumMismatch")
    );
    assert!(status.get("blobId").is_none());
    assert!(events(&seen).contains(&"IngestFailed".to_string()));
    assert!(fleet.held().await.iter().all(|held| held.is_empty()));
}

/// The notes of the Events of `reason`.
fn event_notes(seen: &[Seen], reason: &str) -> Vec<String> {
    seen.iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/events"))
        .filter(|s| s.body["reason"] == reason)
        .map(|s| s.body["note"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn url_blob(name: &str, url: String, sha256: Option<String>) -> Blob {
    blob(
        name,
        BlobSource {
            url: Some(UrlSource { url, sha256 }),
            ..BlobSource::default()
        },
    )
}

#[tokio::test]
async fn a_url_download_that_breaks_off_goes_on_where_it_stopped_and_stores_the_exact_bytes() {
    let fleet = TestFleet::start(4).await;
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = redstuff::hex::encode(&sha2::Sha256::digest(&body));
    // Cut after 300,000 bytes, then 200,000 bytes into the rest.
    let source = support::serve_range_source(
        vec![("\"v1\"".into(), body.clone())],
        vec![300_000, 200_000],
        true,
    )
    .await;
    let b = url_blob("dataset", source.url.clone(), Some(digest));
    let (seen, _) = run(api(Some(&cluster(4)), &[&b], &[]), fleet.endpoints(), &b).await;
    let stored = status_patches(&seen, "dataset").pop().unwrap();
    assert_eq!(condition(&stored, "Ingested"), ("True", "Stored"));
    let asked = source.asked.lock().unwrap().clone();
    let v1 = Some("\"v1\"".to_string());
    assert_eq!(
        asked,
        vec![
            (None, None),
            (Some("bytes=300000-".into()), v1.clone()),
            (Some("bytes=500000-".into()), v1),
        ],
        "each resume asks for the rest of the version first answered"
    );
    let id = stored["blobId"].as_str().unwrap();
    assert!(
        read_back(&fleet, id).await == body,
        "the bytes read back are the source's, not a splice"
    );
    let notes = event_notes(&seen, "Ingested");
    assert!(
        notes.iter().any(|n| n.contains("broke off 2 times")),
        "{notes:?}"
    );
}

#[tokio::test]
async fn a_url_that_changes_while_its_download_is_broken_off_is_not_spliced_and_stores_nothing() {
    let fleet = TestFleet::start(4).await;
    let old: Vec<u8> = vec![1; 400_000];
    let new: Vec<u8> = vec![2; 400_000];
    // No digest in the spec: only the version keeps the halves apart.
    let source = support::serve_range_source(
        vec![("\"old\"".into(), old), ("\"new\"".into(), new)],
        vec![100_000],
        true,
    )
    .await;
    let b = url_blob("dataset", source.url.clone(), None);
    let (seen, _) = run(api(Some(&cluster(4)), &[&b], &[]), fleet.endpoints(), &b).await;
    let status = status_patches(&seen, "dataset").pop().unwrap();
    assert_eq!(condition(&status, "Ingested"), ("False", "DownloadFailed"));
    assert!(status.get("blobId").is_none());
    let notes = event_notes(&seen, "IngestFailed");
    assert!(notes.iter().any(|n| n.contains("changed")), "{notes:?}");
    assert_eq!(source.asked.lock().unwrap().len(), 2);
    assert!(fleet.held().await.iter().all(|held| held.is_empty()));
}

#[tokio::test]
async fn a_url_whose_server_offers_no_ranges_fails_when_it_breaks_off_and_stores_nothing() {
    let fleet = TestFleet::start(4).await;
    let source = support::serve_range_source(
        vec![("\"v1\"".into(), vec![3; 400_000])],
        vec![100_000],
        false,
    )
    .await;
    let b = url_blob("dataset", source.url.clone(), None);
    let (seen, _) = run(api(Some(&cluster(4)), &[&b], &[]), fleet.endpoints(), &b).await;
    let status = status_patches(&seen, "dataset").pop().unwrap();
    assert_eq!(condition(&status, "Ingested"), ("False", "DownloadFailed"));
    let notes = event_notes(&seen, "IngestFailed");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("offers no resumable range")),
        "{notes:?}"
    );
    assert_eq!(
        source.asked.lock().unwrap().len(),
        1,
        "asked once, never spliced"
    );
    assert!(fleet.held().await.iter().all(|held| held.is_empty()));
}

async fn download_with(
    source: &support::RangeSource,
    in_a_row: u32,
) -> Result<ingest::Downloaded, ingest::IngestError> {
    let dir = tempfile::tempdir().unwrap();
    ingest::download(
        &redstuff::http::client(),
        &source.url,
        None,
        1 << 30,
        &dir.path().join("spool"),
        &ingest::ResumePolicy {
            in_a_row,
            first_pause: std::time::Duration::from_millis(10),
        },
        &redstuff::operator::spool_room::SpoolRoom::new(None),
    )
    .await
}

#[tokio::test]
async fn a_download_fails_after_resumes_in_a_row_bring_nothing_and_a_resume_that_brings_bytes_starts_the_count_again(
) {
    let body = vec![5u8; 400_000];
    let stuck = support::serve_range_source(
        vec![("\"v1\"".into(), body.clone())],
        vec![100_000, 0, 0, 0],
        true,
    )
    .await;
    let err = download_with(&stuck, 2).await.unwrap_err();
    assert_eq!(err.reason(), "DownloadFailed");
    assert!(err.is_transient(), "the next attempt may do better");
    assert!(
        err.to_string()
            .contains("2 resumes in a row brought nothing"),
        "{err}"
    );
    assert_eq!(
        stuck.asked.lock().unwrap().len(),
        3,
        "asked once and resumed twice"
    );

    let halting = support::serve_range_source(
        vec![("\"v1\"".into(), body)],
        vec![100_000, 0, 50_000, 0],
        true,
    )
    .await;
    let downloaded = download_with(&halting, 2).await.unwrap();
    assert_eq!(
        downloaded,
        ingest::Downloaded {
            bytes: 400_000,
            resumes: 4
        }
    );
}

#[tokio::test]
async fn a_resumed_download_whose_rest_runs_past_the_announced_length_fails_and_writes_no_more() {
    let source = support::serve_overlong_rest_source(100_000).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let err = ingest::download(
        &redstuff::http::client(),
        &source.url,
        None,
        1 << 30,
        &spool,
        &ingest::ResumePolicy {
            in_a_row: 3,
            first_pause: std::time::Duration::from_millis(10),
        },
        &redstuff::operator::spool_room::SpoolRoom::new(None),
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "DownloadFailed", "{err}");
    assert!(err.to_string().contains("more than"), "{err}");
    assert_eq!(
        source.asked.lock().unwrap().len(),
        2,
        "asked for the rest once"
    );
    let written = std::fs::metadata(&spool).map(|m| m.len()).unwrap_or(0);
    assert!(
        written <= 100_000,
        "{written} bytes written for a 100000-byte source"
    );
}

/// A Blob `name` whose source is key `token` of Secret `secret`.
fn secret_blob(name: &str, secret: &str) -> Blob {
    blob(
        name,
        BlobSource {
            secret_key: Some(KeySource {
                name: secret.into(),
                key: "token".into(),
            }),
            ..BlobSource::default()
        },
    )
}

/// Secret `name` holding `token`, with `labels`.
fn secret(name: &str, token: &[u8], labels: Value) -> (String, Value) {
    use base64::Engine;
    (
        format!("{NS}/secrets/{name}"),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "storage", "labels": labels},
            "data": {"token": base64::engine::general_purpose::STANDARD.encode(token)}
        }),
    )
}

#[tokio::test]
async fn a_secret_is_a_blob_source_only_when_labelled_as_one() {
    let fleet = TestFleet::start(4).await;
    let offered = secret_blob("offered", "model-key");
    let labelled = secret(
        "model-key",
        b"weights key",
        json!({"redstuff.dev/blob-source": "true"}),
    );
    let (seen, _) = run(
        api(Some(&cluster(4)), &[&offered], &[labelled]),
        fleet.endpoints(),
        &offered,
    )
    .await;
    let stored = status_patches(&seen, "offered").pop().unwrap();
    assert_eq!(
        condition(&stored, "Ingested"),
        ("True", "Stored"),
        "{stored:#}"
    );
    let id = stored["blobId"].as_str().unwrap();
    assert_eq!(read_back(&fleet, id).await, &b"weights key"[..]);

    // The cluster's own token, a Secret nobody offered, is never read out.
    let taken = secret_blob("taken", "media-node-token");
    let unlabelled = secret("media-node-token", b"cluster secret", json!({}));
    let (seen, _) = run(
        api(Some(&cluster(4)), &[&taken], &[unlabelled]),
        fleet.endpoints(),
        &taken,
    )
    .await;
    let refused = status_patches(&seen, "taken").pop().unwrap();
    let (state, reason) = condition(&refused, "Ingested");
    assert_eq!(
        (state, reason),
        ("False", "SourceNotAllowed"),
        "{refused:#}"
    );
    assert!(refused.get("blobId").is_none());
    let notes = event_notes(&seen, "IngestFailed");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("redstuff.dev/blob-source=true")),
        "{notes:?}"
    );
    let held = fleet.held().await;
    assert!(
        held.iter().all(|h| h.len() == 1 && h.contains(id)),
        "stored: {held:?}"
    );
}

#[tokio::test]
async fn an_ingest_of_a_source_that_trickles_stops_once_its_blob_is_being_deleted() {
    // Ten bytes of a thousand, then nothing, the connection kept open.
    let trickle = axum::Router::new().route(
        "/blob",
        axum::routing::get(|| async {
            let first = futures_util::stream::iter([Ok::<_, std::io::Error>(
                bytes::Bytes::from_static(b"0123456789"),
            )]);
            let body = futures_util::StreamExt::chain(first, futures_util::stream::pending());
            (
                [(axum::http::header::CONTENT_LENGTH, "1000")],
                axum::body::Body::from_stream(body),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/blob", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, trickle).await });
    let b = url_blob("dataset", url, None);
    // The API server already holds it deleted; the reconcile began before.
    let deleting = being_deleted(&b);
    let (client, recorded) = api(Some(&cluster(4)), &[&deleting], &[]).serve();
    let mut ctx = test_context(client);
    ctx.deletion_poll = std::time::Duration::from_millis(200);
    let ctx = Arc::new(ctx);
    let reconciled = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        reconcile_blob(Arc::new(b), ctx.clone()),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the ingest held the reconcile, and the Blob's deletion, for ever: {:#?}",
            lines(&recorded.take())
        )
    });
    reconciled.unwrap();
    assert!(events(&recorded.take()).contains(&"IngestStopped".to_string()));
    assert_eq!(
        ctx.ingest_slots.available_permits(),
        ctx.max_concurrent_ingests,
        "its slot is free"
    );
}

#[tokio::test]
async fn a_missing_config_map_is_a_condition_not_a_crash() {
    let b = blob("weights", config_map_source());
    let (seen, _) = run(api(Some(&cluster(4)), &[&b], &[]), Endpoints::default(), &b).await;
    let status = status_patches(&seen, "weights").pop().unwrap();
    assert_eq!(condition(&status, "Ingested"), ("False", "SourceNotFound"));
}

#[tokio::test]
async fn a_failed_ingest_is_tried_again_only_when_its_next_attempt_is_due_whatever_reconciles_it() {
    let b = blob("weights", config_map_source());
    let (seen, _) = run(api(Some(&cluster(4)), &[&b], &[]), Endpoints::default(), &b).await;
    let failed = status_patches(&seen, "weights").pop().unwrap();
    let due = failed["nextIngestAttempt"]
        .as_str()
        .expect("a next attempt");
    let message = failed["conditions"][0]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("the next attempt is at {due}")),
        "{message}"
    );
    let fetched = |seen: &[Seen]| {
        seen.iter()
            .filter(|s| s.path.contains("/configmaps/"))
            .count()
    };
    assert_eq!(fetched(&seen), 1);

    // Its own status write (or the fleet's view) reconciles it again at
    // once: nothing is fetched and nothing written.
    let mut waiting = b.clone();
    waiting.status = Some(serde_json::from_value(failed.clone()).unwrap());
    let (seen, _) = run(
        api(Some(&cluster(4)), &[&waiting], &[]),
        Endpoints::default(),
        &waiting,
    )
    .await;
    assert_eq!(fetched(&seen), 0, "{:?}", lines(&seen));
    assert!(
        status_patches(&seen, "weights").is_empty(),
        "{:?}",
        lines(&seen)
    );
    assert!(events(&seen).is_empty(), "{:?}", events(&seen));

    // Once due, it is tried.
    let mut due_now = waiting.clone();
    due_now.status.as_mut().unwrap().next_ingest_attempt = Some("2020-01-01T00:00:00Z".into());
    let (seen, _) = run(
        api(Some(&cluster(4)), &[&due_now], &[]),
        Endpoints::default(),
        &due_now,
    )
    .await;
    assert_eq!(fetched(&seen), 1, "{:?}", lines(&seen));
}

#[tokio::test]
async fn a_blob_whose_cluster_does_not_exist_says_so() {
    let b = blob("weights", config_map_source());
    let (seen, _) = run(api(None, &[&b], &[]), Endpoints::default(), &b).await;
    let status = status_patches(&seen, "weights").pop().unwrap();
    assert_eq!(condition(&status, "Healthy"), ("False", "ClusterNotFound"));
    // Nothing is being fetched meanwhile, and the status does not say so.
    assert_eq!(condition(&status, "Ingested"), ("False", "ClusterNotFound"));
    assert!(!seen.iter().any(|s| s.path.contains("/configmaps/")));
}

/// Blob `id` read back through the fleet's gateway.
async fn read_back(fleet: &TestFleet, id: &str) -> bytes::Bytes {
    support::user_http()
        .get(format!("{}/v1/blobs/{id}", fleet.gateway.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
}

async fn stored_blob(fleet: &TestFleet) -> String {
    stored_bytes(fleet, vec![7u8; 50_000]).await
}

fn deleted(name: &str, id: &str) -> Blob {
    let mut b = blob(
        name,
        BlobSource {
            upload: Some(UploadSource { blob_id: id.into() }),
            ..BlobSource::default()
        },
    );
    b.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    b
}

#[tokio::test]
async fn deleting_a_blob_deletes_its_slivers_from_every_node_then_releases_it() {
    let fleet = TestFleet::start(4).await;
    let id = stored_blob(&fleet).await;
    assert!(fleet.held().await.iter().all(|h| h.contains(&id)));
    let b = deleted("upload", &id);
    let (seen, _) = run(api(Some(&cluster(4)), &[&b], &[]), fleet.endpoints(), &b).await;
    assert!(fleet.held().await.iter().all(|h| h.is_empty()));
    assert!(events(&seen).contains(&"SliversDeleted".to_string()));
    let release = seen.last().unwrap();
    assert_eq!(release.line(), format!("PATCH {GROUP}/blobs/upload"));
    assert!(
        release.body.to_string().contains("remove"),
        "{}",
        release.body
    );
}

/// The operator's record of upload `id`, owned by the cluster of uid
/// `owner`, being deleted.
fn deleted_record(id: &str, owner: &str) -> Blob {
    let mut record = deleted("media-upload-0707", id);
    record.metadata.annotations = Some(
        [(RECORDED_BY_ANNOTATION.to_string(), "operator".to_string())]
            .into_iter()
            .collect(),
    );
    record.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "redstuff.dev/v1alpha1".into(),
            kind: "StorageCluster".into(),
            name: "media".into(),
            uid: owner.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        },
    ]);
    record
}

/// Deletes `record` against `c` and a fleet holding its blob; the notes
/// of its Events and whether every node still holds the blob.
async fn delete_record(
    c: &redstuff::operator::crd::StorageCluster,
    owner: &str,
) -> (Vec<String>, bool) {
    let fleet = TestFleet::start(4).await;
    let id = stored_blob(&fleet).await;
    let record = deleted_record(&id, owner);
    let (seen, _) = run(api(Some(c), &[&record], &[]), fleet.endpoints(), &record).await;
    assert_eq!(
        seen.last().unwrap().line(),
        format!("PATCH {GROUP}/blobs/media-upload-0707"),
        "released"
    );
    let notes = seen
        .iter()
        .filter(|s| s.path.contains("/events"))
        .map(|s| format!("{}: {}", s.body["reason"], s.body["note"]))
        .collect();
    let held = fleet.held().await.iter().all(|h| h.contains(&id));
    (notes, held)
}

#[tokio::test]
async fn a_record_of_an_earlier_cluster_of_the_same_name_goes_and_leaves_its_blob_on_the_claims() {
    // The cluster was deleted and made again on the kept claims while the
    // operator was away; the garbage collector deletes the old records.
    let (notes, held) = delete_record(&cluster(4), "earlier-uid").await;
    assert!(held, "{notes:?}");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("SliversKept") && n.contains("was deleted")),
        "{notes:?}"
    );
}

#[tokio::test]
async fn the_records_of_a_cluster_being_deleted_go_and_leave_its_blobs_on_its_claims() {
    let mut c = cluster(4);
    c.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let (notes, held) = delete_record(&c, "c-uid").await;
    assert!(held, "{notes:?}");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("SliversKept") && n.contains("being deleted")),
        "{notes:?}"
    );
}

#[tokio::test]
async fn a_record_a_person_deletes_deletes_its_blob() {
    let (notes, held) = delete_record(&cluster(4), "c-uid").await;
    assert!(!held, "{notes:?}");
    assert!(
        notes.iter().any(|n| n.contains("SliversDeleted")),
        "{notes:?}"
    );
}

#[tokio::test]
async fn a_blob_another_blob_names_keeps_its_slivers_when_one_is_deleted() {
    let fleet = TestFleet::start(4).await;
    let id = stored_blob(&fleet).await;
    let going = deleted("first", &id);
    // The other comes after a full page of unrelated Blobs: Blobs are
    // listed a page at a time.
    let mut staying = deleted("zz-second", &id);
    staying.metadata.deletion_timestamp = None;
    let unrelated: Vec<Blob> = (0..500)
        .map(|i| {
            let mut b = deleted(
                &format!("other-{i:03}"),
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            );
            b.metadata.deletion_timestamp = None;
            b
        })
        .collect();
    let mut listed: Vec<&Blob> = vec![&going, &staying];
    listed.extend(&unrelated);
    let (seen, _) = run(
        api(Some(&cluster(4)), &listed, &[]),
        fleet.endpoints(),
        &going,
    )
    .await;
    let pages = seen
        .iter()
        .filter(|s| s.method == "GET" && s.path == format!("{GROUP}/blobs"))
        .count();
    assert_eq!(pages, 2, "{:#?}", lines(&seen));
    assert!(fleet.held().await.iter().all(|h| h.contains(&id)));
    assert!(events(&seen).contains(&"SliversKept".to_string()));
    assert_eq!(
        seen.last().unwrap().line(),
        format!("PATCH {GROUP}/blobs/first")
    );
}

#[tokio::test]
async fn a_blob_is_not_deleted_while_another_ingest_to_its_cluster_uploads_and_is_once_that_ends() {
    let fleet = TestFleet::start(4).await;
    let id = stored_blob(&fleet).await;
    let b = deleted("upload", &id);
    let (client, recorded) = api(Some(&cluster(4)), &[&b], &[]).serve();
    let ctx = Arc::new(test_context(client).with_endpoints(fleet.endpoints()));
    // Another Blob's ingest is uploading to the cluster: it may be storing
    // these very bytes, its Blob not naming them yet.
    let uploading = ctx
        .uploads_in_flight
        .begin(&("storage".to_string(), "media".to_string()))
        .await;
    let waiting = reconcile_blob(Arc::new(b.clone()), ctx.clone()).await;
    assert!(
        waiting
            .as_ref()
            .is_err_and(|e| e.to_string().contains("uploading")),
        "{waiting:?}"
    );
    assert!(fleet.held().await.iter().all(|h| h.contains(&id)));
    assert!(
        !recorded.take().iter().any(|s| s.method == "PATCH"),
        "the finalizer stays"
    );
    drop(uploading);
    reconcile_blob(Arc::new(b.clone()), ctx.clone())
        .await
        .unwrap();
    assert!(fleet.held().await.iter().all(|h| h.is_empty()));
    assert!(events(&recorded.take()).contains(&"SliversDeleted".to_string()));
}

#[tokio::test]
async fn a_blob_deleted_through_the_gateway_is_deleted_not_lost_and_the_operators_record_of_it_goes(
) {
    let fleet = TestFleet::start(4).await;
    let id = stored_blob(&fleet).await;
    let c = cluster(4);
    let healthy = |mut b: Blob| {
        b.status = Some(BlobStatus {
            blob_id: Some(id.clone()),
            health: Some(BlobHealth::Healthy),
            ..BlobStatus::default()
        });
        b.metadata.resource_version = Some("7".into());
        b
    };
    let source = BlobSource {
        upload: Some(UploadSource {
            blob_id: id.clone(),
        }),
        ..BlobSource::default()
    };
    let mut record = healthy(blob("upload-rec", source.clone()));
    record.metadata.annotations = Some(
        [(
            RECORDED_BY_ANNOTATION.to_string(),
            "operator: an upload through the gateway".to_string(),
        )]
        .into(),
    );
    let mine = healthy(blob("mine", source));

    let answer = support::user_http()
        .delete(format!("{}/v1/blobs/{id}", fleet.gateway.url))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
    let (client, recorded) = api(Some(&c), &[&record, &mine], &[]).serve();
    let ctx = Arc::new(test_context(client).with_endpoints(fleet.endpoints()));
    reconcile_cluster(Arc::new(c), ctx.clone()).await.unwrap();
    recorded.take();

    // The operator's record: Deleted, then removed without a cleanup.
    reconcile_blob(Arc::new(record), ctx.clone()).await.unwrap();
    let seen = recorded.take();
    let status = status_patches(&seen, "upload-rec").pop().unwrap();
    assert_eq!(status["health"], "Deleted", "{status:#}");
    assert_eq!(condition(&status, "Healthy"), ("False", "DeletedElsewhere"));
    let release = seen
        .iter()
        .find(|s| s.line() == format!("PATCH {GROUP}/blobs/upload-rec"))
        .expect("the finalizer is removed");
    assert_eq!(release.body["metadata"]["finalizers"], json!([]));
    // Guarded by the version its status write made (7 was read, the
    // write made 8): with the one read, the API server refuses it.
    assert_eq!(release.body["metadata"]["resourceVersion"], "8");
    assert!(lines(&seen).contains(&format!("DELETE {GROUP}/blobs/upload-rec")));
    let told = events(&seen);
    assert!(told.contains(&"BlobDeleted".to_string()), "{told:?}");
    assert!(
        told.contains(&"UploadRecordRemoved".to_string()),
        "{told:?}"
    );
    assert!(!told.contains(&"BlobLost".to_string()), "{told:?}");

    // A Blob a person made: Deleted, and it stays.
    reconcile_blob(Arc::new(mine), ctx).await.unwrap();
    let seen = recorded.take();
    let status = status_patches(&seen, "mine").pop().unwrap();
    assert_eq!(status["health"], "Deleted", "{status:#}");
    assert!(!lines(&seen).iter().any(|l| l.starts_with("DELETE")));
    assert!(!events(&seen).contains(&"BlobLost".to_string()));
}

#[tokio::test]
async fn with_s3_a_deleted_blob_is_deleted_through_the_gateway() {
    let fleet = TestFleet::start(4).await;
    let id = stored_blob(&fleet).await;
    let b = deleted("upload", &id);
    let (seen, _) = run(
        api(Some(&cluster_with_s3()), &[&b], &[]),
        fleet.endpoints(),
        &b,
    )
    .await;
    assert!(fleet.held().await.iter().all(|h| h.is_empty()));
    let note = seen
        .iter()
        .find(|s| s.path.contains("/events") && s.body["reason"] == "SliversDeleted")
        .map(|s| s.body["note"].to_string())
        .expect("an Event");
    assert!(note.contains("through the gateway"), "{note}");
    assert_eq!(
        seen.last().unwrap().line(),
        format!("PATCH {GROUP}/blobs/upload")
    );
}

#[tokio::test]
async fn with_s3_a_blob_the_gateway_will_not_delete_keeps_its_slivers_and_the_blob_is_released() {
    // The nodes hold the blob; the gateway refuses to delete it, as it does
    // while S3 keys refer to the bytes (tests/s3_clients.rs shows the real
    // gateway doing so).
    let fleet = TestFleet::start(4).await;
    let id = stored_blob(&fleet).await;
    let refusing = axum::Router::new().route(
        "/v1/blobs/{id}",
        axum::routing::delete(|| async {
            (
                axum::http::StatusCode::CONFLICT,
                axum::Json(
                    json!({"error": "blob X holds the bytes of 1 S3 objects or upload parts"}),
                ),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, refusing).await });
    let b = deleted("upload", &id);
    let (seen, _) = run(
        api(Some(&cluster_with_s3()), &[&b], &[]),
        fleet.endpoints().with_override("media-gateway", url),
        &b,
    )
    .await;
    assert!(fleet.held().await.iter().all(|h| h.contains(&id)));
    let kept = seen
        .iter()
        .find(|s| s.path.contains("/events") && s.body["reason"] == "SliversKept")
        .map(|s| s.body["note"].to_string())
        .expect("an Event");
    assert!(kept.contains("S3 objects"), "{kept}");
    assert_eq!(
        seen.last().unwrap().line(),
        format!("PATCH {GROUP}/blobs/upload")
    );
}

#[tokio::test]
async fn a_blob_whose_cluster_is_gone_is_released_at_once() {
    let b = deleted("orphan", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let (seen, _) = run(api(None, &[&b], &[]), Endpoints::default(), &b).await;
    assert_eq!(
        lines(&seen),
        vec![
            format!("GET {GROUP}/storageclusters/media"),
            format!("PATCH {GROUP}/blobs/orphan"),
        ]
    );
}

#[tokio::test]
async fn blobs_are_listed_a_page_at_a_time_and_an_upload_a_later_page_names_is_not_recorded_again()
{
    let fleet = TestFleet::start(4).await;
    let id = stored_blob(&fleet).await;
    let c = cluster(4);
    let upload = |blob_id: String| BlobSource {
        upload: Some(UploadSource { blob_id }),
        ..BlobSource::default()
    };
    // 600 Blobs naming other blobs, and the one naming the upload after them.
    let others: Vec<Blob> = (0..600)
        .map(|i| blob(&format!("a-{i:03}"), upload(format!("other-{i}"))))
        .collect();
    let named = blob("z-upload", upload(id.clone()));
    let listed: Vec<&Blob> = others.iter().chain([&named]).collect();
    let (client, recorded) = api(Some(&c), &listed, &[]).serve();
    let ctx = Arc::new(test_context(client).with_endpoints(fleet.endpoints()));
    reconcile_cluster(Arc::new(c), ctx).await.unwrap();
    let seen = recorded.take();
    let lists: Vec<&str> = seen
        .iter()
        .filter(|s| s.method == "GET" && s.path == format!("{GROUP}/blobs"))
        .map(|s| s.query.as_str())
        .collect();
    assert_eq!(lists.len(), 2, "two pages: {lists:?}");
    assert!(lists[0].contains("limit=500"), "{lists:?}");
    assert!(lists[1].contains("continue=500"), "{lists:?}");
    assert!(
        !lines(&seen)
            .iter()
            .any(|l| l.contains("/blobs/media-upload-")),
        "the upload z-upload names is not recorded again"
    );
}

#[tokio::test]
async fn an_upload_whose_record_name_another_blobs_record_holds_is_recorded_under_its_whole_id() {
    let fleet = TestFleet::start(4).await;
    let id = stored_blob(&fleet).await;
    let c = cluster(4);
    // The record of another blob whose id begins with the same 8 bytes.
    let short = upload_record_name("media", &id).unwrap();
    let mut other = blob(
        &short,
        BlobSource {
            upload: Some(UploadSource {
                blob_id: "another-blob-sharing-the-prefix".into(),
            }),
            ..BlobSource::default()
        },
    );
    other.metadata.annotations =
        Some([(RECORDED_BY_ANNOTATION.to_string(), "operator".to_string())].into());
    let (client, recorded) = api(Some(&c), &[&other], &[]).serve();
    let ctx = Arc::new(test_context(client).with_endpoints(fleet.endpoints()));
    reconcile_cluster(Arc::new(c), ctx).await.unwrap();
    let seen = recorded.take();
    let applied: Vec<&Seen> = seen
        .iter()
        .filter(|s| {
            s.method == "PATCH" && s.path.starts_with(&format!("{GROUP}/blobs/media-upload-"))
        })
        .collect();
    assert_eq!(applied.len(), 1, "{:#?}", lines(&seen));
    let whole = id.parse::<redstuff::codec::BlobId>().unwrap();
    assert_eq!(
        applied[0].path,
        format!(
            "{GROUP}/blobs/media-upload-{}",
            redstuff::hex::encode(whole.as_bytes())
        )
    );
    assert_eq!(
        applied[0].body["spec"]["source"]["upload"]["blobId"],
        id.as_str()
    );
}

#[tokio::test]
async fn a_cluster_that_does_not_record_uploads_neither_lists_nor_records_blobs() {
    let fleet = TestFleet::start(4).await;
    stored_blob(&fleet).await;
    let mut c = cluster(4);
    c.spec.record_uploads = Some(false);
    let (client, recorded) = no_blobs(api(Some(&c), &[], &[])).serve();
    let ctx = Arc::new(test_context(client).with_endpoints(fleet.endpoints()));
    reconcile_cluster(Arc::new(c.clone()), ctx.clone())
        .await
        .unwrap();
    let seen = lines(&recorded.take());
    assert!(
        !seen.iter().any(|l| l.contains(&format!("{GROUP}/blobs"))),
        "no Blob listed or recorded: {seen:#?}"
    );
    // The blob is still seen: the status counts it.
    let fleet_state = ctx
        .fleets
        .find(&("storage".to_string(), "media".to_string()))
        .expect("reconciled");
    let seen_blobs = fleet_state
        .view
        .lock()
        .unwrap()
        .as_ref()
        .map(|(_, v)| v.blobs.len());
    assert_eq!(seen_blobs, Some(1));

    // The same cluster recording uploads (the default) records it.
    c.spec.record_uploads = None;
    let (client, recorded) = no_blobs(api(Some(&c), &[], &[])).serve();
    let ctx = Arc::new(test_context(client).with_endpoints(fleet.endpoints()));
    reconcile_cluster(Arc::new(c), ctx).await.unwrap();
    assert!(lines(&recorded.take())
        .iter()
        .any(|l| l.contains("/blobs/media-upload-")));
}
