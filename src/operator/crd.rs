//! The custom resources of redstuff: StorageCluster and Blob (group
//! redstuff.dev, version v1alpha1). The YAML in crds/ is generated from
//! these types (`redstuff crds`); doc comments become the descriptions
//! `kubectl explain` shows; schema ranges and CEL rules refuse bad specs at
//! admission.

// The derive's printcolumn(...) arguments repeat keys by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A fleet of storage-node pods holding blobs with Red Stuff: n shards
/// spread over node pods; any f = (n - 1) / 3 shards may be lost or lie.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "redstuff.dev",
    version = "v1alpha1",
    kind = "StorageCluster",
    namespaced,
    status = "StorageClusterStatus",
    derive = "PartialEq",
    shortname = "rsc",
    category = "redstuff",
    cel,
    validation = Rule::new("self.metadata.name.size() <= 54 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("the name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter) of at most 54 characters: node pods are named NAME-node-999 and Services NAME-gateway, and both must be DNS labels of at most 63"),
    doc = "A fleet of storage-node pods that keeps blobs with the Red Stuff erasure code.",
    printcolumn(name = "Shards", type_ = "integer", json_path = ".spec.shards"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".spec.nodes"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyNodes"),
    printcolumn(name = "Tolerates", type_ = "string", json_path = ".status.tolerates"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Why",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Degraded\")].reason",
        description = "The Degraded condition's reason: AllNodesReady (Creating while the cluster is first created), or the most pressing of BlobsLost, TooManyShardsDown, GatewayUnavailable, ShardsMoved, NodesNotAnswering, NodesNotReady, BlobsAtRisk, BlobsDegraded"
    ),
    printcolumn(
        name = "Lost",
        type_ = "integer",
        json_path = ".status.blobs.lost",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.nodes <= self.shards").message("nodes must not exceed shards: every node pod holds at least one shard").field_path(".nodes"))]
#[x_kube(validation = Rule::new("self.shards == oldSelf.shards").message("shards is fixed once the cluster is created: the shard count is part of every blob's encoding").field_path(".shards"))]
#[x_kube(validation = Rule::new("!has(self.gateway) || !has(self.gateway.replicas) || self.gateway.replicas <= 1 || !has(self.s3) || (has(self.s3.enabled) && !self.s3.enabled) || has(self.s3.postgresSecret)").message("several gateway replicas need the index in PostgreSQL (s3.postgresSecret): the embedded index has one writer").field_path(".gateway.replicas"))]
#[x_kube(validation = Rule::new("(has(self.tls) && has(self.tls.enabled) && self.tls.enabled) == (has(oldSelf.tls) && has(oldSelf.tls.enabled) && oldSelf.tls.enabled)").message("tls is fixed once the cluster is created: while node pods changed one at a time, the gateway and the other nodes would call some of them in the wrong protocol").field_path(".tls"))]
#[serde(rename_all = "camelCase")]
pub struct StorageClusterSpec {
    /// Shard count n, from 4 to 1000; f = (n - 1) / 3 shards may be lost or
    /// lie. Fixed once the cluster is created.
    #[schemars(range(min = 4, max = 1000))]
    pub shards: u16,
    /// Storage-node pods; shards are spread evenly over them. At most `shards`.
    #[schemars(range(min = 1, max = 1000))]
    pub nodes: u16,
    /// Container image of the node and gateway pods (default: the operator's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Each node pod's volume.
    pub storage: StorageSpec,
    /// CPU and memory of each node pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// How node pods spread over Kubernetes nodes and zones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementSpec>,
    /// How lost shards are rebuilt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairSpec>,
    /// An S3 endpoint on the gateway (port 7780 of its Service), with its
    /// index of buckets and keys on a volume of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Spec>,
    /// Record each blob uploaded through the gateway's native API as a Blob
    /// named CLUSTER-upload-<id prefix> (default true; the bytes of S3 objects are
    /// never recorded: S3 lists them). Set false to record none: the blobs
    /// are kept, repaired and counted all the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_uploads: Option<bool>,
    /// TLS on the node API and on the gateway's API and S3. Whether it is
    /// enabled is fixed once the cluster is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// The gateway pods' resources and bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySpec>,
    /// How node pods re-read every stored file to find bitrot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrub: Option<ScrubSpec>,
}

/// How node pods scrub: each re-reads and checks every stored file, a
/// pass starting `interval` after the last one ended, reading at most
/// `maxBytesPerSecond`; a file that fails is treated as missing and
/// rebuilt. A change replaces node pods one at a time.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScrubSpec {
    /// Rest between two passes, e.g. 24h (the default), 6h; 0s: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub interval: Option<String>,
    /// Bytes per second a pass reads at most, e.g. 64Mi (the default), so
    /// client reads and repairs keep the disk; 0: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub max_bytes_per_second: Option<String>,
}

/// The gateway pods' resources and the bounds of what they take on at
/// once (a change replaces the gateway pods).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Gateway pods (default 1), spread over Kubernetes nodes, at most one
    /// of them evicted at a time. More than one with S3 needs its index in
    /// PostgreSQL (s3.postgresSecret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: Option<u16>,
    /// CPU and memory of each gateway pod. Size memory for uploadMemory
    /// and readMemory plus about 1.5 GiB (cached rows, the encoder's spare
    /// buffers, the process at rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Uploads each gateway pod handles at once (default 8); four times as
    /// many more wait up to 10 s for a slot, the rest get 503 or SlowDown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_uploads: Option<u16>,
    /// Bytes of segments the uploads of a gateway pod may hold in memory
    /// together, e.g. 2Gi (the default); an upload past it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub upload_memory: Option<String>,
    /// Bytes of rows the reads of a gateway pod may hold in memory
    /// together, e.g. 1Gi (the default); a read past it waits, and one
    /// that waits 10 s for its first segment gets 503 or SlowDown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub read_memory: Option<String>,
    /// Seconds a response may make no progress (its client reads nothing),
    /// or a native upload's body bring nothing, before the gateway ends
    /// its connection, giving back the read memory or upload slot it held
    /// (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub client_stall_seconds: Option<u32>,
    /// Size of the scratch volume S3 uploads are kept on while their
    /// checksums are checked, e.g. 20Gi (default: no limit, the Kubernetes
    /// node's disk). The gateway answers SlowDown before it fills.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub spool_size: Option<String>,
}

