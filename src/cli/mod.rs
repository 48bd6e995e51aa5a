//! The user commands that talk to a gateway: put, get, status. Each tries
//! again, a bounded number of times, when the gateway is busy or out of
//! reach (`redstuff::retry` decides when and how long to wait).

mod get;
mod put;
mod status;

pub use get::get;
pub use put::put;
pub use status::{status, StatusFormat};

use indicatif::{ProgressBar, ProgressStyle};
use redstuff::retry::{parse_retry_after, Failure, RetryPolicy};

/// Transfers shorter than this show no progress bar.
const PROGRESS_THRESHOLD: u64 = 8 << 20;

fn progress(len: u64, label: &str) -> ProgressBar {
    if len < PROGRESS_THRESHOLD {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template(
            "{msg} {bytes}/{total_bytes} [{bar:30}] {percent}% {bytes_per_sec}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

/// How long an error answer's body may take: its status says enough.
const ERROR_BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn error_of(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let body = tokio::time::timeout(ERROR_BODY_WAIT, response.text())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let message = redstuff::api_error::message_of(body);
    let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
        " (pass --token or set REDSTUFF_TOKEN; `redstuff dev` writes its token to DATA_DIR/token)"
    } else {
        ""
    };
    anyhow::anyhow!("the gateway answered {status}: {message}{hint}")
}

/// A client of the gateway, trusting `ca` (a file) besides the usual
/// roots when one is given.
fn http(ca: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let ca = redstuff::tls::TrustedCa::from_optional_file(ca)?;
    Ok(redstuff::http::client_builder_trusting(ca.as_ref())
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()?)
}

/// A gateway URL as `--gateway` takes it: http or https, with a host
/// (a request to anything else could not even be made).
pub fn parse_gateway_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text).map_err(|e| {
        format!(
            "{text:?} is not a URL ({e}): give one like {}",
            crate::DEFAULT_GATEWAY
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "{text:?} is not an http:// or https:// URL with a host, like {}",
            crate::DEFAULT_GATEWAY
        ));
    }
    Ok(text.to_string())
}

/// A user token as `--token` and REDSTUFF_TOKEN take it: one token, no
/// line break or other control character (a header cannot carry it; a
/// token file read whole holds two tokens during a rotation).
pub fn parse_token(text: &str) -> Result<String, String> {
    if text.chars().any(char::is_control) {
        return Err(
            "the token holds a line break or another control character: \
             pass one token (a token file may hold two during a rotation)"
                .into(),
        );
    }
    Ok(text.to_string())
}

/// Adds the user token, when there is one.
fn authorized(request: reqwest::RequestBuilder, token: &Option<String>) -> reqwest::RequestBuilder {
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// Why one attempt failed: what to tell the user, and what kind of
/// failure it was (whether another attempt may do better).
struct AttemptError {
    failure: Failure,
    error: anyhow::Error,
}

impl AttemptError {
    /// A failure no retry changes.
    fn last(error: anyhow::Error) -> Self {
        Self {
            failure: Failure::Final,
            error,
        }
    }

    /// No answer, or an answer cut off.
    fn transport(error: anyhow::Error) -> Self {
        Self {
            failure: Failure::Transport,
            error,
        }
    }

    /// A request that got no answer from `gateway`: final when the
    /// gateway's certificate is not trusted (no retry changes that), with
    /// what to do; a transport failure otherwise.
    fn unanswered(error: reqwest::Error, gateway: &str) -> Self {
        if error.is_builder() {
            return Self::last(
                anyhow::Error::new(error)
                    .context(format!("cannot make a request to the gateway at {gateway}")),
            );
        }
        if let Some(refused) = refused_certificate(&error) {
            return Self::last(anyhow::anyhow!(
                "the gateway at {gateway} shows a certificate this client does not trust \
                 ({}): {}",
                rustls::Error::InvalidCertificate(refused.clone()),
                certificate_advice(&refused)
            ));
        }
        if answered_not_http(&error) {
            let hint = if gateway.starts_with("http://") {
                format!(
                    ": a gateway serving TLS answers plain HTTP so; use {}",
                    gateway.replacen("http://", "https://", 1)
                )
            } else {
                String::new()
            };
            return Self::last(anyhow::anyhow!(
                "the gateway at {gateway} answered in something other than HTTP{hint}"
            ));
        }
        // reqwest's own message names the request, not why it failed:
        // the causes under it say that (refused, reset, no such host).
        Self::transport(
            anyhow::Error::new(error).context(format!("cannot reach the gateway at {gateway}")),
        )
    }

    /// A request given up because the gateway made no progress.
    fn stalled(stalled: redstuff::watchdog::Stalled, gateway: &str) -> Self {
        Self::transport(anyhow::anyhow!("{stalled} (gateway at {gateway})"))
    }

    /// The head of `gateway`'s answer to `request` (without a body worth
    /// watching) within `stall`; a stall or no answer as an attempt's
    /// failure.
    async fn unless_unanswered(
        request: reqwest::RequestBuilder,
        stall: std::time::Duration,
        gateway: &str,
    ) -> Result<reqwest::Response, Self> {
        redstuff::watchdog::send_within(request, stall)
            .await
            .map_err(|e| Self::stalled(e, gateway))?
            .map_err(|e| Self::unanswered(e, gateway))
    }

    /// The JSON body of `gateway`'s answer `response`, whose head came
    /// (a small document): one not whole within `stall` is a stall, one
    /// that breaks off or is not the JSON expected a transport failure.
    async fn json_within<T: serde::de::DeserializeOwned>(
        response: reqwest::Response,
        stall: std::time::Duration,
        gateway: &str,
    ) -> Result<T, Self> {
        tokio::time::timeout(stall, response.json())
            .await
            .map_err(|_| Self::stalled(redstuff::watchdog::Stalled::NoAnswer(stall), gateway))?
            .map_err(|e| Self::transport(anyhow::anyhow!("the gateway's answer broke off: {e:#}")))
    }

    /// The gateway's error answer.
    async fn answered(response: reqwest::Response) -> Self {
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| parse_retry_after(v.to_str().ok()?));
        let status = response.status().as_u16();
        Self {
            failure: Failure::Answered {
                status,
                retry_after,
            },
            error: error_of(response).await,
        }
    }
}

