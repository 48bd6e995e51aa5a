//! `redstuff put FILE`: one blob from a file, tried again while the gateway
//! is busy or out of reach (a write is safe to repeat: the blob's id
//! follows from its bytes and a failed upload is never visible), or from
//! standard input (`-`), a pipe or a device, streamed as it comes and
//! sent once: what was read cannot be read again.
//!
//! A file goes through a resumable upload (`/v1/uploads`): when the
//! connection breaks, the next attempt asks the gateway how many bytes it
//! has and sends only the rest. A gateway that offers none gets one PUT
//! per attempt.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;
use indicatif::ProgressBar;

use redstuff::retry::RetryPolicy;
use redstuff::wire::{StoredBlob, UploadProgress};

use super::{authorized, before_retry, http, progress, refused_certificate, AttemptError};
use redstuff::watchdog::{send_watched, send_within, BodyProgress};

/// How long an interrupted put waits for the gateway to drop its upload.
const ABANDON_WAIT: Duration = Duration::from_secs(5);

/// `redstuff put FILE`: prints the blob id (or JSON) on stdout; ended by
/// SIGINT or SIGTERM, it drops its open upload on the gateway and exits
/// with 128 + the signal (130, 143).
pub async fn put(
    file: &Path,
    gateway: &str,
    token: Option<String>,
    ca: Option<&Path>,
    json: bool,
    retries: u32,
    stall: Duration,
) -> anyhow::Result<()> {
    let http = http(ca)?;
    let stream = streamed_source(file).await?;
    let policy = RetryPolicy::with_retries(if stream.is_some() { 0 } else { retries });
    let mut failed = 0;
    let mut upload = match stream {
        Some(_) => None,
        None => Some(FileUpload::new(file, gateway, stall).await?),
    };
    let hidden = ProgressBar::hidden();
    let interrupted = crate::stop_signal();
    tokio::pin!(interrupted);
    let attempts = async {
        loop {
            let attempt = match (&mut upload, &stream) {
                (Some(upload), _) => upload.attempt(&http, &token).await,
                (None, Some(source)) => put_stream(&http, gateway, &token, source, stall).await,
                (None, None) => unreachable!("a file or a stream"),
            };
            match attempt {
                Ok(stored) => return Ok(stored),
                Err(e) => {
                    failed += 1;
                    let bar = upload.as_ref().map_or(&hidden, |u| &u.bar);
                    before_retry(&policy, failed, e, bar).await?;
                }
            }
        }
    };
    let stored = tokio::select! {
        stored = attempts => stored,
        signal = &mut interrupted => {
            // The gateway keeps an open upload (a place among its open
            // uploads, its staged pairs) until it expires: ended now.
            if let Some(upload) = &upload {
                upload.bar.finish_and_clear();
                upload.abandon(&http, &token, ABANDON_WAIT).await;
            }
            eprintln!("{INTERRUPTED}");
            std::process::exit(signal.exit_code());
        }
    };
    let stored = match stored {
        Ok(stored) => stored,
        Err(last) => {
            if let Some(upload) = &upload {
                // Still ended by a signal while the gateway is asked.
                tokio::select! {
                    () = upload.abandon(&http, &token, stall) => {}
                    signal = &mut interrupted => {
                        eprintln!("{last:#}");
                        std::process::exit(signal.exit_code());
                    }
                }
            }
            return Err(last);
        }
    };
    if let Some(upload) = &upload {
        upload.bar.finish_and_clear();
    }
    if json {
        println!("{}", serde_json::to_string(&stored)?);
    } else {
        println!("{}", stored.id);
        if !stored.shards_missing.is_empty() {
            eprintln!(
                "stored durably; shards {:?} still miss slivers and will be repaired",
                stored.shards_missing
            );
        }
        if let Some(note) = &stored.note {
            eprintln!("{note}");
        }
    }
    Ok(())
}

