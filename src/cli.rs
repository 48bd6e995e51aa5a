//! The user commands that talk to a gateway: put, get, status.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncWriteExt;

use redstuff::units::format_bytes;
use redstuff::wire::StoredBlob;
use redstuff::write_behind::WriteBehindFile;

/// Transfers shorter than this show no progress bar.
const PROGRESS_THRESHOLD: u64 = 8 << 20;

fn progress(len: u64, label: &str) -> ProgressBar {
    if len < PROGRESS_THRESHOLD {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template(
            "{msg} {bytes}/{total_bytes} [{bar:30}] {percent}% {bytes_per_sec}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

async fn error_of(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
        .unwrap_or(body);
    let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
        " (pass --token or set REDSTUFF_TOKEN; `redstuff dev` writes its token to DATA_DIR/token)"
    } else {
        ""
    };
    anyhow::anyhow!("the gateway answered {status}: {message}{hint}")
}

fn http() -> anyhow::Result<reqwest::Client> {
    Ok(redstuff::http::client_builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()?)
}

/// Adds the user token, when there is one.
fn authorized(request: reqwest::RequestBuilder, token: &Option<String>) -> reqwest::RequestBuilder {
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// `redstuff put FILE`: prints the blob id (or JSON) on stdout.
pub async fn put(
    file: &Path,
    gateway: &str,
    token: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let handle = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    let len = handle.metadata().await?.len();
    let label = format!(
        "uploading {}",
        file.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into())
    );
    let bar = progress(len, &label);
    let counted = bar.clone();
    // Large reads: the default 4 KiB chunks cost more than the bytes.
    let stream =
        tokio_util::io::ReaderStream::with_capacity(handle, 1 << 20).inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                counted.inc(chunk.len() as u64);
            }
        });
    let request = http()?.put(format!("{}/v1/blobs", gateway.trim_end_matches('/')));
    let response = authorized(request, &token)
        .header("content-length", len)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .with_context(|| {
            // A gateway refuses an upload without credentials before it
            // reads the body, so a large one ends as a broken connection,
            // not as the 401.
            let hint = if token.is_none() {
                " (no token was sent: uploads need --token or REDSTUFF_TOKEN, and the gateway \
                 refuses them before reading the body)"
            } else {
                ""
            };
            format!("cannot reach the gateway at {gateway}{hint}")
        })?;
    bar.finish_and_clear();
    if !response.status().is_success() {
        return Err(error_of(response).await);
    }
    let stored: StoredBlob = response.json().await?;
    if json {
        println!("{}", serde_json::to_string(&stored)?);
    } else {
        println!("{}", stored.id);
        if !stored.shards_missing.is_empty() {
            eprintln!(
                "stored durably; shards {:?} still miss slivers and will be repaired",
                stored.shards_missing
            );
        }
        if let Some(note) = &stored.note {
            eprintln!("{note}");
        }
    }
    Ok(())
}

