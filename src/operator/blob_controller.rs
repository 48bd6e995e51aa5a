//! The Blob reconciler. A Blob gets a finalizer first; then its source is
//! ingested when it has no blob id yet (a URL, a ConfigMap or Secret key;
//! an upload already names its id); its health comes from the inventory
//! view the cluster controller keeps (repairs are started there, most at
//! risk first, for every blob of the cluster). Deleting a Blob deletes its
//! slivers (`blob_deletion`). A blob deleted through the gateway or S3 is
//! Deleted, not Lost, and the operator's own record of its upload goes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::ResourceExt;

use super::blob_deletion::cleanup_blob;
use super::blob_status::{blob_status, waiting_to_retry, ClusterFacts, IngestState};
use super::context::Context;
use super::controller::{status_merge_patch, ReconcileError};
use super::crd::{Blob, BlobHealth, BlobStatus, StorageCluster};
use super::ingest::{self, IngestError};
use super::status::validate_spec;
use super::upload_records;
use super::uploads_in_flight::UploadInFlight;

/// The finalizer that deletes a Blob's slivers before the Blob goes.
pub const BLOB_FINALIZER: &str = "redstuff.dev/slivers";

/// Reconciles one Blob (finalizer first).
pub async fn reconcile_blob(blob: Arc<Blob>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let namespace = blob.namespace().ok_or(ReconcileError::NoNamespace)?;
    let blobs: Api<Blob> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&blobs, BLOB_FINALIZER, blob, |event| async {
        match event {
            Finalizer::Apply(blob) => apply_blob(&blob, &ctx, &namespace).await,
            Finalizer::Cleanup(blob) => cleanup_blob(&blob, &ctx, &namespace).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => ReconcileError::Finalizer(other.to_string()),
    })
}

/// How soon a Blob waiting for an ingest slot asks again.
const INGEST_SLOT_POLL: Duration = Duration::from_secs(5);

