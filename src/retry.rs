//! When a client of the gateway tries again, pure: which failures are worth
//! another attempt and how long to wait before it.
//!
//! A PUT is safe to repeat (a blob's id follows from its bytes, and a
//! failed upload is never visible), and so is a GET or the rest of one
//! (the same id is the same bytes). What is not worth repeating is what
//! another attempt cannot change: a bad request, a missing token, a blob
//! that is not there.

use std::time::Duration;

/// The first wait when the gateway names none.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// No wait is longer than this, whatever the gateway asks.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// Retries a command makes unless told otherwise.
pub const DEFAULT_RETRIES: u32 = 4;

/// How many times to try again, and how long to wait in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first (0: fail at the first failure).
    pub retries: u32,
    /// The wait after the first failure when the gateway names none; it
    /// doubles after each further failure.
    pub first_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The default waits with `retries` retries.
    pub fn with_retries(retries: u32) -> Self {
        Self {
            retries,
            first_delay: FIRST_DELAY,
            max_delay: MAX_DELAY,
        }
    }

    /// How long to wait before the next attempt after `failed` attempts
    /// have failed, the last with `failure`; `None` when there is to be no
    /// next attempt. `jitter` in [0, 1) spreads clients that failed
    /// together: a backed-off wait is between half and all of its step.
    /// A wait the gateway named (Retry-After) is kept as it is, capped.
    pub fn delay_after(&self, failed: u32, failure: &Failure, jitter: f64) -> Option<Duration> {
        if failed == 0 || failed > self.retries || !failure.is_retryable() {
            return None;
        }
        if let Failure::Answered {
            retry_after: Some(wait),
            ..
        } = failure
        {
            return Some((*wait).min(self.max_delay));
        }
        let step = self
            .first_delay
            .saturating_mul(1u32 << (failed - 1).min(16))
            .min(self.max_delay);
        Some(step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
    }
}

/// How an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The gateway answered with this HTTP status.
    Answered {
        /// The status code.
        status: u16,
        /// The wait it asked for (Retry-After).
        retry_after: Option<Duration>,
    },
    /// No answer: the connection could not be made, broke, or the gateway
    /// closed it while the request was still being sent (as it does when
    /// it refuses an upload before reading its body).
    Transport,
    /// Something another attempt cannot change (the local file, an answer
    /// that does not fit the request).
    Final,
}

impl Failure {
    /// Whether another attempt may succeed: a busy or degraded gateway or
    /// fleet (429, 502, 503, 504), a body that stopped arriving (408: the
    /// source was slow, not wrong) or a lost connection; never another
    /// 4xx or an internal error.
    pub fn is_retryable(&self) -> bool {
        match self {
            Failure::Answered { status, .. } => matches!(status, 408 | 429 | 502 | 503 | 504),
            Failure::Transport => true,
            Failure::Final => false,
        }
    }
}

/// The wait a `Retry-After` value asks for, in its delta-seconds form
/// (the gateway's); an HTTP date or anything else reads as none.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
        .then(|| value.parse().ok().map(Duration::from_secs))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(retry_after: Option<u64>) -> Failure {
        Failure::Answered {
            status: 503,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn a_busy_gateway_is_retried_after_the_wait_it_names_capped() {
        let policy = RetryPolicy::with_retries(4);
        assert_eq!(
            policy.delay_after(1, &busy(Some(2)), 0.9),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            policy.delay_after(1, &busy(Some(3600)), 0.0),
            Some(MAX_DELAY)
        );
    }

    #[test]
    fn without_a_named_wait_the_wait_doubles_and_jitter_keeps_it_between_half_and_all() {
        let policy = RetryPolicy::with_retries(10);
        let at = |failed, jitter| policy.delay_after(failed, &Failure::Transport, jitter);
        assert_eq!(at(1, 0.0), Some(Duration::from_millis(500)));
        assert_eq!(at(1, 1.0), Some(Duration::from_secs(1)));
        assert_eq!(at(2, 1.0), Some(Duration::from_secs(2)));
        assert_eq!(at(3, 0.5), Some(Duration::from_secs(3)));
        // Capped, and the shift cannot overflow.
        assert_eq!(at(10, 1.0), Some(MAX_DELAY));
        let many = RetryPolicy::with_retries(u32::MAX);
        assert_eq!(
            many.delay_after(u32::MAX, &Failure::Transport, 1.0),
            Some(MAX_DELAY)
        );
    }

    #[test]
    fn retries_stop_after_the_number_asked_for() {
        let policy = RetryPolicy::with_retries(2);
        assert!(policy.delay_after(2, &busy(None), 0.5).is_some());
        assert_eq!(policy.delay_after(3, &busy(None), 0.5), None);
        assert_eq!(
            RetryPolicy::with_retries(0).delay_after(1, &busy(None), 0.5),
            None
        );
    }

    #[test]
    fn what_another_attempt_cannot_change_is_not_retried() {
        let policy = RetryPolicy::with_retries(4);
        for status in [400, 401, 403, 404, 413, 416, 422, 500] {
            let failure = Failure::Answered {
                status,
                retry_after: Some(Duration::from_secs(1)),
            };
            assert_eq!(policy.delay_after(1, &failure, 0.5), None, "{status}");
        }
        assert_eq!(policy.delay_after(1, &Failure::Final, 0.5), None);
        for status in [408, 429, 502, 503, 504] {
            let failure = Failure::Answered {
                status,
                retry_after: None,
            };
            assert!(policy.delay_after(1, &failure, 0.5).is_some(), "{status}");
        }
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_nothing_else() {
        assert_eq!(parse_retry_after("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after(""), None);
        assert_eq!(parse_retry_after("99999999999999999999999"), None);
    }
}
