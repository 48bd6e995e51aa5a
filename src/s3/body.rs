//! Receiving an object's (or a part's) bytes: streamed into the gateway's
//! spool while its MD5 and every checksum the client sent (as a header or
//! as an aws-chunked trailer: CRC32, CRC32C, CRC64NVME, SHA-1, SHA-256)
//! are computed; a mismatch, a short body or a body past the size limit is
//! refused before anything is stored.

use std::collections::BTreeMap;

use base64::Engine as _;
use futures_util::TryStreamExt;
use md5::{Digest, Md5};
use s3s::checksum::ChecksumHasher;
use s3s::crypto::Checksum as _;
use s3s::dto::{Checksum, ChecksumAlgorithm, StreamingBlob};
use s3s::{s3_error, S3Error, S3ErrorCode, S3Result, TrailingHeaders};

use crate::gateway::spool::{SpoolError, SpoolFile};
use crate::gateway::Door;
use crate::hex::encode as hex;

/// What the client says the bytes are.
#[derive(Debug, Default)]
pub struct Declared {
    /// Content-Length (the decoded length for aws-chunked bodies).
    pub len: Option<u64>,
    /// Content-MD5 (base64).
    pub content_md5: Option<String>,
    /// Checksums sent as headers (base64).
    pub checksums: Checksum,
    /// The algorithm of a checksum still to come (a trailer).
    pub algorithm: Option<ChecksumAlgorithm>,
    /// The `x-amz-trailer` header: the trailers announced (a checksum
    /// trailer is computed even when no other header names its algorithm).
    pub trailer: Option<String>,
}

/// The `x-amz-trailer` header of a request.
pub fn trailer_of(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("x-amz-trailer")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Bytes received, verified and spooled.
pub struct Received {
    /// The spool file (removed when dropped).
    pub file: SpoolFile,
    /// Their length.
    pub len: u64,
    /// Their MD5, hex: the ETag of a single PUT or a part.
    pub md5: String,
    /// The checksums the client sent, all verified (algorithm -> base64).
    pub checksums: BTreeMap<String, String>,
}

/// The checksums of `sums` as (algorithm, value) pairs.
fn pairs(sums: &Checksum) -> Vec<(&'static str, Option<&String>)> {
    vec![
        ("CRC32", sums.checksum_crc32.as_ref()),
        ("CRC32C", sums.checksum_crc32c.as_ref()),
        ("CRC64NVME", sums.checksum_crc64nvme.as_ref()),
        ("SHA1", sums.checksum_sha1.as_ref()),
        ("SHA256", sums.checksum_sha256.as_ref()),
    ]
}

/// A hasher computing every algorithm the client sent or announced.
fn hasher_for(declared: &Declared) -> ChecksumHasher {
    let mut hasher = ChecksumHasher::default();
    let mut announced: Vec<String> = declared
        .algorithm
        .iter()
        .map(|a| a.as_str().to_ascii_uppercase())
        .collect();
    announced.extend(
        declared
            .trailer
            .iter()
            .flat_map(|t| t.split(','))
            .filter_map(|t| t.trim().strip_prefix("x-amz-checksum-"))
            .map(str::to_ascii_uppercase),
    );
    for (name, value) in pairs(&declared.checksums) {
        if value.is_none() && !announced.iter().any(|a| a == name) {
            continue;
        }
        match name {
            "CRC32" => hasher.crc32 = Some(s3s::crypto::Crc32::new()),
            "CRC32C" => hasher.crc32c = Some(s3s::crypto::Crc32c::new()),
            "CRC64NVME" => hasher.crc64nvme = Some(s3s::crypto::Crc64Nvme::new()),
            "SHA1" => hasher.sha1 = Some(s3s::crypto::Sha1::new()),
            _ => hasher.sha256 = Some(s3s::crypto::Sha256::new()),
        }
    }
    hasher
}

fn spool_error(e: SpoolError) -> S3Error {
    match e {
        SpoolError::Full(_) => s3_error!(SlowDown, "{e}"),
        SpoolError::Io(_) => s3_error!(InternalError, "{e}"),
    }
}

/// The error of a body whose signed payload hash does not match.
fn payload_error(e: impl std::fmt::Display) -> S3Error {
    let text = e.to_string();
    if text.to_ascii_lowercase().contains("sha256") {
        let mut error = S3Error::with_message(
            S3ErrorCode::Custom("XAmzContentSHA256Mismatch".into()),
            format!("the body does not match its signed hash: {text}"),
        );
        error.set_status_code(http::StatusCode::BAD_REQUEST);
        error
    } else {
        s3_error!(IncompleteBody, "the body could not be read: {text}")
    }
}

/// Where a body comes from, and so how long it may bring nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFrom {
    /// A client's request: a body that brings nothing for the gateway's
    /// client stall time ends the request (RequestTimeout), so a client
    /// that stops sending holds its connection and spool no longer than
    /// one that stops reading.
    Client,
    /// The fleet (a part copied from an object): its reads have their own
    /// deadlines.
    Fleet,
}