/// What to do about a gateway certificate refused for `why`: only one of
/// an unknown issuer is a matter of passing the CA.
fn certificate_advice(why: &rustls::CertificateError) -> &'static str {
    use rustls::CertificateError as Why;
    match why {
        Why::UnknownIssuer => {
            "pass its CA with --tls-ca FILE or REDSTUFF_TLS_CA (or the CA passed is not the one \
             that signed it)"
        }
        Why::NotValidForName | Why::NotValidForNameContext { .. } => {
            "reach the gateway by a name its certificate holds (the operator adds names \
             with spec.tls.gatewayNames)"
        }
        Why::Expired
        | Why::ExpiredContext { .. }
        | Why::NotValidYet
        | Why::NotValidYetContext { .. } => {
            "its validity does not cover this machine's clock: check the clock, and whether \
             the gateway's certificate was renewed"
        }
        _ => "the gateway's certificate must be replaced",
    }
}

/// Whether `error` is an answer that does not parse as HTTP (a TLS
/// server's alert to a plain request, another protocol on the port, a
/// head too large): taken as one no retry changes.
fn answered_not_http(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Why rustls refused the server's certificate, when that is what
/// `error` (or an error under it) is.
fn refused_certificate(
    error: &(dyn std::error::Error + 'static),
) -> Option<rustls::CertificateError> {
    let mut next = Some(error);
    while let Some(e) = next {
        // io::Errors wrap each other and hide the inner error from
        // `source()`.
        let mut inner = e;
        while let Some(wrapped) = inner
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            inner = wrapped;
        }
        if let Some(rustls::Error::InvalidCertificate(why)) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(why.clone());
        }
        next = e.source();
    }
    None
}

/// After `failed` failed attempts, the last failing with `last`: waits
/// before the next one, saying so on stderr (above `bar`, which stays), or
/// gives the error to end with.
async fn before_retry(
    policy: &RetryPolicy,
    failed: u32,
    last: AttemptError,
    bar: &ProgressBar,
) -> Result<(), anyhow::Error> {
    let jitter = f64::from(getrandom::u32().unwrap_or(0)) / 4_294_967_296.0;
    match policy.delay_after(failed, &last.failure, jitter) {
        Some(wait) => {
            bar.suspend(|| {
                eprintln!(
                    "{:#}; trying again in {:.1} s (attempt {} of {})",
                    last.error,
                    wait.as_secs_f64(),
                    failed + 1,
                    policy.retries + 1
                )
            });
            tokio::time::sleep(wait).await;
            Ok(())
        }
        None if failed > 1 => Err(anyhow::anyhow!(
            "{:#} (gave up after {failed} attempts)",
            last.error
        )),
        None => Err(last.error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_is_an_http_or_https_url_with_a_host() {
        for good in ["http://127.0.0.1:7700", "https://gw.storage.svc:8443/"] {
            assert_eq!(parse_gateway_url(good).as_deref(), Ok(good));
        }
        for bad in [
            "media-gateway.storage:8080",
            "",
            "ftp://host",
            "127.0.0.1:7700",
            "http://",
        ] {
            assert!(parse_gateway_url(bad).is_err(), "{bad:?} taken");
        }
    }

    #[test]
    fn a_token_with_a_line_break_is_refused_before_any_request() {
        assert!(parse_token("a\nb").unwrap_err().contains("line break"));
        assert!(parse_token("a\r").is_err());
        assert_eq!(parse_token("abc").as_deref(), Ok("abc"));
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_made_is_final_not_a_lost_connection() {
        let error = redstuff::http::client()
            .get("http://127.0.0.1:7700/v1/status")
            .header("authorization", "Bearer a\nb")
            .send()
            .await
            .unwrap_err();
        let attempt = AttemptError::unanswered(error, "http://127.0.0.1:7700");
        assert!(
            matches!(attempt.failure, Failure::Final),
            "{:#}",
            attempt.error
        );
        assert!(format!("{:#}", attempt.error).contains("cannot make a request"));
    }

    #[test]
    fn only_a_certificate_of_an_unknown_issuer_is_answered_with_passing_the_ca() {
        use rustls::CertificateError as Why;
        assert!(certificate_advice(&Why::UnknownIssuer).contains("--tls-ca"));
        for other in [
            Why::NotValidForName,
            Why::Expired,
            Why::NotValidYet,
            Why::BadSignature,
        ] {
            assert!(
                !certificate_advice(&other).contains("--tls-ca"),
                "{other:?}"
            );
        }
        assert!(certificate_advice(&Why::NotValidForName).contains("spec.tls.gatewayNames"));
    }
}
