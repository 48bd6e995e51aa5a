//! The error every HTTP server of redstuff answers with: a status code and
//! a JSON body `{"error": "what was wrong"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The most of a body that is not ours an error message quotes.
const MOST_QUOTED: usize = 300;

/// What an error answer's `body` says: its JSON `error` field; else (an
/// answer from something else: a proxy, an ingress, a load balancer) the
/// body on one line, at most [`MOST_QUOTED`] characters of it, an HTML
/// page by its title, an empty one as such.
pub fn message_of(body: String) -> String {
    if let Some(error) = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
    {
        return error;
    }
    let text = body.trim();
    if text.is_empty() {
        return "no message (the answer came from something in between, or broke off)".into();
    }
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("<!doctype html") || lower.starts_with("<html") {
        let title = lower
            .find("<title>")
            .map(|at| at + "<title>".len())
            .and_then(|start| Some((start, start + lower[start..].find("</title>")?)))
            .map(|(start, end)| one_line(&text[start..end]))
            .filter(|title| !title.is_empty());
        return match title {
            Some(title) => format!("an HTML page titled {title:?} (not the service's own answer: a proxy's or an ingress's?)"),
            None => "an HTML page (not the service's own answer: a proxy's or an ingress's?)".into(),
        };
    }
    let line = one_line(text);
    match line.char_indices().nth(MOST_QUOTED) {
        Some((cut, _)) => format!("{}... ({} bytes)", &line[..cut], body.len()),
        None => line,
    }
}

/// `text` with every run of whitespace made one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An HTTP error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status code.
    pub status: StatusCode,
    /// What was wrong, for people.
    pub message: String,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    /// 404: the thing asked for is not here.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    /// 408: the request's body stopped arriving before it was whole.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, message)
    }
    /// 409: the request conflicts with this server's state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    /// 413: the body is too large.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }
    /// 422: well-formed, but it does not verify.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
    /// 500: something failed here.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    /// 503: not able to serve now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_answer_says_its_error_field_or_its_body_as_it_is() {
        assert_eq!(
            message_of(r#"{"error": "no such blob"}"#.into()),
            "no such blob"
        );
        assert_eq!(message_of("502 Bad Gateway".into()), "502 Bad Gateway");
        assert_eq!(message_of(r#"{"other": 1}"#.into()), r#"{"other": 1}"#);
    }

    #[test]
    fn an_answer_from_something_in_between_is_said_as_such_on_one_short_line() {
        assert!(message_of(" \n".into()).starts_with("no message"));
        let page = "<!DOCTYPE html>\n<html><head><title>502 Bad\n Gateway</title></head>\n<body>nginx</body></html>";
        assert_eq!(
            message_of(page.into()),
            "an HTML page titled \"502 Bad Gateway\" (not the service's own answer: a proxy's or an ingress's?)"
        );
        assert!(message_of("<html><body>x</body></html>".into()).starts_with("an HTML page (not"));
        assert_eq!(message_of("upstream\nreset\n".into()), "upstream reset");
        let long = "é".repeat(1000);
        let said = message_of(long.clone());
        assert!(said.starts_with(&"é".repeat(300)), "{said}");
        assert!(
            said.ends_with(&format!("... ({} bytes)", long.len())),
            "{said}"
        );
    }
}
