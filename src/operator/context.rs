//! What the controllers share: the API client, how to reach node pods and
//! gateways, the event recorder, and per StorageCluster the fleet state
//! the cluster controller observes and the Blob controller reads (the
//! inventory view, repairs in flight, metrics with the cluster's labels).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use prometheus::Registry;

use super::crd::StorageCluster;
use super::desired::{node_pod_name, node_url, GATEWAY_PORT};
use super::source_addresses::SourceReach;
use crate::auth::TokenSet;
use crate::client::{Deadlines, NodeCalls};
use crate::control::{FleetView, Repairer};
use crate::metrics::FleetMetrics;

/// How the operator reaches node pods and gateways: by their cluster DNS
/// names, unless an override names another URL (tests, or an operator
/// running outside the cluster).
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    overrides: BTreeMap<String, String>,
}

impl Endpoints {
    /// Reaches `object` (a node pod name, or `<cluster>-gateway`) at `url`.
    pub fn with_override(mut self, object: impl Into<String>, url: impl Into<String>) -> Self {
        self.overrides.insert(object.into(), url.into());
        self
    }

    /// Base URL of node pod `index` of `cluster`.
    pub fn node(&self, cluster: &StorageCluster, index: usize) -> String {
        let name = cluster.metadata.name.clone().unwrap_or_default();
        self.overrides
            .get(&node_pod_name(&name, index))
            .cloned()
            .unwrap_or_else(|| node_url(cluster, index))
    }

    /// The URL an override names for the gateway of `cluster`, if any.
    pub fn gateway_override(&self, cluster: &StorageCluster) -> Option<String> {
        let name = cluster.metadata.name.clone().unwrap_or_default();
        self.overrides.get(&format!("{name}-gateway")).cloned()
    }

    /// Base URL of the gateway of `cluster`: `https://` when it serves TLS.
    pub fn gateway(&self, cluster: &StorageCluster) -> String {
        let name = cluster.metadata.name.clone().unwrap_or_default();
        let namespace = cluster.metadata.namespace.clone().unwrap_or_default();
        let service = format!("{name}-gateway");
        let scheme = cluster.spec.url_scheme();
        self.overrides
            .get(&service)
            .cloned()
            .unwrap_or_else(|| format!("{scheme}://{service}.{namespace}.svc:{GATEWAY_PORT}"))
    }
}

/// The fleet map of `cluster` as its status assigns shards, each node
/// reached through `endpoints`.
pub fn fleet_map(cluster: &StorageCluster, endpoints: &Endpoints) -> crate::fleet::FleetMap {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let status = cluster.status.clone().unwrap_or_default();
    let assignment = &status.shard_assignment;
    crate::fleet::FleetMap {
        shards: cluster.spec.shards,
        segment_size: crate::codec::DEFAULT_SEGMENT_SIZE,
        nodes: (0..super::retiring::running_node_count(
            &name,
            usize::from(cluster.spec.nodes),
            assignment.iter().map(|a| a.node.as_str()),
            status.retiring_nodes.iter().map(String::as_str),
            false,
        ))
            .map(|index| {
                let pod = node_pod_name(&name, index);
                crate::fleet::MapNode {
                    shards: assignment
                        .iter()
                        .filter(|a| a.node == pod)
                        .map(|a| a.shard)
                        .collect(),
                    url: endpoints.node(cluster, index),
                    name: pod,
                }
            })
            .collect(),
    }
}

/// The API server refuses Event notes over 1024 bytes: longer ones are
/// cut (at a character boundary) and say so.
pub fn truncate_note(note: String) -> String {
    cut_to(note, 1024)
}

/// `text` cut to at most `limit` bytes (at a character boundary), saying
/// so when it was.
pub fn cut_to(text: String, limit: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    let marker = " ... (cut)";
    let mut end = limit - marker.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &text[..end])
}

/// (namespace, name) of a StorageCluster.
pub type ClusterKey = (String, String);

