//! HTTP client of one storage node's API. Every call carries the cluster
//! token, has a deadline (see `deadline`), and reads at most the bytes the
//! caller expects.

use std::sync::Arc;

use bytes::Bytes;
use reqwest::StatusCode;
use thiserror::Error;
use tokio::time::Instant;

use super::deadline::{self, Deadlines, ReadFailure};
use crate::auth::TokenSet;
use crate::codec::merkle::Hash;
use crate::codec::{BlobId, SliverKind};
use crate::wire::{
    AdoptedPairs, GenerationBody, InventoryPage, NodeBlobState, ReleasedShard, RepairLine,
    RepairReport, RepairRequest, UploadId,
};

mod inventory_changes;

pub use inventory_changes::{ChangesAnswer, CheckedChanges, CHANGES_PAGE, ENTRIES_PER_REQUEST};

/// Error bodies are read up to this many bytes.
const ERROR_BODY_LIMIT: u64 = 64 << 10;
/// An adoption's answer lists a node's shards per segment: a few bytes
/// for each of its pairs of the blob.
const ADOPTION_ANSWER_LIMIT: u64 = 16 << 20;
/// A blob's state answer: markers and a line per shard.
const STATE_LIMIT: u64 = 1 << 20;
/// One line of a repair's answer.
const REPAIR_LINE_LIMIT: u64 = 1 << 20;
/// Blobs asked per inventory page.
const INVENTORY_PAGE: usize = 1000;
/// The most blobs one node's inventory may list by default. The control
/// loop holds a page per node at a time, so this bounds how long a node
/// listing made-up blobs can keep the loop reading, not its memory.
pub const DEFAULT_MAX_INVENTORY_BLOBS: usize = 2_000_000;

/// An inventory page whose blob ids parsed and follow, in increasing
/// order, the blob it was asked after.
#[derive(Debug, Clone)]
pub struct CheckedPage {
    /// The page.
    pub page: InventoryPage,
    /// Its blobs' ids, in the page's order.
    pub ids: Vec<BlobId>,
}

/// Checks a page asked for after `after`: at most a page of blobs, in
/// increasing id order after `after`, and a `next` that names its last
/// blob. Returns the parsed ids, or why the page is garbled.
fn check_page(page: &InventoryPage, after: Option<BlobId>) -> Result<Vec<BlobId>, String> {
    if page.blobs.len() > INVENTORY_PAGE {
        return Err(format!(
            "{} blobs on a page of at most {INVENTORY_PAGE}",
            page.blobs.len()
        ));
    }
    let mut ids: Vec<BlobId> = Vec::with_capacity(page.blobs.len());
    for blob in &page.blobs {
        let id: BlobId = blob
            .id
            .parse()
            .map_err(|_| format!("{:?} is not a blob id", blob.id))?;
        if ids.last().copied().or(after).is_some_and(|l| id <= l) {
            return Err("blobs out of order".into());
        }
        ids.push(id);
    }
    if let Some(next) = &page.next {
        if page.blobs.last().map(|b| &b.id) != Some(next) {
            return Err("next does not name the page's last blob".into());
        }
    }
    Ok(ids)
}

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

/// The HTTP client of node calls.
fn node_http(deadlines: Deadlines) -> reqwest::Client {
    crate::http::client_builder()
        .connect_timeout(deadlines.call)
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("HTTP client")
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
    /// The most blobs one node's whole inventory may list: a node that
    /// lists more (a liar answering an endless chain of pages) is cut.
    pub max_inventory_blobs: usize,
}

impl NodeCalls {
    /// Calls with `token` and `deadlines` over a new HTTP client.
    pub fn new(token: Arc<TokenSet>, deadlines: Deadlines) -> Self {
        Self {
            http: node_http(deadlines),
            token,
            deadlines,
            max_inventory_blobs: DEFAULT_MAX_INVENTORY_BLOBS,
        }
    }

    /// The same calls checking nodes that serve TLS against `ca`, the
    /// fleet's own CA, whose file is read again when it changes.
    pub fn trusting(self, ca: Option<&crate::tls::TrustedCa>) -> Self {
        match ca {
            Some(ca) => self.with_fleet_trust(&crate::tls::FleetTrust::watching(
                ca,
                crate::tls::TLS_RELOAD_PERIOD,
            )),
            None => self,
        }
    }

