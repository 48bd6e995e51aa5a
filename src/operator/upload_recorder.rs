//! Records uploads as Blobs: the I/O shell around `upload_records`. In a
//! cluster serving S3 its gateway is asked first which of the unrecorded
//! blobs S3 wrote or refers to (objects, parts, writes in flight): those
//! are S3's, listed by S3, and never recorded, so a bucket of a hundred
//! thousand objects does not put a hundred thousand Blobs in etcd.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::Api;
use kube::{Resource, ResourceExt};

use super::apply_objects::{apply_noting, Failures};
use super::context::{ClusterFleet, Context};
use super::crd::{Blob, BlobSource, BlobSpec, StorageCluster, UploadSource};
use super::observed::AppliedContent;
use super::upload_records::{self, new_upload_record_name, RecordedBlobs, MOST_RECORDED_AT_ONCE};
use crate::control::FleetView;
use crate::wire::{KnownBlobs, KnownBlobsRequest, MOST_KNOWN_BLOBS_ASKED};

/// Questions to the gateway per reconcile at most: a fleet that took a
/// whole bucket since the last one is sorted out over a few reconciles.
const MOST_QUESTIONS: usize = 20;

/// How long one question to the gateway may take.
const QUESTION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// What the reconcile of one cluster records uploads with.
pub(super) struct Recording<'a> {
    /// The operator's context.
    pub ctx: &'a Context,
    /// The cluster.
    pub cluster: &'a StorageCluster,
    /// Its fleet state (the blobs known to be S3's are kept there).
    pub fleet: &'a ClusterFleet,
    /// Its namespace's Blobs.
    pub blobs: &'a Api<Blob>,
    /// What was applied lately.
    pub applied: &'a AppliedContent,
}

impl Recording<'_> {
    /// Records, as a Blob with an upload source, every readable blob of
    /// `view` no Blob names yet (an upload through the gateway), so that
    /// `kubectl get blobs` shows it and deleting that Blob deletes it;
    /// with S3, every such blob S3 does not know.
    pub(super) async fn record_uploads(
        &self,
        recorded: &RecordedBlobs,
        view: &FleetView,
        p: usize,
        failures: &mut Failures,
    ) {
        let to_record: Vec<String> = if super::desired::s3::enabled(self.cluster).is_some() {
            self.not_s3s(&recorded.ids, view, p).await
        } else {
            upload_records::uploads_to_record(view, &recorded.ids, p, MOST_RECORDED_AT_ONCE)
                .into_iter()
                .map(String::from)
                .collect()
        };
        for id in to_record {
            self.record(&id, &recorded.record_names, failures).await;
        }
    }

    /// Up to `MOST_RECORDED_AT_ONCE` unrecorded blobs the gateway says S3
    /// does not know; the ones it knows are remembered, so each blob is
    /// asked about once. None when the gateway does not answer: whether a
    /// blob is S3's cannot be told without it.
    async fn not_s3s(
        &self,
        recorded: &BTreeSet<String>,
        view: &FleetView,
        p: usize,
    ) -> Vec<String> {
        let mut s3_blobs = std::mem::take(&mut *self.fleet.s3_blobs.lock().expect("not poisoned"));
        s3_blobs.retain(|id| view.blobs.contains_key(id));
        let candidates: Vec<&str> =
            upload_records::unrecorded_uploads(view, recorded, &s3_blobs, p).collect();
        let mut chosen = Vec::new();
        let mut known = Vec::new();
        let token = if candidates.is_empty() {
            None
        } else {
            self.ctx.user_token(self.cluster).await
        };
        for asked in candidates
            .chunks(MOST_KNOWN_BLOBS_ASKED)
            .take(MOST_QUESTIONS)
        {
            let Some(token) = &token else {
                tracing::warn!(
                    cluster = %self.cluster.name_any(),
                    "uploads are not recorded this time: the cluster's user-token Secret {} is missing or empty",
                    super::desired::user_token_secret(&self.cluster.name_any())
                );
                break;
            };
            match self.ask_gateway(token, asked).await {
                Ok(answer) => {
                    let answer: BTreeSet<String> = answer.known.into_iter().collect();
                    chosen.extend(
                        asked
                            .iter()
                            .filter(|id| !answer.contains(**id))
                            .map(|id| id.to_string()),
                    );
                    known.extend(answer);
                }
                Err(e) => {
                    tracing::warn!(cluster = %self.cluster.name_any(), "uploads are not recorded this time: {e}");
                    break;
                }
            }
            if chosen.len() >= MOST_RECORDED_AT_ONCE {
                break;
            }
        }
        s3_blobs.extend(known);
        *self.fleet.s3_blobs.lock().expect("not poisoned") = s3_blobs;
        chosen.truncate(MOST_RECORDED_AT_ONCE);
        chosen
    }

    /// Which of `asked` S3 knows, from the gateway's S3 index.
    async fn ask_gateway(&self, token: &str, asked: &[&str]) -> Result<KnownBlobs, String> {
        let question = KnownBlobsRequest {
            blobs: asked.iter().map(|id| id.to_string()).collect(),
        };
        super::gateway_question::ask_gateway(
            self.ctx,
            self.cluster,
            self.fleet,
            token,
            super::gateway_question::Question {
                path: "/v1/s3/known-blobs",
                body: &question,
                what: "which blobs S3 holds",
                deadline: QUESTION_DEADLINE,
            },
        )
        .await
    }

    /// Makes the Blob recording upload `id`, under a name no Blob in
    /// `taken` holds.
    async fn record(&self, id: &str, taken: &BTreeSet<String>, failures: &mut Failures) {
        let name = self.cluster.name_any();
        let Some(record_name) = new_upload_record_name(&name, id, taken) else {
            return;
        };
        let mut record = Blob::new(
            &record_name,
            BlobSpec {
                cluster: name.clone(),
                source: BlobSource {
                    upload: Some(UploadSource {
                        blob_id: id.to_string(),
                    }),
                    ..BlobSource::default()
                },
            },
        );
        record.metadata.namespace = self.cluster.namespace();
        record.metadata.labels = Some(super::desired::labels(&name, "blob"));
        // Recorded by the operator, so owned by the cluster: deleting the
        // cluster deletes its records (and their finalizer releases them).
        record.metadata.owner_references = self.cluster.controller_owner_ref(&()).map(|o| vec![o]);
        record.metadata.annotations = Some(BTreeMap::from([(
            upload_records::RECORDED_BY_ANNOTATION.to_string(),
            "operator: an upload through the gateway".to_string(),
        )]));
        let before = failures.0.len();
        apply_noting(failures, self.applied, self.blobs, &record, false).await;
        if failures.0.len() == before {
            tracing::info!(cluster = %name, blob = %id, record = %record_name, "recorded an upload");
        }
    }
}
