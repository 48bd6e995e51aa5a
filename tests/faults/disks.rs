//! G9: a read that hits an I/O error treats that sliver as missing: it is
//! quarantined, counted, and repaired; the scrub goes on past it. G5 for
//! a disk that stalls: the node says it is not ready, and gateways pass it
//! over until its disk answers. The disk that errs or stalls is real to
//! the node process: a preloaded shim makes read(2) of chosen files fail
//! with EIO, or every read, write and fsync of one node's files wait.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::dev_fleet::{all_healthy, all_ready, pseudo_random, DevFleet, WAIT};
use crate::within;

/// Builds the EIO and stall shim (gcc is on the machine; the test command
/// checks).
fn eio_shim(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faults/eio_shim.c");
    let library = dir.join("eio_shim.so");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("a C compiler (cc) to build the EIO shim");
    assert!(built.success(), "cc failed on {}", source.display());
    library
}

/// The shim making reads of chosen files fail, preloaded into a fleet
/// scrubbing every second.
struct FailingReads {
    dir: tempfile::TempDir,
}

impl FailingReads {
    /// A fleet whose processes read through the shim.
    fn fleet() -> (Self, DevFleet) {
        let dir = tempfile::tempdir().unwrap();
        let shim = eio_shim(dir.path());
        std::fs::create_dir(dir.path().join("failing")).unwrap();
        let fleet = DevFleet::start_with_env(
            &["--scrub-interval-secs", "1"],
            &[
                ("LD_PRELOAD", shim.to_str().unwrap()),
                (
                    "REDSTUFF_TEST_EIO_DIR",
                    dir.path().join("failing").to_str().unwrap(),
                ),
            ],
        );
        (Self { dir }, fleet)
    }

    /// Reads of `file` fail from now on (`says` EMFILE: out of
    /// descriptors; else EIO) until the returned marker is removed.
    fn fail(&self, file: &Path, says: &[u8]) -> PathBuf {
        let marker = self
            .dir
            .path()
            .join("failing")
            .join(file.to_str().unwrap().replace('/', "%"));
        std::fs::write(&marker, says).unwrap();
        marker
    }
}

/// The primary sliver files node `name` holds of blob `id`.
fn sliver_files(fleet: &DevFleet, name: &str, id: &str) -> Vec<PathBuf> {
    let blob = fleet.node_dir(name).join("data").join("blobs").join(id);
    let mut files = Vec::new();
    for shard in std::fs::read_dir(blob)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
    {
        for file in std::fs::read_dir(shard.path()).unwrap().flatten() {
            files.push(file.path());
        }
    }
    files.sort();
    files
}

