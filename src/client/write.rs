//! Writing a blob: ship while receiving, then stage, adopt, commit.
//!
//! 1. As the blob arrives, each segment is encoded once and its pairs
//!    shipped, both slivers of a pair in one request, under an upload
//!    session on the nodes (`upload`): invisible, verified against the
//!    segment's root. A node that does not answer within its deadline gets
//!    nothing more of this write (the loop repairs its shards later); a
//!    segment filed by fewer than n - f shards ends the write at once.
//! 2. At the end, the metadata (which commits to every segment) gives the
//!    blob id; `announce` learns it.
//! 3. Ask the fleet about the blob and pick a generation above every one
//!    seen (a later write of deleted bytes must win over the tombstone).
//! 4. Stage: the metadata, with the generation and the session, to every
//!    node; each adopts the session's pairs the metadata agrees with and
//!    tells which it holds.
//! 5. When every segment is held by n - f shards that staged it, the write
//!    is decided: commit on every node (`commit`), and answer once nodes
//!    of n - f shards recorded it.
//!
//! A write that fails before its commit leaves only staged pieces and
//! sessions: aborted and removed on the nodes that answer, collected after
//! their TTL elsewhere, never visible. A commit is never withdrawn (a
//! reader may already have seen it); what the commit phase achieved
//! decides the answer (`WriteOutcome` or the error).

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use futures_util::future::join_all;
use tokio::io::AsyncReadExt;

use super::blob_client::{BlobClient, BlobIoError};
use super::commit::CommitVerdict;
use super::quorum::collect_states;
use super::upload::BlobUpload;
use crate::blob_state::{next_generation, now_nanos};
use crate::codec::{BlobId, BlobMetadata};
use crate::fleet::MapNode;
use crate::wire::UploadId;

/// Bytes read from a file per push.
const FILE_CHUNK: usize = 4 << 20;

/// What a write achieved.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// The blob's metadata.
    pub metadata: BlobMetadata,
    /// The write's generation.
    pub generation: u64,
    /// Shards acknowledged in every segment.
    pub acknowledged: BTreeSet<u16>,
    /// Shards missing in at least one segment.
    pub missing: BTreeSet<u16>,
    /// Shards whose node recorded the commit when the write answered. Below
    /// n - f (only when more than f nodes stopped answering during the
    /// commit) the write is durable and decided, but a read may not see it
    /// until the fleet carries the commit to the others.
    pub committed: usize,
    /// n - f.
    pub quorum: usize,
}

impl WriteOutcome {
    /// Whether every later read sees the blob (the commit reached nodes of
    /// n - f shards).
    pub fn visible_to_every_read(&self) -> bool {
        self.committed >= self.quorum
    }
}

/// How long the commit phase may last, in small-call deadlines: long
/// enough for a node stopped for one deadline to answer a later attempt.
const COMMIT_WINDOW_CALLS: u32 = 3;

impl BlobClient {
    /// Writes the blob held in the file at `path`.
    pub async fn write_file(&self, path: &Path) -> Result<WriteOutcome, BlobIoError> {
        self.write_file_announced(path, |_| async { Ok(()) }).await
    }

    /// Writes the blob held in the file at `path`; `announce` learns its
    /// id before any of it is staged on a node (an index notes it, so a
    /// blob whose writer dies is never unknown), and its error ends the
    /// write.
    pub async fn write_file_announced<F, Fut>(
        &self,
        path: &Path,
        announce: F,
    ) -> Result<WriteOutcome, BlobIoError>
    where
        F: FnOnce(BlobId) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let mut file = tokio::fs::File::open(path).await?;
        let mut upload = self.upload()?;
        upload.expect_len(Some(file.metadata().await?.len()));
        let mut chunk = vec![0u8; FILE_CHUNK];
        loop {
            let read = file.read(&mut chunk).await?;
            if read == 0 {
                break;
            }
            upload.push(&chunk[..read]).await?;
        }
        upload.finish(announce).await
    }
}

/// Times a write is staged again above a tombstone that refused it before
/// it gives up (a delete of the same bytes racing it each time).
const RESTAGES: u32 = 3;