/// `redstuff get ID -o FILE` (or to stdout with `-o -`).
pub async fn get(
    id: &str,
    output: &Path,
    gateway: &str,
    token: Option<String>,
) -> anyhow::Result<()> {
    let request = http()?.get(format!("{}/v1/blobs/{id}", gateway.trim_end_matches('/')));
    let response = authorized(request, &token)
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))?;
    if !response.status().is_success() {
        return Err(error_of(response).await);
    }
    let len = response.content_length().unwrap_or(0);
    let to_stdout = output == Path::new("-");
    let bar = if to_stdout {
        ProgressBar::hidden()
    } else {
        progress(len, "downloading")
    };
    // Write next to the target and rename at the end: no half file on
    // failure. A device or a pipe (`-o /dev/null`) is written in place: a
    // rename would replace it with a regular file.
    let in_place = writes_in_place(output);
    let partial = if in_place {
        output.to_path_buf()
    } else {
        output.with_extension("partial")
    };
    let mut sink = if to_stdout {
        Sink::Stdout
    } else if in_place {
        Sink::InPlace(
            tokio::fs::OpenOptions::new()
                .write(true)
                .open(&partial)
                .await
                .with_context(|| format!("cannot write {}", partial.display()))?,
        )
    } else {
        let file = std::fs::File::create(&partial)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        Sink::File(WriteBehindFile::new(file))
    };
    let mut received = 0u64;
    let mut stream = response.bytes_stream();
    let received = loop {
        let chunk = match stream.next().await {
            None => break Ok(received),
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                break Err(anyhow::anyhow!(
                    "download interrupted after {received} of {len} bytes: {e}"
                ))
            }
        };
        received += chunk.len() as u64;
        bar.inc(chunk.len() as u64);
        let written = match &mut sink {
            Sink::Stdout => std::io::stdout().write_all(&chunk),
            Sink::InPlace(f) => f.write_all(&chunk).await,
            Sink::File(f) => f.write(chunk).await,
        };
        if let Err(e) = written {
            break Err(anyhow::anyhow!("cannot write {}: {e}", partial.display()));
        }
    };
    bar.finish_and_clear();
    let finished = received.and_then(|received| {
        anyhow::ensure!(
            to_stdout || received == len,
            "download ended after {received} of {len} bytes"
        );
        Ok(())
    });
    let durable = match (finished, sink) {
        (Err(e), _) => Err(e),
        (Ok(()), Sink::Stdout) => return Ok(std::io::stdout().flush()?),
        (Ok(()), Sink::InPlace(mut f)) => return Ok(f.flush().await?),
        (Ok(()), Sink::File(f)) => f
            .finish()
            .await
            .with_context(|| format!("cannot write {}", partial.display())),
    };
    if let Err(e) = durable {
        if !to_stdout && !in_place {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        return Err(e);
    }
    tokio::fs::rename(&partial, output).await?;
    Ok(())
}

/// Where `get` writes a blob.
enum Sink {
    /// Standard output (`-o -`).
    Stdout,
    /// A device or pipe, written as it is.
    InPlace(tokio::fs::File),
    /// A regular file, made durable before it is renamed into place.
    File(WriteBehindFile),
}

/// Whether `get` writes straight into `output` rather than into a partial
/// file renamed onto it: when it exists and is neither a regular file nor
/// a directory (a device, a pipe).
fn writes_in_place(output: &Path) -> bool {
    std::fs::metadata(output).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// `redstuff status`: the fleet as a table, or JSON.
pub async fn status(gateway: &str, token: Option<String>, json: bool) -> anyhow::Result<()> {
    let request = http()?.get(format!("{}/v1/status", gateway.trim_end_matches('/')));
    let response = authorized(request, &token)
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))?;
    if !response.status().is_success() {
        return Err(error_of(response).await);
    }
    let status: serde_json::Value = response.json().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let age = status["observed_at_ms"]
        .as_u64()
        .map_or(String::new(), |at| {
            let now = redstuff::blob_state::now_nanos() / 1_000_000;
            format!(
                "  (as of {:.1} s ago)",
                now.saturating_sub(at) as f64 / 1000.0
            )
        });
    println!(
        "shards {}  tolerates {} lost shards ({} whole nodes){age}",
        status["shards"], status["fault_tolerance"], status["tolerated_node_losses"]
    );
    println!();
    println!(
        "{:<10} {:>8} {:<24} {:<10} {:>8}  shards",
        "NODE", "PID", "ADDRESS", "STATE", "RESTARTS"
    );
    for node in status["nodes"].as_array().into_iter().flatten() {
        let shards: Vec<String> = node["shards"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s.to_string())
            .collect();
        println!(
            "{:<10} {:>8} {:<24} {:<10} {:>8}  {}",
            node["name"].as_str().unwrap_or("?"),
            node["pid"].as_u64().map_or("-".into(), |p| p.to_string()),
            node["address"].as_str().unwrap_or("?"),
            node["state"].as_str().unwrap_or("?"),
            node["restarts"],
            shards.join(",")
        );
    }
    println!();
    println!(
        "{:<44} {:>10} {:<10} {:>7}",
        "BLOB", "SIZE", "HEALTH", "SHARDS"
    );
    for blob in status["blobs"].as_array().into_iter().flatten() {
        let health = blob["health"].as_str().unwrap_or("?");
        let shown = if blob["repairing"].as_bool() == Some(true) && health != "Healthy" {
            "Repairing"
        } else {
            health
        };
        println!(
            "{:<44} {:>10} {:<10} {:>3}/{}",
            blob["id"].as_str().unwrap_or("?"),
            format_bytes(blob["size"].as_u64().unwrap_or(0)),
            shown,
            blob["shards_complete"],
            status["shards"]
        );
    }
    Ok(())
}
