//! Who may talk to a cluster's node pods, and with what: the cluster token
//! (nodes require it; the gateway and the operator send it), the user
//! tokens (the gateway requires one for writes and reads), and the
//! NetworkPolicy that admits to the node API only the cluster's gateway,
//! its other node pods and the operator. Node metrics have a port of their
//! own, open to any scraper.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Secret, SecretVolumeSource, Volume, VolumeMount};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use super::{meta, pod_selector, NODE_METRICS_PORT, NODE_PORT};
use crate::operator::crd::StorageCluster;

/// Where token Secrets are mounted in node and gateway pods.
pub const CLUSTER_TOKEN_DIR: &str = "/etc/redstuff/cluster-token";
/// Where the user tokens are mounted in gateway pods.
pub const USER_TOKENS_DIR: &str = "/etc/redstuff/user-tokens";
/// The key of both Secrets: one token per line, the first is sent.
pub const TOKEN_KEY: &str = "token";

/// The tokens of a cluster, as its Secrets hold them (or new ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The cluster token file's content: nodes accept every line.
    pub cluster: String,
    /// The user tokens file's content: the gateway accepts every line.
    pub users: String,
    /// The S3 access key the operator keeps (S3 enabled, no Secret named
    /// in the spec).
    pub s3: Option<crate::s3::credentials::S3Keys>,
    /// The CA and serving certificate, when the cluster serves TLS.
    pub tls: Option<super::tls::ClusterTls>,
}

/// Credentials of placeholders, for the objects of `cluster` when what
/// matters is their names and shape (`redstuff render-cluster`, the check
/// of the names a cluster takes).
pub fn placeholder_credentials(cluster: &StorageCluster) -> Credentials {
    Credentials {
        cluster: "placeholder-cluster-token".into(),
        users: "placeholder-user-token".into(),
        s3: Some(crate::s3::credentials::S3Keys {
            access_key: "placeholder-access-key".into(),
            secret_key: "placeholder-secret-key".into(),
        }),
        tls: cluster.spec.tls_enabled().then(|| {
            let placeholder = |what: &str| super::tls::ServingPair {
                cert_pem: format!("placeholder-{what}-certificate"),
                key_pem: format!("placeholder-{what}-key"),
                not_after_unix: 0,
                names: Vec::new(),
            };
            super::tls::ClusterTls {
                cas: crate::operator::ca_rotation::CaSet::single(
                    crate::operator::ca_rotation::CaPem {
                        cert_pem: "placeholder-ca-certificate".into(),
                        key_pem: "placeholder-ca-key".into(),
                    },
                ),
                nodes: placeholder("node"),
                gateway: cluster
                    .spec
                    .gateway_secret()
                    .is_none()
                    .then(|| placeholder("gateway")),
            }
        }),
    }
}

/// Name of the cluster-token Secret of `cluster`.
pub fn cluster_token_secret(cluster: &str) -> String {
    format!("{cluster}-node-token")
}

/// Name of the user-token Secret of `cluster` (users read it to call the gateway).
pub fn user_token_secret(cluster: &str) -> String {
    format!("{cluster}-gateway-token")
}

/// A Secret holding `content` under `token`, as bytes (not stringData,
/// which server-side apply would keep re-adding as a second field).
pub(super) fn token_secret(cluster: &StorageCluster, name: String, content: &str) -> Secret {
    Secret {
        metadata: meta(cluster, name, "node"),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            ByteString(content.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// The volume of a token Secret, readable by the pods' group only.
pub(super) fn token_volume(volume: &str, secret: String) -> Volume {
    Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Its mount.
pub(super) fn token_mount(volume: &str, dir: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: dir.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Pods of the operator, in its `namespace` (the label every namespace
/// carries since Kubernetes 1.22).
fn operator_pods(namespace: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                namespace.to_string(),
            )])),
            ..LabelSelector::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".to_string(), "redstuff".to_string()),
                (
                    "app.kubernetes.io/component".to_string(),
                    "operator".to_string(),
                ),
            ])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn pods_of(cluster: &str, component: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(pod_selector(cluster, component)),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn port(number: i32) -> Vec<NetworkPolicyPort> {
    vec![NetworkPolicyPort {
        port: Some(IntOrString::Int(number)),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    }]
}

/// Node pods take API calls only from the cluster's gateway, its node
/// pods and the operator; their metrics port from anyone.
pub(super) fn node_network_policy(
    cluster: &StorageCluster,
    name: &str,
    operator_namespace: &str,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(cluster, format!("{name}-nodes"), "node"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(pod_selector(name, "node")),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![
                        pods_of(name, "gateway"),
                        pods_of(name, "node"),
                        operator_pods(operator_namespace),
                    ]),
                    ports: Some(port(NODE_PORT)),
                },
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(port(NODE_METRICS_PORT)),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}
