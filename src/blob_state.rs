//! The write and delete markers of a blob, and the rules that combine them.
//!
//! Every write and every delete of a blob carries a *generation*: a number
//! the writer picks above every generation it saw for that blob (in
//! practice nanoseconds since the epoch, bumped when needed). On each node
//! a blob has up to three markers:
//!
//! - `staged`: a writer put the metadata of generation g here and is
//!   sending slivers; nothing is visible yet;
//! - `commit`: the write of generation g reached a quorum of shards and was
//!   committed; the blob is visible from then on;
//! - `tombstone`: the blob was deleted at generation g; every marker of a
//!   generation up to g is dead, and so are the slivers unless a newer
//!   write claims them.
//!
//! Across the fleet the rule is one comparison: the blob is visible when
//! its newest commit is newer than its newest tombstone; it is deleted when
//! a tombstone is at least as new as every commit. A tombstone on any node
//! therefore wins over older commits on others, and a later write of the
//! same bytes (same blob id, higher generation) supersedes an older delete.
//! Pure code: the store persists these markers, the loop spreads the winner.

use serde::{Deserialize, Serialize};

/// The markers of one blob on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BlobState {
    /// Generation of the newest commit here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<u64>,
    /// Generation of the newest write staged here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<u64>,
    /// Generation of the newest delete here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tombstone: Option<u64>,
}

impl BlobState {
    /// Whether a write of `generation` may stage or commit here: refused
    /// (with the tombstone's generation) when a delete at least as new is
    /// recorded.
    pub fn admits(&self, generation: u64) -> Result<(), u64> {
        match self.tombstone {
            Some(tombstone) if tombstone >= generation => Err(tombstone),
            _ => Ok(()),
        }
    }

    /// The markers after a delete of `generation`: the tombstone is the
    /// newer of the two, and commits and staged writes it covers are gone.
    pub fn with_tombstone(self, generation: u64) -> Self {
        let tombstone = self.tombstone.max(Some(generation));
        let alive = |g: Option<u64>| g.filter(|g| Some(*g) > tombstone);
        Self {
            commit: alive(self.commit),
            staged: alive(self.staged),
            tombstone,
        }
    }

    /// Whether some write still claims the blob's data here (a commit or a
    /// staged write newer than any tombstone: a node stopped between
    /// recording a tombstone and removing the markers it covers keeps
    /// them, dead).
    pub fn claims_data(&self) -> bool {
        let alive = |g: Option<u64>| g.is_some() && g > self.tombstone;
        alive(self.commit) || alive(self.staged)
    }

    /// Whether data kept here is what a delete left behind: a tombstone
    /// covers every commit and staged write recorded here (a node stopped
    /// between recording the tombstone and removing the data leaves this).
    pub fn only_leftovers(&self) -> bool {
        self.tombstone
            .is_some_and(|tombstone| !self.with_tombstone(tombstone).claims_data())
    }

    /// The newest generation of any marker here.
    pub fn newest(&self) -> Option<u64> {
        self.commit.max(self.staged).max(self.tombstone)
    }
}

/// What the fleet's markers of a blob add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Committed at this generation, and not deleted since.
    Visible(u64),
    /// Deleted at this generation (a tombstone at least as new as every commit).
    Deleted(u64),
    /// Staged somewhere, never committed: invisible, collected after a while.
    Staged,
    /// No node has any marker of it.
    Absent,
}

impl Verdict {
    /// Whether the blob is visible.
    pub fn is_visible(&self) -> bool {
        matches!(self, Verdict::Visible(_))
    }
}

/// Combines the markers nodes report for one blob.
pub fn resolve<'a>(states: impl IntoIterator<Item = &'a BlobState>) -> Verdict {
    let (mut commit, mut staged, mut tombstone) = (None, false, None);
    for state in states {
        commit = commit.max(state.commit);
        staged |= state.staged.is_some();
        tombstone = tombstone.max(state.tombstone);
    }
    match (commit, tombstone) {
        (Some(c), t) if Some(c) > t => Verdict::Visible(c),
        (_, Some(t)) => Verdict::Deleted(t),
        _ if staged => Verdict::Staged,
        _ => Verdict::Absent,
    }
}