/// What an interrupted `put` says: a finish, or a whole PUT whose body was
/// sent, may have reached the gateway, which then stores the blob anyway.
const INTERRUPTED: &str = "interrupted before the gateway answered: nothing was stored, \
     unless the upload's last request had already reached it";

/// What `put` reads once, as it comes, without knowing its length:
/// standard input (`-`), or a path that is not a regular file (a pipe, a
/// process substitution, a device). None for a regular file; a directory
/// is refused.
async fn streamed_source(file: &Path) -> anyhow::Result<Option<StreamSource>> {
    if file == Path::new("-") {
        return Ok(Some(StreamSource::Stdin));
    }
    let metadata = tokio::fs::metadata(file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?;
    anyhow::ensure!(
        !metadata.is_dir(),
        "{} is a directory: put stores one file (a directory can go as an archive: \
         `tar c DIR | redstuff put -`)",
        file.display()
    );
    let streamed = !metadata.is_file() || (metadata.len() == 0 && !is_empty(file).await?);
    Ok(streamed.then(|| StreamSource::Path(file.to_path_buf())))
}

/// Whether a regular file that says it is empty has no bytes indeed: a
/// procfs or sysfs file says 0 and has bytes (it is streamed then).
async fn is_empty(file: &Path) -> anyhow::Result<bool> {
    use tokio::io::AsyncReadExt;
    let mut opened = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    let mut first = [0u8; 1];
    let read = opened
        .read(&mut first)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?;
    Ok(read == 0)
}

/// A source read once.
enum StreamSource {
    Stdin,
    Path(std::path::PathBuf),
}

impl StreamSource {
    fn name(&self) -> String {
        match self {
            StreamSource::Stdin => "standard input".into(),
            StreamSource::Path(path) => path.display().to_string(),
        }
    }
}

/// A file's upload across attempts: the resumable upload the gateway
/// keeps for it, once one is open.
struct FileUpload<'a> {
    file: &'a Path,
    len: u64,
    /// When the file was last modified as the upload began: a file that
    /// changes meanwhile is not resumed into a blob of neither version.
    modified: Option<std::time::SystemTime>,
    gateway: String,
    /// The upload's id, once the gateway opened one.
    upload: Option<String>,
    /// Whether the gateway offers no resumable uploads (one PUT per attempt).
    whole_puts: bool,
    bar: ProgressBar,
    /// How long the gateway may make no progress.
    stall: Duration,
}