/// What the operator knows of one cluster's fleet between reconciles.
pub struct ClusterFleet {
    /// Metrics labelled with the cluster.
    pub registry: Registry,
    /// The control-loop metrics of this cluster.
    pub metrics: FleetMetrics,
    /// How its nodes are called (with the cluster's token, read from its
    /// Secret on every reconcile).
    pub calls: NodeCalls,
    /// Its repairs.
    pub repairer: Repairer,
    /// The last inventory view, and the shard count it was read with.
    pub view: Mutex<Option<(u16, Arc<FleetView>)>>,
    /// When each node pod was lost (deleted, failed, lost its volume), until
    /// the first repair on it starts or it comes back whole: the start of
    /// the time-to-repair-start measurement.
    pub lost_at: Mutex<HashMap<String, Timestamp>>,
    /// Reads the fleet's view, whole or only what changed since the last
    /// reconcile.
    pub observer: tokio::sync::Mutex<crate::control::Observer>,
    /// What was applied for this cluster lately, so that unchanged objects
    /// are not applied again on every reconcile.
    pub applied: super::observed::AppliedContent,
    /// Objects (`Kind/name`) found to be the cluster's own or free, and
    /// the spec generations and node counts whose names all were, so they
    /// are not checked again (`name_holders`).
    pub owned_names: Mutex<BTreeSet<String>>,
    /// The CA its nodes and gateway are checked against when they serve
    /// TLS (set once its Secret is read).
    pub trust: Arc<crate::tls::FleetTrust>,
    /// Since when every pod has served its Secret's certificate in the
    /// CA rotation's current phase.
    pub ca_current_since: super::cluster_ca::CurrentSince,
    /// What its gateway is checked against when it serves TLS: the same
    /// CA, or that of the user's Secret it serves (`spec.tls.gatewaySecret`).
    pub gateway_trust: Arc<crate::tls::FleetTrust>,
    /// A client of its gateway, checking it against `gateway_trust`.
    pub gateway_http: reqwest::Client,
    /// Readable blobs its gateway said S3 wrote or refers to (never
    /// recorded as uploads), so that each is asked about once.
    pub s3_blobs: Mutex<BTreeSet<String>>,
    /// The Lost blobs its gateway was last asked about, and the S3 keys
    /// it said hold them (`lost_objects`), so each set is asked about once.
    pub lost_objects: Mutex<super::lost_objects::LostObjectsMemory>,
}

/// Every cluster's fleet state.
#[derive(Default)]
pub struct Fleets {
    clusters: Mutex<HashMap<ClusterKey, Arc<ClusterFleet>>>,
}

impl Fleets {
    /// Blobs (visible and deleted) the last view of a cluster listed; 0
    /// before the first.
    pub fn last_listed(&self, key: &ClusterKey) -> usize {
        self.find(key).map_or(0, |fleet| {
            fleet
                .view
                .lock()
                .expect("not poisoned")
                .as_ref()
                .map_or(0, |(_, view)| view.blobs.len() + view.deleted.len())
        })
    }

    /// The state of a cluster, created on first use.
    pub fn get(&self, key: &ClusterKey, deadlines: Deadlines) -> Arc<ClusterFleet> {
        let mut clusters = self.clusters.lock().expect("not poisoned");
        clusters
            .entry(key.clone())
            .or_insert_with(|| {
                let labels = HashMap::from([
                    ("storagecluster_namespace".to_string(), key.0.clone()),
                    ("storagecluster".to_string(), key.1.clone()),
                ]);
                let registry =
                    Registry::new_custom(None, Some(labels)).expect("valid constant labels");
                let metrics = FleetMetrics::new(&registry);
                // Until the reconcile reads the cluster's token Secret.
                let trust = Arc::new(crate::tls::FleetTrust::default());
                let calls = NodeCalls::new(TokenSet::single("no token read yet"), deadlines)
                    .with_fleet_trust(&trust);
                let gateway_trust = Arc::new(crate::tls::FleetTrust::default());
                let gateway_http = crate::http::client_builder()
                    .tls_backend_preconfigured(gateway_trust.client_config())
                    .connect_timeout(std::time::Duration::from_secs(10))
                    .build()
                    .expect("HTTP client");
                Arc::new(ClusterFleet {
                    ca_current_since: Default::default(),
                    gateway_trust,
                    gateway_http,
                    trust,
                    repairer: Repairer::new(calls.clone(), metrics.clone()),
                    calls,
                    registry,
                    metrics,
                    view: Mutex::new(None),
                    lost_at: Mutex::new(HashMap::new()),
                    observer: tokio::sync::Mutex::new(crate::control::Observer::new()),
                    applied: Default::default(),
                    owned_names: Default::default(),
                    s3_blobs: Mutex::new(BTreeSet::new()),
                    lost_objects: Mutex::default(),
                })
            })
            .clone()
    }

