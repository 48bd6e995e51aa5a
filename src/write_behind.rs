//! A file that reaches the disk while it is being written.
//!
//! Bytes written through the page cache stay dirty until the kernel's
//! background writeback starts (a share of memory, gigabytes on a large
//! machine) or until `fsync`: a download fsynced at the end first fills
//! the cache while the disk idles, then waits for the whole file. Here a
//! writer thread starts the writeback of every few MiB as soon as they are
//! written and waits for ranges well behind the newest one, so the disk
//! works beside the network, the final fsync waits only for the tail, and
//! at most [`DIRTY_BEHIND`] bytes are dirty at any time.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd as _;

use bytes::Bytes;
use tokio::sync::mpsc;

/// Bytes gathered before each write call (chunks off a socket are small).
const WRITE_BLOCK: usize = 1 << 20;

/// Bytes written before their writeback is started.
const WRITEBACK_STEP: u64 = 8 << 20;

/// How far behind the newest byte the writer waits for the disk: the bound
/// on the file's dirty pages.
const DIRTY_BEHIND: u64 = 64 << 20;

/// Chunks queued for the writer thread before `write` waits for it.
const QUEUED_CHUNKS: usize = 64;

/// A file written by a thread of its own, its writeback started as it
/// goes; [`WriteBehindFile::finish`] makes it durable.
pub struct WriteBehindFile {
    chunks: mpsc::Sender<Bytes>,
    /// The writer thread; taken when it ended early, on an error.
    writer: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl WriteBehindFile {
    /// Takes over `file` (a regular file), written from its current start.
    pub fn new(file: File) -> Self {
        let (chunks, queue) = mpsc::channel(QUEUED_CHUNKS);
        let writer = tokio::task::spawn_blocking(move || write_all(file, queue));
        Self {
            chunks,
            writer: Some(writer),
        }
    }

    /// Appends `chunk`. An error means a write failed: the file holds an
    /// unknown prefix of what was written, and later calls fail too.
    pub async fn write(&mut self, chunk: Bytes) -> std::io::Result<()> {
        if self.chunks.send(chunk).await.is_ok() {
            return Ok(());
        }
        // The writer hung up, which it does only on an error.
        match self.writer.take() {
            Some(writer) => match writer.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => Err(std::io::Error::other("the file's writer ended early")),
                Err(e) => Err(std::io::Error::other(e)),
            },
            None => Err(std::io::Error::other("an earlier write to the file failed")),
        }
    }

    /// Writes what is queued and fsyncs the file.
    pub async fn finish(self) -> std::io::Result<()> {
        drop(self.chunks);
        match self.writer {
            Some(writer) => writer.await.map_err(std::io::Error::other)?,
            None => Err(std::io::Error::other("an earlier write to the file failed")),
        }
    }
}

/// The writer thread: gathers chunks into blocks, writes them, paces the
/// writeback, and fsyncs once the queue closes.
fn write_all(mut file: File, mut queue: mpsc::Receiver<Bytes>) -> std::io::Result<()> {
    let mut block = Vec::with_capacity(WRITE_BLOCK);
    let mut pacer = WritebackPacer::default();
    while let Some(chunk) = queue.blocking_recv() {
        block.extend_from_slice(&chunk);
        if block.len() >= WRITE_BLOCK {
            file.write_all(&block)?;
            pacer.written(&file, block.len() as u64);
            block.clear();
        }
    }
    file.write_all(&block)?;
    file.sync_all()
}

/// Where the writeback of a file written front to back stands.
#[derive(Debug, Default)]
struct WritebackPacer {
    /// Bytes written so far.
    written: u64,
    /// Bytes whose writeback has been started.
    started: u64,
    /// Bytes known to be on disk.
    waited: u64,
    /// Whether the file system refused a pacing call (none is made after).
    refused: bool,
}

impl WritebackPacer {
    /// Counts `len` more bytes written to `file` and starts or waits for
    /// writeback as [`WritebackPacer::plan`] says. The pacing is advice:
    /// where the file system refuses it, the file is written without it,
    /// and a write that failed on the disk still fails the final fsync.
    fn written(&mut self, file: &File, len: u64) {
        self.written += len;
        if self.refused {
            return;
        }
        let plan = self.plan();
        let mut paced = Ok(());
        if let Some((from, to)) = plan.start {
            paced = sync_file_range(file, from, to - from, libc::SYNC_FILE_RANGE_WRITE);
            self.started = to;
        }
        if let (Ok(()), Some((from, to))) = (&paced, plan.wait) {
            let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            paced = sync_file_range(file, from, to - from, wait);
            self.waited = to;
        }
        if let Err(e) = paced {
            tracing::debug!("writing without writeback pacing: {e}");
            self.refused = true;
        }
    }