async fn apply_blob(blob: &Blob, ctx: &Context, namespace: &str) -> Result<Action, ReconcileError> {
    let blobs: Api<Blob> = Api::namespaced(ctx.client.clone(), namespace);
    let clusters: Api<StorageCluster> = Api::namespaced(ctx.client.clone(), namespace);
    let uid = blob.uid().unwrap_or_default();
    let mut current = ctx.written_statuses.newest(&uid, blob.status.as_ref());
    let previous = current.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let generation = blob.metadata.generation;
    let cluster = clusters.get_opt(&blob.spec.cluster).await?;

    // An ingest whose status write failed is not done again: its id is
    // written now.
    let mut blob_id = previous
        .blob_id
        .clone()
        .or_else(|| blob.spec.source.upload.as_ref().map(|u| u.blob_id.clone()))
        .or_else(|| ctx.stored_ingests.of(&uid));
    let mut ingest_state = IngestState::Done;
    let mut retry = Duration::from_secs(60);
    let mut _uploading = None;
    let waiting = cluster
        .as_ref()
        .and_then(|_| waiting_to_retry(&previous, now.0));
    if let (None, Some((wait, failed))) = (&blob_id, waiting) {
        ingest_state = failed;
        retry = wait;
    } else if blob_id.is_none() {
        match &cluster {
            None => ingest_state = IngestState::NoCluster,
            Some(cluster) => match ctx.ingest_slots.clone().try_acquire_owned() {
                Err(_) => {
                    ingest_state = IngestState::Queued {
                        slots: ctx.max_concurrent_ingests,
                    };
                    retry = INGEST_SLOT_POLL;
                }
                Ok(_slot) => {
                    let in_progress = blob_status(
                        &previous,
                        None,
                        &IngestState::InProgress,
                        &ClusterFacts::Unobserved,
                        generation,
                        &now,
                    );
                    write_status_if_changed(ctx, &blobs, blob, &mut current, in_progress).await?;
                    // The Blob's deletion waits for this reconcile: a
                    // source that trickles would hold it (and its
                    // namespace's deletion) for ever. Only the fetch stops
                    // for it: an upload once begun runs to its end (the
                    // stall limit bounds it), so that the id of what the
                    // gateway stored is known and the deletion deletes it.
                    let fetched = tokio::select! {
                        biased;
                        fetched = fetch_source(blob, ctx, namespace) => Some(fetched),
                        () = deletion_of(&blobs, blob, ctx.deletion_poll) => None,
                    };
                    let ingested = match fetched {
                        Some(Ok(fetched)) => {
                            Some(upload_fetched(fetched, cluster, ctx, namespace).await)
                        }
                        Some(Err(e)) => Some(Err(e)),
                        None => None,
                    };
                    let Some(ingested) = ingested else {
                        ctx.publish(
                            blob,
                            false,
                            "IngestStopped",
                            "the Blob is being deleted: its ingest stopped".into(),
                        )
                        .await;
                        return Ok(Action::requeue(Duration::from_secs(1)));
                    };
                    match ingested {
                        Ok((id, resumes, uploading)) => {
                            // Until the status names the id, below.
                            _uploading = Some(uploading);
                            ctx.stored_ingests.stored(
                                &uid,
                                (namespace.to_string(), cluster.name_any()),
                                id.clone(),
                            );
                            let resumed = match resumes {
                                0 => String::new(),
                                1 => " (the download broke off once and went on where it stopped)"
                                    .into(),
                                n => format!(
                                " (the download broke off {n} times and went on where it stopped)"
                            ),
                            };
                            ctx.publish(
                                blob,
                                false,
                                "Ingested",
                                format!("stored as {id}{resumed}"),
                            )
                            .await;
                            blob_id = Some(id);
                        }
                        Err(e) => {
                            ctx.publish(blob, true, "IngestFailed", e.to_string()).await;
                            retry = if e.is_transient() {
                                Duration::from_secs(30)
                            } else {
                                Duration::from_secs(600)
                            };
                            let due = Timestamp::from_second(
                                Timestamp::now().as_second() + retry.as_secs() as i64,
                            )
                            .unwrap_or(now.0);
                            ingest_state = IngestState::Failed {
                                reason: e.reason().into(),
                                message: format!("{e}; the next attempt is at {due}"),
                                next_attempt: due.to_string(),
                            };
                        }
                    }
                }
            },
        }
    }

    let facts = cluster_facts(cluster.as_ref(), blob_id.as_deref(), ctx, namespace);
    if matches!(facts, ClusterFacts::Unobserved) {
        retry = retry.min(Duration::from_secs(5));
    }
    let status = blob_status(
        &previous,
        blob_id.as_deref(),
        &ingest_state,
        &facts,
        generation,
        &now,
    );
    if status.health != previous.health {
        if let Some(health) = status.health {
            let warning = matches!(health, BlobHealth::AtRisk | BlobHealth::Lost);
            let message = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Healthy")
                .map(|c| c.message.clone())
                .unwrap_or_default();
            ctx.publish(blob, warning, &format!("Blob{health:?}"), message)
                .await;
        }
    }
    let deleted_elsewhere = status.health == Some(BlobHealth::Deleted);
    let names_id = status.blob_id.is_some();
    let written = write_status_if_changed(ctx, &blobs, blob, &mut current, status).await?;
    if names_id {
        ctx.stored_ingests.named(&uid);
    }
    if deleted_elsewhere && upload_records::is_operator_record(blob) {
        // Guarded by the version the status write made, not the one read.
        let version = written.or_else(|| blob.resource_version());
        remove_upload_record(&blobs, blob, version).await?;
        ctx.publish(
            blob,
            false,
            "UploadRecordRemoved",
            format!(
                "blob {} was deleted through the gateway or S3: the operator's record of its upload goes too",
                blob_id.unwrap_or_default()
            ),
        )
        .await;
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(retry))
}

