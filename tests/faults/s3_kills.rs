//! The S3 front under kills: its gateway SIGKILLed while a part streams in
//! and at random moments of CompleteMultipartUpload. Each time the key
//! reads as the old object or the new one, byte for byte, never a mix; and
//! once the grace periods pass, the fleet holds exactly the blobs the key
//! refers to: abandoned uploads are aborted and unreferenced blobs
//! collected, nothing leaks.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::blob_id;
use crate::procs::Cluster;

const ACCESS_KEY: &str = "KILLSACCESSKEY";
const SECRET_KEY: &str = "kills-secret-key";

fn python() -> PathBuf {
    let venv = std::env::var("REDSTUFF_S3_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/redstuff/s3-clients")
        });
    venv.join("bin/python")
}

/// Blob ids with data on any node.
fn held(cluster: &Cluster) -> BTreeSet<String> {
    cluster
        .nodes
        .iter()
        .flat_map(|n| {
            std::fs::read_dir(n.data.join("blobs"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect()
}

#[test]
fn a_gateway_killed_mid_upload_or_mid_completion_leaves_each_key_old_or_new_and_nothing_leaks() {
    let cluster = Cluster::start(7, "1");
    let work = tempfile::tempdir().unwrap();
    let index = work.path().join("s3-index.redb");
    let path = |name: &str| cluster.dir.path().join(name).to_str().unwrap().to_string();
    let gateway = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            env!("CARGO_BIN_EXE_redstuff").to_string(),
            "gateway".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--fleet".into(),
            cluster.map.to_str().unwrap().into(),
            "--spool-dir".into(),
            work.path().join("spool").to_str().unwrap().into(),
            "--cluster-token-file".into(),
            path("cluster-token"),
            "--user-tokens-file".into(),
            path("user-tokens"),
            "--node-timeout-secs".into(),
            "1".into(),
            "--s3-listen".into(),
            "127.0.0.1:0".into(),
            "--s3-index".into(),
            index.to_str().unwrap().into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let output = Command::new(python())
        .arg(format!(
            "{}/tests/s3/gateway_kills.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .env("GATEWAY", serde_json::to_string(&gateway(&[])).unwrap())
        .env("WORK", work.path())
        .env("REDSTUFF_S3_ACCESS_KEY", ACCESS_KEY)
        .env("REDSTUFF_S3_SECRET_KEY", SECRET_KEY)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("REDSTUFF_LOG", "warn")
        .output()
        .expect("the S3 clients' Python (scripts/s3-clients)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("every kill left the key whole"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The gateway again, with short grace periods: what the key does not
    // refer to goes.
    let read = |name: &str| std::fs::read(work.path().join(name)).unwrap();
    let expected: BTreeSet<String> = match std::fs::read_to_string(work.path().join("final"))
        .unwrap()
        .as_str()
    {
        "new" => [blob_id(&read("a")), blob_id(&read("b"))].into(),
        _ => [blob_id(&read("old"))].into(),
    };
    let mut command = Command::new(&gateway(&[])[0]);
    command
        .args(
            &gateway(&[
                "--s3-collect-after-secs",
                "1",
                "--s3-upload-max-age-secs",
                "1",
            ])[1..],
        )
        .env("REDSTUFF_S3_ACCESS_KEY", ACCESS_KEY)
        .env("REDSTUFF_S3_SECRET_KEY", SECRET_KEY)
        .env("REDSTUFF_LOG", "warn")
        .stdout(std::process::Stdio::null());
    let _collector = crate::procs::Process(command.spawn().unwrap());
    let start = Instant::now();
    loop {
        let now = held(&cluster);
        if now == expected {
            break;
        }
        assert!(
            start.elapsed() < crate::NO_HANG,
            "the fleet holds {now:?}, the key refers to {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
