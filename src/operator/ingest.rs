//! Ingesting a Blob's source: the bytes are spooled to a local file (a URL
//! streamed with its length capped and its SHA-256 checked, resumed where
//! it broke off when the server takes ranges of the same version; a ConfigMap
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
    /// The ConfigMap or Secret could not be read (the API server failed
    /// or refused the read).
    #[error("{0}")]
    SourceUnreadable(String),
    /// The URL leads where Blob sources may not go.
    #[error(transparent)]
    NotAllowed(#[from] super::source_addresses::NotAllowed),
    /// The URL could not be fetched.
    #[error("download of {url} failed: {message}")]
    Download {
        /// The URL as shown ([`shown_url`]).
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
    /// The Secret named is not offered as a Blob source (it lacks the
    /// [`SECRET_SOURCE_LABEL`]).
    #[error("{0}")]
    SecretNotOffered(String),
    /// The local spool failed.
    #[error("spool: {0}")]
    Spool(#[from] std::io::Error),
    /// The spool has no room for the source now.
    #[error(transparent)]
    SpoolFull(#[from] super::spool_room::NoRoom),
}

impl IngestError {
    /// The reason shown in the Blob's Ingested condition.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::SourceNotFound(_) => "SourceNotFound",
            IngestError::SourceUnreadable(_) => "SourceUnreadable",
            IngestError::NotAllowed(_) | IngestError::SecretNotOffered(_) => "SourceNotAllowed",
            IngestError::Download { .. } => "DownloadFailed",
            IngestError::ChecksumMismatch { .. } => "ChecksumMismatch",
            IngestError::TooLarge { .. } => "TooLarge",
            IngestError::Gateway { .. } => "GatewayFailed",
            IngestError::Spool(_) => "SpoolFailed",
            IngestError::SpoolFull(_) => "SpoolFull",
        }
    }

    /// Whether trying again soon may help (a download or gateway hiccup,
    /// a ConfigMap or Secret not created or labelled yet), as opposed to bytes that
    /// are wrong, or a URL that leads where sources may not go, until
    /// someone changes the source, which are tried again only after a
    /// longer wait.
    pub fn is_transient(&self) -> bool {
        match self {
            IngestError::ChecksumMismatch { .. }
            | IngestError::TooLarge { .. }
            | IngestError::NotAllowed(_) => false,
            IngestError::SpoolFull(no_room) => !no_room.never_fits(),
            _ => true,
        }
    }
}

/// The label (value `"true"`) a Secret needs for a Blob to name it as
/// its source: the operator reads Secrets with its own rights, so without
/// the Secret's consent anyone who may create Blobs in a namespace could
/// have any Secret there (a cluster's tokens and CA key, ServiceAccount
/// tokens) stored where every holder of the gateway's user token reads it.
pub const SECRET_SOURCE_LABEL: &str = "redstuff.dev/blob-source";

/// Whether a Secret with `labels` may be a Blob's source.
pub fn secret_offered(labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(SECRET_SOURCE_LABEL))
        .is_some_and(|v| v == "true")
}

/// `url` as messages, logs and Events show it: without its credentials
/// or query (a signed URL's query is one).
pub fn shown_url(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return "(a URL that does not parse)".into();
    };
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    let had_query = parsed.query().is_some();
    parsed.set_query(None);
    parsed.set_fragment(None);
    if had_query {
        format!("{parsed}?…")
    } else {
        parsed.to_string()
    }
}

/// What a failed request says, with what caused it and without its URL.
fn said(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(e) = cause {
        let more = e.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = e.source();
    }
    text
}

/// A request's failure: refused for where it led, or a download failure.
fn request_failed(error: reqwest::Error, failed: impl Fn(String) -> IngestError) -> IngestError {
    match super::source_addresses::not_allowed_in(&error) {
        Some(refused) => IngestError::NotAllowed(refused.clone()),
        None => failed(said(error)),
    }
}

