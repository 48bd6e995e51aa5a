//! The operator's check of the installed CRDs against a mocked Kubernetes
//! API: an older CRD (the chart upgraded, its CRDs not) is found and told
//! to each StorageCluster once, as a Warning Event.

mod support;

use std::sync::Arc;

use kube::CustomResourceExt;
use redstuff::operator::context::Context;
use redstuff::operator::controller::reconcile_cluster;
use redstuff::operator::crd::{Blob, StorageCluster};
use redstuff::operator::crd_freshness::{check_installed, own_crds, schema_digest};
use serde_json::{json, Value};
use support::{MockApi, Seen};

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const CLUSTER: &str = "/apis/redstuff.dev/v1alpha1/namespaces/storage/storageclusters/media";

/// A cluster whose spec is refused (9 nodes for 7 shards): its reconcile
/// touches nothing but its status and Events.
fn refused_cluster() -> StorageCluster {
    serde_yaml::from_str(
        "apiVersion: redstuff.dev/v1alpha1
kind: StorageCluster
metadata: {name: media, namespace: storage, uid: 7c1f, generation: 1}
spec: {shards: 7, nodes: 9, storage: {size: 10Gi}}
",
    )
    .unwrap()
}

fn event_reasons(seen: &[Seen]) -> Vec<(String, String, String)> {
    seen.iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/events"))
        .map(|s| {
            let text = |field: &str| s.body[field].as_str().unwrap_or_default().to_string();
            (text("type"), text("reason"), text("note"))
        })
        .collect()
}

/// The API holding this build's StorageCluster CRD and the Blob CRD of a
/// version before digests (generated from the same types, unstamped).
fn api_with_an_older_blob_crd() -> MockApi {
    let mut api = MockApi::default();
    let current = own_crds().remove(0);
    api.objects.insert(
        format!("{CRDS}/storageclusters.redstuff.dev"),
        serde_json::to_value(&current).unwrap(),
    );
    api.objects.insert(
        format!("{CRDS}/blobs.redstuff.dev"),
        serde_json::to_value(Blob::crd()).unwrap(),
    );
    api
}

#[tokio::test]
async fn a_crd_of_another_version_is_a_problem_naming_it_and_a_current_one_is_none() {
    let (client, recorded) = api_with_an_older_blob_crd().serve();
    let outcomes = check_installed(&client).await;
    let seen = recorded.take();
    assert_eq!(
        support::lines(&seen),
        vec![
            format!("GET {CRDS}/storageclusters.redstuff.dev"),
            format!("GET {CRDS}/blobs.redstuff.dev"),
        ],
        "each CRD read by name, nothing else"
    );
    let problems: Vec<(String, Option<String>)> = outcomes
        .into_iter()
        .map(|(name, outcome)| (name, outcome.unwrap()))
        .collect();
    assert_eq!(problems[0], ("storageclusters.redstuff.dev".into(), None));
    assert_eq!(problems[1].0, "blobs.redstuff.dev");
    let problem = problems[1]
        .1
        .clone()
        .expect("the older Blob CRD is a problem");
    let own_digest = schema_digest(&own_crds().remove(1));
    assert!(problem.contains("blobs.redstuff.dev"), "{problem}");
    assert!(problem.contains(&own_digest), "{problem}");
    assert!(problem.contains("kubectl apply"), "{problem}");
}

#[tokio::test]
async fn a_missing_crd_is_a_problem_and_an_api_error_is_not() {
    let mut api = MockApi::default();
    api.objects.insert(
        format!("{CRDS}/storageclusters.redstuff.dev"),
        json!("not a CRD"),
    );
    let (client, _recorded) = api.serve();
    let outcomes = check_installed(&client).await;
    assert!(outcomes[0].1.is_err(), "an answer that is no CRD: an error");
    let missing = outcomes[1].1.as_ref().unwrap().clone().unwrap();
    assert!(missing.contains("not installed"), "{missing}");
}

#[tokio::test]
async fn each_cluster_hears_of_an_outdated_crd_once_as_a_warning_event() {
    let (check_client, _check) = api_with_an_older_blob_crd().serve();
    let problems: Vec<String> = check_installed(&check_client)
        .await
        .into_iter()
        .filter_map(|(_, outcome)| outcome.unwrap())
        .collect();
    assert_eq!(problems.len(), 1);

    let cluster = refused_cluster();
    let mut api = MockApi::default();
    api.objects
        .insert(CLUSTER.into(), serde_json::to_value(&cluster).unwrap());
    let (client, recorded) = api.serve();
    let ctx = Arc::new(Context::new(client, "redstuff:test"));
    assert!(ctx.crds.record(problems.clone()));

    reconcile_cluster(Arc::new(cluster.clone()), ctx.clone())
        .await
        .unwrap();
    let told: Vec<(String, String, String)> = event_reasons(&recorded.take())
        .into_iter()
        .filter(|(_, reason, _)| reason == "CRDOutdated")
        .collect();
    assert_eq!(
        told,
        vec![("Warning".into(), "CRDOutdated".into(), problems[0].clone())]
    );

    reconcile_cluster(Arc::new(cluster.clone()), ctx.clone())
        .await
        .unwrap();
    let again: Vec<Value> = event_reasons(&recorded.take())
        .into_iter()
        .filter(|(_, reason, _)| reason == "CRDOutdated")
        .map(|e| json!(e))
        .collect();
    assert!(again.is_empty(), "told once: {again:?}");

    // The CRDs applied: nothing more is told.
    assert!(ctx.crds.record(Vec::new()));
    reconcile_cluster(Arc::new(cluster), ctx.clone())
        .await
        .unwrap();
    assert!(event_reasons(&recorded.take())
        .iter()
        .all(|(_, reason, _)| reason != "CRDOutdated"));
}
