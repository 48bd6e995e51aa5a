//! `redstuff operator`: waits for the leader Lease, then runs the
//! StorageCluster controller (triggered by clusters, their node pods and
//! claims) and the Blob controller (triggered by blobs and by changes of
//! the inventory views); serves /metrics, /healthz and /readyz the whole
//! time. On SIGTERM it stops taking new work, lets running reconciles and
//! repairs finish (bounded), and releases the Lease so a standby takes
//! over without waiting for it to expire (a new pod at once, a waiting
//! standby at its next look, within 10 s). Losing the Lease ends the process (it restarts as a
//! standby) so that two operators never act at the same time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use super::blob_controller::reconcile_blob;
use super::context::Context;
use super::controller::{reconcile_cluster, reconcile_deadline, ReconcileError};
use super::crd::{Blob, StorageCluster};
use super::observed::ScopeStores;
use crate::metrics::OperatorMetrics;

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// Image of node and gateway pods when a spec names none.
    pub image: String,
    /// Address of /metrics, /healthz and /readyz.
    pub listen: SocketAddr,
    /// Take part in leader election (off: act at once, alone).
    pub leader_election: bool,
    /// Namespace of the Lease.
    pub lease_namespace: String,
    /// Namespace of the operator's own pods (node pods take API calls from
    /// operator pods there only).
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// Where sources are spooled before upload.
    pub spool_dir: PathBuf,
    /// Largest source ingested, in bytes.
    pub max_ingest_bytes: u64,
    /// Most bytes the spool may hold (its emptyDir's size limit); `None`:
    /// no limit.
    pub spool_limit: Option<u64>,
    /// Most sources fetched and stored at once.
    pub max_concurrent_ingests: usize,
    /// How long an ingest's upload may go without the gateway taking a
    /// byte or answering before it fails (and is tried again).
    pub ingest_stall: Duration,
    /// Addresses URL sources may reach beyond the default (loopback and
    /// link-local addresses are refused otherwise).
    pub blob_sources_may_reach: Vec<crate::operator::source_addresses::LocalAddresses>,
    /// How long shutdown waits for repairs in flight.
    pub shutdown_timeout: Duration,
    /// Namespaces whose StorageClusters and Blobs this operator manages;
    /// empty: every namespace.
    pub namespaces: Vec<String>,
    /// Secrets node and gateway pods pull their image with.
    pub image_pull_secrets: Vec<String>,
    /// Pull policy of node and gateway containers.
    pub image_pull_policy: Option<String>,
}

/// An API over every namespace, or over one.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

struct Shared {
    context: Arc<Context>,
    metrics: OperatorMetrics,
    /// Consecutive failed reconciles per object, for backoff.
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Shared {
    /// Records the outcome; returns the consecutive failures so far.
    fn record(&self, object: String, failed: bool) -> u32 {
        let mut failures = self.failures.lock().expect("not poisoned");
        if failed {
            let count = failures.entry(object).or_default();
            *count += 1;
            *count
        } else {
            failures.remove(&object);
            0
        }
    }

    fn failures(&self, object: &str) -> u32 {
        self.failures
            .lock()
            .expect("not poisoned")
            .get(object)
            .copied()
            .unwrap_or(1)
    }
}

/// Delay before retrying after `failures` consecutive failed reconciles:
/// 5 s, doubling, at most 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exponent).min(300))
}

fn object_key<K: kube::Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.meta().namespace.as_deref().unwrap_or(""),
        object.meta().name.as_deref().unwrap_or("")
    )
}

/// Every 30 s, drops the fleet state (view, repairs, metrics) of clusters
/// that no longer exist: a StorageCluster has no finalizer, so its
/// deletion reaches no reconcile.
fn forget_deleted_clusters(
    store: kube::runtime::reflector::Store<StorageCluster>,
    namespace: Option<String>,
    context: Arc<Context>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if store.is_empty() && context.fleets.keys().is_empty() {
                continue;
            }
            let alive: std::collections::BTreeSet<(String, String)> = store
                .state()
                .iter()
                .map(|c| {
                    (
                        kube::ResourceExt::namespace(c.as_ref()).unwrap_or_default(),
                        kube::ResourceExt::name_any(c.as_ref()),
                    )
                })
                .collect();
            for key in context.fleets.keys() {
                let watched = namespace.as_ref().is_none_or(|n| *n == key.0);
                if watched && !alive.contains(&key) {
                    tracing::info!(namespace = %key.0, cluster = %key.1, "cluster deleted: forgetting its fleet state and metrics");
                    context.fleets.forget(&key);
                }
            }
        }
    });
}

