//! Deadlines and size caps for calls to nodes: a node that is stopped,
//! partitioned or lying must neither hold a caller nor fill its memory.
//!
//! - A small call (markers, an inventory page, a commit, a delete, an
//!   error answer) has one deadline for the whole exchange: connecting,
//!   the answer's headers and its whole body. A node that trickles its
//!   answer a byte at a time is cut there.
//! - A download of a known most size (metadata, a sliver, a symbol) has
//!   the call deadline plus the time that size takes at
//!   `MIN_TRANSFER_RATE`, for the whole exchange too, besides the stall
//!   time per chunk.
//! - A node's inventory, read page by page by the control loop, may take
//!   `Deadlines::inventory` plus the blobs it listed at
//!   `MIN_INVENTORY_RATE`, counting only the time spent waiting on its
//!   own pages (`Deadlines::inventory_budget`); each page has the call
//!   deadline.
//! - A large transfer is watched for progress instead: it fails when no
//!   bytes moved for the stall time, however long it runs while bytes do
//!   move; after the last byte of an upload the answer must come within
//!   the call deadline.
//! - Every response body is read up to the size the caller expects, and
//!   refused (without reading on) past it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;

/// The slowest average rate a download may run at: a download of up to
/// `len` bytes must end within the call deadline plus `len` at this rate.
pub const MIN_TRANSFER_RATE: u64 = 1 << 20;

/// The slowest average rate, in blobs per second, at which a node's
/// inventory may list its blobs beyond `Deadlines::inventory`. A node of
/// `redstuff dev` lists 10,000 to 25,000 a second on this project's 2-core
/// machine while the rest of the fleet runs; this leaves room for a busy
/// one. A node listing made-up blobs at this rate until the most a node
/// may list (`NodeCalls::max_inventory_blobs`) holds the loop as long as an
/// honest node that large would.
pub const MIN_INVENTORY_RATE: u64 = 2_000;

/// How long node calls may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// A whole small call, and the answer after an upload's last byte.
    pub call: Duration,
    /// A large transfer without any progress.
    pub stall: Duration,
    /// A repair without a segment done.
    pub repair_stall: Duration,
    /// Reading one node's inventory, every page, before the allowance for
    /// the blobs it lists (see `inventory_budget`).
    pub inventory: Duration,
}

impl Deadlines {
    /// Deadlines from one number of seconds: calls and stalls that long,
    /// repairs six times as long per segment (at least 30 s), a whole
    /// inventory six times as long.
    pub fn from_secs(secs: f64) -> Self {
        let call = Duration::from_secs_f64(secs.max(0.1));
        Self {
            call,
            stall: call,
            repair_stall: (call * 6).max(Duration::from_secs(30)),
            inventory: call * 6,
        }
    }

    /// The time a node's inventory pages may take in all once it listed
    /// `listed` blobs: `inventory` plus those blobs at `MIN_INVENTORY_RATE`.
    pub fn inventory_budget(&self, listed: usize) -> Duration {
        self.inventory + Duration::from_secs_f64(listed as f64 / MIN_INVENTORY_RATE as f64)
    }

    /// The whole-exchange deadline of a download of at most `len` bytes:
    /// the call deadline plus `len` at `MIN_TRANSFER_RATE`.
    pub fn transfer(&self, len: u64) -> Duration {
        self.call + Duration::from_secs_f64(len as f64 / MIN_TRANSFER_RATE as f64)
    }
}

impl Default for Deadlines {
    fn default() -> Self {
        Self::from_secs(5.0)
    }
}

/// Why reading an answer failed.
#[derive(Debug)]
pub enum ReadFailure {
    /// No progress within the deadline.
    TimedOut,
    /// The body is larger than the caller expects.
    TooLarge {
        /// The most bytes expected.
        limit: u64,
    },
    /// The transfer broke.
    Transport(reqwest::Error),
}

/// Reads a response body of at most `limit` bytes, each chunk within
/// `stall` and the whole body before `until`; refuses a declared or actual
/// length past `limit` without reading on.
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: u64,
    stall: Duration,
    until: tokio::time::Instant,
) -> Result<Vec<u8>, ReadFailure> {
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(ReadFailure::TooLarge { limit });
    }
    // What a peer declares is reserved only up to a bound: a liar's
    // length (within a large limit) must not abort the process.
    const RESERVED_AT_MOST: u64 = 64 << 20;
    let declared = response.content_length().unwrap_or(0).min(RESERVED_AT_MOST);
    let mut body = Vec::with_capacity(declared as usize);
    loop {
        let chunk_until = until.min(tokio::time::Instant::now() + stall);
        match tokio::time::timeout_at(chunk_until, response.chunk()).await {
            Err(_) => return Err(ReadFailure::TimedOut),
            Ok(Err(e)) => return Err(ReadFailure::Transport(e)),
            Ok(Ok(None)) => return Ok(body),
            Ok(Ok(Some(chunk))) => {
                if body.len() as u64 + chunk.len() as u64 > limit {
                    return Err(ReadFailure::TooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}

/// Progress of an upload body, shared between the body and its watchdog.
#[derive(Debug)]
struct Progress {
    start: Instant,
    /// Milliseconds since `start` of the last chunk taken by the transport.
    last: AtomicU64,
    done: AtomicBool,
}

impl Progress {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// An upload body handed out in chunks, each marking progress; its parts
/// are sent as they are, never copied into one buffer.
struct WatchedBody {
    data: std::collections::VecDeque<Bytes>,
    progress: Arc<Progress>,
}

const UPLOAD_CHUNK: usize = 256 << 10;

impl Stream for WatchedBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.progress.touch();
        let Some(part) = self.data.front_mut() else {
            self.progress.done.store(true, Ordering::Relaxed);
            return Poll::Ready(None);
        };
        let take = part.len().min(UPLOAD_CHUNK);
        let chunk = part.split_to(take);
        if part.is_empty() {
            self.data.pop_front();
        }
        Poll::Ready(Some(Ok(chunk)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let chunks = self
            .data
            .iter()
            .map(|part| part.len().div_ceil(UPLOAD_CHUNK))
            .sum();
        (chunks, Some(chunks))
    }
}

/// A body for `data` and a watchdog future that completes (with `true`)
/// once the upload stalled: no chunk taken for `stall`, or no answer
/// `call` after the last chunk. Race the request against the watchdog.
pub fn watched_upload(
    data: Vec<Bytes>,
    deadlines: Deadlines,
) -> (reqwest::Body, impl std::future::Future<Output = ()>) {
    let progress = Arc::new(Progress {
        start: Instant::now(),
        last: AtomicU64::new(0),
        done: AtomicBool::new(false),
    });
    let body = WatchedBody {
        data: data.into_iter().filter(|part| !part.is_empty()).collect(),
        progress: progress.clone(),
    };
    let watchdog = async move {
        let tick = (deadlines.stall.min(deadlines.call) / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(tick).await;
            let limit = if progress.done.load(Ordering::Relaxed) {
                deadlines.call
            } else {
                deadlines.stall
            };
            if progress.idle() >= limit {
                return;
            }
        }
    };
    (reqwest::Body::wrap_stream(body), watchdog)
}
