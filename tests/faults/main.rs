//! The promises of shared/design/guarantees.md, one scenario each, with
//! real processes: `redstuff dev` fleets whose node processes are killed,
//! stopped (SIGSTOP), resumed and wiped, fake peers that answer too much,
//! and a disk that errs. Every wait is bounded; every process is ours and
//! ended by PID; a stopped process is resumed before the test ends.
//!
//! Operations that must not hang run under `NO_HANG`: far longer than
//! they take, so a slow machine passes and a hang fails.

#[path = "../dev_fleet/mod.rs"]
mod dev_fleet;

mod cli_retries;
mod credentials;
mod deadlines;
mod deletes;
mod disks;
mod downloads;
mod hung;
mod limits;
mod procs;
mod random;
mod read_memory;
mod refusals;
mod resumable;
mod s3_kills;
mod writes;

use std::future::Future;
use std::time::Duration;

/// Longer than any operation here takes; shorter than a hang.
pub const NO_HANG: Duration = Duration::from_secs(30);

/// The work of one operation of these scenarios beyond the node deadlines
/// it may wait out: a few MB encoded, sent, decoded and compared on a
/// loaded 2-core machine. Generous, and far below a hang.
pub const WORK: Duration = Duration::from_secs(10);

/// The bound of an operation that may wait out `deadlines` node deadlines
/// of `deadline` each: that long, plus `WORK`.
pub fn bound(deadline: Duration, deadlines: u32) -> Duration {
    deadline * deadlines + WORK
}

/// Runs `operation`, failing the test if it does not end within `limit`.
pub async fn within_bound<T>(what: &str, limit: Duration, operation: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, operation)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// PUTs `data` through `gateway` within `limit` (failing the test past
/// it): the status and the JSON answer.
pub async fn put_within(
    what: &str,
    limit: Duration,
    http: &reqwest::Client,
    gateway: &str,
    data: &[u8],
) -> (u16, serde_json::Value) {
    let response = within_bound(
        what,
        limit,
        http.put(format!("{gateway}/v1/blobs"))
            .body(data.to_vec())
            .send(),
    )
    .await
    .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Runs `operation`, failing the test if it does not end within `NO_HANG`.
pub async fn within<T>(what: &str, operation: impl Future<Output = T>) -> T {
    tokio::time::timeout(NO_HANG, operation)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {NO_HANG:?}"))
}

/// The blob id `data` gets in a 7-shard fleet with 1 MiB segments.
pub fn blob_id(data: &[u8]) -> String {
    let config = redstuff::codec::EncodingConfig::new(7).unwrap();
    let (metadata, _) = redstuff::codec::BlobEncoder::new(config, 1 << 20)
        .unwrap()
        .encode(data)
        .unwrap();
    metadata.blob_id().to_string()
}
