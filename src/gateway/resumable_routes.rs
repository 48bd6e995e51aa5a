//! The handlers of resumable uploads (`resumable.rs` keeps them):
//!
//! | method and path | what |
//! |---|---|
//! | POST `/v1/uploads` | opens an upload (`Upload-Length: N` optional); 201 with `{"upload", "offset": 0}` and `Location` |
//! | PATCH `/v1/uploads/{id}` | appends the body at `Upload-Offset: N`, which must be the bytes received so far (409 with the right offset otherwise) |
//! | GET or HEAD `/v1/uploads/{id}` | the bytes received so far (`Upload-Offset`) |
//! | POST `/v1/uploads/{id}/finish` | makes the upload a blob: the answer of `PUT /v1/blobs`, the same again when asked again |
//! | DELETE `/v1/uploads/{id}` | gives the upload up |
//!
//! An append that breaks off keeps what earlier appends brought and the
//! segments of its own that arrived whole (an offset answered is never
//! taken back): the client asks for the offset and sends the rest. An append whose client
//! sends nothing for the stall time ends as if cut. A request waits for
//! one still holding the same upload (as a broken append drains) up to
//! that time, then gets 409.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{FutureExt as _, Stream, StreamExt};

use super::resumable::{
    check_append, AppendRefusal, Ended, Found, ResumableUpload, Stage, UploadHandle,
};
use super::routes::{busy, commit, io_error, retry_after};
use super::GatewayState;
use crate::api_error::ApiError;
use crate::wire::{UploadId, UploadProgress};

/// The header naming an upload's offset (as in the IETF's resumable
/// uploads draft and tus).
pub const UPLOAD_OFFSET: &str = "upload-offset";
/// The header declaring an upload's whole length.
pub const UPLOAD_LENGTH: &str = "upload-length";

/// `POST /v1/uploads`: opens an upload.
pub(super) async fn open(
    State(state): State<Arc<GatewayState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let declared = optional_number(&headers, UPLOAD_LENGTH)?;
    if declared.is_some_and(|len| len > state.max_blob_bytes) {
        return Err(ApiError::too_large(format!(
            "blob larger than the gateway's limit of {} bytes",
            state.max_blob_bytes
        )));
    }
    let mut upload = state.client()?.upload().map_err(io_error)?;
    upload.expect_len(declared);
    let Some(id) = state.resumable.open(upload, declared) else {
        return Ok(retry_after(ApiError::unavailable(format!(
            "the gateway keeps its limit of {} open uploads; finish or delete one, or retry shortly",
            state.resumable.capacity()
        ))));
    };
    let mut response = progress(StatusCode::CREATED, &id, 0, declared);
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/v1/uploads/{id}")).expect("hex"),
    );
    Ok(response)
}

/// `GET` or `HEAD /v1/uploads/{id}`: the bytes received so far.
pub(super) async fn show(
    State(state): State<Arc<GatewayState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (id, handle) = match find(&state, &id)? {
        (id, Found::Open(handle)) => (id, handle),
        (id, Found::Ended(ended)) => return ended_progress(&id, &ended),
    };
    let upload = hold(&state, handle).await?;
    if let Stage::Ended(ended) = &upload.stage {
        return ended_progress(&id, ended);
    }
    Ok(progress(
        StatusCode::OK,
        &id,
        upload.offset(),
        upload.declared,
    ))
}

/// The progress of an upload that ended: all its bytes once finished, 410
/// once failed.
fn ended_progress(id: &UploadId, ended: &Ended) -> Result<Response, ApiError> {
    match ended {
        Ended::Finished(_, stored) => {
            Ok(progress(StatusCode::OK, id, stored.size, Some(stored.size)))
        }
        Ended::Failed(e) => Err(failed(e)),
    }
}

