//! A gateway that stops (a stopped process, a load balancer that takes
//! connections and answers nothing) must not hold its client for ever
//! (the CLI, the operator's ingests): an answer that does not come, a
//! body the gateway takes no bytes of, and a download that brings
//! nothing, each for the stall time, count as a lost connection (another
//! attempt may do better).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// Why a request was given up: the gateway made no progress for the stall
/// time.
#[derive(Debug, thiserror::Error)]
pub enum Stalled {
    /// No answer came.
    #[error("the gateway gave no answer for {} s", .0.as_secs())]
    NoAnswer(Duration),
    /// The gateway took no bytes of the body.
    #[error("the gateway took no bytes of the upload for {} s", .0.as_secs())]
    BodyNotTaken(Duration),
    /// A download brought nothing.
    #[error("the download brought nothing for {} s", .0.as_secs())]
    NothingArrived(Duration),
}

/// `request` (without a body worth watching) sent: its answer's head, or
/// `Stalled` when none came within `stall`.
pub async fn send_within(
    request: reqwest::RequestBuilder,
    stall: Duration,
) -> Result<Result<reqwest::Response, reqwest::Error>, Stalled> {
    tokio::time::timeout(stall, request.send())
        .await
        .map_err(|_| Stalled::NoAnswer(stall))
}

/// The next chunk of a download, or `Stalled` when none came within
/// `stall`.
pub async fn next_within<S, E>(
    stream: &mut S,
    stall: Duration,
) -> Result<Option<Result<Bytes, E>>, Stalled>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    tokio::time::timeout(stall, stream.next())
        .await
        .map_err(|_| Stalled::NothingArrived(stall))
}

/// When an upload's body last gave the gateway bytes, whether it ended,
/// and why reading it failed, if it did.
#[derive(Clone)]
pub struct BodyProgress {
    state: Arc<Mutex<BodyState>>,
}

struct BodyState {
    since: Instant,
    ended: bool,
    sent: u64,
    read_error: Option<String>,
}

impl Default for BodyProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl BodyProgress {
    /// A body not sent yet: the stall time counts from now.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(BodyState {
                since: Instant::now(),
                ended: false,
                sent: 0,
                read_error: None,
            })),
        }
    }

    /// `body` (of `len` bytes, when known), noting each chunk the gateway
    /// takes, its end (its last byte taken, when its length is known: the
    /// HTTP client need not ask a sized body for more), and a failure to
    /// read it.
    pub fn watch<S, E>(&self, body: S, len: Option<u64>) -> impl Stream<Item = Result<Bytes, E>>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let progress = self.clone();
        let ended = self.clone();
        body.inspect(move |chunk| progress.note(chunk, len))
            .chain(futures_util::stream::poll_fn(move |_| {
                let mut state = ended.lock();
                state.since = Instant::now();
                state.ended = true;
                std::task::Poll::Ready(None)
            }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BodyState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note<E: std::fmt::Display>(&self, chunk: &Result<Bytes, E>, len: Option<u64>) {
        let mut state = self.lock();
        state.since = Instant::now();
        match chunk {
            Ok(bytes) => state.sent += bytes.len() as u64,
            Err(e) => state.read_error = Some(e.to_string()),
        }
        if len.is_some_and(|len| state.sent >= len) {
            state.ended = true;
        }
    }

    /// Why reading the body failed, if it did (the request then fails as
    /// if the connection broke: this says it was the source).
    pub fn read_error(&self) -> Option<String> {
        self.lock().read_error.clone()
    }

    /// What stalled, if the gateway took nothing of the body for `stall`,
    /// or gave no answer for `stall` after the body ended.
    fn stalled(&self, stall: Duration) -> Option<Stalled> {
        let state = self.lock();
        (state.since.elapsed() >= stall).then_some(if state.ended {
            Stalled::NoAnswer(stall)
        } else {
            Stalled::BodyNotTaken(stall)
        })
    }
}

/// `request`, whose body `progress` watches, sent: its answer's head, or
/// `Stalled` once the gateway took no bytes of the body, or gave no
/// answer after it, for `stall`.
pub async fn send_watched(
    request: reqwest::RequestBuilder,
    progress: &BodyProgress,
    stall: Duration,
) -> Result<Result<reqwest::Response, reqwest::Error>, Stalled> {
    let send = request.send();
    tokio::pin!(send);
    let tick = (stall / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::select! {
            answer = &mut send => return Ok(answer),
            () = tokio::time::sleep(tick) => {
                if let Some(stalled) = progress.stalled(stall) {
                    return Err(stalled);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_body_counts_as_stalled_only_after_the_stall_time_without_progress() {
        let progress = BodyProgress::new();
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![Ok(Bytes::from_static(b"ab"))];
        let mut body = Box::pin(progress.watch(futures_util::stream::iter(chunks), None));
        let stall = Duration::from_secs(90);
        assert!(progress.stalled(stall).is_none());
        assert!(body.next().await.is_some());
        assert!(progress.stalled(stall).is_none());
        tokio::time::sleep(stall).await;
        assert!(matches!(
            progress.stalled(stall),
            Some(Stalled::BodyNotTaken(_))
        ));
        // Its end is progress too; after it, the wait is for the answer.
        assert!(body.next().await.is_none());
        assert!(progress.stalled(stall).is_none());
        tokio::time::sleep(stall).await;
        assert!(matches!(
            progress.stalled(stall),
            Some(Stalled::NoAnswer(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sized_body_has_ended_once_its_last_byte_is_taken() {
        let progress = BodyProgress::new();
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![Ok(Bytes::from_static(b"ab"))];
        let mut body = Box::pin(progress.watch(futures_util::stream::iter(chunks), Some(2)));
        assert!(body.next().await.is_some());
        // Not polled to its end: the client stops at the declared length.
        let stall = Duration::from_secs(90);
        tokio::time::sleep(stall).await;
        assert!(matches!(
            progress.stalled(stall),
            Some(Stalled::NoAnswer(_))
        ));
    }

    #[tokio::test]
    async fn a_body_that_cannot_be_read_says_why() {
        let progress = BodyProgress::new();
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"ab")),
            Err(std::io::Error::other("Input/output error")),
        ];
        let body = progress.watch(futures_util::stream::iter(chunks), Some(10));
        let _: Vec<_> = body.collect().await;
        assert_eq!(progress.read_error().as_deref(), Some("Input/output error"));
    }
}
