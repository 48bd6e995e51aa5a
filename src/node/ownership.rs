//! Which shards this node owns: from a fixed list, or from a JSON file
//! (`{"shards": [0, 3]}`) that the control loop rewrites while the node
//! runs; the node re-reads it when it changes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The content of a shard-ownership file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ShardsFile {
    /// Shards owned.
    pub shards: BTreeSet<u16>,
}

impl ShardsFile {
    /// Reads and parses a shards file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        crate::json_file::read(path, "shards file")
    }

    /// Writes a shards file atomically (temp file and rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        crate::json_file::write(path, self)
    }
}

/// Where ownership comes from.
#[derive(Debug, Clone)]
pub enum ShardSource {
    /// A fixed list.
    Fixed(BTreeSet<u16>),
    /// A file re-read when it changes.
    File(PathBuf),
}

/// The shards owned now.
#[derive(Debug)]
pub struct Ownership {
    source: ShardSource,
    current: RwLock<(BTreeSet<u16>, Option<SystemTime>)>,
}

impl Ownership {
    /// Loads ownership from its source; a file that does not exist yet
    /// means no shards.
    pub fn load(source: ShardSource) -> anyhow::Result<Self> {
        let ownership = Self {
            current: RwLock::new((BTreeSet::new(), None)),
            source,
        };
        ownership.refresh()?;
        Ok(ownership)
    }

    /// The owned shards.
    pub fn shards(&self) -> BTreeSet<u16> {
        self.current.read().expect("not poisoned").0.clone()
    }

    /// Whether `shard` is owned.
    pub fn owns(&self, shard: u16) -> bool {
        self.current
            .read()
            .expect("not poisoned")
            .0
            .contains(&shard)
    }

    /// Re-reads the file if it changed; returns whether ownership changed.
    pub fn refresh(&self) -> anyhow::Result<bool> {
        match &self.source {
            ShardSource::Fixed(shards) => {
                let mut current = self.current.write().expect("not poisoned");
                let changed = current.0 != *shards;
                current.0 = shards.clone();
                Ok(changed)
            }
            ShardSource::File(path) => {
                let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                if modified.is_some() && modified == self.current.read().expect("not poisoned").1 {
                    return Ok(false);
                }
                let shards = if modified.is_some() {
                    ShardsFile::read(path)?.shards
                } else {
                    BTreeSet::new()
                };
                let mut current = self.current.write().expect("not poisoned");
                let changed = current.0 != shards;
                *current = (shards, modified);
                Ok(changed)
            }
        }
    }

    /// Re-reads the source every `period` until the process ends.
    pub fn watch(self: std::sync::Arc<Self>, period: Duration) {
        if matches!(self.source, ShardSource::Fixed(_)) {
            return;
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                match self.refresh() {
                    Ok(true) => tracing::info!(shards = ?self.shards(), "shard ownership changed"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("keeping current shard ownership: {e:#}"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_file_changes_ownership() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shards.json");
        let ownership = Ownership::load(ShardSource::File(path.clone())).unwrap();
        assert!(ownership.shards().is_empty());
        ShardsFile {
            shards: [1, 4].into(),
        }
        .write(&path)
        .unwrap();
        assert!(ownership.refresh().unwrap());
        assert!(ownership.owns(4) && !ownership.owns(2));
        std::thread::sleep(Duration::from_millis(20));
        ShardsFile { shards: [2].into() }.write(&path).unwrap();
        assert!(ownership.refresh().unwrap());
        assert_eq!(ownership.shards(), [2].into());
    }

    #[test]
    fn a_garbled_file_is_an_error_and_keeps_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shards.json");
        ShardsFile { shards: [3].into() }.write(&path).unwrap();
        let ownership = Ownership::load(ShardSource::File(path.clone())).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, "{not json").unwrap();
        assert!(ownership.refresh().is_err());
        assert_eq!(ownership.shards(), [3].into());
    }
}