/// Keeps a cache of the Kubernetes nodes' metadata (their topology labels
/// are the failure domains) until `stop`.
fn watch_kubernetes_nodes(client: &Client, context: &Arc<Context>, stop: CancellationToken) {
    let (store, writer) = reflector::store();
    context.observed.set_nodes(store);
    let events = watcher(
        Api::<PartialObjectMeta<k8s_openapi::api::core::v1::Node>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer);
    tokio::spawn(async move {
        let drain = events.for_each(|event| async move {
            if let Err(e) = event {
                tracing::debug!("watch of Kubernetes nodes: {e}");
            }
        });
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = drain => {}
        }
    });
}

/// How often the installed CRDs are compared with this build's.
const CRD_CHECK_PERIOD: Duration = Duration::from_secs(30);

/// Compares the installed CRDs with this build's every
/// [`CRD_CHECK_PERIOD`] until `stop`: the gauge follows, a change is
/// logged, and clusters are told by their reconciles.
fn check_crds_periodically(
    client: &Client,
    context: &Arc<Context>,
    metrics: &OperatorMetrics,
    stop: CancellationToken,
) {
    let (client, context, metrics) = (client.clone(), context.clone(), metrics.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CRD_CHECK_PERIOD);
        let mut unreadable_said = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut problems = Vec::new();
            for (name, outcome) in super::crd_freshness::check_installed(&client).await {
                match outcome {
                    Ok(problem) => {
                        metrics
                            .crd_current
                            .with_label_values(&[name.as_str()])
                            .set(i64::from(problem.is_none()));
                        problems.extend(problem);
                    }
                    Err(e) => {
                        if !unreadable_said {
                            tracing::warn!(crd = %name, "cannot check that the installed CRD is this operator's (may the operator get customresourcedefinitions?): {e}");
                            unreadable_said = true;
                        }
                    }
                }
            }
            if context.crds.record(problems.clone()) {
                if problems.is_empty() {
                    tracing::info!("the installed CRDs are the ones this operator was built with");
                }
                for problem in &problems {
                    tracing::error!("{problem}");
                }
            }
        }
    });
}

