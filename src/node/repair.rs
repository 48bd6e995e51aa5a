//! The repair action: rebuild this node's sliver pairs of a committed blob
//! from recovery symbols of its peers, one segment at a time.
//!
//! Peers come from the node's own fleet map, never from the request: a
//! caller can name shards, not addresses. For the pair a shard holds in a
//! segment, the secondary sliver is rebuilt from p symbols served by
//! holders of primary slivers, the primary sliver from q symbols served by
//! holders of secondary slivers: (p + q) symbols with proofs, never the
//! whole blob. Symbols are fetched from a few more peers than needed at
//! once; the first valid ones win. A symbol counts only when it is the one
//! its peer's shard holds (its source index is that shard's pair): a peer
//! that replays another's valid symbol, or claims another shard's index,
//! is counted as lying and the honest peer's symbol still counts. A peer
//! that does not answer in time is not asked again during this repair.
//!
//! The repair commits the write it repairs on this node first, and stops
//! when a delete at least as new arrives: a delete racing a repair leaves
//! no sliver behind. The answer is a JSON line per segment, then the
//! report, so the caller can tell a slow repair from a hung node.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::api::{load_metadata, parse_id, store_error};
use super::NodeState;
use crate::api_error::ApiError;
use crate::codec::{
    rebuild, Axis, BlobId, BlobMetadata, Primary, RecoverySymbol, Secondary, SliverKind,
};
use crate::fleet::FleetMap;
use crate::store::StoreError;
use crate::wire::{RepairLine, RepairReport, RepairRequest};

/// Peers asked beyond the symbols still needed, so one slow peer does not
/// hold a segment.
const EXTRA_PEERS: usize = 2;