impl<'a> FileUpload<'a> {
    /// The upload of `file` through `gateway`; nothing is sent yet (a
    /// file that cannot be opened fails here, before an upload is open).
    async fn new(file: &'a Path, gateway: &str, stall: Duration) -> anyhow::Result<Self> {
        let metadata = tokio::fs::metadata(file)
            .await
            .with_context(|| format!("cannot read {}", file.display()))?;
        tokio::fs::File::open(file)
            .await
            .with_context(|| format!("cannot open {}", file.display()))?;
        let len = metadata.len();
        let label = format!(
            "uploading {}",
            file.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into())
        );
        Ok(Self {
            file,
            len,
            modified: metadata.modified().ok(),
            gateway: gateway.trim_end_matches('/').to_string(),
            upload: None,
            whole_puts: false,
            bar: progress(len, &label),
            stall,
        })
    }

    /// After the last attempt failed: the upload the gateway keeps for
    /// this file is deleted (it would count against the gateway's open
    /// uploads until it expires). Best effort.
    async fn abandon(&self, http: &reqwest::Client, token: &Option<String>, wait: Duration) {
        if let Some(id) = &self.upload {
            let _ = send_within(authorized(http.delete(self.url(id)), token), wait).await;
        }
    }

    /// One attempt: opens an upload unless one is open, asks how far it
    /// got unless it was just opened, sends the rest and finishes it.
    async fn attempt(
        &mut self,
        http: &reqwest::Client,
        token: &Option<String>,
    ) -> Result<StoredBlob, AttemptError> {
        self.check_unchanged().await?;
        if self.whole_puts {
            return self.put_whole(http, token).await;
        }
        let offset = match &self.upload {
            Some(id) => self.offset(http, token, id).await?,
            None => None,
        };
        let offset = match offset {
            Some(offset) => offset,
            None => match self.open(http, token).await? {
                Some(id) => {
                    self.upload = Some(id);
                    0
                }
                None => {
                    self.whole_puts = true;
                    return self.put_whole(http, token).await;
                }
            },
        };
        let id = self.upload.clone().expect("open");
        if offset < self.len {
            self.append(http, token, &id, offset).await?;
            // Bytes read while the file was being rewritten would make a
            // blob of neither version.
            self.check_unchanged().await?;
        }
        let stored = self.finish(http, token, &id).await?;
        self.check_size(stored)
    }

    /// The stored blob, when it is as long as the file.
    fn check_size(&self, stored: StoredBlob) -> Result<StoredBlob, AttemptError> {
        if stored.size != self.len {
            return Err(AttemptError::last(anyhow::anyhow!(
                "the gateway stored {} bytes as {}, but {} has {}",
                stored.size,
                stored.id,
                self.file.display(),
                self.len
            )));
        }
        Ok(stored)
    }

    /// Fails for good when the file's length or modification time moved
    /// since the upload began.
    async fn check_unchanged(&self) -> Result<(), AttemptError> {
        let metadata = tokio::fs::metadata(self.file)
            .await
            .with_context(|| format!("cannot read {}", self.file.display()))
            .map_err(AttemptError::last)?;
        if metadata.len() != self.len || metadata.modified().ok() != self.modified {
            return Err(AttemptError::last(anyhow::anyhow!(
                "{} changed while it was being uploaded; nothing was stored (put it again once \
                 it stays as it is)",
                self.file.display()
            )));
        }
        Ok(())
    }

    fn url(&self, id: &str) -> String {
        format!("{}/v1/uploads/{id}", self.gateway)
    }

    /// The answer to a request without a body, within the stall time.
    async fn answer(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, AttemptError> {
        AttemptError::unless_unanswered(request, self.stall, &self.gateway).await
    }

    /// Opens an upload of the file's length: its id, or `None` when the
    /// gateway has no resumable uploads (an older one).
    async fn open(
        &self,
        http: &reqwest::Client,
        token: &Option<String>,
    ) -> Result<Option<String>, AttemptError> {
        let request = authorized(http.post(format!("{}/v1/uploads", self.gateway)), token)
            .header("upload-length", self.len);
        let response = self.answer(request).await?;
        match response.status() {
            s if s.is_success() => {}
            reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::METHOD_NOT_ALLOWED => {
                return Ok(None)
            }
            _ => return Err(AttemptError::answered(response).await),
        }
        let opened: UploadProgress =
            AttemptError::json_within(response, self.stall, &self.gateway).await?;
        Ok(Some(opened.upload))
    }

    /// How many bytes the upload has; `None` when the gateway no longer
    /// keeps it (it restarted, the upload sat idle too long or failed): a
    /// new one starts from the beginning.
    async fn offset(
        &self,
        http: &reqwest::Client,
        token: &Option<String>,
        id: &str,
    ) -> Result<Option<u64>, AttemptError> {
        let response = self
            .answer(authorized(http.get(self.url(id)), token))
            .await?;
        match response.status() {
            s if s.is_success() => {}
            reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::GONE => return Ok(None),
            // A broken append of it still drains: asked again later.
            reqwest::StatusCode::CONFLICT => {
                return Err(AttemptError::transport(super::error_of(response).await))
            }
            _ => return Err(AttemptError::answered(response).await),
        }
        let progress: UploadProgress =
            AttemptError::json_within(response, self.stall, &self.gateway).await?;
        if progress.offset > self.len {
            return Err(AttemptError::last(anyhow::anyhow!(
                "the gateway holds {} bytes of this upload, more than the file's {}",
                progress.offset,
                self.len
            )));
        }
        Ok(Some(progress.offset))
    }

    /// Sends the file from `offset` to its end into the upload.
    async fn append(
        &mut self,
        http: &reqwest::Client,
        token: &Option<String>,
        id: &str,
        offset: u64,
    ) -> Result<(), AttemptError> {
        let rest = self.len - offset;
        let progress = BodyProgress::new();
        let body = self.body_from(offset, rest, &progress).await?;
        let request = authorized(http.patch(self.url(id)), token)
            .header("upload-offset", offset)
            .header("content-length", rest)
            .body(body);
        let response = send_watched(request, &progress, self.stall)
            .await
            .map_err(|e| AttemptError::stalled(e, &self.gateway))?
            .map_err(|e| unread_or_unanswered(e, &progress, &self.gateway))?;
        self.again_after(response).await
    }

    /// An append's or finish's answer when it is not a success: what
    /// another attempt mends is a transport failure (another request held
    /// the upload, it has other bytes than this attempt thought, this
    /// attempt's body stopped arriving and the upload kept what came, or
    /// it is gone and the next attempt opens a new one).
    async fn again_after(&mut self, response: reqwest::Response) -> Result<(), AttemptError> {
        match response.status() {
            s if s.is_success() => Ok(()),
            reqwest::StatusCode::CONFLICT | reqwest::StatusCode::REQUEST_TIMEOUT => {
                Err(AttemptError::transport(super::error_of(response).await))
            }
            reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::GONE => {
                self.upload = None;
                Err(AttemptError::transport(super::error_of(response).await))
            }
            _ => Err(AttemptError::answered(response).await),
        }
    }

    /// Finishes the upload: the stored blob.
    async fn finish(
        &mut self,
        http: &reqwest::Client,
        token: &Option<String>,
        id: &str,
    ) -> Result<StoredBlob, AttemptError> {
        let response = self
            .answer(authorized(
                http.post(format!("{}/finish", self.url(id))),
                token,
            ))
            .await?;
        if !response.status().is_success() {
            // A write that failed for good (410) is stored anew by the next
            // attempt, as a PUT would be.
            return Err(self.again_after(response).await.expect_err("not a success"));
        }
        AttemptError::json_within(response, self.stall, &self.gateway).await
    }

    /// One PUT of the whole file (a gateway without resumable uploads).
    async fn put_whole(
        &self,
        http: &reqwest::Client,
        token: &Option<String>,
    ) -> Result<StoredBlob, AttemptError> {
        let progress = BodyProgress::new();
        let body = self.body_from(0, self.len, &progress).await?;
        let stored = upload(
            http,
            &self.gateway,
            token,
            Some(self.len),
            body,
            (&progress, self.stall),
        )
        .await?;
        if self.check_unchanged().await.is_err() {
            return Err(AttemptError::last(anyhow::anyhow!(
                "{} changed while it was being uploaded: the blob stored as {} may hold bytes of \
                 neither version (delete it, and put the file again once it stays as it is)",
                self.file.display(),
                stored.id
            )));
        }
        self.check_size(stored)
    }

    /// The file's `len` bytes from `offset`, streamed in large reads,
    /// counted on the progress bar and watched by `progress`.
    async fn body_from(
        &self,
        offset: u64,
        len: u64,
        progress: &BodyProgress,
    ) -> Result<reqwest::Body, AttemptError> {
        use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
        let mut handle = tokio::fs::File::open(self.file)
            .await
            .with_context(|| format!("cannot open {}", self.file.display()))
            .map_err(AttemptError::last)?;
        handle
            .seek(std::io::SeekFrom::Start(offset))
            .await
            .with_context(|| format!("cannot read {}", self.file.display()))
            .map_err(AttemptError::last)?;
        self.bar.set_position(offset);
        let counted = self.bar.clone();
        // Large reads: the default 4 KiB chunks cost more than the bytes.
        let stream = tokio_util::io::ReaderStream::with_capacity(handle.take(len), 1 << 20)
            .inspect(move |chunk| {
                if let Ok(chunk) = chunk {
                    counted.inc(chunk.len() as u64);
                }
            });
        Ok(reqwest::Body::wrap_stream(
            progress.watch(stream, Some(len)),
        ))
    }
}