/// TLS on the node API and on the gateway's API and S3: node pods and
/// gateway pods serve certificates the operator issues from a CA of the
/// cluster's own (kept in the Secret NAME-ca; clients find its certificate
/// as `ca.crt` in NAME-gateway-tls) and issues again 30 days before they
/// expire (they are valid 90 days) or when the names they must cover
/// change, without restarting pods; the gateway, the operator and the
/// nodes' repairs check them. Metrics and probes stay plain HTTP on ports
/// of their own.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Serve TLS (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Further DNS names or IP addresses the gateway's certificate covers
    /// (the Service's names, localhost for a port-forward and the S3
    /// domain are always in it): the host of a LoadBalancer, or of an
    /// Ingress passing TLS through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 50))]
    pub gateway_names: Option<Vec<String>>,
    /// A Secret of type kubernetes.io/tls of yours (one cert-manager
    /// writes, say) the gateway serves instead of a certificate from the
    /// cluster's CA (gatewayNames then does nothing). Its `tls.crt` must
    /// cover NAME-gateway.NAMESPACE.svc, where the operator uploads Blob
    /// sources, checking it against the Secret's `ca.crt`, or Mozilla's
    /// roots when it has none. Renewals are served without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub gateway_secret: Option<String>,
    /// How long a new CA is trusted beside the old one before it signs,
    /// while the CA is rotated (the annotation redstuff.dev/rotate-ca, or
    /// a year before it expires): time for clients outside the cluster to
    /// take the new `ca.crt` of NAME-gateway-tls, e.g. 10m, 1h, 24h
    /// (default 10m; never less than 2m in effect). Pods inside need
    /// none: the operator waits until each serves what its Secret holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub ca_rotation_overlap: Option<String>,
}

