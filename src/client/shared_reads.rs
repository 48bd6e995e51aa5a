//! Rows of segments shared between the reads of one gateway: the rows
//! kept ([`SegmentCache`]) and the reads in flight. A read finds each row
//! it needs in the cache, or in a read already fetching it (it waits for
//! that one), or fetches it: the aws cli's ten concurrent ranges of one
//! object fetch each row once, not once per range. A read in flight runs
//! as a task of its own, so it finishes for those waiting on it when the
//! one that started it goes away (its client hung up). With a read
//! budget, the rows a read fetches reserve their bytes and carry them to
//! everyone sharing them, the cache included (`client::read_budget`).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};

use super::blob_client::{BlobClient, BlobIoError};
use super::memory_budget::{held_by, MemoryBudget, MemoryReservation};
use super::read::SlowNodes;
use super::read_budget::{Admission, RowShares, Turn};
use super::row_read::{segment_layout, ReadRows, RowSource};
use super::segment_cache::{RowKey, SegmentCache};
use crate::codec::{BlobId, BlobMetadata};

/// What a shared read gives those waiting on it.
type SharedOutcome = Result<Arc<(ReadRows, SlowNodes)>, Arc<BlobIoError>>;

/// A read in flight: the rows it promises and its outcome to come.
struct InFlight {
    number: u64,
    rows: Vec<u16>,
    outcome: Shared<BoxFuture<'static, SharedOutcome>>,
}

/// The reads in flight by segment, and the number of the last one started.
#[derive(Default)]
struct Reads {
    started: u64,
    by_segment: HashMap<(BlobId, u32), Vec<InFlight>>,
}

/// The rows kept and the reads in flight, shared by a gateway's reads.
pub struct SharedReads {
    cache: SegmentCache,
    in_flight: Mutex<Reads>,
}

impl SharedReads {
    /// Sharing reads, keeping at most `cache_bytes` of rows (0: sharing
    /// only the reads in flight).
    pub fn new(cache_bytes: usize) -> Self {
        Self {
            cache: SegmentCache::new(cache_bytes),
            in_flight: Mutex::new(Reads::default()),
        }
    }

    /// Rows `needed` of segment `index`, in order: from the cache, from
    /// reads in flight, and the rest fetched by `client` in a read others
    /// may join, whose rows reserve their bytes from the client's read
    /// budget first (waiting as `admission` allows); `turn` passes once
    /// the rows are had. `slow` gains the nodes found slow by the reads it
    /// waited on.
    pub(super) async fn rows(
        self: &Arc<Self>,
        client: &BlobClient,
        metadata: &BlobMetadata,
        index: u32,
        needed: Range<u16>,
        slow: &mut SlowNodes,
        (admission, mut turn): (Admission, Turn),
    ) -> Result<Vec<Bytes>, BlobIoError> {
        let blob = metadata.blob_id();
        let layout = segment_layout(metadata, index)?;
        let row_bytes = MemoryBudget::rounded(layout.primary_sliver_len() as u64);
        let mut reserved = None;
        let Plan {
            mut have,
            waits,
            own,
        } = loop {
            match self.plan(
                client,
                metadata,
                index,
                needed.clone(),
                slow,
                row_bytes,
                &mut reserved,
            ) {
                Ok(plan) => break plan,
                Err(wanted) => {
                    // Nothing held while waiting: reads that each held a
                    // part and waited for the rest could wait on each other.
                    drop(reserved.take());
                    reserved = client.reserve_rows(wanted, admission).await?;
                }
            }
        };
        drop(reserved);
        turn.pass();
        client.count_rows(RowSource::Cache, have.len());
        for (number, outcome, taking) in waits {
            match outcome.await {
                Ok(read) => {
                    let (rows, found_slow) = &*read;
                    for row in &taking {
                        if let Some(bytes) = rows.get(row) {
                            have.insert(*row, bytes.clone());
                        }
                    }
                    if own != Some(number) {
                        client.count_rows(RowSource::Shared, taking.len());
                    }
                    slow.merge(found_slow.clone());
                }
                Err(e) => return Err(copy_of(&e, blob, index)),
            }
        }
        needed
            .map(|row| {
                have.remove(&row).ok_or_else(|| BlobIoError::Unreadable {
                    id: blob,
                    segment: index,
                    reason: format!("row {row} was not read"),
                })
            })
            .collect()
    }