/// `PATCH /v1/uploads/{id}`: appends the body at `Upload-Offset`.
pub(super) async fn append(
    State(state): State<Arc<GatewayState>>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let asked = optional_number(request.headers(), UPLOAD_OFFSET)?.ok_or_else(|| {
        ApiError::bad_request(format!(
            "an append names the offset it starts at ({UPLOAD_OFFSET}: the upload's bytes so far)"
        ))
    })?;
    let len = optional_number(request.headers(), header::CONTENT_LENGTH.as_str())?;
    let (id, handle) = match find(&state, &id)? {
        (id, Found::Open(handle)) => (id, handle),
        (_, Found::Ended(ended)) => return Err(ended_answer(&ended)),
    };
    // The upload first, then a slot: a request waiting on an upload that
    // another still holds (a broken append draining) holds no slot.
    let mut upload = hold(&state, handle).await?;
    if let Stage::Ended(ended) = &upload.stage {
        return Err(ended_answer(ended));
    }
    let Some(permit) = state.upload_slots.acquire().await else {
        return Ok(busy(state.upload_slots.capacity()));
    };
    let current = upload.offset();
    let refused = match check_append(current, asked, len, upload.declared, state.max_blob_bytes) {
        Ok(()) => None,
        Err(AppendRefusal::WrongOffset { current }) => Some(ApiError::conflict(format!(
            "upload {id} has {current} bytes; an append must start there, not at {asked}"
        ))),
        Err(AppendRefusal::PastDeclaredLength { declared }) => Some(ApiError::bad_request(
            format!("the append would take upload {id} past the {declared} bytes it declared"),
        )),
        Err(AppendRefusal::TooLarge { limit }) => Some(ApiError::too_large(format!(
            "blob larger than the gateway's limit of {limit} bytes"
        ))),
    };
    if let Some(refused) = refused {
        return Ok(with_offset(refused.into_response(), current));
    }
    if upload.cut && asked > 0 {
        state.metrics.uploads_resumed.inc();
    }
    let (stall, limit) = (state.client_stall, state.max_blob_bytes);
    let body = request.into_body().into_data_stream();
    let task_state = state.clone();
    // The bytes are taken in a task of their own: an append whose client
    // went away still counts exactly what arrived, and an upload it ended
    // is recorded so. A panic in it ends the upload rather than leave it
    // half-pushed.
    let task = tokio::spawn(async move {
        let (taken, offset) =
            std::panic::AssertUnwindSafe(take_body(&mut upload, body, stall, limit))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    let e = ApiError::internal("the append failed unexpectedly");
                    upload.stage = Stage::Ended(Ended::Failed(e.clone()));
                    (Err(e), current)
                });
        if offset > current {
            upload.last_used = Instant::now();
        }
        drop(permit);
        if let Stage::Ended(ended) = &upload.stage {
            task_state.resumable.end(&id, Some(ended.clone()));
        }
        (taken, offset, upload.declared)
    });
    let (taken, offset, declared) = task
        .await
        .map_err(|e| ApiError::internal(format!("append task failed: {e}")))?;
    match taken {
        Ok(()) => Ok(progress(StatusCode::OK, &id, offset, declared)),
        Err(e) => Ok(with_offset(e.into_response(), offset)),
    }
}

/// How an append's body ended.
enum BodyEnd {
    /// Every byte taken.
    Complete,
    /// It broke off or brought nothing for the stall time: the upload
    /// keeps what it had before the append and the append's segments that
    /// arrived whole (the rest of the segment arriving is dropped), for
    /// the client to resume from there.
    Cut(ApiError),
    /// A chunk would go past a bound: refused before it was taken, the
    /// upload stays as it was before that chunk.
    Refused(ApiError),
    /// A segment could not be stored: the upload cannot go on.
    Broken(ApiError),
}

/// Pushes `body` into the open `upload`, counting what arrived; the
/// outcome, and the upload's bytes after it.
async fn take_body(
    upload: &mut ResumableUpload,
    mut body: impl Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin,
    stall: Duration,
    limit: u64,
) -> (Result<(), ApiError>, u64) {
    let Stage::Open(open) = &mut upload.stage else {
        unreachable!("an append holds an open upload");
    };
    let declared = upload.declared;
    let before = open.len();
    let end = loop {
        let chunk = match tokio::time::timeout(stall, body.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(None) => break BodyEnd::Complete,
            Ok(Some(Err(e))) => {
                break BodyEnd::Cut(ApiError::bad_request(format!("append interrupted: {e}")))
            }
            Err(_) => {
                break BodyEnd::Cut(ApiError::request_timeout(format!(
                    "append ended: its body brought nothing for {} s",
                    stall.as_secs()
                )))
            }
        };
        let end = open.len() + chunk.len() as u64;
        if let Some(declared) = declared.filter(|declared| end > *declared) {
            break BodyEnd::Refused(ApiError::bad_request(format!(
                "the append would take the upload past the {declared} bytes it declared"
            )));
        }
        if end > limit {
            break BodyEnd::Refused(ApiError::too_large(format!(
                "blob larger than the gateway's limit of {limit} bytes"
            )));
        }
        if let Err(e) = open.push(&chunk).await {
            break BodyEnd::Broken(io_error(e));
        }
    };
    upload.cut = matches!(end, BodyEnd::Cut(_));
    let offset = if upload.cut {
        open.cut_back_to(before)
    } else {
        open.len()
    };
    let outcome = match end {
        BodyEnd::Complete => Ok(()),
        BodyEnd::Cut(e) => Err(ApiError::new(
            e.status,
            format!("{}; the upload has {offset} bytes, resume there", e.message),
        )),
        BodyEnd::Refused(e) => Err(e),
        BodyEnd::Broken(e) => {
            // What it holds cannot become the blob any more: dropping it
            // removes its session from the nodes.
            upload.stage = Stage::Ended(Ended::Failed(e.clone()));
            Err(e)
        }
    };
    (outcome, offset)
}

