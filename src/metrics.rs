//! Prometheus metrics: one registry per process, the naming rules of
//! docs (prefix `redstuff_`, base units, `_total` counters, bounded labels),
//! and the metric sets of each part. README.md lists every metric; a test
//! holds the list and the code together.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds, from 1 ms to about 1 minute.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets of the wait before a repair starts, in seconds: up to two hours,
/// past the operator's grace period (5 minutes by default) before the
/// shards of a node that went away move.
const REPAIR_START_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 420.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
];

/// Names of every metric registered by this process so far.
static REGISTERED: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

fn note(name: &str) {
    REGISTERED
        .lock()
        .expect("not poisoned")
        .insert(name.to_string());
}

/// Every metric name the code can export: the node's, the gateway's and
/// the control loop's (registered on throwaway registries to list them).
pub fn all_metric_names() -> std::collections::BTreeSet<String> {
    let registry = Registry::new();
    NodeMetrics::new(&registry);
    GatewayMetrics::new(&Registry::new());
    FleetMetrics::new(&Registry::new());
    OperatorMetrics::new(&Registry::new());
    S3Metrics::new(&Registry::new());
    REGISTERED.lock().expect("not poisoned").clone()
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding of gathered metrics");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// Renders several registries as one Prometheus text page: families of
/// the same name (one registry per StorageCluster, told apart by constant
/// labels) are merged, since the format allows each family only once.
pub fn render_all(registries: &[Registry]) -> String {
    let mut families: std::collections::BTreeMap<String, prometheus::proto::MetricFamily> =
        std::collections::BTreeMap::new();
    for registry in registries {
        for mut family in registry.gather() {
            match families.get_mut(family.name()) {
                Some(existing) => existing.mut_metric().extend(family.take_metric()),
                None => {
                    families.insert(family.name().to_string(), family);
                }
            }
        }
    }
    let families: Vec<_> = families.into_values().collect();
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("text encoding of gathered metrics");
    String::from_utf8(out).expect("the text format is UTF-8")
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    note(name);
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    note(name);
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    note(name);
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn float_gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    note(name);
    let g = Gauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    note(name);
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    histogram_with(registry, name, help, LATENCY_BUCKETS)
}

fn histogram_with(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    note(name);
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    note(name);
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

/// Metrics of a storage node.
#[derive(Clone)]
pub struct NodeMetrics {
    /// Bytes held in the node's store.
    pub stored_bytes: IntGauge,
    /// Size of the filesystem holding the store.
    pub filesystem_size_bytes: IntGauge,
    /// Bytes still available to the store on its filesystem.
    pub filesystem_available_bytes: IntGauge,
    /// How long the oldest store operation of a request has been running
    /// (0: none runs); past 15 s the node calls itself not ready.
    pub oldest_store_operation: Gauge,
    /// Slivers held, by kind.
    pub slivers: IntGaugeVec,
    /// Requests by route and status code.
    pub requests: IntCounterVec,
    /// Request latency by route.
    pub request_duration: HistogramVec,
    /// Recovery symbols served to peers.
    pub recovery_symbols_served: IntCounter,
    /// Corrupt data found in the store, by where it was found.
    pub corruption_detected: IntCounterVec,
    /// When the last scrub pass ended (Unix seconds; 0: none yet).
    pub scrub_completed: IntGauge,
    /// When the running or next scrub pass should have ended at the
    /// latest (Unix seconds; 0: no scrub).
    pub scrub_deadline: IntGauge,
    /// Sliver pairs rebuilt by this node's repair action.
    pub pairs_rebuilt: IntCounter,
    /// Bytes fetched from peers by this node's repair action.
    pub repair_fetched_bytes: IntCounter,
    /// Answers from peers that failed verification, by peer node.
    pub peer_invalid: IntCounterVec,
    /// Reads and writes of the store that failed with an I/O error, by where.
    pub io_errors: IntCounterVec,
    /// Staged uploads removed because they were never committed.
    pub abandoned_collected: IntCounter,
    /// Staged writes idle past their TTL that a peer reported committed:
    /// the commit was recorded here instead of the data being removed.
    pub staged_commits_adopted: IntCounter,
    /// Staged writes idle past their TTL kept because nodes that may hold
    /// their commit do not answer.
    pub staged_waiting: IntGauge,
    /// Blobs whose data a tombstone removed here.
    pub blobs_deleted: IntCounter,
    /// Bytes of pairs released here because their shard moved away.
    pub released_bytes: IntCounter,
    /// Bytes of quarantined files (they count toward capacity until purged).
    pub quarantined_bytes: IntGauge,
    /// Bytes of parsed metadata held in memory.
    pub metadata_cache_bytes: IntGauge,
    /// When the certificate the node serves expires (0: not serving TLS).
    pub tls_certificate_expiry: IntGauge,
    /// TLS handshakes that failed (a caller that does not trust the
    /// node's CA, a plain-HTTP caller, a scanner).
    pub tls_handshake_failures: IntCounter,
    /// TLS handshakes the caller left unfinished without a word (a call
    /// cancelled while it connected, a TCP probe).
    pub tls_handshakes_abandoned: IntCounter,
}

impl NodeMetrics {
    /// Registers the node metrics; the series of what can go wrong start
    /// at 0 (an alert on `increase` misses a series' first value).
    pub fn new(registry: &Registry) -> Self {
        let metrics = Self {
            stored_bytes: gauge(
                registry,
                "redstuff_node_stored_bytes",
                "Bytes held in the node's sliver store, checksums included.",
            ),
            filesystem_size_bytes: gauge(
                registry,
                "redstuff_node_filesystem_size_bytes",
                "Size of the filesystem holding the node's store.",
            ),
            filesystem_available_bytes: gauge(
                registry,
                "redstuff_node_filesystem_available_bytes",
                "Bytes available to the node's store on its filesystem.",
            ),
            oldest_store_operation: float_gauge(
                registry,
                "redstuff_node_oldest_store_operation_seconds",
                "How long the oldest store operation of a request has been running (0: none): past 15 s the disk counts as stalled and the node as not ready.",
            ),
            slivers: gauge_vec(
                registry,
                "redstuff_node_slivers",
                "Slivers held by the node.",
                &["kind"],
            ),
            requests: counter_vec(
                registry,
                "redstuff_node_requests_total",
                "HTTP requests served by the node.",
                &["route", "code"],
            ),
            request_duration: histogram_vec(
                registry,
                "redstuff_node_request_duration_seconds",
                "Latency of node HTTP requests.",
                &["route"],
            ),
            recovery_symbols_served: counter(
                registry,
                "redstuff_node_recovery_symbols_served_total",
                "Recovery symbols served to peers.",
            ),
            corruption_detected: counter_vec(
                registry,
                "redstuff_node_corruption_detected_total",
                "Stored files that failed their checksum.",
                &["where"],
            ),
            scrub_completed: gauge(
                registry,
                "redstuff_node_scrub_last_completed_timestamp_seconds",
                "When the last pass of the scrub over every stored file ended, Unix seconds (0: none yet).",
            ),
            scrub_deadline: gauge(
                registry,
                "redstuff_node_scrub_deadline_timestamp_seconds",
                "When the running or next scrub pass should have ended at the latest (its rest, twice its read time at the rate limit, and an hour), Unix seconds (0: the node does not scrub).",
            ),
            pairs_rebuilt: counter(
                registry,
                "redstuff_node_pairs_rebuilt_total",
                "Sliver pairs (per segment) rebuilt from peers' recovery symbols.",
            ),
            repair_fetched_bytes: counter(
                registry,
                "redstuff_node_repair_fetched_bytes_total",
                "Bytes fetched from peers to rebuild slivers.",
            ),
            peer_invalid: counter_vec(
                registry,
                "redstuff_peer_invalid_responses_total",
                "Answers from peers that failed verification.",
                &["node"],
            ),
            io_errors: counter_vec(
                registry,
                "redstuff_node_io_errors_total",
                "Store reads and writes that failed with an I/O error.",
                &["where"],
            ),
            abandoned_collected: counter(
                registry,
                "redstuff_node_abandoned_uploads_collected_total",
                "Staged uploads removed after their TTL because they were never committed.",
            ),
            staged_commits_adopted: counter(
                registry,
                "redstuff_node_staged_commits_adopted_total",
                "Staged writes idle past their TTL whose commit a peer reported: committed here instead of removed.",
            ),
            staged_waiting: gauge(
                registry,
                "redstuff_node_staged_writes_waiting",
                "Staged writes idle past their TTL kept because nodes that may hold their commit do not answer.",
            ),
            blobs_deleted: counter(
                registry,
                "redstuff_node_blobs_deleted_total",
                "Blobs whose data a tombstone removed from the node.",
            ),
            released_bytes: counter(
                registry,
                "redstuff_node_released_bytes_total",
                "Bytes of pairs the node released because their shard moved to another node that holds them.",
            ),
            quarantined_bytes: gauge(
                registry,
                "redstuff_node_quarantined_bytes",
                "Bytes of quarantined files, counted toward capacity until purged.",
            ),
            metadata_cache_bytes: gauge(
                registry,
                "redstuff_node_metadata_cache_bytes",
                "Bytes of parsed metadata the node keeps in memory.",
            ),
            tls_certificate_expiry: gauge(
                registry,
                "redstuff_node_tls_certificate_expiry_timestamp_seconds",
                "When the certificate the node's API serves expires, in Unix seconds (0: the API is plain HTTP).",
            ),
            tls_handshake_failures: counter(
                registry,
                "redstuff_node_tls_handshake_failures_total",
                "TLS handshakes on the node's API that failed or timed out.",
            ),
            tls_handshakes_abandoned: counter(
                registry,
                "redstuff_node_tls_handshakes_abandoned_total",
                "TLS handshakes on the node's API that the caller closed before they finished, without an alert (a call cancelled while connecting, a TCP probe).",
            ),
        };
        zero_series(&metrics.corruption_detected, ["read", "scrub"]);
        zero_series(&metrics.io_errors, ["read", "scrub", "write"]);
        metrics
    }

    /// Starts at 0 the per-peer series of every node of `map`.
    pub fn know_peers(&self, map: &crate::fleet::FleetMap) {
        zero_series(
            &self.peer_invalid,
            map.nodes.iter().map(|n| n.name.as_str()),
        );
    }
}

/// Creates, at 0, the series of `counter` with each of `values` as its
/// one label: an alert on `increase` sees a series' first count only
/// when a scrape saw the series before it.
pub fn zero_series<'a>(counter: &IntCounterVec, values: impl IntoIterator<Item = &'a str>) {
    for value in values {
        counter.with_label_values(&[value]);
    }
}

/// Metrics of a gateway (and of the client inside it).
#[derive(Clone)]
pub struct GatewayMetrics {
    /// Blob bytes accepted by PUT.
    pub put_bytes: IntCounter,
    /// Blob bytes served by GET.
    pub get_bytes: IntCounter,
    /// Requests by operation and status code.
    pub requests: IntCounterVec,
    /// Request latency by operation.
    pub request_duration: HistogramVec,
    /// Time to encode one segment.
    pub encode_duration: Histogram,
    /// Time to decode (and verify) one segment.
    pub decode_duration: Histogram,
    /// Answers from nodes that failed verification, by node.
    pub peer_invalid: IntCounterVec,
    /// Rows of segments served by reads, by where they came from (cache,
    /// shared, alone, segment).
    pub read_rows: IntCounterVec,
    /// Uploads being received, encoded or shipped.
    pub uploads_in_flight: IntGauge,
    /// Uploads waiting for a slot.
    pub uploads_waiting: IntGauge,
    /// Bytes of the upload memory budget reserved by segments in memory.
    pub upload_memory_reserved: IntGauge,
    /// Pairs a node filed from an earlier upload of the same bytes instead
    /// of receiving them again.
    pub upload_pairs_reused: IntCounter,
    /// Resumable uploads the gateway keeps (open, or finished or failed
    /// and remembered for a client that asks again).
    pub uploads_open: IntGauge,
    /// Appends that resumed an upload whose previous append broke off.
    pub uploads_resumed: IntCounter,
    /// Open uploads given up after sitting idle.
    pub uploads_expired: IntCounter,
    /// The upload memory budget.
    pub upload_memory_budget: IntGauge,
    /// Bytes of the read memory budget reserved by rows being fetched or sent.
    pub read_memory_reserved: IntGauge,
    /// The read memory budget.
    pub read_memory_budget: IntGauge,
    /// When the certificate the gateway serves expires (0: not serving TLS).
    pub tls_certificate_expiry: IntGauge,
    /// TLS handshakes on the native API and S3 that failed.
    pub tls_handshake_failures: IntCounter,
    /// TLS handshakes on the native API and S3 the caller left unfinished
    /// without a word.
    pub tls_handshakes_abandoned: IntCounter,
    /// Calls to a node the gateway waited out (past the hedge delay or the
    /// call deadline), by node.
    pub node_calls_unanswered: IntCounterVec,
    /// 1 while a node is silent to the gateway (writes and deletes pass it
    /// over, reads ask it last), by node.
    pub node_unanswering: IntGaugeVec,
}

impl GatewayMetrics {
    /// Registers the gateway metrics.
    pub fn new(registry: &Registry) -> Self {
        Self {
            put_bytes: counter(
                registry,
                "redstuff_gateway_put_bytes_total",
                "Blob bytes stored through the gateway.",
            ),
            get_bytes: counter(
                registry,
                "redstuff_gateway_get_bytes_total",
                "Blob bytes read through the gateway.",
            ),
            requests: counter_vec(
                registry,
                "redstuff_gateway_requests_total",
                "Gateway requests.",
                &["op", "code"],
            ),
            request_duration: histogram_vec(
                registry,
                "redstuff_gateway_request_duration_seconds",
                "Latency of gateway requests.",
                &["op"],
            ),
            encode_duration: histogram(
                registry,
                "redstuff_encode_duration_seconds",
                "Time to encode one segment with commitments.",
            ),
            decode_duration: histogram(
                registry,
                "redstuff_decode_duration_seconds",
                "Time to decode and verify one segment.",
            ),
            peer_invalid: counter_vec(
                registry,
                "redstuff_peer_invalid_responses_total",
                "Answers from nodes that failed verification.",
                &["node"],
            ),
            read_rows: counter_vec(
                registry,
                "redstuff_gateway_read_rows_total",
                "Rows of segments served by reads: from the gateway's cache, from another read fetching them at the same time, fetched alone from their shards, or decoded with their whole segment.",
                &["source"],
            ),
            uploads_in_flight: gauge(
                registry,
                "redstuff_gateway_uploads_in_flight",
                "Uploads being received, encoded or shipped.",
            ),
            uploads_waiting: gauge(
                registry,
                "redstuff_gateway_uploads_waiting",
                "Uploads waiting for one of the gateway's upload slots.",
            ),
            upload_memory_reserved: gauge(
                registry,
                "redstuff_gateway_upload_memory_reserved_bytes",
                "Bytes of the upload memory budget held by segments being received, encoded or shipped.",
            ),
            upload_pairs_reused: counter(
                registry,
                "redstuff_gateway_upload_pairs_reused_total",
                "Sliver pairs a node already held from an earlier upload of the same bytes (a write retried after it was cut off), filed without being sent again.",
            ),
            uploads_open: gauge(
                registry,
                "redstuff_gateway_uploads_resumable",
                "Resumable uploads open on the gateway (/v1/uploads); the answers of finished or failed ones, kept for a client that asks again, do not count.",
            ),
            uploads_resumed: counter(
                registry,
                "redstuff_gateway_uploads_resumed_total",
                "Appends to a resumable upload that went on where a broken append of it stopped.",
            ),
            uploads_expired: counter(
                registry,
                "redstuff_gateway_uploads_expired_total",
                "Open resumable uploads given up after they took no bytes for --cut-upload-kept-secs.",
            ),
            upload_memory_budget: gauge(
                registry,
                "redstuff_gateway_upload_memory_budget_bytes",
                "The upload memory budget (--upload-memory): what all uploads may hold at once.",
            ),
            read_memory_reserved: gauge(
                registry,
                "redstuff_gateway_read_memory_reserved_bytes",
                "Bytes of the read memory budget held by rows of segments being fetched, verified or sent to readers.",
            ),
            read_memory_budget: gauge(
                registry,
                "redstuff_gateway_read_memory_budget_bytes",
                "The read memory budget (--read-memory): what all reads may hold at once, besides cached rows no reader holds.",
            ),
            tls_certificate_expiry: gauge(
                registry,
                "redstuff_gateway_tls_certificate_expiry_timestamp_seconds",
                "When the certificate the gateway's API and S3 serve expires, in Unix seconds (0: plain HTTP).",
            ),
            tls_handshake_failures: counter(
                registry,
                "redstuff_gateway_tls_handshake_failures_total",
                "TLS handshakes on the gateway's API and S3 that failed or timed out.",
            ),
            tls_handshakes_abandoned: counter(
                registry,
                "redstuff_gateway_tls_handshakes_abandoned_total",
                "TLS handshakes on the gateway's API and S3 that the caller closed before they finished, without an alert (a client cancelling, a TCP probe).",
            ),
            node_calls_unanswered: counter_vec(
                registry,
                "redstuff_gateway_node_calls_unanswered_total",
                "Calls to a node the gateway waited out: a sliver request past the hedge delay, or any call past the node deadline.",
                &["node"],
            ),
            node_unanswering: gauge_vec(
                registry,
                "redstuff_gateway_node_unanswering",
                "1 while a node is silent to the gateway (a call went past its deadline and it has not answered since): writes and deletes pass it over, reads ask it last.",
                &["node"],
            ),
        }
    }

    /// Starts at 0 the per-node counters of every node of `map`.
    pub fn know_nodes(&self, map: &crate::fleet::FleetMap) {
        let names = || map.nodes.iter().map(|n| n.name.as_str());
        zero_series(&self.peer_invalid, names());
        zero_series(&self.node_calls_unanswered, names());
    }
}

/// Metrics of the S3 front.
#[derive(Clone)]
pub struct S3Metrics {
    /// Requests by S3 operation and HTTP status.
    pub requests: IntCounterVec,
    /// Latency by S3 operation.
    pub request_duration: HistogramVec,
    /// Blobs the collector deleted (no key or upload refers to them).
    pub blobs_collected: IntCounter,
    /// Multipart uploads aborted because they were older than the limit.
    pub uploads_expired: IntCounter,
}

impl S3Metrics {
    /// Registers the S3 metrics.
    pub fn new(registry: &Registry) -> Self {
        Self {
            requests: counter_vec(
                registry,
                "redstuff_s3_requests_total",
                "S3 requests by operation and HTTP status.",
                &["op", "code"],
            ),
            request_duration: histogram_vec(
                registry,
                "redstuff_s3_request_duration_seconds",
                "Latency of S3 requests by operation.",
                &["op"],
            ),
            blobs_collected: counter(
                registry,
                "redstuff_s3_blobs_collected_total",
                "Blobs deleted because no S3 key or upload refers to them any more.",
            ),
            uploads_expired: counter(
                registry,
                "redstuff_s3_uploads_expired_total",
                "Multipart uploads aborted because they were left unfinished too long.",
            ),
        }
    }
}

/// Metrics of the fleet control loop (local `dev` loop or operator).
#[derive(Clone)]
pub struct FleetMetrics {
    /// Blobs by health.
    pub blobs: IntGaugeVec,
    /// (blob, shard) pairs missing or invalid across the fleet, of blobs
    /// that can be rebuilt.
    pub shards_missing: IntGauge,
    /// Node processes or pods ready.
    pub nodes_ready: IntGauge,
    /// Gateway pods available (the operator's reading of the gateway
    /// Deployment).
    pub gateways_available: IntGauge,
    /// Shards whose owner did not answer the operator (pod not ready, or
    /// silent).
    pub shards_unavailable: IntGauge,
    /// f: the shards that may be lost or lie.
    pub fault_tolerance: IntGauge,
    /// 1 while every object of the cluster is applied as its spec says;
    /// 0 while some cannot be, or the spec or its claims are refused.
    pub synced: IntGauge,
    /// Nodes that did not answer their inventory within the deadline.
    pub nodes_not_answering: IntGauge,
    /// When the cluster's CA certificate expires (0: no TLS).
    pub ca_expiry: IntGauge,
    /// Where the cluster is in rotating its CA: 0 steady, 1 trusting the
    /// new CA beside the current, 2 the new CA signing, the previous still
    /// trusted.
    pub ca_rotation_phase: IntGauge,
    /// Commit markers and tombstones the loop carried to nodes that missed them.
    pub markers_spread: IntCounterVec,
    /// Shards of blobs released from nodes they moved away from.
    pub shards_released: IntCounter,
    /// Readings of the fleet, by kind: every node's whole inventory, or
    /// only what changed since the last reading.
    pub inventory_reads: IntCounterVec,
    /// Blobs read again in readings of what changed.
    pub inventory_changed_blobs: IntCounter,
    /// Node pods gone longer than the grace period (their shards moved).
    pub nodes_evicted: IntGauge,
    /// Repairs started.
    pub repairs_started: IntCounter,
    /// Repairs completed.
    pub repairs_completed: IntCounter,
    /// Repairs failed.
    pub repairs_failed: IntCounter,
    /// Bytes moved by repairs.
    pub repair_bytes: IntCounter,
    /// Bytes whole-segment repairs of the same pairs would have moved.
    pub repair_whole_segment_bytes: IntCounter,
    /// Repairs in flight.
    pub repairs_in_flight: IntGauge,
    /// Time from noticing a loss to starting its repair.
    pub repair_start_delay: Histogram,
}

impl FleetMetrics {
    /// Registers the control-loop metrics.
    pub fn new(registry: &Registry) -> Self {
        Self {
            blobs: gauge_vec(registry, "redstuff_blobs", "Blobs by health.", &["health"]),
            shards_missing: gauge(
                registry,
                "redstuff_shards_missing",
                "(blob, shard) pairs missing across the fleet, of blobs that can be rebuilt (not Lost).",
            ),
            nodes_ready: gauge(registry, "redstuff_nodes_ready", "Storage nodes ready."),
            gateways_available: gauge(
                registry,
                "redstuff_gateways_available",
                "Gateway pods available (0: clients can neither store nor read).",
            ),
            shards_unavailable: gauge(
                registry,
                "redstuff_shards_unavailable",
                "Shards whose owner did not answer the operator (pod not ready, or silent).",
            ),
            fault_tolerance: gauge(
                registry,
                "redstuff_fault_tolerance",
                "f: the shards that may be lost or lie without a blob being lost.",
            ),
            synced: gauge(
                registry,
                "redstuff_cluster_synced",
                "1 while every object of the cluster is applied as its spec says, 0 while some cannot be or the cluster is refused (its Synced and Ready conditions say why).",
            ),
            nodes_not_answering: gauge(
                registry,
                "redstuff_nodes_not_answering",
                "Storage nodes that did not answer their inventory within the deadline.",
            ),
            ca_expiry: gauge(
                registry,
                "redstuff_tls_ca_expiry_timestamp_seconds",
                "When the cluster's CA certificate expires, in Unix seconds (0: the cluster serves no TLS). The operator rotates it a year before, or when asked (annotation redstuff.dev/rotate-ca).",
            ),
            ca_rotation_phase: gauge(
                registry,
                "redstuff_tls_ca_rotation_phase",
                "Where the cluster is in rotating its CA: 0 steady (or no TLS), 1 the new CA trusted beside the current, 2 the new CA signing while the previous is still trusted.",
            ),
            markers_spread: counter_vec(
                registry,
                "redstuff_markers_spread_total",
                "Commit markers and tombstones carried to nodes that missed them.",
                &["marker"],
            ),
            shards_released: counter(
                registry,
                "redstuff_shards_released_total",
                "Pairs of a blob's shard released from a node the shard moved away from, once its owner held them.",
            ),
            inventory_reads: counter_vec(
                registry,
                "redstuff_inventory_reads_total",
                "Readings of the fleet's inventories, by kind: whole (every blob of every node) or changes (only blobs changed since the last reading).",
                &["kind"],
            ),
            inventory_changed_blobs: counter(
                registry,
                "redstuff_inventory_changed_blobs_total",
                "Blobs read again from every node because some node's files of them changed.",
            ),
            nodes_evicted: gauge(
                registry,
                "redstuff_nodes_evicted",
                "Storage node pods gone longer than the grace period; their shards moved.",
            ),
            repairs_started: counter(
                registry,
                "redstuff_repairs_started_total",
                "Repairs started.",
            ),
            repairs_completed: counter(
                registry,
                "redstuff_repairs_completed_total",
                "Repairs completed.",
            ),
            repairs_failed: counter(registry, "redstuff_repairs_failed_total", "Repairs failed."),
            repair_bytes: counter(
                registry,
                "redstuff_repair_bytes_total",
                "Bytes moved between nodes by repairs.",
            ),
            repair_whole_segment_bytes: counter(
                registry,
                "redstuff_repair_whole_segment_bytes_total",
                "Bytes repairs of the same pairs would have moved fetching whole segments.",
            ),
            repairs_in_flight: gauge(registry, "redstuff_repairs_in_flight", "Repairs in flight."),
            repair_start_delay: histogram_with(
                registry,
                "redstuff_repair_start_delay_seconds",
                "Time from noticing a loss to starting its repair.",
                REPAIR_START_BUCKETS,
            ),
        }
    }
}

/// Metrics of the operator's controllers.
#[derive(Clone)]
pub struct OperatorMetrics {
    /// Reconciles run, by controller.
    pub reconciles: IntCounterVec,
    /// Reconciles that failed, by controller.
    pub reconcile_errors: IntCounterVec,
    /// Reconcile duration, by controller.
    pub reconcile_duration: HistogramVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    /// Per CRD: 1 when the installed one is this build's, 0 otherwise
    /// (absent until checked, or when the operator may not read it).
    pub crd_current: IntGaugeVec,
}

impl OperatorMetrics {
    /// Registers the operator metrics.
    pub fn new(registry: &Registry) -> Self {
        Self {
            reconciles: counter_vec(
                registry,
                "redstuff_reconcile_total",
                "Reconciles run.",
                &["controller"],
            ),
            reconcile_errors: counter_vec(
                registry,
                "redstuff_reconcile_errors_total",
                "Reconciles that failed.",
                &["controller"],
            ),
            reconcile_duration: histogram_vec(
                registry,
                "redstuff_reconcile_duration_seconds",
                "Reconcile duration.",
                &["controller"],
            ),
            leader: gauge(
                registry,
                "redstuff_operator_leader",
                "1 while this operator replica holds the leader Lease.",
            ),
            crd_current: gauge_vec(
                registry,
                "redstuff_operator_crd_current",
                "1 when the installed CustomResourceDefinition is the one this operator was built with, 0 when it differs or is missing (the API server then drops fields).",
                &["crd"],
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_registry(cluster: &str) -> Registry {
        let labels =
            std::collections::HashMap::from([("storagecluster".to_string(), cluster.to_string())]);
        Registry::new_custom(None, Some(labels)).unwrap()
    }

    #[test]
    fn the_series_an_alert_counts_from_start_at_zero_before_anything_went_wrong() {
        let registry = Registry::new();
        let node = NodeMetrics::new(&registry);
        let text = render(&registry);
        for series in [
            r#"redstuff_node_corruption_detected_total{where="read"} 0"#,
            r#"redstuff_node_corruption_detected_total{where="scrub"} 0"#,
            r#"redstuff_node_io_errors_total{where="write"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
        let map = crate::fleet::FleetMap {
            shards: 4,
            segment_size: 1 << 20,
            nodes: vec![crate::fleet::MapNode {
                name: "node-3".into(),
                url: "http://127.0.0.1:1".into(),
                shards: [3].into(),
            }],
        };
        node.know_peers(&map);
        let gateway_registry = Registry::new();
        let gateway = GatewayMetrics::new(&gateway_registry);
        gateway.know_nodes(&map);
        for text in [render(&registry), render(&gateway_registry)] {
            assert!(
                text.contains(r#"redstuff_peer_invalid_responses_total{node="node-3"} 0"#),
                "{text}"
            );
        }
    }

    #[test]
    fn a_repair_that_starts_after_the_grace_period_falls_in_a_bucket_of_its_own() {
        let registry = Registry::new();
        let fleet = FleetMetrics::new(&registry);
        fleet.repair_start_delay.observe(330.0);
        let text = render(&registry);
        assert!(
            text.contains(r#"redstuff_repair_start_delay_seconds_bucket{le="300"} 0"#)
                && text.contains(r#"redstuff_repair_start_delay_seconds_bucket{le="420"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn registries_of_two_clusters_render_as_one_family_per_metric() {
        let a = cluster_registry("media");
        let b = cluster_registry("models");
        FleetMetrics::new(&a).nodes_ready.set(3);
        FleetMetrics::new(&b).nodes_ready.set(5);
        let text = render_all(&[a, b]);
        assert_eq!(text.matches("# TYPE redstuff_nodes_ready gauge").count(), 1);
        assert!(
            text.contains("redstuff_nodes_ready{storagecluster=\"media\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("redstuff_nodes_ready{storagecluster=\"models\"} 5"),
            "{text}"
        );
    }
}
