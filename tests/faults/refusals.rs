//! G2 and G4 driven deterministically: node processes answer the
//! gateway's markers and slivers, but a proxy in front of f + 1 of them
//! refuses one kind of call (a tombstone, a commit marker), so exactly
//! the shards behind the others take it.
//!
//! - A DELETE that lands on fewer than n - f shards answers 503 saying how
//!   many took it and to retry; once the nodes take tombstones again, the
//!   retry completes it (204) and the blob stays gone.
//! - A PUT whose commit every node refuses answers 503, is never visible,
//!   and its pieces are removed from every node.
//! - A PUT whose commit reaches fewer than n - f shards is decided all the
//!   same (a commit is never withdrawn): it answers 202 saying a read may
//!   not see it yet, the loop carries the commit to the others, and once a
//!   read saw it no later read misses it. Through S3, which promises
//!   read-after-write, such a PUT answers 503 and writes no key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dev_fleet::pseudo_random;
use crate::procs::{proxy, user_http, Cluster, Refusals};
use crate::{blob_id, bound, put_within, within_bound};

/// n = 7 nodes (f = 2, n - f = 5); the gateway reaches the first
/// `proxied` nodes through proxies sharing one set of refusals.
async fn cluster_with_proxies(proxied: usize) -> (Cluster, Arc<Refusals>, std::path::PathBuf) {
    let cluster = Cluster::start(7, "1");
    let refusals = Arc::new(Refusals::default());
    let mut urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
    for url in urls.iter_mut().take(proxied) {
        *url = proxy(url.clone(), refusals.clone()).await;
    }
    let map = cluster.write_map("proxied.json", &urls);
    (cluster, refusals, map)
}

