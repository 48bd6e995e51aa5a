//! The blobs whose stored files changed lately, in the order of their
//! last change, in memory: the control loop asks a node which blobs
//! changed since the position it last read, and reads again only those,
//! so a fleet at rest costs a reconcile a few small calls instead of every
//! node's whole inventory.
//!
//! Every change is recorded after it is on disk (so a reader that saw a
//! position also sees every change recorded before it). A blob changed
//! again moves to the end. The journal keeps at most `capacity` blobs:
//! past that the oldest are forgotten and positions before them can no
//! longer be answered (`Forgotten`), nor can positions of another epoch
//! (each opening of a store starts a new one): the reader then lists the
//! whole inventory again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::codec::BlobId;

/// Blobs the journal keeps by default: about 12 MiB of memory.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// A place in a node's journal: changes after it are the ones not seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalPosition {
    /// The journal's epoch (a new one each time the store opens).
    pub epoch: u64,
    /// The last change seen.
    pub seq: u64,
}

/// The blobs changed after a position, in the order of their last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// At most the asked number of blobs.
    pub blobs: Vec<BlobId>,
    /// The position after the last blob given (the journal's head when
    /// none are left).
    pub next: JournalPosition,
    /// Whether more changes follow `next`.
    pub more: bool,
}

/// Why changes after a position cannot be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Forgotten {
    /// The position is of another epoch (the store was opened since).
    #[error("the journal started anew (epoch {current}, asked {asked})")]
    OtherEpoch {
        /// The journal's epoch.
        current: u64,
        /// The epoch asked about.
        asked: u64,
    },
    /// Changes after the position were forgotten (too many since).
    #[error("changes after {asked} are forgotten (the journal keeps changes after {oldest})")]
    TooOld {
        /// The position asked about.
        asked: u64,
        /// The oldest position the journal still answers.
        oldest: u64,
    },
    /// The position is past the journal's head.
    #[error("position {asked} is past the journal's head {head}")]
    Ahead {
        /// The position asked about.
        asked: u64,
        /// The journal's head.
        head: u64,
    },
}

#[derive(Debug, Default)]
struct Entries {
    by_seq: BTreeMap<u64, BlobId>,
    seq_of: HashMap<BlobId, u64>,
    head: u64,
    /// Changes up to this one may have been forgotten.
    oldest: u64,
}

/// The journal of changed blobs.
#[derive(Debug)]
pub(super) struct ChangeJournal {
    epoch: u64,
    capacity: usize,
    entries: Mutex<Entries>,
}