/// Resolves on SIGTERM or Ctrl-C.
async fn termination() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs the operator until SIGTERM or Ctrl-C, or until it loses the Lease.
pub async fn run(options: OperatorOptions) -> anyhow::Result<()> {
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot reach the Kubernetes API (KUBECONFIG or in-cluster config): {e}")
    })?;
    let scopes: Vec<Option<String>> = if options.namespaces.is_empty() {
        vec![None]
    } else {
        options.namespaces.iter().cloned().map(Some).collect()
    };
    for scope in &scopes {
        scoped::<StorageCluster>(&client, scope.as_deref())
            .list(&ListParams::default().limit(1))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot list StorageClusters in {} ({e}): are the CRDs installed \
                     (kubectl apply -f crds/) and may the operator's ServiceAccount read them?",
                    scope.as_deref().unwrap_or("every namespace")
                )
            })?;
    }
    let registry = Registry::new();
    let metrics = OperatorMetrics::new(&registry);
    let mut context = Context::new(client.clone(), options.image.clone());
    context.operator.namespace = options.namespace.clone();
    context.operator.image_pull_secrets = options.image_pull_secrets.clone();
    context.operator.image_pull_policy = options.image_pull_policy.clone();
    context.spool_dir = options.spool_dir.clone();
    crate::operator::ingest::clear_unfinished(&context.spool_dir);
    context.max_ingest_bytes = options.max_ingest_bytes;
    context.spool_room = crate::operator::spool_room::SpoolRoom::new(options.spool_limit);
    let reach = crate::operator::source_addresses::SourceReach::allowing(
        options.blob_sources_may_reach.iter().copied(),
    );
    let context = Arc::new(
        context
            .with_max_concurrent_ingests(options.max_concurrent_ingests)
            .with_ingest_stall(options.ingest_stall)
            .with_source_reach(reach),
    );

    let listener = crate::listen::bind(options.listen).await?;
    let metrics_context = context.clone();
    let router = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(|| async { "ready" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let mut registries = vec![registry.clone()];
                registries.extend(metrics_context.fleets.registries());
                async move { crate::metrics::render_all(&registries) }
            }),
        );
    let stop = CancellationToken::new();
    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(server_stop.cancelled_owned())
            .await
    });
    tracing::info!(listen = %options.listen, identity = %options.identity, "operator started");
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            termination().await;
            tracing::info!("termination requested: finishing running work");
            stop.cancel();
        });
    }

    let mut lease = None;
    if options.leader_election {
        let manager = LeaseManagerBuilder::new(client.clone(), &options.lease_name)
            .with_namespace(&options.lease_namespace)
            .with_identity(&options.identity)
            .with_duration(15)
            .with_grace(5)
            .build()
            .await?;
        let (mut leading, task) = manager.watch().await;
        tracing::info!(lease = %options.lease_name, "waiting for the lease");
        loop {
            if *leading.borrow_and_update() {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    drop(leading);
                    let _ = task.await;
                    let _ = server.await;
                    return Ok(());
                }
                changed = leading.changed() => changed?,
            }
        }
        tracing::info!("leading");
        metrics.leader.set(1);
        let lost = stop.clone();
        let mut watch = leading.clone();
        let lost_lease = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = lost_lease.clone();
        // The lease manager's task ends (and can release the Lease) only
        // once every receiver is dropped: this watcher drops its own when
        // the operator stops, whatever the reason.
        let watcher = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = lost.cancelled() => return,
                    changed = watch.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if !*watch.borrow() {
                            tracing::error!("lost the lease: stopping so that only one operator acts");
                            flag.store(true, std::sync::atomic::Ordering::SeqCst);
                            lost.cancel();
                            return;
                        }
                    }
                }
            }
        });
        lease = Some((leading, task, lost_lease, watcher));
    } else {
        metrics.leader.set(1);
    }

    let shared = Arc::new(Shared {
        context: context.clone(),
        metrics: metrics.clone(),
        failures: Default::default(),
    });
    watch_kubernetes_nodes(&client, &context, stop.clone());
    check_crds_periodically(&client, &context, &metrics, stop.clone());
    let controllers = futures::future::join_all(scopes.into_iter().map(|scope| {
        run_controllers(
            client.clone(),
            scope,
            shared.clone(),
            context.clone(),
            stop.clone(),
        )
    }));
    // Shutdown is bounded as a whole (the pod's grace period is 30 s):
    // running reconciles get half of `shutdown_timeout`, repairs in flight
    // what is left of it.
    let stopped = async {
        stop.cancelled().await;
        Instant::now()
    };
    tokio::pin!(controllers, stopped);
    let stopped_at = tokio::select! {
        _ = &mut controllers => Instant::now(),
        at = &mut stopped => {
            if tokio::time::timeout(options.shutdown_timeout / 2, &mut controllers).await.is_err() {
                tracing::warn!("reconciles still running at shutdown: left to the next leader");
            }
            at
        }
    };
    let deadline = stopped_at + options.shutdown_timeout;
    for repairer in context.fleets.repairers() {
        let left = deadline.saturating_duration_since(Instant::now());
        if !repairer.wait_idle(left).await {
            tracing::warn!("repairs still in flight at shutdown; the next leader restarts them");
        }
    }
    stop.cancel();
    let _ = server.await;
    if let Some((leading, task, lost_lease, watcher)) = lease {
        let _ = watcher.await;
        drop(leading);
        if let Ok(Ok(manager)) = task.await {
            if let Err(e) = manager.release().await {
                tracing::warn!("cannot release the lease: {e}");
            } else {
                tracing::info!("lease released");
            }
        }
        if lost_lease.load(std::sync::atomic::Ordering::SeqCst) {
            anyhow::bail!("lost the leader lease");
        }
    }
    Ok(())
}

