//! Deleting a Blob (its finalizer's cleanup): its slivers go from every
//! node, or through the gateway in a cluster serving S3 (which keeps bytes
//! S3 keys refer to), unless another Blob names the same bytes or the Blob
//! goes with its cluster; a Blob whose cluster is gone is released at once,
//! and one whose nodes stay unreachable after `DELETE_PATIENCE`, with an
//! Event.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::context::{fleet_map, Context};
use super::controller::ReconcileError;
use super::crd::{Blob, StorageCluster};
use super::ingest;
use crate::client::{BlobClient, DeleteOutcome};
use crate::codec::BlobId;

/// How long a deleted Blob waits for unreachable nodes before it is
/// released anyway (their slivers are then left behind, with an Event).
pub const DELETE_PATIENCE: Duration = Duration::from_secs(600);

/// How long one attempt at deleting a Blob's slivers may take, whatever
/// the nodes do (each call has its own deadline too).
pub const DELETE_DEADLINE: Duration = Duration::from_secs(60);

/// Deletes what `blob` names, unless it must stay; an error while it
/// cannot yet (nodes unreachable, an upload to its cluster in flight).
pub(super) async fn cleanup_blob(
    blob: &Blob,
    ctx: &Context,
    namespace: &str,
) -> Result<Action, ReconcileError> {
    let uid = blob.uid().unwrap_or_default();
    ingest::forget_downloads(&ctx.spool_dir, &uid);
    let Some(id) = ctx
        .written_statuses
        .newest(&uid, blob.status.as_ref())
        .and_then(|s| s.blob_id)
        .or_else(|| blob.spec.source.upload.as_ref().map(|u| u.blob_id.clone()))
        .or_else(|| ctx.stored_ingests.of(&uid))
    else {
        ctx.written_statuses.forget(&uid);
        return Ok(Action::await_change());
    };
    let deleted = delete_named(blob, ctx, namespace, id).await;
    if deleted.is_ok() {
        ctx.stored_ingests.named(&uid);
        ctx.written_statuses.forget(&uid);
    }
    deleted
}

/// Deletes blob `id`, which `blob` names, unless another Blob names it too
/// or it goes with its cluster; an error while the nodes cannot be reached.
async fn delete_named(
    blob: &Blob,
    ctx: &Context,
    namespace: &str,
    id: String,
) -> Result<Action, ReconcileError> {
    let clusters: Api<StorageCluster> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(cluster) = clusters.get_opt(&blob.spec.cluster).await? else {
        // The cluster and its nodes are gone: nothing is left to delete.
        return Ok(Action::await_change());
    };
    // Held until the delete is done: uploads to the cluster wait.
    let Some(_deleting) = ctx
        .uploads_in_flight
        .delete(&(namespace.to_string(), cluster.name_any()))
    else {
        return Err(ReconcileError::Waiting(format!(
            "an ingest of another Blob is uploading, or about to upload, to {}: it may store these very bytes, \
             so {id} is deleted once its Blob names what it stored",
            cluster.name_any()
        )));
    };
    if let Some(why) = super::upload_records::goes_with_its_cluster(blob, &cluster) {
        ctx.publish(blob, false, "SliversKept", why).await;
        return Ok(Action::await_change());
    }
    // Before the list: another Blob's remembered id is forgotten only once
    // its status names it, which the list then shows.
    let remembered_by_another = ctx.stored_ingests.stored_for_another(
        &blob.uid().unwrap_or_default(),
        &(namespace.to_string(), cluster.name_any()),
        &id,
    );
    let blobs: Api<Blob> = Api::namespaced(ctx.client.clone(), namespace);
    let mut shared = remembered_by_another;
    super::upload_records::visit_blobs(&blobs, |other| {
        shared |= other.uid() != blob.uid()
            && other.metadata.deletion_timestamp.is_none()
            && other.spec.cluster == blob.spec.cluster
            && other
                .status
                .as_ref()
                .and_then(|s| s.blob_id.as_deref())
                .or(other
                    .spec
                    .source
                    .upload
                    .as_ref()
                    .map(|u| u.blob_id.as_str()))
                == Some(id.as_str());
    })
    .await?;
    if shared {
        ctx.publish(
            blob,
            false,
            "SliversKept",
            format!("another Blob names {id}: its slivers stay"),
        )
        .await;
        return Ok(Action::await_change());
    }
    let Ok(blob_id) = id.parse::<BlobId>() else {
        return Ok(Action::await_change());
    };
    // With S3 the gateway deletes it: its S3 index says whether S3 keys
    // still refer to the bytes (then they stay), and claims them for the
    // delete so that no key comes to refer to them meanwhile.
    let attempt = if super::desired::s3::enabled(&cluster).is_some() {
        delete_through_gateway(&cluster, ctx, &id).await
    } else {
        delete_from_nodes(&cluster, ctx, &blob_id).await
    };
    let failure = match attempt {
        Ok(Deletion::Done(note)) => {
            ctx.publish(blob, false, "SliversDeleted", note).await;
            return Ok(Action::await_change());
        }
        Ok(Deletion::Kept(why)) => {
            ctx.publish(blob, false, "SliversKept", why).await;
            return Ok(Action::await_change());
        }
        Err(failure) => failure,
    };
    let waited = blob
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| Timestamp::now().duration_since(t.0).as_secs())
        .unwrap_or(0);
    if waited >= DELETE_PATIENCE.as_secs() as i64 {
        ctx.publish(
            blob,
            true,
            "SliversLeft",
            format!("gave up after {waited} s; {failure}"),
        )
        .await;
        return Ok(Action::await_change());
    }
    Err(ReconcileError::NodesUnreachable(failure))
}

