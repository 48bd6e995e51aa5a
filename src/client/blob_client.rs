//! The fleet client: reads, writes and deletes blobs on the nodes of a
//! fleet map. The operations live in `write`, `read` and `delete`; the
//! quorum bookkeeping they share in `quorum`.

use std::collections::BTreeSet;
use std::sync::Arc;

use thiserror::Error;

use super::node_client::{NodeCalls, NodeClient};
use super::unanswering::{passed_over, Unanswered, UnansweringNodes};
use crate::codec::{BlobId, EncodingConfig};
use crate::fleet::{FleetMap, MapNode};
use crate::metrics::GatewayMetrics;

/// A failed write, read or delete.
#[derive(Debug, Error)]
pub enum BlobIoError {
    /// Fewer than n - f shards acknowledged a segment: nothing was committed.
    #[error("write not durable: segment {segment} reached {acknowledged} shards, {needed} needed; nothing was committed")]
    NotDurable {
        /// The segment.
        segment: u32,
        /// Shards that acknowledged it.
        acknowledged: usize,
        /// n - f.
        needed: usize,
    },
    /// Every node refused the commit: nothing was committed, the staged
    /// pieces were aborted.
    #[error("write not committed: every node refused the commit ({needed} shards needed); nothing was committed")]
    CommitRefused {
        /// n - f.
        needed: usize,
    },
    /// Deletes of the same bytes kept refusing the write on some nodes
    /// (their tombstones newer than each generation it tried): nothing
    /// was committed; retry.
    #[error("deletes of blob {id} kept overtaking this write on some nodes; nothing was committed: retry")]
    DeletedMeanwhile {
        /// The blob.
        id: BlobId,
    },
    /// A delete of writes up to a fence found a commit newer than the
    /// fence (the same bytes stored again since): nothing was deleted.
    #[error("blob {id} was written again (generation {generation}) after the delete was decided (fence {fence}): kept, nothing deleted")]
    WrittenSince {
        /// The blob.
        id: BlobId,
        /// The newest write seen.
        generation: u64,
        /// The fence.
        fence: u64,
    },
    /// No node recorded the commit within the commit window, and some did
    /// not answer: one of them may have recorded it.
    #[error("the commit reached no node within its deadline ({needed} shards needed) and some did not answer: the write may or may not become visible; storing the same bytes again settles it")]
    CommitUnknown {
        /// n - f.
        needed: usize,
    },
    /// Too few shards answered to decide.
    #[error("only {answered} shards answered about blob {id} within their deadline, {needed} needed to decide")]
    NoQuorum {
        /// The blob.
        id: BlobId,
        /// Shards whose node answered.
        answered: usize,
        /// n - f.
        needed: usize,
    },
    /// The blob is not visible: never stored, deleted, or not committed.
    #[error("blob {0} not found")]
    NotFound(BlobId),
    /// The blob is committed, but no node holding its metadata gave a
    /// valid copy (silent, failing or lying): retry.
    #[error("blob {id} is stored, but its metadata cannot be read now: {reason}")]
    MetadataUnavailable {
        /// The blob.
        id: BlobId,
        /// Why.
        reason: String,
    },
    /// Not enough valid slivers could be fetched to decode a segment.
    #[error("segment {segment} of blob {id} cannot be read: {reason}")]
    Unreadable {
        /// The blob.
        id: BlobId,
        /// The segment.
        segment: u32,
        /// Why.
        reason: String,
    },
    /// The blob was encoded inconsistently by its writer.
    #[error("blob {0} was encoded inconsistently by its writer and cannot be read")]
    Inconsistent(BlobId),
    /// A delete reached fewer than n - f shards.
    #[error("delete of {id} reached {acknowledged} shards, {needed} needed: it is not final yet and the blob may still be read; retry the delete")]
    DeleteIncomplete {
        /// The blob.
        id: BlobId,
        /// Shards whose node recorded the tombstone.
        acknowledged: usize,
        /// n - f.
        needed: usize,
    },
    /// Whoever the write announced its blob to refused it.
    #[error("the write could not be announced: {0}")]
    Announce(String),
    /// Reading the input failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The encoding failed (parameters, size).
    #[error(transparent)]
    Encode(#[from] crate::codec::EncodeError),
    /// The fleet map is unusable.
    #[error("fleet map: {0}")]
    Map(String),
    /// The reads in flight hold the read memory budget, and none of it
    /// came free within the wait: nothing was sent; retry shortly.
    #[error("the gateway's reads hold all of its read memory ({budget} bytes) and none came free within {} s; retry shortly", waited.as_secs_f64())]
    ReadsBusy {
        /// The read memory budget, in bytes.
        budget: u64,
        /// How long the read waited.
        waited: std::time::Duration,
    },
}

/// Reads, writes and deletes blobs on a fleet.
#[derive(Clone)]
pub struct BlobClient {
    pub(super) calls: NodeCalls,
    pub(super) map: FleetMap,
    pub(super) metrics: Option<GatewayMetrics>,
    pub(super) segments: Option<std::sync::Arc<super::shared_reads::SharedReads>>,
    pub(super) memory: Option<super::memory_budget::MemoryBudget>,
    /// The reads' budget, and how long a read waits for its first segment's.
    pub(super) read_memory: Option<(super::memory_budget::MemoryBudget, std::time::Duration)>,
    pub(super) unanswering: Option<Arc<UnansweringNodes>>,
    /// How often an upload whose segment is long arriving tells the nodes
    /// its session is still in use.
    pub(super) session_touch_every: std::time::Duration,
}

/// How often an upload whose segment is long arriving (a slow client)
/// tells the nodes its session is still in use: well within their
/// staged-write TTL (15 minutes by default), which would otherwise
/// collect the pairs shipped before under it.
pub const SESSION_TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl BlobClient {
    /// A client of the fleet described by `map`.
    pub fn new(calls: NodeCalls, map: FleetMap, metrics: Option<GatewayMetrics>) -> Self {
        Self {
            calls,
            map,
            metrics,
            segments: None,
            memory: None,
            read_memory: None,
            unanswering: None,
            session_touch_every: SESSION_TOUCH_EVERY,
        }
    }

    /// The same client, its uploads touching their sessions `every` so
    /// often while a segment is long arriving (default
    /// [`SESSION_TOUCH_EVERY`]).
    pub fn with_session_touch_every(mut self, every: std::time::Duration) -> Self {
        self.session_touch_every = every;
        self
    }

    /// The same client, remembering in `memory` (shared with the other
    /// clients of the process) the nodes that leave calls unanswered:
    /// later reads ask them last, writes and deletes pass silent ones over.
    pub fn with_unanswering_memory(mut self, memory: Arc<UnansweringNodes>) -> Self {
        self.unanswering = Some(memory);
        self
    }

    /// The same client, reserving every segment its writes hold in memory
    /// from `budget` (shared with the other writes of the process).
    pub fn with_memory_budget(mut self, budget: super::memory_budget::MemoryBudget) -> Self {
        self.memory = Some(budget);
        self
    }

    /// The same client, reserving the rows its range reads fetch from
    /// `budget` (shared with the other reads of the process) until they
    /// have left for the reader; a read waits at most `wait` for its first
    /// segment's share ([`BlobIoError::ReadsBusy`] beyond), later segments
    /// as long as it takes.
    pub fn with_read_budget(
        mut self,
        budget: super::memory_budget::MemoryBudget,
        wait: std::time::Duration,
    ) -> Self {
        self.read_memory = Some((budget, wait));
        self
    }

    /// The same client, sharing the rows it reads with the other reads of
    /// `shared` (kept for later reads, and fetched once while in flight).
    pub fn with_shared_reads(
        mut self,
        shared: std::sync::Arc<super::shared_reads::SharedReads>,
    ) -> Self {
        self.segments = Some(shared);
        self
    }

    /// The fleet map it works on.
    pub fn map(&self) -> &FleetMap {
        &self.map
    }

    /// Nodes that hold at least one shard.
    pub(super) fn holders(&self) -> impl Iterator<Item = &MapNode> {
        self.map.nodes.iter().filter(|n| !n.shards.is_empty())
    }

    pub(super) fn client(&self, node: &MapNode) -> NodeClient {
        self.calls.node(&node.url)
    }

    /// The node holding `shard`, and a client of it.
    pub(super) fn holder(&self, shard: u16) -> Option<(&MapNode, NodeClient)> {
        self.map.holder(shard).map(|n| (n, self.client(n)))
    }

    /// Records that `node` left a call unanswered (`how`): counted, and
    /// remembered when the client shares a memory of such nodes.
    pub(super) fn unanswered(&self, node: &str, how: Unanswered) {
        if let Some(m) = &self.metrics {
            m.node_calls_unanswered.with_label_values(&[node]).inc();
        }
        if let Some(memory) = &self.unanswering {
            if let Some(node) = self.map.nodes.iter().find(|n| n.name == node) {
                memory.mark(node, how);
            }
        }
    }

    /// Whether reads ask `node` last: it lately left a call unanswered.
    pub(super) fn ask_last(&self, node: &str) -> bool {
        self.unanswering
            .as_ref()
            .is_some_and(|m| m.mark_of(node).is_some())
    }

    /// The silent nodes writes and deletes pass over now (`passed_over`).
    pub(super) fn passed_over(&self) -> BTreeSet<String> {
        match (&self.unanswering, self.quorum()) {
            (Some(memory), Ok(quorum)) => passed_over(&self.map.nodes, &memory.silent(), quorum),
            _ => BTreeSet::new(),
        }
    }

    pub(super) fn invalid_from(&self, node: &str) {
        if let Some(m) = &self.metrics {
            m.peer_invalid.with_label_values(&[node]).inc();
        }
    }

    pub(super) fn config(&self) -> Result<EncodingConfig, BlobIoError> {
        EncodingConfig::new(self.map.shards).map_err(|e| BlobIoError::Map(e.to_string()))
    }

    /// n - f: the shards a write, a delete or a decision needs.
    pub(super) fn quorum(&self) -> Result<usize, BlobIoError> {
        let config = self.config()?;
        Ok(config.n() - config.f())
    }
}
