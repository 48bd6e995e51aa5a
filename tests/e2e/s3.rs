//! S3 on the real cluster: the StorageCluster's `s3` section gives the
//! gateway an S3 port, an index on a claim of its own and an access key
//! in a Secret; the aws cli stores and reads through a port-forward, a
//! deleted Blob naming an object's bytes leaves them to the object, the
//! index outlives the gateway pod, a key added to the Secret signs in
//! without a restart, and an object's bytes get no upload Blob.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::cluster::CLUSTER;
use crate::data::shared_bytes;
use crate::harness::{pod_ready, wait_for, E2e, NS};

/// The bytes of an object only S3 holds.
const SCRATCH: &[u8] = b"scratch bytes of their own";

fn aws_program() -> PathBuf {
    let venv = std::env::var("REDSTUFF_S3_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/redstuff/s3-clients")
        });
    let aws = venv.join("bin/aws");
    if aws.exists() {
        aws
    } else {
        PathBuf::from("aws")
    }
}

/// The access key in the operator's Secret of cluster `name`.
pub fn keys(e2e: &E2e, name: &str) -> anyhow::Result<(String, String)> {
    let secret = e2e
        .get("secret", &format!("{name}-s3-credentials"), NS)?
        .ok_or_else(|| anyhow::anyhow!("no {name}-s3-credentials Secret"))?;
    use base64::Engine as _;
    let field = |key: &str| -> anyhow::Result<String> {
        let encoded = secret["data"][key].as_str().unwrap_or_default();
        Ok(String::from_utf8(
            base64::engine::general_purpose::STANDARD.decode(encoded)?,
        )?)
    };
    Ok((field("accessKey")?, field("secretKey")?))
}

/// Where `aws` finds the CA of a gateway serving TLS, in its directory.
const CA_FILE: &str = "gateway-ca.crt";

/// Runs the aws cli against `endpoint` with `keys` in `cwd`; its output,
/// or an error with its complaint. A `CA_FILE` in `cwd` is the CA it
/// trusts (AWS_CA_BUNDLE).
pub fn aws(
    endpoint: &str,
    keys: &(String, String),
    args: &[&str],
    cwd: &std::path::Path,
) -> anyhow::Result<String> {
    let mut command = Command::new(aws_program());
    let ca = cwd.join(CA_FILE);
    if ca.exists() {
        command.env("AWS_CA_BUNDLE", &ca);
    }
    let output = command
        .arg("--endpoint-url")
        .arg(endpoint)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", &keys.0)
        .env("AWS_SECRET_ACCESS_KEY", &keys.1)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .current_dir(cwd)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).to_string())
}

/// The gateway pods of cluster `name`.
pub fn gateway_pods(e2e: &E2e, name: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    e2e.list(
        "pods",
        NS,
        &format!("app.kubernetes.io/instance={name},app.kubernetes.io/component=gateway"),
    )
}

/// A port-forward to the S3 port of cluster `name`'s gateway, and its URL:
/// `https://` when the gateway serves TLS, its CA then written to
/// `CA_FILE` in `work` for `aws`.
fn forward_s3(
    e2e: &E2e,
    name: &str,
    work: &std::path::Path,
) -> anyhow::Result<(crate::harness::PortForward, String)> {
    let forward = e2e.port_forward(NS, &format!("{name}-gateway"), 7780)?;
    let url = match e2e.gateway_ca(name)? {
        Some(pem) => {
            std::fs::write(work.join(CA_FILE), pem)?;
            forward.url.replacen("http://", "https://", 1)
        }
        None => forward.url.clone(),
    };
    Ok((forward, url))
}

/// Stores file `file` of `work` at `to` (s3://BUCKET/KEY) through S3 at `url`.
fn copy_in(
    url: &str,
    keys: &(String, String),
    file: &str,
    to: &str,
    work: &std::path::Path,
) -> anyhow::Result<()> {
    aws(
        url,
        keys,
        &["s3", "cp", "--only-show-errors", file, to],
        work,
    )?;
    Ok(())
}

/// The bytes of the scenario's object, read through S3 at `url`.
fn read_object(
    url: &str,
    keys: &(String, String),
    work: &std::path::Path,
) -> anyhow::Result<Vec<u8>> {
    aws(
        url,
        keys,
        &[
            "s3",
            "cp",
            "--only-show-errors",
            "s3://e2e-bucket/dir/an object",
            "back",
        ],
        work,
    )?;
    Ok(std::fs::read(work.join("back"))?)
}

/// The scenario's object reads back through S3 as stored (with the
/// cluster's keys as they are now).
pub fn the_object_reads_back(e2e: &E2e) -> anyhow::Result<()> {
    let keys = keys(e2e, CLUSTER)?;
    let work = tempfile::tempdir()?;
    let (_forward, url) = forward_s3(e2e, CLUSTER, work.path())?;
    anyhow::ensure!(
        read_object(&url, &keys, work.path())? == shared_bytes(),
        "the object read back differs"
    );
    Ok(())
}

