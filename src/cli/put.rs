//! `redstuff put FILE`: one blob from a file, tried again while the gateway
//! is busy or out of reach (a PUT is safe to repeat: the blob's id follows
//! from its bytes and a failed upload is never visible), or from standard
//! input (`-`), streamed as it comes and sent once: what was read cannot
//! be read again.

use std::path::Path;

use anyhow::Context as _;
use futures_util::StreamExt;
use indicatif::ProgressBar;

use redstuff::retry::RetryPolicy;
use redstuff::wire::StoredBlob;

use super::{authorized, before_retry, http, progress, untrusted_certificate, AttemptError};

/// `redstuff put FILE`: prints the blob id (or JSON) on stdout.
pub async fn put(
    file: &Path,
    gateway: &str,
    token: Option<String>,
    ca: Option<&Path>,
    json: bool,
    retries: u32,
) -> anyhow::Result<()> {
    let http = http(ca)?;
    let from_stdin = file == Path::new("-");
    let policy = RetryPolicy::with_retries(if from_stdin { 0 } else { retries });
    let mut failed = 0;
    let stored = loop {
        let attempt = if from_stdin {
            put_stdin(&http, gateway, &token).await
        } else {
            put_once(&http, file, gateway, &token).await
        };
        match attempt {
            Ok(stored) => break stored,
            Err(e) => {
                failed += 1;
                before_retry(&policy, failed, e, &ProgressBar::hidden()).await?;
            }
        }
    };
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

/// One attempt: the whole file, streamed from its start.
async fn put_once(
    http: &reqwest::Client,
    file: &Path,
    gateway: &str,
    token: &Option<String>,
) -> Result<StoredBlob, AttemptError> {
    let handle = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))
        .map_err(AttemptError::last)?;
    let len = handle
        .metadata()
        .await
        .with_context(|| format!("cannot read {}", file.display()))
        .map_err(AttemptError::last)?
        .len();
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
    let answer = upload(
        http,
        gateway,
        token,
        Some(len),
        reqwest::Body::wrap_stream(stream),
    )
    .await;
    bar.finish_and_clear();
    answer
}

/// The one attempt from standard input: sent as it is read, its length
/// unknown until it ends (chunked).
async fn put_stdin(
    http: &reqwest::Client,
    gateway: &str,
    token: &Option<String>,
) -> Result<StoredBlob, AttemptError> {
    let stream = tokio_util::io::ReaderStream::with_capacity(tokio::io::stdin(), 1 << 20);
    let body = reqwest::Body::wrap_stream(stream);
    upload(http, gateway, token, None, body).await.map_err(|e| {
        if e.failure.is_retryable() {
            AttemptError::last(anyhow::anyhow!(
                "{:#} (standard input is sent once: not tried again)",
                e.error
            ))
        } else {
            e
        }
    })
}

/// Sends `body` (of `len` bytes, when known) as one upload and reads what
/// the gateway answers.
async fn upload(
    http: &reqwest::Client,
    gateway: &str,
    token: &Option<String>,
    len: Option<u64>,
    body: reqwest::Body,
) -> Result<StoredBlob, AttemptError> {
    let mut request = authorized(
        http.put(format!("{}/v1/blobs", gateway.trim_end_matches('/'))),
        token,
    );
    if let Some(len) = len {
        request = request.header("content-length", len);
    }
    let response = match request.body(body).send().await {
        Ok(response) => response,
        // A gateway refuses an upload without credentials before it reads
        // the body; one longer than it reads on after a refusal may end as
        // a broken connection, not as the 401: no retry changes that.
        Err(e) if token.is_none() && untrusted_certificate(&e).is_none() => {
            return Err(AttemptError::last(anyhow::anyhow!(
                "cannot reach the gateway at {gateway} (no token was sent: uploads need --token \
                 or REDSTUFF_TOKEN, and the gateway refuses them before reading the body): {e:#}"
            )))
        }
        // A busy gateway's refusal can end the same way when the body is
        // still being sent; it is worth another attempt.
        Err(e) => return Err(AttemptError::unanswered(e, gateway)),
    };
    if !response.status().is_success() {
        return Err(AttemptError::answered(response).await);
    }
    response.json().await.map_err(|e| {
        AttemptError::transport(anyhow::anyhow!("the gateway's answer broke off: {e:#}"))
    })
}
