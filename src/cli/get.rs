//! `redstuff get ID -o FILE`: one blob into a file (written beside it
//! under a name of its own and renamed into place once durable), a device
//! or stdout. A download that breaks off goes on from where it stopped
//! with a range request (the same id is the same bytes), a bounded number
//! of times. One that fails or is interrupted (SIGINT, SIGTERM) leaves the
//! file as it was and nothing beside it.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use indicatif::ProgressBar;
use tokio::io::AsyncWriteExt;

use redstuff::retry::RetryPolicy;
use redstuff::write_behind::WriteBehindFile;

use super::{authorized, before_retry, http, progress, AttemptError};
use redstuff::watchdog::next_within;

/// `redstuff get ID -o FILE` (or to stdout with `-o -`).
pub async fn get(
    id: &str,
    output: &Path,
    gateway: &str,
    token: Option<String>,
    ca: Option<&Path>,
    retries: u32,
    stall: std::time::Duration,
) -> anyhow::Result<()> {
    // Checked before anything is asked: an id that is not one would make
    // another path of the gateway's (`../status`) and write its answer.
    let id: redstuff::codec::BlobId = id
        .parse()
        .with_context(|| format!("{id:?} is not a blob id"))?;
    let to_stdout = is_stdout(output);
    let output = &followed(output);
    if !to_stdout {
        check_output(output)?;
    }
    let interrupted = crate::stop_signal();
    tokio::pin!(interrupted);
    let policy = RetryPolicy::with_retries(retries);
    let http = http(ca)?;
    let url = format!("{}/v1/blobs/{id}", gateway.trim_end_matches('/'));
    // Write next to the target and rename at the end: no half file on
    // failure. A device or a pipe (`-o /dev/null`) is written in place: a
    // rename would replace it with a regular file.
    let in_place = writes_in_place(output);
    let mut download = Download {
        to_stdout,
        in_place,
        output: output.to_path_buf(),
        written: output.to_path_buf(),
        partial: None,
        len: None,
        received: 0,
        sink: None,
        bar: ProgressBar::hidden(),
    };
    let attempts = async {
        let mut failed = 0;
        loop {
            match download.attempt(&http, &url, gateway, &token, stall).await {
                Ok(()) => return Ok::<(), anyhow::Error>(()),
                Err(e) => {
                    failed += 1;
                    before_retry(&policy, failed, e, &download.bar).await?;
                }
            }
        }
    };
    let received = tokio::select! {
        received = attempts => Ok(received),
        signal = &mut interrupted => Err(signal),
    };
    download.bar.finish_and_clear();
    let received = match received {
        Ok(received) => received,
        Err(signal) => end_interrupted(download, output, signal),
    };
    let Some(sink) = download.sink.take() else {
        // Nothing was answered: nothing was opened.
        return received;
    };
    let written = download.written.display();
    match (received, sink) {
        (Err(e), _) => Err(e),
        (Ok(()), Sink::Stdout) => Ok(std::io::stdout().flush().inspect_err(end_if_reader_gone)?),
        (Ok(()), Sink::InPlace(mut f)) => Ok(f.flush().await?),
        (Ok(()), Sink::File(f)) => {
            // Until the partial is durable an interruption still leaves
            // the target as it was; the rename is not interrupted.
            let durable = tokio::select! {
                durable = f.finish() => durable,
                signal = &mut interrupted => end_interrupted(download, output, signal),
            };
            durable.with_context(|| format!("cannot write {written}"))?;
            let partial = download.partial.take().expect("a file has its partial");
            partial.persist(output).map_err(|e| {
                anyhow::Error::new(e.error).context(format!(
                    "cannot put the download in place at {}",
                    output.display()
                ))
            })
        }
    }
}

/// Ends a download interrupted by SIGINT or SIGTERM: its partial file
/// goes, and the process ends with 128 + the signal (130, 143).
fn end_interrupted(download: Download, output: &Path, signal: crate::StopSignal) -> ! {
    let replaces = !download.to_stdout && !download.in_place;
    drop(download);
    if replaces {
        eprintln!("interrupted: {} left as it was", output.display());
    } else {
        eprintln!("interrupted");
    }
    std::process::exit(signal.exit_code());
}

/// The directory `path` is in (`.` for a bare name).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Refuses an output that is a directory (given by name, or ending in
/// `/`), or whose directory does not exist, before anything is
/// downloaded.
fn check_output(output: &Path) -> anyhow::Result<()> {
    let shown = output.display();
    if output.is_dir() || output.as_os_str().to_string_lossy().ends_with('/') {
        anyhow::bail!("{shown} is a directory: name the file to write (-o {shown}/NAME)");
    }
    let parent = directory_of(output);
    anyhow::ensure!(
        parent.is_dir(),
        "cannot write {shown}: the directory {} does not exist",
        parent.display()
    );
    Ok(())
}

