//! The S3 endpoint of a StorageCluster (pure): the gateway Deployment and
//! Service gain the S3 port; the index lives on a PersistentVolumeClaim of
//! its own (one writer: one pod, recreated, never rolled with two) or in
//! PostgreSQL (the URL from a Secret; any number of replicas, rolled as
//! usual); the access keys come from a Secret (the operator's own unless
//! the spec names one) mounted as a directory, which the gateway reads
//! again while it runs: `accessKey` and `secretKey`, and `credentials`
//! for further keys.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    ContainerPort, EnvVar, EnvVarSource, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Secret, SecretKeySelector, SecretVolumeSource, Service,
    ServicePort, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use super::meta;
use crate::operator::crd::{S3Spec, StorageCluster};
use crate::s3::credentials::S3Keys;

/// Port of the S3 endpoint on the gateway.
pub const S3_PORT: i32 = 7780;
/// Where the index volume is mounted in the gateway pod.
const INDEX_DIR: &str = "/var/lib/redstuff-s3";
/// Where the access keys' Secret is mounted in the gateway pod.
const KEYS_DIR: &str = "/etc/redstuff/s3-keys";
/// Key of the access key id in the credentials Secret.
pub const ACCESS_KEY: &str = "accessKey";
/// Key of the secret access key in the credentials Secret.
pub const SECRET_KEY: &str = "secretKey";
/// Key of the PostgreSQL URL in the index Secret.
pub const POSTGRES_URL_KEY: &str = "url";

/// The cluster's S3 settings, when S3 is enabled.
pub fn enabled(cluster: &StorageCluster) -> Option<&S3Spec> {
    cluster.spec.s3.as_ref().filter(|s3| s3.is_enabled())
}

/// Name of the Secret the operator makes for the S3 access key.
pub fn s3_credentials_secret(cluster: &str) -> String {
    format!("{cluster}-s3-credentials")
}

/// Name of the index's claim.
pub fn s3_index_claim(cluster: &str) -> String {
    format!("{cluster}-s3-index")
}

/// The endpoint of `cluster` inside the Kubernetes cluster: `https://`
/// when its gateway serves TLS.
pub fn s3_endpoint(cluster: &StorageCluster) -> String {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let namespace = cluster.metadata.namespace.as_deref().unwrap_or("default");
    let scheme = cluster.spec.url_scheme();
    format!("{scheme}://{name}-gateway.{namespace}.svc:{S3_PORT}")
}

/// The Secret with the access key, when the operator makes it (the spec
/// names none).
pub fn credentials_secret(cluster: &StorageCluster, name: &str, keys: &S3Keys) -> Secret {
    Secret {
        metadata: meta(cluster, s3_credentials_secret(name), "gateway"),
        data: Some(BTreeMap::from([
            (
                ACCESS_KEY.to_string(),
                ByteString(keys.access_key.clone().into_bytes()),
            ),
            (
                SECRET_KEY.to_string(),
                ByteString(keys.secret_key.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    }
}

/// The index's claim, unless the index is in PostgreSQL.
pub fn index_claim(
    cluster: &StorageCluster,
    name: &str,
    s3: &S3Spec,
) -> Option<PersistentVolumeClaim> {
    s3.postgres_secret
        .is_none()
        .then(|| embedded_index_claim(cluster, name, s3))
}

fn embedded_index_claim(
    cluster: &StorageCluster,
    name: &str,
    s3: &S3Spec,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: super::claim_meta(cluster, s3_index_claim(name), "gateway"),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: s3.index_storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(s3.index_size.clone().unwrap_or_else(|| "1Gi".into())),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Adds S3 to the gateway Deployment and Service.
pub fn add_to_gateway(name: &str, s3: &S3Spec, gateway: &mut Deployment, service: &mut Service) {
    let secret = s3
        .credentials_secret
        .clone()
        .unwrap_or_else(|| s3_credentials_secret(name));
    let spec = &mut gateway.spec;
    let embedded = s3.postgres_secret.is_none();
    if embedded {
        // One pod writes the index: the old pod stops before the new starts.
        spec.strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            ..DeploymentStrategy::default()
        });
    }
    let pod = spec.template.spec.as_mut().expect("a pod spec");
    // Kubelet updates a mounted Secret in place (environment variables
    // would need a new pod), and the gateway reads it again.
    pod.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: "s3-keys".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.clone()),
            default_mode: Some(0o400),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    if embedded {
        pod.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "s3-index".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: s3_index_claim(name),
                ..PersistentVolumeClaimVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let container = &mut pod.containers[0];
    let args = container.args.get_or_insert_with(Vec::new);
    args.extend(["--s3-listen".to_string(), format!("[::]:{S3_PORT}")]);
    if embedded {
        args.extend(["--s3-index".to_string(), format!("{INDEX_DIR}/index.redb")]);
    }
    args.extend([
        "--s3-collect-after-secs".to_string(),
        s3.collect_after_seconds.unwrap_or(600).to_string(),
        "--s3-upload-max-age-secs".into(),
        s3.upload_max_age_seconds.unwrap_or(86_400).to_string(),
    ]);
    if let Some(domain) = &s3.domain {
        args.extend(["--s3-domain".to_string(), domain.clone()]);
    }
    args.extend(["--s3-keys-dir".to_string(), KEYS_DIR.to_string()]);
    if let Some(postgres) = &s3.postgres_secret {
        container.env.get_or_insert_with(Vec::new).push(secret_env(
            "REDSTUFF_S3_INDEX_POSTGRES",
            postgres,
            POSTGRES_URL_KEY,
        ));
    }
    container
        .ports
        .get_or_insert_with(Vec::new)
        .push(ContainerPort {
            name: Some("s3".into()),
            container_port: S3_PORT,
            ..ContainerPort::default()
        });
    let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
    mounts.push(VolumeMount {
        name: "s3-keys".into(),
        mount_path: KEYS_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    if embedded {
        mounts.push(VolumeMount {
            name: "s3-index".into(),
            mount_path: INDEX_DIR.into(),
            ..VolumeMount::default()
        });
    }
    service
        .spec
        .as_mut()
        .expect("a service spec")
        .ports
        .get_or_insert_with(Vec::new)
        .push(ServicePort {
            name: Some("s3".into()),
            port: S3_PORT,
            target_port: Some(IntOrString::String("s3".into())),
            ..ServicePort::default()
        });
}