/// The one attempt from a stream: sent as it is read, its length unknown
/// until it ends (chunked).
async fn put_stream(
    http: &reqwest::Client,
    gateway: &str,
    token: &Option<String>,
    source: &StreamSource,
    stall: Duration,
) -> Result<StoredBlob, AttemptError> {
    let reader: Box<dyn tokio::io::AsyncRead + Send + Unpin> = match source {
        StreamSource::Stdin => Box::new(tokio::io::stdin()),
        StreamSource::Path(path) => Box::new(
            tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open {}", path.display()))
                .map_err(AttemptError::last)?,
        ),
    };
    let progress = BodyProgress::new();
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20);
    let body = reqwest::Body::wrap_stream(progress.watch(stream, None));
    upload(http, gateway, token, None, body, (&progress, stall))
        .await
        .map_err(|e| {
            if e.failure.is_retryable() {
                AttemptError::last(anyhow::anyhow!(
                    "{:#} ({} is read once: not tried again)",
                    e.error,
                    source.name()
                ))
            } else {
                e
            }
        })
}

/// Sends `body` (of `len` bytes, when known) as one upload and reads what
/// the gateway answers.
async fn upload(
    http: &reqwest::Client,
    gateway: &str,
    token: &Option<String>,
    len: Option<u64>,
    body: reqwest::Body,
    (progress, stall): (&BodyProgress, Duration),
) -> Result<StoredBlob, AttemptError> {
    let mut request = authorized(
        http.put(format!("{}/v1/blobs", gateway.trim_end_matches('/'))),
        token,
    );
    if let Some(len) = len {
        request = request.header("content-length", len);
    }
    let sent = send_watched(request.body(body), progress, stall)
        .await
        .map_err(|e| AttemptError::stalled(e, gateway))?;
    let response = match sent {
        Ok(response) => response,
        Err(e) if progress.read_error().is_some() => {
            return Err(unread_or_unanswered(e, progress, gateway))
        }
        // A gateway refuses an upload without credentials before it reads
        // the body; one longer than it reads on after a refusal may end as
        // a broken connection, not as the 401: no retry changes that.
        Err(e) if token.is_none() && refused_certificate(&e).is_none() => {
            return Err(AttemptError::last(anyhow::anyhow!(
                "cannot reach the gateway at {gateway} (no token was sent: uploads need --token \
                 or REDSTUFF_TOKEN, and the gateway refuses them before reading the body): {e:#}"
            )))
        }
        // A busy gateway's refusal can end the same way when the body is
        // still being sent; it is worth another attempt.
        Err(e) => return Err(unread_or_unanswered(e, progress, gateway)),
    };
    if !response.status().is_success() {
        return Err(AttemptError::answered(response).await);
    }
    AttemptError::json_within(response, stall, gateway).await
}

/// A request whose body `progress` watched that got no answer: final,
/// naming the source, when reading the body failed (the request fails as
/// if the connection broke); else as [`AttemptError::unanswered`].
fn unread_or_unanswered(
    error: reqwest::Error,
    progress: &BodyProgress,
    gateway: &str,
) -> AttemptError {
    match progress.read_error() {
        Some(why) => AttemptError::last(anyhow::anyhow!("cannot read what is uploaded: {why}")),
        None => AttemptError::unanswered(error, gateway),
    }
}
