//! JSON shapes of the node and gateway APIs, shared by servers and clients.
//! Binary bodies (metadata, slivers, symbols) use the codec's format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::blob_state::BlobState;

/// One blob in a node's inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryBlob {
    /// The blob id.
    pub id: String,
    /// Blob length in bytes.
    pub size: u64,
    /// Segments of the blob.
    pub segments: u32,
    /// Shard (as a string key) -> segments whose sliver pair the node holds.
    pub shards: BTreeMap<u16, u32>,
    /// The blob's write and delete markers on the node.
    #[serde(default)]
    pub state: BlobState,
}

/// A node's answer to releasing its pairs of a shard it no longer owns
/// (`DELETE /v1/blobs/{id}/shards/{shard}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReleasedShard {
    /// Bytes freed (0 when the node held none of that shard's pairs).
    pub released_bytes: u64,
}

/// What one node holds of one blob (`GET /v1/blobs/{id}/state`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeBlobState {
    /// The write and delete markers.
    #[serde(default)]
    pub state: BlobState,
    /// Blob length, from the node's metadata (absent without metadata).
    #[serde(default)]
    pub size: Option<u64>,
    /// Segments, from the node's metadata.
    #[serde(default)]
    pub segments: Option<u32>,
    /// Shards of the node's -> segments whose sliver pair it holds.
    #[serde(default)]
    pub shards: BTreeMap<u16, u32>,
    /// Whether one of the blob's markers here is lost (its file corrupt or
    /// unreadable): it reads as absent in `state`, but may have been a
    /// commit or a tombstone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub markers_lost: bool,
}

/// A generation carried by a commit, an abort or a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationBody {
    /// The write's or delete's generation.
    pub generation: u64,
}

/// A page of a node's inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryPage {
    /// The node's name.
    pub node: String,
    /// Shards the node owns now.
    pub shards: Vec<u16>,
    /// Bytes in its store.
    pub stored_bytes: u64,
    /// Blobs, in id order.
    pub blobs: Vec<InventoryBlob>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// The blobs whose stored files changed on a node after a position of its
/// journal (`GET /v1/inventory/changes?epoch=E&since=S`), or, asked
/// without a position, only the journal's head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryChanges {
    /// The node's name.
    pub node: String,
    /// Shards the node owns now.
    pub shards: Vec<u16>,
    /// Bytes in its store.
    pub stored_bytes: u64,
    /// The journal's epoch (a new one each time the node's store opens).
    pub epoch: u64,
    /// Blob ids, in the order of their last change.
    pub blobs: Vec<String>,
    /// Pass as `since` for the changes after these.
    pub next: u64,
    /// Whether more changes follow `next`.
    pub more: bool,
}

/// Asks a node for its inventory entries of some blobs
/// (`POST /v1/inventory/entries`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryEntriesRequest {
    /// Blob ids (at most 1,000).
    pub blobs: Vec<String>,
}

/// A node's inventory entries of the blobs asked for: those it holds
/// anything of (a blob it holds nothing of has no entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryEntries {
    /// The node's name.
    pub node: String,
    /// Shards the node owns now.
    pub shards: Vec<u16>,
    /// Entries, in the order asked.
    pub blobs: Vec<InventoryBlob>,
}

/// Asks a gateway serving S3 which blobs S3 wrote or refers to
/// (`POST /v1/s3/known-blobs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownBlobsRequest {
    /// Blob ids (at most `MOST_KNOWN_BLOBS_ASKED`).
    pub blobs: Vec<String>,
}

/// The blobs asked for that S3 knows, in the order asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownBlobs {
    /// Ids S3 wrote, refers to, or is collecting.
    pub known: Vec<String>,
}

/// The most blob ids one `KnownBlobsRequest` may name.
pub const MOST_KNOWN_BLOBS_ASKED: usize = 1000;

/// Asks a gateway serving S3 which keys hold the bytes of some blobs
/// (`POST /v1/s3/objects-of-blobs`), as the operator does for blobs the
/// fleet lost; answered with `ObjectsOfBlobs`, keys in bucket and key
/// order. Every object record is read, so it is for few, rare questions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectsOfBlobsRequest {
    /// Blob ids (at most `MOST_OBJECTS_OF_BLOBS_ASKED`).
    pub blobs: Vec<String>,
    /// Keys to return at most (1 to `MOST_OBJECTS_OF_BLOBS_LISTED`).
    pub limit: usize,
    /// Only keys after this one, `bucket/key` (the last key of an answer
    /// that was `truncated`, to list the rest, or its `resume_after`, to
    /// scan the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Object records to read at most before the answer says where to
    /// resume; the gateway also stops after `OBJECTS_OF_BLOBS_SCAN_TIME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub most_records: Option<usize>,
}