/// A generation for a new write or delete: the clock in nanoseconds, but
/// above every generation already seen for the blob (clocks of different
/// gateways may disagree; the order must not).
pub fn next_generation(now_nanos: u64, seen: impl IntoIterator<Item = Option<u64>>) -> u64 {
    let newest = seen.into_iter().flatten().max().unwrap_or(0);
    now_nanos.max(newest.saturating_add(1)).max(1)
}

/// The clock in nanoseconds since the Unix epoch.
pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(commit: Option<u64>, staged: Option<u64>, tombstone: Option<u64>) -> BlobState {
        BlobState {
            commit,
            staged,
            tombstone,
        }
    }

    #[test]
    fn data_is_a_deletes_leftover_only_when_a_tombstone_covers_every_write_here() {
        assert!(state(Some(1), None, Some(2)).only_leftovers());
        assert!(state(Some(1), Some(2), Some(2)).only_leftovers());
        assert!(state(None, None, Some(2)).only_leftovers());
        assert!(
            !state(Some(3), None, Some(2)).only_leftovers(),
            "a newer commit"
        );
        assert!(
            !state(Some(1), Some(3), Some(2)).only_leftovers(),
            "a newer write staged"
        );
        assert!(
            !state(Some(1), None, None).only_leftovers(),
            "never deleted"
        );
        assert!(!state(None, Some(1), None).only_leftovers());
    }

    #[test]
    fn a_blob_is_visible_only_when_its_newest_commit_beats_every_tombstone() {
        let cases = [
            (vec![], Verdict::Absent),
            (vec![state(None, Some(5), None)], Verdict::Staged),
            (
                vec![state(Some(5), None, None), state(None, Some(5), None)],
                Verdict::Visible(5),
            ),
            // One node slept through the delete: the tombstone elsewhere wins.
            (
                vec![state(Some(5), None, None), state(None, None, Some(6))],
                Verdict::Deleted(6),
            ),
            // A write aborted at its own generation stays invisible.
            (
                vec![state(Some(5), None, None), state(None, None, Some(5))],
                Verdict::Deleted(5),
            ),
            // The same bytes stored again after the delete.
            (
                vec![
                    state(Some(5), None, None),
                    state(Some(7), None, Some(6)),
                    state(None, None, Some(6)),
                ],
                Verdict::Visible(7),
            ),
            // A staged rewrite after a delete does not make it visible.
            (
                vec![state(None, Some(8), Some(6)), state(Some(5), None, None)],
                Verdict::Deleted(6),
            ),
        ];
        for (states, expected) in cases {
            assert_eq!(resolve(&states), expected, "{states:?}");
        }
    }

    #[test]
    fn a_tombstone_removes_the_markers_it_covers_and_refuses_older_writes() {
        let before = state(Some(5), Some(9), None);
        let after = before.with_tombstone(6);
        assert_eq!(after, state(None, Some(9), Some(6)));
        assert!(
            after.claims_data(),
            "the staged write of 9 still claims the slivers"
        );
        assert_eq!(after.admits(6), Err(6));
        assert_eq!(after.admits(4), Err(6));
        assert_eq!(after.admits(7), Ok(()));
        // An older tombstone arriving late changes nothing.
        assert_eq!(after.with_tombstone(3), after);
        assert!(!state(Some(2), None, None).with_tombstone(2).claims_data());
    }

    #[test]
    fn markers_a_tombstone_here_covers_claim_no_data_though_a_crash_left_them() {
        assert!(!state(Some(5), Some(5), Some(6)).claims_data());
        assert!(!state(Some(6), None, Some(6)).claims_data());
        assert!(
            state(Some(5), Some(7), Some(6)).claims_data(),
            "a newer write"
        );
        assert!(state(Some(5), None, None).claims_data());
    }

    #[test]
    fn new_generations_follow_the_clock_but_never_fall_behind_what_was_seen() {
        assert_eq!(next_generation(100, [None, Some(40)]), 100);
        assert_eq!(next_generation(100, [Some(100)]), 101);
        assert_eq!(next_generation(100, [Some(500), None]), 501);
        assert_eq!(next_generation(0, []), 1);
    }
}
