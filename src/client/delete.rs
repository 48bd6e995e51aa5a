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
use super::quorum::{collect_states, StateCollection};
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
    /// Nothing of that id was ever staged.
    NotFound,
}

/// What a delete does, from what a quorum's nodes said (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeletePlan {
    /// Nothing of the blob was ever staged: no tombstone.
    NotFound,
    /// A tombstone newer than every write seen is on a quorum already.
    Done(u64),
    /// Send this tombstone.
    Tombstone(u64),
}

/// Plans a delete: a tombstone above every generation seen, unless nothing
/// was ever staged, or an earlier delete newer than every write seen is
/// final (reached a quorum) or to be finished. A write seen staged but not
/// committed is deleted too: its commit may have reached a few nodes this
/// quorum missed (a PUT answered 202), and would become visible once the
/// loop spreads it.
fn plan_delete(states: &StateCollection, quorum: usize, now_nanos: u64) -> DeletePlan {
    let newest_write = states
        .answers
        .iter()
        .map(|a| a.state.state.commit.max(a.state.state.staged))
        .max()
        .flatten();
    match states.verdict() {
        Verdict::Absent => DeletePlan::NotFound,
        Verdict::Deleted(generation) if newest_write <= Some(generation) => {
            if states.shards_where(|s| s.tombstone >= Some(generation)) >= quorum {
                DeletePlan::Done(generation)
            } else {
                // An earlier delete that did not reach a quorum: finish it.
                DeletePlan::Tombstone(generation)
            }
        }
        Verdict::Visible(_) | Verdict::Staged | Verdict::Deleted(_) => {
            DeletePlan::Tombstone(next_generation(now_nanos, states.generations()))
        }
    }
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
        let generation = match plan_delete(&states, quorum, now_nanos()) {
            DeletePlan::NotFound => return Ok(DeleteOutcome::NotFound),
            DeletePlan::Done(generation) => return Ok(DeleteOutcome::Deleted { generation }),
            DeletePlan::Tombstone(generation) => generation,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob_state::BlobState;
    use crate::client::quorum::StateAnswer;
    use crate::wire::NodeBlobState;

    /// Seven one-shard nodes' answers with these markers.
    fn answers(markers: &[BlobState]) -> StateCollection {
        StateCollection {
            answers: markers
                .iter()
                .enumerate()
                .map(|(i, state)| StateAnswer {
                    node: format!("node-{i}"),
                    shards: [i as u16].into(),
                    state: NodeBlobState {
                        state: *state,
                        ..NodeBlobState::default()
                    },
                })
                .collect(),
            silent: Default::default(),
        }
    }

    const NONE: BlobState = BlobState {
        commit: None,
        staged: None,
        tombstone: None,
    };

    #[test]
    fn a_write_staged_on_the_quorum_but_committed_where_it_did_not_look_is_deleted_too() {
        // A PUT answered 202: its commit at 50 reached nodes this quorum
        // did not hear; the quorum sees it staged.
        let staged = BlobState {
            staged: Some(50),
            ..NONE
        };
        let plan = plan_delete(&answers(&[staged; 5]), 5, 10);
        assert_eq!(plan, DeletePlan::Tombstone(51), "above the write, not 404");
        // Deleted before at 40, written again at 50 (202): a new tombstone.
        let rewritten = BlobState {
            staged: Some(50),
            tombstone: Some(40),
            ..NONE
        };
        let plan = plan_delete(&answers(&[rewritten; 5]), 5, 10);
        assert_eq!(
            plan,
            DeletePlan::Tombstone(51),
            "not the old delete's answer"
        );
    }

    #[test]
    fn a_final_delete_is_answered_again_and_an_unfinished_one_is_finished() {
        let deleted = BlobState {
            staged: Some(50),
            commit: Some(50),
            tombstone: Some(60),
        };
        assert_eq!(
            plan_delete(&answers(&[deleted; 5]), 5, 10),
            DeletePlan::Done(60)
        );
        let mut few = vec![deleted; 2];
        few.extend(
            [BlobState {
                commit: Some(50),
                ..NONE
            }; 3],
        );
        assert_eq!(
            plan_delete(&answers(&few), 5, 10),
            DeletePlan::Tombstone(60)
        );
    }

    #[test]
    fn nothing_staged_is_not_found_and_a_visible_blob_gets_a_tombstone_above_every_generation() {
        assert_eq!(
            plan_delete(&answers(&[NONE; 5]), 5, 10),
            DeletePlan::NotFound
        );
        let visible = BlobState {
            commit: Some(50),
            staged: Some(50),
            ..NONE
        };
        assert_eq!(
            plan_delete(&answers(&[visible; 5]), 5, 1_000),
            DeletePlan::Tombstone(1_000),
            "the clock, being ahead"
        );
    }
}
