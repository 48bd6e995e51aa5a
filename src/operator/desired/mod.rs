//! What a StorageCluster should consist of, as a pure function of its spec
//! and the shard assignment: the objects the controller applies with
//! server-side apply. No I/O here; the controller is the thin shell.
//!
//! Node pods and their claims are owned one by one, not through a
//! StatefulSet: the operator must decide per pod whether a claim that is
//! gone is recreated empty (and its pairs rebuilt), when a pod that stays
//! away loses its shards to other pods after the grace period, and exactly
//! when a pod that came back needs repair; a StatefulSet would make those
//! decisions for it, differently.

mod access;
pub mod claim_size;
pub mod gateway_replicas;
pub mod gateway_sizing;
pub mod node_scrub;
pub mod s3;
pub mod tls;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, LocalObjectReference, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, Secret, SecurityContext,
    Service, ServicePort, ServiceSpec, TopologySpreadConstraint, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

use super::crd::{ClaimRetention, StorageCluster};
use super::rollout::{spec_hash, SPEC_HASH_ANNOTATION};
use crate::fleet::{Assignment, FleetMap, MapNode};
use crate::node::ShardsFile;
pub use access::{
    cluster_token_secret, placeholder_credentials, user_token_secret, Credentials,
    CLUSTER_TOKEN_DIR, TOKEN_KEY, USER_TOKENS_DIR,
};
use access::{node_network_policy, token_mount, token_secret, token_volume};

/// Port of the node API inside a node pod.
pub const NODE_PORT: i32 = 7800;
/// Port of a node pod's metrics and probes (no token needed).
pub const NODE_METRICS_PORT: i32 = 7801;
/// Port of the gateway.
pub const GATEWAY_PORT: i32 = 7700;
/// Port of a gateway pod's metrics and probes (plain HTTP, no token needed).
pub const GATEWAY_METRICS_PORT: i32 = 7701;
/// Default topology key for spreading node pods.
pub const DEFAULT_TOPOLOGY_KEY: &str = "topology.kubernetes.io/zone";
/// The label every Kubernetes node carries with its own name.
pub const HOSTNAME_KEY: &str = "kubernetes.io/hostname";

/// The node label whose values are the cluster's failure domains.
pub fn topology_key(cluster: &StorageCluster) -> String {
    cluster
        .spec
        .placement
        .as_ref()
        .and_then(|p| p.topology_key.clone())
        .unwrap_or_else(|| DEFAULT_TOPOLOGY_KEY.into())
}

/// Marks a node pod with the hash of its spec, so that a pod created
/// from an older spec is recognised and rolled (`rollout`).
fn with_spec_hash(mut pod: Pod) -> Pod {
    let hash = spec_hash(pod.spec.as_ref().expect("node pods have a spec"));
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(SPEC_HASH_ANNOTATION.into(), hash);
    pod
}

/// Node pods spread evenly over hosts and over the failure domains of
/// `topology_key`, as far as the scheduler can (never unschedulable).
fn spread_constraints(
    cluster_name: &str,
    component: &str,
    topology_key: &str,
) -> Vec<TopologySpreadConstraint> {
    let mut keys = vec![HOSTNAME_KEY];
    if topology_key != HOSTNAME_KEY {
        keys.push(topology_key);
    }
    keys.into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector(cluster_name, component)),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// Everything a cluster consists of.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredObjects {
    /// Headless Service giving each node pod a stable DNS name.
    pub node_service: Service,
    /// One Pod per node.
    pub node_pods: Vec<Pod>,
    /// One claim per node, unless storage is ephemeral.
    pub node_claims: Vec<PersistentVolumeClaim>,
    /// Shard ownership per node (`node-<i>.json`) and the fleet map (`fleet.json`).
    pub shards_config: ConfigMap,
    /// The cluster token: nodes require it, the gateway and operator send it.
    pub node_token: Secret,
    /// The user tokens the gateway accepts.
    pub gateway_token: Secret,
    /// Node pods admit API calls from the gateway, their peers and the operator only.
    pub node_network_policy: k8s_openapi::api::networking::v1::NetworkPolicy,
    /// The gateway Deployment.
    pub gateway: Deployment,
    /// The gateway Service.
    pub gateway_service: Service,
    /// The S3 index's claim, when S3 is enabled.
    pub s3_index_claim: Option<PersistentVolumeClaim>,
    /// The S3 access key's Secret, when the operator keeps it.
    pub s3_credentials: Option<Secret>,
    /// With TLS: the CA's Secret (the operator's only).
    pub ca_secret: Option<Secret>,
    /// With TLS: the nodes' serving certificate and the CA's certificate.
    pub node_tls_secret: Option<Secret>,
    /// With TLS: the gateway's serving certificate and the CA's certificate.
    pub gateway_tls_secret: Option<Secret>,
    /// At most one node pod voluntarily down at a time.
    pub disruption_budget: PodDisruptionBudget,
    /// At most one gateway pod voluntarily down at a time.
    pub gateway_disruption_budget: PodDisruptionBudget,
}

