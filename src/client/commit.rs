//! The commit phase of a write, and what its answers mean.
//!
//! A commit marker is sent only once every segment reached n - f shards,
//! so any commit marker anywhere means the write is decided: durable, and
//! visible (readers take one commit marker in their quorum as visible, and
//! the loop carries it to every node holding the blob's data). A write is
//! therefore never withdrawn once its commit was sent: the writer keeps
//! sending the commit to every node holding shards, the silent ones too,
//! until nodes of n - f shards recorded it (then every later reader's
//! quorum holds one) or the commit window closes.

use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use super::blob_client::BlobClient;
use super::node_client::NodeCallError;
use crate::codec::BlobId;

/// Pause between two commit attempts on a node that did not take it.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How the commit phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitVerdict {
    /// Nodes of at least n - f shards recorded the commit: every later
    /// read sees the blob.
    Committed,
    /// Some nodes recorded it, fewer than n - f shards: the write is
    /// durable and decided, and the loop carries the commit to the others;
    /// until then a read may not see it.
    Partial {
        /// Shards whose node recorded the commit.
        acknowledged: usize,
    },
    /// Every node answered and refused it: no commit exists, the write can
    /// be aborted and is never visible.
    Refused,
    /// No node recorded it, but some did not answer: one of those may have
    /// recorded it, so whether the write becomes visible is unknown.
    Unknown,
}

/// Decides what the commit phase achieved (pure): `acknowledged` shards'
/// nodes recorded it; `uncertain` is whether any node that did not say
/// it recorded it left an attempt unanswered (it may have recorded it
/// without saying so, whatever its later attempts were told).
pub fn commit_verdict(acknowledged: usize, quorum: usize, uncertain: bool) -> CommitVerdict {
    if acknowledged >= quorum {
        CommitVerdict::Committed
    } else if acknowledged > 0 {
        CommitVerdict::Partial { acknowledged }
    } else if uncertain {
        CommitVerdict::Unknown
    } else {
        CommitVerdict::Refused
    }
}

/// Whether another attempt may succeed: the node did not answer, or
/// answered that it cannot right now (5xx). A 4xx (a newer delete, a bad
/// request) is final.
fn worth_retrying(error: &NodeCallError) -> bool {
    error.is_silence() || error.status().is_some_and(|s| s.is_server_error())
}

/// One node's part of the commit phase.
struct NodeCommit {
    shards: usize,
    result: Result<(), NodeCallError>,
    /// Whether an attempt went unanswered.
    unanswered: bool,
}

impl BlobClient {
    /// Sends the commit of `generation` to every node holding shards,
    /// again and again to those that do not take it, until nodes of n - f
    /// shards recorded it or `window` passed.
    pub(super) async fn commit_phase(
        &self,
        id: &BlobId,
        generation: u64,
        quorum: usize,
        window: Duration,
    ) -> CommitVerdict {
        let until = Instant::now() + window;
        let id = *id;
        let mut pending: FuturesUnordered<_> = self
            .holders()
            .map(|node| {
                let call = self.client(node);
                let name = node.name.clone();
                let shards = node.shards.len();
                async move {
                    let mut unanswered = false;
                    let result = loop {
                        let attempt = tokio::time::timeout_at(until, call.commit(&id, generation))
                            .await
                            .unwrap_or_else(|_| {
                                Err(NodeCallError::TimedOut {
                                    url: call.url().to_string(),
                                    what: "the commit",
                                })
                            });
                        unanswered |= attempt.as_ref().is_err_and(NodeCallError::is_silence);
                        match attempt {
                            Err(e)
                                if worth_retrying(&e) && Instant::now() + RETRY_PAUSE < until =>
                            {
                                tracing::debug!(node = %name, "commit of {id}: {e}; again");
                                tokio::time::sleep(RETRY_PAUSE).await;
                            }
                            other => break other,
                        }
                    };
                    if let Err(e) = &result {
                        tracing::warn!(node = %name, "commit of {id}: {e}");
                    }
                    NodeCommit {
                        shards,
                        result,
                        unanswered,
                    }
                }
            })
            .collect();
        let (mut acknowledged, mut uncertain) = (0, false);
        while let Some(answer) = pending.next().await {
            match answer.result {
                Ok(()) => acknowledged += answer.shards,
                Err(_) => uncertain |= answer.unanswered,
            }
            if acknowledged >= quorum {
                break;
            }
        }
        // The write is answered; the other nodes still get their commit
        // (within the window), so the loop has less to carry.
        super::hear_out_in_background(pending);
        commit_verdict(acknowledged, quorum, uncertain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node whose first commit call goes unanswered (it sleeps past the
    /// caller's deadline, as a node recording it and then stalling would)
    /// and whose later ones answer 503; its URL.
    async fn silent_then_failing_node() -> String {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = std::sync::Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().route(
            "/v1/blobs/{id}/commit",
            axum::routing::post(move || {
                let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    #[tokio::test]
    async fn a_commit_a_node_left_unanswered_is_unknown_even_when_its_last_attempt_was_refused() {
        let mut urls = Vec::new();
        for _ in 0..4 {
            urls.push(silent_then_failing_node().await);
        }
        let client = super::super::test_fleet::client_of(4, urls, 0.3);
        let verdict = client
            .commit_phase(&BlobId([3; 32]), 7, 3, Duration::from_secs(1))
            .await;
        assert_eq!(
            verdict,
            CommitVerdict::Unknown,
            "each node may have recorded it in the attempt it never answered"
        );
    }

    #[test]
    fn a_commit_on_n_minus_f_shards_is_committed_whatever_the_others_said() {
        assert_eq!(commit_verdict(5, 5, true), CommitVerdict::Committed);
        assert_eq!(commit_verdict(7, 5, false), CommitVerdict::Committed);
    }

    #[test]
    fn a_commit_on_some_shards_is_decided_and_never_reported_as_refused() {
        assert_eq!(
            commit_verdict(1, 5, false),
            CommitVerdict::Partial { acknowledged: 1 }
        );
        assert_eq!(
            commit_verdict(4, 5, true),
            CommitVerdict::Partial { acknowledged: 4 }
        );
    }

    #[test]
    fn a_commit_no_node_took_is_refused_only_when_every_node_answered() {
        assert_eq!(commit_verdict(0, 5, false), CommitVerdict::Refused);
        assert_eq!(commit_verdict(0, 5, true), CommitVerdict::Unknown);
    }

    #[test]
    fn only_silence_and_server_errors_are_worth_another_commit_attempt() {
        let status = |code: u16| NodeCallError::Status {
            url: "http://n".into(),
            status: reqwest::StatusCode::from_u16(code).unwrap(),
            message: String::new(),
        };
        assert!(worth_retrying(&NodeCallError::TimedOut {
            url: "http://n".into(),
            what: "the commit"
        }));
        assert!(worth_retrying(&status(503)));
        assert!(!worth_retrying(&status(410)));
        assert!(!worth_retrying(&status(400)));
    }
}