/// Whether the tombstones the nodes that refused a stage of `generation`
/// report (`None`: no answer) may back a refusal (pure): some node did not
/// answer, or reports one at least as new. A delete racing the write
/// leaves such a tombstone; a node refusing without one is not deleting.
fn backs_a_refusal(reported: &[Option<Option<u64>>], generation: u64) -> bool {
    reported
        .iter()
        .any(|tombstone| tombstone.is_none_or(|t| t >= Some(generation)))
}

/// What staging a write did.
struct Staging {
    /// Per segment, the shards holding the blob's pair on the nodes that
    /// staged it.
    held: Vec<BTreeSet<u16>>,
    /// The nodes that refused it for a tombstone at least as new.
    tombstoned: Vec<MapNode>,
}

impl BlobUpload {
    /// The upload ended: its last segment is shipped, and the blob
    /// staged, its pairs adopted and committed (see the module doc);
    /// `announce` as for [`BlobClient::write_file_announced`].
    pub async fn finish<F, Fut>(mut self, announce: F) -> Result<WriteOutcome, BlobIoError>
    where
        F: FnOnce(BlobId) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let layout = self.layout()?;
        self.ship_the_rest().await?;
        let hashes = self.shipped.iter().map(|s| s.hashes.clone()).collect();
        let metadata = BlobMetadata::new(layout, hashes)
            .map_err(|e| BlobIoError::Io(std::io::Error::other(e)))?;
        let id = metadata.blob_id();
        announce(id).await.map_err(BlobIoError::Announce)?;

        let client = self.client.clone();
        let quorum = self.quorum;
        let before = collect_states(&client, &id, quorum).await;
        let mut generation = next_generation(now_nanos(), before.generations());
        let silent = {
            let mut shunned = self.shunned.lock().expect("not poisoned");
            shunned.nodes.extend(before.silent.iter().cloned());
            shunned.nodes.clone()
        };
        let mut staging = client
            .stage_adopting(&metadata, generation, &self.session, &silent)
            .await;
        // From here on the write settles on its own terms: staged pieces
        // are aborted below, and adopted sessions are gone.
        self.settled = true;
        // A node holding a tombstone at least as new refused the stage (a
        // delete only it heard of, which the quorum read missed, or a
        // clock ahead): a commit at this generation would be undone once
        // that tombstone spreads. The write is staged again above it.
        let mut restaged = 0;
        while !staging.tombstoned.is_empty() {
            if restaged == RESTAGES {
                client
                    .abort(&metadata, generation, &self.session, &silent)
                    .await;
                return Err(BlobIoError::DeletedMeanwhile { id });
            }
            let reported = client.tombstones_of(&id, &staging.tombstoned).await;
            if !backs_a_refusal(&reported, generation) {
                // Every refusing node answers with no tombstone as new as
                // this write: not a delete racing it but nodes refusing
                // it (lying): passed over like nodes that failed the
                // stage; the shards that staged decide.
                tracing::warn!(
                    %id,
                    nodes = ?staging.tombstoned.iter().map(|n| &n.name).collect::<Vec<_>>(),
                    "staging refused as deleted by nodes that report no tombstone as new; passed over"
                );
                break;
            }
            let newest = reported.into_iter().flatten().flatten().max();
            generation = next_generation(now_nanos(), [Some(generation), newest]);
            staging = client
                .stage_adopting(&metadata, generation, &self.session, &silent)
                .await;
            restaged += 1;
        }
        let held = staging.held;
        let segments = metadata.segment_count() as u32;
        let mut acknowledged: BTreeSet<u16> = held.first().cloned().unwrap_or_default();
        for (segment, shards) in held.iter().enumerate() {
            acknowledged.retain(|s| shards.contains(s));
            if shards.len() < quorum {
                client
                    .abort(&metadata, generation, &self.session, &silent)
                    .await;
                return Err(BlobIoError::NotDurable {
                    segment: segment as u32,
                    acknowledged: shards.len(),
                    needed: quorum,
                });
            }
        }
        debug_assert_eq!(held.len(), segments as usize);

