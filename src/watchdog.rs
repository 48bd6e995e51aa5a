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

/// When an upload's body last gave the gateway bytes, and whether it
/// ended.
#[derive(Clone)]
pub struct BodyProgress {
    state: Arc<Mutex<(Instant, bool)>>,
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
            state: Arc::new(Mutex::new((Instant::now(), false))),
        }
    }

    /// `body`, noting each chunk the gateway takes and its end.
    pub fn watch<S, E>(&self, body: S) -> impl Stream<Item = Result<Bytes, E>>
    where
        S: Stream<Item = Result<Bytes, E>>,
    {
        let progress = self.clone();
        let ended = self.clone();
        body.inspect(move |_| progress.note(false))
            .chain(futures_util::stream::poll_fn(move |_| {
                ended.note(true);
                std::task::Poll::Ready(None)
            }))
    }

    fn note(&self, ended: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = (Instant::now(), state.1 || ended);
    }

    /// What stalled, if the gateway took nothing of the body for `stall`,
    /// or gave no answer for `stall` after the body ended.
    fn stalled(&self, stall: Duration) -> Option<Stalled> {
        let (since, ended) = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        (since.elapsed() >= stall).then_some(if ended {
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
        let mut body = Box::pin(progress.watch(futures_util::stream::iter(chunks)));
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
}
