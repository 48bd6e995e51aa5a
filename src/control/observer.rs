//! Reads the fleet between reconciles without reading every inventory
//! whole each time. After a whole reading (`observe`) in which every node
//! answered, the next readings ask each node only which blobs changed
//! since (its journal, `GET /v1/inventory/changes`), ask every node for
//! its entries of those blobs, and fold just them again into the last
//! view. A fleet at rest costs a reading one small call per node.
//!
//! Nodes that did not answer the last reading stay out of it while they
//! still do not answer (a node down for a while costs nothing more); one
//! that answers again brings a whole reading. A whole reading comes too
//! whenever a changes reading could be wrong or costly: the first time,
//! when the nodes are not the same, when a node stopped partway through
//! its inventory (the view keeps what it listed before), when a node's
//! journal no longer knows the last position (it restarted or forgot),
//! when a node owns other shards than the view says, when a call to an
//! answering node fails or too many blobs changed, and every
//! `WHOLE_READING_EVERY` regardless (files changed behind the node's back).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::{observe_whole, FleetView, NodeAddress, ViewBuilder};
use crate::client::{ChangesAnswer, NodeCalls, NodeClient, ENTRIES_PER_REQUEST};
use crate::codec::BlobId;
use crate::metrics::FleetMetrics;
use crate::store::JournalPosition;
use crate::wire::InventoryBlob;

/// A whole reading at least this often.
pub const WHOLE_READING_EVERY: Duration = Duration::from_secs(600);

/// Past this many changed blobs a whole reading is cheaper.
pub const MOST_CHANGED: usize = 50_000;

/// Past this many pages of one node's changes a whole reading is made:
/// an honest node's full pages reach `MOST_CHANGED` in a tenth of them.
pub const MOST_CHANGED_PAGES: usize = 10 * MOST_CHANGED.div_ceil(crate::client::CHANGES_PAGE);

/// How the last reading read the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Every node's whole inventory.
    Whole,
    /// Only the blobs changed since the reading before.
    Changes,
}

impl Reading {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Reading::Whole => "whole",
            Reading::Changes => "changes",
        }
    }
}

/// What the last reading left for the next one to go on from.
struct LastReading {
    nodes: Vec<NodeAddress>,
    /// Per node (in `nodes`' order), its journal position then; `None`
    /// for a node that did not answer.
    positions: Vec<Option<JournalPosition>>,
    view: Arc<FleetView>,
    whole_at: Instant,
}

/// Reads a fleet's view again and again, reading only what changed when
/// it safely can.
#[derive(Default)]
pub struct Observer {
    last: Option<LastReading>,
    whole_every: Option<Duration>,
}

impl Observer {
    /// An observer whose first reading is whole.
    pub fn new() -> Self {
        Self::default()
    }

    /// An observer reading whole at least every `every` (instead of
    /// `WHOLE_READING_EVERY`).
    pub fn with_whole_reading_every(every: Duration) -> Self {
        Self {
            last: None,
            whole_every: Some(every),
        }
    }

    /// The view of the fleet `nodes` now, and how it was read (shared
    /// with the observer: a reading that finds nothing changed copies
    /// nothing).
    pub async fn observe(
        &mut self,
        calls: &NodeCalls,
        nodes: &[NodeAddress],
        metrics: &FleetMetrics,
    ) -> (Arc<FleetView>, Reading) {
        let every = self.whole_every.unwrap_or(WHOLE_READING_EVERY);
        let last = self
            .last
            .take()
            .filter(|last| last.nodes == nodes && last.whole_at.elapsed() < every);
        if let Some(last) = last {
            match read_changes(calls, last).await {
                Ok((last, changed)) => {
                    metrics
                        .inventory_reads
                        .with_label_values(&[Reading::Changes.name()])
                        .inc();
                    metrics.inventory_changed_blobs.inc_by(changed as u64);
                    let view = Arc::clone(&last.view);
                    self.last = Some(last);
                    return (view, Reading::Changes);
                }
                Err(why) => tracing::debug!("reading every inventory whole: {why}"),
            }
        }
        let (last, view) = read_whole(calls, nodes).await;
        self.last = last;
        metrics
            .inventory_reads
            .with_label_values(&[Reading::Whole.name()])
            .inc();
        (view, Reading::Whole)
    }
}

/// Every inventory, whole, after each node's journal head (so changes
/// made while the inventories are read come in the next reading); the
/// reading can be gone on from when every answering node gave its head
/// and none stopped partway.
async fn read_whole(
    calls: &NodeCalls,
    nodes: &[NodeAddress],
) -> (Option<LastReading>, Arc<FleetView>) {
    let whole_at = Instant::now();
    let heads = join_all(
        nodes
            .iter()
            .map(|node| async move { calls.node(&node.url).inventory_changes(None).await }),
    )
    .await;
    let (view, stopped) = observe_whole(calls, nodes).await;
    let view = Arc::new(view);
    // Answering nodes need a position; silent ones have none.
    let positions: Option<Vec<Option<JournalPosition>>> = nodes
        .iter()
        .zip(heads)
        .map(|(node, head)| match head {
            _ if view.silent.contains(&node.name) => Some(None),
            Ok(ChangesAnswer::Changes(head)) if view.ready.contains(&node.name) => {
                Some(Some(head.next))
            }
            _ => None,
        })
        .collect();
    let last = positions
        .filter(|_| stopped.is_empty())
        .map(|positions| LastReading {
            nodes: nodes.to_vec(),
            positions,
            view: Arc::clone(&view),
            whole_at,
        });
    (last, view)
}

