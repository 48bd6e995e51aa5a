//! The S3 front's shared state and the steps every operation builds on:
//! storing spooled bytes as a blob and referring to it in the index (again
//! when the blob was being collected), reading a byte range of an object
//! across its blobs, and turning index and fleet errors into S3 errors.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use s3s::dto::{ETag, Timestamp};
use s3s::{s3_error, S3Error, S3Result};
use tokio_stream::wrappers::ReceiverStream;

use super::body::Received;
use super::index::{Index, IndexError, WriteTicket};
use super::records::{BlobPart, ObjectRecord};
use crate::client::BlobIoError;
use crate::gateway::Door;
use crate::metrics::S3Metrics;

/// How long a writer waits for the collector to finish with a blob it
/// wants to refer to again.
const COLLECTION_WAIT: Duration = Duration::from_secs(60);

/// What storing received bytes came to.
enum Storing {
    /// Stored: the part of an object it is, and the ticket its reference
    /// must show.
    Stored(BlobPart, WriteTicket),
    /// The blob is being collected; nothing was written.
    BlobCollecting(String),
}

/// The S3 front: the gateway's door to the fleet and the index.
#[derive(Clone)]
pub struct Front {
    /// The gateway it serves beside.
    pub door: Door,
    /// The index of buckets, keys and uploads.
    pub index: Arc<Index>,
    /// Its metrics.
    pub metrics: S3Metrics,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A time of the index as an S3 timestamp (whole seconds, as HTTP dates
/// carry them, so conditional requests compare equal).
pub fn timestamp(ms: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_secs(ms / 1000))
}

/// An ETag of the index (unquoted) as S3 sends it.
pub fn etag(value: &str) -> ETag {
    ETag::Strong(value.to_string())
}

/// An index error as S3 says it.
pub fn index_error(e: IndexError) -> S3Error {
    match e {
        IndexError::NoSuchBucket(b) => s3_error!(NoSuchBucket, "the bucket {b} does not exist"),
        IndexError::BucketExists(b) => {
            s3_error!(BucketAlreadyOwnedByYou, "you already own the bucket {b}")
        }
        IndexError::BucketNotEmpty(b) => s3_error!(BucketNotEmpty, "the bucket {b} is not empty"),
        IndexError::NoSuchUpload(u) => s3_error!(NoSuchUpload, "no multipart upload {u}"),
        IndexError::PreconditionFailed(m) => s3_error!(PreconditionFailed, "{m}"),
        IndexError::Assemble(a) => match a {
            super::assemble::AssembleError::Order(_) => s3_error!(InvalidPartOrder, "{a}"),
            super::assemble::AssembleError::TooSmall { .. } => s3_error!(EntityTooSmall, "{a}"),
            super::assemble::AssembleError::NoParts => s3_error!(MalformedXML, "{a}"),
            super::assemble::AssembleError::Part(_) => s3_error!(InvalidPart, "{a}"),
        },
        IndexError::Collecting(b) => {
            s3_error!(SlowDown, "blob {b} is being collected; retry shortly")
        }
        IndexError::Store(m) => s3_error!(InternalError, "the index failed: {m}"),
    }
}

/// A fleet error as S3 says it.
pub fn fleet_error(e: BlobIoError) -> S3Error {
    match e {
        BlobIoError::NotFound(id) => s3_error!(
            InternalError,
            "blob {id} of this object is not in the fleet (deleted through the native API?)"
        ),
        BlobIoError::Encode(crate::codec::EncodeError::Config(_)) => {
            s3_error!(EntityTooLarge, "{e}")
        }
        BlobIoError::Io(_) | BlobIoError::Inconsistent(_) | BlobIoError::Announce(_) => {
            s3_error!(InternalError, "{e}")
        }
        BlobIoError::ReadsBusy { .. } => s3_error!(SlowDown, "{e}"),
        _ => s3_error!(ServiceUnavailable, "{e}"),
    }
}

/// Runs blocking index work off the async threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, IndexError> + Send + 'static,
) -> S3Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| s3_error!(InternalError, "index task failed: {e}"))?
        .map_err(index_error)
}

impl Front {
    /// One of the gateway's bounded upload slots, or SlowDown (503).
    pub async fn upload_slot(&self) -> S3Result<crate::gateway::upload_slots::UploadSlot> {
        self.door.upload_slot().await.ok_or_else(|| {
            s3_error!(
                SlowDown,
                "the gateway is handling its limit of uploads; retry shortly"
            )
        })
    }

