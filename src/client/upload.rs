//! The receiving half of a write: the blob is cut into segments as it
//! arrives, each complete segment encoded once (on rayon's pool) and its
//! pairs shipped at once under an upload session on the nodes, while the
//! next segment arrives and the one after is encoded. Nothing shipped is
//! visible: the pairs wait on the nodes until `finish` (in `write`) stages
//! the metadata, which adopts them.
//!
//! Every segment held (arriving, encoded, being shipped) first reserves
//! its footprint from the process's upload memory budget, when there is
//! one, and gives it back once its pairs are shipped. At most
//! [`SEGMENTS_IN_FLIGHT`] segments are encoded or shipped at once, beside
//! the one arriving; a push waits (and its client's body is not read)
//! while they are.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::join_all;
use tokio::task::JoinHandle;

use super::blob_client::{BlobClient, BlobIoError};
use super::cpu;
use super::memory_budget::{self, segment_footprint, MemoryReservation};
use crate::codec::{encode_segment_shared, BlobEncoder, BlobLayout, EncodeError, SegmentHashes};
use crate::wire::UploadId;

/// Segments encoded or shipped at once by one upload: enough that the
/// nodes' disk writes of the first (a segment counts until its pairs are
/// fsynced) overlap the encoding and verification of the next.
pub const SEGMENTS_IN_FLIGHT: usize = 4;

/// Nodes and shards an upload stopped sending to.
#[derive(Debug, Default)]
pub(super) struct Shunned {
    /// Nodes that went silent (they get nothing more of this write).
    pub nodes: BTreeSet<String>,
    /// Shards that refused a pair (they will miss one segment anyway; the
    /// fleet loop repairs them).
    pub shards: BTreeSet<u16>,
}

/// A shipped segment: its hashes and the shards that filed their pair.
pub(super) struct ShippedSegment {
    pub hashes: SegmentHashes,
    pub filed: BTreeSet<u16>,
}

/// An upload in progress: bytes pushed in, segments encoded and shipped
/// behind them. [`BlobUpload::finish`] makes it a blob; dropping it before
/// gives the upload up (its session is removed from the nodes).
pub struct BlobUpload {
    pub(super) client: BlobClient,
    encoder: BlobEncoder,
    pub(super) session: UploadId,
    pub(super) quorum: usize,
    /// Bytes the upload says it has, when it says.
    expected: Option<u64>,
    pending: Vec<u8>,
    /// The budget reserved for the segment in `pending`.
    pending_held: MemoryReservation,
    in_flight: VecDeque<JoinHandle<Result<ShippedSegment, BlobIoError>>>,
    pub(super) shipped: Vec<ShippedSegment>,
    pub(super) shunned: Arc<Mutex<Shunned>>,
    total: u64,
    /// Set once the upload became a blob or gave up on its own terms.
    pub(super) settled: bool,
    /// When the nodes last had news of the session: a segment launched,
    /// or a touch.
    last_touched: Instant,
}

impl BlobClient {
    /// Starts an upload: push its bytes, then finish it.
    pub fn upload(&self) -> Result<BlobUpload, BlobIoError> {
        let encoder =
            BlobEncoder::new(self.config()?, self.map.segment_size).map_err(EncodeError::from)?;
        Ok(BlobUpload {
            client: self.clone(),
            encoder,
            session: UploadId::random(),
            quorum: self.quorum()?,
            expected: None,
            pending: Vec::new(),
            pending_held: MemoryReservation::default(),
            in_flight: VecDeque::new(),
            shipped: Vec::new(),
            // Nodes lately silent get nothing of this write from the
            // start (their shards are repaired later), rather than cost
            // its first segment a deadline.
            shunned: Arc::new(Mutex::new(Shunned {
                nodes: self.passed_over(),
                shards: BTreeSet::new(),
            })),
            total: 0,
            settled: false,
            last_touched: Instant::now(),
        })
    }
}

impl BlobUpload {
    /// Tells how many bytes the upload declares, so that a short blob
    /// reserves only what it needs.
    pub fn expect_len(&mut self, len: Option<u64>) {
        self.expected = len;
    }

