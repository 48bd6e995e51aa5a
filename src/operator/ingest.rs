//! Ingesting a Blob's source: the bytes are spooled to a local file (a URL
//! streamed with its length capped and its SHA-256 checked; a ConfigMap
//! or Secret key written out), then streamed to the cluster's gateway,
//! which encodes and stores them. Nothing reaches the gateway unless the
//! whole source arrived and matched its digest.

use std::path::Path;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::wire::StoredBlob;
use crate::write_behind::WriteBehindFile;

/// Why a source could not be ingested; `reason()` is the condition reason.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The ConfigMap, Secret or key does not exist.
    #[error("{0}")]
    SourceNotFound(String),
    /// The URL could not be fetched.
    #[error("download of {url} failed: {message}")]
    Download {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The bytes do not have the expected SHA-256.
    #[error("SHA-256 of the source is {actual}, the spec expects {expected}")]
    ChecksumMismatch {
        /// The spec's digest.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// The source is larger than the operator ingests.
    #[error("the source is larger than the ingest limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The gateway refused or failed the upload.
    #[error("upload to the gateway {url} failed: {message}")]
    Gateway {
        /// The gateway URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The local spool failed.
    #[error("spool: {0}")]
    Spool(#[from] std::io::Error),
}

impl IngestError {
    /// The reason shown in the Blob's Ingested condition.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::SourceNotFound(_) => "SourceNotFound",
            IngestError::Download { .. } => "DownloadFailed",
            IngestError::ChecksumMismatch { .. } => "ChecksumMismatch",
            IngestError::TooLarge { .. } => "TooLarge",
            IngestError::Gateway { .. } => "GatewayFailed",
            IngestError::Spool(_) => "SpoolFailed",
        }
    }

    /// Whether trying again soon may help (a download or gateway hiccup),
    /// as opposed to a source that is wrong until someone changes it.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            IngestError::Download { .. } | IngestError::Gateway { .. } | IngestError::Spool(_)
        )
    }
}

/// Downloads `url` into `spool`, at most `limit` bytes, checking
/// `sha256` when given; returns the length.
pub async fn download(
    http: &reqwest::Client,
    url: &str,
    sha256: Option<&str>,
    limit: u64,
    spool: &Path,
) -> Result<u64, IngestError> {
    let failed = |message: String| IngestError::Download {
        url: url.to_string(),
        message,
    };
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("the server answered {}", response.status())));
    }
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(IngestError::TooLarge { limit });
    }
    let mut file = WriteBehindFile::new(std::fs::File::create(spool)?);
    let mut hasher = Sha256::new();
    let mut length = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| failed(e.to_string()))?;
        length += chunk.len() as u64;
        if length > limit {
            return Err(IngestError::TooLarge { limit });
        }
        hasher.update(&chunk);
        file.write(chunk).await?;
    }
    file.finish().await?;
    check_digest(sha256, &hasher.finalize())?;
    Ok(length)
}

fn check_digest(expected: Option<&str>, actual: &[u8]) -> Result<(), IngestError> {
    let actual = crate::hex::encode(actual);
    match expected {
        Some(expected) if expected != actual => Err(IngestError::ChecksumMismatch {
            expected: expected.to_string(),
            actual,
        }),
        _ => Ok(()),
    }
}

/// Bytes per read of a spooled file: each read of a tokio file is a trip
/// to the blocking pool, and at tokio's default 4 KiB reading 256 MiB took
/// 1-2 s of CPU instead of 0.06.
const FILE_CHUNK: usize = 1 << 20;

/// Writes bytes from a ConfigMap or Secret into `spool`.
pub async fn spool_bytes(bytes: &[u8], limit: u64, spool: &Path) -> Result<u64, IngestError> {
    if bytes.len() as u64 > limit {
        return Err(IngestError::TooLarge { limit });
    }
    let mut file = tokio::fs::File::create(spool).await?;
    file.write_all(bytes).await?;
    file.sync_all().await?;
    Ok(bytes.len() as u64)
}

/// Streams the spooled file to the gateway at `gateway` (PUT /v1/blobs),
/// with the cluster's user `token`.
pub async fn upload(
    http: &reqwest::Client,
    gateway: &str,
    token: &str,
    spool: &Path,
) -> Result<StoredBlob, IngestError> {
    let failed = |message: String| IngestError::Gateway {
        url: gateway.to_string(),
        message,
    };
    let file = tokio::fs::File::open(spool).await?;
    let length = file.metadata().await?.len();
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
        file, FILE_CHUNK,
    ));
    let response = http
        .put(format!("{}/v1/blobs", gateway.trim_end_matches('/')))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .header("content-length", length)
        .body(body)
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| failed(e.to_string()))?;
    if !status.is_success() {
        let message = crate::api_error::message_of(text);
        return Err(failed(format!("{status}: {message}")));
    }
    serde_json::from_str(&text).map_err(|e| failed(format!("unexpected answer ({e}): {text}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_that_differs_is_refused_and_none_expected_accepts_anything() {
        let digest = Sha256::digest(b"hello");
        let good = crate::hex::encode(&digest);
        assert!(check_digest(Some(&good), &digest).is_ok());
        assert!(check_digest(None, &digest).is_ok());
        let err = check_digest(Some(&"0".repeat(64)), &digest).unwrap_err();
        assert_eq!(err.reason(), "ChecksumMismatch");
        assert!(!err.is_transient());
        assert!(err.to_string().contains(&good));
    }

    #[tokio::test]
    async fn bytes_over_the_limit_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("blob");
        let err = spool_bytes(&[0; 10], 9, &spool).await.unwrap_err();
        assert_eq!(err.reason(), "TooLarge");
        assert!(!spool.exists());
        assert_eq!(spool_bytes(&[0; 10], 10, &spool).await.unwrap(), 10);
    }
}