/// `POST /v1/uploads/{id}/finish`: makes the upload a blob.
pub(super) async fn finish(
    State(state): State<Arc<GatewayState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (id, handle) = match find(&state, &id)? {
        (id, Found::Open(handle)) => (id, handle),
        (_, Found::Ended(ended)) => return ended_again(&ended),
    };
    let mut upload = hold(&state, handle).await?;
    if let Stage::Ended(ended) = &upload.stage {
        return ended_again(ended);
    }
    let Some(permit) = state.upload_slots.acquire().await else {
        return Ok(busy(state.upload_slots.capacity()));
    };
    if let Some(declared) = upload.declared {
        if upload.offset() != declared {
            return Err(ApiError::bad_request(format!(
                "upload {id} has {} of the {declared} bytes it declared; append the rest first",
                upload.offset()
            )));
        }
    }
    let task = tokio::spawn(async move {
        let placeholder = Stage::Ended(Ended::Failed(ApiError::internal(
            "the upload's finish failed unexpectedly",
        )));
        let Stage::Open(open) = std::mem::replace(&mut upload.stage, placeholder) else {
            unreachable!("checked open above");
        };
        let outcome = commit(&state, *open, permit).await;
        let ended = match &outcome {
            Ok((status, stored)) => Ended::Finished(*status, stored.clone()),
            Err(e) => Ended::Failed(e.clone()),
        };
        upload.stage = Stage::Ended(ended.clone());
        upload.last_used = Instant::now();
        state.resumable.end(&id, Some(ended));
        outcome
    });
    let (status, stored) = task
        .await
        .map_err(|e| ApiError::internal(format!("finish task failed: {e}")))??;
    Ok((status, Json(stored)).into_response())
}

