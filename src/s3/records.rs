//! What the S3 index keeps: buckets, object records (the blobs of an
//! object's parts in order, its ETag, checksums and metadata), multipart
//! uploads with one row per part, and a reference count per blob.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One blob of an object, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobPart {
    /// The blob id.
    pub blob: String,
    /// Its length in bytes.
    pub size: u64,
}

/// An object: a key's current value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// Its blobs in order (one for a PUT, one per part for a multipart upload).
    pub parts: Vec<BlobPart>,
    /// Length in bytes (the sum of the parts).
    pub size: u64,
    /// The ETag without quotes: the hex MD5 of a PUT's bytes, or the MD5 of
    /// the parts' MD5s and `-N` for N parts.
    pub etag: String,
    /// Checksums the client sent (algorithm in upper case -> base64 value),
    /// verified before the record was written.
    #[serde(default)]
    pub checksums: BTreeMap<String, String>,
    /// Content-Type.
    #[serde(default)]
    pub content_type: Option<String>,
    /// User metadata (`x-amz-meta-*`, names in lower case).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The other headers it is served with.
    #[serde(default, skip_serializing_if = "ObjectHeaders::is_empty")]
    pub headers: ObjectHeaders,
    /// Its tags (at most 10).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Last modified, milliseconds since the Unix epoch.
    pub modified_ms: u64,
}

/// The headers an object is served with besides its type, metadata and
/// checksums, as the writer sent them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ObjectHeaders {
    /// Cache-Control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// Content-Disposition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    /// Content-Encoding (without `aws-chunked`, which is the transfer's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// Content-Language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    /// Expires, milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
}

impl ObjectHeaders {
    /// Whether no header is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl ObjectRecord {
    /// The blob ids it refers to, each as many times as it appears.
    pub fn blobs(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().map(|p| p.blob.as_str())
    }
}

/// What a listing shows of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSummary {
    /// Length in bytes.
    pub size: u64,
    /// ETag without quotes.
    pub etag: String,
    /// Last modified, milliseconds since the Unix epoch.
    pub modified_ms: u64,
}

impl From<&ObjectRecord> for ObjectSummary {
    fn from(record: &ObjectRecord) -> Self {
        Self {
            size: record.size,
            etag: record.etag.clone(),
            modified_ms: record.modified_ms,
        }
    }
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// The bucket.
    pub bucket: String,
    /// The key it will write.
    pub key: String,
    /// When it was created, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Content-Type of the object to be.
    #[serde(default)]
    pub content_type: Option<String>,
    /// User metadata of the object to be.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The other headers of the object to be.
    #[serde(default, skip_serializing_if = "ObjectHeaders::is_empty")]
    pub headers: ObjectHeaders,
    /// Tags of the object to be.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// When it last received a part (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_part_ms: Option<u64>,
}

impl UploadRecord {
    /// When it was last active: created, or sent a part.
    pub fn last_active_ms(&self) -> u64 {
        self.last_part_ms
            .unwrap_or(self.created_ms)
            .max(self.created_ms)
    }
}

/// One uploaded part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    /// The blob holding its bytes.
    pub blob: String,
    /// Length in bytes.
    pub size: u64,
    /// The hex MD5 of its bytes (its ETag without quotes).
    pub etag: String,
    /// Checksums the client sent, verified.
    #[serde(default)]
    pub checksums: BTreeMap<String, String>,
    /// When it was uploaded, milliseconds since the Unix epoch.
    pub modified_ms: u64,
}

/// A part a CompleteMultipartUpload names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChosenPart {
    /// The part number (1..=10,000).
    pub number: u32,
    /// The ETag the client got for it (quotes allowed).
    pub etag: String,
}

/// A bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRecord {
    /// When it was created, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// A blob's reference count, and when it last dropped to zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BlobRefs {
    /// Object records and upload parts referring to it.
    pub count: u64,
    /// When the count became zero (milliseconds since the Unix epoch).
    #[serde(default)]
    pub unreferenced_since_ms: Option<u64>,
    /// The collector claimed it and is deleting the blob: a new reference
    /// must wait and write the blob again.
    #[serde(default)]
    pub collecting: bool,
    /// The bytes were stored outside S3 too (the native API, before S3
    /// stored them or while it referred to them): S3 never collects them;
    /// the last key going leaves them to whoever stored them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outside: bool,
    /// Changes whenever the row is claimed or forgotten (0: none given
    /// yet): a write's ticket names the epoch it saw.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
    /// The claim of the collection under way (with `collecting`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<super::index::ClaimMark>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}