    /// Bytes pushed so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Takes the next bytes of the upload. A segment is encoded and
    /// shipped once a byte past it arrives (until then it may be the
    /// last); this waits while [`SEGMENTS_IN_FLIGHT`] are, and fails as
    /// soon as a shipped segment reached fewer than n - f shards.
    pub async fn push(&mut self, mut chunk: &[u8]) -> Result<(), BlobIoError> {
        let segment_size = self.encoder.segment_size() as usize;
        while !chunk.is_empty() {
            if self.pending.len() == segment_size {
                self.launch_pending().await?;
            }
            if self.pending.is_empty() {
                self.start_segment().await;
            }
            let take = (segment_size - self.pending.len()).min(chunk.len());
            self.pending.extend_from_slice(&chunk[..take]);
            self.total += take as u64;
            chunk = &chunk[take..];
        }
        self.keep_session_alive();
        Ok(())
    }

    /// While a segment is long arriving (a slow client), tells the nodes
    /// every `session_touch_every` that the session is still in use, in
    /// the background, so that their staged-write TTL does not collect the
    /// pairs shipped before under the writer.
    fn keep_session_alive(&mut self) {
        if self.last_touched.elapsed() < self.client.session_touch_every {
            return;
        }
        self.last_touched = Instant::now();
        if self.shipped.is_empty() && self.in_flight.is_empty() {
            return;
        }
        let (client, session, shunned) = (self.client.clone(), self.session, self.shunned.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let silent = shunned.lock().expect("not poisoned").nodes.clone();
                client.touch_session(&session, &silent).await;
            });
        }
    }

    /// Reserves the budget for the segment starting at `self.total` and
    /// makes room for its bytes at once (no regrowing).
    async fn start_segment(&mut self) {
        let segment_size = self.encoder.segment_size();
        let len = match self.expected {
            Some(expected) if expected > self.total => (expected - self.total).min(segment_size),
            _ => segment_size,
        };
        let config = self.encoder.config();
        self.pending_held =
            memory_budget::reserve(self.client.memory.as_ref(), segment_footprint(&config, len))
                .await;
        self.pending = Vec::with_capacity(len as usize);
    }

    /// The blob's layout so far (an error once it is too large).
    pub(super) fn layout(&self) -> Result<BlobLayout, BlobIoError> {
        BlobLayout::new(
            self.encoder.config(),
            self.encoder.segment_size(),
            self.total,
        )
        .map_err(|e| BlobIoError::Encode(EncodeError::Config(e)))
    }

    /// Sends the segment in `pending` on its way: encoded, then shipped,
    /// holding its reservation until it is.
    pub(super) async fn launch_pending(&mut self) -> Result<(), BlobIoError> {
        // Refuse a too-large blob before spending work on its segment.
        self.layout()?;
        while self.in_flight.len() >= SEGMENTS_IN_FLIGHT {
            self.collect_oldest().await?;
        }
        let index = (self.shipped.len() + self.in_flight.len()) as u32;
        self.last_touched = Instant::now();
        let data = Bytes::from(std::mem::take(&mut self.pending));
        let held = std::mem::take(&mut self.pending_held);
        let client = self.client.clone();
        let (session, shunned) = (self.session, self.shunned.clone());
        let config = self.encoder.config();
        self.in_flight.push_back(tokio::spawn(async move {
            let metrics = client.metrics.clone();
            let segment = cpu::run(move || {
                let start = Instant::now();
                let segment = encode_segment_shared(config, index, data);
                if let Some(m) = &metrics {
                    m.encode_duration.observe(start.elapsed().as_secs_f64());
                }
                segment
            })
            .await?;
            let hashes = segment.hashes.clone();
            let filed = client.ship_to_session(&session, segment, &shunned).await;
            drop(held);
            Ok(ShippedSegment { hashes, filed })
        }));
        Ok(())
    }

    /// Waits for the oldest segment in flight; an error when it reached
    /// fewer than n - f shards (the upload cannot succeed any more).
    async fn collect_oldest(&mut self) -> Result<(), BlobIoError> {
        let Some(task) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let shipped = task
            .await
            .map_err(|e| BlobIoError::Io(std::io::Error::other(e)))??;
        let segment = self.shipped.len() as u32;
        if shipped.filed.len() < self.quorum {
            return Err(BlobIoError::NotDurable {
                segment,
                acknowledged: shipped.filed.len(),
                needed: self.quorum,
            });
        }
        self.shipped.push(shipped);
        Ok(())
    }

    /// Goes back to `kept` bytes, or to the start of the segment still
    /// arriving when that is later (the segments before it are encoded and
    /// on their way): the bytes of that segment past it are forgotten, and
    /// its memory given back when none of it stays. Returns its length then.
    pub fn cut_back_to(&mut self, kept: u64) -> u64 {
        let arriving_from = self.total - self.pending.len() as u64;
        let keep = kept.clamp(arriving_from, self.total);
        self.pending.truncate((keep - arriving_from) as usize);
        self.total = keep;
        if self.pending.is_empty() {
            self.pending = Vec::new();
            self.pending_held = MemoryReservation::default();
        }
        self.total
    }

    /// Ships the last segment and waits for every segment in flight.
    pub(super) async fn ship_the_rest(&mut self) -> Result<(), BlobIoError> {
        // `push` leaves the last segment in `pending` (empty only for an
        // empty blob); after `cut_back_to` at a segment boundary
        // the last one is shipped already.
        if !self.pending.is_empty() || self.total == 0 {
            self.launch_pending().await?;
        }
        while !self.in_flight.is_empty() {
            self.collect_oldest().await?;
        }
        Ok(())
    }

    /// Gives the upload up because its client went away: the pairs filed
    /// stay under the session for `kept`, for a retry of the same bytes to
    /// reuse (`client/ship.rs`), and then go.
    pub fn give_up_after(mut self, kept: std::time::Duration) {
        self.settled = true;
        self.remove_session_after(kept);
    }

    /// Removes the session from every node (best effort, in the
    /// background) once the segments in flight have landed: a pair still
    /// on its way when the session is removed would be filed after it, and
    /// wait for the TTL.
    fn give_up(&mut self) {
        self.remove_session_after(std::time::Duration::ZERO);
    }

    /// Removes the session from every node, in the background, `after`
    /// the segments in flight have landed.
    fn remove_session_after(&mut self, after: std::time::Duration) {
        if self.in_flight.is_empty() && self.shipped.is_empty() {
            // Nothing was shipped under it: no node has the session.
            return;
        }
        let in_flight: Vec<_> = self.in_flight.drain(..).collect();
        let (client, session, shunned) = (self.client.clone(), self.session, self.shunned.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for task in in_flight {
                    let _ = task.await;
                }
                tokio::time::sleep(after).await;
                let silent = shunned.lock().expect("not poisoned").nodes.clone();
                client.remove_session(&session, &silent).await;
            });
        }
    }
}

