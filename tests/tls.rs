//! TLS with real processes: a `redstuff dev --tls` fleet stores, reads and
//! rebuilds a wiped node with every node call over TLS, and a hung node
//! stalls nothing; its gateway serves the native API over TLS to the CLI
//! trusting the fleet's CA (and to nobody else), and a renewed certificate
//! without a restart; a node serves a renewed certificate without a
//! restart, keeps serving the current one when its files change into
//! something unusable, and refuses to start on a key that is not its
//! certificate's; a standalone gateway keeps probes and metrics on a plain
//! port of their own.

mod dev_fleet;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dev_fleet::{all_healthy, healed, pseudo_random, DevFleet};
use redstuff::tls::{LocalCa, TrustedCa, SERVING_VALIDITY};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// The nodes' URLs in a fleet's map.
fn node_urls(fleet: &DevFleet) -> Vec<String> {
    let map: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fleet.data_dir().join("fleet.json")).unwrap())
            .unwrap();
    map["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["url"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_fleet_stores_reads_and_rebuilds_a_wiped_node_over_tls_and_passes_a_hung_one_over() {
    let fleet = DevFleet::start(&["--tls", "--no-s3"]);
    let urls = node_urls(&fleet);
    assert!(
        urls.iter().all(|u| u.starts_with("https://127.0.0.1:")),
        "{urls:?}"
    );

    // A node answers over TLS to a caller trusting the fleet's CA only;
    // plain HTTP gets no answer at all.
    let ca = TrustedCa::from_pem_file(&fleet.data_dir().join("tls/ca.crt")).unwrap();
    let trusting = redstuff::http::client_builder_trusting(Some(&ca))
        .build()
        .unwrap();
    let healthz = format!("{}/healthz", urls[0]);
    assert_eq!(trusting.get(&healthz).send().await.unwrap().status(), 200);
    let untrusting = redstuff::http::client();
    let refused = untrusting.get(&healthz).send().await.unwrap_err();
    assert!(refused.is_connect(), "{refused:?}");
    let plain = healthz.replacen("https://", "http://", 1);
    assert!(untrusting.get(&plain).send().await.is_err());

    let sizes = [0usize, 100_000, (3 << 20) + 7];
    let mut blobs = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let data = pseudo_random(*size, 40 + i as u64);
        blobs.push((fleet.put(&data).await, data));
    }
    let status = fleet
        .wait_for("3 healthy blobs", |s| all_healthy(s, 3))
        .await;

    // A node loses its process and its disk: reads go on, and once it is
    // back its pairs are rebuilt from symbols its peers send over TLS.
    fleet.kill_and_wipe(&status, "node-2");
    fleet
        .wait_for("node-2 down", |s| {
            DevFleet::state_of(s, "node-2") != "ready"
        })
        .await;
    for (id, data) in &blobs {
        assert!(fleet.get(id).await == *data, "blob {id} with node-2 down");
    }
    fleet.release("node-2");
    let healed = fleet
        .wait_for("every blob Healthy again, no repair running", |s| {
            healed(s, 3)
        })
        .await;
    for blob in healed["blobs"].as_array().unwrap() {
        if blob["size"].as_u64().unwrap() > 0 {
            assert!(
                blob["repair_bytes"].as_u64().unwrap() > 0,
                "not rebuilt by a repair: {blob}"
            );
        }
    }
    for (id, data) in &blobs {
        assert!(fleet.get(id).await == *data, "blob {id} after the repair");
    }

    // A hung node (SIGSTOP: its socket accepts, no TLS handshake ever
    // completes) stalls neither reads nor writes.
    let hung = DevFleet::pid_of(&healed, "node-5");
    fleet.stop(hung);
    let data = pseudo_random(2 << 20, 50);
    let id = fleet.put(&data).await;
    blobs.push((id, data));
    for (id, data) in &blobs {
        assert!(fleet.get(id).await == *data, "blob {id} with node-5 hung");
    }
    fleet.resume(hung);
}

/// The cluster token of the nodes these tests start.
const TOKEN: &str = "t";