/// `DELETE /v1/uploads/{id}`: gives the upload up.
pub(super) async fn delete(
    State(state): State<Arc<GatewayState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (id, handle) = match find(&state, &id)? {
        (id, Found::Open(handle)) => (id, handle),
        (id, Found::Ended(ended)) => return delete_ended(&state, &id, &ended),
    };
    let mut upload = hold(&state, handle).await?;
    if let Stage::Ended(ended) = &upload.stage {
        return delete_ended(&state, &id, ended);
    }
    // Dropping an open upload removes its session from the nodes.
    upload.stage = Stage::Ended(Ended::Failed(ApiError::not_found(format!(
        "upload {id} was deleted"
    ))));
    state.resumable.end(&id, None);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A DELETE of an upload that ended: refused once finished (its blob is
/// deleted instead), else its answer is forgotten (the id is unknown
/// from then on).
fn delete_ended(state: &GatewayState, id: &UploadId, ended: &Ended) -> Result<Response, ApiError> {
    if let Ended::Finished(_, stored) = ended {
        return Err(ApiError::conflict(format!(
            "upload {id} is finished already (blob {}): delete the blob instead",
            stored.id
        )));
    }
    state.resumable.forget(id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What `text` names, or 404.
fn find(state: &GatewayState, text: &str) -> Result<(UploadId, Found), ApiError> {
    let id: UploadId = text
        .parse()
        .map_err(|e| ApiError::bad_request(format!("invalid upload id {text:?}: {e}")))?;
    let found = state.resumable.find(&id).ok_or_else(|| {
        ApiError::not_found(format!(
            "no upload {id} here: it was never opened, was deleted, sat idle longer than {} s, \
             or the gateway restarted; open a new one (pairs shipped before are reused)",
            state.resumable.idle().as_secs()
        ))
    })?;
    Ok((id, found))
}

/// The upload's lock, once no other request holds it (it counts as used
/// from then on); 409 when one still does after the stall time.
async fn hold(
    state: &GatewayState,
    handle: UploadHandle,
) -> Result<tokio::sync::OwnedMutexGuard<ResumableUpload>, ApiError> {
    let upload = tokio::time::timeout(state.client_stall, handle.lock_owned())
        .await
        .map_err(|_| {
            ApiError::conflict(format!(
                "another request still holds this upload after {} s; ask its offset again later",
                state.client_stall.as_secs()
            ))
        })?;
    // Holding is no use: the idle time counts from the last bytes taken
    // (or the open), so an upload asked about or refused a slot again and
    // again, never moving, is still given up and frees what it holds.
    Ok(upload)
}

/// The answer to an append to an upload that ended.
fn ended_answer(ended: &Ended) -> ApiError {
    match ended {
        Ended::Finished(_, stored) => ApiError::conflict(format!(
            "the upload is finished already (blob {}); it takes no more bytes",
            stored.id
        )),
        Ended::Failed(e) => failed(e),
    }
}

/// A finish asked again: the same answer when it finished, or when it
/// could not tell whether its commit took (504: the blob may still become
/// visible, so "failed" would be untrue); else 410.
fn ended_again(ended: &Ended) -> Result<Response, ApiError> {
    match ended {
        Ended::Finished(status, stored) => Ok((*status, Json(stored.clone())).into_response()),
        Ended::Failed(e) if e.status == StatusCode::GATEWAY_TIMEOUT => Err(e.clone()),
        Ended::Failed(e) => Err(failed(e)),
    }
}

/// `response` with the upload's offset in `Upload-Offset`.
fn with_offset(mut response: Response, offset: u64) -> Response {
    response
        .headers_mut()
        .insert(UPLOAD_OFFSET, HeaderValue::from(offset));
    response
}

/// 410 for an upload that ended without a blob and takes no more bytes,
/// saying why (and, when its commit's outcome is unknown, that the blob
/// may still become visible).
fn failed(e: &ApiError) -> ApiError {
    let message = if e.status == StatusCode::GATEWAY_TIMEOUT {
        format!(
            "the upload ended without learning whether its commit took ({}): the blob may \
             still become visible; storing the same bytes again through a new upload settles it",
            e.message
        )
    } else {
        format!(
            "the upload failed and takes no more bytes ({}); open a new one",
            e.message
        )
    };
    ApiError::new(StatusCode::GONE, message)
}

/// An upload's progress, as JSON and in `Upload-Offset` (and
/// `Upload-Length` when declared).
fn progress(status: StatusCode, id: &UploadId, offset: u64, declared: Option<u64>) -> Response {
    let mut response = (
        status,
        Json(UploadProgress {
            upload: id.to_string(),
            offset,
            length: declared,
        }),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(UPLOAD_OFFSET, HeaderValue::from(offset));
    if let Some(len) = declared {
        headers.insert(UPLOAD_LENGTH, HeaderValue::from(len));
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A header holding a whole number of bytes, when the request has it.
fn optional_number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    headers
        .get(name)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!("{name} must be a whole number of bytes"))
                })
        })
        .transpose()
}

/// Keeps the gateway's open uploads within their idle time: every second,
/// gives up those that took no bytes for it. Ends with the gateway.
pub(super) fn expire_in_background(state: std::sync::Weak<GatewayState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else {
                return;
            };
            let given_up = state
                .resumable
                .expire(Instant::now(), state.cut_upload_kept);
            state.metrics.uploads_expired.inc_by(given_up as u64);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_count_header_is_read_whole_or_refused_with_its_name() {
        let mut headers = HeaderMap::new();
        assert_eq!(optional_number(&headers, UPLOAD_OFFSET), Ok(None));
        headers.insert(UPLOAD_OFFSET, HeaderValue::from_static("1048576"));
        assert_eq!(optional_number(&headers, UPLOAD_OFFSET), Ok(Some(1 << 20)));
        headers.insert(UPLOAD_OFFSET, HeaderValue::from_static("-1"));
        let refused = optional_number(&headers, UPLOAD_OFFSET).unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(refused.message.contains(UPLOAD_OFFSET), "{refused}");
    }

    #[test]
    fn a_finish_whose_commit_outcome_was_unknown_is_not_said_to_have_failed_when_asked_again() {
        let unknown = Ended::Failed(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "the commit reached no node within its deadline",
        ));
        let again = ended_again(&unknown).unwrap_err();
        assert_eq!(again.status, StatusCode::GATEWAY_TIMEOUT);
        let id = UploadId::random();
        let progress = ended_progress(&id, &unknown).unwrap_err();
        assert_eq!(
            progress.status,
            StatusCode::GONE,
            "the upload takes no more bytes"
        );
        assert!(
            progress.message.contains("may still become visible"),
            "{progress}"
        );
        let not_durable = Ended::Failed(ApiError::unavailable("write not durable"));
        assert_eq!(
            ended_again(&not_durable).unwrap_err().status,
            StatusCode::GONE
        );
    }
}
