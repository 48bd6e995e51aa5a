//! The fleet map: which node holds which shard, and where it answers.
//! Written by the control loop (local or operator), read by gateways and
//! clients.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One node of the fleet map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapNode {
    /// The node's name.
    pub name: String,
    /// Base URL of its API.
    pub url: String,
    /// Shards it owns.
    pub shards: BTreeSet<u16>,
}

/// Shards and the nodes that hold them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetMap {
    /// Shard count n.
    pub shards: u16,
    /// Segment size for new blobs.
    pub segment_size: u64,
    /// The nodes.
    pub nodes: Vec<MapNode>,
}

impl FleetMap {
    /// The node holding `shard`, if any.
    pub fn holder(&self, shard: u16) -> Option<&MapNode> {
        self.nodes.iter().find(|n| n.shards.contains(&shard))
    }

    /// Reads a fleet map file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read fleet map {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid fleet map {}: {e}", path.display()))
    }

    /// Writes a fleet map file atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("serializable"))?;
        std::fs::rename(tmp, path)
    }
}

/// A fleet map file another process rewrites: re-read when it changed.
#[derive(Debug)]
pub struct MapFile {
    path: std::path::PathBuf,
    current: std::sync::RwLock<(Option<FleetMap>, Option<std::time::SystemTime>)>,
}

impl MapFile {
    /// Watches the map at `path` (read on first use).
    pub fn new(path: std::path::PathBuf) -> Self {
        Self {
            path,
            current: std::sync::RwLock::new((None, None)),
        }
    }

    /// A map known from the start.
    pub fn fixed(map: FleetMap) -> Self {
        Self {
            path: std::path::PathBuf::new(),
            current: std::sync::RwLock::new((Some(map), None)),
        }
    }

    /// The map as it is now (re-read if the file changed); `None` until
    /// the file exists. A broken rewrite keeps the last good map.
    pub fn get(&self) -> Option<FleetMap> {
        if !self.path.as_os_str().is_empty() {
            let modified = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if modified.is_some() && modified != self.current.read().expect("not poisoned").1 {
                match FleetMap::read(&self.path) {
                    Ok(map) => *self.current.write().expect("not poisoned") = (Some(map), modified),
                    Err(e) => tracing::warn!("keeping the current fleet map: {e:#}"),
                }
            }
        }
        self.current.read().expect("not poisoned").0.clone()
    }
}
