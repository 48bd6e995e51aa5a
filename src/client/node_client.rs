//! HTTP client of one storage node's API. Every call carries the cluster
//! token, has a deadline (see `deadline`), and reads at most the bytes the
//! caller expects.

use std::sync::Arc;

use reqwest::StatusCode;
use thiserror::Error;

use super::deadline::{self, Deadlines, ReadFailure};
use crate::auth::TokenSet;
use crate::codec::{BlobId, SliverKind};
use crate::wire::{
    GenerationBody, InventoryPage, NodeBlobState, RepairLine, RepairReport, RepairRequest,
};

/// Error bodies are read up to this many bytes.
const ERROR_BODY_LIMIT: u64 = 64 << 10;
/// A blob's state answer: markers and a line per shard.
const STATE_LIMIT: u64 = 1 << 20;
/// One line of a repair's answer.
const REPAIR_LINE_LIMIT: u64 = 1 << 20;

/// A failed call to a node.
#[derive(Debug, Error)]
pub enum NodeCallError {
    /// The node could not be reached or the transfer broke.
    #[error("node {url} unreachable: {source}")]
    Unreachable {
        /// The node's base URL.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The node did not answer in time.
    #[error("node {url} did not answer {what} within its deadline")]
    TimedOut {
        /// The node's base URL.
        url: String,
        /// The call.
        what: &'static str,
    },
    /// The node answered more bytes than the call can be.
    #[error("node {url} answered more than the {limit} bytes {what} can be")]
    TooLarge {
        /// The node's base URL.
        url: String,
        /// The call.
        what: &'static str,
        /// The most bytes expected.
        limit: u64,
    },
    /// The node answered with an error status.
    #[error("node {url} answered {status}: {message}")]
    Status {
        /// The node's base URL.
        url: String,
        /// The status code.
        status: StatusCode,
        /// The node's error message.
        message: String,
    },
    /// The node answered something that is not what the call returns.
    #[error("node {url} answered {what} with an unreadable body: {reason}")]
    Garbled {
        /// The node's base URL.
        url: String,
        /// The call.
        what: &'static str,
        /// Why it cannot be read.
        reason: String,
    },
}

impl NodeCallError {
    /// The status code, when the node answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            NodeCallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the node did not answer (unreachable or too slow): it may be
    /// down, stopped or partitioned.
    pub fn is_silence(&self) -> bool {
        matches!(
            self,
            NodeCallError::Unreachable { .. } | NodeCallError::TimedOut { .. }
        )
    }
}

/// How to call nodes: one HTTP client, the cluster token, the deadlines.
#[derive(Debug, Clone)]
pub struct NodeCalls {
    /// The HTTP client (connection pool).
    pub http: reqwest::Client,
    /// The cluster token sent with every call.
    pub token: Arc<TokenSet>,
    /// Deadlines of every call.
    pub deadlines: Deadlines,
}

impl NodeCalls {
    /// Calls with `token` and `deadlines` over a new HTTP client.
    pub fn new(token: Arc<TokenSet>, deadlines: Deadlines) -> Self {
        let http = crate::http::client_builder()
            .connect_timeout(deadlines.call)
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        Self {
            http,
            token,
            deadlines,
        }
    }

