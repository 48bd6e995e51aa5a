//! The gateway's handlers, its credential check and its request metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;

use super::byte_range::{content_range, parse_range, RangeRequest};
use super::GatewayState;
use crate::api_error::ApiError;
use crate::client::{BlobIoError, DeleteOutcome};
use crate::codec::BlobId;
use crate::s3::index::DeleteClaim;
use crate::wire::StoredBlob;

/// Seconds a client is told to wait when every upload slot is taken.
const RETRY_AFTER_SECS: u32 = 1;

pub(super) async fn track(
    State(state): State<Arc<GatewayState>>,
    request: Request,
    next: Next,
) -> Response {
    let op = match (request.method().as_str(), request.uri().path()) {
        ("PUT" | "POST", "/v1/blobs") => "put",
        ("POST", path) if path.starts_with("/v1/uploads/") && path.ends_with("/finish") => "put",
        (_, path) if path.starts_with("/v1/uploads") => "upload",
        ("GET", path) if path.starts_with("/v1/blobs/") => "get",
        ("HEAD", _) => "head",
        ("DELETE", _) => "delete",
        _ => "other",
    };
    let start = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .request_duration
        .with_label_values(&[op])
        .observe(start.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .with_label_values(&[op, response.status().as_str()])
        .inc();
    response
}

/// Writes need a user token; reads and status too unless anonymous reads
/// are allowed; probes and metrics never.
pub(super) async fn authorize(
    State(state): State<Arc<GatewayState>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    // Anonymous reads are of blobs; an upload's progress is its writer's.
    let open = crate::auth::is_open_route(path)
        || (read && state.anonymous_reads && !path.starts_with("/v1/uploads"));
    if !open {
        if let Some(refused) = crate::auth::refusal(&state.user_tokens, request.headers(), "user") {
            return refused;
        }
    }
    next.run(request).await
}

pub(super) async fn readyz(
    State(state): State<Arc<GatewayState>>,
) -> Result<&'static str, ApiError> {
    state.client().map(|_| "ready")
}

pub(super) async fn metrics_text(State(state): State<Arc<GatewayState>>) -> impl IntoResponse {
    state
        .metrics
        .uploads_in_flight
        .set(state.upload_slots.in_use() as i64);
    state
        .metrics
        .uploads_waiting
        .set(state.upload_slots.waiting() as i64);
    state.metrics.uploads_open.set(state.resumable.len() as i64);
    let memory = &state.upload_memory;
    state
        .metrics
        .upload_memory_reserved
        .set(i64::try_from(memory.in_use()).unwrap_or(i64::MAX));
    state
        .metrics
        .upload_memory_budget
        .set(i64::try_from(memory.capacity()).unwrap_or(i64::MAX));
    let (reads, _) = &state.read_memory;
    state
        .metrics
        .read_memory_reserved
        .set(i64::try_from(reads.in_use()).unwrap_or(i64::MAX));
    state
        .metrics
        .read_memory_budget
        .set(i64::try_from(reads.capacity()).unwrap_or(i64::MAX));
    if let Some(map) = state.map.get() {
        state.metrics.know_nodes(&map);
    }
    let mut text = crate::metrics::render(&state.registry);
    if let Some(extra) = state.extra_metrics.read().expect("not poisoned").as_ref() {
        text.push_str(&crate::metrics::render(extra));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

pub(super) async fn status_json(
    State(state): State<Arc<GatewayState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .status
        .read()
        .expect("not poisoned")
        .clone()
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found("no fleet status is published here (it comes from `redstuff dev`)")
        })
}

pub(super) fn io_error(e: BlobIoError) -> ApiError {
    match e {
        BlobIoError::NotFound(_) => ApiError::not_found(e.to_string()),
        BlobIoError::NotDurable { .. }
        | BlobIoError::CommitRefused { .. }
        | BlobIoError::DeletedMeanwhile { .. }
        | BlobIoError::NoQuorum { .. }
        | BlobIoError::DeleteIncomplete { .. }
        | BlobIoError::Unreadable { .. }
        | BlobIoError::MetadataUnavailable { .. }
        | BlobIoError::Map(_)
        | BlobIoError::ReadsBusy { .. } => ApiError::unavailable(e.to_string()),
        BlobIoError::CommitUnknown { .. } => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string())
        }
        BlobIoError::Inconsistent(_) => ApiError::unprocessable(e.to_string()),
        BlobIoError::WrittenSince { .. } => ApiError::conflict(e.to_string()),
        BlobIoError::Encode(ref inner) => match inner {
            crate::codec::EncodeError::Config(_) => ApiError::too_large(e.to_string()),
            crate::codec::EncodeError::Io(_) => ApiError::internal(e.to_string()),
        },
        BlobIoError::Io(_) => ApiError::internal(e.to_string()),
        // Only the S3 index is told of writes: it is busy, out of reach, or
        // deleting the same bytes; the write is aborted and may be retried.
        BlobIoError::Announce(_) => ApiError::unavailable(e.to_string()),
    }
}

