//! How much of the spool a download may fill. The operator spools sources
//! on an emptyDir with a size limit (the chart's `operator.spoolSizeLimit`,
//! given as `--spool-limit`); past it the kubelet evicts the operator, and
//! every ingest in flight starts over elsewhere. Downloads kept for a retry
//! stay on the spool and downloads in flight grow on it, so a download is
//! promised its length first, and one that would not fit beside what the
//! spool holds and what the others were promised waits instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The spool's room, shared by the downloads of one operator.
#[derive(Debug)]
pub struct SpoolRoom {
    limit: Option<u64>,
    /// Downloads in flight: the file each writes and the bytes it was
    /// promised.
    promised: Mutex<BTreeMap<u64, (PathBuf, u64)>>,
    next: std::sync::atomic::AtomicU64,
}

/// Bytes promised to one download, given back when dropped.
#[derive(Debug)]
pub struct Promise {
    room: Arc<SpoolRoom>,
    ticket: u64,
}

impl Drop for Promise {
    fn drop(&mut self) {
        self.room
            .promised
            .lock()
            .expect("not poisoned")
            .remove(&self.ticket);
    }
}

/// A download that does not fit on the spool now, or ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoom {
    /// The bytes asked for.
    pub need: u64,
    /// The spool's limit.
    pub limit: u64,
    /// What its files hold now.
    pub held: u64,
    /// What downloads in flight were promised beyond what they wrote.
    pub promised: u64,
}

impl NoRoom {
    /// Whether the download is larger than the whole spool: waiting does
    /// not make it fit.
    pub fn never_fits(&self) -> bool {
        self.need > self.limit
    }
}

impl std::fmt::Display for NoRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let NoRoom {
            need,
            limit,
            held,
            promised,
        } = self;
        if self.never_fits() {
            write!(
                f,
                "the source of {need} bytes is larger than the spool's limit of {limit} bytes \
                 (--spool-limit, the chart's operator.spoolSizeLimit)"
            )
        } else {
            write!(
                f,
                "the spool has no room for {need} bytes: it holds {held} of its {limit} bytes \
                 (downloads kept for a retry, or in flight), and {promised} more are promised \
                 to downloads in flight; it waits until those are stored"
            )
        }
    }
}

impl std::error::Error for NoRoom {}

/// Whether `need` more bytes fit on a spool of `limit` holding `held`,
/// with downloads in flight each promised `.0` and having written `.1`
/// (pure).
pub fn fits(limit: u64, held: u64, in_flight: &[(u64, u64)], need: u64) -> Result<(), NoRoom> {
    let promised = in_flight.iter().fold(0u64, |sum, (promised, written)| {
        sum.saturating_add(promised.saturating_sub(*written))
    });
    let wanted = held.checked_add(promised).and_then(|w| w.checked_add(need));
    if wanted.is_some_and(|wanted| wanted <= limit) {
        Ok(())
    } else {
        Err(NoRoom {
            need,
            limit,
            held,
            promised,
        })
    }
}

impl SpoolRoom {
    /// The most the spool may hold (`None`: no limit).
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// The room of a spool of at most `limit` bytes (`None`: no limit).
    pub fn new(limit: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            limit,
            promised: Mutex::new(BTreeMap::new()),
            next: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Promises `need` bytes to the download writing `writing` (a file of
    /// the spool's directory), if they fit beside what the spool's files
    /// hold and what the other downloads in flight were promised and did
    /// not write yet.
    pub fn promise(self: &Arc<Self>, need: u64, writing: &Path) -> Result<Promise, NoRoom> {
        let mut promised = self.promised.lock().expect("not poisoned");
        if let Some(limit) = self.limit {
            let in_flight: Vec<(u64, u64)> = promised
                .values()
                .map(|(file, bytes)| (*bytes, file_len(file)))
                .collect();
            let dir = writing.parent().unwrap_or(Path::new("."));
            fits(limit, held_in(dir), &in_flight, need)?;
        }
        let ticket = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        promised.insert(ticket, (writing.to_path_buf(), need));
        Ok(Promise {
            room: self.clone(),
            ticket,
        })
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The bytes of the files in `dir` (the spool holds no directories).
fn held_in(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_fits_beside_what_the_spool_holds_and_what_others_still_write() {
        assert_eq!(fits(100, 30, &[], 70), Ok(()));
        assert!(fits(100, 31, &[], 70).is_err());
        // Another download promised 50 and wrote 20 of them (counted in
        // what the spool holds): 30 more are on their way.
        assert_eq!(fits(100, 20, &[(50, 20)], 50), Ok(()));
        let refused = fits(100, 20, &[(50, 20)], 51).unwrap_err();
        assert_eq!((refused.held, refused.promised, refused.need), (20, 30, 51));
        // One that wrote more than promised owes nothing more.
        assert_eq!(fits(100, 60, &[(50, 60)], 40), Ok(()));
        assert!(fits(u64::MAX, u64::MAX, &[(u64::MAX, 0)], 1).is_err());
        // Waiting makes room, unless it is more than the whole spool.
        assert!(!fits(100, 90, &[], 20).unwrap_err().never_fits());
        let never = fits(100, 0, &[], 101).unwrap_err();
        assert!(never.never_fits());
        assert!(never.to_string().contains("larger than the spool's limit"));
    }

    #[test]
    fn promises_count_until_given_back_and_kept_files_count_while_on_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let room = SpoolRoom::new(Some(1000));
        let first = room.promise(600, &dir.path().join("a")).unwrap();
        assert!(room.promise(500, &dir.path().join("b")).is_err());
        // The first wrote 400 of its 600: 200 more are promised.
        std::fs::write(dir.path().join("a"), vec![0; 400]).unwrap();
        assert!(room.promise(401, &dir.path().join("b")).is_err());
        let second = room.promise(400, &dir.path().join("b")).unwrap();
        drop((first, second));
        // Kept for a retry: the file still takes its room.
        assert!(room.promise(601, &dir.path().join("c")).is_err());
        std::fs::remove_file(dir.path().join("a")).unwrap();
        assert!(room.promise(1000, &dir.path().join("c")).is_ok());
    }

    #[test]
    fn without_a_limit_everything_is_promised() {
        let dir = tempfile::tempdir().unwrap();
        let room = SpoolRoom::new(None);
        assert!(room.promise(u64::MAX, &dir.path().join("a")).is_ok());
        assert!(room.promise(u64::MAX, &dir.path().join("b")).is_ok());
    }
}
