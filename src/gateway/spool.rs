//! The upload spool: each upload streams into a temporary file, counted
//! against the spool's byte limit and the free space of its disk, and the
//! file is removed when the upload ends (whatever the outcome). The spool
//! is emptied at start: an upload of an earlier run can never complete.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

/// Why an upload cannot be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// No room: the spool's limit or its disk is full.
    #[error("the gateway's upload spool is full: {0}")]
    Full(String),
    /// Writing the spool failed otherwise.
    #[error("cannot spool the upload: {0}")]
    Io(std::io::Error),
}

fn from_io(e: std::io::Error) -> SpoolError {
    if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
        SpoolError::Full(format!("the disk is full ({e})"))
    } else {
        SpoolError::Io(e)
    }
}

/// The spool directory and the bytes its uploads hold.
pub struct Spool {
    dir: PathBuf,
    max_bytes: Option<u64>,
    held: Arc<AtomicU64>,
}

impl Spool {
    /// Opens the spool at `dir` (created if missing) and removes whatever
    /// an earlier run left in it.
    pub fn open(dir: PathBuf, max_bytes: Option<u64>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create spool dir {}: {e}", dir.display()))?;
        let mut removed = 0;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(spool = %dir.display(), removed, "removed uploads left by an earlier run");
        }
        Ok(Self {
            dir,
            max_bytes,
            held: Arc::default(),
        })
    }

    /// Bytes the spool's uploads hold now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    fn room(&self, more: u64) -> Result<(), SpoolError> {
        if let Some(max) = self.max_bytes {
            let held = self.held();
            if held + more > max {
                return Err(SpoolError::Full(format!(
                    "{held} of its {max} bytes are held by uploads in flight"
                )));
            }
        }
        Ok(())
    }

    /// A new spool file for an upload that declares `declared` bytes (when
    /// it does): refused at once when they cannot fit.
    pub fn create(&self, declared: Option<u64>) -> Result<SpoolFile, SpoolError> {
        if let Some(len) = declared {
            self.room(len)?;
            if let Some((_, available)) = crate::store::filesystem_space(&self.dir) {
                if available < len {
                    return Err(SpoolError::Full(format!(
                        "the upload declares {len} bytes, its disk has {available} free"
                    )));
                }
            }
        }
        let file = tempfile::NamedTempFile::new_in(&self.dir).map_err(from_io)?;
        // Chunks off the wire are small; one blocking write per chunk would
        // cost more than the bytes.
        let writer = tokio::io::BufWriter::with_capacity(
            SPOOL_WRITE_BUFFER,
            tokio::fs::File::from_std(file.reopen().map_err(from_io)?),
        );
        Ok(SpoolFile {
            file,
            writer: Some(writer),
            written: 0,
            max_bytes: self.max_bytes,
            held: self.held.clone(),
        })
    }
}

/// Bytes gathered before each write to a spool file. Every upload holds
/// this (and tokio's copy of it while it is written) outside the upload
/// memory budget, so it stays small.
const SPOOL_WRITE_BUFFER: usize = 256 << 10;

/// One upload's spool file; removed (and its bytes released) on drop.
pub struct SpoolFile {
    file: tempfile::NamedTempFile,
    writer: Option<tokio::io::BufWriter<tokio::fs::File>>,
    written: u64,
    max_bytes: Option<u64>,
    held: Arc<AtomicU64>,
}

impl SpoolFile {
    /// Appends a chunk, counting it against the spool's limit.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), SpoolError> {
        let len = chunk.len() as u64;
        let held = self.held.fetch_add(len, Ordering::Relaxed) + len;
        self.written += len;
        if let Some(max) = self.max_bytes {
            if held > max {
                return Err(SpoolError::Full(format!(
                    "uploads in flight would hold more than its {max} bytes"
                )));
            }
        }
        let writer = self.writer.as_mut().expect("not finished");
        writer.write_all(chunk).await.map_err(from_io)
    }

    /// Flushes the file; returns its path for reading.
    pub async fn finish(&mut self) -> Result<&Path, SpoolError> {
        if let Some(mut writer) = self.writer.take() {
            writer.flush().await.map_err(from_io)?;
        }
        Ok(self.file.path())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.written
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        self.held.fetch_sub(self.written, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_spool_is_emptied_at_start_and_refuses_uploads_past_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("left-by-a-crash"), b"half an upload").unwrap();
        let spool = Spool::open(dir.path().to_path_buf(), Some(100)).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(matches!(spool.create(Some(101)), Err(SpoolError::Full(_))));
        let mut first = spool.create(None).unwrap();
        first.write(&[1; 60]).await.unwrap();
        let mut second = spool.create(None).unwrap();
        assert!(matches!(
            second.write(&[2; 50]).await,
            Err(SpoolError::Full(_))
        ));
        drop(second);
        assert_eq!(spool.held(), 60);
        let path = first.finish().await.unwrap().to_path_buf();
        assert_eq!(std::fs::read(&path).unwrap(), vec![1; 60]);
        drop(first);
        assert_eq!(spool.held(), 0);
        assert!(!path.exists(), "an upload's file goes with it");
    }
}