/// A download in progress, across attempts.
struct Download {
    to_stdout: bool,
    in_place: bool,
    /// Where the blob goes.
    output: PathBuf,
    /// The file written: the partial file, or the target itself when in
    /// place.
    written: PathBuf,
    /// The partial file of a download into a regular file, from the first
    /// answer; removed when dropped, unless renamed onto `output`.
    partial: Option<tempfile::TempPath>,
    /// The blob's length, from the first answer (when it said).
    len: Option<u64>,
    /// Bytes written so far.
    received: u64,
    /// Opened at the first answer.
    sink: Option<Sink>,
    bar: ProgressBar,
}

impl Download {
    /// One request: the whole blob the first time, the rest after that.
    async fn attempt(
        &mut self,
        http: &reqwest::Client,
        url: &str,
        gateway: &str,
        token: &Option<String>,
        stall: std::time::Duration,
    ) -> Result<(), AttemptError> {
        let mut request = authorized(http.get(url), token);
        if self.received > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={}-", self.received));
        }
        let response = AttemptError::unless_unanswered(request, stall, gateway).await?;
        if !response.status().is_success() {
            return Err(AttemptError::answered(response).await);
        }
        check_is_a_blob(&response, gateway).map_err(AttemptError::last)?;
        if self.sink.is_none() {
            self.len = response.content_length();
            self.open().await.map_err(AttemptError::last)?;
        } else if self.received > 0 {
            self.check_resumed(&response).map_err(AttemptError::last)?;
        } else if response.content_length() != self.len {
            return Err(AttemptError::last(anyhow::anyhow!(
                "the gateway announced {:?} bytes, {:?} before",
                response.content_length(),
                self.len
            )));
        }
        let len = self.len;
        let shown = || len.map_or_else(|| "?".to_string(), |l| l.to_string());
        let mut stream = response.bytes_stream();
        loop {
            let next = next_within(&mut stream, stall).await.map_err(|stalled| {
                let error = anyhow::anyhow!(
                    "download interrupted after {} of {} bytes: {stalled} (gateway at {gateway})",
                    self.received,
                    shown()
                );
                match len {
                    None => AttemptError::last(error),
                    Some(_) => AttemptError::transport(error),
                }
            })?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| {
                let error = anyhow::Error::new(e).context(format!(
                    "download interrupted after {} of {} bytes",
                    self.received,
                    shown()
                ));
                match len {
                    // Without a length there is no telling what the rest is.
                    None => AttemptError::last(error),
                    Some(_) => AttemptError::transport(error),
                }
            })?;
            if len.is_some_and(|len| self.received + chunk.len() as u64 > len) {
                return Err(AttemptError::last(anyhow::anyhow!(
                    "the gateway sent more than the {} bytes it announced",
                    shown()
                )));
            }
            self.write(&chunk).await.map_err(|e| {
                AttemptError::last(anyhow::anyhow!(
                    "cannot write {}: {e}",
                    self.written.display()
                ))
            })?;
            self.received += chunk.len() as u64;
            self.bar.inc(chunk.len() as u64);
        }
        match len {
            Some(len) if self.received < len => Err(AttemptError::transport(anyhow::anyhow!(
                "download ended after {} of {len} bytes",
                self.received
            ))),
            _ => Ok(()),
        }
    }

    /// Opens where the blob goes, at its first answer.
    async fn open(&mut self) -> anyhow::Result<()> {
        let sink = if self.to_stdout {
            Sink::Stdout
        } else if self.in_place {
            Sink::InPlace(
                tokio::fs::OpenOptions::new()
                    .write(true)
                    .open(&self.output)
                    .await
                    .with_context(|| format!("cannot write {}", self.output.display()))?,
            )
        } else {
            let (file, path) = partial_beside(&self.output)
                .with_context(|| format!("cannot write beside {}", self.output.display()))?
                .into_parts();
            self.written = path.to_path_buf();
            self.partial = Some(path);
            Sink::File(WriteBehindFile::new(file))
        };
        if !self.to_stdout {
            self.bar = progress(self.len.unwrap_or(0), "downloading");
        }
        self.sink = Some(sink);
        Ok(())
    }

    /// The answer to a resumed download must be exactly the rest.
    fn check_resumed(&self, response: &reqwest::Response) -> anyhow::Result<()> {
        let range = response
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        let len = self.len.unwrap_or(0);
        let expected = format!("bytes {}-{}/{len}", self.received, len.saturating_sub(1));
        anyhow::ensure!(
            response.status() == reqwest::StatusCode::PARTIAL_CONTENT && range == expected,
            "the gateway answered the rest of the download (from byte {}) with {} and range {range}, \
             not {expected}",
            self.received,
            response.status()
        );
        Ok(())
    }

    async fn write(&mut self, chunk: &bytes::Bytes) -> std::io::Result<()> {
        match self.sink.as_mut().expect("opened at the first answer") {
            Sink::Stdout => std::io::stdout()
                .write_all(chunk)
                .inspect_err(end_if_reader_gone),
            Sink::InPlace(f) => f.write_all(chunk).await,
            Sink::File(f) => f.write(chunk.clone()).await,
        }
    }
}

