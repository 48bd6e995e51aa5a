//! Blob references and their collection.
//!
//! Each object record and upload part counts as one reference to each of
//! its blobs. A blob whose count is zero past a grace period is *claimed*
//! by a collector, deleted from the fleet and forgotten. Two things keep a
//! collection from deleting bytes a key comes to refer to:
//!
//! - An S3 write notes its blob before writing it and gets a
//!   [`WriteTicket`]: the row's epoch. A claim or a collection changes the
//!   epoch (claimed rows get none; forgotten rows come back with a new
//!   one), so a reference made with the ticket is refused (`Collecting`)
//!   when the bytes written may have been deleted meanwhile: the writer
//!   stores them again.
//! - A claim carries a token and a lease. A collector deletes a blob only
//!   while its claim holds, and forgets only the row its claim still
//!   marks; a claim is taken over only once its lease ran out (its
//!   collector died or hangs), so two collectors (gateways sharing a
//!   PostgreSQL index) never work on one blob at once.

use serde::{Deserialize, Serialize};

use super::super::kv::{Table, Txn};
use super::super::records::BlobRefs;
use super::{get, getrandom, put, DeleteClaim, Index, IndexError};

/// How long a claim holds before another collector may take it over.
pub const CLAIM_LEASE_MS: u64 = 10 * 60 * 1000;

/// The most blobs one round of the collector claims (the next round
/// claims more).
pub const CLAIMS_PER_ROUND: usize = 1000;

/// References read at a time while looking for blobs to claim.
const REFS_PAGE: usize = 1000;

/// The claim on a blob being collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimMark {
    /// Names the claim's holder.
    pub token: u64,
    /// When it was taken (milliseconds since the Unix epoch).
    pub at_ms: u64,
}

impl ClaimMark {
    fn new(now_ms: u64) -> Self {
        Self {
            token: random_u64(),
            at_ms: now_ms,
        }
    }

    /// Whether the claim still holds at `now_ms`.
    pub fn holds_at(&self, now_ms: u64) -> bool {
        now_ms < self.at_ms.saturating_add(CLAIM_LEASE_MS)
    }
}

/// A blob claimed for collection, and the token of the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The blob id.
    pub blob: String,
    /// The claim's token (see [`Index::collected`]).
    pub token: u64,
}

/// What S3's note before a write saw of the blob: a reference made with
/// it holds only if no claim or collection came between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteTicket {
    blob: String,
    epoch: u64,
}

impl WriteTicket {
    /// The blob the ticket is for.
    pub fn blob(&self) -> &str {
        &self.blob
    }

    /// Refused (`Collecting`) when the blob was claimed or collected since
    /// the ticket was given.
    pub(super) fn check(&self, txn: &mut dyn Txn) -> Result<(), IndexError> {
        let refs: Option<BlobRefs> = get(txn, Table::Refs, self.blob.as_bytes())?;
        match refs {
            Some(refs) if !refs.collecting && refs.epoch == self.epoch => Ok(()),
            _ => Err(IndexError::Collecting(self.blob.clone())),
        }
    }
}

/// A random value other than zero (zero is "no epoch").
fn random_u64() -> u64 {
    loop {
        let mut bytes = [0u8; 8];
        getrandom(&mut bytes);
        let value = u64::from_le_bytes(bytes);
        if value != 0 {
            return value;
        }
    }
}

/// Adds one reference to `blob`; refused while it is being collected.
pub(super) fn add_ref(txn: &mut dyn Txn, blob: &str) -> Result<(), IndexError> {
    let mut count: BlobRefs = get(txn, Table::Refs, blob.as_bytes())?.unwrap_or_default();
    if count.collecting {
        return Err(IndexError::Collecting(blob.to_string()));
    }
    count.count += 1;
    count.unreferenced_since_ms = None;
    put(txn, Table::Refs, blob.as_bytes(), &count)
}

/// Drops one reference to `blob`, noting when it reached zero.
pub(super) fn drop_ref(txn: &mut dyn Txn, blob: &str, now_ms: u64) -> Result<(), IndexError> {
    let mut count: BlobRefs = get(txn, Table::Refs, blob.as_bytes())?.unwrap_or_default();
    count.count = count.count.saturating_sub(1);
    if count.count == 0 && count.unreferenced_since_ms.is_none() {
        count.unreferenced_since_ms = Some(now_ms);
    }
    put(txn, Table::Refs, blob.as_bytes(), &count)
}

/// The claim on `refs` when it is the one named `token`.
fn claim_of(refs: &BlobRefs, token: u64) -> Option<ClaimMark> {
    refs.claim.filter(|c| refs.collecting && c.token == token)
}