/// What became of a deleted Blob's bytes.
enum Deletion {
    /// Deleted (or never stored): the note says which.
    Done(String),
    /// Kept: something else refers to them.
    Kept(String),
}

/// Deletes blob `id` from the cluster's nodes; what failed, if it did.
async fn delete_from_nodes(
    cluster: &StorageCluster,
    ctx: &Context,
    id: &BlobId,
) -> Result<Deletion, String> {
    let calls = ctx
        .cluster_calls(cluster)
        .await
        .map_err(|e| e.to_string())?;
    let client = BlobClient::new(calls, fleet_map(cluster, &ctx.endpoints), None);
    match tokio::time::timeout(DELETE_DEADLINE, client.delete(id)).await {
        Err(_) => Err(format!(
            "the delete of {id} took longer than {DELETE_DEADLINE:?}"
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(DeleteOutcome::Deleted { .. })) => Ok(Deletion::Done(format!(
            "deleted {id}: a tombstone on a quorum of shards, the loop removes the rest"
        ))),
        Ok(Ok(DeleteOutcome::NotFound)) => Ok(Deletion::Done(format!("{id} was never stored"))),
    }
}

/// Deletes blob `id` through the cluster's gateway, which refuses (409)
/// while S3 keys or uploads refer to it; what failed, if it did.
async fn delete_through_gateway(
    cluster: &StorageCluster,
    ctx: &Context,
    id: &str,
) -> Result<Deletion, String> {
    let gateway = ctx.endpoints.gateway(cluster);
    let token = ctx.user_token(cluster).await.ok_or_else(|| {
        format!(
            "the cluster's user-token Secret {} is missing or empty",
            super::desired::user_token_secret(&cluster.name_any())
        )
    })?;
    let http = ctx.gateway_http(cluster);
    let url = format!("{}/v1/blobs/{id}", gateway.trim_end_matches('/'));
    let sent = http.delete(&url).bearer_auth(token).send();
    let response = tokio::time::timeout(DELETE_DEADLINE, sent)
        .await
        .map_err(|_| format!("the gateway's delete of {id} took longer than {DELETE_DEADLINE:?}"))?
        .map_err(|e| format!("the gateway at {gateway} did not answer the delete of {id}: {e}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let message = crate::api_error::message_of(text);
    match status.as_u16() {
        200..=299 => Ok(Deletion::Done(format!(
            "deleted {id} through the gateway: a tombstone on a quorum of shards, the loop removes the rest"
        ))),
        404 => Ok(Deletion::Done(format!("{id} was never stored, or is deleted already"))),
        409 => Ok(Deletion::Kept(format!("the bytes stay: {message}"))),
        _ => Err(format!("the gateway answered the delete of {id} with {status}: {message}")),
    }
}
