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
//! closes as before, and a client still sending past that bound may meet
//! the reset before it read the answer.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderMap};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

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
    next.run(request.map(|body| Body::new(WatchedBody::new(body))))
        .await
}

/// A request body that, dropped before its end, hands the rest to a task
/// that reads and discards it. Sizes and frames pass through unchanged.
pub struct WatchedBody<B: HttpBody<Data = Bytes> + Send + Unpin + 'static> {
    /// `None` once it ended.
    inner: Option<B>,
}

impl<B: HttpBody<Data = Bytes> + Send + Unpin + 'static> WatchedBody<B> {
    /// Watches `inner`.
    pub fn new(inner: B) -> Self {
        Self { inner: Some(inner) }
    }
}

impl<B: HttpBody<Data = Bytes> + Send + Unpin + 'static> HttpBody for WatchedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let next = Pin::new(inner).poll_frame(cx);
        if matches!(next, Poll::Ready(None | Some(Err(_)))) {
            self.inner = None;
        }
        next
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl<B: HttpBody<Data = Bytes> + Send + Unpin + 'static> Drop for WatchedBody<B> {
    fn drop(&mut self) {
        let Some(rest) = self.inner.take() else {
            return;
        };
        if rest.is_end_stream() {
            return;
        }
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

/// Reads `body` to its end, an error, or past `limit` bytes.
async fn discard<B: HttpBody<Data = Bytes> + Unpin>(mut body: B, limit: u64) {
    let mut read = 0u64;
    while let Some(Ok(frame)) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
    {
        read += frame.data_ref().map_or(0, |d| d.len() as u64);
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

    /// A body of `chunks` frames of 1 KiB that counts the frames taken.
    struct Counted {
        left: usize,
        taken: std::sync::Arc<AtomicUsize>,
    }

    impl HttpBody for Counted {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            self.left -= 1;
            self.taken.fetch_add(1, Ordering::Relaxed);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![0u8; 1024])))))
        }
    }

    #[tokio::test]
    async fn discarding_stops_past_its_limit_and_at_the_end() {
        let taken = std::sync::Arc::new(AtomicUsize::new(0));
        let endless = Counted {
            left: usize::MAX,
            taken: taken.clone(),
        };
        discard(endless, 10 * 1024).await;
        // 11 frames read (the one past the limit included), no more.
        assert_eq!(taken.load(Ordering::Relaxed), 11);
        let short = Counted {
            left: 3,
            taken: taken.clone(),
        };
        discard(short, 10 * 1024).await;
        assert_eq!(taken.load(Ordering::Relaxed), 14);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_read_on_and_one_read_to_its_end_is_not() {
        let taken = std::sync::Arc::new(AtomicUsize::new(0));
        let mut watched = WatchedBody::new(Counted {
            left: 5,
            taken: taken.clone(),
        });
        let first = std::future::poll_fn(|cx| Pin::new(&mut watched).poll_frame(cx)).await;
        assert!(first.is_some());
        drop(watched);
        let start = std::time::Instant::now();
        while taken.load(Ordering::Relaxed) < 5 {
            assert!(start.elapsed() < Duration::from_secs(10), "never read on");
            tokio::task::yield_now().await;
        }
        let mut whole = WatchedBody::new(Counted {
            left: 2,
            taken: taken.clone(),
        });
        while std::future::poll_fn(|cx| Pin::new(&mut whole).poll_frame(cx))
            .await
            .is_some()
        {}
        assert!(whole.is_end_stream());
        drop(whole);
        tokio::task::yield_now().await;
        assert_eq!(taken.load(Ordering::Relaxed), 7);
    }
}