fn counter(metrics: &str, line_start: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

async fn node_metrics(fleet: &DevFleet, name: &str) -> String {
    let url = node_url(fleet, name).await;
    redstuff::http::client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliver_that_cannot_be_read_is_missing_counted_and_repaired_and_the_scrub_goes_on() {
    let (failing_reads, fleet) = FailingReads::fleet();
    let data = pseudo_random(3_500_000, 12);
    let id = fleet.put(&data).await;
    fleet.wait_for("healthy", |s| all_healthy(s, 1)).await;
    // Two files of node-4 start failing with EIO: the scrub meets them in
    // its walk and must go on past the first.
    let files = sliver_files(&fleet, "node-4", &id);
    let failing = [files[0].clone(), files[files.len() - 1].clone()];
    let markers: Vec<PathBuf> = failing.iter().map(|f| failing_reads.fail(f, b"")).collect();
    // Reads go on: the sliver that errs is replaced by another shard's.
    assert!(fleet.get(&id).await == data);
    // Both are quarantined (moved away) and counted.
    let start = Instant::now();
    while failing.iter().any(|f| f.exists()) {
        assert!(
            start.elapsed() < WAIT,
            "the failing files were never quarantined"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for marker in &markers {
        std::fs::remove_file(marker).unwrap();
    }
    // Counted as they are found (a file is moved a moment before it is
    // counted), not when the scrub pass ends.
    let start = Instant::now();
    loop {
        let metrics = node_metrics(&fleet, "node-4").await;
        let errors = counter(&metrics, "redstuff_node_io_errors_total{where=\"scrub\"}")
            + counter(&metrics, "redstuff_node_io_errors_total{where=\"read\"}");
        if errors >= 2 {
            assert!(counter(&metrics, "redstuff_node_quarantined_bytes") > 0);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "two read errors counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The scrub went past them to the end of its pass, and says when.
    let start = Instant::now();
    loop {
        let metrics = node_metrics(&fleet, "node-4").await;
        let ended = counter(
            &metrics,
            "redstuff_node_scrub_last_completed_timestamp_seconds",
        );
        if ended > 0 {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "no scrub pass ended:
{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The loop saw the pairs missing and rebuilt them (a repair that ran
    // while the disk still erred may have been quarantined again: the loop
    // then repairs once more).
    fleet
        .wait_for("the failing pairs rebuilt", |s| {
            all_ready(s)
                && all_healthy(s, 1)
                && s["blobs"][0]["pairs_rebuilt"].as_u64() >= Some(1)
                && failing.iter().all(|f| f.exists())
        })
        .await;
    assert!(fleet.get(&id).await == data);
}

/// The base URL of node `name` in the fleet's status.
async fn node_url(fleet: &DevFleet, name: &str) -> String {
    let status = fleet.status().await;
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The status and body of a node's /readyz.
async fn readyz(url: &str) -> (u16, String) {
    let response = redstuff::http::client()
        .get(format!("{url}/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Waits until `test` holds of node `url`'s /readyz.
async fn wait_readyz(url: &str, what: &str, test: impl Fn(u16, &str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let (code, body) = readyz(url).await;
        if test(code, &body) {
            return body;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_stalls_calls_itself_not_ready_and_the_gateway_passes_it_over_until_the_disk_answers(
) {
    let shim_dir = tempfile::tempdir().unwrap();
    let shim = eio_shim(shim_dir.path());
    let marker = shim_dir.path().join("stalled");
    let fleet = DevFleet::start_with_env(
        &["--node-timeout-secs", "2"],
        &[
            ("LD_PRELOAD", shim.to_str().unwrap()),
            ("REDSTUFF_TEST_STALL_MARKER", marker.to_str().unwrap()),
            ("REDSTUFF_TEST_STALL_PATH", "/node-2/data/"),
        ],
    );
    let data = pseudo_random(1_500_000, 31);
    let id = fleet.put(&data).await;
    fleet.wait_for("healthy", |s| all_healthy(s, 1)).await;
    let url = node_url(&fleet, "node-2").await;
    assert_eq!(readyz(&url).await, (200, "ready".to_string()));

    // node-2's disk stalls: a write's pair for it hangs in its store.
    std::fs::write(&marker, b"").unwrap();
    let response = fleet.try_put(&pseudo_random(700_000, 32)).await;
    assert_eq!(response.status(), 201);
    let stored: serde_json::Value = response.json().await.unwrap();
    assert_eq!(stored["shards_missing"], serde_json::json!([2]), "{stored}");
    // Past the stall limit the process, alive, says it is not ready and why.
    let reason = wait_readyz(&url, "node-2 not ready", |code, _| code == 503).await;
    assert!(reason.contains("the disk stalls"), "{reason}");
    // Its metrics still answer (the filesystem's figures, read from the
    // stalled disk, keep their last values).
    let metrics = within(
        "node-2's metrics while its disk stalls",
        node_metrics(&fleet, "node-2"),
    )
    .await;
    let oldest: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("redstuff_node_oldest_store_operation_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(oldest >= 15.0, "{metrics}");

    // The gateway finds it silent once more, and its probe no longer
    // unmarks it: reads and writes go on without waiting on it.
    let silent = r#"redstuff_gateway_node_unanswering{node="node-2"} 1"#;
    let response = fleet.try_put(&pseudo_random(700_000, 33)).await;
    assert_eq!(response.status(), 201);
    let body = response.text().await.unwrap();
    let metrics = fleet.metrics().await;
    assert!(
        metrics.contains(silent),
        "{body}\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("node-2"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let unanswered = |metrics: &str| {
        counter(
            metrics,
            r#"redstuff_gateway_node_calls_unanswered_total{node="node-2"}"#,
        )
    };
    let waited_out = unanswered(&fleet.metrics().await);
    for seed in 34..37 {
        let response = fleet.try_put(&pseudo_random(700_000, seed)).await;
        assert_eq!(response.status(), 201);
        let stored: serde_json::Value = response.json().await.unwrap();
        assert_eq!(stored["shards_missing"], serde_json::json!([2]), "{stored}");
        assert!(fleet.get(&id).await == data);
        // Several of the gateway's probes (one a second) in between.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let metrics = fleet.metrics().await;
    assert!(metrics.contains(silent), "{metrics}");
    assert_eq!(unanswered(&metrics), waited_out, "{metrics}");

    // The disk answers again: the node is ready and takes writes again.
    std::fs::remove_file(&marker).unwrap();
    wait_readyz(&url, "node-2 ready again", |code, _| code == 200).await;
    let start = Instant::now();
    while fleet.metrics().await.contains(silent) {
        assert!(start.elapsed() < WAIT, "the gateway never unmarked node-2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = fleet.try_put(&pseudo_random(700_000, 40)).await;
    assert_eq!(response.status(), 201);
    let stored: serde_json::Value = response.json().await.unwrap();
    assert_eq!(stored["shards_missing"], serde_json::json!([]), "{stored}");
    fleet
        .wait_for("healed", |s| all_ready(s) && all_healthy(s, 7))
        .await;
    assert!(fleet.get(&id).await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_out_of_file_descriptors_answers_503_and_quarantines_nothing() {
    let (failing_reads, fleet) = FailingReads::fleet();
    let data = pseudo_random(2_000_000, 13);
    let id = fleet.put(&data).await;
    fleet.wait_for("healthy", |s| all_healthy(s, 1)).await;
    // Every read of node-4's slivers fails as when the process is out of
    // file descriptors: nothing is wrong with the files.
    let files = sliver_files(&fleet, "node-4", &id);
    let marked_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let markers: Vec<PathBuf> = files
        .iter()
        .map(|f| failing_reads.fail(f, b"EMFILE"))
        .collect();
    assert!(
        fleet.get(&id).await == data,
        "the other nodes serve the read"
    );
    // The node says it cannot read now (503), not that the sliver is
    // missing (404).
    let primary = files
        .iter()
        .find(|f| f.extension().is_some_and(|e| e == "primary"))
        .expect("a primary sliver on node-4");
    let segment = primary.file_stem().unwrap().to_str().unwrap();
    let shard = primary
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let token = std::fs::read_to_string(fleet.data_dir().join("cluster-token")).unwrap();
    let token = token.lines().next().unwrap().trim().to_string();
    let url = format!(
        "{}/v1/blobs/{id}/slivers/{segment}/{shard}/primary",
        node_url(&fleet, "node-4").await
    );
    let sliver = |url: String, token: String| async move {
        redstuff::http::client()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(sliver(url.clone(), token.clone()).await, 503);
    // A scrub pass that met every file ends, and none was moved away.
    let start = Instant::now();
    loop {
        let metrics = node_metrics(&fleet, "node-4").await;
        let ended = counter(
            &metrics,
            "redstuff_node_scrub_last_completed_timestamp_seconds",
        );
        if ended > marked_at + 1 {
            assert_eq!(
                counter(&metrics, "redstuff_node_quarantined_bytes"),
                0,
                "{metrics}"
            );
            break;
        }
        assert!(start.elapsed() < WAIT, "no scrub pass ended:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        files.iter().all(|f| f.exists()),
        "every file stays in place"
    );
    // Descriptors back: the same read succeeds.
    for marker in &markers {
        std::fs::remove_file(marker).unwrap();
    }
    assert_eq!(sliver(url, token).await, 200);
}

/// A fleet whose node `node` refuses writes while the returned marker
/// holds a refusal ("EIO", "ENOSPC"; "EIO fsync": only fsyncs fail).
fn fleet_with_refusing_disk(node: &str) -> (tempfile::TempDir, PathBuf, DevFleet) {
    let shim_dir = tempfile::tempdir().unwrap();
    let shim = eio_shim(shim_dir.path());
    let marker = shim_dir.path().join("refusing");
    let fleet = DevFleet::start_with_env(
        &[],
        &[
            ("LD_PRELOAD", shim.to_str().unwrap()),
            ("REDSTUFF_TEST_WRITE_FAIL_MARKER", marker.to_str().unwrap()),
            ("REDSTUFF_TEST_WRITE_FAIL_PATH", &format!("/{node}/data/")),
        ],
    );
    (shim_dir, marker, fleet)
}

/// The files left in node `name`'s temporary directory.
fn temporary_files(fleet: &DevFleet, name: &str) -> Vec<PathBuf> {
    std::fs::read_dir(fleet.node_dir(name).join("data").join("tmp"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Whether node `name` holds any sliver file of blob `id`.
fn holds_slivers(fleet: &DevFleet, name: &str, id: &str) -> bool {
    let blob = fleet.node_dir(name).join("data").join("blobs").join(id);
    blob.is_dir() && !sliver_files(fleet, name, id).is_empty()
}

/// The count of a node's answers with HTTP `code`, over all routes.
fn answers_with(metrics: &str, code: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("redstuff_node_requests_total{"))
        .filter(|l| l.contains(&format!("code=\"{code}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// node-4's disk refuses writes with `refusal`: a PUT goes on without its
/// pair, node-4 answers with `code` (and counts an I/O error when
/// `io_error`), keeps nothing of the write, and is repaired once its disk
/// takes writes again.
async fn refused_writes_are_answered_and_leave_nothing_then_repaired(
    refusal: &[u8],
    code: &str,
    io_error: bool,
    seed: u64,
) {
    let (_shim, marker, fleet) = fleet_with_refusing_disk("node-4");
    let earlier = pseudo_random(1_000_000, seed);
    let earlier_id = fleet.put(&earlier).await;
    fleet.wait_for("healthy", |s| all_healthy(s, 1)).await;

    // node-4's disk refuses: the write goes on without its pair.
    std::fs::write(&marker, refusal).unwrap();
    let data = pseudo_random(1_500_000, seed + 1);
    let response = fleet.try_put(&data).await;
    assert_eq!(response.status(), 201);
    let stored: serde_json::Value = response.json().await.unwrap();
    assert_eq!(stored["shards_missing"], serde_json::json!([4]), "{stored}");
    let id = stored["id"].as_str().unwrap().to_string();
    // The node counted the refused write, and kept nothing of it: no
    // temporary file, no sliver file it could later serve as stored.
    let metrics = node_metrics(&fleet, "node-4").await;
    assert!(answers_with(&metrics, code) >= 1, "{metrics}");
    let io_errors = counter(&metrics, "redstuff_node_io_errors_total{where=\"write\"}");
    assert_eq!(io_errors >= 1, io_error, "{metrics}");
    assert_eq!(temporary_files(&fleet, "node-4"), Vec::<PathBuf>::new());
    assert!(!holds_slivers(&fleet, "node-4", &id));
    // Both blobs read; node-4 still serves what it stored before.
    assert!(fleet.get(&id).await == data);
    assert!(fleet.get(&earlier_id).await == earlier);
    assert!(holds_slivers(&fleet, "node-4", &earlier_id));

    // The disk takes writes again: the loop rebuilds node-4's pair.
    std::fs::remove_file(&marker).unwrap();
    fleet
        .wait_for("node-4's pair of the new blob rebuilt", |s| {
            all_ready(s) && all_healthy(s, 2)
        })
        .await;
    assert!(holds_slivers(&fleet, "node-4", &id));
    assert_eq!(temporary_files(&fleet, "node-4"), Vec::<PathBuf>::new());
    assert!(fleet.get(&id).await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_fsyncs_fail_answers_the_error_keeps_nothing_of_the_write_and_is_repaired_once_they_succeed(
) {
    refused_writes_are_answered_and_leave_nothing_then_repaired(b"EIO fsync", "500", true, 60)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_is_full_answers_the_error_keeps_nothing_of_the_write_and_is_repaired_once_it_has_room(
) {
    refused_writes_are_answered_and_leave_nothing_then_repaired(b"ENOSPC", "507", false, 70).await;
}