    /// The state of a cluster, if it was observed.
    pub fn find(&self, key: &ClusterKey) -> Option<Arc<ClusterFleet>> {
        self.clusters
            .lock()
            .expect("not poisoned")
            .get(key)
            .cloned()
    }

    /// The clusters with fleet state.
    pub fn keys(&self) -> Vec<ClusterKey> {
        self.clusters
            .lock()
            .expect("not poisoned")
            .keys()
            .cloned()
            .collect()
    }

    /// Forgets a cluster that was deleted (and its metrics).
    pub fn forget(&self, key: &ClusterKey) {
        self.clusters.lock().expect("not poisoned").remove(key);
    }

    /// The registries of every cluster, for /metrics.
    pub fn registries(&self) -> Vec<Registry> {
        self.clusters
            .lock()
            .expect("not poisoned")
            .values()
            .map(|f| f.registry.clone())
            .collect()
    }

    /// All clusters' repairers, for shutdown.
    pub fn repairers(&self) -> Vec<Repairer> {
        self.clusters
            .lock()
            .expect("not poisoned")
            .values()
            .map(|f| f.repairer.clone())
            .collect()
    }
}

/// Where the operator runs unless told otherwise (the chart's examples).
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "redstuff-system";

/// Sources fetched and stored at once, unless `--max-concurrent-ingests`
/// says otherwise: each holds a spool file and a gateway upload.
pub const DEFAULT_MAX_CONCURRENT_INGESTS: usize = 2;

/// How URL sources are fetched: a connection within 3 s, and no stretch
/// of 10 minutes without a byte.
fn source_client_builder() -> reqwest::ClientBuilder {
    crate::http::client_builder()
        .connect_timeout(Duration::from_secs(3))
        .read_timeout(Duration::from_secs(600))
}

/// How long an ingest's upload may go without the gateway taking a byte or,
/// once it is sent, answering (a gateway waiting for upload memory takes
/// nothing meanwhile).
pub const DEFAULT_INGEST_STALL: Duration = Duration::from_secs(300);

/// What every reconcile needs.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The default image and the operator's namespace, for the objects of
    /// every cluster.
    pub operator: super::desired::OperatorSettings,
    /// How node pods and gateways are reached.
    pub endpoints: Endpoints,
    /// HTTP client for URL sources (gateways are called with their
    /// cluster's `ClusterFleet::gateway_http`); it connects only where
    /// `source_reach` allows.
    pub http: reqwest::Client,
    /// Where URL sources may lead (set with [`Context::with_source_reach`]).
    pub source_reach: SourceReach,
    /// Deadlines of calls to nodes.
    pub deadlines: Deadlines,
    /// Per cluster fleet state.
    pub fleets: Fleets,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Bumped when a cluster's inventory view changed: Blobs reconcile then.
    pub views_changed: tokio::sync::watch::Sender<u64>,
    /// Where URL, ConfigMap and Secret sources are spooled before upload.
    pub spool_dir: PathBuf,
    /// How much of the spool downloads may fill.
    pub spool_room: Arc<super::spool_room::SpoolRoom>,
    /// Largest source the operator ingests, in bytes.
    pub max_ingest_bytes: u64,
    /// Most sources fetched and stored at once.
    pub max_concurrent_ingests: usize,
    /// Ingests uploading to each cluster until their Blob names the id,
    /// and deletes of its blobs, kept apart.
    pub uploads_in_flight: super::uploads_in_flight::UploadsInFlight,
    /// Ids ingests stored that their Blob's status may not name yet.
    pub stored_ingests: super::stored_ingests::StoredIngests,
    /// The status last written to each Blob, until the cache shows it.
    pub written_statuses: super::written_statuses::WrittenStatuses,
    /// How long an ingest's upload may go without the gateway taking a
    /// byte of it or, once sent, answering: then it fails (tried again).
    pub ingest_stall: Duration,
    /// How often an ingest asks whether its Blob is being deleted (then it
    /// stops, so the deletion need not wait for it).
    pub deletion_poll: Duration,
    /// The ingest slots (`max_concurrent_ingests` permits): a Blob whose
    /// source finds none waits, Queued.
    pub ingest_slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// Watch caches of node pods, claims and Kubernetes nodes (empty:
    /// reconciles list them).
    pub observed: super::observed::Observed,
    /// The latest check of the installed CRDs, and who was told of it.
    pub crds: super::crd_freshness::CrdCheck,
    /// The shortest a CA rotation's phase lasts (`ca_rotation::MIN_PHASE`).
    pub ca_min_phase: Duration,
}

