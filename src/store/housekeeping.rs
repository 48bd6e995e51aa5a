//! Background upkeep of a store: the scrub (every file re-read and
//! checked), abandoned uploads collected, quarantined files purged.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{files, SliverStore, StoreError};
use crate::blob_state::BlobState;
use crate::codec::BlobId;

/// How long things are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Housekeeping {
    /// A staged write that saw no new file for this long, and was never
    /// committed, is removed (its writer failed or went away).
    pub staged_ttl: Duration,
    /// Quarantined files are deleted after this long.
    pub quarantine_retention: Duration,
}

impl Default for Housekeeping {
    fn default() -> Self {
        Self {
            staged_ttl: Duration::from_secs(15 * 60),
            quarantine_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// A blob's data no commit here claims (a staged write, or data whose
/// markers are lost), idle past its wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleStaged {
    /// The blob.
    pub id: BlobId,
    /// Its markers here.
    pub state: BlobState,
    /// How long its directory gained no file.
    pub idle_for: Duration,
    /// How long it had to be idle to be listed: the staged TTL, or
    /// [`LOST_MARKER_GRACE`] when a marker is lost.
    pub wait: Duration,
    /// Whether one of its markers here is lost (it may have been the
    /// commit, or a tombstone).
    pub lost: bool,
    /// Shard -> segments whose pair is held here.
    pub held: std::collections::BTreeMap<u16, u32>,
}

/// What one scrub found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScrubReport {
    /// Files read.
    pub checked: u64,
    /// Files that failed their checksum (quarantined).
    pub corrupt: u64,
    /// Files whose read failed (quarantined).
    pub unreadable: u64,
}

/// Why a scrub found a file failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrubFinding {
    /// The file failed its checksum.
    Corrupt,
    /// Reading the file failed.
    Unreadable,
}

/// How long a blob whose marker is lost (corrupt, unreadable) is kept
/// without a change before a clean-up may take it: the loop writes a
/// commit or tombstone again within minutes, so a blob still in doubt
/// after this was never committed. As long as quarantined files are kept
/// by default.
pub const LOST_MARKER_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Whether `path` is one of a blob's markers (`commit`, `staged`,
/// `shared`).
fn is_marker(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name == "commit" || name == "staged" || name == super::markers::SHARED)
}

