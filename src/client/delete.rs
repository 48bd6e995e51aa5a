//! Deleting a blob: a tombstone on a quorum of shards before the answer.
//!
//! The delete's generation is above every commit seen (a quorum's answers
//! include every committed write), so its tombstone wins over the slivers
//! of the at most f nodes that slept through it: they hold fewer than p
//! slivers, no read succeeds from them alone, and the loop spreads the
//! tombstone to them when they return. A delete that reaches fewer than
//! n - f shards says so; its tombstones stay and spread, and a retry
//! completes it.

use futures_util::future::join_all;

use super::blob_client::{BlobClient, BlobIoError};
use super::quorum::collect_states;
use crate::blob_state::{next_generation, now_nanos, Verdict};
use crate::codec::BlobId;
use crate::fleet::MapNode;

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The blob is deleted on a quorum: final. Also the answer to a delete
    /// of a blob deleted before (a retry completes what an earlier,
    /// incomplete delete started).
    Deleted {
        /// The tombstone's generation.
        generation: u64,
    },
    /// Nothing of that id was ever committed (or its write is still in
    /// flight).
    NotFound,
}

impl BlobClient {
    /// Deletes a blob: final once this returns `Deleted`.
    pub async fn delete(&self, id: &BlobId) -> Result<DeleteOutcome, BlobIoError> {
        let quorum = self.quorum()?;
        let states = collect_states(self, id, quorum).await;
        if states.answered_shards() < quorum {
            return Err(BlobIoError::NoQuorum {
                id: *id,
                answered: states.answered_shards(),
                needed: quorum,
            });
        }
        let generation = match states.verdict() {
            Verdict::Absent | Verdict::Staged => return Ok(DeleteOutcome::NotFound),
            Verdict::Deleted(generation) => {
                let recorded = states.shards_where(|s| s.tombstone >= Some(generation));
                if recorded >= quorum {
                    return Ok(DeleteOutcome::Deleted { generation });
                }
                // An earlier delete that did not reach a quorum: finish it.
                generation
            }
            Verdict::Visible(_) => next_generation(now_nanos(), states.generations()),
        };
        // Nodes lately silent get their tombstone without the delete
        // waiting on them (the loop spreads it if they miss it).
        let passed_over = self.passed_over();
        let (nodes, unwaited): (Vec<&MapNode>, Vec<&MapNode>) = self
            .holders()
            .filter(|n| !states.silent.contains(&n.name))
            .partition(|n| !passed_over.contains(&n.name));
        for node in unwaited {
            let (client, node, id) = (self.clone(), node.clone(), *id);
            tokio::spawn(async move { client.tombstone(&node, &id, generation).await });
        }
        let answers = join_all(
            nodes
                .iter()
                .map(|node| self.tombstone(node, id, generation)),
        )
        .await;
        let acknowledged = nodes
            .iter()
            .zip(answers)
            .filter(|(_, recorded)| *recorded)
            .map(|(node, _)| node.shards.len())
            .sum();
        if acknowledged < quorum {
            return Err(BlobIoError::DeleteIncomplete {
                id: *id,
                acknowledged,
                needed: quorum,
            });
        }
        Ok(DeleteOutcome::Deleted { generation })
    }

    /// Sends the tombstone of `generation` to `node`; whether it recorded it.
    async fn tombstone(&self, node: &MapNode, id: &BlobId, generation: u64) -> bool {
        match self.client(node).delete(id, generation).await {
            Ok(()) => true,
            Err(e) => {
                if e.is_silence() {
                    self.unanswered(&node.name, super::unanswering::Unanswered::Silent);
                }
                tracing::warn!(node = %node.name, "delete of {id}: {e}");
                false
            }
        }
    }
}