/// Marks `refs` claimed by a new claim at `now_ms`; its epoch goes, so
/// tickets given before are refused.
fn claim(refs: &mut BlobRefs, now_ms: u64) -> ClaimMark {
    let mark = ClaimMark::new(now_ms);
    refs.collecting = true;
    refs.claim = Some(mark);
    refs.epoch = 0;
    mark
}

impl Index {
    /// Claims for collection (at most `CLAIMS_PER_ROUND`) the blobs
    /// unreferenced since before `unreferenced_before_ms`, and those whose
    /// claim's lease ran out by `now_ms` (its delete failed, or its
    /// collector died): from now on a new reference to them is refused
    /// until `collected` says they are gone or `release` gives them back.
    /// The references are read a page at a time in read transactions
    /// (memory stays bounded, and writers are never held for the scan);
    /// each page's candidates are claimed in a short write transaction
    /// that checks them again.
    pub fn claim_unreferenced(
        &self,
        unreferenced_before_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<Claim>, IndexError> {
        let due = |refs: &BlobRefs| {
            // Bytes stored outside S3 are never claimed by it.
            refs.count == 0
                && if refs.collecting {
                    refs.claim.is_none_or(|c| !c.holds_at(now_ms))
                } else {
                    !refs.outside
                        && refs
                            .unreferenced_since_ms
                            .is_some_and(|t| t < unreferenced_before_ms)
                }
        };
        let mut claimed = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        while claimed.len() < CLAIMS_PER_ROUND {
            let page = self.read(|txn| txn.scan(Table::Refs, b"", after.as_deref(), REFS_PAGE))?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(last.clone());
            let exhausted = page.len() < REFS_PAGE;
            let mut candidates = Vec::new();
            for (k, v) in page {
                if due(&super::decode(&v)?) {
                    candidates.push(k);
                }
            }
            candidates.truncate(CLAIMS_PER_ROUND - claimed.len());
            if !candidates.is_empty() {
                claimed.extend(self.write(|txn| {
                    let mut taken = Vec::new();
                    for k in &candidates {
                        let Some(mut refs) = get::<BlobRefs>(txn, Table::Refs, k)? else {
                            continue;
                        };
                        if due(&refs) {
                            let mark = claim(&mut refs, now_ms);
                            put(txn, Table::Refs, k, &refs)?;
                            taken.push(Claim {
                                blob: String::from_utf8(k.clone()).map_err(IndexError::store)?,
                                token: mark.token,
                            });
                        }
                    }
                    Ok(taken)
                })?);
            }
            if exhausted {
                break;
            }
        }
        Ok(claimed)
    }

    /// Whether claim `token` on `blob` still holds at `now_ms`: its holder
    /// may delete the blob.
    pub fn holds_claim(&self, blob: &str, token: u64, now_ms: u64) -> Result<bool, IndexError> {
        self.read(|txn| {
            let refs: Option<BlobRefs> = get(txn, Table::Refs, blob.as_bytes())?;
            Ok(refs
                .as_ref()
                .and_then(|r| claim_of(r, token))
                .is_some_and(|c| c.holds_at(now_ms)))
        })
    }

    /// A blob was stored but nothing came to refer to it (the index write
    /// failed): unless something does, the collector removes it after the
    /// grace period.
    pub fn note_unreferenced(&self, blob: &str, now_ms: u64) -> Result<(), IndexError> {
        self.note_write(blob, now_ms, false)
            .map(drop)
            .or_else(|e| match e {
                // Being collected: the collection removes it.
                IndexError::Collecting(_) => Ok(()),
                e => Err(e),
            })
    }

    /// S3 is about to store `blob`: noted as `note_unreferenced` when
    /// nothing refers to it (its grace starts anew), and as stored outside
    /// S3 (never collected by it) when S3 does not know it yet and
    /// `stored_outside`: the fleet already held the bytes, stored through
    /// the native API. Refused while the blob is being collected; the
    /// ticket returned is what the reference to the bytes written must
    /// show.
    pub fn note_write(
        &self,
        blob: &str,
        now_ms: u64,
        stored_outside: bool,
    ) -> Result<WriteTicket, IndexError> {
        self.write(|txn| {
            let known: Option<BlobRefs> = get(txn, Table::Refs, blob.as_bytes())?;
            let mut refs = known.unwrap_or(BlobRefs {
                outside: stored_outside,
                ..BlobRefs::default()
            });
            if refs.collecting {
                return Err(IndexError::Collecting(blob.to_string()));
            }
            if refs.count == 0 {
                refs.unreferenced_since_ms = Some(now_ms);
            }
            if refs.epoch == 0 {
                refs.epoch = random_u64();
            }
            if known != Some(refs) {
                put(txn, Table::Refs, blob.as_bytes(), &refs)?;
            }
            Ok(WriteTicket {
                blob: blob.to_string(),
                epoch: refs.epoch,
            })
        })
    }

    /// Whether S3 knows `blob` at all (refers to it, noted or claimed it).
    pub fn knows(&self, blob: &str) -> Result<bool, IndexError> {
        self.read(|txn| Ok(txn.get(Table::Refs, blob.as_bytes())?.is_some()))
    }

    /// `blob` is being stored outside S3 (the native API, before its
    /// commit): S3 never collects it from now on, whether it knew it or
    /// comes to refer to it later (a concurrent S3 write of the same bytes
    /// finds the mark). Refused while it is being collected (the bytes are
    /// being deleted: store them once that ends).
    pub fn note_stored_outside(&self, blob: &str) -> Result<(), IndexError> {
        let known: Option<BlobRefs> = self.read(|txn| get(txn, Table::Refs, blob.as_bytes()))?;
        if known.is_some_and(|r| r.outside && !r.collecting) {
            return Ok(());
        }
        self.write(|txn| {
            let mut refs: BlobRefs = get(txn, Table::Refs, blob.as_bytes())?.unwrap_or_default();
            if refs.collecting {
                return Err(IndexError::Collecting(blob.to_string()));
            }
            if !refs.outside {
                refs.outside = true;
                put(txn, Table::Refs, blob.as_bytes(), &refs)?;
            }
            Ok(())
        })
    }

    /// Claims `blob` for a delete asked for outside S3 (the native API, a
    /// Blob resource), as the collector claims it: from now on a new
    /// reference is refused until `collected` says it is gone (or, should
    /// the delete fail, the collector deletes it once the claim's lease
    /// ran out). Refused while S3 keys or upload parts refer to it:
    /// deleting it would break them; bytes also stored outside S3 are
    /// then given up to S3, which collects them once its last key goes.
    pub fn claim_for_delete(&self, blob: &str, now_ms: u64) -> Result<DeleteClaim, IndexError> {
        self.write(|txn| {
            let mut refs: BlobRefs = get(txn, Table::Refs, blob.as_bytes())?.unwrap_or_default();
            if refs.count > 0 {
                // The outside side gives the bytes up: they are S3's now,
                // collected once its last key goes.
                if refs.outside {
                    refs.outside = false;
                    put(txn, Table::Refs, blob.as_bytes(), &refs)?;
                }
                return Ok(DeleteClaim::Referenced(refs.count));
            }
            let mark = claim(&mut refs, now_ms);
            put(txn, Table::Refs, blob.as_bytes(), &refs)?;
            Ok(DeleteClaim::Claimed { token: mark.token })
        })
    }

    /// The holder of claim `token` deleted `blob`: it is forgotten, and
    /// may be referred to again (after its bytes are stored again). False
    /// (and nothing changed) when the claim no longer holds the row
    /// (another took it over).
    pub fn collected(&self, blob: &str, token: u64) -> Result<bool, IndexError> {
        self.write(|txn| {
            let refs: Option<BlobRefs> = get(txn, Table::Refs, blob.as_bytes())?;
            if refs.is_some_and(|r| claim_of(&r, token).is_some()) {
                txn.delete(Table::Refs, blob.as_bytes())?;
                return Ok(true);
            }
            Ok(false)
        })
    }

    /// The holder of claim `token` could not delete `blob`: it is given
    /// back, unreferenced as it was, and claimed again by the next round
    /// (its epoch stays gone: a ticket given before the claim is still
    /// refused, as the failed delete may have removed some of it).
    pub fn release(&self, blob: &str, token: u64) -> Result<(), IndexError> {
        self.write(|txn| {
            let refs: Option<BlobRefs> = get(txn, Table::Refs, blob.as_bytes())?;
            if let Some(mut refs) = refs.filter(|r| claim_of(r, token).is_some()) {
                refs.collecting = false;
                refs.claim = None;
                put(txn, Table::Refs, blob.as_bytes(), &refs)?;
            }
            Ok(())
        })
    }

    /// Which of `blobs` are S3's own: referred to by keys or upload parts,
    /// noted before an S3 write, or claimed for collection, and not stored
    /// outside S3 too. The rest were stored outside S3 (or S3 forgot them
    /// once collected).
    pub fn known_blobs(&self, blobs: &[String]) -> Result<Vec<String>, IndexError> {
        self.read(|txn| {
            let mut known = Vec::new();
            for blob in blobs {
                let refs: Option<BlobRefs> = get(txn, Table::Refs, blob.as_bytes())?;
                if refs.is_some_and(|r| !r.outside) {
                    known.push(blob.clone());
                }
            }
            Ok(known)
        })
    }

    /// The references of `blob` (for tests and diagnostics).
    pub fn refs(&self, blob: &str) -> Result<BlobRefs, IndexError> {
        self.read(|txn| Ok(get(txn, Table::Refs, blob.as_bytes())?.unwrap_or_default()))
    }
}