/// The last view with the blobs changed since folded again, and how many
/// changed; or why a whole reading must be made instead.
async fn read_changes(
    calls: &NodeCalls,
    mut last: LastReading,
) -> Result<(LastReading, usize), String> {
    let clients: Vec<NodeClient> = last.nodes.iter().map(|n| calls.node(&n.url)).collect();
    let view = &last.view;
    let answers = join_all(clients.iter().zip(&last.nodes).zip(&last.positions).map(
        |((client, node), position)| async move {
            match position {
                Some(position) => {
                    let owned = view.owned.get(&node.name);
                    let (ids, next) = changes_of(client, *position, owned).await?;
                    Ok((ids, Some(next)))
                }
                None => still_silent(client).await.map(|()| (Vec::new(), None)),
            }
        },
    ))
    .await;
    let mut changed = BTreeSet::new();
    let mut positions = Vec::with_capacity(answers.len());
    for (node, answer) in last.nodes.iter().zip(answers) {
        let (ids, position) = answer.map_err(|why| format!("node {}: {why}", node.name))?;
        changed.extend(ids);
        positions.push(position);
        if changed.len() > MOST_CHANGED {
            return Err(format!("more than {MOST_CHANGED} blobs changed"));
        }
    }
    last.positions = positions;
    if changed.is_empty() {
        return Ok((last, 0));
    }
    let changed: Vec<BlobId> = changed.into_iter().collect();
    let owned = last.view.owned.clone();
    // Copied only when someone still holds the last view.
    let mut builder = ViewBuilder::resume(Arc::unwrap_or_clone(std::mem::take(&mut last.view)));
    let forgotten: HashSet<String> = changed.iter().map(ToString::to_string).collect();
    builder.forget(&forgotten);
    // Only the answering nodes are asked (the others did not answer
    // the whole reading either).
    let (answering_clients, answering): (Vec<NodeClient>, Vec<NodeAddress>) = clients
        .iter()
        .zip(&last.nodes)
        .zip(&last.positions)
        .filter(|(_, position)| position.is_some())
        .map(|((client, node), _)| (client.clone(), node.clone()))
        .unzip();
    for chunk in changed.chunks(ENTRIES_PER_REQUEST) {
        let entries = entries_of(&answering_clients, &answering, &owned, chunk).await?;
        for id in chunk {
            let id = id.to_string();
            let of_blob: Vec<(&str, &InventoryBlob)> = entries
                .iter()
                .filter_map(|(node, blobs)| Some((node.as_str(), blobs.get(id.as_str())?)))
                .collect();
            builder.fold(&id, &of_blob);
        }
    }
    last.view = Arc::new(builder.finish());
    Ok((last, changed.len()))
}

/// Ok while a node that did not answer the last reading still does not
/// answer; an error (calling for a whole reading) once it does.
async fn still_silent(client: &NodeClient) -> Result<(), String> {
    match client.inventory_changes(None).await {
        Ok(_) => Err("it answers again".to_string()),
        Err(_) => Ok(()),
    }
}

/// The blobs changed on one node after `position` (every page), and the
/// position after them; an error when the node owns other shards than
/// `owned`, does not answer, forgot the position or changed too many.
async fn changes_of(
    client: &NodeClient,
    mut position: JournalPosition,
    owned: Option<&BTreeSet<u16>>,
) -> Result<(Vec<BlobId>, JournalPosition), String> {
    let mut ids = Vec::new();
    // Each page moves on by at least one blob: a node that pages through
    // many more than an honest one would (a page of one, again and again)
    // is read whole instead.
    for _ in 0..MOST_CHANGED_PAGES {
        let page = match client
            .inventory_changes(Some(position))
            .await
            .map_err(|e| e.to_string())?
        {
            ChangesAnswer::Changes(page) => page,
            ChangesAnswer::Forgotten(why) => return Err(why),
        };
        let shards: BTreeSet<u16> = page.changes.shards.iter().copied().collect();
        if Some(&shards) != owned {
            return Err("it owns other shards than the last view says".to_string());
        }
        ids.extend(page.ids);
        position = page.next;
        if !page.changes.more {
            return Ok((ids, position));
        }
        if ids.len() > MOST_CHANGED {
            return Err(format!("more than {MOST_CHANGED} blobs changed"));
        }
    }
    Err(format!(
        "its changes came in more than {MOST_CHANGED_PAGES} pages"
    ))
}

/// Every node's entries of `ids`, by node and blob id; an error when a
/// node does not answer or owns other shards than `owned` says.
async fn entries_of(
    clients: &[NodeClient],
    nodes: &[NodeAddress],
    owned: &BTreeMap<String, BTreeSet<u16>>,
    ids: &[BlobId],
) -> Result<Vec<(String, HashMap<String, InventoryBlob>)>, String> {
    let answers = join_all(clients.iter().map(|client| client.inventory_entries(ids))).await;
    let mut entries = Vec::with_capacity(nodes.len());
    for (node, answer) in nodes.iter().zip(answers) {
        let answer = answer.map_err(|e| format!("node {}: {e}", node.name))?;
        let shards: BTreeSet<u16> = answer.shards.iter().copied().collect();
        if owned.get(&node.name) != Some(&shards) {
            return Err(format!(
                "node {} owns other shards than the last view says",
                node.name
            ));
        }
        let by_id = answer
            .blobs
            .into_iter()
            .map(|blob| (blob.id.clone(), blob))
            .collect();
        entries.push((node.name.clone(), by_id));
    }
    Ok(entries)
}