/// The S3 endpoint of a cluster's gateway. The index is embedded (one file
/// on a PersistentVolumeClaim), so one gateway pod serves it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("has(self.indexStorageClassName) == has(oldSelf.indexStorageClassName) && (!has(self.indexStorageClassName) || self.indexStorageClassName == oldSelf.indexStorageClassName)").message("indexStorageClassName is fixed once the index claim exists (a claim's class cannot change)").field_path(".indexStorageClassName"))]
#[x_kube(validation = Rule::new("has(oldSelf.indexSize) ? (has(self.indexSize) && quantity(self.indexSize).compareTo(quantity(oldSelf.indexSize)) >= 0) : (!has(self.indexSize) || quantity(self.indexSize).compareTo(quantity('1Gi')) >= 0)").message("indexSize can grow (where the class allows expansion) but never shrink: a claim cannot be made smaller").field_path(".indexSize"))]
#[x_kube(validation = Rule::new("!has(self.replicas) || self.replicas <= 1 || has(self.postgresSecret)").message("several gateway replicas need the index in PostgreSQL (postgresSecret): the embedded index has one writer").field_path(".replicas"))]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    /// Serve S3 (default: true when the section is present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Size of the index's PersistentVolumeClaim (default 1Gi); it can
    /// grow, never shrink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub index_size: Option<String>,
    /// Storage class of the index's claim (default: the cluster's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_storage_class_name: Option<String>,
    /// A Secret holding the access keys: `accessKey` and `secretKey` (one
    /// key) and/or `credentials` (an AWS credentials file, every profile
    /// a further key). Edits take effect within a minute or two, without
    /// a restart (default: the operator creates NAME-s3-credentials with
    /// new keys; `credentials` may be added to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub credentials_secret: Option<String>,
    /// A Secret whose key `url` is a PostgreSQL URL
    /// (postgresql://USER:PASSWORD@HOST:PORT/DB) to keep the index in,
    /// instead of the index claim; needed for more than one replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub postgres_secret: Option<String>,
    /// Gateway pods (default 1; more only with postgresSecret). Older
    /// spelling of gateway.replicas; when both are set they must agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: Option<u16>,
    /// Serve virtual-hosted-style requests (BUCKET.DOMAIN) besides path style.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Seconds a blob no key or upload refers to any more is kept (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31536000))]
    pub collect_after_seconds: Option<u64>,
    /// Seconds after which an unfinished multipart upload that received
    /// no part meanwhile is aborted (default 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 31536000))]
    pub upload_max_age_seconds: Option<u64>,
}

impl StorageClusterSpec {
    /// Whether node pods and gateways serve TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls.as_ref().and_then(|t| t.enabled).unwrap_or(false)
    }

    /// The scheme of the node pods', the gateway's and S3's URLs.
    pub fn url_scheme(&self) -> &'static str {
        if self.tls_enabled() {
            "https"
        } else {
            "http"
        }
    }

    /// The Secret of the user's own the gateway serves, when the spec
    /// names one.
    pub fn gateway_secret(&self) -> Option<&str> {
        self.tls.as_ref().and_then(|t| t.gateway_secret.as_deref())
    }

    /// How long a new CA is trusted before it signs during a rotation.
    pub fn ca_rotation_overlap(&self) -> std::time::Duration {
        self.tls
            .as_ref()
            .and_then(|t| t.ca_rotation_overlap.as_deref())
            .and_then(|text| super::lifecycle::parse_duration(text).ok())
            .unwrap_or(super::ca_rotation::DEFAULT_OVERLAP)
    }

    /// The further names the gateway's certificate covers.
    pub fn gateway_names(&self) -> &[String] {
        self.tls
            .as_ref()
            .and_then(|t| t.gateway_names.as_deref())
            .unwrap_or_default()
    }
}

