//! Uploads a client can resume: the gateway keeps an upload it was told
//! to open (its encoder, the segment arriving, the segments shipped under
//! its session on the nodes) between the client's requests, so a client
//! whose connection broke asks how many bytes arrived and sends only the
//! rest. Nothing of it is visible until the client finishes it, exactly as
//! for a PUT.
//!
//! An upload nobody touched for the idle time is given up as a PUT whose
//! client went away is: its pairs stay on the nodes for the same time
//! again, for a fresh upload of the same bytes to reuse. A finished or
//! failed upload's answer is remembered as long (apart from the open
//! ones, which alone count against the bound), so a client that missed
//! it gets it again instead of a 404. The gateway keeps uploads in memory:
//! a restart forgets them (the client starts over; the pairs shipped
//! before are reused).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use crate::api_error::ApiError;
use crate::client::BlobUpload;
use crate::wire::{StoredBlob, UploadId};

/// Uploads that may be open at once per upload slot: an open upload holds
/// no slot between its requests, only the segment it is receiving (under
/// the upload memory budget) until it goes on or expires.
pub const OPEN_UPLOADS_PER_SLOT: usize = 16;

/// The shortest time an untouched open upload is kept, whatever the
/// retry window of cut uploads (0 removes their pairs at once): a
/// client's next request comes well within.
pub const MIN_IDLE: Duration = Duration::from_secs(10);

/// Answers of ended uploads remembered at most (the oldest go first).
pub const MOST_ENDED_REMEMBERED: usize = 4096;

/// How an upload ended: the answer given again to a client that asks.
#[derive(Debug, Clone)]
pub(super) enum Ended {
    /// Made a blob.
    Finished(StatusCode, StoredBlob),
    /// Failed for good: why (the client starts a new upload).
    Failed(ApiError),
}

/// Where an upload stands.
pub(super) enum Stage {
    /// Taking bytes.
    Open(Box<BlobUpload>),
    /// Ended (a request that waited on its lock finds it so).
    Ended(Ended),
}

/// One upload a client may resume.
pub(super) struct ResumableUpload {
    /// Where it stands.
    pub stage: Stage,
    /// The length the client declared when it opened the upload.
    pub declared: Option<u64>,
    /// Whether the last append ended before its body did (the next one
    /// resumes the upload).
    pub cut: bool,
    /// When a request last let go of it.
    pub last_used: Instant,
}

impl ResumableUpload {
    /// Bytes received so far, while it is open (an ended upload's answer
    /// says the rest).
    pub fn offset(&self) -> u64 {
        match &self.stage {
            Stage::Open(open) => open.len(),
            Stage::Ended(_) => 0,
        }
    }
}

/// A shared handle on one upload; a request holds its lock throughout.
pub(super) type UploadHandle = Arc<tokio::sync::Mutex<ResumableUpload>>;

/// Why an append cannot go on at the offset it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendRefusal {
    /// The upload has another number of bytes (409, with the right one).
    WrongOffset {
        /// The bytes the upload has.
        current: u64,
    },
    /// The append would take the upload past its declared length (400).
    PastDeclaredLength {
        /// The length declared.
        declared: u64,
    },
    /// The append would take the upload past the gateway's largest blob (413).
    TooLarge {
        /// The largest blob the gateway takes.
        limit: u64,
    },
}

/// Whether an append of `len` bytes (when the request says) at `asked`
/// may go on, for an upload at `current` bytes that declared `declared`
/// and a gateway that takes blobs of at most `limit` bytes.
pub fn check_append(
    current: u64,
    asked: u64,
    len: Option<u64>,
    declared: Option<u64>,
    limit: u64,
) -> Result<(), AppendRefusal> {
    if asked != current {
        return Err(AppendRefusal::WrongOffset { current });
    }
    let end = current.saturating_add(len.unwrap_or(0));
    if let Some(declared) = declared {
        if end > declared {
            return Err(AppendRefusal::PastDeclaredLength { declared });
        }
    }
    if end > limit {
        return Err(AppendRefusal::TooLarge { limit });
    }
    Ok(())
}

