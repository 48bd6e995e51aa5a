//! A body the server stops reading (a refused upload: no token, too many
//! uploads, too large) is read and dropped for a moment after the answer.
//!
//! A client that does not hold its body back (no `Expect: 100-continue`,
//! as `redstuff put` and curl for small bodies) is still sending when the
//! refusal goes out. Were the connection closed at once, the kernel would
//! answer the bytes still arriving with a reset, and a reset makes the
//! client's kernel drop what it had received but not yet read: the client
//! would see a broken connection instead of the 401 or 503 and its reason.
//! So the rest of the body is read and discarded, at most `LINGER_BYTES`
//! and `LINGER_TIME`, by at most `MAX_LINGERING` connections at once (a
//! flood of refused uploads holds no more than that); then the connection
//! closes as before.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{header, HeaderMap};

/// The most of a refused body read after the answer.
pub const LINGER_BYTES: u64 = 64 << 20;
/// The longest a refused body is read after the answer.
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// Connections reading a refused body at once; past that, closed at once.
pub const MAX_LINGERING: usize = 64;

static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// Whether a request's body is read on after a refusal: it has one, and
/// the client sends it without waiting for 100 Continue (a client that
/// waits never sends it after a refusal; see `held_back_body`).
pub fn lingers(headers: &HeaderMap) -> bool {
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|len| len > 0);
    has_body && !crate::held_back_body::expects_continue(headers)
}

/// axum middleware: a body dropped before its end is read on for a moment.
pub async fn linger_after_refusal(request: Request, next: Next) -> Response {
    if !lingers(request.headers()) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let watched = Body::from_stream(WatchedBody {
        inner: Some(body.into_data_stream()),
    });
    next.run(Request::from_parts(parts, watched)).await
}

/// A body that, dropped before its end, hands the rest to a task that
/// reads and discards it.
struct WatchedBody {
    /// `None` once it ended.
    inner: Option<BodyDataStream>,
}

impl Stream for WatchedBody {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let next = inner.poll_next_unpin(cx);
        if matches!(next, Poll::Ready(None | Some(Err(_)))) {
            self.inner = None;
        }
        next
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        let Some(rest) = self.inner.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if LINGERING.fetch_add(1, Ordering::AcqRel) >= MAX_LINGERING {
            LINGERING.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        runtime.spawn(async move {
            let _ = tokio::time::timeout(LINGER_TIME, discard(rest, LINGER_BYTES)).await;
            LINGERING.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Reads `stream` to its end, an error, or past `limit` bytes.
async fn discard(mut stream: impl Stream<Item = Result<Bytes, axum::Error>> + Unpin, limit: u64) {
    let mut read = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        read += chunk.len() as u64;
        if read > limit {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn only_a_body_sent_without_waiting_is_read_on() {
        let mut headers = HeaderMap::new();
        assert!(!lingers(&headers), "no body");
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(!lingers(&headers), "an empty body");
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("4096"));
        assert!(lingers(&headers));
        headers.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        assert!(!lingers(&headers), "held back until 100 Continue");
        let mut chunked = HeaderMap::new();
        chunked.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(lingers(&chunked));
    }

    #[tokio::test]
    async fn discarding_stops_past_its_limit_and_at_the_end() {
        let chunks = |n: usize| {
            futures_util::stream::iter(
                (0..n).map(|_| Ok::<_, axum::Error>(Bytes::from(vec![0u8; 1024]))),
            )
        };
        let mut endless = chunks(usize::MAX);
        discard(&mut endless, 10 * 1024).await;
        // 11 chunks read (the one past the limit included), the rest left.
        assert_eq!(endless.size_hint().0, usize::MAX - 11);
        let mut short = chunks(3);
        discard(&mut short, 10 * 1024).await;
        assert!(short.next().await.is_none());
    }
}