/// Name of node pod `index` of cluster `cluster`.
pub fn node_pod_name(cluster: &str, index: usize) -> String {
    format!("{cluster}-node-{index}")
}

/// Name of the gateway Deployment, Service and disruption budget of `cluster`.
pub fn gateway_name(cluster: &str) -> String {
    format!("{cluster}-gateway")
}

/// Name of node `index`'s claim of `cluster`.
pub fn node_claim_name(cluster: &str, index: usize) -> String {
    format!("{cluster}-data-{index}")
}

/// Labels common to every object of a cluster, plus the component.
pub fn labels(cluster: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "redstuff".to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            cluster.to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
    ])
}

/// The managed-by label of every object the operator makes.
pub const MANAGED_BY: &str = "redstuff-operator";

/// The labels that select a cluster's pods of `component` for Services,
/// disruption budgets and network policies: with the name label, so pods
/// another application labels with the same instance (Helm does) and
/// component are never taken for the cluster's.
pub(super) fn pod_selector(cluster: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector(cluster, component);
    labels.insert("app.kubernetes.io/name".to_string(), "redstuff".to_string());
    labels
}

/// The labels the gateway Deployment's selector and the pods' spread
/// constraints were made with, kept as they are: a Deployment's selector
/// cannot change, and a changed pod spec would roll every node pod.
pub(super) fn selector(cluster: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/instance".to_string(),
            cluster.to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
    ])
}

fn owner(cluster: &StorageCluster) -> OwnerReference {
    cluster
        .controller_owner_ref(&())
        .expect("a StorageCluster read from the API has a name and uid")
}

/// The metadata of a claim of `cluster`: owned by it (deleted with it) only
/// when its `storage.whenDeleted` says Delete. The operator finds claims by
/// their labels either way.
pub(super) fn claim_meta(cluster: &StorageCluster, name: String, component: &str) -> ObjectMeta {
    let mut metadata = meta(cluster, name, component);
    if cluster.spec.storage.when_deleted.unwrap_or_default() == ClaimRetention::Retain {
        metadata.owner_references = None;
    }
    metadata
}

pub(super) fn meta(cluster: &StorageCluster, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.metadata.namespace.clone(),
        labels: Some(labels(&cluster.name_any_or_default(), component)),
        owner_references: Some(vec![owner(cluster)]),
        ..ObjectMeta::default()
    }
}

trait NameOrDefault {
    fn name_any_or_default(&self) -> String;
}

impl NameOrDefault for StorageCluster {
    fn name_any_or_default(&self) -> String {
        self.metadata.name.clone().unwrap_or_default()
    }
}

/// The URL of node pod `index` inside the cluster.
pub fn node_url(cluster: &StorageCluster, index: usize) -> String {
    let name = cluster.name_any_or_default();
    let namespace = cluster
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let scheme = cluster.spec.url_scheme();
    format!(
        "{scheme}://{}.{name}-nodes.{namespace}.svc:{NODE_PORT}",
        node_pod_name(&name, index)
    )
}

fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        fs_group: Some(65532),
        // Changing ownership of a large volume on every start would delay
        // the node for minutes: only when its root is not ours yet.
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

fn http_probe(path: &str, port: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    }
}

/// A node opening a large store (counting its files) may take a while
/// before it listens: up to five minutes before liveness applies.
fn startup_probe(path: &str, port: i32) -> Probe {
    Probe {
        failure_threshold: Some(60),
        ..http_probe(path, port)
    }
}

/// What the objects of every cluster take from the operator making them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSettings {
    /// Image of node and gateway pods when a spec names none.
    pub default_image: String,
    /// The namespace the operator's pods run in: node pods take API calls
    /// from operator pods there only.
    pub namespace: String,
    /// Secrets node and gateway pods pull their image with (each must
    /// exist in the StorageCluster's namespace).
    pub image_pull_secrets: Vec<String>,
    /// The pull policy of node and gateway containers (Kubernetes'
    /// default when unset).
    pub image_pull_policy: Option<String>,
}

impl OperatorSettings {
    /// Settings with `default_image`, the operator in `namespace`.
    pub fn new(default_image: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            default_image: default_image.into(),
            namespace: namespace.into(),
            image_pull_secrets: Vec::new(),
            image_pull_policy: None,
        }
    }

    /// The pods' `imagePullSecrets`: none (the field left out, so pod
    /// specs made before it existed keep their hash) unless some are set.
    fn pull_secrets(&self) -> Option<Vec<LocalObjectReference>> {
        (!self.image_pull_secrets.is_empty()).then(|| {
            self.image_pull_secrets
                .iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect()
        })
    }
}

