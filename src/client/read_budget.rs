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

/// `row` as its readers hold it, carrying its share (`row_bytes`) of a
/// reservation taken out of `reserved` (the rest of it when less is
/// left), and the share for the cache to remember. Without a budget
/// (`None`) the row is returned as it is.
pub(super) fn carry(
    reserved: &mut Option<MemoryReservation>,
    row_bytes: u64,
    row: Bytes,
) -> (Bytes, Weak<MemoryReservation>) {
    match reserved {
        None => (row, Weak::new()),
        Some(reservation) => {
            let share = reservation
                .split_off(row_bytes)
                .unwrap_or_else(|| std::mem::take(reservation));
            let share = Arc::new(share);
            (held_by(row, share.clone()), Arc::downgrade(&share))
        }
    }
}