/// Where `get` writes a blob.
enum Sink {
    /// Standard output (`-o -`).
    Stdout,
    /// A device or pipe, written as it is.
    InPlace(tokio::fs::File),
    /// A regular file, made durable before it is renamed into place.
    File(WriteBehindFile),
}

/// Whether `output` names standard output: `-`, or a name of the
/// process' descriptor 1 (written as it is, appended to when the shell
/// appends).
fn is_stdout(output: &Path) -> bool {
    ["-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"]
        .iter()
        .any(|name| output == Path::new(name))
}

/// Whether `output` names an open descriptor of the process (`/dev/fd/N`,
/// `/proc/self/fd/N`, `/dev/stderr`): what the shell opened there is
/// written as it is, never replaced.
fn is_descriptor(output: &Path) -> bool {
    output.starts_with("/dev/fd/")
        || output.starts_with("/proc/self/fd/")
        || output == Path::new("/dev/stderr")
}

/// The file `output` names: a symbolic link is followed, so the download
/// replaces the file it points to and the link stays (a descriptor's name
/// is kept as given: it is written in place).
fn followed(output: &Path) -> PathBuf {
    let is_link = std::fs::symlink_metadata(output).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link || is_descriptor(output) {
        return output.to_path_buf();
    }
    std::fs::canonicalize(output).unwrap_or_else(|_| {
        // A link to a file not there yet: the file it names.
        match std::fs::read_link(output) {
            Ok(target) => directory_of(output).join(target),
            Err(_) => output.to_path_buf(),
        }
    })
}

/// Whether `get` writes straight into `output` rather than into a partial
/// file renamed onto it: a descriptor of the process, or what exists and
/// is neither a regular file nor a directory (a device, a pipe). A
/// regular file under /dev (/dev/shm) is replaced like any other.
fn writes_in_place(output: &Path) -> bool {
    is_descriptor(output) || std::fs::metadata(output).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// Ends the process as `cat` would when the reader of its standard output
/// went away (`get -o - | head`): by SIGPIPE, not with an error.
fn end_if_reader_gone(error: &std::io::Error) {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        // SAFETY: the default action restored, the signal the write would
        // have raised is raised (Rust ignores SIGPIPE so that sockets
        // answer EPIPE; the network is not written to any more).
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
    }
}

/// The file a download into `output` is written to before the rename,
/// beside it: `NAME.XXXXXX.partial`, a name no other download shares (two
/// gets of one target at once each write their own), with the mode of the
/// file it replaces, or that of a new file.
fn partial_beside(output: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = directory_of(output);
    let mut prefix = output.file_name().unwrap_or_default().to_os_string();
    prefix.push(".");
    // Created with this mode less the umask, as a new file would be.
    let mode = std::fs::metadata(output).map_or(0o666, |m| m.permissions().mode() & 0o777);
    let partial = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".partial")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    // The umask must not narrow the mode of the file replaced.
    if std::fs::metadata(output).is_ok() {
        partial
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok(partial)
}

/// Fails unless `response` carries blob bytes as a redstuff gateway sends
/// them (`application/octet-stream`): a proxy's or an ingress's page
/// answered 200 would otherwise be written as the blob.
fn check_is_a_blob(response: &reqwest::Response, gateway: &str) -> anyhow::Result<()> {
    let kind = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    anyhow::ensure!(
        kind.starts_with("application/octet-stream"),
        "{gateway} answered {} with content of type {kind}, not a blob's bytes: is it a \
         redstuff gateway? (nothing was written)",
        response.status()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_is_written_beside_its_target_under_a_name_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("copy.mp4");
        let first = partial_beside(&target).unwrap();
        let second = partial_beside(&target).unwrap();
        assert_ne!(first.path(), second.path());
        for partial in [&first, &second] {
            assert_eq!(partial.path().parent(), Some(dir.path()));
            let name = partial.path().file_name().unwrap().to_str().unwrap();
            assert!(
                name.starts_with("copy.mp4.") && name.ends_with(".partial"),
                "{name}"
            );
        }
    }

    #[test]
    fn a_partial_file_has_the_mode_of_the_file_it_replaces() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("weights");
        std::fs::write(&target, b"old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let partial = partial_beside(&target).unwrap();
        let mode = partial.as_file().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }
}