impl S3Spec {
    /// Whether S3 is served.
    pub fn is_enabled(&self) -> bool {
        self.enabled != Some(false)
    }
}

/// A node pod's volume: a PersistentVolumeClaim of `size` (and
/// `storageClassName`), or an emptyDir when `ephemeral` (tests only: data
/// dies with the pod).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("has(self.size) || (has(self.ephemeral) && self.ephemeral)").message("storage needs a size (a PersistentVolumeClaim per node pod), or ephemeral: true"))]
#[x_kube(validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)").message("storageClassName is fixed once the claims exist (a claim's class cannot change)").field_path(".storageClassName"))]
#[x_kube(validation = Rule::new("!has(oldSelf.size) || (has(self.size) && quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0)").message("size can grow (where the class allows expansion) but never shrink: a claim cannot be made smaller").field_path(".size"))]
#[x_kube(validation = Rule::new("(has(self.ephemeral) && self.ephemeral) == (has(oldSelf.ephemeral) && oldSelf.ephemeral)").message("ephemeral is fixed: switching between emptyDir and claims would take every node pod's data at once").field_path(".ephemeral"))]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each node pod's PersistentVolumeClaim, e.g. 200Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub size: Option<String>,
    /// StorageClass of the claims (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Use an emptyDir instead of a claim; data is lost with the pod.
    /// Fixed once the cluster exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<bool>,
    /// What becomes of the claims (the nodes' data and the S3 index) when
    /// the StorageCluster is deleted: Retain (the default: they stay, and
    /// a StorageCluster of the same name and shards takes them up again)
    /// or Delete (they go with it, and so does every blob).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_deleted: Option<ClaimRetention>,
}

/// What becomes of a cluster's claims when it is deleted.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum ClaimRetention {
    /// The claims stay (delete them by hand to free the volumes).
    #[default]
    Retain,
    /// The claims are deleted with the cluster.
    Delete,
}

/// Spreading of node pods over failure domains.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Node label whose values are failure domains to spread across
    /// (default topology.kubernetes.io/zone); at most f shards per domain
    /// when there are enough domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_key: Option<String>,
    /// Only schedule node pods on Kubernetes nodes with these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
}

/// When and how fast lost shards are rebuilt.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RepairSpec {
    /// How long a node pod may stay gone before its shards move to other
    /// nodes and are rebuilt there, e.g. 5m, 90s, 1h (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub grace_period: Option<String>,
    /// Repairs in flight at most (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_concurrent: Option<u16>,
}

