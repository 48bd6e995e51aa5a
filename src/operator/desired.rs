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

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, Secret, SecurityContext, Service, ServicePort,
    ServiceSpec, TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

use super::crd::StorageCluster;
use super::rollout::{spec_hash, SPEC_HASH_ANNOTATION};
use crate::fleet::{Assignment, FleetMap, MapNode};
use crate::node::ShardsFile;

/// Port of the node API inside a node pod.
pub const NODE_PORT: i32 = 7800;
/// Port of the gateway.
pub const GATEWAY_PORT: i32 = 7700;
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
fn spread_constraints(cluster_name: &str, topology_key: &str) -> Vec<TopologySpreadConstraint> {
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
                match_labels: Some(selector(cluster_name, "node")),
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
    /// The token nodes and gateways authenticate with.
    pub node_token: Secret,
    /// The gateway Deployment.
    pub gateway: Deployment,
    /// The gateway Service.
    pub gateway_service: Service,
    /// At most one node pod voluntarily down at a time.
    pub disruption_budget: PodDisruptionBudget,
}

/// Name of node pod `index` of cluster `cluster`.
pub fn node_pod_name(cluster: &str, index: usize) -> String {
    format!("{cluster}-node-{index}")
}

/// Name of the claim of node `index`.
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
            "redstuff-operator".to_string(),
        ),
    ])
}

