//! G9: a read that hits an I/O error treats that sliver as missing: it is
//! quarantined, counted, and repaired; the scrub goes on past it. The
//! disk that errs is real to the node process: a preloaded shim makes
//! read(2) of chosen files fail with EIO.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::dev_fleet::{all_healthy, all_ready, pseudo_random, DevFleet, WAIT};

/// Builds the EIO shim (gcc is on the machine; the test command checks).
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
    let status = fleet.status().await;
    let url = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
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
    let shim_dir = tempfile::tempdir().unwrap();
    let shim = eio_shim(shim_dir.path());
    let markers_dir = shim_dir.path().join("failing");
    std::fs::create_dir(&markers_dir).unwrap();
    let fleet = DevFleet::start_with_env(
        &["--scrub-interval-secs", "1"],
        &[
            ("LD_PRELOAD", shim.to_str().unwrap()),
            ("REDSTUFF_TEST_EIO_DIR", markers_dir.to_str().unwrap()),
        ],
    );
    let data = pseudo_random(3_500_000, 12);
    let id = fleet.put(&data).await;
    fleet.wait_for("healthy", |s| all_healthy(s, 1)).await;
    // Two files of node-4 start failing with EIO: the scrub meets them in
    // its walk and must go on past the first.
    let files = sliver_files(&fleet, "node-4", &id);
    let failing = [files[0].clone(), files[files.len() - 1].clone()];
    let markers: Vec<PathBuf> = failing
        .iter()
        .map(|f| markers_dir.join(f.to_str().unwrap().replace('/', "%")))
        .collect();
    for marker in &markers {
        std::fs::write(marker, b"").unwrap();
    }
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
    let metrics = node_metrics(&fleet, "node-4").await;
    let errors = counter(&metrics, "redstuff_node_io_errors_total{where=\"scrub\"}")
        + counter(&metrics, "redstuff_node_io_errors_total{where=\"read\"}");
    assert!(errors >= 2, "two read errors counted:\n{metrics}");
    assert!(counter(&metrics, "redstuff_node_quarantined_bytes") > 0);
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
