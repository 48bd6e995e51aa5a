//! Clients of small fleets for the client's unit tests.

use super::{BlobClient, Deadlines, NodeCalls};
use crate::fleet::{FleetMap, MapNode};

/// A client of a fleet of `shards` shards (1 MiB segments) whose node
/// `node-i`, at `urls[i]`, holds shard i; each call may take
/// `deadline_secs`.
pub(crate) fn client_of(shards: u16, urls: Vec<String>, deadline_secs: f64) -> BlobClient {
    let nodes = urls
        .into_iter()
        .zip(0u16..)
        .map(|(url, i)| MapNode {
            name: format!("node-{i}"),
            url,
            shards: [i].into(),
        })
        .collect();
    let map = FleetMap {
        shards,
        segment_size: 1 << 20,
        nodes,
    };
    let calls = NodeCalls::new(
        crate::auth::TokenSet::single("t"),
        Deadlines::from_secs(deadline_secs),
    );
    BlobClient::new(calls, map, None)
}