impl Context {
    /// A context with DNS endpoints, a spool under the system temp dir, a
    /// 64 GiB ingest limit and the operator in [`DEFAULT_OPERATOR_NAMESPACE`].
    pub fn new(client: Client, image: impl Into<String>) -> Self {
        let reporter = Reporter {
            controller: "redstuff-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            operator: super::desired::OperatorSettings::new(image, DEFAULT_OPERATOR_NAMESPACE),
            endpoints: Endpoints::default(),
            http: SourceReach::default().client(source_client_builder()),
            source_reach: SourceReach::default(),
            deadlines: Deadlines::default(),
            fleets: Fleets::default(),
            views_changed: tokio::sync::watch::channel(0).0,
            spool_dir: std::env::temp_dir().join("redstuff-ingest"),
            spool_room: super::spool_room::SpoolRoom::new(None),
            max_ingest_bytes: 64 << 30,
            max_concurrent_ingests: DEFAULT_MAX_CONCURRENT_INGESTS,
            uploads_in_flight: Default::default(),
            stored_ingests: Default::default(),
            written_statuses: Default::default(),
            ingest_stall: DEFAULT_INGEST_STALL,
            deletion_poll: Duration::from_secs(15),
            ingest_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(
                DEFAULT_MAX_CONCURRENT_INGESTS,
            )),
            observed: Default::default(),
            crds: Default::default(),
            ca_min_phase: super::ca_rotation::MIN_PHASE,
        }
    }

    /// Publishes an Event about `object`; a failure to publish is logged,
    /// not fatal.
    pub async fn publish<K>(&self, object: &K, warning: bool, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            note: Some(truncate_note(note)),
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!("cannot publish event {reason}: {e}");
        }
    }

    /// How to call the nodes of `cluster`: with the token of its Secret,
    /// read now (so a rotated token is used from the next call on).
    pub async fn cluster_calls(&self, cluster: &StorageCluster) -> Result<NodeCalls, kube::Error> {
        let namespace = cluster.metadata.namespace.clone().unwrap_or_default();
        let name = cluster.metadata.name.clone().unwrap_or_default();
        let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(self.client.clone(), &namespace);
        let fleet = self.fleets.get(&(namespace, name.clone()), self.deadlines);
        let secret = secrets
            .get_opt(&super::desired::cluster_token_secret(&name))
            .await?;
        if let Some(token) = secret
            .as_ref()
            .and_then(|s| s.data.as_ref()?.get(super::desired::TOKEN_KEY))
        {
            fleet
                .calls
                .token
                .replace(crate::auth::parse_tokens(&String::from_utf8_lossy(
                    &token.0,
                )));
        }
        if cluster.spec.tls_enabled() {
            let ca = secrets
                .get_opt(&super::desired::tls::ca_secret_name(&name))
                .await?;
            // Every CA trusted now (both, during a rotation), as the
            // cluster reconcile trusts them.
            let trusted = ca.as_ref().and_then(|secret| {
                super::desired::tls::cas_of_secret(secret)
                    .map(|cas| cas.trusted_pem())
                    .or_else(|| {
                        super::cluster_secrets::secret_text(
                            &Some(secret.clone()),
                            super::desired::tls::CA_CERT_KEY,
                        )
                    })
            });
            if let Some(pem) = trusted {
                super::cluster_secrets::trust_cluster_ca(&fleet.trust, &pem);
            }
        }
        Ok(fleet.calls.clone())
    }

    /// The HTTP client for `cluster`'s gateway (trusting what it serves).
    pub fn gateway_http(&self, cluster: &StorageCluster) -> reqwest::Client {
        let key = (
            cluster.metadata.namespace.clone().unwrap_or_default(),
            cluster.metadata.name.clone().unwrap_or_default(),
        );
        self.fleets.get(&key, self.deadlines).gateway_http.clone()
    }

    /// The first user token of `cluster`'s gateway, from its Secret.
    pub async fn user_token(&self, cluster: &StorageCluster) -> Option<String> {
        let namespace = cluster.metadata.namespace.clone().unwrap_or_default();
        let name = cluster.metadata.name.clone().unwrap_or_default();
        let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(self.client.clone(), &namespace);
        let secret = secrets
            .get_opt(&super::desired::user_token_secret(&name))
            .await
            .ok()??;
        let content = secret.data?.get(super::desired::TOKEN_KEY)?.0.clone();
        crate::auth::parse_tokens(&String::from_utf8_lossy(&content))
            .into_iter()
            .next()
    }

    /// The same, with URL sources that may also reach what `reach` allows.
    pub fn with_source_reach(mut self, reach: SourceReach) -> Self {
        self.http = reach.client(source_client_builder());
        self.source_reach = reach;
        self
    }

    /// The same, fetching at most `slots` sources at once (at least one).
    pub fn with_max_concurrent_ingests(mut self, slots: usize) -> Self {
        self.max_concurrent_ingests = slots.max(1);
        self.ingest_slots = std::sync::Arc::new(tokio::sync::Semaphore::new(slots.max(1)));
        self
    }

    /// The same, giving an ingest's upload up after `stall` without
    /// progress.
    pub fn with_ingest_stall(mut self, stall: Duration) -> Self {
        self.ingest_stall = stall;
        self
    }

    /// The same, reaching objects through `endpoints`.
    pub fn with_endpoints(mut self, endpoints: Endpoints) -> Self {
        self.endpoints = endpoints;
        self
    }

    /// The same, with each CA rotation phase lasting at least `min_phase`
    /// (tests: the kubelet they stand in for writes at once).
    pub fn with_ca_min_phase(mut self, min_phase: Duration) -> Self {
        self.ca_min_phase = min_phase;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_are_cut_to_the_api_servers_1024_bytes_at_a_character_boundary() {
        let short = "3 -> media-node-1".to_string();
        assert_eq!(truncate_note(short.clone()), short);
        // Multi-byte characters straddle the limit.
        let long = "shard 7 -> médïa-node-2, ".repeat(100);
        let cut = truncate_note(long.clone());
        assert!(cut.len() <= 1024, "{} bytes", cut.len());
        assert!(cut.ends_with("(cut)"), "{cut}");
        assert!(long.starts_with(cut.trim_end_matches(" ... (cut)")));
    }

    #[test]
    fn a_text_is_cut_to_the_limit_asked_for_and_kept_whole_below_it() {
        let long = "médïa ".repeat(1000);
        let cut = cut_to(long.clone(), 4096);
        assert!(cut.len() <= 4096 && cut.len() > 4000, "{} bytes", cut.len());
        assert!(cut.ends_with("(cut)"));
        let under = "x".repeat(4096);
        assert_eq!(cut_to(under.clone(), 4096), under);
    }

    #[test]
    fn a_forgotten_cluster_loses_its_fleet_state_and_metrics() {
        let fleets = Fleets::default();
        let key = ("storage".to_string(), "media".to_string());
        fleets.get(&key, Deadlines::default());
        fleets.get(&("storage".into(), "other".into()), Deadlines::default());
        assert_eq!(fleets.registries().len(), 2);
        fleets.forget(&key);
        assert!(fleets.find(&key).is_none());
        assert_eq!(
            fleets.keys(),
            vec![("storage".to_string(), "other".to_string())]
        );
        assert_eq!(fleets.registries().len(), 1);
    }

    #[test]
    fn a_reconcile_of_a_cluster_whose_last_view_listed_many_blobs_gets_their_listing_time() {
        let fleets = Fleets::default();
        let key = ("storage".to_string(), "media".to_string());
        assert_eq!(fleets.last_listed(&key), 0, "never seen");
        let fleet = fleets.get(&key, Deadlines::default());
        let mut view = FleetView::default();
        for i in 0..30 {
            view.blobs.insert(format!("b{i}"), Default::default());
        }
        view.deleted.insert("gone".into(), 2);
        *fleet.view.lock().unwrap() = Some((4, Arc::new(view)));
        assert_eq!(fleets.last_listed(&key), 31);
        use crate::operator::controller::{reconcile_deadline, RECONCILE_DEADLINE};
        assert_eq!(reconcile_deadline(0), RECONCILE_DEADLINE);
        assert_eq!(
            reconcile_deadline(1_000_000),
            RECONCILE_DEADLINE + Duration::from_secs(500)
        );
    }
}