/// Where a URL source, downloaded whole and checked, is kept until the
/// gateway stored it (an upload that failed is tried again without
/// downloading again): named by the Blob's uid and its source, which is
/// fixed for a Blob.
pub fn kept_download(
    spool_dir: &Path,
    blob_uid: &str,
    url: &str,
    sha256: Option<&str>,
) -> std::path::PathBuf {
    let mut source = Sha256::new();
    source.update(url.as_bytes());
    source.update([0]);
    source.update(sha256.unwrap_or_default().as_bytes());
    let source = crate::hex::encode(&source.finalize()[..8]);
    spool_dir.join(format!("{KEPT_PREFIX}{}-{source}", safe_name(blob_uid)))
}

/// Removes what interrupted ingests left on the spool (an operator
/// container restarted mid-download, its emptyDir kept): every file but
/// the downloads kept for a retry, which the next attempt of their Blob
/// takes up. Done once at start, before any ingest.
pub fn clear_unfinished(spool_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(spool_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(KEPT_PREFIX) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Removes the downloads kept for the Blob `blob_uid` (deleted).
pub fn forget_downloads(spool_dir: &Path, blob_uid: &str) {
    let prefix = format!("{KEPT_PREFIX}{}-", safe_name(blob_uid));
    let Ok(entries) = std::fs::read_dir(spool_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

const KEPT_PREFIX: &str = "download-";

/// A uid as a file name: anything but letters, digits and hyphens dropped.
fn safe_name(uid: &str) -> String {
    uid.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

/// When a download that broke off is resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePolicy {
    /// Resumes in a row that bring no byte, after which a download that
    /// keeps breaking off fails (the Blob's next attempt starts over).
    pub in_a_row: u32,
    /// The pause before a resume, doubling with each one in a row that
    /// brought nothing.
    pub first_pause: std::time::Duration,
}

impl Default for ResumePolicy {
    /// Four resumes in a row, after 1, 2, 4 and 8 s.
    fn default() -> Self {
        Self {
            in_a_row: 4,
            first_pause: std::time::Duration::from_secs(1),
        }
    }
}

/// A source downloaded whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downloaded {
    /// Its length in bytes.
    pub bytes: u64,
    /// How many times it broke off and went on from where it stopped.
    pub resumes: u32,
}

/// What the first answer says about resuming the download: the value for
/// `If-Range` when the server takes byte ranges of it, says how long it
/// is and names its version (a strong ETag, else a Last-Modified that is a
/// strong validator), so the rest asked for is of the same bytes or not
/// sent at all.
fn resumable_by(headers: &reqwest::header::HeaderMap) -> Option<String> {
    use reqwest::header::{ACCEPT_RANGES, CONTENT_LENGTH, DATE, ETAG, LAST_MODIFIED};
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let ranges = text(ACCEPT_RANGES)?
        .split(',')
        .any(|unit| unit.trim().eq_ignore_ascii_case("bytes"));
    if !ranges || headers.get(CONTENT_LENGTH).is_none() {
        return None;
    }
    text(ETAG)
        .filter(|tag| !tag.starts_with("W/"))
        .or_else(|| text(LAST_MODIFIED).filter(|at| dated_strongly(at, text(DATE))))
        .map(str::to_string)
}

/// Whether a `Last-Modified` of `modified` is a strong validator: at least
/// 60 s before the answer's `Date` (RFC 9110, 8.8.2.2); a source changed
/// twice within one second would have both versions named alike, and the
/// rest of the one spliced onto the start of the other.
fn dated_strongly(modified: &str, date: Option<&str>) -> bool {
    let parse = |text: &str| {
        k8s_openapi::jiff::fmt::rfc2822::DateTimeParser::new()
            .parse_timestamp(text)
            .ok()
    };
    match (parse(modified), date.and_then(parse)) {
        (Some(modified), Some(date)) => date.as_second() - modified.as_second() >= 60,
        _ => false,
    }
}

/// Whether `content_range` (of a 206) is exactly the rest of a `len`-byte
/// source from byte `from`: `bytes FROM-(LEN-1)/LEN`.
fn is_the_rest(content_range: Option<&str>, from: u64, len: u64) -> bool {
    let Some((first, last, total)) = content_range
        .and_then(|range| range.trim().strip_prefix("bytes "))
        .and_then(|range| {
            let (span, total) = range.split_once('/')?;
            let (first, last) = span.split_once('-')?;
            Some((
                first.parse::<u64>().ok()?,
                last.parse::<u64>().ok()?,
                total.parse::<u64>().ok()?,
            ))
        })
    else {
        return false;
    };
    first == from && total == len && last.checked_add(1) == Some(len)
}

/// Downloads `url` into `spool`, at most `limit` bytes, checking `sha256`
/// when given; its length (`limit` when the server does not say) is
/// promised from `room` first, and a download that does not fit fails. A download that breaks off goes on from where it stopped
/// (a range request naming the version first answered, `If-Range`) when
/// the server takes ranges, as `policy` says; when the resumes in a row
/// bring nothing, or the source changed meanwhile, it fails.
pub async fn download(
    http: &reqwest::Client,
    url: &str,
    sha256: Option<&str>,
    limit: u64,
    spool: &Path,
    policy: &ResumePolicy,
    room: &std::sync::Arc<super::spool_room::SpoolRoom>,
) -> Result<Downloaded, IngestError> {
    use reqwest::header::{IF_RANGE, RANGE};
    let shown = shown_url(url);
    let failed = |message: String| IngestError::Download {
        url: shown.clone(),
        message,
    };
    let mut file = WriteBehindFile::new(std::fs::File::create(spool)?);
    let mut hasher = Sha256::new();
    let mut length = 0u64;
    // Set by the first answer: the source's length and version.
    let mut source: Option<(u64, Option<String>)> = None;
    let (mut resumes, mut in_a_row) = (0u32, 0u32);
    // Held until the download ends.
    let mut _promise = None;
    // What the body may bring: `limit`, or the spool's room promised to a
    // source that does not say its length.
    let mut cap = limit;
    loop {
        let mut request = http.get(url);
        if let Some((_, Some(version))) = &source {
            request = request
                .header(RANGE, format!("bytes={length}-"))
                .header(IF_RANGE, version.as_str());
        }
        let known_len = source.as_ref().map(|(len, _)| *len);
        let broke_off = match (request.send().await, known_len) {
            (Err(e), None) => return Err(request_failed(e, failed)),
            (Err(e), Some(_)) => match request_failed(e, failed) {
                IngestError::Download { message, .. } => {
                    format!("the rest could not be asked for: {message}")
                }
                refused => return Err(refused),
            },
            (Ok(response), None) => {
                let status = response.status();
                if !status.is_success() {
                    return Err(failed(format!("the server answered {status}")));
                }
                if response.content_length().is_some_and(|len| len > limit) {
                    return Err(IngestError::TooLarge { limit });
                }
                let need = match response.content_length() {
                    Some(len) => len,
                    None => limit.min(room.limit().unwrap_or(u64::MAX)),
                };
                _promise = Some(room.promise(need, spool)?);
                if response.content_length().is_none() {
                    cap = need;
                }
                source = response
                    .content_length()
                    .map(|len| (len, resumable_by(response.headers())));
                let len = source.as_ref().map(|(len, _)| *len);
                match take_body(response, &mut file, &mut hasher, &mut length, (len, cap)).await? {
                    Some(broke_off) => broke_off,
                    None => break,
                }
            }
            (Ok(response), Some(len)) => match rest_answered(&response, length, len) {
                Err(refusal) => return Err(failed(refusal)),
                Ok(Some(unavailable)) => unavailable,
                Ok(None) => {
                    let before = length;
                    // The rest ends where the source first said it does
                    // (within the limit, checked then): more is refused
                    // before it is written or takes spool beyond its room.
                    let sizes = (Some(len), len);
                    let ended = take_body(response, &mut file, &mut hasher, &mut length, sizes);
                    let ended = match ended.await {
                        Err(IngestError::TooLarge { .. }) => {
                            return Err(failed(format!(
                                "the server answered the rest (bytes={before}-) with more than \
                                 the {len} bytes it first announced"
                            )))
                        }
                        ended => ended?,
                    };
                    if length > before {
                        in_a_row = 0;
                    }
                    match ended {
                        Some(broke_off) => broke_off,
                        None => break,
                    }
                }
            },
        };
        let resumable = matches!(&source, Some((_, Some(_))));
        if !resumable || in_a_row >= policy.in_a_row {
            let why = if resumable {
                format!("{broke_off}; {in_a_row} resumes in a row brought nothing")
            } else {
                format!("{broke_off} (the server offers no resumable range of it)")
            };
            return Err(failed(format!("broke off after {length} bytes: {why}")));
        }
        let pause = policy.first_pause * 2u32.pow(in_a_row.min(16));
        tracing::info!(
            url = %shown,
            length,
            "download broke off ({broke_off}); resuming in {pause:?}"
        );
        tokio::time::sleep(pause).await;
        resumes += 1;
        in_a_row += 1;
    }
    file.finish().await?;
    check_digest(sha256, &hasher.finalize())?;
    Ok(Downloaded {
        bytes: length,
        resumes,
    })
}

/// Whether the answer to a resumed download's range request is the rest
/// to take (`Ok(None)`), an unavailable server to try again
/// (`Ok(Some(why))`), or a refusal that ends the download (`Err(why)`):
/// a 200 means the source changed (the version named no longer matches).
fn rest_answered(
    response: &reqwest::Response,
    from: u64,
    len: u64,
) -> Result<Option<String>, String> {
    let status = response.status();
    let range = response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok());
    if status == reqwest::StatusCode::OK {
        return Err(format!(
            "it broke off after {from} bytes and the server answered the rest \
             with the whole source: it changed since the download began"
        ));
    }
    if status.is_server_error() {
        return Ok(Some(format!("the server answered the rest with {status}")));
    }
    if status != reqwest::StatusCode::PARTIAL_CONTENT || !is_the_rest(range, from, len) {
        return Err(format!(
            "it broke off after {from} bytes and the server answered the rest \
             (bytes={from}-) with {status}, range {}",
            range.unwrap_or("none")
        ));
    }
    Ok(None)
}

/// Takes `response`'s body into `file` and `hasher`, counting it in
/// `length` (at most `limit`); why it broke off, or `None` once the
/// source is whole (`len` bytes, when known).
async fn take_body(
    response: reqwest::Response,
    file: &mut WriteBehindFile,
    hasher: &mut Sha256,
    length: &mut u64,
    (len, limit): (Option<u64>, u64),
) -> Result<Option<String>, IngestError> {
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => return Ok(Some(said(e))),
        };
        *length += chunk.len() as u64;
        if *length > limit {
            return Err(IngestError::TooLarge { limit });
        }
        hasher.update(&chunk);
        file.write(chunk).await?;
    }
    Ok(len
        .filter(|len| *length < *len)
        .map(|len| format!("the body ended after {length} of {len} bytes")))
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
    stall: std::time::Duration,
) -> Result<StoredBlob, IngestError> {
    use crate::watchdog::{send_watched, BodyProgress, Stalled};
    let failed = |message: String| IngestError::Gateway {
        url: gateway.to_string(),
        message,
    };
    let file = tokio::fs::File::open(spool).await?;
    let length = file.metadata().await?.len();
    // A gateway that stops taking the body or answering gives the upload
    // up after `stall` (it held an ingest slot, and the cluster's deletes
    // and upload records, for ever).
    let progress = BodyProgress::new();
    let body = reqwest::Body::wrap_stream(progress.watch(
        tokio_util::io::ReaderStream::with_capacity(file, FILE_CHUNK),
        Some(length),
    ));
    let request = http
        .put(format!("{}/v1/blobs", gateway.trim_end_matches('/')))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .header("content-length", length)
        .body(body);
    let response = send_watched(request, &progress, stall)
        .await
        .map_err(|stalled| failed(stalled.to_string()))?
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    let text = tokio::time::timeout(stall, response.text())
        .await
        .map_err(|_| failed(Stalled::NoAnswer(stall).to_string()))?
        .map_err(|e| failed(e.to_string()))?;
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
    fn a_start_clears_what_interrupted_ingests_left_and_keeps_the_downloads_kept_for_a_retry() {
        let spool = tempfile::tempdir().unwrap();
        let kept = kept_download(spool.path(), "uid-1", "https://models.example/w", None);
        std::fs::write(&kept, b"whole and checked").unwrap();
        std::fs::write(spool.path().join(".tmpAbC123"), b"half a download").unwrap();
        clear_unfinished(spool.path());
        let left: Vec<_> = std::fs::read_dir(spool.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left, vec![kept]);
    }

    #[test]
    fn a_url_is_shown_without_its_credentials_query_or_fragment() {
        assert_eq!(
            shown_url("https://user:pass@models.example:8443/w.bin?X-Amz-Signature=abc#x"),
            "https://models.example:8443/w.bin?…"
        );
        assert_eq!(
            shown_url("http://probe.ns.svc:8080/bytes"),
            "http://probe.ns.svc:8080/bytes"
        );
        assert_eq!(shown_url("not a url"), "(a URL that does not parse)");
    }

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

    #[test]
    fn only_a_source_with_byte_ranges_a_length_and_a_strong_version_is_resumable() {
        use reqwest::header::{HeaderMap, HeaderValue, ACCEPT_RANGES, CONTENT_LENGTH, ETAG};
        let headers = |pairs: &[(reqwest::header::HeaderName, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(name, HeaderValue::from_static(value));
            }
            map
        };
        let full = [
            (ACCEPT_RANGES, "bytes"),
            (CONTENT_LENGTH, "10"),
            (ETAG, "\"abc\""),
        ];
        assert_eq!(resumable_by(&headers(&full)), Some("\"abc\"".into()));
        let dated = |date| {
            headers(&[
                (ACCEPT_RANGES, "bytes"),
                (CONTENT_LENGTH, "10"),
                (ETAG, "W/\"weak\""),
                (
                    reqwest::header::LAST_MODIFIED,
                    "Wed, 02 Dec 2026 10:00:00 GMT",
                ),
                (reqwest::header::DATE, date),
            ])
        };
        assert_eq!(
            resumable_by(&dated("Wed, 02 Dec 2026 10:01:00 GMT")),
            Some("Wed, 02 Dec 2026 10:00:00 GMT".into()),
            "a weak ETag cannot name the version; a date a minute old can"
        );
        assert_eq!(
            resumable_by(&dated("Wed, 02 Dec 2026 10:00:59 GMT")),
            None,
            "a date less than a minute old is a weak validator"
        );
        assert_eq!(resumable_by(&dated("not a date")), None);
        assert_eq!(resumable_by(&headers(&full[1..])), None, "no ranges");
        assert_eq!(
            resumable_by(&headers(&[
                (ACCEPT_RANGES, "none"),
                full[1].clone(),
                full[2].clone()
            ])),
            None
        );
        assert_eq!(
            resumable_by(&headers(&[full[0].clone(), full[2].clone()])),
            None,
            "no length"
        );
        assert_eq!(resumable_by(&headers(&full[..2])), None, "no version");
    }

    #[test]
    fn only_exactly_the_rest_of_the_same_length_is_taken_as_the_rest() {
        assert!(is_the_rest(Some("bytes 300-999/1000"), 300, 1000));
        assert!(
            !is_the_rest(Some("bytes 0-999/1000"), 300, 1000),
            "from the start"
        );
        assert!(
            !is_the_rest(Some("bytes 300-499/1000"), 300, 1000),
            "only a part"
        );
        assert!(
            !is_the_rest(Some("bytes 300-1099/1100"), 300, 1000),
            "another length"
        );
        assert!(!is_the_rest(Some("bytes 300-999/*"), 300, 1000));
        assert!(!is_the_rest(Some("items 300-999/1000"), 300, 1000));
        assert!(!is_the_rest(None, 300, 1000));
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