    /// The same calls over a client that checks nodes serving TLS against
    /// `trust`, a CA that may be set later (the operator's, per cluster).
    pub fn with_fleet_trust(mut self, trust: &Arc<crate::tls::FleetTrust>) -> Self {
        self.http = crate::http::client_builder()
            .tls_backend_preconfigured(trust.client_config())
            .connect_timeout(self.deadlines.call)
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        self
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

    /// The end of a small call started now: the call deadline.
    fn call_deadline(&self) -> Instant {
        Instant::now() + self.calls.deadlines.call
    }

    /// Sends a request whose answer headers must come before `until`.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &'static str,
        until: Instant,
    ) -> Result<reqwest::Response, NodeCallError> {
        match tokio::time::timeout_at(until, request.send()).await {
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

    /// An error status as a `Status` error (its message read, capped,
    /// before `until`).
    async fn check(
        &self,
        response: reqwest::Response,
        what: &'static str,
        until: Instant,
    ) -> Result<reqwest::Response, NodeCallError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body =
            deadline::read_capped(response, ERROR_BODY_LIMIT, self.calls.deadlines.call, until)
                .await
                .map_err(self.failure(what))?;
        let body = String::from_utf8_lossy(&body).to_string();
        let message = crate::api_error::message_of(body);
        Err(NodeCallError::Status {
            url: self.base.clone(),
            status,
            message,
        })
    }

    /// Reads a body of at most `limit` bytes, each chunk within the stall
    /// time, the whole of it before `until`.
    async fn read(
        &self,
        response: reqwest::Response,
        limit: u64,
        what: &'static str,
        until: Instant,
    ) -> Result<Vec<u8>, NodeCallError> {
        deadline::read_capped(response, limit, self.calls.deadlines.stall, until)
            .await
            .map_err(self.failure(what))
    }

    /// A download of at most `limit` bytes; the whole exchange within the
    /// call deadline plus `limit` at the slowest transfer rate.
    async fn get_bytes(
        &self,
        path: &str,
        limit: u64,
        what: &'static str,
    ) -> Result<Option<Vec<u8>>, NodeCallError> {
        let until = Instant::now() + self.calls.deadlines.transfer(limit);
        let response = self
            .send(self.request(reqwest::Method::GET, path), what, until)
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = self.check(response, what, until).await?;
        self.read(response, limit, what, until).await.map(Some)
    }

    /// A small JSON answer of at most `limit` bytes; the whole exchange
    /// within the call deadline.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        limit: u64,
        what: &'static str,
    ) -> Result<T, NodeCallError> {
        let until = self.call_deadline();
        let response = self
            .send(self.request(reqwest::Method::GET, path), what, until)
            .await?;
        let response = self.check(response, what, until).await?;
        let body = self.read(response, limit, what, until).await?;
        self.parse_json(&body, what)
    }

    /// A JSON answer's body parsed, or why it could not be.
    fn parse_json<T: serde::de::DeserializeOwned>(
        &self,
        body: &[u8],
        what: &'static str,
    ) -> Result<T, NodeCallError> {
        serde_json::from_slice(body).map_err(|e| NodeCallError::Garbled {
            url: self.base.clone(),
            what,
            reason: e.to_string(),
        })
    }

    /// Uploads `body`, watched for progress; the answer's status is checked.
    async fn put_watched(
        &self,
        path: &str,
        body: Vec<Bytes>,
        what: &'static str,
    ) -> Result<(), NodeCallError> {
        self.put_watched_answer(path, body, what, ERROR_BODY_LIMIT)
            .await
            .map(drop)
    }

    /// Uploads `body`, watched for progress; the answer's status is
    /// checked and its body (at most `limit` bytes) returned.
    async fn put_watched_answer(
        &self,
        path: &str,
        body: Vec<Bytes>,
        what: &'static str,
        limit: u64,
    ) -> Result<Vec<u8>, NodeCallError> {
        let len: usize = body.iter().map(Bytes::len).sum();
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
        // After the answer's headers, its body within the call deadline.
        let until = self.call_deadline();
        let response = self.check(response, what, until).await?;
        // The (small) success body, whole, within the deadline: a node that
        // cannot finish its answer is not counted as having taken the
        // upload (and the writer sends it nothing more).
        self.read(response, limit, what, until).await
    }