impl Drop for BlobUpload {
    fn drop(&mut self) {
        if !self.settled {
            self.give_up();
        }
    }
}

impl BlobClient {
    /// Best effort: tells every holder not among `silent` that an upload
    /// session is still in use.
    pub(super) async fn touch_session(&self, session: &UploadId, silent: &BTreeSet<String>) {
        join_all(self.answering(silent).map(|node| {
            let call = self.client(node);
            async move {
                match call.touch_upload(session).await {
                    Ok(true) => {}
                    // It never got a pair, or lost the session (the
                    // finish will say whether enough others hold it).
                    Ok(false) => tracing::debug!(node = %node.name, "no upload {session} to touch"),
                    Err(e) => tracing::debug!(node = %node.name, "touching upload {session}: {e}"),
                }
            }
        }))
        .await;
    }

    /// Best effort: removes an upload session from every holder not
    /// among `silent`.
    pub(super) async fn remove_session(&self, session: &UploadId, silent: &BTreeSet<String>) {
        join_all(self.answering(silent).map(|node| {
            let call = self.client(node);
            async move {
                if let Err(e) = call.delete_upload(session).await {
                    tracing::debug!(node = %node.name, "removing upload {session}: {e}");
                }
            }
        }))
        .await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An upload for a fleet of four nodes nobody listens on (1 MiB
    /// segments): enough for what stays in the gateway.
    pub(crate) fn offline_upload() -> BlobUpload {
        let urls = vec!["http://127.0.0.1:9".to_string(); 4];
        super::super::test_fleet::client_of(4, urls, 1.0)
            .upload()
            .unwrap()
    }

    /// A node taking every pair shipped under a session and recording the
    /// sessions touched (`touch U`) and removed (`delete U`); its URL and
    /// those calls.
    async fn session_node() -> (String, Arc<Mutex<Vec<String>>>) {
        use axum::routing::{delete, post, put};
        let touched: Arc<Mutex<Vec<String>>> = Default::default();
        let (seen, removed) = (touched.clone(), touched.clone());
        let app = axum::Router::new()
            .route(
                "/v1/uploads/{upload}/segments/{segment}/reuse",
                post(|| async { axum::Json(serde_json::json!({"filed": []})) }),
            )
            .route(
                "/v1/uploads/{upload}/pairs/{segment}/{shard}",
                put(|_: axum::body::Bytes| async { axum::http::StatusCode::NO_CONTENT }),
            )
            .route(
                "/v1/uploads/{upload}/touch",
                post(
                    move |axum::extract::Path(upload): axum::extract::Path<String>| {
                        seen.lock().unwrap().push(format!("touch {upload}"));
                        async { axum::http::StatusCode::NO_CONTENT }
                    },
                ),
            )
            .route(
                "/v1/uploads/{upload}",
                delete(
                    move |axum::extract::Path(upload): axum::extract::Path<String>| {
                        removed.lock().unwrap().push(format!("delete {upload}"));
                        async { axum::http::StatusCode::NO_CONTENT }
                    },
                ),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, touched)
    }

    #[tokio::test]
    async fn a_segment_long_arriving_keeps_its_session_alive_on_the_nodes_once_pairs_are_there() {
        let mut urls = Vec::new();
        let mut touches = Vec::new();
        for _ in 0..4 {
            let (url, touched) = session_node().await;
            urls.push(url);
            touches.push(touched);
        }
        let every = std::time::Duration::from_millis(200);
        let client =
            super::super::test_fleet::client_of(4, urls, 5.0).with_session_touch_every(every);
        let calls = || {
            touches
                .iter()
                .map(|t| t.lock().unwrap().len())
                .collect::<Vec<_>>()
        };

        // Slow from the start: nothing is on the nodes, nothing to touch,
        // and given up, nothing to remove.
        let mut upload = client.upload().unwrap();
        upload.push(&[1; 100]).await.unwrap();
        tokio::time::sleep(2 * every).await;
        upload.push(&[1; 100]).await.unwrap();
        tokio::time::sleep(every).await;
        assert_eq!(calls(), vec![0; 4]);
        drop(upload);
        tokio::time::sleep(every).await;
        assert_eq!(calls(), vec![0; 4]);

        let mut upload = client.upload().unwrap();

        // A segment shipped, then the next one trickles in.
        upload.push(&vec![2; 1 << 20]).await.unwrap();
        upload.collect_oldest().await.unwrap();
        for _ in 0..3 {
            tokio::time::sleep(2 * every).await;
            upload.push(&[3; 10]).await.unwrap();
        }
        tokio::time::sleep(every).await;
        let session = upload.session;
        for (node, touched) in touches.iter().enumerate() {
            let touched = touched.lock().unwrap().clone();
            assert!(touched.len() >= 2, "node-{node}: {touched:?}");
            assert!(touched.iter().all(|t| *t == format!("touch {session}")));
        }
        // Given up now, its session goes from every node.
        drop(upload);
        tokio::time::sleep(every).await;
        for touched in &touches {
            let last = touched.lock().unwrap().last().cloned();
            assert_eq!(last, Some(format!("delete {session}")));
        }
    }

    #[tokio::test]
    async fn a_cut_goes_back_no_further_than_asked_and_frees_the_segment_only_when_emptied() {
        let mut upload = offline_upload();
        upload.push(&[1; 300]).await.unwrap();
        upload.push(&[2; 400]).await.unwrap();
        assert_eq!(upload.cut_back_to(300), 300, "the first push's bytes stay");
        assert_eq!(upload.pending, vec![1; 300]);
        assert_eq!(upload.cut_back_to(500), 300, "never forward");
        assert_eq!(upload.cut_back_to(0), 0);
        assert!(upload.pending.is_empty() && upload.pending.capacity() == 0);
        upload.push(&[3; 10]).await.unwrap();
        assert_eq!(upload.len(), 10, "it goes on from there");
    }
}