/// How long one `ObjectsOfBlobsRequest`'s scan reads before its answer
/// says where to resume (`resume_after`), so a large index is scanned in
/// questions that each end well inside a caller's deadline.
pub const OBJECTS_OF_BLOBS_SCAN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

pub use crate::s3::index::{ObjectOfBlob, ObjectsOfBlobs};

/// The most blob ids one `ObjectsOfBlobsRequest` may name.
pub const MOST_OBJECTS_OF_BLOBS_ASKED: usize = 1000;

/// The most keys one `ObjectsOfBlobsRequest` may ask for.
pub const MOST_OBJECTS_OF_BLOBS_LISTED: usize = 1000;

/// Asks a node to rebuild its sliver pairs of one blob from its peers,
/// which the node finds through its own fleet map (never from the caller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairRequest {
    /// The blob id.
    pub blob: String,
    /// Shards of this node to rebuild.
    pub shards: Vec<u16>,
    /// The committed write being repaired: the node commits it too, and
    /// stops if a delete at least as new arrives.
    pub generation: u64,
    /// The blob's length as the fleet reports it (caps the metadata read
    /// from peers).
    pub size: u64,
    /// Its segments, likewise.
    pub segments: u32,
}

/// One line of a repair's answer (newline-delimited JSON): progress after
/// each segment, then the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepairLine {
    /// A segment is done (rebuilt, already whole, or failed).
    Segment(u32),
    /// The repair ended.
    Report(RepairReport),
    /// The repair stopped early.
    Error(String),
}

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RepairReport {
    /// (segment, shard) pairs rebuilt.
    pub rebuilt: u64,
    /// (segment, shard) pairs that were already whole.
    pub already_present: u64,
    /// Bytes fetched from peers (symbols with proofs, and metadata).
    pub bytes_fetched: u64,
    /// Bytes a repair fetching whole segments would have moved for the
    /// pairs rebuilt (the segment's length per pair): the naive cost.
    #[serde(default)]
    pub whole_segment_bytes: u64,
    /// Symbols from peers that failed verification.
    pub invalid_symbols: u64,
    /// (segment, shard, reason) of pairs that could not be rebuilt.
    pub failed: Vec<(u32, u16, String)>,
}

/// The gateway's answer to a stored blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBlob {
    /// The blob id.
    pub id: String,
    /// Length in bytes.
    pub size: u64,
    /// Shards whose slivers were acknowledged in every segment.
    pub shards_acknowledged: usize,
    /// Shards that still miss some slivers (the fleet loop repairs them).
    pub shards_missing: Vec<u16>,
    /// Shards whose node recorded the commit when the write answered (at
    /// least n - f, unless the answer is 202 Accepted).
    #[serde(default)]
    pub shards_committed: usize,
    /// Set when the answer is 202 Accepted: why a read may not see the
    /// blob yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Where a resumable upload of the gateway stands (`/v1/uploads/{upload}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadProgress {
    /// The upload's id.
    pub upload: String,
    /// Bytes the gateway received so far: the next append starts here.
    pub offset: u64,
    /// The length declared when the upload was opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
}

/// A writer's upload session on the nodes: pairs shipped under it wait,
/// invisible, until metadata staged with it adopts them (128 random bits,
/// in hex in paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId([u8; 16]);

impl UploadId {
    /// A new session id from the system's random source.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the system's random source");
        Self(bytes)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl std::fmt::Display for UploadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::hex::encode(&self.0))
    }
}

impl std::str::FromStr for UploadId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "expected 32 lowercase hex digits, got {} characters",
                text.len()
            )
        };
        if text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid());
        }
        let bytes = crate::hex::decode(text).ok_or_else(invalid)?;
        Ok(Self(bytes.try_into().map_err(|_| invalid())?))
    }
}

/// Asks a node to file into an upload session the pairs of some of its
/// shards in one segment that another session already holds under the
/// same segment root (`POST /v1/uploads/{U}/segments/{k}/reuse?root=R`):
/// what a retried write asks before it ships a segment's pairs again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReusePairsRequest {
    /// Shards of the node, each at most once.
    pub shards: Vec<u16>,
}

/// A node's answer to a `ReusePairsRequest`: the shards asked about whose
/// pair the session now holds; the writer ships the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReusedPairs {
    /// Shards filed, in order.
    pub filed: Vec<u16>,
}

/// A node's answer to metadata staged with an upload session
/// (`PUT /v1/blobs/{id}/metadata?generation=G&upload=U`): per segment, the
/// shards of the node that now hold that segment's pair of the blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AdoptedPairs {
    /// Segment index -> shards holding both slivers of their pair.
    pub segments: Vec<Vec<u16>>,
}
