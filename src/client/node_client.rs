//! HTTP client of one storage node's API.

use reqwest::StatusCode;
use thiserror::Error;

use crate::codec::{BlobId, SliverKind};
use crate::wire::{InventoryPage, RepairReport, RepairRequest};

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
}

impl NodeCallError {
    /// The status code, when the node answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            NodeCallError::Status { status, .. } => Some(*status),
            NodeCallError::Unreachable { .. } => None,
        }
    }
}

/// A client of one node.
#[derive(Debug, Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    base: String,
}

impl NodeClient {
    /// A client of the node at `base` (e.g. `http://127.0.0.1:4000`).
    pub fn new(http: reqwest::Client, base: impl Into<String>) -> Self {
        Self {
            http,
            base: base.into().trim_end_matches('/').to_string(),
        }
    }

    /// The node's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn unreachable(&self) -> impl FnOnce(reqwest::Error) -> NodeCallError + '_ {
        move |source| NodeCallError::Unreachable {
            url: self.base.clone(),
            source,
        }
    }

    async fn check(&self, response: reqwest::Response) -> Result<reqwest::Response, NodeCallError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
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

    async fn get_bytes(&self, url: String) -> Result<Option<Vec<u8>>, NodeCallError> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(self.unreachable())?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = self.check(response).await?;
        let bytes = response.bytes().await.map_err(self.unreachable())?;
        Ok(Some(bytes.to_vec()))
    }

    async fn put_bytes(&self, url: String, body: Vec<u8>) -> Result<(), NodeCallError> {
        let response = self
            .http
            .put(url)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(self.unreachable())?;
        self.check(response).await.map(drop)
    }

    fn sliver_url(&self, id: &BlobId, segment: u32, shard: u16, kind: SliverKind) -> String {
        format!(
            "{}/v1/blobs/{id}/slivers/{segment}/{shard}/{kind}",
            self.base
        )
    }

    /// Stores a blob's serialized metadata.
    pub async fn put_metadata(&self, id: &BlobId, bytes: Vec<u8>) -> Result<(), NodeCallError> {
        self.put_bytes(format!("{}/v1/blobs/{id}/metadata", self.base), bytes)
            .await
    }

    /// A blob's serialized metadata, if the node has it.
    pub async fn metadata(&self, id: &BlobId) -> Result<Option<Vec<u8>>, NodeCallError> {
        self.get_bytes(format!("{}/v1/blobs/{id}/metadata", self.base))
            .await
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
        self.put_bytes(self.sliver_url(id, segment, shard, kind), bytes)
            .await
    }

    /// A serialized sliver of `shard`, if the node has it.
    pub async fn sliver(
        &self,
        id: &BlobId,
        segment: u32,
        shard: u16,
        kind: SliverKind,
    ) -> Result<Option<Vec<u8>>, NodeCallError> {
        self.get_bytes(self.sliver_url(id, segment, shard, kind))
            .await
    }

    /// A serialized recovery symbol from the node's `kind` sliver of
    /// `shard`, for rebuilding the other-axis sliver of `target_shard`.
    pub async fn symbol(
        &self,
        id: &BlobId,
        segment: u32,
        shard: u16,
        kind: SliverKind,
        target_shard: u16,
    ) -> Result<Option<Vec<u8>>, NodeCallError> {
        self.get_bytes(format!(
            "{}/v1/blobs/{id}/symbols/{segment}/{shard}/{kind}?target_shard={target_shard}",
            self.base
        ))
        .await
    }

    /// One page of the node's inventory.
    pub async fn inventory(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<InventoryPage, NodeCallError> {
        let mut url = format!("{}/v1/inventory?limit={limit}", self.base);
        if let Some(after) = after {
            // Blob ids are URL-safe base64: no escaping needed.
            url.push_str(&format!("&after={after}"));
        }
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(self.unreachable())?;
        let response = self.check(response).await?;
        response.json().await.map_err(self.unreachable())
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

    /// Deletes a blob; false when the node did not have it.
    pub async fn delete(&self, id: &BlobId) -> Result<bool, NodeCallError> {
        let response = self
            .http
            .delete(format!("{}/v1/blobs/{id}", self.base))
            .send()
            .await
            .map_err(self.unreachable())?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        self.check(response).await.map(|_| true)
    }

    /// Asks the node to rebuild its sliver pairs of a blob.
    pub async fn repair(&self, request: &RepairRequest) -> Result<RepairReport, NodeCallError> {
        let response = self
            .http
            .post(format!("{}/v1/repair", self.base))
            .json(request)
            .send()
            .await
            .map_err(self.unreachable())?;
        let response = self.check(response).await?;
        response.json().await.map_err(self.unreachable())
    }

    /// Whether the node answers its readiness probe.
    pub async fn ready(&self) -> bool {
        match self.http.get(format!("{}/readyz", self.base)).send().await {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }
}