/// Waits (bounded) until no node holds anything of `id` but a tombstone.
async fn until_no_pieces(cluster: &Cluster, id: &str) {
    let start = Instant::now();
    while !cluster.holders_of(id).is_empty() {
        assert!(
            start.elapsed() < crate::NO_HANG,
            "pieces of {id} stay on {:?}",
            cluster.holders_of(id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_lands_on_fewer_than_n_minus_f_shards_says_how_many_and_a_retry_completes_it()
{
    let (cluster, refusals, map) = cluster_with_proxies(3).await;
    let (_gateway, gateway) = cluster.gateway(&map, &[]);
    let deadline = Duration::from_secs(1);
    let http = user_http();
    let data = pseudo_random(1_200_000, 51);
    let response = http
        .put(format!("{gateway}/v1/blobs"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let id = blob_id(&data);
    assert_eq!(cluster.holders_of(&id).len(), 7);

    // Nodes 0-2 answer the markers but refuse tombstones: 4 shards take it.
    refusals.deletes(true);
    assert_delete_incomplete(
        "a DELETE refused by three nodes",
        bound(deadline, 2),
        &http,
        &gateway,
        &id,
    )
    .await;
    // The tombstones that landed stay: those four nodes dropped their
    // pieces, the refusing three kept theirs.
    assert_eq!(
        cluster.holders_of(&id),
        vec!["node-0", "node-1", "node-2"],
        "only the refusing nodes keep pieces"
    );

    // The nodes take tombstones again: the retry completes the delete.
    refusals.deletes(false);
    let response = within_bound(
        "the retried DELETE",
        bound(deadline, 2),
        http.delete(format!("{gateway}/v1/blobs/{id}")).send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 204);
    until_no_pieces(&cluster, &id).await;
    // And it stays gone: no read finds it, a second delete is a no-op 204.
    for _ in 0..3 {
        let get = http
            .get(format!("{gateway}/v1/blobs/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), 404);
        let head = http
            .head(format!("{gateway}/v1/blobs/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 404);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let again = http
        .delete(format!("{gateway}/v1/blobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 204);
    assert!(cluster.holders_of(&id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_commit_every_node_refuses_answers_503_is_never_visible_and_leaves_no_pieces() {
    let (cluster, refusals, map) = cluster_with_proxies(7).await;
    let (_gateway, gateway) = cluster.gateway(&map, &[]);
    let deadline = Duration::from_secs(1);
    let http = user_http();
    let data = pseudo_random(2_300_000, 52); // three segments
    let id = blob_id(&data);

    // Every node stages and stores its slivers, then refuses the commit
    // marker for the whole commit window (three deadlines).
    refusals.commits(true);
    let (status, body) = put_within(
        "a PUT whose commit every node refuses",
        bound(deadline, 5),
        &http,
        &gateway,
        &data,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["error"].as_str().unwrap(),
        "write not committed: every node refused the commit (5 shards needed); nothing was \
         committed",
        "{body}"
    );
    refusals.commits(false);

    // Never visible, and its pieces are gone from every node: the abort
    // removed them.
    until_no_pieces(&cluster, &id).await;
    for _ in 0..3 {
        for method in ["HEAD", "GET"] {
            let response = http
                .request(method.parse().unwrap(), format!("{gateway}/v1/blobs/{id}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 404, "{method} of a refused write");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let calls = redstuff::client::NodeCalls::new(
        redstuff::auth::TokenSet::single(crate::procs::CLUSTER_TOKEN),
        redstuff::client::Deadlines::from_secs(1.0),
    );
    for node in &cluster.nodes {
        let inventory = calls.node(&node.url).full_inventory().await.unwrap();
        assert!(
            inventory.blobs.iter().all(|b| b.id != id),
            "{} still lists {id}",
            node.name
        );
    }

    // Once the nodes take commits again, the same bytes store and read.
    let response = http
        .put(format!("{gateway}/v1/blobs"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let back = http
        .get(format!("{gateway}/v1/blobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 200);
    assert!(back.bytes().await.unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_commit_reaches_fewer_than_n_minus_f_shards_answers_202_and_once_read_is_never_missed(
) {
    use crate::dev_fleet::{all_healthy, DevFleet};
    // A real fleet with its control loop; a second gateway reaches nodes
    // 0-2 through proxies that refuse commit markers.
    let fleet = DevFleet::start(&["--node-timeout-secs", "1"]);
    fleet
        .wait_for("nodes ready", crate::dev_fleet::all_ready)
        .await;
    let (_gateway, gateway, refusals, _scratch) = gateway_behind_refusing_proxies(&fleet).await;
    let data = pseudo_random(1_700_000, 53);
    let id = blob_id(&data);
    refusals.commits(true);

    // A reader polls the fleet's own gateway while the PUT runs and after.
    let reader = {
        let (http, url) = (
            fleet.http.clone(),
            format!("{}/v1/blobs/{id}", fleet.gateway),
        );
        tokio::spawn(async move {
            let mut codes = Vec::new();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(8) {
                codes.push(http.head(&url).send().await.unwrap().status().as_u16());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            codes
        })
    };
    let (status, body) = put_within(
        "a PUT whose commit three nodes refuse",
        bound(Duration::from_secs(1), 5),
        &fleet.http,
        &gateway,
        &data,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["shards_committed"], 4);
    assert_eq!(
        body["note"].as_str().unwrap(),
        "stored durably, but the commit reached 4 of the 5 shards every read needs: a read may \
         answer 404 until the fleet carries the commit to the others",
        "{body}"
    );

    // The loop carries the commit to nodes 0-2: listed, Healthy, read
    // back exactly through either gateway.
    fleet
        .wait_for("the accepted blob healthy", |s| all_healthy(s, 1))
        .await;
    assert!(fleet.get(&id).await == data);
    let through_proxies = fleet
        .http
        .get(format!("{gateway}/v1/blobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(through_proxies.status(), 200);
    assert!(through_proxies.bytes().await.unwrap() == data);

    // Reads are monotonic: once one saw the blob, none missed it after.
    let codes = reader.await.unwrap();
    let first_seen = codes
        .iter()
        .position(|c| *c == 200)
        .expect("the reader saw the blob");
    assert!(
        codes[first_seen..].iter().all(|c| *c == 200),
        "a read missed the blob after one saw it: {codes:?}"
    );
    let metrics = fleet.metrics().await;
    assert!(
        metrics.contains("redstuff_markers_spread_total{marker=\"commit\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_put_whose_commit_reaches_fewer_than_n_minus_f_shards_is_refused_and_writes_no_key() {
    use std::io::BufRead as _;
    const ACCESS_KEY: &str = "PARTIALACCESSKEY";
    const SECRET_KEY: &str = "partial-secret-key";
    // A real fleet with its control loop; a second gateway, serving S3,
    // reaches nodes 0-2 through proxies that refuse commit markers.
    let fleet = crate::dev_fleet::DevFleet::start(&["--node-timeout-secs", "1"]);
    fleet
        .wait_for("nodes ready", crate::dev_fleet::all_ready)
        .await;
    let (mut args, refusals, scratch) = gateway_args_behind_refusing_proxies(&fleet).await;
    let index = scratch.path().join("s3-index.redb");
    args.extend(
        [
            "--s3-listen",
            "127.0.0.1:0",
            "--s3-index",
            index.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args(&args)
        .env("REDSTUFF_S3_ACCESS_KEY", ACCESS_KEY)
        .env("REDSTUFF_S3_SECRET_KEY", SECRET_KEY)
        .env("REDSTUFF_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let _gateway = crate::procs::Process(child);
    let s3 = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the gateway ended"
        );
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(url) = event["s3"].as_str() {
            break url.to_string();
        }
    };
    std::thread::spawn(move || stdout.lines().for_each(drop));
    let aws_bin = std::env::var("REDSTUFF_S3_CLIENTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/redstuff/s3-clients")
        })
        .join("bin/aws");
    let aws = |args: &[&str]| {
        std::process::Command::new(&aws_bin)
            .args(["--endpoint-url", &s3])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            // One attempt: the refusal itself is what is checked.
            .env("AWS_MAX_ATTEMPTS", "1")
            .current_dir(scratch.path())
            .output()
            .expect("the aws cli (scripts/s3-clients)")
    };
    let data = pseudo_random(1_300_000, 57);
    std::fs::write(scratch.path().join("data"), &data).unwrap();
    assert!(aws(&["s3", "mb", "s3://partial"]).status.success());

    refusals.commits(true);
    let refused = aws(&["s3", "cp", "--only-show-errors", "data", "s3://partial/k"]);
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(
        !refused.status.success(),
        "answered 200 for a commit on 4 of 5 shards"
    );
    assert!(
        said.contains("ServiceUnavailable") || said.contains("503"),
        "{said}"
    );
    let head = aws(&["s3api", "head-object", "--bucket", "partial", "--key", "k"]);
    assert!(!head.status.success(), "a key was written");
    assert!(String::from_utf8_lossy(&head.stderr).contains("Not Found"));

    // Once commits go through, the retry stores the key and it reads back.
    refusals.commits(false);
    let stored = aws(&["s3", "cp", "--only-show-errors", "data", "s3://partial/k"]);
    assert!(
        stored.status.success(),
        "{}",
        String::from_utf8_lossy(&stored.stderr)
    );
    let back = aws(&["s3", "cp", "--only-show-errors", "s3://partial/k", "back"]);
    assert!(
        back.status.success(),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
    assert!(std::fs::read(scratch.path().join("back")).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_refused_by_a_tombstone_its_quorum_read_missed_is_staged_above_it_and_survives_its_spread(
) {
    let (cluster, refusals, map) = cluster_with_proxies(1).await;
    let (_gateway, gateway) = cluster.gateway(&map, &[]);
    let http = user_http();
    let data = pseudo_random(1_100_000, 57);
    let id = blob_id(&data);
    // A delete only node-0 heard of, at a generation an hour ahead of the
    // clock (a gateway whose clock runs fast), and node-0 answers marker
    // reads late: the PUT's quorum read does not see the tombstone.
    let ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        + 3_600_000_000_000;
    let tombstone = |url: String| {
        redstuff::http::client()
            .delete(format!("{url}/v1/blobs/{id}?generation={ahead}"))
            .bearer_auth(crate::procs::CLUSTER_TOKEN)
            .send()
    };
    assert_eq!(
        tombstone(cluster.nodes[0].url.clone())
            .await
            .unwrap()
            .status(),
        204
    );
    refusals.late_state_reads(true);
    let response = http
        .put(format!("{gateway}/v1/blobs"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let stored: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        stored["shards_missing"],
        serde_json::json!([]),
        "node-0 took the write staged above its tombstone: {stored}"
    );
    refusals.late_state_reads(false);
    // The control loop would spread node-0's tombstone to every node: it
    // is older than the write, which stays.
    for node in &cluster.nodes {
        assert_eq!(tombstone(node.url.clone()).await.unwrap().status(), 204);
    }
    let get = http
        .get(format!("{gateway}/v1/blobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200, "the PUT answered 201 stays readable");
    assert!(get.bytes().await.unwrap() == data);
    assert_eq!(cluster.holders_of(&id).len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tombstones_of_an_incomplete_delete_stay_and_spread_and_a_retry_answers_204() {
    use crate::dev_fleet::{all_healthy, holders_of, DevFleet};
    // A real fleet with its control loop; a second gateway reaches nodes
    // 0-2 through proxies that refuse tombstones.
    let fleet = DevFleet::start(&["--node-timeout-secs", "1"]);
    let data = pseudo_random(900_000, 54);
    let id = fleet.put(&data).await;
    fleet.wait_for("healthy", |s| all_healthy(s, 1)).await;
    let (_gateway, gateway, refusals, _scratch) = gateway_behind_refusing_proxies(&fleet).await;
    refusals.deletes(true);
    assert_delete_incomplete(
        "a DELETE three nodes refuse",
        bound(Duration::from_secs(1), 2),
        &fleet.http,
        &gateway,
        &id,
    )
    .await;
    // The loop carries the tombstones to nodes 0-2, which drop their
    // slivers; the blob is not listed again.
    let start = Instant::now();
    while !holders_of(&fleet, &id).is_empty() {
        assert!(
            start.elapsed() < crate::NO_HANG,
            "pieces stay on {:?}",
            holders_of(&fleet, &id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet
        .wait_for("the deleted blob unlisted", |s| {
            s["blobs"].as_array().unwrap().is_empty()
        })
        .await;
    assert_eq!(fleet.code("GET", &id).await, 404);
    // The retry, still through the refusing proxies, finds the delete on
    // a quorum: 204.
    let retry = fleet
        .http
        .delete(format!("{gateway}/v1/blobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 204);
    assert!(
        fleet
            .metrics()
            .await
            .contains("redstuff_markers_spread_total{marker=\"tombstone\"}"),
        "the loop spread the tombstones"
    );
}

/// A second gateway of `fleet` that reaches nodes 0-2 through proxies
/// refusing what the returned `Refusals` say: the process, its URL, the
/// refusals and its scratch directory.
async fn gateway_behind_refusing_proxies(
    fleet: &crate::dev_fleet::DevFleet,
) -> (
    crate::procs::Process,
    String,
    Arc<Refusals>,
    tempfile::TempDir,
) {
    let (args, refusals, scratch) = gateway_args_behind_refusing_proxies(fleet).await;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (process, url) = crate::procs::spawn(&args);
    (process, url, refusals, scratch)
}

/// The arguments of a gateway of `fleet` reaching nodes 0-2 through
/// proxies refusing what the returned `Refusals` say, and its scratch
/// directory.
async fn gateway_args_behind_refusing_proxies(
    fleet: &crate::dev_fleet::DevFleet,
) -> (Vec<String>, Arc<Refusals>, tempfile::TempDir) {
    let data_dir = fleet.data_dir();
    let mut map = redstuff::fleet::FleetMap::read(&data_dir.join("fleet.json")).unwrap();
    let refusals = Arc::new(Refusals::default());
    for node in map
        .nodes
        .iter_mut()
        .filter(|n| ["node-0", "node-1", "node-2"].contains(&n.name.as_str()))
    {
        node.url = proxy(node.url.clone(), refusals.clone()).await;
    }
    let scratch = tempfile::tempdir().unwrap();
    let proxied = scratch.path().join("proxied.json");
    map.write(&proxied).unwrap();
    let path = |name: &str| data_dir.join(name).to_str().unwrap().to_string();
    let args = [
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--fleet",
        proxied.to_str().unwrap(),
        "--cluster-token-file",
        &path("cluster-token"),
        "--user-tokens-file",
        &path("token"),
        "--spool-dir",
        scratch.path().join("spool").to_str().unwrap(),
        "--node-timeout-secs",
        "1",
    ]
    .map(String::from)
    .to_vec();
    (args, refusals, scratch)
}

/// DELETEs `id` within `limit` and checks the answer says the delete
/// reached 4 of the 5 shards it needs and must be retried.
async fn assert_delete_incomplete(
    what: &str,
    limit: Duration,
    http: &reqwest::Client,
    gateway: &str,
    id: &str,
) {
    let response = within_bound(
        what,
        limit,
        http.delete(format!("{gateway}/v1/blobs/{id}")).send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["error"].as_str().unwrap(),
        format!(
            "delete of {id} reached 4 shards, 5 needed: it is not final yet and the blob may \
             still be read; retry the delete"
        ),
        "{body}"
    );
}