/// What the operator observed of a StorageCluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StorageClusterStatus {
    /// Pending (being created, until first Ready), Ready, Degraded or
    /// Failed (the spec is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Ready, Degraded, Progressing and Synced, with reasons and messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Node pods ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_nodes: Option<u16>,
    /// Shards that may be lost or lie, f.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_tolerance: Option<u16>,
    /// What the cluster survives at once without losing a blob, for
    /// people: e.g. "3 shards, 3 hosts, 1 zone".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerates: Option<String>,
    /// Whole Kubernetes nodes (hosts) that may be lost at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerated_host_losses: Option<u16>,
    /// Whole failure domains (per placement.topologyKey) that may be lost at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerated_domain_losses: Option<u16>,
    /// The S3 endpoint inside the cluster, when S3 is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    /// Which node pod holds which shard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard_assignment: Vec<ShardAssignment>,
    /// Node pods not ready, and since when; one gone longer than
    /// repair.gracePeriod holds no shards until it is ready again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable_nodes: Vec<UnavailableNode>,
    /// Node pods that run (and may be Ready) but whose API did not answer
    /// the operator within the node deadline: stopped, hung or cut off.
    /// Reads and writes pass them over; their shards are repaired once they
    /// answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_answering_nodes: Vec<String>,
    /// Node pods beyond a lowered spec.nodes that still own shards: they
    /// keep serving until their shards have moved to the other node pods
    /// (a few at a time, each batch once the last is rebuilt), then they
    /// are deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retiring_nodes: Vec<String>,
    /// Blobs the node inventories show, by health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs: Option<BlobCounts>,
    /// Ids of Lost blobs (fewer than p shards hold their pairs: they cannot
    /// be read), the first 50 in id order; `blobs.lost` counts them all.
    /// Said while every node pod is ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost_blobs: Vec<String>,
    /// With S3: the objects (`bucket/key`) whose bytes are in Lost blobs,
    /// the first 100 in bucket and key order, from the gateway's index
    /// (asked once per set of Lost blobs, while every shard's node
    /// answers). They cannot be read; store them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost_objects: Vec<String>,
    /// Repairs in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repairs_in_flight: Option<u32>,
    /// Node pods whose last repair failed: how many failed in a row since
    /// one on that node last completed, and why the last did. Repairs are
    /// retried; the node, the log and the Event RepairFailing say more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing_repairs: Vec<FailingRepairs>,
    /// Gateway pods available, of those the spec asks for: at 0 clients
    /// can neither store nor read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateways_available: Option<u16>,
    /// A rotation of the cluster's CA in progress (the annotation
    /// redstuff.dev/rotate-ca, or a CA expiring within a year): its step,
    /// since when, the earliest the next step is taken and what it waits
    /// for. Absent when no rotation runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_rotation: Option<CaRotationStatus>,
}

/// Where a rotation of the cluster's CA is.
// Its fields are written even when empty: the status is a merge patch, in
// which an omitted field would keep its old value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CaRotationStatus {
    /// `TrustingNewCa` (step 1 of 3: the new CA is trusted beside the
    /// current one, which still signs) or `NewCaSigning` (step 2: the new
    /// CA signs, the previous one is still trusted); step 3 ends the
    /// rotation.
    pub step: String,
    /// When the step began (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    /// The earliest the next step is taken (RFC 3339): the step's
    /// minimum time, and before the new CA signs spec.tls.caRotationOverlap.
    #[serde(default)]
    pub next_step_after: Option<String>,
    /// What the next step waits for: pods not yet serving their renewed
    /// certificate, serving Secrets not yet written for this step.
    #[serde(default)]
    pub waiting_for: Vec<String>,
}

/// Repairs on one node pod that failed since its last complete one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailingRepairs {
    /// The node pod rebuilding the pairs.
    pub node: String,
    /// Repairs on it that failed in a row.
    pub failures: u64,
    /// The blob of the last.
    pub blob: String,
    /// Why the last failed.
    pub reason: String,
    /// When the last failed (RFC 3339).
    pub last_failure: String,
}

/// A node pod that is not ready.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UnavailableNode {
    /// The node pod's name.
    pub name: String,
    /// When it stopped being ready, or its deletion was asked for (RFC 3339).
    pub since: String,
    /// Why, as far as Kubernetes or the operator can tell: e.g.
    /// "Unschedulable: 0/3 nodes are available: ...", "ImagePullBackOff:
    /// ...", "VolumeLost: ...".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Blobs by health.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BlobCounts {
    /// Every shard holds a valid pair.
    pub healthy: u64,
    /// Up to f shards miss their pair.
    pub degraded: u64,
    /// More than f shards miss their pair.
    pub at_risk: u64,
    /// Unreadable: fewer than p shards hold pairs.
    pub lost: u64,
}

/// One shard and the node pod that holds it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShardAssignment {
    /// The shard.
    pub shard: u16,
    /// The node pod's name.
    pub node: String,
}

