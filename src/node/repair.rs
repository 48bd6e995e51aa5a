//! The repair action: rebuild this node's sliver pairs of a blob from
//! recovery symbols of its peers, one segment at a time.
//!
//! For the pair a shard holds in a segment, the secondary sliver is rebuilt
//! from p symbols served by holders of primary slivers, the primary sliver
//! from q symbols served by holders of secondary slivers: (p + q) symbols
//! with proofs, never the whole blob. Symbols are fetched from as many peers
//! as still needed, in parallel; a peer whose symbol fails its proof is
//! counted and replaced by another.

use std::sync::Arc;

use futures_util::future::join_all;

use super::api::{load_metadata, parse_id, store_error};
use super::NodeState;
use crate::api_error::ApiError;
use crate::client::NodeClient;
use crate::codec::{
    rebuild, Axis, BlobId, BlobMetadata, Primary, RecoverySymbol, Secondary, SliverKind,
};
use crate::wire::{Peer, RepairReport, RepairRequest};

pub(super) async fn run(
    state: Arc<NodeState>,
    request: RepairRequest,
) -> Result<RepairReport, ApiError> {
    let id = parse_id(&request.blob)?;
    if let Some(shard) = request.shards.iter().find(|s| !state.ownership.owns(**s)) {
        return Err(ApiError::conflict(format!(
            "shard {shard} is not owned by node {}",
            state.name
        )));
    }
    let mut report = RepairReport::default();
    let metadata = metadata_from_store_or_peers(&state, &id, &request.peers, &mut report).await?;
    let peers: Vec<&Peer> = request
        .peers
        .iter()
        .filter(|p| !request.shards.contains(&p.shard))
        .collect();
    for segment in 0..metadata.segment_count() as u32 {
        for &shard in &request.shards {
            let has = |kind| state.store.has_sliver(&id, segment, shard, kind);
            let (has_primary, has_secondary) =
                (has(SliverKind::Primary), has(SliverKind::Secondary));
            if has_primary && has_secondary {
                report.already_present += 1;
                continue;
            }
            let mut outcome = Ok(());
            if !has_secondary {
                outcome = rebuild_sliver::<Secondary>(
                    &state,
                    &metadata,
                    segment,
                    shard,
                    &peers,
                    &mut report,
                )
                .await;
            }
            if outcome.is_ok() && !has_primary {
                outcome = rebuild_sliver::<Primary>(
                    &state,
                    &metadata,
                    segment,
                    shard,
                    &peers,
                    &mut report,
                )
                .await;
            }
            match outcome {
                Ok(()) => {
                    report.rebuilt += 1;
                    report.whole_segment_bytes +=
                        metadata.segment_layout(segment).map_or(0, |l| l.len());
                    state.metrics.pairs_rebuilt.inc();
                }
                Err(reason) => report.failed.push((segment, shard, reason)),
            }
        }
    }
    state
        .metrics
        .repair_fetched_bytes
        .inc_by(report.bytes_fetched);
    Ok(report)
}

async fn metadata_from_store_or_peers(
    state: &Arc<NodeState>,
    id: &BlobId,
    peers: &[Peer],
    report: &mut RepairReport,
) -> Result<Arc<BlobMetadata>, ApiError> {
    let local = {
        let (state, id) = (state.clone(), *id);
        tokio::task::spawn_blocking(move || load_metadata(&state, &id))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
    };
    match local {
        Ok(found) => return Ok(found),
        Err(e) if e.status != axum::http::StatusCode::NOT_FOUND => return Err(e),
        Err(_) => {}
    }
    for peer in peers {
        let client = NodeClient::new(state.http.clone(), &peer.url);
        let Ok(Some(bytes)) = client.metadata(id).await else {
            continue;
        };
        report.bytes_fetched += bytes.len() as u64;
        match BlobMetadata::from_bytes(&bytes) {
            Ok(metadata) if metadata.blob_id() == *id => {
                state
                    .store
                    .put_metadata(id, &bytes)
                    .map_err(|e| store_error(state, e))?;
                return Ok(Arc::new(metadata));
            }
            _ => {
                state
                    .metrics
                    .peer_invalid
                    .with_label_values(&[&peer.node])
                    .inc();
            }
        }
    }
    Err(ApiError::unavailable(format!(
        "no peer could provide valid metadata of {id}"
    )))
}

/// Rebuilds the `B` sliver that `shard` holds in `segment` and stores it.
async fn rebuild_sliver<B: Axis>(
    state: &Arc<NodeState>,
    metadata: &Arc<BlobMetadata>,
    segment: u32,
    shard: u16,
    peers: &[&Peer],
    report: &mut RepairReport,
) -> Result<(), String> {
    let id = metadata.blob_id();
    let config = metadata.config();
    let rotation = metadata.rotation(segment).ok_or("segment out of range")?;
    let target = rotation.pair_of_shard(shard.into()) as u16;
    let needed = B::symbols(&config);
    let source_kind = <B::Other as Axis>::KIND;
    let mut valid: Vec<RecoverySymbol<B::Other>> = Vec::with_capacity(needed);
    let mut candidates = peers.iter();
    while valid.len() < needed {
        let wave: Vec<&&Peer> = candidates.by_ref().take(needed - valid.len()).collect();
        if wave.is_empty() {
            return Err(format!(
                "only {} of {needed} valid {source_kind} symbols could be fetched for the {} sliver",
                valid.len(),
                B::KIND
            ));
        }
        let answers = join_all(wave.iter().map(|peer| async move {
            let client = NodeClient::new(state.http.clone(), &peer.url);
            (
                peer,
                client
                    .symbol(&id, segment, peer.shard, source_kind, shard)
                    .await,
            )
        }))
        .await;
        for (peer, answer) in answers {
            let Ok(Some(bytes)) = answer else {
                continue;
            };
            report.bytes_fetched += bytes.len() as u64;
            let symbol = RecoverySymbol::<B::Other>::from_bytes(&bytes)
                .ok()
                .filter(|s| {
                    s.target() == target && s.segment() == segment && s.verify(metadata).is_ok()
                });
            match symbol {
                Some(symbol) => valid.push(symbol),
                None => {
                    report.invalid_symbols += 1;
                    state
                        .metrics
                        .peer_invalid
                        .with_label_values(&[&peer.node])
                        .inc();
                }
            }
        }
    }
    let (state, metadata) = (state.clone(), metadata.clone());
    tokio::task::spawn_blocking(move || {
        let rebuilt = rebuild::<B>(&metadata, segment, target, valid).map_err(|e| e.to_string())?;
        state
            .store
            .put_sliver(&id, segment, shard, B::KIND, &rebuilt.sliver.to_bytes())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}