/// A blob's markers for a clean-up pass: `None` when they cannot be read
/// now (out of descriptors, permission refused): the blob is passed over
/// until the next pass, and the pass goes on with the others.
fn readable_now(
    markers: Result<super::markers::Markers, StoreError>,
) -> Result<Option<super::markers::Markers>, StoreError> {
    match markers {
        Ok(markers) => Ok(Some(markers)),
        Err(StoreError::NotNow { what, source }) => {
            tracing::warn!(
                "{what} cannot be read now ({source}): passed over until the next clean-up"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The outcome of one blob's clean-up, or `None` when it failed: logged
/// and passed over until the next round, so one blob whose directory
/// cannot be read or removed does not stop the clean-up of the others.
fn passed_over<T>(id: &BlobId, clean_up: impl FnOnce() -> Result<T, StoreError>) -> Option<T> {
    clean_up()
        .inspect_err(|e| {
            tracing::warn!("clean-up of {id} failed: {e}; passed over until the next round")
        })
        .ok()
}

/// When a file was quarantined: the seconds its name starts with.
fn quarantined_at(path: &Path) -> Option<SystemTime> {
    let name = path.file_name()?.to_str()?;
    let secs: u64 = name.split('-').next()?.parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Slack beyond the read time a scrub pass is allowed: listing, seeks,
/// and the disk's other work.
const SCRUB_SLACK: Duration = Duration::from_secs(3600);

/// The read rate assumed of a scrub without a limit (a slow disk's).
const UNLIMITED_SCRUB_RATE: u64 = 16 << 20;

/// When the next scrub pass should have ended at the latest, for a rest
/// starting at `rest_start`, resting `period`, over `stored` bytes read
/// at most `max_bytes_per_sec`: the rest, twice the read time and an
/// hour (pure). Past it, the scrub is stuck or cannot keep up.
pub fn scrub_deadline(
    rest_start: SystemTime,
    period: Duration,
    stored: u64,
    max_bytes_per_sec: Option<u64>,
) -> SystemTime {
    let rate = max_bytes_per_sec
        .filter(|r| *r > 0)
        .unwrap_or(UNLIMITED_SCRUB_RATE);
    let reading = Duration::from_secs_f64(stored as f64 / rate as f64);
    rest_start + period + reading * 2 + SCRUB_SLACK
}

/// How long a scrub that has read `bytes` in `elapsed` waits before it
/// reads on, to stay within `max_bytes_per_sec` (pure; `None`: no limit).
pub fn scrub_wait(bytes: u64, elapsed: Duration, max_bytes_per_sec: Option<u64>) -> Duration {
    match max_bytes_per_sec {
        Some(rate) if rate > 0 => {
            Duration::from_secs_f64(bytes as f64 / rate as f64).saturating_sub(elapsed)
        }
        _ => Duration::ZERO,
    }
}

impl SliverStore {
    /// Reads every stored file and checks its checksum, at most
    /// `max_bytes_per_sec` (so client reads and repairs keep the disk);
    /// files that fail, or whose read fails, are quarantined (and so
    /// reported missing), but for markers, which stay, lost. A failing file never stops the scrub;
    /// `on_finding` hears of each as it is quarantined (a pass over a large
    /// disk takes hours, and its report comes at the end).
    pub fn scrub(
        &self,
        max_bytes_per_sec: Option<u64>,
        mut on_finding: impl FnMut(ScrubFinding, &Path),
    ) -> Result<ScrubReport, StoreError> {
        let started = std::time::Instant::now();
        let mut read = 0u64;
        let mut report = ScrubReport::default();
        for id in self.blob_dirs()? {
            let dir = self.blob_dir(&id);
            let mut paths = files::files_in(&dir);
            if let Ok(shards) = fs::read_dir(&dir) {
                for shard in shards.flatten().filter(|e| e.path().is_dir()) {
                    // Everything in a shard directory should be a sliver file.
                    if let Ok(entries) = fs::read_dir(shard.path()) {
                        paths.extend(entries.flatten().map(|e| e.path()));
                    }
                }
            }
            for path in paths {
                // A marker that fails is reported, and kept (lost) until
                // written again, so no clean-up mistakes its blob for one
                // never committed.
                let quarantine = if is_marker(&path) {
                    super::Quarantine::No
                } else {
                    super::Quarantine::Unlocked
                };
                match self.read_file_then(&path, || path.display().to_string(), quarantine) {
                    Ok(Some(bytes)) => {
                        report.checked += 1;
                        read += bytes.len() as u64;
                        std::thread::sleep(scrub_wait(read, started.elapsed(), max_bytes_per_sec));
                    }
                    Ok(None) => {}
                    Err(StoreError::Corrupt { .. }) => {
                        report.checked += 1;
                        report.corrupt += 1;
                        on_finding(ScrubFinding::Corrupt, &path);
                    }
                    Err(StoreError::Unreadable { .. }) => {
                        report.checked += 1;
                        report.unreadable += 1;
                        on_finding(ScrubFinding::Unreadable, &path);
                    }
                    // The next pass reads it again.
                    Err(StoreError::NotNow { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
    }

    /// Removes the data a delete left behind: its tombstone recorded, the
    /// node stopped before the data went (nothing else would remove it: the
    /// node reports the tombstone, so none is carried to it again); returns
    /// the blobs whose data went. A blob with a lost marker waits
    /// [`LOST_MARKER_GRACE`] without a change.
    pub fn collect_delete_leftovers(&self, now: SystemTime) -> Result<Vec<BlobId>, StoreError> {
        let mut collected = Vec::new();
        for id in self.blob_dirs()? {
            // One stat per blob; markers are read only under a tombstone.
            if !self.tombstone_path(&id).exists() {
                continue;
            }
            let removed = passed_over(&id, || {
                let lock = self.lock(&id);
                let Some(markers) = readable_now(lock.markers())? else {
                    return Ok(false);
                };
                let collectable = markers.state.only_leftovers()
                    && (!markers.lost || self.idle_for(&id, LOST_MARKER_GRACE, now));
                Ok(collectable && lock.remove_data()?)
            });
            if removed == Some(true) {
                collected.push(id);
            }
        }
        Ok(collected)
    }

    /// Removes every staged write that was never committed here and has
    /// not gained a file for `ttl` (for [`LOST_MARKER_GRACE`] when one of
    /// its markers is lost: it may have been the commit), without asking
    /// anyone; returns the blobs removed. A node with a fleet map asks its
    /// peers first whether the write was committed elsewhere
    /// ([`SliverStore::idle_staged`], then [`SliverStore::collect_idle`]
    /// for those it may remove).
    pub fn collect_abandoned(
        &self,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Vec<BlobId>, StoreError> {
        let mut collected = Vec::new();
        for idle in self.idle_staged(ttl, now)? {
            if self.collect_idle(&idle.id, ttl, now)? {
                collected.push(idle.id);
            }
        }
        Ok(collected)
    }

    /// The blobs whose data no commit here claims and whose directory
    /// gained no file for `ttl` ([`LOST_MARKER_GRACE`] when a marker is
    /// lost), with their markers: writes abandoned, unless committed on
    /// nodes this one never heard from.
    pub fn idle_staged(
        &self,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Vec<IdleStaged>, StoreError> {
        let mut idle = Vec::new();
        for id in self.blob_dirs()? {
            if !self.idle_for(&id, ttl, now) {
                continue;
            }
            let listed = passed_over(&id, || {
                let lock = self.lock(&id);
                let Some((markers, wait)) = self.uncommitted_idle(&lock, ttl, now)? else {
                    return Ok(None);
                };
                Ok(Some(IdleStaged {
                    id,
                    state: markers.state,
                    idle_for: self.idle_time(&id, now).unwrap_or(wait),
                    wait,
                    lost: markers.lost,
                    held: lock.holdings()?.shards,
                }))
            });
            idle.extend(listed.flatten());
        }
        Ok(idle)
    }

    /// Removes the data of `id` if, under its lock, it is still a staged
    /// write no commit here claims, idle as [`SliverStore::idle_staged`]
    /// requires (a write staged, adopted or committed meanwhile keeps it);
    /// true when data was removed.
    pub fn collect_idle(
        &self,
        id: &BlobId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let lock = self.lock(id);
        match self.uncommitted_idle(&lock, ttl, now)? {
            Some(_) => lock.remove_data(),
            None => Ok(false),
        }
    }

    /// The markers of the locked blob, and the wait it had to be idle for,
    /// when no commit here claims its data and its directory gained no file
    /// for `ttl` ([`LOST_MARKER_GRACE`] when a marker is lost); `None`
    /// otherwise, or when its markers cannot be read now.
    fn uncommitted_idle(
        &self,
        lock: &super::BlobLock<'_>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Option<(super::markers::Markers, Duration)>, StoreError> {
        let Some(markers) = readable_now(lock.markers())? else {
            return Ok(None);
        };
        let wait = if markers.lost { LOST_MARKER_GRACE } else { ttl };
        let idle = markers.state.commit.is_none() && self.idle_for(&lock.id, wait, now);
        Ok(idle.then_some((markers, wait)))
    }

    /// Whether the blob's directory gained no file for `wait` before `now`.
    fn idle_for(&self, id: &BlobId, wait: Duration, now: SystemTime) -> bool {
        self.idle_time(id, now).is_some_and(|idle| idle >= wait)
    }

    /// How long the blob's directory gained no file before `now`.
    fn idle_time(&self, id: &BlobId, now: SystemTime) -> Option<Duration> {
        files::last_change(&self.blob_dir(id)).and_then(|t| now.duration_since(t).ok())
    }

    /// Deletes quarantined files older than `retention`; returns how many.
    pub fn purge_quarantine(
        &self,
        retention: Duration,
        now: SystemTime,
    ) -> Result<u64, StoreError> {
        let mut purged = 0;
        for path in files::files_in(&self.root.join("quarantine")) {
            let old = quarantined_at(&path)
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= retention);
            if !old {
                continue;
            }
            let len = fs::metadata(&path).map_or(0, |m| m.len());
            fs::remove_file(&path).map_err(files::io_error(&path))?;
            self.room.sub(len);
            purged += 1;
        }
        Ok(purged)
    }

    /// Bytes held in quarantine/.
    pub fn quarantined_bytes(&self) -> u64 {
        files::files_in(&self.root.join("quarantine"))
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}
