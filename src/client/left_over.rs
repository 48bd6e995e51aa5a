//! Calls left over once enough answered (a quorum of states, a copy of
//! the metadata, a repair's symbols): heard out rather than dropped.

use futures_util::stream::{FuturesUnordered, StreamExt};

/// Lets the calls still out in `pending` finish in the background, their
/// answers unused, rather than dropping them: a call dropped while it
/// connects leaves its node a half-done TLS handshake, and one dropped
/// while it waits for its answer closes a pooled connection the next call
/// would have taken. Each call ends within its own deadline, so the task
/// does too. Outside a Tokio runtime they are dropped.
pub fn hear_out_in_background<F>(mut pending: FuturesUnordered<F>)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send,
{
    if pending.is_empty() {
        return;
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move { while pending.next().await.is_some() {} });
    }
}