pub async fn s3_through_the_gateway(e2e: &E2e) -> anyhow::Result<()> {
    // The e2e cluster serves TLS: S3 too, with the gateway's certificate.
    let status = e2e.cluster_status(CLUSTER)?;
    anyhow::ensure!(
        status["s3Endpoint"] == format!("https://{CLUSTER}-gateway.{NS}.svc:7780").as_str(),
        "status: {status:#}"
    );
    let claim = e2e.get("persistentvolumeclaim", &format!("{CLUSTER}-s3-index"), NS)?;
    anyhow::ensure!(claim.is_some(), "no index claim");
    let keys = keys(e2e, CLUSTER)?;
    let work = tempfile::tempdir()?;
    let data = shared_bytes();
    std::fs::write(work.path().join("object"), &data)?;
    {
        let (_forward, url) = forward_s3(e2e, CLUSTER, work.path())?;
        aws(&url, &keys, &["s3", "mb", "s3://e2e-bucket"], work.path())?;
        copy_in(
            &url,
            &keys,
            "object",
            "s3://e2e-bucket/dir/an object",
            work.path(),
        )?;
        let listed = aws(
            &url,
            &keys,
            &["s3", "ls", "--recursive", "s3://e2e-bucket"],
            work.path(),
        )?;
        anyhow::ensure!(listed.contains("dir/an object"), "{listed}");
        // Bytes only S3 holds, in a bucket of their own (removed below).
        std::fs::write(work.path().join("scratch"), SCRATCH)?;
        aws(&url, &keys, &["s3", "mb", "s3://e2e-scratch"], work.path())?;
        copy_in(&url, &keys, "scratch", "s3://e2e-scratch/s", work.path())?;
        // The object holds the bytes of the blob put through the native
        // API, which the operator recorded as a Blob: deleting that Blob
        // keeps the bytes the object holds (the gateway refuses).
        let record = crate::disruptions::shared_record();
        e2e.kubectl(&["-n", NS, "delete", "blob", &record, "--wait=true"])?;
        let kept = e2e
            .list("events.events.k8s.io", NS, "")?
            .iter()
            .any(|e| e["regarding"]["name"] == record.as_str() && e["reason"] == "SliversKept");
        anyhow::ensure!(kept, "no SliversKept Event for {record}");
        anyhow::ensure!(
            read_object(&url, &keys, work.path())? == data,
            "the object read back after its blob's Blob was deleted differs"
        );
    }
    // The gateway pod goes; its successor opens the same index.
    let pods = gateway_pods(e2e, CLUSTER)?;
    let old = pods
        .first()
        .and_then(|p| p["metadata"]["name"].as_str())
        .ok_or_else(|| anyhow::anyhow!("no gateway pod"))?
        .to_string();
    e2e.kubectl(&["delete", "pod", "-n", NS, &old, "--wait=true"])?;
    wait_for("a new gateway pod ready", Duration::from_secs(180), || {
        Ok(gateway_pods(e2e, CLUSTER)?
            .iter()
            .find(|p| p["metadata"]["name"] != old.as_str() && pod_ready(p))
            .map(|_| ()))
    })
    .await?;
    let (_forward, url) = forward_s3(e2e, CLUSTER, work.path())?;
    anyhow::ensure!(
        read_object(&url, &keys, work.path())? == data,
        "the object read back after the gateway pod was replaced differs"
    );
    // A second user: a `credentials` entry added to the keys' Secret is
    // taken by the running gateway (kubelet updates the mounted Secret).
    use base64::Engine as _;
    let alice = ("E2EALICEKEY".to_string(), "alice's secret".to_string());
    let profile = format!(
        "[alice]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        alice.0, alice.1
    );
    e2e.merge_patch(
        "secret",
        &format!("{CLUSTER}-s3-credentials"),
        &serde_json::json!({"data": {
            "credentials": base64::engine::general_purpose::STANDARD.encode(profile)
        }})
        .to_string(),
    )?;
    let listed = wait_for(
        "the gateway to accept a key added to its Secret",
        Duration::from_secs(240),
        || {
            Ok(aws(
                &url,
                &alice,
                &["s3", "ls", "s3://e2e-bucket/dir/"],
                work.path(),
            )
            .ok())
        },
    )
    .await?;
    anyhow::ensure!(listed.contains("an object"), "{listed}");
    aws(&url, &keys, &["s3", "ls"], work.path())
        .map_err(|e| anyhow::anyhow!("the first key stopped working: {e}"))?;
    // The operator reconciled many times since the scratch object was
    // stored (a gateway pod replaced, a key taken), recording native
    // uploads all along (data.rs): the bytes only S3 holds got no Blob.
    let scratch_record = crate::disruptions::upload_record_of(SCRATCH);
    anyhow::ensure!(
        e2e.get("blob", &scratch_record, NS)?.is_none(),
        "the bytes of an S3 object were recorded as the upload {scratch_record}"
    );
    // Removing keys and buckets, on a bucket of its own: the object above
    // stays, so the shared blob it refers to is never collected while
    // the other scenarios use it.
    aws(
        &url,
        &keys,
        &["s3", "rm", "--only-show-errors", "s3://e2e-scratch/s"],
        work.path(),
    )?;
    aws(&url, &keys, &["s3", "rb", "s3://e2e-scratch"], work.path())?;
    Ok(())
}