    /// Where each of rows `needed` comes from: the cache, a read in flight,
    /// or a read started here for the rest, which takes its rows' bytes
    /// (`row_bytes` each) out of `reserved`. `Err` with the bytes to
    /// reserve when `reserved` holds too few (nothing is started then).
    #[allow(clippy::too_many_arguments)]
    fn plan(
        self: &Arc<Self>,
        client: &BlobClient,
        metadata: &BlobMetadata,
        index: u32,
        needed: Range<u16>,
        slow: &SlowNodes,
        row_bytes: u64,
        reserved: &mut Option<MemoryReservation>,
    ) -> Result<Plan, u64> {
        let blob = metadata.blob_id();
        let key = |row| RowKey {
            blob,
            segment: index,
            row,
        };
        let mut plan = Plan {
            have: ReadRows::new(),
            waits: Vec::new(),
            own: None,
        };
        let mut in_flight = self.in_flight.lock().expect("not poisoned");
        let mut missing = Vec::new();
        // Kept rows no reader holds any more: reserved again here.
        let mut unheld = Vec::new();
        let budget = client.read_budget_bytes();
        for row in needed {
            if let Some(cached) = self.cache.get(key(row)) {
                match (budget, cached.share.upgrade()) {
                    (None, _) => {
                        plan.have.insert(row, cached.bytes);
                    }
                    (Some(_), Some(share)) => {
                        plan.have.insert(row, held_by(cached.bytes, share));
                    }
                    (Some(_), None) => unheld.push((row, cached.bytes)),
                }
                continue;
            }
            let joined = in_flight
                .by_segment
                .get(&(blob, index))
                .and_then(|reads| reads.iter().find(|r| r.rows.contains(&row)));
            match joined {
                Some(read) => match plan
                    .waits
                    .iter_mut()
                    .find(|(number, ..)| *number == read.number)
                {
                    Some((.., rows)) => rows.push(row),
                    None => plan
                        .waits
                        .push((read.number, read.outcome.clone(), vec![row])),
                },
                None => missing.push(row),
            }
        }
        let rows = missing.len() + unheld.len();
        let exact = match budget {
            None => None,
            Some(budget) => {
                // Rows above the whole budget take the whole budget.
                let wanted = (row_bytes * rows as u64).min(budget);
                let held = reserved.as_ref().map_or(0, MemoryReservation::bytes);
                if held < wanted {
                    return Err(wanted);
                }
                reserved.as_mut().and_then(|r| r.split_off(wanted))
            }
        };
        let mut shares = RowShares::new(exact, row_bytes, rows);
        for (row, bytes) in unheld {
            let (held, share) = shares.carry(bytes.clone());
            self.cache.renew(key(row), &bytes, share);
            plan.have.insert(row, held);
        }
        if missing.is_empty() {
            return Ok(plan);
        }
        in_flight.started += 1;
        let number = in_flight.started;
        let outcome = self.start(
            client,
            metadata,
            index,
            missing.clone(),
            slow.clone(),
            number,
            shares,
        );
        in_flight
            .by_segment
            .entry((blob, index))
            .or_default()
            .push(InFlight {
                number,
                rows: missing.clone(),
                outcome: outcome.clone(),
            });
        plan.waits.push((number, outcome, missing));
        plan.own = Some(number);
        Ok(plan)
    }

    /// Starts a task reading `rows`, which keeps what it read and leaves
    /// the reads in flight when it ends.
    #[allow(clippy::too_many_arguments)]
    fn start(
        self: &Arc<Self>,
        client: &BlobClient,
        metadata: &BlobMetadata,
        index: u32,
        rows: Vec<u16>,
        mut slow: SlowNodes,
        number: u64,
        mut shares: RowShares,
    ) -> Shared<BoxFuture<'static, SharedOutcome>> {
        let (shared, client, metadata) = (self.clone(), client.clone(), metadata.clone());
        let blob = metadata.blob_id();
        let task = tokio::spawn(async move {
            // Leaves the reads in flight when the task ends, even by a panic.
            let _leave = Leave {
                shared: shared.clone(),
                key: (blob, index),
                number,
            };
            let key = |row| RowKey {
                blob,
                segment: index,
                row,
            };
            let outcome = client
                .fetch_rows(&metadata, index, &rows, &mut slow)
                .await
                .map(|read| {
                    // The rows asked for carry the fetch's reservation to
                    // their readers; the cache keeps every row without it
                    // (the others of a whole segment read too).
                    let mut asked = ReadRows::new();
                    for (row, bytes) in read {
                        if rows.contains(&row) {
                            let (held, share) = shares.carry(bytes.clone());
                            shared.cache.put(key(row), bytes, share);
                            asked.insert(row, held);
                        } else {
                            // Never in place of a row readers hold.
                            shared.cache.put_new(key(row), bytes);
                        }
                    }
                    asked
                });
            drop(shares);
            outcome.map(|rows| Arc::new((rows, slow))).map_err(Arc::new)
        });
        async move {
            task.await.unwrap_or_else(|e| {
                Err(Arc::new(BlobIoError::Unreadable {
                    id: blob,
                    segment: index,
                    reason: format!("the read failed: {e}"),
                }))
            })
        }
        .boxed()
        .shared()
    }
}

/// Where the rows of one read come from: kept rows, reads in flight
/// waited on (with the rows taken from each), and the number of the one it
/// started, if any.
struct Plan {
    have: ReadRows,
    waits: Vec<(u64, Shared<BoxFuture<'static, SharedOutcome>>, Vec<u16>)>,
    own: Option<u64>,
}

/// Removes a read from the reads in flight when dropped.
struct Leave {
    shared: Arc<SharedReads>,
    key: (BlobId, u32),
    number: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut in_flight = match self.shared.in_flight.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(reads) = in_flight.by_segment.get_mut(&self.key) {
            reads.retain(|r| r.number != self.number);
            if reads.is_empty() {
                in_flight.by_segment.remove(&self.key);
            }
        }
    }
}

/// The error of a shared read of segment `index` of `blob`, for one of
/// those that waited on it.
fn copy_of(e: &BlobIoError, blob: BlobId, index: u32) -> BlobIoError {
    match e {
        BlobIoError::Unreadable {
            id,
            segment,
            reason,
        } => BlobIoError::Unreadable {
            id: *id,
            segment: *segment,
            reason: reason.clone(),
        },
        BlobIoError::Inconsistent(id) => BlobIoError::Inconsistent(*id),
        BlobIoError::NotFound(id) => BlobIoError::NotFound(*id),
        other => BlobIoError::Unreadable {
            id: blob,
            segment: index,
            reason: other.to_string(),
        },
    }
}
