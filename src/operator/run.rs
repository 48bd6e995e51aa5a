//! `redstuff operator`: runs the StorageCluster controller, event-driven by
//! the cluster objects and the node pods they own, and serves /metrics,
//! /healthz and /readyz.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::Client;
use prometheus::Registry;

use super::controller::{reconcile_cluster, Context, ReconcileError};
use super::crd::StorageCluster;
use crate::metrics::OperatorMetrics;

struct Shared {
    context: Arc<Context>,
    metrics: OperatorMetrics,
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(image: String, listen: SocketAddr) -> anyhow::Result<()> {
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot reach the Kubernetes API (KUBECONFIG or in-cluster config): {e}")
    })?;
    let clusters: Api<StorageCluster> = Api::all(client.clone());
    clusters
        .list(&ListParams::default().limit(1))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot list StorageClusters ({e}): are the CRDs installed? kubectl apply -f crds/"
            )
        })?;
    let registry = Registry::new();
    let metrics = OperatorMetrics::new(&registry);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let router = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(|| async { "ready" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move { crate::metrics::render(&registry) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, router).await });

    let shared = Arc::new(Shared {
        context: Arc::new(Context {
            client: client.clone(),
            image,
        }),
        metrics,
    });
    tracing::info!(%listen, "operator started");
    Controller::new(clusters, watcher::Config::default())
        .owns(Api::<Pod>::all(client), watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, shared)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(cluster = %object.name, "reconciled"),
                Err(e) => tracing::warn!("reconcile failed: {e}"),
            }
        })
        .await;
    Ok(())
}

async fn reconcile(
    cluster: Arc<StorageCluster>,
    shared: Arc<Shared>,
) -> Result<Action, ReconcileError> {
    let start = Instant::now();
    let result = reconcile_cluster(cluster, shared.context.clone()).await;
    let m = &shared.metrics;
    m.reconciles.with_label_values(&["storagecluster"]).inc();
    m.reconcile_duration
        .with_label_values(&["storagecluster"])
        .observe(start.elapsed().as_secs_f64());
    if result.is_err() {
        m.reconcile_errors
            .with_label_values(&["storagecluster"])
            .inc();
    }
    result
}

fn error_policy(
    _cluster: Arc<StorageCluster>,
    error: &ReconcileError,
    _shared: Arc<Shared>,
) -> Action {
    tracing::warn!("will retry: {error}");
    Action::requeue(Duration::from_secs(10))
}
