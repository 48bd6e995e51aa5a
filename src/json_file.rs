//! Small JSON files shared between processes (fleet map, shard ownership):
//! read with a clear error, written atomically (temp file, then rename) so
//! a reader never sees half a file.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Reads and parses the JSON file at `path`; `what` names it in errors.
pub fn read<T: DeserializeOwned>(path: &Path, what: &str) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {what} {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("invalid {what} {}: {e}", path.display()))
}

/// Writes `value` as JSON to `path` atomically.
pub fn write<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}
