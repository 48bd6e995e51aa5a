//! The read memory of a gateway, counted by the rows in memory rather
//! than by their readers: a read reserves the bytes of the rows it is
//! about to fetch, and each fetched row carries its share
//! ([`held_by`](super::memory_budget::held_by)) to everyone who holds it:
//! the reads that share the fetch, and the chunks on their way to
//! clients. A row held by many readers counts once, and a read that finds
//! every row it needs held by another read reserves nothing (so it is
//! never turned away for memory). The cache of rows holds no share (it
//! is bounded by its own size): a cached row that no reader holds is
//! reserved again by the read that takes it.

use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;

use super::blob_client::{BlobClient, BlobIoError};
use super::memory_budget::{held_by, MemoryReservation};

/// How long a read may wait for the budget.
#[derive(Debug, Clone, Copy)]
pub(super) enum Admission {
    /// Until this instant (a read that has sent nothing yet), then
    /// [`BlobIoError::ReadsBusy`].
    Until(Instant),
    /// As long as it takes (a read under way).
    UnderWay,
}

impl BlobClient {
    /// How long a read that has sent nothing yet waits for the budget from
    /// now.
    pub(super) fn first_admission(&self) -> Admission {
        match &self.read_memory {
            Some((_, wait)) => Instant::now()
                .checked_add(*wait)
                .map_or(Admission::UnderWay, Admission::Until),
            None => Admission::UnderWay,
        }
    }

    /// The read budget in bytes, if reads are bounded by one.
    pub(super) fn read_budget_bytes(&self) -> Option<u64> {
        self.read_memory
            .as_ref()
            .map(|(budget, _)| budget.capacity())
    }

    /// Reserves `bytes` for rows about to be fetched, or taken from the
    /// cache (`None` without a budget), waiting as `admission` allows.
    pub(super) async fn reserve_rows(
        &self,
        bytes: u64,
        admission: Admission,
    ) -> Result<Option<MemoryReservation>, BlobIoError> {
        let Some((budget, wait)) = &self.read_memory else {
            return Ok(None);
        };
        let reserved = match admission {
            Admission::UnderWay => budget.reserve(bytes).await,
            Admission::Until(deadline) => budget
                .reserve_within(bytes, deadline.saturating_duration_since(Instant::now()))
                .await
                .ok_or(BlobIoError::ReadsBusy {
                    budget: budget.capacity(),
                    waited: *wait,
                })?,
        };
        Ok(Some(reserved))
    }
}

/// The shares of a reservation that rows carry: one per row when it
/// covers them all, else one for all of them (rows above the whole budget
/// hold all of it until the last of them is dropped).
pub(super) struct RowShares {
    per_row: Option<(MemoryReservation, u64)>,
    all: Option<Arc<MemoryReservation>>,
}

impl RowShares {
    /// The shares of `reserved` for `rows` rows of `row_bytes` each
    /// (`None`: no budget, the rows carry nothing).
    pub(super) fn new(reserved: Option<MemoryReservation>, row_bytes: u64, rows: usize) -> Self {
        match reserved {
            None => Self {
                per_row: None,
                all: None,
            },
            Some(r) if r.bytes() >= row_bytes * rows as u64 => Self {
                per_row: Some((r, row_bytes)),
                all: None,
            },
            Some(r) => Self {
                per_row: None,
                all: Some(Arc::new(r)),
            },
        }
    }

    /// `row` as its readers hold it, carrying its share, and the share for
    /// the cache to remember (never alive without a budget).
    pub(super) fn carry(&mut self, row: Bytes) -> (Bytes, Weak<MemoryReservation>) {
        let share = match (&mut self.per_row, &self.all) {
            (Some((rest, row_bytes)), _) => Arc::new(
                rest.split_off(*row_bytes)
                    .unwrap_or_else(|| std::mem::take(rest)),
            ),
            (None, Some(all)) => all.clone(),
            (None, None) => return (row, Weak::new()),
        };
        (held_by(row, share.clone()), Arc::downgrade(&share))
    }
}

/// A read's place in the order its segments take the budget in: a
/// segment waits for the one before it to have its rows (reserved, or
/// joined from other reads) before it plans its own, so a segment read
/// ahead never holds budget the one before it waits for.
#[derive(Default)]
pub(super) struct Turn {
    before: Option<tokio::sync::oneshot::Receiver<()>>,
    mine: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Turn {
    /// The turns of `count` segments read in order.
    pub(super) fn chain(count: usize) -> Vec<Turn> {
        let mut turns: Vec<Turn> = (0..count).map(|_| Turn::default()).collect();
        for i in 1..count {
            let (tx, rx) = tokio::sync::oneshot::channel();
            turns[i - 1].mine = Some(tx);
            turns[i].before = Some(rx);
        }
        turns
    }

    /// Waits until the segment before has its rows (or gave up).
    pub(super) async fn wait(&mut self) {
        if let Some(before) = self.before.take() {
            let _ = before.await;
        }
    }

    /// Lets the next segment go on (also when dropped).
    pub(super) fn pass(&mut self) {
        self.mine.take();
    }
}
