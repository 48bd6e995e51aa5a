//! The S3 endpoint of `redstuff dev`, driven by the real clients people
//! use: boto3 (tests/s3/boto3_suite.py), the aws cli, rclone, s3cmd,
//! s5cmd and s3fs (tests/s3/other_clients.sh). The test command installs
//! the clients (scripts/s3-clients); a missing client fails the test.
//! The boto3 suite runs twice: with the embedded index and with the index
//! in a real PostgreSQL server. Also: blobs no key refers to any more are
//! collected after the grace period, and abandoned multipart uploads are
//! aborted.

mod dev_fleet;
mod pg;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dev_fleet::{pseudo_random, put_holding_body_back, DevFleet, WAIT};

/// The environment a client needs to reach the fleet's S3 endpoint.
fn s3_env(fleet: &DevFleet) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(fleet.data_dir().join("s3-credentials")).unwrap();
    let keys = redstuff::s3::credentials::parse(&text).expect("the fleet wrote its S3 keys");
    vec![
        (
            "REDSTUFF_S3_ENDPOINT".into(),
            fleet.s3.clone().expect("S3 is served"),
        ),
        ("AWS_ACCESS_KEY_ID".into(), keys.access_key),
        ("AWS_SECRET_ACCESS_KEY".into(), keys.secret_key),
        ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]
}

/// Where the test command installed the S3 clients (a Python venv with
/// s3cmd, s5cmd and s3fs), put first on PATH.
fn clients_path() -> String {
    let venv = std::env::var("REDSTUFF_S3_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/redstuff/s3-clients")
        });
    format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs a command with the S3 environment; fails the test with its
/// output unless it succeeds.
fn run(fleet: &DevFleet, program: &str, args: &[&str], cwd: &Path) -> String {
    run_with(fleet, program, args, cwd, &[])
}

/// The same with `env` added.
fn run_with(
    fleet: &DevFleet,
    program: &str,
    args: &[&str],
    cwd: &Path,
    env: &[(&str, &str)],
) -> String {
    let output = Command::new(program)
        .args(args)
        .envs(s3_env(fleet))
        .envs(env.iter().copied())
        .env("PATH", clients_path())
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (is it installed? scripts/s3-clients): {e}")
        });
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Runs the aws cli against the S3 endpoint of `fleet` in `dir`; its output.
fn aws_in<'a>(fleet: &'a DevFleet, dir: &'a Path) -> impl Fn(&[&str]) -> String + 'a {
    let endpoint = fleet.s3.clone().unwrap();
    move |args: &[&str]| {
        let mut all = vec!["--endpoint-url", endpoint.as_str()];
        all.extend_from_slice(args);
        run(fleet, "aws", &all, dir)
    }
}