pub(super) fn busy(limit: usize) -> Response {
    retry_after(ApiError::unavailable(format!(
        "the gateway is handling its limit of {limit} uploads and no slot came free; retry shortly"
    )))
}

/// `error` as a response that tells the client when to retry.
pub(super) fn retry_after(error: ApiError) -> Response {
    let mut response = error.into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&RETRY_AFTER_SECS.to_string()).expect("digits"),
    );
    response
}

pub(super) async fn put_blob(
    State(state): State<Arc<GatewayState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let Some(permit) = state.upload_slots.acquire().await else {
        return Ok(busy(state.upload_slots.capacity()));
    };
    let client = state.client()?;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let too_large = || {
        ApiError::too_large(format!(
            "blob larger than the gateway's limit of {} bytes",
            state.max_blob_bytes
        ))
    };
    if declared.is_some_and(|len| len > state.max_blob_bytes) {
        return Err(too_large());
    }
    // Each segment is encoded and shipped as soon as it has arrived;
    // nothing of the body is kept on disk.
    let mut upload = client.upload().map_err(io_error)?;
    upload.expect_len(declared);
    let mut stream = request.into_body().into_data_stream();
    loop {
        let chunk = match tokio::time::timeout(state.client_stall, stream.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                // The client went away: what it sent waits for its retry.
                upload.give_up_after(state.cut_upload_kept);
                return Err(ApiError::bad_request(format!("upload interrupted: {e}")));
            }
            Err(_) => {
                // A client that sends nothing more holds its slot and
                // memory no longer than one that stops reading.
                let received = upload.len();
                upload.give_up_after(state.cut_upload_kept);
                return Err(ApiError::request_timeout(format!(
                    "upload ended after {received} bytes: its body brought nothing for {} s",
                    state.client_stall.as_secs()
                )));
            }
        };
        if upload.len() + chunk.len() as u64 > state.max_blob_bytes {
            return Err(too_large());
        }
        upload.push(&chunk).await.map_err(io_error)?;
    }
    if let Some(len) = declared {
        let received = upload.len();
        if received != len {
            upload.give_up_after(state.cut_upload_kept);
            return Err(ApiError::bad_request(format!(
                "upload ended after {received} of the {len} bytes declared"
            )));
        }
    }
    let (status, stored) = commit(&state, upload, permit).await?;
    Ok((status, Json(stored)).into_response())
}

/// Makes an upload that received all its bytes a blob, holding `permit`
/// (its upload slot) until the write ends: 201 with the stored blob once
/// it is committed on every read's quorum, 202 when fewer shards recorded
/// the commit. The write runs to its end even if the client goes away.
pub(super) async fn commit(
    state: &Arc<GatewayState>,
    upload: crate::client::BlobUpload,
    permit: super::upload_slots::UploadSlot,
) -> Result<(StatusCode, StoredBlob), ApiError> {
    let received = upload.len();
    // With S3 beside the gateway, bytes S3 knows are noted as stored
    // outside it too before they are committed, so S3's collector never
    // deletes them once its last key goes (refused while it deletes them).
    let index = state.s3_index.get().cloned();
    let note_outside = |id: BlobId| async move {
        let Some(index) = index else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || index.note_stored_outside(&id.to_string()))
            .await
            .map_err(|e| format!("index task failed: {e}"))?
            .map_err(|e| match e {
                crate::s3::index::IndexError::Collecting(_) => format!(
                    "S3 is deleting these bytes (its last key went); store them again in a moment: {e}"
                ),
                e => format!("the S3 index cannot note the bytes: {e}"),
            })
    };
    let write = tokio::spawn(async move {
        let outcome = upload.finish(note_outside).await.map_err(io_error);
        drop(permit);
        outcome
    });
    let outcome = write
        .await
        .map_err(|e| ApiError::internal(format!("upload task failed: {e}")))??;
    state.metrics.put_bytes.inc_by(received);
    let stored = StoredBlob {
        id: outcome.metadata.blob_id().to_string(),
        size: outcome.metadata.len(),
        shards_acknowledged: outcome.acknowledged.len(),
        shards_missing: outcome.missing.iter().copied().collect(),
        shards_committed: outcome.committed,
        note: (!outcome.visible_to_every_read()).then(|| {
            format!(
                "stored durably, but the commit reached {} of the {} shards every read needs: \
                 a read may answer 404 until the fleet carries the commit to the others",
                outcome.committed, outcome.quorum
            )
        }),
    };
    let status = if outcome.visible_to_every_read() {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, stored))
}