    /// Stores received bytes as a blob nothing refers to yet, or finds it
    /// being collected (nothing is written then).
    async fn store(&self, received: &mut Received) -> S3Result<Storing> {
        let client = self
            .door
            .client()
            .map_err(|e| s3_error!(ServiceUnavailable, "{e}"))?;
        let path: PathBuf = received
            .file
            .finish()
            .await
            .map_err(|e| s3_error!(InternalError, "{e}"))?
            .to_path_buf();
        // The index knows the blob before it is committed: a gateway killed
        // before the record is written leaves a blob the collector finds.
        // Bytes the fleet already held, stored outside S3, are noted so:
        // S3 never collects them.
        let index = self.index.clone();
        let checker = client.clone();
        let noted = Arc::new(std::sync::Mutex::new(None));
        let announced = noted.clone();
        let outcome = client
            .write_file_announced(&path, |id| async move {
                let now = now_ms();
                let blob = id.to_string();
                let known = {
                    let (index, blob) = (index.clone(), blob.clone());
                    tokio::task::spawn_blocking(move || index.knows(&blob))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?
                };
                // Unsure (too few nodes answered) counts as stored outside:
                // S3 may keep bytes it could collect, never delete another's.
                let stored_outside = !known && checker.may_hold(&id).await;
                let note = tokio::task::spawn_blocking(move || {
                    index.note_write(&blob, now, stored_outside)
                })
                .await
                .map_err(|e| e.to_string())?;
                let said = note.as_ref().map(drop).map_err(|e| e.to_string());
                *announced.lock().expect("not poisoned") = Some(note);
                said
            })
            .await;
        let noted = noted.lock().expect("not poisoned").take();
        let (outcome, ticket) = match (outcome, noted) {
            (Ok(outcome), Some(Ok(ticket))) => (outcome, ticket),
            (Err(_), Some(Err(IndexError::Collecting(blob)))) => {
                return Ok(Storing::BlobCollecting(blob))
            }
            (Ok(_), _) => return Err(s3_error!(InternalError, "a write was never announced")),
            (Err(e), _) => return Err(fleet_error(e)),
        };
        if !outcome.visible_to_every_read() {
            // Decided and durable, but a read may not see it until the
            // fleet carries the commit on: a key must not point at it
            // before then (S3 promises read-after-write). The blob stays
            // noted unreferenced: a retry refers to it, else it is
            // collected.
            return Err(s3_error!(
                ServiceUnavailable,
                "the commit reached {} of the {} shards every read needs; retry",
                outcome.committed,
                outcome.quorum
            ));
        }
        self.door.metrics().put_bytes.inc_by(received.len);
        Ok(Storing::Stored(
            BlobPart {
                blob: outcome.metadata.blob_id().to_string(),
                size: received.len,
            },
            ticket,
        ))
    }

    /// Stores received bytes and refers to them with `refer` (an index
    /// write that shows the ticket of the write). When the blob is being
    /// collected meanwhile, waits for the collection to end and stores the
    /// bytes again; when `refer` fails otherwise, the blob is left for the
    /// collector.
    pub async fn store_and_refer<T: Send + 'static>(
        &self,
        received: &mut Received,
        refer: impl Fn(BlobPart, &WriteTicket) -> Result<T, IndexError> + Send + Sync + Clone + 'static,
    ) -> S3Result<T> {
        let started = std::time::Instant::now();
        loop {
            let (part, ticket) = match self.store(received).await? {
                Storing::Stored(part, ticket) => (part, ticket),
                Storing::BlobCollecting(blob) => {
                    self.wait_for_collection(&blob, started).await?;
                    continue;
                }
            };
            let index = self.index.clone();
            let blob = part.blob.clone();
            let attempt = {
                let refer = refer.clone();
                tokio::task::spawn_blocking(move || refer(part, &ticket))
                    .await
                    .map_err(|e| s3_error!(InternalError, "index task failed: {e}"))?
            };
            match attempt {
                Ok(value) => return Ok(value),
                Err(IndexError::Collecting(_)) => {
                    self.wait_for_collection(&blob, started).await?;
                }
                Err(e) => {
                    let now = now_ms();
                    blocking(move || index.note_unreferenced(&blob, now)).await?;
                    return Err(index_error(e));
                }
            }
        }
    }

    /// Waits while `blob` is being collected (SlowDown once a writer that
    /// began at `started` waited `COLLECTION_WAIT`).
    async fn wait_for_collection(&self, blob: &str, started: std::time::Instant) -> S3Result<()> {
        loop {
            if started.elapsed() > COLLECTION_WAIT {
                return Err(s3_error!(SlowDown, "blob {blob} is being collected"));
            }
            let (index, asked) = (self.index.clone(), blob.to_string());
            if !blocking(move || index.refs(&asked)).await?.collecting {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Streams bytes `range` of an object, blob by blob; the first touched
    /// segment is read before the stream is handed out.
    pub async fn read(
        &self,
        record: &ObjectRecord,
        range: Range<u64>,
    ) -> S3Result<ReceiverStream<Result<Bytes, std::io::Error>>> {
        let client = self
            .door
            .client()
            .map_err(|e| s3_error!(ServiceUnavailable, "{e}"))?;
        let mut pieces = Vec::new();
        let mut offset = 0;
        for part in &record.parts {
            let span = offset..offset + part.size;
            offset += part.size;
            let start = range.start.max(span.start);
            let end = range.end.min(span.end);
            if start < end {
                pieces.push((part.blob.clone(), start - span.start..end - span.start));
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
        let metrics = self.door.metrics().clone();
        // The read of each piece after the first continues the object's:
        // it waits for the read budget rather than fail midway.
        let continuing = client.clone().continuing_read();
        let open = move |client: crate::client::BlobClient, blob: String, within: Range<u64>| {
            let metrics = metrics.clone();
            async move {
                let id = blob.parse().map_err(|_| {
                    s3_error!(InternalError, "the index holds a bad blob id {blob}")
                })?;
                let metadata = client.visible(&id).await.map_err(fleet_error)?.metadata;
                client
                    .read_range(metadata, within, move |n| metrics.get_bytes.inc_by(n))
                    .await
                    .map_err(fleet_error)
            }
        };
        let mut pieces = pieces.into_iter();
        let Some((blob, within)) = pieces.next() else {
            return Ok(ReceiverStream::new(rx));
        };
        let first = open(client, blob, within).await?;
        tokio::spawn(async move {
            let mut stream = first;
            loop {
                use futures_util::StreamExt as _;
                while let Some(chunk) = stream.next().await {
                    let failed = chunk.is_err();
                    if tx.send(chunk).await.is_err() || failed {
                        return;
                    }
                }
                let Some((blob, within)) = pieces.next() else {
                    return;
                };
                match open(continuing.clone(), blob, within).await {
                    Ok(next) => stream = next,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}
