//! `redstuff get ID -o FILE`: one blob into a file (written beside it and
//! renamed into place once durable), a device or stdout. A download that
//! breaks off goes on from where it stopped with a range request (the same
//! id is the same bytes), a bounded number of times.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use indicatif::ProgressBar;
use tokio::io::AsyncWriteExt;

use redstuff::retry::RetryPolicy;
use redstuff::write_behind::WriteBehindFile;

use super::watchdog::next_within;
use super::{authorized, before_retry, http, progress, AttemptError};

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
    let to_stdout = output == Path::new("-");
    if !to_stdout {
        check_output(output)?;
    }
    let policy = RetryPolicy::with_retries(retries);
    let http = http(ca)?;
    let url = format!("{}/v1/blobs/{id}", gateway.trim_end_matches('/'));
    // Write next to the target and rename at the end: no half file on
    // failure. A device or a pipe (`-o /dev/null`) is written in place: a
    // rename would replace it with a regular file.
    let in_place = writes_in_place(output);
    let partial = if in_place {
        output.to_path_buf()
    } else {
        partial_path(output)
    };
    let mut download = Download {
        to_stdout,
        in_place,
        partial: partial.clone(),
        len: None,
        received: 0,
        sink: None,
        bar: ProgressBar::hidden(),
    };
    let mut failed = 0;
    let received = loop {
        match download.attempt(&http, &url, gateway, &token, stall).await {
            Ok(()) => break Ok(()),
            Err(e) => {
                failed += 1;
                if let Err(e) = before_retry(&policy, failed, e, &download.bar).await {
                    break Err(e);
                }
            }
        }
    };
    download.bar.finish_and_clear();
    let Some(sink) = download.sink else {
        // Nothing was answered: nothing was opened.
        return received;
    };
    let durable = match (received, sink) {
        (Err(e), _) => Err(e),
        (Ok(()), Sink::Stdout) => return Ok(std::io::stdout().flush()?),
        (Ok(()), Sink::InPlace(mut f)) => return Ok(f.flush().await?),
        (Ok(()), Sink::File(f)) => f
            .finish()
            .await
            .with_context(|| format!("cannot write {}", partial.display())),
    };
    if let Err(e) = durable {
        if !to_stdout && !in_place {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        return Err(e);
    }
    if let Err(e) = tokio::fs::rename(&partial, output).await {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(anyhow::Error::new(e).context(format!(
            "cannot put the download in place at {}",
            output.display()
        )));
    }
    Ok(())
}

/// Refuses an output that is a directory (given by name, or ending in
/// `/`), or whose directory does not exist, before anything is
/// downloaded.
fn check_output(output: &Path) -> anyhow::Result<()> {
    let shown = output.display();
    if output.is_dir() || output.as_os_str().to_string_lossy().ends_with('/') {
        anyhow::bail!("{shown} is a directory: name the file to write (-o {shown}/NAME)");
    }
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
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
    /// The file written (the target itself when in place).
    partial: PathBuf,
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
                    self.partial.display()
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
                    .open(&self.partial)
                    .await
                    .with_context(|| format!("cannot write {}", self.partial.display()))?,
            )
        } else {
            let file = std::fs::File::create(&self.partial)
                .with_context(|| format!("cannot write {}", self.partial.display()))?;
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
            Sink::Stdout => std::io::stdout().write_all(chunk),
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

/// Whether `get` writes straight into `output` rather than into a partial
/// file renamed onto it: when it exists and is neither a regular file nor
/// a directory (a device, a pipe).
fn writes_in_place(output: &Path) -> bool {
    std::fs::metadata(output).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// The file a download into `output` is written to before the rename:
/// `output` with `.partial` appended (never replacing its extension, so
/// `a.tar` and `a.bin` downloaded side by side do not share one).
fn partial_path(output: &Path) -> std::path::PathBuf {
    let mut name = output.as_os_str().to_os_string();
    name.push(".partial");
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_is_written_beside_its_target_under_a_name_of_its_own() {
        assert_eq!(
            partial_path(Path::new("dir/copy.mp4")),
            Path::new("dir/copy.mp4.partial")
        );
        assert_ne!(
            partial_path(Path::new("a.tar")),
            partial_path(Path::new("a.bin"))
        );
        assert_eq!(
            partial_path(Path::new("weights")),
            Path::new("weights.partial")
        );
    }
}