fn parse_id(text: &str) -> Result<BlobId, ApiError> {
    text.parse()
        .map_err(|e| ApiError::bad_request(format!("invalid blob id {text:?}: {e}")))
}

pub(super) async fn head_blob(
    State(state): State<Arc<GatewayState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let visible = state.client()?.visible(&id).await.map_err(io_error)?;
    Ok((
        [
            (header::CONTENT_LENGTH, visible.metadata.len().to_string()),
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::ACCEPT_RANGES, "bytes".to_string()),
        ],
        Body::empty(),
    )
        .into_response())
}

/// GET of a blob, whole or one byte range (`Range: bytes=...`, 206): only
/// the segments the range touches are read.
pub(super) async fn get_blob(
    State(state): State<Arc<GatewayState>>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let client = state.client()?;
    let metadata = client.visible(&id).await.map_err(io_error)?.metadata;
    let len = metadata.len();
    let asked = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, range) = match parse_range(asked, len) {
        RangeRequest::Whole => (StatusCode::OK, 0..len),
        RangeRequest::Part(range) => (StatusCode::PARTIAL_CONTENT, range),
        RangeRequest::Unsatisfiable => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the range {asked:?} lies outside the blob's {len} bytes"),
            )
            .into_response();
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                format!("bytes */{len}").parse().expect("ascii"),
            );
            return Ok(response);
        }
    };
    let metrics = state.metrics.clone();
    let body = match client
        .read_range(metadata, range.clone(), move |n| {
            metrics.get_bytes.inc_by(n)
        })
        .await
    {
        Ok(body) => body,
        Err(e @ BlobIoError::ReadsBusy { .. }) => return Ok(retry_after(io_error(e))),
        Err(e) => return Err(io_error(e)),
    };
    let mut response = (
        status,
        [
            (
                header::CONTENT_LENGTH,
                (range.end - range.start).to_string(),
            ),
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::ACCEPT_RANGES, "bytes".to_string()),
        ],
        Body::from_stream(body),
    )
        .into_response();
    if status == StatusCode::PARTIAL_CONTENT {
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            content_range(&range, len).parse().expect("ascii"),
        );
    }
    Ok(response)
}

/// Which of the blobs asked for S3 knows (the operator records the others
/// as uploads). 503 when no S3 front serves next to this gateway.
pub(super) async fn s3_known_blobs(
    State(state): State<Arc<GatewayState>>,
    body: axum::body::Bytes,
) -> Result<Json<crate::wire::KnownBlobs>, ApiError> {
    let asked: crate::wire::KnownBlobsRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("the body must be {{\"blobs\": [blob ids]}}: {e}"))
    })?;
    if asked.blobs.len() > crate::wire::MOST_KNOWN_BLOBS_ASKED {
        return Err(ApiError::bad_request(format!(
            "{} blobs asked for; at most {} per request",
            asked.blobs.len(),
            crate::wire::MOST_KNOWN_BLOBS_ASKED
        )));
    }
    let index = s3_index(&state)?;
    let known = on_index(move || index.known_blobs(&asked.blobs)).await?;
    Ok(Json(crate::wire::KnownBlobs { known }))
}

/// The S3 index beside this gateway, or 503.
fn s3_index(state: &GatewayState) -> Result<Arc<crate::s3::index::Index>, ApiError> {
    state
        .s3_index
        .get()
        .cloned()
        .ok_or_else(|| ApiError::unavailable("this gateway serves no S3 (yet)"))
}

/// Runs `work` on the S3 index off the async threads; its failure is 503.
async fn on_index<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::s3::index::IndexError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("index task failed: {e}")))?
        .map_err(|e| ApiError::unavailable(format!("the S3 index cannot be read: {e}")))
}

