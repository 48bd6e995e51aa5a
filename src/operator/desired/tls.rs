//! TLS on a cluster's node API (`spec.tls.enabled`): the Secrets holding
//! its CA (NAME-ca, read by the operator only) and the nodes' serving
//! certificate (NAME-node-tls, mounted into node pods; its `ca.crt` alone
//! into gateway pods), what pods get to use them, and when the serving
//! certificate is issued again.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{KeyToPath, PodSpec, Secret, SecretVolumeSource, Volume};
use k8s_openapi::ByteString;

use super::{meta, token_mount};
use crate::operator::crd::StorageCluster;

/// Where the TLS Secret is mounted in node and gateway pods.
pub const TLS_DIR: &str = "/etc/redstuff/tls";
/// The CA's certificate, in both Secrets.
pub const CA_CERT_KEY: &str = "ca.crt";
/// The CA's key, in the CA Secret.
pub const CA_KEY_KEY: &str = "ca.key";
/// The serving certificate, in the nodes' Secret.
pub const CERT_KEY: &str = "tls.crt";
/// Its key.
pub const KEY_KEY: &str = "tls.key";
/// When the serving certificate expires (Unix seconds), on its Secret.
pub const NOT_AFTER_ANNOTATION: &str = "redstuff.dev/not-after";
/// A serving certificate is issued again this long before it expires.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The TLS material of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// The CA's certificate (PEM).
    pub ca_cert_pem: String,
    /// The CA's key (PEM).
    pub ca_key_pem: String,
    /// The nodes' serving certificate (PEM).
    pub cert_pem: String,
    /// Its key (PEM).
    pub key_pem: String,
    /// When it expires, in Unix seconds.
    pub not_after_unix: u64,
}

/// A serving certificate as its Secret holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptServingCert {
    /// The CA certificate stored beside it.
    pub ca_cert_pem: String,
    /// When it expires, from the Secret's annotation.
    pub not_after_unix: Option<u64>,
    /// Whether it holds both a certificate and a key.
    pub complete: bool,
}

/// Whether the nodes need a new serving certificate: none kept, one
/// incomplete or from another CA, or one expiring within `RENEW_BEFORE`.
pub fn needs_new_serving_cert(
    kept: Option<&KeptServingCert>,
    ca_cert_pem: &str,
    now_unix: u64,
) -> bool {
    let Some(kept) = kept else { return true };
    let expiring = kept
        .not_after_unix
        .is_none_or(|at| at < now_unix.saturating_add(RENEW_BEFORE.as_secs()));
    !kept.complete || kept.ca_cert_pem != ca_cert_pem || expiring
}

/// Name of the CA Secret of `cluster`.
pub fn ca_secret_name(cluster: &str) -> String {
    format!("{cluster}-ca")
}

/// Name of the nodes' serving-certificate Secret of `cluster`.
pub fn node_tls_secret_name(cluster: &str) -> String {
    format!("{cluster}-node-tls")
}

/// The names the serving certificate covers: every node pod's DNS name
/// under the headless Service.
pub fn serving_names(cluster: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("*.{cluster}-nodes.{namespace}.svc"),
        format!("*.{cluster}-nodes.{namespace}.svc.cluster.local"),
    ]
}

fn secret_data(entries: [(&str, &str); 3]) -> BTreeMap<String, ByteString> {
    entries
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| (key.to_string(), ByteString(value.as_bytes().to_vec())))
        .collect()
}

/// The CA Secret (the operator's only: no pod mounts it).
pub fn ca_secret(
    cluster: &StorageCluster,
    name: &str,
    ca_cert_pem: &str,
    ca_key_pem: &str,
) -> Secret {
    Secret {
        metadata: meta(cluster, ca_secret_name(name), "node"),
        type_: Some("Opaque".into()),
        data: Some(secret_data([
            (CA_CERT_KEY, ca_cert_pem),
            (CA_KEY_KEY, ca_key_pem),
            ("", ""),
        ])),
        ..Secret::default()
    }
}