    /// The ranges to start writing back and to wait for now: writeback
    /// starts once [`WRITEBACK_STEP`] bytes wait for it, and every byte
    /// more than [`DIRTY_BEHIND`] behind the last one started must be on
    /// disk.
    fn plan(&self) -> WritebackPlan {
        let start =
            (self.written - self.started >= WRITEBACK_STEP).then_some((self.started, self.written));
        let started = start.map_or(self.started, |(_, to)| to);
        let settled = started.saturating_sub(DIRTY_BEHIND);
        let wait = (settled > self.waited).then_some((self.waited, settled));
        WritebackPlan { start, wait }
    }
}

/// Ranges (from, to) of a file the pacer acts on.
#[derive(Debug, PartialEq, Eq)]
struct WritebackPlan {
    start: Option<(u64, u64)>,
    wait: Option<(u64, u64)>,
}

fn sync_file_range(file: &File, offset: u64, len: u64, flags: u32) -> std::io::Result<()> {
    // SAFETY: the descriptor is open for the call's duration; the kernel
    // only reads the arguments.
    let result =
        unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(written: u64, started: u64, waited: u64) -> WritebackPacer {
        WritebackPacer {
            written,
            started,
            waited,
            refused: false,
        }
    }

    #[test]
    fn writeback_starts_only_once_a_whole_step_is_written() {
        let plan = pacer(WRITEBACK_STEP - 1, 0, 0).plan();
        assert_eq!(
            plan,
            WritebackPlan {
                start: None,
                wait: None
            }
        );
        let plan = pacer(WRITEBACK_STEP + 5, 0, 0).plan();
        assert_eq!(plan.start, Some((0, WRITEBACK_STEP + 5)));
        assert_eq!(plan.wait, None, "nothing is far enough behind yet");
    }

    #[test]
    fn the_writer_waits_for_what_lies_more_than_the_dirty_bound_behind() {
        let written = DIRTY_BEHIND + 3 * WRITEBACK_STEP;
        let plan = pacer(written, written - WRITEBACK_STEP, 0).plan();
        assert_eq!(plan.start, Some((written - WRITEBACK_STEP, written)));
        assert_eq!(plan.wait, Some((0, 3 * WRITEBACK_STEP)));
        let plan = pacer(written, written - WRITEBACK_STEP, 3 * WRITEBACK_STEP).plan();
        assert_eq!(plan.wait, None, "already on disk");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_finished_file_holds_every_chunk_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        let mut file = WriteBehindFile::new(File::create(&path).unwrap());
        let mut expected = Vec::new();
        // Odd chunk sizes across block, step and dirty-bound edges.
        for i in 0..300u32 {
            let chunk: Vec<u8> = (0..(i as usize * 4099 % 700_001))
                .map(|j| (j as u32 ^ i) as u8)
                .collect();
            expected.extend_from_slice(&chunk);
            file.write(Bytes::from(chunk)).await.unwrap();
        }
        file.finish().await.unwrap();
        assert!(expected.len() as u64 > DIRTY_BEHIND + WRITEBACK_STEP);
        assert!(std::fs::read(&path).unwrap() == expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_that_refuses_writeback_pacing_is_written_whole_without_it() {
        // A pipe takes writes but no sync_file_range (ESPIPE).
        let (mut reader, writer) = std::io::pipe().unwrap();
        let expected: Vec<u8> = (0..(2 * WRITEBACK_STEP as usize + 12345))
            .map(|i| (i % 253) as u8)
            .collect();
        let drained = std::thread::spawn(move || {
            let mut all = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut all).unwrap();
            all
        });
        let mut file = WriteBehindFile::new(File::from(std::os::fd::OwnedFd::from(writer)));
        for chunk in expected.chunks(300_001) {
            file.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        // fsync of a pipe is refused too (EINVAL): the bytes all went through.
        let _ = file.finish().await;
        assert!(drained.join().unwrap() == expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_disk_reports_its_error_to_the_writer() {
        // /dev/full fails every write with ENOSPC.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut file = WriteBehindFile::new(full);
        let chunk = Bytes::from(vec![7u8; WRITE_BLOCK]);
        let mut error = None;
        for _ in 0..(2 * QUEUED_CHUNKS) {
            if let Err(e) = file.write(chunk.clone()).await {
                error = Some(e);
                break;
            }
        }
        let error = error.expect("the writer stops at its first error, and the queue fills");
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
        let again = file.write(chunk).await.unwrap_err();
        assert!(again.to_string().contains("earlier write"), "{again}");
        assert!(file.finish().await.is_err());
    }
}