/// A `redstuff node` process serving TLS with the files in `dir`.
struct TlsNode {
    child: Child,
    addr: String,
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_issued(ca: &LocalCa, dir: &Path) -> String {
    write_issued_for(ca, dir, SERVING_VALIDITY).cert_pem
}

/// A certificate for 127.0.0.1 valid for `validity`, written into `dir`.
fn write_issued_for(ca: &LocalCa, dir: &Path, validity: Duration) -> redstuff::tls::IssuedCert {
    let issued = ca.issue(&["127.0.0.1".to_string()], validity).unwrap();
    // Each file replaced whole, one after the other (the kubelet swaps both
    // at once; this way the node also sees a certificate with the old key).
    for (name, content) in [("tls.key", &issued.key_pem), ("tls.crt", &issued.cert_pem)] {
        std::fs::write(dir.join(format!("{name}.new")), content).unwrap();
        std::fs::rename(dir.join(format!("{name}.new")), dir.join(name)).unwrap();
    }
    issued
}

fn unix(at: std::time::SystemTime) -> f64 {
    at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64
}

/// A metric of the node at `addr` (its API's /metrics needs no token).
async fn node_metric(addr: &str, ca: &LocalCa, name: &str) -> Option<f64> {
    let trusted = TrustedCa::from_pem(Path::new("ca"), ca.cert_pem().as_bytes()).unwrap();
    let client = redstuff::http::client_builder_trusting(Some(&trusted))
        .build()
        .unwrap();
    metric_at(&client, &format!("https://{addr}"), name).await
}

const EXPIRY: &str = "redstuff_node_tls_certificate_expiry_timestamp_seconds";

fn start_tls_node(dir: &Path) -> Result<TlsNode, String> {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args(["node", "--name", "n", "--shards", "0"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--token-file")
        .arg(dir.join("token"))
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .env("REDSTUFF_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    match lines.next() {
        Some(Ok(line)) => {
            let event: serde_json::Value = serde_json::from_str(&line).unwrap();
            let url = event["url"].as_str().unwrap();
            let addr = url.strip_prefix("https://").expect(url).to_string();
            Ok(TlsNode { child, addr })
        }
        _ => {
            let output = child.wait_with_output().unwrap();
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }
}

/// The certificate a new TLS connection to `addr` is shown, checked
/// against `ca`.
async fn served_cert(addr: &str, ca: &LocalCa) -> CertificateDer<'static> {
    served_cert_of(addr, ca)
        .await
        .expect("a certificate the CA issued")
}

/// The same; `None` when the certificate shown is not one `ca` issued.
async fn served_cert_of(addr: &str, ca: &LocalCa) -> Option<CertificateDer<'static>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let stream = connector.connect(name, socket).await.ok()?;
    Some(stream.get_ref().1.peer_certificates().unwrap()[0].clone())
}

fn der_of(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_a_renewed_certificate_without_a_restart_and_keeps_the_current_one_over_a_bad_change(
) {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::generate("test").unwrap();
    let first = write_issued_for(&ca, dir.path(), SERVING_VALIDITY);
    let node = start_tls_node(dir.path()).expect("a node with a valid pair starts");
    assert_eq!(served_cert(&node.addr, &ca).await, der_of(&first.cert_pem));
    // Its expiry is exported (for the RedstuffNodeCertificateExpiring
    // alert), and a caller that does not trust its CA is counted.
    assert_eq!(
        node_metric(&node.addr, &ca, EXPIRY).await,
        Some(unix(first.not_after))
    );
    let untrusting = redstuff::http::client();
    assert!(untrusting
        .get(format!("https://{}/healthz", node.addr))
        .send()
        .await
        .is_err());
    let failures = "redstuff_node_tls_handshake_failures_total";
    let start = Instant::now();
    while node_metric(&node.addr, &ca, failures).await != Some(1.0) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the refused handshake was not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Renewed: new connections are shown the new certificate, and its
    // expiry is exported.
    let renewed_cert = write_issued_for(&ca, dir.path(), SERVING_VALIDITY * 2);
    let renewed = renewed_cert.cert_pem.clone();
    let start = Instant::now();
    while served_cert(&node.addr, &ca).await != der_of(&renewed)
        || node_metric(&node.addr, &ca, EXPIRY).await != Some(unix(renewed_cert.not_after))
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the renewed certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A key that is not the certificate's (another pair's key): the node
    // goes on serving the renewed pair, with no restart.
    let other = ca
        .issue(&["127.0.0.1".to_string()], SERVING_VALIDITY)
        .unwrap();
    std::fs::write(dir.path().join("tls.key"), &other.key_pem).unwrap();
    // Past two reload periods, so the bad pair was read at least once.
    tokio::time::sleep(redstuff::tls::TLS_RELOAD_PERIOD * 2 + Duration::from_secs(1)).await;
    assert_eq!(served_cert(&node.addr, &ca).await, der_of(&renewed));
}

#[test]
fn a_node_refuses_to_start_on_a_key_that_is_not_its_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::generate("test").unwrap();
    write_issued(&ca, dir.path());
    let other = ca
        .issue(&["127.0.0.1".to_string()], SERVING_VALIDITY)
        .unwrap();
    std::fs::write(dir.path().join("tls.key"), &other.key_pem).unwrap();
    let Err(stderr) = start_tls_node(dir.path()) else {
        panic!("a node started with a key that is not its certificate's");
    };
    assert!(
        stderr.contains("tls.key") && stderr.contains("not the key of"),
        "{stderr}"
    );

    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    let Err(stderr) = start_tls_node(dir.path()) else {
        panic!("a node started with no certificate");
    };
    assert!(stderr.contains("tls.crt"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_ca_is_trusted_by_callers_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first_ca = LocalCa::generate("first").unwrap();
    write_issued(&first_ca, dir.path());
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, first_ca.cert_pem()).unwrap();
    let node = start_tls_node(dir.path()).expect("the node starts");
    // A caller as the gateway is one (`NodeCalls::trusting`): checking
    // nodes against the CA's file, read again when it changes. Every
    // check on a new connection with a full handshake (a pooled or resumed
    // session was checked when it was first made).
    let ca = TrustedCa::from_pem_file(&ca_file).unwrap();
    let trust = redstuff::tls::FleetTrust::watching(&ca, redstuff::tls::TLS_RELOAD_PERIOD);
    let mut config = trust.client_config();
    config.resumption = rustls::client::Resumption::disabled();
    let http = redstuff::http::client_builder()
        .tls_backend_preconfigured(config)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let healthz = format!("https://{}/healthz", node.addr);
    let answered = || async {
        http.get(&healthz)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    };
    assert!(answered().await, "a node its CA signed for");

    // A new CA: the node gets a certificate it issued, the caller its
    // certificate; both are read again from their files.
    let second_ca = LocalCa::generate("second").unwrap();
    write_issued(&second_ca, dir.path());
    std::fs::write(&ca_file, second_ca.cert_pem()).unwrap();
    let start = Instant::now();
    while served_cert_of(&node.addr, &second_ca).await.is_none() || !answered().await {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the caller did not come to trust the new CA"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And no longer the old one: a node still showing a certificate of
    // the first CA is refused.
    write_issued(&first_ca, dir.path());
    let start = Instant::now();
    while answered().await {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "a certificate of the replaced CA is still trusted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the `redstuff` CLI in `cwd` with `args`; its status, stdout and
/// stderr. The CA is never found by default (no `redstuff-dev` in `cwd`,
/// no REDSTUFF_TLS_CA).
fn cli(cwd: &Path, args: &[&str], token: &str) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args(args)
        .env("REDSTUFF_TOKEN", token)
        .env_remove("REDSTUFF_TLS_CA")
        .env_remove("REDSTUFF_GATEWAY")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A metric of the server at `url`, read with `http`.
async fn metric_at(http: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_fleets_gateway_serves_https_to_clients_trusting_its_ca_only_and_a_renewed_certificate_without_a_restart(
) {
    let fleet = DevFleet::start(&["--tls", "--no-s3"]);
    let gateway = fleet.gateway.clone();
    assert!(gateway.starts_with("https://127.0.0.1:"), "{gateway}");
    let ca_file = fleet.data_dir().join("tls/ca.crt");
    let ca_arg = ca_file.to_str().unwrap();
    let token = std::fs::read_to_string(fleet.data_dir().join("token")).unwrap();
    let token = token.trim();
    let work = tempfile::tempdir().unwrap();
    let data = pseudo_random((2 << 20) + 3, 70);
    std::fs::write(work.path().join("blob"), &data).unwrap();

    // The CLI trusting the fleet's CA stores and reads back.
    let (ok, id, err) = cli(
        work.path(),
        &["put", "blob", "--gateway", &gateway, "--tls-ca", ca_arg],
        token,
    );
    assert!(ok, "put over https: {err}");
    let (ok, _, err) = cli(
        work.path(),
        &[
            "get",
            &id,
            "-o",
            "back",
            "--gateway",
            &gateway,
            "--tls-ca",
            ca_arg,
        ],
        token,
    );
    assert!(ok, "get over https: {err}");
    assert!(std::fs::read(work.path().join("back")).unwrap() == data);
    // REDSTUFF_TLS_CA does the same.
    let output = Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args(["status", "--json", "--gateway", &gateway])
        .env("REDSTUFF_TOKEN", token)
        .env("REDSTUFF_TLS_CA", &ca_file)
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Without the CA: refused at once (no retry changes it), saying what
    // to do, nothing written.
    for args in [
        vec!["get", &id, "-o", "refused", "--gateway", &gateway],
        vec!["put", "blob", "--gateway", &gateway],
        vec!["status", "--gateway", &gateway],
    ] {
        let (ok, _, err) = cli(work.path(), &args, token);
        assert!(!ok, "{args:?}");
        assert!(
            err.contains("does not trust") && err.contains("--tls-ca"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("trying again"), "{args:?}: {err}");
    }
    assert!(!work.path().join("refused").exists());
    // Plain HTTP to the TLS port: an error at once (no retry changes
    // it), naming the URL to use.
    let plain = gateway.replacen("https://", "http://", 1);
    for args in [
        vec!["status", "--gateway", &plain],
        vec!["put", "blob", "--gateway", &plain],
        vec!["get", &id, "-o", "plain", "--gateway", &plain],
    ] {
        let (ok, _, err) = cli(work.path(), &args, token);
        assert!(!ok, "{args:?}");
        assert!(
            err.contains("other than HTTP") && err.contains(&format!("use {gateway}")),
            "{args:?}: {err}"
        );
        assert!(!err.contains("trying again"), "{args:?}: {err}");
    }
    assert!(!work.path().join("plain").exists());

    // The gateway exports its certificate's expiry and counts the refused
    // handshakes.
    let trusting =
        redstuff::dev::authorized_client(&fleet.data_dir().join("token"), Some(&ca_file)).unwrap();
    let expiry = "redstuff_gateway_tls_certificate_expiry_timestamp_seconds";
    let now = unix(std::time::SystemTime::now());
    let served_expiry = metric_at(&trusting, &gateway, expiry).await.unwrap();
    assert!(served_expiry > now + 80.0 * 86400.0, "{served_expiry}");
    let failures = "redstuff_gateway_tls_handshake_failures_total";
    let start = Instant::now();
    while metric_at(&trusting, &gateway, failures).await < Some(1.0) {
        assert!(start.elapsed() < Duration::from_secs(10), "not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Renewed in place (as the kubelet updates a mounted Secret): new
    // connections are shown the new certificate, with no restart.
    let ca = LocalCa::from_pem(
        &std::fs::read_to_string(&ca_file).unwrap(),
        &std::fs::read_to_string(fleet.data_dir().join("tls/ca.key")).unwrap(),
    )
    .unwrap();
    let addr = gateway.trim_start_matches("https://").to_string();
    let renewed = write_issued_for(&ca, &fleet.data_dir().join("tls"), SERVING_VALIDITY * 2);
    let start = Instant::now();
    while served_cert(&addr, &ca).await != der_of(&renewed.cert_pem) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the renewed certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let start = Instant::now();
    while metric_at(&trusting, &gateway, expiry).await != Some(unix(renewed.not_after)) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "expiry not exported"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(fleet.get(&id).await == data, "read after the renewal");
}

#[test]
fn a_gateway_serving_tls_keeps_probes_and_metrics_on_a_plain_port_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::generate("test").unwrap();
    // Named as the operator names a gateway: its Service first, then the
    // loopback names of a port-forward.
    let names = ["media-gateway.storage.svc", "localhost", "127.0.0.1"].map(String::from);
    let issued = ca.issue(&names, SERVING_VALIDITY).unwrap();
    std::fs::write(dir.path().join("tls.crt"), &issued.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &issued.key_pem).unwrap();
    std::fs::write(dir.path().join("tokens"), "t\n").unwrap();
    std::fs::write(
        dir.path().join("fleet.json"),
        r#"{"shards": 4, "segment_size": 1048576, "nodes": []}"#,
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .arg("--fleet")
        .arg(dir.path().join("fleet.json"))
        .arg("--spool-dir")
        .arg(dir.path().join("spool"))
        .arg("--cluster-token-file")
        .arg(dir.path().join("tokens"))
        .arg("--user-tokens-file")
        .arg(dir.path().join("tokens"))
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .env("REDSTUFF_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let event: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let url = event["url"].as_str().unwrap().to_string();
    let metrics = event["metrics"].as_str().unwrap().to_string();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");
        assert!(metrics.starts_with("http://127.0.0.1:"), "{metrics}");
        let plain = redstuff::http::client();
        for path in ["/healthz", "/metrics"] {
            let answer = plain.get(format!("{metrics}{path}")).send().await.unwrap();
            assert_eq!(answer.status(), 200, "{path}");
        }
        let text = plain
            .get(format!("{metrics}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains("redstuff_gateway_tls_certificate_expiry_timestamp_seconds"),
            "{text}"
        );
        // The blob API is not on the metrics port.
        let blobs = plain
            .get(format!("{metrics}/v1/blobs/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(blobs.status(), 404);
        // The API itself answers over TLS only.
        let trusted = TrustedCa::from_pem(Path::new("ca"), ca.cert_pem().as_bytes()).unwrap();
        let https = redstuff::http::client_builder_trusting(Some(&trusted))
            .build()
            .unwrap();
        let healthz = https.get(format!("{url}/healthz")).send().await.unwrap();
        assert_eq!(healthz.status(), 200);
        let plain_api = url.replacen("https://", "http://", 1);
        assert!(plain
            .get(format!("{plain_api}/healthz"))
            .send()
            .await
            .is_err());
    });
    let _ = child.kill();
    let _ = child.wait();
}