/// The nodes' serving-certificate Secret, with the CA's certificate.
pub fn node_tls_secret(cluster: &StorageCluster, name: &str, tls: &ClusterTls) -> Secret {
    let mut metadata = meta(cluster, node_tls_secret_name(name), "node");
    metadata.annotations = Some(BTreeMap::from([(
        NOT_AFTER_ANNOTATION.to_string(),
        tls.not_after_unix.to_string(),
    )]));
    Secret {
        metadata,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(secret_data([
            (CA_CERT_KEY, &tls.ca_cert_pem),
            (CERT_KEY, &tls.cert_pem),
            (KEY_KEY, &tls.key_pem),
        ])),
        ..Secret::default()
    }
}

fn tls_volume(name: &str, items: Option<Vec<KeyToPath>>) -> Volume {
    Volume {
        name: "tls".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(node_tls_secret_name(name)),
            default_mode: Some(0o440),
            items,
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount_into(spec: &mut PodSpec, volume: Volume, args: &[&str]) {
    let container = &mut spec.containers[0];
    container
        .args
        .get_or_insert_with(Vec::new)
        .extend(args.iter().map(|a| a.to_string()));
    container
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(token_mount("tls", TLS_DIR));
    spec.volumes.get_or_insert_with(Vec::new).push(volume);
}

/// A node pod serves its API with the Secret's certificate and trusts its
/// CA for calls to peers.
pub fn add_to_node_pod(spec: &mut PodSpec, name: &str) {
    let cert = format!("{TLS_DIR}/{CERT_KEY}");
    let key = format!("{TLS_DIR}/{KEY_KEY}");
    let ca = format!("{TLS_DIR}/{CA_CERT_KEY}");
    mount_into(
        spec,
        tls_volume(name, None),
        &["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca],
    );
}

/// A gateway pod trusts the CA (the only key of the Secret it mounts).
pub fn add_to_gateway_pod(spec: &mut PodSpec, name: &str) {
    let ca = format!("{TLS_DIR}/{CA_CERT_KEY}");
    let items = vec![KeyToPath {
        key: CA_CERT_KEY.into(),
        path: CA_CERT_KEY.into(),
        ..KeyToPath::default()
    }];
    mount_into(spec, tls_volume(name, Some(items)), &["--tls-ca", &ca]);
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600;

    fn kept(ca: &str, not_after: Option<u64>) -> KeptServingCert {
        KeptServingCert {
            ca_cert_pem: ca.into(),
            not_after_unix: not_after,
            complete: true,
        }
    }

    #[test]
    fn a_serving_cert_is_kept_until_thirty_days_before_it_expires() {
        let now = 1_000 * DAY;
        assert!(!needs_new_serving_cert(
            Some(&kept("ca", Some(now + 89 * DAY))),
            "ca",
            now
        ));
        assert!(!needs_new_serving_cert(
            Some(&kept("ca", Some(now + 30 * DAY))),
            "ca",
            now
        ));
        assert!(needs_new_serving_cert(
            Some(&kept("ca", Some(now + 30 * DAY - 1))),
            "ca",
            now
        ));
        assert!(needs_new_serving_cert(
            Some(&kept("ca", Some(now - DAY))),
            "ca",
            now
        ));
    }

    #[test]
    fn a_serving_cert_is_issued_when_none_is_kept_or_it_is_incomplete_unknown_or_of_another_ca() {
        let now = 1_000 * DAY;
        assert!(needs_new_serving_cert(None, "ca", now));
        assert!(needs_new_serving_cert(
            Some(&kept("old ca", Some(now + 80 * DAY))),
            "ca",
            now
        ));
        assert!(needs_new_serving_cert(Some(&kept("ca", None)), "ca", now));
        let incomplete = KeptServingCert {
            complete: false,
            ..kept("ca", Some(now + 80 * DAY))
        };
        assert!(needs_new_serving_cert(Some(&incomplete), "ca", now));
    }

    #[test]
    fn the_serving_names_cover_every_node_pod_url() {
        let cluster = crate::operator::fixtures::cluster(7, 7, Some("1Gi"));
        let names = serving_names("media", "storage");
        for index in 0..7 {
            let url = super::super::node_url(&cluster, index);
            let host = url
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .rsplit_once(':')
                .unwrap()
                .0;
            let (_, parent) = host.split_once('.').unwrap();
            assert!(names.contains(&format!("*.{parent}")), "{host} {names:?}");
        }
    }
}