fn suite(name: &str) -> String {
    format!("{}/tests/s3/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs the Python suite `name` (tests/s3/) against the fleet with `env`
/// added, in a scratch directory; fails the test unless every check passed.
fn python_suite(fleet: &DevFleet, name: &str, env: &[(&str, &str)]) {
    let scratch = tempfile::tempdir().unwrap();
    let output = Command::new("python3")
        .arg(suite(name))
        .envs(s3_env(fleet))
        .envs(env.iter().copied())
        .env("PATH", clients_path())
        .current_dir(scratch.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && out.contains("every check passed"),
        "{name} failed:\n{out}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn boto3_finds_s3_semantics_for_objects_ranges_checksums_multipart_and_listings() {
    let fleet = DevFleet::start(&[]);
    python_suite(&fleet, "boto3_suite.py", &[]);
}

#[test]
fn boto3_finds_the_same_semantics_with_the_index_in_postgres() {
    let server = pg::Postgres::start();
    let fleet = DevFleet::start(&["--s3-index-postgres", &server.url]);
    python_suite(&fleet, "boto3_suite.py", &[]);
    assert!(
        !fleet.data_dir().join("s3-index.redb").exists(),
        "the index went to PostgreSQL, not to a file"
    );
}

/// A client that stops sending its body holds its connection and what it
/// sent in the spool no longer than the stall time, as on the native API.
#[test]
fn an_object_or_part_body_that_brings_nothing_for_the_stall_time_is_refused_and_nothing_kept() {
    let fleet = DevFleet::start(&["--client-stall-secs", "2"]);
    python_suite(&fleet, "stalled_body.py", &[]);
}

#[test]
fn boto3_in_virtual_hosted_style_reaches_buckets_under_the_base_domain() {
    let domain = "s3.redstuff.test";
    let fleet = DevFleet::start(&["--s3-domain", domain]);
    python_suite(
        &fleet,
        "virtual_hosted.py",
        &[("REDSTUFF_S3_DOMAIN", domain)],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_copies_lists_syncs_removes_and_presigns() {
    let fleet = DevFleet::start(&[]);
    let endpoint = fleet.s3.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let one = pseudo_random(1, 1);
    let big = pseudo_random(40 << 20, 2); // above 8 MiB: multipart
    std::fs::write(work.join("one"), &one).unwrap();
    std::fs::write(work.join("big"), &big).unwrap();
    let aws = |args: &[&str]| {
        let mut all = vec!["--endpoint-url", endpoint.as_str()];
        all.extend_from_slice(args);
        if ["cp", "sync", "rm"].contains(&args[1]) {
            all.push("--only-show-errors");
        }
        run(&fleet, "aws", &all, work)
    };
    aws(&["s3", "mb", "s3://cli"]);
    aws(&["s3", "cp", "one", "s3://cli/one byte"]);
    aws(&["s3", "cp", "big", "s3://cli/big/forty +&=ü"]);
    let listed = aws(&["s3", "ls", "--recursive", "s3://cli"]);
    assert!(listed.contains("41943040 big/forty +&=ü"), "{listed}");
    assert!(listed.contains("1 one byte"), "{listed}");
    let head = aws(&[
        "s3api",
        "head-object",
        "--bucket",
        "cli",
        "--key",
        "big/forty +&=ü",
    ]);
    assert!(head.contains("-5\\\""), "40 MiB in 8 MiB parts: {head}");
    aws(&["s3", "cp", "s3://cli/big/forty +&=ü", "big.back"]);
    assert!(std::fs::read(work.join("big.back")).unwrap() == big);
    aws(&["s3", "cp", "s3://cli/one byte", "one.back"]);
    assert_eq!(std::fs::read(work.join("one.back")).unwrap(), one);

    // sync: a directory up, a change, and down again.
    std::fs::create_dir_all(work.join("tree/sub")).unwrap();
    for (i, name) in ["a", "sub/b", "sub/c d"].iter().enumerate() {
        std::fs::write(
            work.join("tree").join(name),
            pseudo_random(1000 + i, 10 + i as u64),
        )
        .unwrap();
    }
    aws(&["s3", "sync", "tree", "s3://cli/tree"]);
    std::fs::write(work.join("tree/a"), b"changed").unwrap();
    aws(&["s3", "sync", "tree", "s3://cli/tree"]);
    aws(&["s3", "sync", "s3://cli/tree", "tree.back"]);
    for name in ["a", "sub/b", "sub/c d"] {
        assert_eq!(
            std::fs::read(work.join("tree.back").join(name)).unwrap(),
            std::fs::read(work.join("tree").join(name)).unwrap(),
            "{name}"
        );
    }

    // presign: a plain GET of the URL, no credentials.
    let url = aws(&["s3", "presign", "s3://cli/one byte", "--expires-in", "60"]);
    let body = reqwest::get(url.trim()).await.unwrap();
    assert_eq!(body.status(), 200);
    assert_eq!(body.bytes().await.unwrap().to_vec(), one);

    aws(&["s3", "rm", "--recursive", "s3://cli/tree"]);
    let left = aws(&["s3", "ls", "--recursive", "s3://cli"]);
    assert!(!left.contains("tree/"), "{left}");
    aws(&["s3", "rm", "s3://cli/one byte"]);
    aws(&["s3", "rm", "s3://cli/big/forty +&=ü"]);
    aws(&["s3", "rb", "s3://cli"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_sending_more_parts_at_once_than_the_gateway_takes_is_never_told_to_slow_down()
{
    // Two uploads at a time; the aws cli sends up to 10 parts at once.
    let fleet = DevFleet::start(&["--max-uploads", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let big = pseudo_random(48 << 20, 3); // six 8 MiB parts
    std::fs::write(dir.path().join("big"), &big).unwrap();
    let aws = aws_in(&fleet, dir.path());
    aws(&["s3", "mb", "s3://parts"]);
    aws(&["s3", "cp", "--only-show-errors", "big", "s3://parts/big"]);
    aws(&[
        "s3",
        "cp",
        "--only-show-errors",
        "s3://parts/big",
        "big.back",
    ]);
    assert!(std::fs::read(dir.path().join("big.back")).unwrap() == big);
    let metrics = fleet.metrics().await;
    let parts: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("redstuff_s3_requests_total{") && l.contains("UploadPart"))
        .collect();
    assert!(
        parts.iter().all(|l| l.contains("code=\"200\"")),
        "parts waited for a slot instead of being refused: {parts:?}"
    );
    assert!(parts.iter().any(|l| l.ends_with(" 6")), "{parts:?}");
}

/// Over HTTPS botocore sends checksums in aws-chunked trailers by itself
/// (aws-cli v2 and newer SDKs too): the whole boto3 suite, the aws cli
/// and rclone against a `redstuff dev --tls` endpoint, trusting the
/// fleet's CA; a client that does not trust it is refused.
#[test]
fn over_https_boto3_the_aws_cli_and_rclone_trusting_the_fleets_ca_find_the_same_semantics() {
    let fleet = DevFleet::start(&["--tls"]);
    let endpoint = fleet.s3.clone().unwrap();
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
    let ca_file = fleet.data_dir().join("tls/ca.crt");
    let ca = ca_file.to_str().unwrap();
    let trusting = [("AWS_CA_BUNDLE", ca), ("SSL_CERT_FILE", ca)];
    python_suite(&fleet, "boto3_suite.py", &trusting);

    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let big = pseudo_random(20 << 20, 3); // above 8 MiB: multipart
    std::fs::write(work.join("big"), &big).unwrap();
    let aws = |args: &[&str]| {
        let mut all = vec!["--endpoint-url", endpoint.as_str()];
        all.extend_from_slice(args);
        run_with(&fleet, "aws", &all, work, &trusting)
    };
    aws(&["s3", "mb", "s3://tls"]);
    aws(&["s3", "cp", "big", "s3://tls/big", "--only-show-errors"]);
    aws(&[
        "s3api",
        "put-object",
        "--bucket",
        "tls",
        "--key",
        "one",
        "--body",
        "big",
    ]);
    for key in ["big", "one"] {
        aws(&[
            "s3",
            "cp",
            &format!("s3://tls/{key}"),
            "back",
            "--only-show-errors",
        ]);
        assert!(std::fs::read(work.join("back")).unwrap() == big, "{key}");
    }

    // rclone, told of the CA.
    let rclone_env = [
        ("RCLONE_CONFIG_RS_TYPE", "s3"),
        ("RCLONE_CONFIG_RS_PROVIDER", "Other"),
        ("RCLONE_CONFIG_RS_ENDPOINT", endpoint.as_str()),
        ("RCLONE_CONFIG_RS_REGION", "us-east-1"),
        ("RCLONE_CONFIG_RS_FORCE_PATH_STYLE", "true"),
        ("RCLONE_CONFIG_RS_ENV_AUTH", "true"),
        // rclone 1.60's SDK refuses a CA bundle from the environment (the
        // machine's may be set) beside --ca-cert: empty is unset for it.
        ("AWS_CA_BUNDLE", ""),
    ];
    let rclone = |args: &[&str]| {
        let mut all = vec!["--ca-cert", ca];
        all.extend_from_slice(args);
        run_with(&fleet, "rclone", &all, work, &rclone_env)
    };
    std::fs::create_dir_all(work.join("tree")).unwrap();
    std::fs::write(work.join("tree/small"), b"small file").unwrap();
    rclone(&["copy", "tree", "rs:tls/tree"]);
    rclone(&["check", "tree", "rs:tls/tree"]);
    let listed = rclone(&["lsf", "rs:tls"]);
    assert!(
        listed.contains("big") && listed.contains("tree/"),
        "{listed}"
    );

    // Not trusting the CA (the machine's bundle only): refused.
    let refused = Command::new("aws")
        .args(["--endpoint-url", endpoint.as_str(), "s3", "ls", "s3://tls"])
        .envs(s3_env(&fleet))
        .env("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
        .env("PATH", clients_path())
        .current_dir(work)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.to_uppercase().contains("CERTIFICATE"), "{stderr}");
}

#[test]
fn rclone_s3cmd_s5cmd_and_s3fs_store_list_check_and_read() {
    let fleet = DevFleet::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let out = run(&fleet, "bash", &[&suite("other_clients.sh")], dir.path());
    assert!(out.contains("every client passed"), "{out}");
}

/// Every profile of the credentials file is a key, and the file is read
/// again while the endpoint runs: a second user added to
/// `DATA_DIR/s3-credentials` signs in without a restart and sees the same
/// buckets, a wrong secret for that key is refused, and removing the
/// profile revokes the key while the first one keeps working.
#[test]
fn every_profile_of_the_credentials_file_is_an_access_key_added_and_revoked_while_running() {
    let fleet = DevFleet::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let endpoint = fleet.s3.clone().unwrap();
    run(
        &fleet,
        "aws",
        &["--endpoint-url", &endpoint, "s3", "mb", "s3://shared"],
        dir.path(),
    );
    let as_alice = |secret: &str| {
        Command::new("aws")
            .args(["--endpoint-url", &endpoint, "s3api", "list-buckets"])
            .envs(s3_env(&fleet))
            .env("AWS_ACCESS_KEY_ID", "ALICEKEY")
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("PATH", clients_path())
            .output()
            .unwrap()
    };
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();
    let unknown = as_alice("alice secret");
    assert!(
        !unknown.status.success() && stderr(&unknown).contains("InvalidAccessKeyId"),
        "{}",
        stderr(&unknown)
    );

    let path = fleet.data_dir().join("s3-credentials");
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!(
            "{original}[alice]\naws_access_key_id = ALICEKEY\naws_secret_access_key = alice secret\n"
        ),
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    let listed = loop {
        let listed = as_alice("alice secret");
        if listed.status.success() || Instant::now() > deadline {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        listed.status.success() && String::from_utf8_lossy(&listed.stdout).contains("\"shared\""),
        "the added key was not taken within {WAIT:?}: {}",
        stderr(&listed)
    );
    let refused = as_alice("not alice's secret");
    assert!(
        !refused.status.success() && stderr(&refused).contains("SignatureDoesNotMatch"),
        "{}",
        stderr(&refused)
    );

    // Revoked by removing the profile; the first key still works.
    std::fs::write(&path, &original).unwrap();
    let deadline = Instant::now() + WAIT;
    let revoked = loop {
        let answer = as_alice("alice secret");
        if !answer.status.success() || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        !revoked.status.success() && stderr(&revoked).contains("InvalidAccessKeyId"),
        "the removed key still signs in after {WAIT:?}: {}",
        stderr(&revoked)
    );
    run(
        &fleet,
        "aws",
        &["--endpoint-url", &endpoint, "s3", "ls"],
        dir.path(),
    );
}

/// A client that holds its body back (`Expect: 100-continue`) and hears a
/// refusal first never sends those bytes; were the connection kept, the
/// server would take the next request's first bytes for them. botocore
/// reuses such connections: it saw SignatureDoesNotMatch on the PUT after
/// a refused conditional PUT. So a refusal before the body closes the
/// connection, and the next request goes on a fresh one.
#[test]
fn a_refusal_before_a_held_back_body_closes_the_connection() {
    let fleet = DevFleet::start(&[]);
    // Unsigned: refused (AccessDenied) before the body is read.
    let answer = put_holding_body_back(fleet.s3.as_deref().unwrap(), "/bucket/key");
    assert!(answer.starts_with("http/1.1 403"), "{answer}");
    assert!(!answer.contains("100 continue"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
}

/// A client that sends its body without waiting (no `Expect:
/// 100-continue`) is still sending when the refusal goes out: it reads the
/// refusal, not a reset connection (the gateway reads on and drops the
/// rest for a moment), three times out of three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_a_body_sent_without_waiting_reaches_the_client() {
    let fleet = DevFleet::start(&[]);
    let endpoint = fleet.s3.clone().unwrap();
    let http = redstuff::http::client();
    for attempt in 0..3 {
        // Unsigned: AccessDenied before the body is read.
        let answer = http
            .put(format!("{endpoint}/bucket/key-{attempt}"))
            .body(pseudo_random(24 << 20, 90 + attempt))
            .send()
            .await;
        let response = answer.unwrap_or_else(|e| panic!("attempt {attempt}: {e:#}"));
        assert_eq!(response.status(), 403, "attempt {attempt}");
        let body = response.text().await.unwrap();
        assert!(body.contains("AccessDenied"), "{body}");
    }
}

/// Runs blocking work (the index's PostgreSQL client) off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

/// The blob id the fleet (7 shards, 1 MiB segments) gives these bytes.
fn blob_id(data: &[u8]) -> String {
    let config = redstuff::codec::EncodingConfig::new(7).unwrap();
    let (metadata, _) = redstuff::codec::BlobEncoder::new(config, 1 << 20)
        .unwrap()
        .encode(data)
        .unwrap();
    metadata.blob_id().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_is_collected_once_no_key_refers_to_it_and_abandoned_uploads_are_aborted() {
    let fleet = DevFleet::start(&[
        "--s3-collect-after-secs",
        "1",
        "--s3-upload-max-age-secs",
        "2",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(300_000, 7);
    std::fs::write(dir.path().join("data"), &data).unwrap();
    let id = blob_id(&data);
    let aws = aws_in(&fleet, dir.path());
    aws(&["s3", "mb", "s3://collect"]);
    // Two keys, one blob.
    aws(&[
        "s3",
        "cp",
        "--only-show-errors",
        "data",
        "s3://collect/first",
    ]);
    aws(&[
        "s3",
        "cp",
        "--only-show-errors",
        "data",
        "s3://collect/second",
    ]);
    assert_eq!(fleet.code("HEAD", &id).await, 200);
    aws(&["s3", "rm", "--only-show-errors", "s3://collect/first"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fleet.code("HEAD", &id).await,
        200,
        "a key still refers to it"
    );
    aws(&["s3", "rm", "--only-show-errors", "s3://collect/second"]);
    let start = Instant::now();
    while fleet.code("HEAD", &id).await != 404 {
        assert!(start.elapsed() < WAIT, "the unreferenced blob stays");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The collector counts a blob once its delete returned, which can be
    // a moment after a HEAD already finds the tombstones.
    let start = Instant::now();
    loop {
        let metrics = fleet.metrics().await;
        if metrics.contains("redstuff_s3_blobs_collected_total 1") {
            break;
        }
        assert!(start.elapsed() < WAIT, "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Storing the same bytes again after the collection works.
    aws(&[
        "s3",
        "cp",
        "--only-show-errors",
        "data",
        "s3://collect/again",
    ]);
    aws(&[
        "s3",
        "cp",
        "--only-show-errors",
        "s3://collect/again",
        "back",
    ]);
    assert!(std::fs::read(dir.path().join("back")).unwrap() == data);

    // An upload left unfinished is aborted after its age, its part collected.
    let created = aws(&[
        "s3api",
        "create-multipart-upload",
        "--bucket",
        "collect",
        "--key",
        "left",
    ]);
    let upload: serde_json::Value = serde_json::from_str(&created).unwrap();
    let upload = upload["UploadId"].as_str().unwrap().to_string();
    let part = pseudo_random(1000, 8);
    std::fs::write(dir.path().join("part"), &part).unwrap();
    aws(&[
        "s3api",
        "upload-part",
        "--bucket",
        "collect",
        "--key",
        "left",
        "--upload-id",
        &upload,
        "--part-number",
        "1",
        "--body",
        "part",
    ]);
    let part_id = blob_id(&part);
    assert_eq!(fleet.code("HEAD", &part_id).await, 200);
    let start = Instant::now();
    while fleet.code("HEAD", &part_id).await != 404 {
        assert!(start.elapsed() < WAIT, "the abandoned upload's part stays");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let uploads = aws(&["s3api", "list-multipart-uploads", "--bucket", "collect"]);
    assert!(!uploads.contains(&upload), "{uploads}");
    assert!(fleet
        .metrics()
        .await
        .contains("redstuff_s3_uploads_expired_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_of_bytes_another_gateway_is_collecting_waits_for_the_collection_and_stores_them_again(
) {
    let server = pg::Postgres::start();
    let fleet = DevFleet::start(&["--s3-index-postgres", &server.url]);
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(250_000, 13);
    std::fs::write(dir.path().join("data"), &data).unwrap();
    let id = blob_id(&data);
    let aws = aws_in(&fleet, dir.path());
    aws(&["s3", "mb", "s3://shared"]);
    aws(&[
        "s3",
        "cp",
        "--only-show-errors",
        "data",
        "s3://shared/first",
    ]);
    aws(&["s3", "rm", "--only-show-errors", "s3://shared/first"]);
    // Another gateway's collector, sharing the index, claims the blob.
    let url = server.url.clone();
    let index = std::sync::Arc::new(
        blocking(move || redstuff::s3::index::Index::postgres(&url).unwrap()).await,
    );
    let now = redstuff::s3::front::now_ms();
    let claims = {
        let index = index.clone();
        blocking(move || index.claim_unreferenced(u64::MAX, now).unwrap()).await
    };
    let token = claims.iter().find(|c| c.blob == id).expect("claimed").token;
    // A PUT of the same bytes meanwhile waits for the collection...
    let endpoint = fleet.s3.clone().unwrap();
    let put = Command::new("aws")
        .args([
            "--endpoint-url",
            &endpoint,
            "s3",
            "cp",
            "--only-show-errors",
        ])
        .args(["data", "s3://shared/second"])
        .envs(s3_env(&fleet))
        .env("PATH", clients_path())
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let put = tokio::task::spawn_blocking(move || put.wait_with_output());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!put.is_finished(), "a PUT of claimed bytes ended");
    let (at, blob) = (index.clone(), id.clone());
    assert!(blocking(move || at.refs(&blob).unwrap().collecting).await);
    // ...which deletes the blob (a native delete takes the claim over).
    assert_eq!(fleet.code("DELETE", &id).await, 204);
    let output = put.await.unwrap().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The PUT stored the bytes again: they read back, and the first
    // claim's holder, late, neither holds nor forgets anything.
    aws(&[
        "s3",
        "cp",
        "--only-show-errors",
        "s3://shared/second",
        "back",
    ]);
    assert!(std::fs::read(dir.path().join("back")).unwrap() == data);
    assert_eq!(fleet.code("HEAD", &id).await, 200);
    let now = redstuff::s3::front::now_ms();
    blocking(move || {
        assert!(!index.holds_claim(&id, token, now).unwrap());
        assert!(!index.collected(&id, token).unwrap());
        assert_eq!(index.refs(&id).unwrap().count, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_copy_whose_source_cannot_be_read_midway_is_the_fleets_failure_not_the_clients() {
    let fleet = DevFleet::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    // Two parts of 5 MiB and 100 kB: the source object spans two blobs.
    std::fs::write(
        dir.path().join("config"),
        "[default]\ns3 =\n  multipart_threshold = 5MB\n  multipart_chunksize = 5MB\n",
    )
    .unwrap();
    let data = pseudo_random(5 * 1024 * 1024 + 100_000, 17);
    std::fs::write(dir.path().join("data"), &data).unwrap();
    let config = dir.path().join("config");
    let aws = |args: &[&str]| {
        let endpoint = fleet.s3.clone().unwrap();
        let mut all = vec!["--endpoint-url", endpoint.as_str()];
        all.extend_from_slice(args);
        Command::new("aws")
            .args(&all)
            .envs(s3_env(&fleet))
            .env("PATH", clients_path())
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_MAX_ATTEMPTS", "1")
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let ok = |output: std::process::Output| {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    ok(aws(&["s3", "mb", "s3://copyfail"]));
    ok(aws(&[
        "s3",
        "cp",
        "--only-show-errors",
        "data",
        "s3://copyfail/src",
    ]));
    // The second blob's pieces go from every node.
    let second = blob_id(&data[5 * 1024 * 1024..]);
    for i in 0..7 {
        let held = fleet
            .node_dir(&format!("node-{i}"))
            .join("data/blobs")
            .join(&second);
        std::fs::remove_dir_all(&held).unwrap();
    }
    let created = ok(aws(&[
        "s3api",
        "create-multipart-upload",
        "--bucket",
        "copyfail",
        "--key",
        "dst",
    ]));
    let upload: serde_json::Value = serde_json::from_str(&created).unwrap();
    let range = format!("bytes=0-{}", data.len() - 1);
    let copied = aws(&[
        "s3api",
        "upload-part-copy",
        "--bucket",
        "copyfail",
        "--key",
        "dst",
        "--upload-id",
        upload["UploadId"].as_str().unwrap(),
        "--part-number",
        "1",
        "--copy-source",
        "copyfail/src",
        "--copy-source-range",
        &range,
    ]);
    let said = String::from_utf8_lossy(&copied.stderr);
    assert!(!copied.status.success());
    assert!(said.contains("ServiceUnavailable"), "{said}");
    assert!(!said.contains("IncompleteBody"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_s3_keys_refer_to_is_not_deleted_through_the_native_api_until_none_does() {
    let fleet = DevFleet::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(200_000, 11);
    std::fs::write(dir.path().join("data"), &data).unwrap();
    let id = blob_id(&data);
    let aws = aws_in(&fleet, dir.path());
    aws(&["s3", "mb", "s3://guard"]);
    aws(&["s3", "cp", "--only-show-errors", "data", "s3://guard/kept"]);

    // Refused, naming S3, and nothing changes.
    let refused = fleet
        .http
        .delete(format!("{}/v1/blobs/{id}", fleet.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 409);
    let message = refused.text().await.unwrap();
    assert!(message.contains("S3"), "{message}");
    assert_eq!(fleet.code("HEAD", &id).await, 200);
    aws(&["s3", "cp", "--only-show-errors", "s3://guard/kept", "back"]);
    assert!(std::fs::read(dir.path().join("back")).unwrap() == data);

    // Once no key refers to it, the native API deletes it at once.
    aws(&["s3", "rm", "--only-show-errors", "s3://guard/kept"]);
    assert_eq!(fleet.code("DELETE", &id).await, 204);
    assert_eq!(fleet.code("HEAD", &id).await, 404);

    // The delete's claim is released: S3 stores the same bytes again.
    aws(&["s3", "cp", "--only-show-errors", "data", "s3://guard/again"]);
    aws(&[
        "s3",
        "cp",
        "--only-show-errors",
        "s3://guard/again",
        "again",
    ]);
    assert!(std::fs::read(dir.path().join("again")).unwrap() == data);

    // A blob S3 never stored deletes as before.
    let native = fleet.put(&pseudo_random(50_000, 12)).await;
    assert_eq!(fleet.code("DELETE", &native).await, 204);
    assert_eq!(fleet.code("HEAD", &native).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_also_stored_through_the_native_api_outlive_the_last_s3_key_either_way_round() {
    let fleet = DevFleet::start(&["--s3-collect-after-secs", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let aws = aws_in(&fleet, dir.path());
    aws(&["s3", "mb", "s3://both"]);
    let write = |name: &str, seed: u64| {
        let data = pseudo_random(150_000, seed);
        std::fs::write(dir.path().join(name), &data).unwrap();
        data
    };
    let copy = |name: &str| {
        aws(&[
            "s3",
            "cp",
            "--only-show-errors",
            name,
            &format!("s3://both/{name}"),
        ]);
    };
    let remove = |name: &str| {
        aws(&[
            "s3",
            "rm",
            "--only-show-errors",
            &format!("s3://both/{name}"),
        ]);
    };
    // Stored natively first, then under a key.
    let first = write("first", 21);
    let first_id = fleet.put(&first).await;
    copy("first");
    // Under a key first, then natively.
    let second = write("second", 22);
    copy("second");
    let second_id = fleet.put(&second).await;
    assert_eq!(second_id, blob_id(&second));
    // Bytes only S3 holds: the collector's witness.
    let third = write("third", 23);
    copy("third");
    for name in ["first", "second", "third"] {
        remove(name);
    }
    let start = Instant::now();
    while fleet.code("HEAD", &blob_id(&third)).await != 404 {
        assert!(start.elapsed() < WAIT, "S3's own bytes are never collected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A few more rounds of the collector.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (id, data) in [(&first_id, &first), (&second_id, &second)] {
        let back = fleet
            .http
            .get(format!("{}/v1/blobs/{id}", fleet.gateway))
            .send()
            .await
            .unwrap();
        assert_eq!(back.status().as_u16(), 200, "{id} was collected");
        assert!(back.bytes().await.unwrap() == data.as_slice());
    }
    // The native side still deletes its own.
    assert_eq!(fleet.code("DELETE", &first_id).await, 204);
    assert_eq!(fleet.code("HEAD", &first_id).await, 404);
}