/// `POST /v1/s3/objects-of-blobs`: the keys whose objects hold any of the
/// blobs asked (a scan of every object record).
pub(super) async fn s3_objects_of_blobs(
    State(state): State<Arc<GatewayState>>,
    body: axum::body::Bytes,
) -> Result<Json<crate::wire::ObjectsOfBlobs>, ApiError> {
    use crate::wire::{
        MOST_OBJECTS_OF_BLOBS_ASKED, MOST_OBJECTS_OF_BLOBS_LISTED, OBJECTS_OF_BLOBS_SCAN_TIME,
    };
    let asked: crate::wire::ObjectsOfBlobsRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be {{\"blobs\": [blob ids], \"limit\": keys at most}}: {e}"
        ))
    })?;
    if asked.blobs.len() > MOST_OBJECTS_OF_BLOBS_ASKED {
        return Err(ApiError::bad_request(format!(
            "{} blobs asked for; at most {MOST_OBJECTS_OF_BLOBS_ASKED} per request",
            asked.blobs.len()
        )));
    }
    if !(1..=MOST_OBJECTS_OF_BLOBS_LISTED).contains(&asked.limit) {
        return Err(ApiError::bad_request(format!(
            "limit {} is out of range: 1 to {MOST_OBJECTS_OF_BLOBS_LISTED} keys",
            asked.limit
        )));
    }
    if asked.most_records == Some(0) {
        return Err(ApiError::bad_request(
            "most_records 0 reads nothing: ask for at least 1 record",
        ));
    }
    let after = match asked.after.as_deref() {
        None => None,
        Some(after) => Some(
            after
                .split_once('/')
                .map(|(bucket, key)| (bucket.to_string(), key.to_string()))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("after {after:?} is not bucket/key"))
                })?,
        ),
    };
    let index = s3_index(&state)?;
    let Ok(scan) = state.index_scan.clone().try_acquire_owned() else {
        return Err(ApiError::unavailable(
            "another scan of the S3 index runs; ask again once it ended",
        ));
    };
    let blobs = asked.blobs.into_iter().collect();
    let bound = crate::s3::index::ScanBound {
        most_records: asked.most_records,
        until: Some(std::time::Instant::now() + OBJECTS_OF_BLOBS_SCAN_TIME),
    };
    let found = on_index(move || {
        let _scan = scan;
        let after = after.as_ref().map(|(b, k)| (b.as_str(), k.as_str()));
        index.objects_of_blobs(&blobs, after, asked.limit, bound)
    })
    .await?;
    Ok(Json(found))
}

pub(super) async fn delete_blob(
    State(state): State<Arc<GatewayState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let client = state.client()?;
    let index = state.s3_index.get().cloned();
    let mut claim_token = None;
    let claimed_at = crate::s3::front::now_ms();
    if let Some(index) = &index {
        let (index, blob) = (index.clone(), id.to_string());
        let now = claimed_at;
        let claim = on_index(move || index.claim_for_delete(&blob, now)).await?;
        match claim {
            DeleteClaim::Referenced(count) => {
                return Err(ApiError::conflict(format!(
                    "blob {id} holds the bytes of {count} S3 objects or upload parts: delete them through S3 (the blob goes once none refers to it)"
                )));
            }
            DeleteClaim::Claimed { token } => claim_token = Some(token),
        }
    }
    // Claimed in the S3 index: should the delete fail, its collector
    // deletes the blob once the claim's lease runs out. Only writes up to
    // the claim go: stopped past the lease, this gateway must not delete
    // the same bytes S3 stored again meanwhile.
    let outcome = match claim_token {
        Some(_) => {
            client
                .delete_written_before(&id, claimed_at.saturating_mul(1_000_000))
                .await
        }
        None => client.delete(&id).await,
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e @ BlobIoError::WrittenSince { .. }) => {
            // Stored again since the claim: the claim goes back at once,
            // or the collector would take it over once its lease ran out
            // and delete the newer write.
            if let (Some(index), Some(token)) = (index, claim_token) {
                let blob = id.to_string();
                let released =
                    tokio::task::spawn_blocking(move || index.release(&blob, token)).await;
                if !matches!(released, Ok(Ok(()))) {
                    tracing::warn!(%id, "kept, but the S3 index still holds the delete's claim until its lease runs out");
                }
            }
            return Err(io_error(e));
        }
        Err(e) => return Err(io_error(e)),
    };
    if let (Some(index), Some(token)) = (index, claim_token) {
        let blob = id.to_string();
        let forgotten = tokio::task::spawn_blocking(move || index.collected(&blob, token)).await;
        if !matches!(forgotten, Ok(Ok(_))) {
            tracing::warn!(%id, "deleted, but the S3 index still holds its claim: the collector releases it");
        }
    }
    match outcome {
        DeleteOutcome::Deleted { .. } => Ok(StatusCode::NO_CONTENT),
        DeleteOutcome::NotFound => Err(ApiError::not_found(format!("blob {id} not found"))),
    }
}