        let window = client.calls.deadlines.call * COMMIT_WINDOW_CALLS;
        let committed = match client.commit_phase(&id, generation, quorum, window).await {
            CommitVerdict::Committed => quorum,
            CommitVerdict::Partial { acknowledged } => acknowledged,
            CommitVerdict::Refused => {
                client
                    .abort(&metadata, generation, &self.session, &silent)
                    .await;
                return Err(BlobIoError::CommitRefused { needed: quorum });
            }
            CommitVerdict::Unknown => return Err(BlobIoError::CommitUnknown { needed: quorum }),
        };
        let n = metadata.config().n() as u16;
        Ok(WriteOutcome {
            metadata,
            generation,
            missing: (0..n).filter(|s| !acknowledged.contains(s)).collect(),
            acknowledged,
            committed,
            quorum,
        })
    }
}

impl BlobClient {
    /// Nodes that hold shards and are not among `silent`.
    pub(super) fn answering<'a>(
        &'a self,
        silent: &'a BTreeSet<String>,
    ) -> impl Iterator<Item = &'a MapNode> + 'a {
        self.holders().filter(|n| !silent.contains(&n.name))
    }

    /// Sends the metadata, with the generation and the upload session, to
    /// every node not among `silent`; returns per segment the shards
    /// holding the blob's pair on the nodes that staged it, and the nodes
    /// that refused it for a tombstone at least as new.
    async fn stage_adopting(
        &self,
        metadata: &BlobMetadata,
        generation: u64,
        session: &UploadId,
        silent: &BTreeSet<String>,
    ) -> Staging {
        let id = metadata.blob_id();
        let bytes = Bytes::from(metadata.to_bytes());
        let nodes: Vec<&MapNode> = self.answering(silent).collect();
        let answers = join_all(nodes.iter().map(|node| {
            let call = self.client(node);
            let bytes = bytes.clone();
            async move {
                call.put_metadata_adopting(&id, generation, bytes, session)
                    .await
            }
        }))
        .await;
        let mut held = vec![BTreeSet::new(); metadata.segment_count() as usize];
        let mut tombstoned = Vec::new();
        for (node, answer) in nodes.into_iter().zip(answers) {
            match answer {
                Ok(adopted) => {
                    for (shards, theirs) in held.iter_mut().zip(adopted.segments) {
                        // A node speaks only for the shards the map gives it.
                        shards.extend(theirs.into_iter().filter(|s| node.shards.contains(s)));
                    }
                }
                Err(e) if e.status() == Some(reqwest::StatusCode::GONE) => {
                    tracing::info!(node = %node.name, "staging {id}: {e}");
                    tombstoned.push(node.clone());
                }
                Err(e) => {
                    if e.is_silence() {
                        self.unanswered(&node.name, super::unanswering::Unanswered::Silent);
                    }
                    tracing::warn!(node = %node.name, "staging {id}: {e}")
                }
            }
        }
        Staging { held, tombstoned }
    }

    /// The tombstone of `id` each of `nodes` reports: `None` for a node
    /// that did not answer, `Some(None)` for one that reports none.
    async fn tombstones_of(&self, id: &BlobId, nodes: &[MapNode]) -> Vec<Option<Option<u64>>> {
        join_all(nodes.iter().map(|node| {
            let call = self.client(node);
            async move { call.state(id).await.ok().map(|s| s.state.tombstone) }
        }))
        .await
    }

    /// Best effort: tells every answering node the staged write will
    /// never commit, and removes the upload session.
    async fn abort(
        &self,
        metadata: &BlobMetadata,
        generation: u64,
        session: &UploadId,
        silent: &BTreeSet<String>,
    ) {
        let id = metadata.blob_id();
        join_all(self.answering(silent).map(|node| {
            let call = self.client(node);
            async move {
                if let Err(e) = call.abort(&id, generation).await {
                    tracing::debug!(node = %node.name, "abort of {id}: {e}");
                }
            }
        }))
        .await;
        self.remove_session(session, silent).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_stage_is_a_racing_delete_only_if_some_refuser_has_a_tombstone_as_new_or_is_silent()
    {
        assert!(
            backs_a_refusal(&[Some(Some(10))], 10),
            "a delete at the same generation"
        );
        assert!(backs_a_refusal(&[Some(None), Some(Some(12))], 10));
        assert!(
            backs_a_refusal(&[Some(None), None], 10),
            "a silent refuser may have one"
        );
        assert!(!backs_a_refusal(&[Some(None)], 10), "no tombstone at all");
        assert!(!backs_a_refusal(&[Some(Some(9)), Some(None)], 10));
    }
}