    /// Posts a JSON body; the answer's headers (and an error's body)
    /// within the call deadline.
    async fn post_json(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        what: &'static str,
    ) -> Result<reqwest::Response, NodeCallError> {
        let until = self.call_deadline();
        let response = self
            .send(
                self.request(reqwest::Method::POST, path).json(body),
                what,
                until,
            )
            .await?;
        self.check(response, what, until).await
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
            vec![Bytes::from(bytes)],
            "the metadata upload",
        )
        .await
    }

    /// Stages the write of `generation` with its metadata and adopts the
    /// pairs shipped under upload session `upload`; returns, per segment,
    /// the node's shards holding the blob's pair.
    pub async fn put_metadata_adopting(
        &self,
        id: &BlobId,
        generation: u64,
        bytes: Bytes,
        upload: &UploadId,
    ) -> Result<AdoptedPairs, NodeCallError> {
        let what = "the metadata upload";
        let answer = self
            .put_watched_answer(
                &format!("/v1/blobs/{id}/metadata?generation={generation}&upload={upload}"),
                vec![bytes],
                what,
                ADOPTION_ANSWER_LIMIT,
            )
            .await?;
        self.parse_json(&answer, what)
    }

    /// Ships both slivers of the pair `shard` holds in segment `segment`
    /// (whose root is `root`, `proof` the pair's Merkle proof under it)
    /// under upload session `upload`; `pair` is the serialized primary then
    /// secondary sliver, in pieces sent as they are.
    pub async fn put_upload_pair(
        &self,
        upload: &UploadId,
        (segment, root): (u32, &Hash),
        shard: u16,
        proof: &[Hash],
        pair: Vec<Bytes>,
    ) -> Result<(), NodeCallError> {
        self.put_watched(
            &format!(
                "/v1/uploads/{upload}/pairs/{segment}/{shard}?root={}&proof={}",
                crate::hex::encode(root),
                crate::hex::encode(proof.as_flattened())
            ),
            pair,
            "the pair upload",
        )
        .await
    }

    /// Asks the node to file into session `upload` the pairs of `shards`
    /// in segment `segment` (root `root`) another session holds; the
    /// shards it filed.
    pub async fn reuse_upload_pairs(
        &self,
        upload: &UploadId,
        (segment, root): (u32, &Hash),
        shards: &[u16],
    ) -> Result<Vec<u16>, NodeCallError> {
        let what = "the pairs an earlier upload filed";
        let path = format!(
            "/v1/uploads/{upload}/segments/{segment}/reuse?root={}",
            crate::hex::encode(root)
        );
        let body = crate::wire::ReusePairsRequest {
            shards: shards.to_vec(),
        };
        let until = self.call_deadline();
        let response = self.post_json(&path, &body, what).await?;
        // A shard number is at most 6 bytes of JSON.
        let cap = 1024 + 8 * shards.len() as u64;
        let body = self.read(response, cap, what, until).await?;
        let answer: crate::wire::ReusedPairs = self.parse_json(&body, what)?;
        if let Some(shard) = answer.filed.iter().find(|s| !shards.contains(s)) {
            return Err(NodeCallError::Garbled {
                url: self.base.clone(),
                what,
                reason: format!("shard {shard} was not asked about"),
            });
        }
        Ok(answer.filed)
    }

    /// Tells the node upload session `upload` is still in use (its TTL
    /// counts from now); `false` when the node has no such session.
    pub async fn touch_upload(&self, upload: &UploadId) -> Result<bool, NodeCallError> {
        let what = "the upload's touch";
        let until = self.call_deadline();
        let response = self
            .send(
                self.request(
                    reqwest::Method::POST,
                    &format!("/v1/uploads/{upload}/touch"),
                ),
                what,
                until,
            )
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        self.check(response, what, until).await.map(|_| true)
    }

    /// Removes upload session `upload` (its writer gave up).
    pub async fn delete_upload(&self, upload: &UploadId) -> Result<(), NodeCallError> {
        let what = "the upload's removal";
        let until = self.call_deadline();
        let response = self
            .send(
                self.request(reqwest::Method::DELETE, &format!("/v1/uploads/{upload}")),
                what,
                until,
            )
            .await?;
        self.check(response, what, until).await.map(drop)
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
        let until = self.call_deadline();
        let response = self
            .send(
                self.request(
                    reqwest::Method::DELETE,
                    &format!("/v1/blobs/{id}?generation={generation}"),
                ),
                "the delete",
                until,
            )
            .await?;
        self.check(response, "the delete", until).await.map(drop)
    }

    /// Releases the node's pairs of `shard` of a blob, a shard it no longer
    /// owns; returns the bytes it freed. Refused (409) while it owns it.
    pub async fn release_shard(&self, id: &BlobId, shard: u16) -> Result<u64, NodeCallError> {
        let what = "the shard release";
        let until = self.call_deadline();
        let response = self
            .send(
                self.request(
                    reqwest::Method::DELETE,
                    &format!("/v1/blobs/{id}/shards/{shard}"),
                ),
                what,
                until,
            )
            .await?;
        let response = self.check(response, what, until).await?;
        let body = self.read(response, STATE_LIMIT, what, until).await?;
        self.parse_json::<ReleasedShard>(&body, what)
            .map(|r| r.released_bytes)
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
            vec![Bytes::from(bytes)],
            "the sliver upload",
        )
        .await
    }

    /// Stores both serialized slivers of `shard`'s pair in one request:
    /// `pair` is the primary sliver's bytes followed by the secondary's, in
    /// parts sent as they are.
    pub async fn put_pair(
        &self,
        id: &BlobId,
        segment: u32,
        shard: u16,
        pair: Vec<Bytes>,
    ) -> Result<(), NodeCallError> {
        self.put_watched(
            &format!("/v1/blobs/{id}/pairs/{segment}/{shard}"),
            pair,
            "the pair upload",
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

    /// The page of the node's inventory after blob `after` (from the first
    /// when `None`), checked: at most a page of blobs, each id a blob id, in
    /// increasing order after `after`, and a `next` that names its last
    /// blob. A node answering otherwise is `Garbled`.
    pub async fn inventory_after(
        &self,
        after: Option<BlobId>,
    ) -> Result<CheckedPage, NodeCallError> {
        let page = self
            .inventory(after.map(|a| a.to_string()).as_deref(), INVENTORY_PAGE)
            .await?;
        let ids = check_page(&page, after).map_err(|reason| NodeCallError::Garbled {
            url: self.base.clone(),
            what: "an inventory page",
            reason,
        })?;
        Ok(CheckedPage { page, ids })
    }

    /// Every page of the node's inventory in one page, within
    /// `Deadlines::inventory` and at most `NodeCalls::max_inventory_blobs`
    /// blobs (the control loop reads pages as it goes instead, see
    /// `control::observe`): a node answering an endless chain of pages is
    /// cut (`TimedOut` or `TooLarge`), never followed for longer or further
    /// than that.
    pub async fn full_inventory(&self) -> Result<InventoryPage, NodeCallError> {
        const WHAT: &str = "the whole inventory";
        let until = Instant::now() + self.calls.deadlines.inventory;
        match tokio::time::timeout_at(until, self.inventory_pages()).await {
            Ok(result) => result,
            Err(_) => Err(NodeCallError::TimedOut {
                url: self.base.clone(),
                what: WHAT,
            }),
        }
    }

    async fn inventory_pages(&self) -> Result<InventoryPage, NodeCallError> {
        let max = self.calls.max_inventory_blobs;
        let too_large = || NodeCallError::TooLarge {
            url: self.base.clone(),
            what: "the whole inventory",
            limit: max as u64,
        };
        let CheckedPage { mut page, mut ids } = self.inventory_after(None).await?;
        while page.next.is_some() {
            if page.blobs.len() >= max {
                return Err(too_large());
            }
            let mut more = self.inventory_after(ids.last().copied()).await?;
            ids = more.ids;
            page.blobs.append(&mut more.page.blobs);
            page.next = more.page.next;
        }
        if page.blobs.len() > max {
            return Err(too_large());
        }
        Ok(page)
    }

    /// Asks the node to rebuild its sliver pairs of a blob. The node
    /// answers a line per segment; a repair that answers no whole line for
    /// the repair stall time is abandoned, and one that names a segment
    /// the blob does not have or one already done is garbled (a node
    /// repeating a line would otherwise hold the repair for ever).
    pub async fn repair(&self, request: &RepairRequest) -> Result<RepairReport, NodeCallError> {
        const WHAT: &str = "the repair";
        let mut response = self.post_json("/v1/repair", request, WHAT).await?;
        let stall = self.calls.deadlines.repair_stall;
        // A whole line within the stall time: bytes that never make one
        // (a node trickling its answer) do not keep the repair alive.
        let mut line_until = Instant::now() + stall;
        let mut pending: Vec<u8> = Vec::new();
        let mut done = std::collections::HashSet::new();
        loop {
            let chunk = match tokio::time::timeout_at(line_until, response.chunk()).await {
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
                    Ok(RepairLine::Segment(segment)) => {
                        if segment >= request.segments || !done.insert(segment) {
                            return Err(NodeCallError::Garbled {
                                url: self.base.clone(),
                                what: WHAT,
                                reason: format!(
                                    "segment {segment} done again or not one of the blob's {}",
                                    request.segments
                                ),
                            });
                        }
                        line_until = Instant::now() + stall;
                    }
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