/// Deletes an upload record the operator made, whose blob was deleted
/// elsewhere, without its finalizer's cleanup: nothing is left to delete,
/// and a cleanup could delete the same bytes if they were stored again
/// meanwhile. The finalizer goes first, guarded by the record's version
/// (a record changed since it was read is left for the next reconcile).
async fn remove_upload_record(
    blobs: &Api<Blob>,
    blob: &Blob,
    version: Option<String>,
) -> Result<(), ReconcileError> {
    let name = blob.name_any();
    let finalizers: Vec<&String> = blob
        .finalizers()
        .iter()
        .filter(|f| f.as_str() != BLOB_FINALIZER)
        .collect();
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": version,
        }
    });
    blobs
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    match blobs.delete(&name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn cluster_facts(
    cluster: Option<&StorageCluster>,
    blob_id: Option<&str>,
    ctx: &Context,
    namespace: &str,
) -> ClusterFacts {
    let Some(cluster) = cluster else {
        return ClusterFacts::Missing;
    };
    let encoding = match validate_spec(&cluster.spec) {
        Ok(encoding) => encoding,
        Err(problem) => return ClusterFacts::Invalid(problem),
    };
    let key = (namespace.to_string(), cluster.name_any());
    let Some(fleet) = ctx.fleets.find(&key) else {
        return ClusterFacts::Unobserved;
    };
    let view = fleet.view.lock().expect("not poisoned").clone();
    match view {
        // A reading no node answered says nothing of any blob.
        Some((_, view)) if view.ready.is_empty() => ClusterFacts::Unobserved,
        Some((shards, view)) if shards == cluster.spec.shards => ClusterFacts::Observed {
            encoding,
            blob: blob_id.and_then(|id| view.blobs.get(id).cloned()),
            repairing: blob_id.is_some_and(|id| fleet.repairer.is_repairing(id)),
            last_repair: blob_id.and_then(|id| fleet.repairer.totals(id).last_completed),
            deleted: blob_id
                .is_some_and(|id| view.deleted.contains_key(id) && !view.blobs.contains_key(id)),
            unanswered_shards: view.unanswered_shards(encoding.n()),
        },
        _ => ClusterFacts::Unobserved,
    }
}

/// Completes once `blob` is being deleted, gone, or replaced by another
/// of its name, asking the API server every `poll`; a failed read is asked
/// again.
async fn deletion_of(blobs: &Api<Blob>, blob: &Blob, poll: Duration) {
    let uid = blob.uid();
    loop {
        tokio::time::sleep(poll).await;
        match blobs.get_opt(&blob.name_any()).await {
            Ok(None) => return,
            Ok(Some(now)) if now.uid() != uid || now.metadata.deletion_timestamp.is_some() => {
                return
            }
            Ok(Some(_)) => {}
            Err(e) => tracing::debug!(blob = %blob.name_any(), "cannot read the Blob: {e}"),
        }
    }
}

/// A Blob's source fetched into the spool, ready to upload.
struct Fetched {
    /// The spool, holding a ConfigMap's or Secret's bytes.
    spool: tempfile::NamedTempFile,
    /// A URL's download, whole and checked, kept until the gateway stored
    /// it: an upload that failed is tried again without it.
    kept_download: Option<std::path::PathBuf>,
    /// How often the download resumed.
    resumes: u32,
}

/// Fetches the Blob's source into the spool.
async fn fetch_source(blob: &Blob, ctx: &Context, namespace: &str) -> Result<Fetched, IngestError> {
    std::fs::create_dir_all(&ctx.spool_dir)?;
    let spool = tempfile::NamedTempFile::new_in(&ctx.spool_dir)?;
    let source = &blob.spec.source;
    let limit = ctx.max_ingest_bytes;
    let mut resumes = 0;
    let mut kept_download = None;
    if let Some(url) = &source.url {
        ctx.source_reach.check_url(&url.url)?;
        let keep_at = ingest::kept_download(
            &ctx.spool_dir,
            &blob.uid().unwrap_or_default(),
            &url.url,
            url.sha256.as_deref(),
        );
        if !keep_at.is_file() {
            let download = tempfile::NamedTempFile::new_in(&ctx.spool_dir)?;
            resumes = ingest::download(
                &ctx.http,
                &url.url,
                url.sha256.as_deref(),
                limit,
                download.path(),
                &ingest::ResumePolicy::default(),
                &ctx.spool_room,
            )
            .await?
            .resumes;
            download
                .persist(&keep_at)
                .map_err(|e| IngestError::Spool(e.error))?;
        }
        kept_download = Some(keep_at);
    } else if let Some(key) = &source.config_map_key {
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
        let not_found = || {
            IngestError::SourceNotFound(format!(
                "ConfigMap {namespace}/{} has no key {}",
                key.name, key.key
            ))
        };
        let map = api
            .get_opt(&key.name)
            .await
            .map_err(|e| IngestError::SourceUnreadable(format!("ConfigMap {}: {e}", key.name)))?
            .ok_or_else(not_found)?;
        let bytes = map
            .data
            .as_ref()
            .and_then(|d| d.get(&key.key))
            .map(|s| s.as_bytes().to_vec())
            .or_else(|| {
                map.binary_data
                    .as_ref()
                    .and_then(|d| d.get(&key.key))
                    .map(|b| b.0.clone())
            })
            .ok_or_else(not_found)?;
        ingest::spool_bytes(&bytes, limit, spool.path()).await?;
    } else if let Some(key) = &source.secret_key {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
        let not_found = || {
            IngestError::SourceNotFound(format!(
                "Secret {namespace}/{} has no key {}",
                key.name, key.key
            ))
        };
        let secret = api
            .get_opt(&key.name)
            .await
            .map_err(|e| IngestError::SourceUnreadable(format!("Secret {}: {e}", key.name)))?
            .ok_or_else(not_found)?;
        if !ingest::secret_offered(secret.metadata.labels.as_ref()) {
            return Err(IngestError::SecretNotOffered(format!(
                "Secret {namespace}/{} is not labelled {}=true: only Secrets so \
                 labelled are read as Blob sources (their bytes become readable by \
                 every holder of the gateway's user token)",
                key.name,
                ingest::SECRET_SOURCE_LABEL
            )));
        }
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&key.key))
            .map(|b| b.0.clone())
            .ok_or_else(not_found)?;
        ingest::spool_bytes(&bytes, limit, spool.path()).await?;
    } else {
        return Err(IngestError::SourceNotFound(
            "the Blob names no source (url, configMapKey or secretKey)".into(),
        ));
    }
    Ok(Fetched {
        spool,
        kept_download,
        resumes,
    })
}