/// A blob stored in a StorageCluster. Deleting it removes its slivers from
/// every node.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "redstuff.dev",
    version = "v1alpha1",
    kind = "Blob",
    namespaced,
    status = "BlobStatus",
    derive = "PartialEq",
    shortname = "rsb",
    category = "redstuff",
    cel,
    doc = "A blob kept in a StorageCluster, from an upload or from a source the operator ingests.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Size", type_ = "string", json_path = ".status.sizeText"),
    printcolumn(name = "Health", type_ = "string", json_path = ".status.health"),
    printcolumn(name = "Shards", type_ = "string", json_path = ".status.shards"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.cluster == oldSelf.cluster").message("cluster is fixed: a blob cannot move between clusters").field_path(".cluster"))]
#[x_kube(validation = Rule::new("self.source == oldSelf.source").message("source is fixed: create a new Blob for other bytes").field_path(".source"))]
#[serde(rename_all = "camelCase")]
pub struct BlobSpec {
    /// The StorageCluster (same namespace) that holds the blob.
    #[schemars(length(min = 1, max = 253))]
    pub cluster: String,
    /// Where the bytes come from: exactly one of upload, url, configMapKey, secretKey.
    pub source: BlobSource,
}

/// Exactly one source of a blob's bytes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("[has(self.upload), has(self.url), has(self.configMapKey), has(self.secretKey)].filter(x, x).size() == 1").message("exactly one source is needed: upload, url, configMapKey or secretKey"))]
#[serde(rename_all = "camelCase")]
pub struct BlobSource {
    /// Bytes uploaded through the gateway, which records the blob id here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadSource>,
    /// An http(s) URL the operator downloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<UrlSource>,
    /// A key of a ConfigMap in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key: Option<KeySource>,
    /// A key of a Secret in the same namespace; the Secret must carry the
    /// label `redstuff.dev/blob-source: "true"` (its bytes become readable
    /// by every holder of the gateway's user token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<KeySource>,
}

/// An upload recorded by the gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UploadSource {
    /// The blob id the gateway returned (43 characters of URL-safe base64).
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{43}$"))]
    pub blob_id: String,
}

/// A URL to download, with an optional expected digest.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UrlSource {
    /// An http:// or https:// URL. The operator refuses one leading to a
    /// loopback or link-local address (named, resolved or redirected to)
    /// unless it runs with --blob-sources-may-reach.
    #[schemars(regex(pattern = r"^https?://[^\s]+$"))]
    pub url: String,
    /// Expected SHA-256 of the bytes, 64 lowercase hex digits; a download
    /// that does not match is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
}

/// One key of a ConfigMap or Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeySource {
    /// The object's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The health of a blob.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobHealth {
    /// Every shard holds a valid sliver pair.
    Healthy,
    /// Up to f shards miss their pair.
    Degraded,
    /// Missing pairs are being rebuilt.
    Repairing,
    /// More than f shards miss their pair: one more loss away from Lost.
    AtRisk,
    /// Fewer than p shards hold pairs: the blob cannot be read.
    Lost,
    /// Deleted through the gateway or S3, not through this Blob: a
    /// tombstone stands for it and nothing of it is held (stored again,
    /// it is Healthy again).
    Deleted,
}

/// Encoding parameters of a blob.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EncodingStatus {
    /// Shards n.
    pub shards: u16,
    /// f.
    pub fault_tolerance: u16,
    /// Primary source symbols p.
    pub p: u16,
    /// Secondary source symbols q.
    pub q: u16,
    /// Segments the blob was cut into (each encoded on its own).
    pub segments: u32,
}

/// What the operator observed of a Blob.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BlobStatus {
    /// The blob id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_id: Option<String>,
    /// Length in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Length for people, e.g. 13.5 GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_text: Option<String>,
    /// Encoding parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<EncodingStatus>,
    /// Shards holding valid sliver pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards_valid: Option<u16>,
    /// Shards holding valid pairs over all shards, e.g. 8/10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<String>,
    /// Healthy, Degraded, Repairing, AtRisk, Lost or Deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<BlobHealth>,
    /// Ingested and Healthy, with reasons and messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the last repair of this blob completed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_repair: Option<String>,
    /// After a failed ingest: when the operator fetches the source again
    /// (RFC 3339); nothing is fetched before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_ingest_attempt: Option<String>,
}