/// Whether an upload last let go of at `last_used` has been idle for
/// `idle` at `now`.
pub fn is_idle(last_used: Instant, now: Instant, idle: Duration) -> bool {
    now.saturating_duration_since(last_used) >= idle
}

/// The uploads open on this gateway, and the answers of those that ended.
pub(super) struct ResumableUploads {
    uploads: Mutex<HashMap<UploadId, UploadHandle>>,
    ended: Mutex<EndedAnswers>,
    capacity: usize,
    idle: Duration,
}

/// The answers of ended uploads, oldest first.
#[derive(Default)]
struct EndedAnswers {
    by_id: HashMap<UploadId, (Instant, Ended)>,
    order: std::collections::VecDeque<UploadId>,
}

/// What an id names.
pub(super) enum Found {
    /// An open upload (or one ending now: its lock tells).
    Open(UploadHandle),
    /// An upload that ended, and how.
    Ended(Ended),
}

/// The map's lock, whatever a panic under it left (its maps stay whole).
fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ResumableUploads {
    /// At most `capacity` open uploads, each given up after `idle`
    /// untouched (at least [`MIN_IDLE`]).
    pub fn new(capacity: usize, idle: Duration) -> Self {
        Self {
            uploads: Mutex::new(HashMap::new()),
            ended: Mutex::new(EndedAnswers::default()),
            capacity: capacity.max(1),
            idle: idle.max(MIN_IDLE),
        }
    }

    /// Keeps `upload` under a new id; `None` when as many are open as may be.
    pub fn open(&self, upload: BlobUpload, declared: Option<u64>) -> Option<UploadId> {
        let mut uploads = locked(&self.uploads);
        if uploads.len() >= self.capacity {
            return None;
        }
        let id = UploadId::random();
        let handle = Arc::new(tokio::sync::Mutex::new(ResumableUpload {
            stage: Stage::Open(Box::new(upload)),
            declared,
            cut: false,
            last_used: Instant::now(),
        }));
        uploads.insert(id, handle);
        Some(id)
    }

    /// What `id` names, while it is kept.
    pub fn find(&self, id: &UploadId) -> Option<Found> {
        if let Some(handle) = locked(&self.uploads).get(id) {
            return Some(Found::Open(handle.clone()));
        }
        locked(&self.ended)
            .by_id
            .get(id)
            .map(|(_, ended)| Found::Ended(ended.clone()))
    }

    /// Records how the upload under `id` ended (its handle's stage says so
    /// already) and stops counting it open; with `None` no answer is kept.
    pub fn end(&self, id: &UploadId, ended: Option<Ended>) {
        // The answer first: a request between the two finds one or the other.
        if let Some(ended) = ended {
            let mut answers = locked(&self.ended);
            if answers.by_id.insert(*id, (Instant::now(), ended)).is_none() {
                answers.order.push_back(*id);
            }
            while answers.order.len() > MOST_ENDED_REMEMBERED {
                if let Some(oldest) = answers.order.pop_front() {
                    answers.by_id.remove(&oldest);
                }
            }
        }
        locked(&self.uploads).remove(id);
    }

    /// Forgets `id` altogether: open or ended, it is unknown from now on.
    pub fn forget(&self, id: &UploadId) {
        locked(&self.uploads).remove(id);
        let mut answers = locked(&self.ended);
        if answers.by_id.remove(id).is_some() {
            answers.order.retain(|kept| kept != id);
        }
    }

    /// Open uploads now.
    pub fn len(&self) -> usize {
        locked(&self.uploads).len()
    }

    /// How many uploads may be open at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How long an untouched upload is kept.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Gives up every open upload idle at `now` that no request holds or
    /// has found (one waiting for a slot or the lock counts as using it),
    /// its pairs kept on the nodes for `kept`, and forgets the answers of
    /// uploads that ended longer ago than the idle time. Returns how many
    /// open uploads were given up.
    pub fn expire(&self, now: Instant, kept: Duration) -> usize {
        let mut given_up = 0;
        locked(&self.uploads).retain(|_, handle| {
            // The map's is the only handle unless a request found it.
            if Arc::strong_count(handle) > 1 {
                return true;
            }
            let Ok(mut upload) = handle.try_lock() else {
                return true;
            };
            if !is_idle(upload.last_used, now, self.idle) {
                return true;
            }
            let expired =
                Ended::Failed(ApiError::not_found("the upload sat idle and was given up"));
            if let Stage::Open(open) = std::mem::replace(&mut upload.stage, Stage::Ended(expired)) {
                (*open).give_up_after(kept);
                given_up += 1;
            }
            false
        });
        let mut answers = locked(&self.ended);
        while let Some(oldest) = answers.order.front().copied() {
            let ended_at = answers.by_id.get(&oldest).map(|(at, _)| *at);
            if ended_at.is_some_and(|at| !is_idle(at, now, self.idle)) {
                break;
            }
            answers.order.pop_front();
            answers.by_id.remove(&oldest);
        }
        given_up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_append_goes_on_only_at_the_offset_the_upload_has_reached() {
        assert_eq!(check_append(10, 10, Some(5), None, 100), Ok(()));
        assert_eq!(
            check_append(10, 0, Some(5), None, 100),
            Err(AppendRefusal::WrongOffset { current: 10 })
        );
        assert_eq!(
            check_append(10, 12, None, None, 100),
            Err(AppendRefusal::WrongOffset { current: 10 })
        );
    }

    #[test]
    fn an_append_past_the_declared_length_or_the_largest_blob_is_refused_before_it_is_read() {
        assert_eq!(check_append(10, 10, Some(5), Some(15), 100), Ok(()));
        assert_eq!(
            check_append(10, 10, Some(6), Some(15), 100),
            Err(AppendRefusal::PastDeclaredLength { declared: 15 })
        );
        assert_eq!(
            check_append(90, 90, Some(11), None, 100),
            Err(AppendRefusal::TooLarge { limit: 100 })
        );
        // A length the request does not say is checked as the bytes come.
        assert_eq!(check_append(90, 90, None, None, 100), Ok(()));
    }

    #[test]
    fn an_upload_a_request_has_found_is_not_given_up_while_the_request_waits() {
        let uploads = ResumableUploads::new(4, MIN_IDLE);
        let id = uploads
            .open(crate::client::upload_tests::offline_upload(), None)
            .unwrap();
        let later = Instant::now() + 10 * MIN_IDLE;
        // A request found it and waits (for a slot, or the lock).
        let found = uploads.find(&id);
        assert_eq!(uploads.expire(later, Duration::ZERO), 0);
        assert!(matches!(uploads.find(&id), Some(Found::Open(_))));
        drop(found);
        assert_eq!(uploads.expire(later, Duration::ZERO), 1);
        assert!(uploads.find(&id).is_none());
    }

    #[test]
    fn a_forgotten_upload_is_unknown_whether_open_or_ended() {
        let uploads = ResumableUploads::new(4, MIN_IDLE);
        let id = uploads
            .open(crate::client::upload_tests::offline_upload(), None)
            .unwrap();
        uploads.end(&id, Some(Ended::Failed(ApiError::internal("broke"))));
        assert!(matches!(uploads.find(&id), Some(Found::Ended(_))));
        uploads.forget(&id);
        assert!(uploads.find(&id).is_none());
        let open = uploads
            .open(crate::client::upload_tests::offline_upload(), None)
            .unwrap();
        uploads.forget(&open);
        assert!(uploads.find(&open).is_none());
        assert_eq!(uploads.len(), 0);
    }

    #[test]
    fn an_upload_is_idle_once_untouched_for_the_idle_time() {
        let start = Instant::now();
        let idle = Duration::from_secs(120);
        assert!(!is_idle(start, start + Duration::from_secs(119), idle));
        assert!(is_idle(start, start + idle, idle));
        // A clock read before the upload's last use is not idle.
        assert!(!is_idle(start + Duration::from_secs(5), start, idle));
    }
}