/// The StorageCluster and Blob controllers over every namespace or one,
/// until `stop`.
async fn run_controllers(
    client: Client,
    namespace: Option<String>,
    shared: Arc<Shared>,
    context: Arc<Context>,
    stop: CancellationToken,
) {
    let scope = namespace.as_deref();
    let node_pods = watcher::Config::default()
        .labels("app.kubernetes.io/name=redstuff,app.kubernetes.io/component=node");
    let cluster_controller = Controller::new(
        scoped::<StorageCluster>(&client, scope),
        watcher::Config::default(),
    );
    forget_deleted_clusters(
        cluster_controller.store(),
        namespace.clone(),
        context.clone(),
        stop.clone(),
    );
    // Node pods and claims: one watch each, both the controller's
    // trigger and the cache reconciles read instead of listing.
    let (pods, pods_writer) = reflector::store();
    let (claims, claims_writer) = reflector::store();
    context
        .observed
        .add_scope(scope, ScopeStores { pods, claims });
    let pod_events = watcher(scoped::<Pod>(&client, scope), node_pods.clone())
        .default_backoff()
        .reflect(pods_writer)
        .touched_objects();
    let claim_events = watcher(scoped::<PersistentVolumeClaim>(&client, scope), node_pods)
        .default_backoff()
        .reflect(claims_writer)
        .touched_objects();
    let cluster_controller = cluster_controller
        .owns_stream(pod_events)
        // Claims may outlive their cluster (storage.whenDeleted: Retain)
        // and then carry no owner reference: mapped by their labels.
        .watches_stream(claim_events, |claim: PersistentVolumeClaim| {
            let cluster = claim.labels().get("app.kubernetes.io/instance").cloned()?;
            let namespace = claim.namespace()?;
            Some(ObjectRef::<StorageCluster>::new(&cluster).within(&namespace))
        })
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(reconcile_cluster_measured, error_policy, shared.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!("storagecluster reconcile: {e}");
            }
        });
    let views = tokio_stream::wrappers::WatchStream::new(context.views_changed.subscribe());
    let blob_controller =
        Controller::new(scoped::<Blob>(&client, scope), watcher::Config::default())
            .reconcile_all_on(views.map(|_| ()))
            .graceful_shutdown_on(stop.cancelled_owned())
            .run(reconcile_blob_measured, error_policy_blob, shared)
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!("blob reconcile: {e}");
                }
            });
    tokio::join!(cluster_controller, blob_controller);
}

fn observe(shared: &Shared, controller: &str, start: Instant, failed: bool) {
    let m = &shared.metrics;
    m.reconciles.with_label_values(&[controller]).inc();
    m.reconcile_duration
        .with_label_values(&[controller])
        .observe(start.elapsed().as_secs_f64());
    if failed {
        m.reconcile_errors.with_label_values(&[controller]).inc();
    }
}

async fn reconcile_cluster_measured(
    cluster: Arc<StorageCluster>,
    shared: Arc<Shared>,
) -> Result<Action, ReconcileError> {
    let start = Instant::now();
    let key = object_key(cluster.as_ref());
    let listed = shared.context.fleets.last_listed(&(
        kube::ResourceExt::namespace(cluster.as_ref()).unwrap_or_default(),
        kube::ResourceExt::name_any(cluster.as_ref()),
    ));
    let deadline = reconcile_deadline(listed);
    let result = tokio::time::timeout(deadline, reconcile_cluster(cluster, shared.context.clone()))
        .await
        .unwrap_or(Err(ReconcileError::Deadline(deadline)));
    observe(&shared, "storagecluster", start, result.is_err());
    shared.record(key, result.is_err());
    result
}

async fn reconcile_blob_measured(
    blob: Arc<Blob>,
    shared: Arc<Shared>,
) -> Result<Action, ReconcileError> {
    let start = Instant::now();
    let key = object_key(blob.as_ref());
    // No overall deadline here: an ingest of a large source takes as long
    // as its download (which has its own read timeout), and a delete has
    // its own deadline.
    let result = reconcile_blob(blob, shared.context.clone()).await;
    observe(&shared, "blob", start, result.is_err());
    shared.record(key, result.is_err());
    result
}

fn error_policy(
    cluster: Arc<StorageCluster>,
    error: &ReconcileError,
    shared: Arc<Shared>,
) -> Action {
    let delay = backoff(shared.failures(&object_key(cluster.as_ref())));
    tracing::warn!(cluster = %kube::ResourceExt::name_any(cluster.as_ref()), ?delay, "will retry: {error}");
    Action::requeue(delay)
}

fn error_policy_blob(blob: Arc<Blob>, error: &ReconcileError, shared: Arc<Shared>) -> Action {
    let delay = backoff(shared.failures(&object_key(blob.as_ref())));
    tracing::warn!(blob = %kube::ResourceExt::name_any(blob.as_ref()), ?delay, "will retry: {error}");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_reconciles_back_off_exponentially_up_to_five_minutes() {
        let delays: Vec<u64> = (1..=9).map(|k| backoff(k).as_secs()).collect();
        assert_eq!(delays, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }
}