impl ChangeJournal {
    /// An empty journal of `epoch` keeping at most `capacity` blobs.
    pub fn new(epoch: u64, capacity: usize) -> Self {
        Self {
            epoch,
            capacity: capacity.max(1),
            entries: Mutex::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `id`'s files changed (call once the change is on disk).
    pub fn record(&self, id: BlobId) {
        let mut entries = self.entries();
        entries.head += 1;
        let seq = entries.head;
        if let Some(old) = entries.seq_of.insert(id, seq) {
            entries.by_seq.remove(&old);
        }
        entries.by_seq.insert(seq, id);
        while entries.by_seq.len() > self.capacity {
            let (seq, dropped) = entries.by_seq.pop_first().expect("over capacity");
            entries.seq_of.remove(&dropped);
            entries.oldest = seq;
        }
    }

    /// The newest position.
    pub fn head(&self) -> JournalPosition {
        JournalPosition {
            epoch: self.epoch,
            seq: self.entries().head,
        }
    }

    /// At most `limit` blobs changed after `after`.
    pub fn since(&self, after: JournalPosition, limit: usize) -> Result<Changes, Forgotten> {
        let entries = self.entries();
        if after.epoch != self.epoch {
            return Err(Forgotten::OtherEpoch {
                current: self.epoch,
                asked: after.epoch,
            });
        }
        if after.seq < entries.oldest {
            return Err(Forgotten::TooOld {
                asked: after.seq,
                oldest: entries.oldest,
            });
        }
        if after.seq > entries.head {
            return Err(Forgotten::Ahead {
                asked: after.seq,
                head: entries.head,
            });
        }
        let mut changed = entries.by_seq.range(after.seq + 1..);
        let taken: Vec<(u64, BlobId)> = changed
            .by_ref()
            .take(limit)
            .map(|(seq, id)| (*seq, *id))
            .collect();
        let more = changed.next().is_some();
        let seq = match (more, taken.last()) {
            (true, Some((seq, _))) => *seq,
            _ => entries.head,
        };
        Ok(Changes {
            blobs: taken.into_iter().map(|(_, id)| id).collect(),
            next: JournalPosition {
                epoch: self.epoch,
                seq,
            },
            more,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> BlobId {
        BlobId([n; 32])
    }

    fn at(seq: u64) -> JournalPosition {
        JournalPosition { epoch: 7, seq }
    }

    #[test]
    fn changes_after_a_position_come_once_each_in_the_order_of_their_last_change() {
        let journal = ChangeJournal::new(7, 10);
        let start = journal.head();
        assert_eq!(start, at(0));
        journal.record(id(1));
        journal.record(id(2));
        journal.record(id(1));
        let changes = journal.since(start, 10).unwrap();
        assert_eq!(changes.blobs, vec![id(2), id(1)]);
        assert_eq!(changes.next, at(3));
        assert!(!changes.more);
        assert_eq!(journal.since(changes.next, 10).unwrap().blobs, vec![]);
        // A position between the two changes of blob 1 still sees it.
        assert_eq!(journal.since(at(1), 10).unwrap().blobs, vec![id(2), id(1)]);
        assert_eq!(journal.since(at(2), 10).unwrap().blobs, vec![id(1)]);
    }

    #[test]
    fn changes_come_a_page_at_a_time_and_the_pages_together_are_all_of_them() {
        let journal = ChangeJournal::new(7, 100);
        for n in 0..25 {
            journal.record(id(n));
        }
        let mut seen = Vec::new();
        let mut position = at(0);
        loop {
            let page = journal.since(position, 10).unwrap();
            assert!(page.blobs.len() <= 10);
            seen.extend(page.blobs);
            position = page.next;
            if !page.more {
                break;
            }
        }
        assert_eq!(seen, (0..25).map(id).collect::<Vec<_>>());
        assert_eq!(position, journal.head());
    }

    #[test]
    fn a_position_before_forgotten_changes_or_of_another_epoch_is_refused() {
        let journal = ChangeJournal::new(7, 3);
        for n in 0..5 {
            journal.record(id(n));
        }
        // Kept: the changes at 3, 4 and 5.
        assert_eq!(
            journal.since(at(1), 10),
            Err(Forgotten::TooOld {
                asked: 1,
                oldest: 2
            })
        );
        assert_eq!(
            journal.since(at(2), 10).unwrap().blobs,
            vec![id(2), id(3), id(4)]
        );
        assert_eq!(
            journal.since(JournalPosition { epoch: 8, seq: 5 }, 10),
            Err(Forgotten::OtherEpoch {
                current: 7,
                asked: 8
            })
        );
        assert_eq!(
            journal.since(at(6), 10),
            Err(Forgotten::Ahead { asked: 6, head: 5 })
        );
    }

    #[test]
    fn a_blob_changed_again_is_not_forgotten_with_its_older_change() {
        let journal = ChangeJournal::new(7, 2);
        journal.record(id(1));
        journal.record(id(2));
        journal.record(id(1));
        // Blob 1's first change moved, not dropped: nothing forgotten yet.
        assert_eq!(journal.since(at(0), 10).unwrap().blobs, vec![id(2), id(1)]);
        journal.record(id(3));
        assert!(journal.since(at(1), 10).is_err());
        assert_eq!(journal.since(at(2), 10).unwrap().blobs, vec![id(1), id(3)]);
    }
}
