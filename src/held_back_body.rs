//! Servers answering a client that holds its body back.
//!
//! A client that sends `Expect: 100-continue` waits for 100 Continue before
//! it sends its body. When it hears a final refusal first (401, 412, 503,
//! 507 ...) it never sends those bytes, while the server still counts them
//! as owed: were the connection kept, the next request's first bytes would
//! be read as that body. botocore reuses such connections and then saw
//! SignatureDoesNotMatch on the request after a refused conditional PUT.
//! So such a refusal closes the connection, and the next request goes on a
//! fresh one.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::{header, HeaderMap, HeaderValue, StatusCode};

/// Whether the client holds its body back until it hears 100 Continue.
pub fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Whether the connection must close after answering `status` to a request
/// that did or did not hold its body back.
pub fn closes_connection(expects_continue: bool, status: StatusCode) -> bool {
    expects_continue && !status.is_success()
}

/// Marks `response` to close its connection when [`closes_connection`] says so.
pub fn mark_close(expects_continue: bool, response: &mut http::Response<impl Sized>) {
    if closes_connection(expects_continue, response.status()) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// axum middleware applying [`mark_close`] to every answer.
pub async fn close_after_refusal(request: Request, next: Next) -> Response {
    let expects = expects_continue(request.headers());
    let mut response = next.run(request).await;
    mark_close(expects, &mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_of_a_held_back_body_closes_the_connection() {
        let mut headers = HeaderMap::new();
        assert!(!expects_continue(&headers));
        headers.insert(header::EXPECT, HeaderValue::from_static("100-Continue"));
        assert!(expects_continue(&headers));
        assert!(closes_connection(true, StatusCode::PRECONDITION_FAILED));
        assert!(closes_connection(true, StatusCode::SERVICE_UNAVAILABLE));
        assert!(!closes_connection(true, StatusCode::OK));
        assert!(!closes_connection(false, StatusCode::UNAUTHORIZED));
    }
}