    /// A client of the node at `base`.
    pub fn node(&self, base: impl Into<String>) -> NodeClient {
        NodeClient {
            calls: self.clone(),
            base: base.into().trim_end_matches('/').to_string(),
        }
    }
}

/// A client of one node.
#[derive(Debug, Clone)]
pub struct NodeClient {
    calls: NodeCalls,
    base: String,
}

impl NodeClient {
    /// The node's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.calls
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.calls.token.primary())
    }

    fn failure(&self, what: &'static str) -> impl Fn(ReadFailure) -> NodeCallError + '_ {
        move |failure| match failure {
            ReadFailure::TimedOut => NodeCallError::TimedOut {
                url: self.base.clone(),
                what,
            },
            ReadFailure::TooLarge { limit } => NodeCallError::TooLarge {
                url: self.base.clone(),
                what,
                limit,
            },
            ReadFailure::Transport(source) => NodeCallError::Unreachable {
                url: self.base.clone(),
                source,
            },
        }
    }

    /// Sends a request whose answer headers must come within the call deadline.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &'static str,
    ) -> Result<reqwest::Response, NodeCallError> {
        match tokio::time::timeout(self.calls.deadlines.call, request.send()).await {
            Err(_) => Err(NodeCallError::TimedOut {
                url: self.base.clone(),
                what,
            }),
            Ok(Err(source)) if source.is_timeout() => Err(NodeCallError::TimedOut {
                url: self.base.clone(),
                what,
            }),
            Ok(Err(source)) => Err(NodeCallError::Unreachable {
                url: self.base.clone(),
                source,
            }),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// An error status as a `Status` error (its message read, capped).
    async fn check(
        &self,
        response: reqwest::Response,
        what: &'static str,
    ) -> Result<reqwest::Response, NodeCallError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = deadline::read_capped(response, ERROR_BODY_LIMIT, self.calls.deadlines.call)
            .await
            .map_err(self.failure(what))?;
        let body = String::from_utf8_lossy(&body).to_string();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_string))
            .unwrap_or(body);
        Err(NodeCallError::Status {
            url: self.base.clone(),
            status,
            message,
        })
    }

    async fn read(
        &self,
        response: reqwest::Response,
        limit: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, NodeCallError> {
        deadline::read_capped(response, limit, self.calls.deadlines.stall)
            .await
            .map_err(self.failure(what))
    }

    async fn get_bytes(
        &self,
        path: &str,
        limit: u64,
        what: &'static str,
    ) -> Result<Option<Vec<u8>>, NodeCallError> {
        let response = self
            .send(self.request(reqwest::Method::GET, path), what)
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = self.check(response, what).await?;
        self.read(response, limit, what).await.map(Some)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        limit: u64,
        what: &'static str,
    ) -> Result<T, NodeCallError> {
        let response = self
            .send(self.request(reqwest::Method::GET, path), what)
            .await?;
        let response = self.check(response, what).await?;
        let body = self.read(response, limit, what).await?;
        serde_json::from_slice(&body).map_err(|e| NodeCallError::Garbled {
            url: self.base.clone(),
            what,
            reason: e.to_string(),
        })
    }

    /// Uploads `body`, watched for progress; the answer's status is checked.
    async fn put_watched(
        &self,
        path: &str,
        body: Vec<u8>,
        what: &'static str,
    ) -> Result<(), NodeCallError> {
        let len = body.len();
        let (body, watchdog) = deadline::watched_upload(body, self.calls.deadlines);
        let request = self
            .request(reqwest::Method::PUT, path)
            .header("content-type", "application/octet-stream")
            .header("content-length", len)
            .body(body)
            .send();
        let response = tokio::select! {
            answer = request => answer.map_err(|source| NodeCallError::Unreachable {
                url: self.base.clone(),
                source,
            })?,
            () = watchdog => {
                return Err(NodeCallError::TimedOut { url: self.base.clone(), what });
            }
        };
        let response = self.check(response, what).await?;
        // Drain the (small) success body so the connection can be reused.
        let _ = self.read(response, ERROR_BODY_LIMIT, what).await;
        Ok(())
    }

    async fn post_json(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        what: &'static str,
    ) -> Result<reqwest::Response, NodeCallError> {
        let response = self
            .send(self.request(reqwest::Method::POST, path).json(body), what)
            .await?;
        self.check(response, what).await
    }

    /// What the node holds of a blob: markers, metadata facts, pairs.
    pub async fn state(&self, id: &BlobId) -> Result<NodeBlobState, NodeCallError> {
        self.get_json(
            &format!("/v1/blobs/{id}/state"),
            STATE_LIMIT,
            "the blob state",
        )
        .await
    }

    /// Stages a write of `generation`: stores the blob's serialized metadata.
    pub async fn put_metadata(
        &self,
        id: &BlobId,
        generation: u64,
        bytes: Vec<u8>,
    ) -> Result<(), NodeCallError> {
        self.put_watched(
            &format!("/v1/blobs/{id}/metadata?generation={generation}"),
            bytes,
            "the metadata upload",
        )
        .await
    }

    /// A blob's serialized metadata, if the node has it; at most `limit` bytes.
    pub async fn metadata(
        &self,
        id: &BlobId,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, NodeCallError> {
        self.get_bytes(&format!("/v1/blobs/{id}/metadata"), limit, "the metadata")
            .await
    }

    /// Commits the write of `generation`.
    pub async fn commit(&self, id: &BlobId, generation: u64) -> Result<(), NodeCallError> {
        self.post_json(
            &format!("/v1/blobs/{id}/commit"),
            &GenerationBody { generation },
            "the commit",
        )
        .await
        .map(drop)
    }

    /// Withdraws the staged write of `generation`.
    pub async fn abort(&self, id: &BlobId, generation: u64) -> Result<(), NodeCallError> {
        self.post_json(
            &format!("/v1/blobs/{id}/abort"),
            &GenerationBody { generation },
            "the abort",
        )
        .await
        .map(drop)
    }

    /// Records a delete of `generation` (a tombstone) and removes the data
    /// it covers.
    pub async fn delete(&self, id: &BlobId, generation: u64) -> Result<(), NodeCallError> {
        let response = self
            .send(
                self.request(
                    reqwest::Method::DELETE,
                    &format!("/v1/blobs/{id}?generation={generation}"),
                ),
                "the delete",
            )
            .await?;
        self.check(response, "the delete").await.map(drop)
    }

    /// Stores a serialized sliver of `shard`.
    pub async fn put_sliver(
        &self,
        id: &BlobId,
        segment: u32,
        shard: u16,
        kind: SliverKind,
        bytes: Vec<u8>,
    ) -> Result<(), NodeCallError> {
        self.put_watched(
            &format!("/v1/blobs/{id}/slivers/{segment}/{shard}/{kind}"),
            bytes,
            "the sliver upload",
        )
        .await
    }

    /// A serialized sliver of `shard`, if the node has it; at most `limit` bytes.
    pub async fn sliver(
        &self,
        id: &BlobId,
        segment: u32,
        shard: u16,
        kind: SliverKind,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, NodeCallError> {
        self.get_bytes(
            &format!("/v1/blobs/{id}/slivers/{segment}/{shard}/{kind}"),
            limit,
            "a sliver",
        )
        .await
    }

    /// A serialized recovery symbol from the node's `kind` sliver of
    /// `shard`, for rebuilding the other-axis sliver of `target_shard`; at
    /// most `limit` bytes.
    pub async fn symbol(
        &self,
        id: &BlobId,
        segment: u32,
        shard: u16,
        kind: SliverKind,
        target_shard: u16,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, NodeCallError> {
        self.get_bytes(
            &format!("/v1/blobs/{id}/symbols/{segment}/{shard}/{kind}?target_shard={target_shard}"),
            limit,
            "a recovery symbol",
        )
        .await
    }

    /// One page of the node's inventory (at most `limit` blobs).
    pub async fn inventory(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<InventoryPage, NodeCallError> {
        let mut path = format!("/v1/inventory?limit={limit}");
        if let Some(after) = after {
            // Blob ids are URL-safe base64: no escaping needed.
            path.push_str(&format!("&after={after}"));
        }
        // An entry names its blob, markers and up to every shard.
        let cap = 64 * 1024 + limit as u64 * (512 + 16 * 1000);
        self.get_json(&path, cap, "an inventory page").await
    }

    /// Every page of the node's inventory.
    pub async fn full_inventory(&self) -> Result<InventoryPage, NodeCallError> {
        let mut page = self.inventory(None, 1000).await?;
        while let Some(next) = page.next.take() {
            let more = self.inventory(Some(&next), 1000).await?;
            page.blobs.extend(more.blobs);
            page.next = more.next;
        }
        Ok(page)
    }

    /// Asks the node to rebuild its sliver pairs of a blob. The node
    /// answers a line per segment; a repair that makes no progress for the
    /// repair stall time is abandoned.
    pub async fn repair(&self, request: &RepairRequest) -> Result<RepairReport, NodeCallError> {
        const WHAT: &str = "the repair";
        let mut response = self.post_json("/v1/repair", request, WHAT).await?;
        let stall = self.calls.deadlines.repair_stall;
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(stall, response.chunk()).await {
                Err(_) => return Err(self.failure(WHAT)(ReadFailure::TimedOut)),
                Ok(Err(source)) => return Err(self.failure(WHAT)(ReadFailure::Transport(source))),
                Ok(Ok(chunk)) => chunk,
            };
            let Some(chunk) = chunk else {
                return Err(NodeCallError::Garbled {
                    url: self.base.clone(),
                    what: WHAT,
                    reason: "the answer ended before the report".into(),
                });
            };
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                match serde_json::from_slice::<RepairLine>(&line) {
                    Ok(RepairLine::Segment(_)) => {}
                    Ok(RepairLine::Report(report)) => return Ok(report),
                    Ok(RepairLine::Error(message)) => {
                        return Err(NodeCallError::Status {
                            url: self.base.clone(),
                            status: StatusCode::CONFLICT,
                            message,
                        })
                    }
                    Err(e) => {
                        return Err(NodeCallError::Garbled {
                            url: self.base.clone(),
                            what: WHAT,
                            reason: e.to_string(),
                        })
                    }
                }
            }
            if pending.len() as u64 > REPAIR_LINE_LIMIT {
                return Err(self.failure(WHAT)(ReadFailure::TooLarge {
                    limit: REPAIR_LINE_LIMIT,
                }));
            }
        }
    }

    /// Whether the node answers its readiness probe within the call deadline.
    pub async fn ready(&self) -> bool {
        let probe = self.calls.http.get(format!("{}/readyz", self.base)).send();
        matches!(
            tokio::time::timeout(self.calls.deadlines.call, probe).await,
            Ok(Ok(r)) if r.status().is_success()
        )
    }
}