/// Stores a fetched source through the cluster's gateway; returns the blob
/// id, how often the download resumed, and the upload counted in flight
/// until the status names the id.
async fn upload_fetched(
    fetched: Fetched,
    cluster: &StorageCluster,
    ctx: &Context,
    namespace: &str,
) -> Result<(String, u32, UploadInFlight), IngestError> {
    let Fetched {
        spool,
        kept_download,
        resumes,
    } = fetched;
    let gateway = ctx.endpoints.gateway(cluster);
    let token = ctx
        .user_token(cluster)
        .await
        .ok_or_else(|| IngestError::Gateway {
            url: gateway.clone(),
            message: format!(
                "the cluster's user-token Secret {} is missing or empty",
                super::desired::user_token_secret(&cluster.name_any())
            ),
        })?;
    let http = ctx.gateway_http(cluster);
    let from = kept_download.as_deref().unwrap_or(spool.path());
    let uploading = ctx
        .uploads_in_flight
        .begin(&(namespace.to_string(), cluster.name_any()))
        .await;
    let stored = match ingest::upload(&http, &gateway, &token, from, ctx.ingest_stall).await {
        Ok(stored) => stored,
        Err(e) => {
            // The gateway may have stored it all the same (its answer
            // lost): not an upload to record while the retry names it.
            uploading.unsettled();
            return Err(e);
        }
    };
    if let Some(kept) = &kept_download {
        let _ = std::fs::remove_file(kept);
    }
    Ok((stored.id, resumes, uploading))
}

/// Writes `status` unless it equals `current`, which then becomes it.
async fn write_status_if_changed(
    ctx: &Context,
    blobs: &Api<Blob>,
    blob: &Blob,
    current: &mut Option<BlobStatus>,
    status: BlobStatus,
) -> Result<Option<String>, ReconcileError> {
    if current.as_ref() == Some(&status) {
        return Ok(None);
    }
    let patch = status_merge_patch(current.as_ref(), &status);
    let written = blobs
        .patch_status(
            &blob.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    ctx.written_statuses
        .wrote(&blob.uid().unwrap_or_default(), status.clone());
    *current = Some(status);
    Ok(written.resource_version())
}
