//! JSON shapes of the node and gateway APIs, shared by servers and clients.
//! Binary bodies (metadata, slivers, symbols) use the codec's format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

/// A peer in a repair request: which shard it owns, where it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The shard.
    pub shard: u16,
    /// The node's name (for metrics and errors).
    pub node: String,
    /// Base URL of its API.
    pub url: String,
}

/// Asks a node to rebuild its sliver pairs of one blob from its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairRequest {
    /// The blob id.
    pub blob: String,
    /// Shards of this node to rebuild.
    pub shards: Vec<u16>,
    /// Every other shard's holder.
    pub peers: Vec<Peer>,
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
}