/// The objects of `cluster` with `assignment` over its first `nodes` node
/// pods (`spec.nodes`, or more while a lowered spec retires some:
/// `operator::retiring`), made by `operator`, with the cluster's
/// `credentials`.
pub fn desired_objects(
    cluster: &StorageCluster,
    assignment: &Assignment,
    nodes: usize,
    operator: &OperatorSettings,
    credentials: &Credentials,
) -> DesiredObjects {
    let name = cluster.name_any_or_default();
    let spec = &cluster.spec;
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| operator.default_image.clone());
    let ephemeral = spec.storage.ephemeral.unwrap_or(false) || spec.storage.size.is_none();
    // Checked by `validate_spec` before anything is made.
    let scrub = node_scrub::scrub_args(spec.scrub.as_ref()).unwrap_or_default();
    let topology_key = topology_key(cluster);

    let shards_of = |pod: &str| -> std::collections::BTreeSet<u16> {
        assignment
            .iter()
            .filter(|(_, o)| o.as_str() == pod)
            .map(|(s, _)| *s)
            .collect()
    };
    let mut config_data = BTreeMap::new();
    let mut map_nodes = Vec::new();
    for index in 0..nodes {
        let pod = node_pod_name(&name, index);
        let shards = shards_of(&pod);
        config_data.insert(
            format!("{pod}.json"),
            serde_json::to_string(&ShardsFile {
                shards: shards.clone(),
            })
            .expect("serializable"),
        );
        map_nodes.push(MapNode {
            name: pod,
            url: node_url(cluster, index),
            shards,
        });
    }
    let map = FleetMap {
        shards: spec.shards,
        segment_size: crate::codec::DEFAULT_SEGMENT_SIZE,
        nodes: map_nodes,
    };
    config_data.insert(
        "fleet.json".into(),
        serde_json::to_string_pretty(&map).expect("serializable"),
    );

    let node_pods = (0..nodes)
        .map(|index| {
            let pod = node_pod_name(&name, index);
            let mut pod_labels = labels(&name, "node");
            pod_labels.insert("redstuff.dev/node-index".into(), index.to_string());
            let data_volume = if ephemeral {
                Volume {
                    name: "data".into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Volume::default()
                }
            } else {
                Volume {
                    name: "data".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: node_claim_name(&name, index),
                        read_only: None,
                    }),
                    ..Volume::default()
                }
            };
            Pod {
                metadata: ObjectMeta {
                    labels: Some(pod_labels),
                    ..meta(cluster, pod.clone(), "node")
                },
                spec: Some(PodSpec {
                    hostname: Some(pod.clone()),
                    subdomain: Some(format!("{name}-nodes")),
                    restart_policy: Some("Always".into()),
                    security_context: Some(pod_security_context()),
                    // Node and gateway pods never call the Kubernetes API.
                    automount_service_account_token: Some(false),
                    image_pull_secrets: operator.pull_secrets(),
                    node_selector: spec
                        .placement
                        .as_ref()
                        .and_then(|p| p.node_selector.clone()),
                    topology_spread_constraints: Some(spread_constraints(
                        &name,
                        "node",
                        &topology_key,
                    )),
                    containers: vec![Container {
                        name: "node".into(),
                        image: Some(image.clone()),
                        image_pull_policy: operator.image_pull_policy.clone(),
                        args: Some(
                            vec![
                                "node".into(),
                                "--name".into(),
                                pod.clone(),
                                "--data-dir".into(),
                                "/data".into(),
                                "--listen".into(),
                                format!("[::]:{NODE_PORT}"),
                                "--metrics-listen".into(),
                                format!("[::]:{NODE_METRICS_PORT}"),
                                "--shards-file".into(),
                                format!("/etc/redstuff/shards/{pod}.json"),
                                "--fleet".into(),
                                "/etc/redstuff/shards/fleet.json".into(),
                                "--token-file".into(),
                                format!("{CLUSTER_TOKEN_DIR}/{TOKEN_KEY}"),
                            ]
                            .into_iter()
                            .chain(scrub.iter().cloned())
                            .collect(),
                        ),
                        env: Some(vec![EnvVar {
                            name: "POD_NAMESPACE".into(),
                            value_from: Some(EnvVarSource {
                                field_ref: Some(ObjectFieldSelector {
                                    field_path: "metadata.namespace".into(),
                                    ..ObjectFieldSelector::default()
                                }),
                                ..EnvVarSource::default()
                            }),
                            ..EnvVar::default()
                        }]),
                        ports: Some(vec![
                            ContainerPort {
                                name: Some("api".into()),
                                container_port: NODE_PORT,
                                ..ContainerPort::default()
                            },
                            ContainerPort {
                                name: Some("metrics".into()),
                                container_port: NODE_METRICS_PORT,
                                ..ContainerPort::default()
                            },
                        ]),
                        readiness_probe: Some(http_probe("/readyz", NODE_METRICS_PORT)),
                        liveness_probe: Some(http_probe("/healthz", NODE_METRICS_PORT)),
                        startup_probe: Some(startup_probe("/healthz", NODE_METRICS_PORT)),
                        resources: spec.resources.clone(),
                        security_context: Some(restricted_security_context()),
                        volume_mounts: Some(vec![
                            VolumeMount {
                                name: "data".into(),
                                mount_path: "/data".into(),
                                ..VolumeMount::default()
                            },
                            VolumeMount {
                                name: "shards".into(),
                                mount_path: "/etc/redstuff/shards".into(),
                                read_only: Some(true),
                                ..VolumeMount::default()
                            },
                            token_mount("cluster-token", CLUSTER_TOKEN_DIR),
                        ]),
                        ..Container::default()
                    }],
                    volumes: Some(vec![
                        data_volume,
                        Volume {
                            name: "shards".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: format!("{name}-shards"),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        token_volume("cluster-token", cluster_token_secret(&name)),
                    ]),
                    ..PodSpec::default()
                }),
                ..Pod::default()
            }
        })
        .map(|mut pod| {
            if credentials.tls.is_some() {
                tls::add_to_node_pod(pod.spec.as_mut().expect("built above"), &name);
            }
            pod
        })
        .map(with_spec_hash)
        .collect();

    let node_claims = if ephemeral {
        Vec::new()
    } else {
        (0..nodes)
            .map(|index| PersistentVolumeClaim {
                metadata: ObjectMeta {
                    annotations: Some(BTreeMap::from([
                        (
                            super::claimed_shards::SHARDS_ANNOTATION.to_string(),
                            super::claimed_shards::annotation(shards_of(&node_pod_name(
                                &name, index,
                            ))),
                        ),
                        (
                            super::claimed_shards::CLUSTER_SHARDS_ANNOTATION.to_string(),
                            spec.shards.to_string(),
                        ),
                    ])),
                    ..claim_meta(cluster, node_claim_name(&name, index), "node")
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: spec.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(spec.storage.size.clone().unwrap_or_default()),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            })
            .collect()
    };

    let node_service = Service {
        metadata: meta(cluster, format!("{name}-nodes"), "node"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(pod_selector(&name, "node")),
            ports: Some(vec![ServicePort {
                name: Some("api".into()),
                port: NODE_PORT,
                target_port: Some(IntOrString::String("api".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let gateway_labels = labels(&name, "gateway");
    // Checked by `validate_spec` before anything is made.
    let gateway_replicas = gateway_replicas::gateway_replicas(spec).unwrap_or(1);
    // Checked by `validate_spec` before anything is made.
    let sizing = gateway_sizing::gateway_sizing(spec.gateway.as_ref()).unwrap_or_default();
    // The API port's name says its protocol (service meshes read it).
    let gateway_port_name = if credentials.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut gateway = Deployment {
        metadata: meta(cluster, gateway_name(&name), "gateway"),
        spec: DeploymentSpec {
            replicas: Some(i32::from(gateway_replicas)),
            // The defaults, named: applied, the operator owns them, so a
            // switch to Recreate (S3 with the embedded index) drops them;
            // left to the API server's defaulting nobody would, and it
            // refuses a Recreate strategy that keeps a rollingUpdate.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::String("25%".into())),
                }),
            }),
            selector: LabelSelector {
                match_labels: Some(selector(&name, "gateway")),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(gateway_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    security_context: Some(pod_security_context()),
                    automount_service_account_token: Some(false),
                    image_pull_secrets: operator.pull_secrets(),
                    // Several pods go to different Kubernetes nodes where
                    // they can (one pod's template stays as it was).
                    topology_spread_constraints: (gateway_replicas > 1)
                        .then(|| spread_constraints(&name, "gateway", HOSTNAME_KEY)),
                    containers: vec![Container {
                        name: "gateway".into(),
                        image: Some(image.clone()),
                        image_pull_policy: operator.image_pull_policy.clone(),
                        args: Some(
                            vec![
                                "gateway".into(),
                                "--fleet".into(),
                                "/etc/redstuff/fleet/fleet.json".into(),
                                "--listen".into(),
                                format!("[::]:{GATEWAY_PORT}"),
                                "--spool-dir".into(),
                                "/spool".into(),
                                "--cluster-token-file".into(),
                                format!("{CLUSTER_TOKEN_DIR}/{TOKEN_KEY}"),
                                "--user-tokens-file".into(),
                                format!("{USER_TOKENS_DIR}/{TOKEN_KEY}"),
                                "--metrics-listen".into(),
                                format!("[::]:{GATEWAY_METRICS_PORT}"),
                            ]
                            .into_iter()
                            .chain(sizing.args.iter().cloned())
                            .collect(),
                        ),
                        resources: sizing.resources.clone(),
                        ports: Some(vec![
                            ContainerPort {
                                name: Some(gateway_port_name.into()),
                                container_port: GATEWAY_PORT,
                                ..ContainerPort::default()
                            },
                            ContainerPort {
                                name: Some("metrics".into()),
                                container_port: GATEWAY_METRICS_PORT,
                                ..ContainerPort::default()
                            },
                        ]),
                        readiness_probe: Some(http_probe("/readyz", GATEWAY_METRICS_PORT)),
                        liveness_probe: Some(http_probe("/healthz", GATEWAY_METRICS_PORT)),
                        startup_probe: Some(startup_probe("/healthz", GATEWAY_METRICS_PORT)),
                        security_context: Some(restricted_security_context()),
                        volume_mounts: Some(vec![
                            VolumeMount {
                                name: "fleet".into(),
                                mount_path: "/etc/redstuff/fleet".into(),
                                read_only: Some(true),
                                ..VolumeMount::default()
                            },
                            VolumeMount {
                                name: "spool".into(),
                                mount_path: "/spool".into(),
                                ..VolumeMount::default()
                            },
                            token_mount("cluster-token", CLUSTER_TOKEN_DIR),
                            token_mount("user-tokens", USER_TOKENS_DIR),
                        ]),
                        ..Container::default()
                    }],
                    volumes: Some(vec![
                        Volume {
                            name: "fleet".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: format!("{name}-shards"),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "spool".into(),
                            empty_dir: Some(sizing.spool.clone()),
                            ..Volume::default()
                        },
                        token_volume("cluster-token", cluster_token_secret(&name)),
                        token_volume("user-tokens", user_token_secret(&name)),
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    };
    let mut gateway_service = Service {
        metadata: meta(cluster, gateway_name(&name), "gateway"),
        spec: Some(ServiceSpec {
            selector: Some(pod_selector(&name, "gateway")),
            ports: Some(vec![ServicePort {
                name: Some(gateway_port_name.into()),
                port: GATEWAY_PORT,
                target_port: Some(IntOrString::String(gateway_port_name.into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let (mut ca_secret, mut node_tls_secret, mut gateway_tls_secret) = (None, None, None);
    if let Some(material) = &credentials.tls {
        let template = &mut gateway.spec.template;
        tls::add_to_gateway_pod(
            template.spec.as_mut().expect("built above"),
            &name,
            spec.gateway_secret(),
        );
        ca_secret = Some(tls::ca_secret(cluster, &name, &material.cas));
        node_tls_secret = Some(tls::node_tls_secret(cluster, &name, material));
        gateway_tls_secret = tls::gateway_tls_secret(cluster, &name, material);
    }
    let (mut s3_index_claim, mut s3_credentials) = (None, None);
    if let Some(settings) = s3::enabled(cluster) {
        s3::add_to_gateway(&name, settings, &mut gateway, &mut gateway_service);
        s3_index_claim = s3::index_claim(cluster, &name, settings);
        if settings.credentials_secret.is_none() {
            s3_credentials = credentials
                .s3
                .as_ref()
                .map(|keys| s3::credentials_secret(cluster, &name, keys));
        }
    }
    let disruption_budget = PodDisruptionBudget {
        metadata: meta(cluster, format!("{name}-nodes"), "node"),
        spec: Some(PodDisruptionBudgetSpec {
            // An integer minAvailable, not maxUnavailable: the disruption
            // controller resolves maxUnavailable through the pods' owner's
            // /scale subresource, which a StorageCluster does not have (the
            // budget would be SyncFailed and refuse every eviction).
            min_available: Some(IntOrString::Int(nodes.saturating_sub(1) as i32)),
            selector: Some(LabelSelector {
                match_labels: Some(pod_selector(&name, "node")),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    // The gateway's owner, a ReplicaSet, has /scale: maxUnavailable works.
    let gateway_disruption_budget = PodDisruptionBudget {
        metadata: meta(cluster, gateway_name(&name), "gateway"),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(pod_selector(&name, "gateway")),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    let node_token = token_secret(cluster, cluster_token_secret(&name), &credentials.cluster);
    let gateway_token = token_secret(cluster, user_token_secret(&name), &credentials.users);
    let node_network_policy = node_network_policy(cluster, &name, &operator.namespace);
    let shards_config = ConfigMap {
        metadata: meta(cluster, format!("{name}-shards"), "node"),
        data: Some(config_data),
        ..ConfigMap::default()
    };
    DesiredObjects {
        node_service,
        node_pods,
        node_claims,
        shards_config,
        node_token,
        gateway_token,
        node_network_policy,
        gateway,
        gateway_service,
        s3_index_claim,
        s3_credentials,
        ca_secret,
        node_tls_secret,
        gateway_tls_secret,
        disruption_budget,
        gateway_disruption_budget,
    }
}

#[cfg(test)]
mod tests;