pub(super) async fn repair(
    State(state): State<Arc<NodeState>>,
    Json(request): Json<RepairRequest>,
) -> Result<Response, ApiError> {
    let id = parse_id(&request.blob)?;
    // The repaired write is committed here at this generation.
    if request.generation == 0 {
        return Err(ApiError::bad_request("generation 0 is not a generation"));
    }
    if let Some(shard) = request.shards.iter().find(|s| !state.ownership.owns(**s)) {
        return Err(ApiError::conflict(format!(
            "shard {shard} is not owned by node {}",
            state.name
        )));
    }
    let map =
        state.fleet.as_ref().and_then(|f| f.get()).ok_or_else(|| {
            ApiError::unavailable("this node has no fleet map: it cannot find peers")
        })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<RepairLine>(4);
    tokio::spawn(async move {
        let mut repair = Repair {
            state,
            id,
            map,
            request,
            report: RepairReport::default(),
            silent: BTreeSet::new(),
        };
        let last = match repair.run(&tx).await {
            Ok(()) => RepairLine::Report(repair.report),
            Err(message) => RepairLine::Error(message),
        };
        let _ = tx.send(last).await;
    });
    let lines = tokio_stream::wrappers::ReceiverStream::new(rx).map(|line| {
        let mut bytes = serde_json::to_vec(&line).expect("serializable");
        bytes.push(b'\n');
        Ok::<_, std::convert::Infallible>(bytes)
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

struct Repair {
    state: Arc<NodeState>,
    id: BlobId,
    map: FleetMap,
    request: RepairRequest,
    report: RepairReport,
    /// Peers that did not answer in time: not asked again.
    silent: BTreeSet<String>,
}

impl Repair {
    async fn run(&mut self, tx: &tokio::sync::mpsc::Sender<RepairLine>) -> Result<(), String> {
        let metadata = self.metadata().await?;
        let id = self.id;
        for segment in 0..metadata.segment_count() as u32 {
            for shard in self.request.shards.clone() {
                // Off the async threads: a stalled disk stalls this repair
                // alone.
                let state = self.state.clone();
                let (has_primary, has_secondary) = tokio::task::spawn_blocking(move || {
                    let has = |kind| state.store.has_sliver(&id, segment, shard, kind);
                    (has(SliverKind::Primary), has(SliverKind::Secondary))
                })
                .await
                .map_err(|e| e.to_string())?;
                if has_primary && has_secondary {
                    self.report.already_present += 1;
                    continue;
                }
                let mut outcome = Ok(());
                if !has_secondary {
                    outcome = self
                        .rebuild_sliver::<Secondary>(&metadata, segment, shard)
                        .await;
                }
                if outcome.is_ok() && !has_primary {
                    outcome = self
                        .rebuild_sliver::<Primary>(&metadata, segment, shard)
                        .await;
                }
                match outcome {
                    Ok(()) => {
                        self.report.rebuilt += 1;
                        self.report.whole_segment_bytes +=
                            metadata.segment_layout(segment).map_or(0, |l| l.len());
                        self.state.metrics.pairs_rebuilt.inc();
                    }
                    Err(Stop::Deleted(message)) => return Err(message),
                    Err(Stop::Failed(reason)) => self.report.failed.push((segment, shard, reason)),
                }
            }
            if tx.send(RepairLine::Segment(segment)).await.is_err() {
                return Err("the caller went away".into());
            }
        }
        self.state
            .metrics
            .repair_fetched_bytes
            .inc_by(self.report.bytes_fetched);
        Ok(())
    }

    /// The metadata, from the store or from the first peer whose copy
    /// matches the id (read up to the length the fleet reports), and the
    /// repaired write committed here.
    async fn metadata(&mut self) -> Result<Arc<BlobMetadata>, String> {
        let (id, generation) = (self.id, self.request.generation);
        let state = self.state.clone();
        let local = tokio::task::spawn_blocking(move || load_metadata(&state, &id))
            .await
            .map_err(|e| e.to_string())?;
        let (metadata, bytes) = match local {
            Ok(found) => (found, None),
            Err(e) if e.status != axum::http::StatusCode::NOT_FOUND => return Err(e.message),
            Err(_) => {
                let (metadata, bytes) = self.metadata_from_peers().await?;
                (Arc::new(metadata), Some(bytes))
            }
        };
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            state
                .store
                .commit(&id, generation, bytes.as_deref())
                .map_err(|e| store_error(&state, e).message)
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok(metadata)
    }

    async fn metadata_from_peers(&mut self) -> Result<(BlobMetadata, Vec<u8>), String> {
        let id = self.id;
        let config =
            crate::codec::EncodingConfig::new(self.map.shards).map_err(|e| e.to_string())?;
        let limit = config.metadata_len(self.request.segments.into());
        let peers: Vec<_> = self
            .map
            .nodes
            .iter()
            .filter(|n| n.name != self.state.name && !n.shards.is_empty())
            .cloned()
            .collect();
        for peer in peers {
            let client = self.state.peers.node(&peer.url);
            let bytes = match client.metadata(&id, limit).await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => continue,
                Err(e) => {
                    self.note_failure(&peer.name, &e);
                    continue;
                }
            };
            self.report.bytes_fetched += bytes.len() as u64;
            match BlobMetadata::from_bytes(&bytes) {
                Ok(metadata) if metadata.blob_id() == id => return Ok((metadata, bytes)),
                _ => self.blame(&peer.name),
            }
        }
        Err(format!("no peer could provide valid metadata of {id}"))
    }

    fn blame(&mut self, node: &str) {
        self.report.invalid_symbols += 1;
        self.state
            .metrics
            .peer_invalid
            .with_label_values(&[node])
            .inc();
    }

    fn note_failure(&mut self, node: &str, error: &crate::client::NodeCallError) {
        if error.is_silence() {
            self.silent.insert(node.to_string());
        }
        if matches!(error, crate::client::NodeCallError::TooLarge { .. }) {
            self.blame(node);
        }
    }

    /// Rebuilds the `B` sliver that `shard` holds in `segment` and stores it.
    async fn rebuild_sliver<B: Axis>(
        &mut self,
        metadata: &Arc<BlobMetadata>,
        segment: u32,
        shard: u16,
    ) -> Result<(), Stop> {
        let id = self.id;
        let config = metadata.config();
        let rotation = metadata
            .rotation(segment)
            .ok_or_else(|| Stop::Failed("segment out of range".into()))?;
        let layout = metadata.segment_layout(segment).expect("segment exists");
        let target = rotation.pair_of_shard(shard.into()) as u16;
        let needed = B::symbols(&config);
        let source_kind = <B::Other as Axis>::KIND;
        let limit = (6
            + 2
            + 2
            + 2
            + 4
            + 4
            + layout.symbol_size()
            + 1
            + 32 * crate::codec::merkle::proof_len(config.n())) as u64;
        // (shard, node, url) of every other shard's holder.
        let mut candidates = self
            .map
            .nodes
            .iter()
            .filter(|n| !self.silent.contains(&n.name))
            .flat_map(|n| {
                n.shards
                    .iter()
                    .map(move |s| (*s, n.name.clone(), n.url.clone()))
            })
            .filter(|(s, _, _)| !self.request.shards.contains(s))
            .collect::<Vec<_>>()
            .into_iter();
        let mut valid: Vec<RecoverySymbol<B::Other>> = Vec::with_capacity(needed);
        // The shard's own sliver of the other axis (held, or rebuilt just
        // before) gives one symbol without asking anyone: with f liars it
        // is the one that makes q.
        if let Some(own) = self
            .own_symbol::<B::Other>(metadata, segment, shard, target)
            .await
        {
            valid.push(own);
        }
        let mut asking = FuturesUnordered::new();
        loop {
            while valid.len() < needed && asking.len() < needed - valid.len() + EXTRA_PEERS {
                let Some((peer_shard, node, url)) = candidates.next() else {
                    break;
                };
                if self.silent.contains(&node) {
                    continue;
                }
                let client = self.state.peers.node(&url);
                asking.push(async move {
                    let answer = client
                        .symbol(&id, segment, peer_shard, source_kind, shard, limit)
                        .await;
                    (peer_shard, node, answer)
                });
            }
            if valid.len() >= needed {
                break;
            }
            let Some((peer_shard, node, answer)) = asking.next().await else {
                return Err(Stop::Failed(format!(
                    "only {} of {needed} valid {source_kind} symbols could be fetched for the {} sliver",
                    valid.len(),
                    B::KIND
                )));
            };
            let bytes = match answer {
                Ok(Some(bytes)) => bytes,
                Ok(None) => continue,
                Err(e) => {
                    self.note_failure(&node, &e);
                    continue;
                }
            };
            self.report.bytes_fetched += bytes.len() as u64;
            let source = rotation.pair_of_shard(peer_shard.into()) as u16;
            let symbol = RecoverySymbol::<B::Other>::from_bytes(&bytes)
                .ok()
                .filter(|s| {
                    s.source() == source
                        && s.target() == target
                        && s.segment() == segment
                        && s.verify(metadata).is_ok()
                });
            match symbol {
                // A shard the map names on two nodes (during a move) gives
                // its symbol once: the rebuild refuses a second one.
                Some(symbol) if valid.iter().any(|v| v.source() == symbol.source()) => {}
                Some(symbol) => valid.push(symbol),
                None => self.blame(&node),
            }
        }
        // The extra peers asked are heard out, keeping their connections
        // for the next sliver's symbols.
        crate::client::hear_out_in_background(asking);
        let (state, metadata) = (self.state.clone(), metadata.clone());
        tokio::task::spawn_blocking(move || {
            let rebuilt = rebuild::<B>(&metadata, segment, target, valid)
                .map_err(|e| Stop::Failed(e.to_string()))?;
            match state
                .store
                .put_sliver(&id, segment, shard, B::KIND, &rebuilt.sliver.to_bytes())
            {
                Ok(()) => Ok(()),
                Err(e @ (StoreError::Deleted { .. } | StoreError::NotStaged)) => {
                    Err(Stop::Deleted(format!("repair of {id} stopped: {e}")))
                }
                Err(e) => Err(Stop::Failed(e.to_string())),
            }
        })
        .await
        .map_err(|e| Stop::Failed(e.to_string()))?
    }
}

impl Repair {
    /// The symbol for `target` from this node's own `A` sliver of `shard`.
    async fn own_symbol<A: Axis>(
        &self,
        metadata: &Arc<BlobMetadata>,
        segment: u32,
        shard: u16,
        target: u16,
    ) -> Option<RecoverySymbol<A>> {
        let (state, id, metadata) = (self.state.clone(), self.id, metadata.clone());
        tokio::task::spawn_blocking(move || {
            let bytes = state.store.sliver(&id, segment, shard, A::KIND).ok()??;
            let sliver = crate::codec::Sliver::<A>::from_shared(bytes).ok()?;
            let symbol = crate::codec::SymbolSource::new(&sliver).symbol(target)?;
            symbol.verify(&metadata).is_ok().then_some(symbol)
        })
        .await
        .ok()?
    }
}

/// Why a sliver was not rebuilt.
enum Stop {
    /// The blob was deleted meanwhile: the whole repair stops.
    Deleted(String),
    /// This pair failed; the others go on.
    Failed(String),
}