fn selector(cluster: &str, component: &str) -> BTreeMap<String, String> {
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

fn meta(cluster: &StorageCluster, name: String, component: &str) -> ObjectMeta {
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
    format!(
        "http://{}.{name}-nodes.{namespace}.svc:{NODE_PORT}",
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

/// The objects of `cluster` with `assignment`, the node `image` (when the
/// spec names none) and the node `token`.
pub fn desired_objects(
    cluster: &StorageCluster,
    assignment: &Assignment,
    default_image: &str,
    token: &str,
) -> DesiredObjects {
    let name = cluster.name_any_or_default();
    let spec = &cluster.spec;
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| default_image.to_string());
    let nodes = usize::from(spec.nodes);
    let ephemeral = spec.storage.ephemeral.unwrap_or(false) || spec.storage.size.is_none();
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
                    node_selector: spec
                        .placement
                        .as_ref()
                        .and_then(|p| p.node_selector.clone()),
                    topology_spread_constraints: Some(spread_constraints(&name, &topology_key)),
                    containers: vec![Container {
                        name: "node".into(),
                        image: Some(image.clone()),
                        args: Some(vec![
                            "node".into(),
                            "--name".into(),
                            pod.clone(),
                            "--data-dir".into(),
                            "/data".into(),
                            "--listen".into(),
                            format!("0.0.0.0:{NODE_PORT}"),
                            "--shards-file".into(),
                            format!("/etc/redstuff/shards/{pod}.json"),
                        ]),
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
                        ports: Some(vec![ContainerPort {
                            name: Some("api".into()),
                            container_port: NODE_PORT,
                            ..ContainerPort::default()
                        }]),
                        readiness_probe: Some(http_probe("/readyz", NODE_PORT)),
                        liveness_probe: Some(http_probe("/healthz", NODE_PORT)),
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
                    ]),
                    ..PodSpec::default()
                }),
                ..Pod::default()
            }
        })
        .map(with_spec_hash)
        .collect();

    let node_claims = if ephemeral {
        Vec::new()
    } else {
        (0..nodes)
            .map(|index| PersistentVolumeClaim {
                metadata: meta(cluster, node_claim_name(&name, index), "node"),
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
            selector: Some(selector(&name, "node")),
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
    let gateway = Deployment {
        metadata: meta(cluster, format!("{name}-gateway"), "gateway"),
        spec: DeploymentSpec {
            replicas: Some(1),
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
                    containers: vec![Container {
                        name: "gateway".into(),
                        image: Some(image.clone()),
                        args: Some(vec![
                            "gateway".into(),
                            "--fleet".into(),
                            "/etc/redstuff/fleet/fleet.json".into(),
                            "--listen".into(),
                            format!("0.0.0.0:{GATEWAY_PORT}"),
                            "--spool-dir".into(),
                            "/spool".into(),
                        ]),
                        ports: Some(vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: GATEWAY_PORT,
                            ..ContainerPort::default()
                        }]),
                        readiness_probe: Some(http_probe("/readyz", GATEWAY_PORT)),
                        liveness_probe: Some(http_probe("/healthz", GATEWAY_PORT)),
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
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    };
    let gateway_service = Service {
        metadata: meta(cluster, format!("{name}-gateway"), "gateway"),
        spec: Some(ServiceSpec {
            selector: Some(selector(&name, "gateway")),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: GATEWAY_PORT,
                target_port: Some(IntOrString::String("http".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let disruption_budget = PodDisruptionBudget {
        metadata: meta(cluster, format!("{name}-nodes"), "node"),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(&name, "node")),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    let node_token = Secret {
        metadata: meta(cluster, format!("{name}-node-token"), "node"),
        string_data: Some(BTreeMap::from([("token".to_string(), token.to_string())])),
        ..Secret::default()
    };
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
        gateway,
        gateway_service,
        disruption_budget,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{assign, NodeSpec};
    use crate::operator::fixtures::cluster;

    fn assignment(c: &StorageCluster) -> Assignment {
        let specs: Vec<NodeSpec> = (0..usize::from(c.spec.nodes))
            .map(|i| NodeSpec {
                name: node_pod_name("media", i),
                domain: node_pod_name("media", i),
            })
            .collect();
        assign(c.spec.shards, &specs, &Assignment::new())
    }

    #[test]
    fn a_cluster_is_one_pod_and_claim_per_node_plus_services_config_gateway_and_budget() {
        let c = cluster(10, 4, Some("200Gi"));
        let objects = desired_objects(&c, &assignment(&c), "redstuff:test", "secret");
        assert_eq!(objects.node_pods.len(), 4);
        assert_eq!(objects.node_claims.len(), 4);
        let pod = &objects.node_pods[2];
        assert_eq!(pod.metadata.name.as_deref(), Some("media-node-2"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("storage"));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("StorageCluster", "media", Some(true))
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.subdomain.as_deref(), Some("media-nodes"));
        let container = &spec.containers[0];
        assert_eq!(container.image.as_deref(), Some("redstuff:test"));
        assert!(container
            .args
            .as_ref()
            .unwrap()
            .contains(&"/etc/redstuff/shards/media-node-2.json".to_string()));
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.run_as_non_root, Some(true));
        let claim_volume = spec.volumes.as_ref().unwrap()[0]
            .persistent_volume_claim
            .as_ref()
            .unwrap();
        assert_eq!(claim_volume.claim_name, "media-data-2");
        let claim = &objects.node_claims[2].spec.as_ref().unwrap();
        assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
            "200Gi"
        );
        assert_eq!(
            objects
                .node_service
                .spec
                .as_ref()
                .unwrap()
                .cluster_ip
                .as_deref(),
            Some("None")
        );
        assert_eq!(
            objects
                .disruption_budget
                .spec
                .as_ref()
                .unwrap()
                .max_unavailable,
            Some(IntOrString::Int(1))
        );
    }

    #[test]
    fn the_shards_config_gives_every_node_its_shards_and_the_gateway_the_map() {
        let c = cluster(10, 4, Some("1Gi"));
        let a = assignment(&c);
        let objects = desired_objects(&c, &a, "img", "t");
        let data = objects.shards_config.data.unwrap();
        let mut all = std::collections::BTreeSet::new();
        for i in 0..4 {
            let file: ShardsFile =
                serde_json::from_str(&data[&format!("media-node-{i}.json")]).unwrap();
            assert!((2..=3).contains(&file.shards.len()));
            all.extend(file.shards);
        }
        assert_eq!(all.len(), 10);
        let map: FleetMap = serde_json::from_str(&data["fleet.json"]).unwrap();
        assert_eq!(map.shards, 10);
        assert_eq!(
            map.nodes[1].url,
            "http://media-node-1.media-nodes.storage.svc:7800"
        );
        assert_eq!(
            map.holder(0).map(|n| n.name.as_str()),
            a.get(&0).map(String::as_str)
        );
    }

    #[test]
    fn ephemeral_storage_uses_empty_dirs_and_no_claims() {
        let mut c = cluster(4, 4, None);
        c.spec.storage.ephemeral = Some(true);
        let objects = desired_objects(&c, &assignment(&c), "img", "t");
        assert!(objects.node_claims.is_empty());
        let volume = &objects.node_pods[0]
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .as_ref()
            .unwrap()[0];
        assert!(volume.empty_dir.is_some());
    }

    fn spread_keys(c: &StorageCluster) -> Vec<String> {
        desired_objects(c, &assignment(c), "img", "t").node_pods[0]
            .spec
            .as_ref()
            .unwrap()
            .topology_spread_constraints
            .as_ref()
            .unwrap()
            .iter()
            .map(|t| t.topology_key.clone())
            .collect()
    }

    #[test]
    fn node_pods_spread_over_hosts_and_over_the_placement_domains() {
        let mut c = cluster(10, 10, Some("1Gi"));
        assert_eq!(
            spread_keys(&c),
            ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        );
        c.spec.placement = Some(crate::operator::crd::PlacementSpec {
            topology_key: Some("kubernetes.io/hostname".into()),
            node_selector: None,
        });
        assert_eq!(spread_keys(&c), ["kubernetes.io/hostname"]);
    }
}