/// The body's next chunk, `None` at its end; a client's body that brings
/// nothing for `stall` is refused.
async fn next_chunk(
    body: &mut StreamingBlob,
    from: BodyFrom,
    stall: std::time::Duration,
    received: u64,
) -> S3Result<Option<bytes::Bytes>> {
    let next = match from {
        BodyFrom::Client => tokio::time::timeout(stall, body.try_next())
            .await
            .map_err(|_| {
                s3_error!(
                    RequestTimeout,
                    "the body brought nothing for {} s after {received} bytes",
                    stall.as_secs()
                )
            })?,
        BodyFrom::Fleet => body.try_next().await,
    };
    next.map_err(payload_error)
}

/// Streams `body` into the spool, checking everything `declared` says.
pub async fn receive(
    door: &Door,
    body: Option<StreamingBlob>,
    from: BodyFrom,
    declared: Declared,
    trailers: Option<TrailingHeaders>,
) -> S3Result<Received> {
    let limit = door.max_blob_bytes();
    if declared.len.is_some_and(|len| len > limit) {
        return Err(s3_error!(
            EntityTooLarge,
            "the object is larger than this gateway's limit of {limit} bytes"
        ));
    }
    let mut file = door.spool().create(declared.len).map_err(spool_error)?;
    let mut md5 = Md5::new();
    let mut hasher = hasher_for(&declared);
    if let Some(mut body) = body {
        while let Some(chunk) = next_chunk(&mut body, from, door.client_stall(), file.len()).await?
        {
            if file.len() + chunk.len() as u64 > limit {
                return Err(s3_error!(
                    EntityTooLarge,
                    "the object is larger than this gateway's limit of {limit} bytes"
                ));
            }
            md5.update(&chunk);
            hasher.update(&chunk);
            file.write(&chunk).await.map_err(spool_error)?;
        }
    }
    let len = file.len();
    if declared.len.is_some_and(|declared| declared != len) {
        return Err(s3_error!(
            IncompleteBody,
            "the body ended after {len} of the {} bytes declared",
            declared.len.unwrap_or_default()
        ));
    }
    let md5 = md5.finalize();
    if let Some(sent) = &declared.content_md5 {
        let sent = base64::engine::general_purpose::STANDARD
            .decode(sent.trim())
            .map_err(|_| s3_error!(InvalidDigest, "Content-MD5 is not base64"))?;
        if sent[..] != md5[..] {
            return Err(s3_error!(
                BadDigest,
                "the Content-MD5 you specified did not match what we received"
            ));
        }
    }
    let mut expected = declared.checksums;
    if let Some(trailers) = trailers.and_then(|t| t.take()) {
        let from = |name: &str| {
            trailers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        expected.checksum_crc32 = expected.checksum_crc32.or(from("x-amz-checksum-crc32"));
        expected.checksum_crc32c = expected.checksum_crc32c.or(from("x-amz-checksum-crc32c"));
        expected.checksum_crc64nvme = expected
            .checksum_crc64nvme
            .or(from("x-amz-checksum-crc64nvme"));
        expected.checksum_sha1 = expected.checksum_sha1.or(from("x-amz-checksum-sha1"));
        expected.checksum_sha256 = expected.checksum_sha256.or(from("x-amz-checksum-sha256"));
    }
    let computed = hasher.finalize();
    let mut checksums = BTreeMap::new();
    for ((name, sent), (_, got)) in pairs(&expected).into_iter().zip(pairs(&computed)) {
        let Some(sent) = sent else { continue };
        if got != Some(sent) {
            return Err(s3_error!(
                BadDigest,
                "the {name} checksum you specified did not match what we received"
            ));
        }
        checksums.insert(name.to_string(), sent.clone());
    }
    file.finish().await.map_err(spool_error)?;
    Ok(Received {
        file,
        len,
        md5: hex(&md5),
        checksums,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_algorithms_sent_or_announced_are_computed() {
        let declared = Declared {
            checksums: Checksum {
                checksum_crc32: Some("AAAAAA==".into()),
                ..Checksum::default()
            },
            algorithm: Some(ChecksumAlgorithm::from_static(ChecksumAlgorithm::SHA256)),
            ..Declared::default()
        };
        let hasher = hasher_for(&declared);
        assert!(hasher.crc32.is_some() && hasher.sha256.is_some());
        assert!(hasher.crc32c.is_none() && hasher.sha1.is_none() && hasher.crc64nvme.is_none());
    }

    #[test]
    fn a_checksum_announced_only_as_a_trailer_is_computed() {
        let declared = Declared {
            trailer: Some("x-amz-checksum-crc32c".into()),
            ..Declared::default()
        };
        let hasher = hasher_for(&declared);
        assert!(hasher.crc32c.is_some());
        assert!(hasher.crc32.is_none() && hasher.sha256.is_none());
    }
}
