//! TLS of a cluster (`spec.tls.enabled`): the Secrets holding its CA
//! (NAME-ca, read by the operator only), the nodes' serving certificate
//! (NAME-node-tls, mounted into node pods) and the gateway's
//! (NAME-gateway-tls, mounted into gateway pods, its `ca.crt` what
//! clients trust), the names each covers, what pods get to use them, and
//! when a serving certificate is issued again.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{KeyToPath, PodSpec, Secret, SecretVolumeSource, Volume};
use k8s_openapi::ByteString;

use super::{meta, token_mount};
use crate::operator::ca_rotation::{CaPem, CaSet};
use crate::operator::crd::StorageCluster;

/// Where the TLS Secret is mounted in node and gateway pods.
pub const TLS_DIR: &str = "/etc/redstuff/tls";
/// The CA's certificate, in every Secret.
pub const CA_CERT_KEY: &str = "ca.crt";
/// The CA's key, in the CA Secret.
pub const CA_KEY_KEY: &str = "ca.key";
/// The serving certificate, in a serving Secret.
pub const CERT_KEY: &str = "tls.crt";
/// Its key.
pub const KEY_KEY: &str = "tls.key";
/// When the serving certificate expires (Unix seconds), on its Secret.
pub const NOT_AFTER_ANNOTATION: &str = "redstuff.dev/not-after";
/// The names the serving certificate covers (comma-separated), on its
/// Secret.
pub const NAMES_ANNOTATION: &str = "redstuff.dev/names";
/// A serving certificate is issued again this long before it expires.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// A serving certificate and its key, as issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingPair {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its key (PEM).
    pub key_pem: String,
    /// When it expires, in Unix seconds.
    pub not_after_unix: u64,
    /// The names it covers.
    pub names: Vec<String>,
}

/// The TLS material of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// Its CAs: the one signing, and during a rotation the one coming or
    /// going.
    pub cas: CaSet,
    /// What node pods serve.
    pub nodes: ServingPair,
    /// What gateway pods serve (the native API and S3), unless they serve
    /// a Secret of the user's (`spec.tls.gatewaySecret`).
    pub gateway: Option<ServingPair>,
}

impl ClusterTls {
    /// What pods and the operator trust now (`ca.crt` of the serving
    /// Secrets): every CA of the set.
    pub fn trusted_pem(&self) -> String {
        self.cas.trusted_pem()
    }
}

/// A serving certificate as its Secret holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptServingCert {
    /// The CA certificates stored beside it (what pods trust).
    pub ca_cert_pem: String,
    /// When it expires, from the Secret's annotation.
    pub not_after_unix: Option<u64>,
    /// The names it covers, from the Secret's annotation.
    pub names: Option<String>,
    /// Whether it holds both a certificate and a key.
    pub complete: bool,
}

/// Whether a new serving certificate for `names` is needed: none kept, one
/// incomplete, stored beside other CA certificates than `ca_cert_pem` (a
/// CA rotation's every step issues one, so that a pod seen serving it has
/// read its Secret's trust too) or for other names, or one expiring within
/// `RENEW_BEFORE`.
pub fn needs_new_serving_cert(
    kept: Option<&KeptServingCert>,
    ca_cert_pem: &str,
    names: &[String],
    now_unix: u64,
) -> bool {
    let Some(kept) = kept else { return true };
    let expiring = kept
        .not_after_unix
        .is_none_or(|at| at < now_unix.saturating_add(RENEW_BEFORE.as_secs()));
    let other_names = kept.names.as_deref() != Some(names.join(",").as_str());
    !kept.complete || kept.ca_cert_pem != ca_cert_pem || other_names || expiring
}

/// Name of the CA Secret of `cluster`.
pub fn ca_secret_name(cluster: &str) -> String {
    format!("{cluster}-ca")
}

/// Name of the nodes' serving-certificate Secret of `cluster`.
pub fn node_tls_secret_name(cluster: &str) -> String {
    format!("{cluster}-node-tls")
}

/// Name of the gateway's serving-certificate Secret of `cluster`.
pub fn gateway_tls_secret_name(cluster: &str) -> String {
    format!("{cluster}-gateway-tls")
}

/// The names the nodes' certificate covers: every node pod's DNS name
/// under the headless Service.
pub fn node_serving_names(cluster: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("*.{cluster}-nodes.{namespace}.svc"),
        format!("*.{cluster}-nodes.{namespace}.svc.cluster.local"),
    ]
}

/// The names the gateway's certificate covers: its Service's names, the
/// loopback names a `kubectl port-forward` is reached by, the S3 domain
/// (and its buckets' names under it) and the spec's further names, without
/// repeats.
pub fn gateway_serving_names(cluster: &StorageCluster, namespace: &str) -> Vec<String> {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let service = format!("{name}-gateway");
    let mut names = vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service,
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    if let Some(domain) = super::s3::enabled(cluster).and_then(|s3| s3.domain.as_deref()) {
        names.push(domain.to_string());
        names.push(format!("*.{domain}"));
    }
    names.extend(cluster.spec.gateway_names().iter().cloned());
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| !n.is_empty() && seen.insert(n.clone()));
    names
}

/// What is wrong with `name` as a name a certificate covers, if anything
/// (pure): it must be an IP address or an ASCII DNS name (labels of
/// letters, digits and inner hyphens, at most 63 bytes each and 253 in
/// all), a leading `*.` allowed; an internationalised name is given in its
/// punycode (`xn--`) form.
pub fn certificate_name_problem(name: &str) -> Option<String> {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let host = name.strip_prefix("*.").unwrap_or(name);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if host.is_empty() || name.len() > 253 || !host.split('.').all(label_ok) {
        return Some(format!(
            "{name:?} is neither an IP address nor a DNS name a certificate can cover \
             (ASCII letters, digits, hyphens and dots; an internationalised name in its \
             xn-- form)"
        ));
    }
    None
}

fn secret_data<const N: usize>(entries: [(&str, &str); N]) -> BTreeMap<String, ByteString> {
    entries
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| (key.to_string(), ByteString(value.as_bytes().to_vec())))
        .collect()
}

/// The next CA's certificate, in the CA Secret during a rotation's first
/// phase.
pub const NEXT_CA_CERT_KEY: &str = "next-ca.crt";
/// Its key.
pub const NEXT_CA_KEY_KEY: &str = "next-ca.key";
/// The previous CA's certificate, in the CA Secret during a rotation's
/// second phase.
pub const PREVIOUS_CA_CERT_KEY: &str = "previous-ca.crt";
/// The rotate annotation's value last acted on, on the CA Secret.
pub const ROTATION_REQUEST_ANNOTATION: &str = "redstuff.dev/ca-rotation-request";
/// When the CA set's phase began (Unix seconds), on the CA Secret.
pub const PHASE_SINCE_ANNOTATION: &str = "redstuff.dev/ca-phase-since";

/// The CA Secret (the operator's only: no pod mounts it), holding `cas`.
pub fn ca_secret(cluster: &StorageCluster, name: &str, cas: &CaSet) -> Secret {
    let mut metadata = meta(cluster, ca_secret_name(name), "node");
    let annotations: BTreeMap<String, String> = [
        (ROTATION_REQUEST_ANNOTATION, cas.request.clone()),
        (
            PHASE_SINCE_ANNOTATION,
            cas.phase_since_unix.map(|at| at.to_string()),
        ),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some((key.to_string(), value?)))
    .collect();
    if !annotations.is_empty() {
        metadata.annotations = Some(annotations);
    }
    let next = cas.next.as_ref();
    let entries = [
        (CA_CERT_KEY, cas.current.cert_pem.as_str()),
        (CA_KEY_KEY, cas.current.key_pem.as_str()),
        (NEXT_CA_CERT_KEY, next.map_or("", |ca| ca.cert_pem.as_str())),
        (NEXT_CA_KEY_KEY, next.map_or("", |ca| ca.key_pem.as_str())),
        (
            PREVIOUS_CA_CERT_KEY,
            cas.previous_cert_pem.as_deref().unwrap_or(""),
        ),
    ];
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(secret_data(entries)),
        ..Secret::default()
    }
}

/// The CAs the CA Secret `secret` holds; `None` when its current CA's
/// certificate or key is missing. A next CA without its key is left out
/// (a rotation then begins again).
pub fn cas_of_secret(secret: &Secret) -> Option<CaSet> {
    let text = |key: &str| {
        secret
            .data
            .as_ref()?
            .get(key)
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .filter(|v| !v.trim().is_empty())
    };
    let annotation = |key: &str| secret.metadata.annotations.as_ref()?.get(key).cloned();
    let pair = |cert: &str, key: &str| {
        Some(CaPem {
            cert_pem: text(cert)?,
            key_pem: text(key)?,
        })
    };
    Some(CaSet {
        current: pair(CA_CERT_KEY, CA_KEY_KEY)?,
        next: pair(NEXT_CA_CERT_KEY, NEXT_CA_KEY_KEY),
        previous_cert_pem: text(PREVIOUS_CA_CERT_KEY),
        request: annotation(ROTATION_REQUEST_ANNOTATION),
        phase_since_unix: annotation(PHASE_SINCE_ANNOTATION).and_then(|v| v.parse().ok()),
    })
}

fn serving_secret(
    cluster: &StorageCluster,
    secret_name: String,
    component: &str,
    ca_cert_pem: &str,
    pair: &ServingPair,
) -> Secret {
    let mut metadata = meta(cluster, secret_name, component);
    metadata.annotations = Some(BTreeMap::from([
        (
            NOT_AFTER_ANNOTATION.to_string(),
            pair.not_after_unix.to_string(),
        ),
        (NAMES_ANNOTATION.to_string(), pair.names.join(",")),
    ]));
    Secret {
        metadata,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(secret_data([
            (CA_CERT_KEY, ca_cert_pem),
            (CERT_KEY, &pair.cert_pem),
            (KEY_KEY, &pair.key_pem),
        ])),
        ..Secret::default()
    }
}

/// The nodes' serving-certificate Secret, with the certificates of the
/// CAs trusted.
pub fn node_tls_secret(cluster: &StorageCluster, name: &str, tls: &ClusterTls) -> Secret {
    serving_secret(
        cluster,
        node_tls_secret_name(name),
        "node",
        &tls.trusted_pem(),
        &tls.nodes,
    )
}

/// The gateway's serving-certificate Secret, with the certificates of the
/// CAs trusted, unless the gateway serves a Secret of the user's.
pub fn gateway_tls_secret(
    cluster: &StorageCluster,
    name: &str,
    tls: &ClusterTls,
) -> Option<Secret> {
    let pair = tls.gateway.as_ref()?;
    Some(serving_secret(
        cluster,
        gateway_tls_secret_name(name),
        "gateway",
        &tls.trusted_pem(),
        pair,
    ))
}

/// Where a gateway serving a Secret of the user's finds the cluster's CA
/// (for calls to node pods).
pub const FLEET_CA_DIR: &str = "/etc/redstuff/fleet-ca";

/// Mounts `keys` of Secret `secret_name` (all: None) as volume `volume`
/// at `dir`.
fn mount_secret(
    spec: &mut PodSpec,
    volume: &str,
    secret_name: String,
    keys: Option<&[&str]>,
    dir: &str,
) {
    spec.containers[0]
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(token_mount(volume, dir));
    let items = keys.map(|keys| {
        keys.iter()
            .map(|key| KeyToPath {
                key: key.to_string(),
                path: key.to_string(),
                ..KeyToPath::default()
            })
            .collect()
    });
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name),
            default_mode: Some(0o440),
            items,
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
}

/// A pod serves `tls.crt` and `tls.key` of Secret `secret_name` and
/// trusts `ca` for calls to node pods.
fn serve_from(spec: &mut PodSpec, secret_name: String, ca: &str) {
    let cert = format!("{TLS_DIR}/{CERT_KEY}");
    let key = format!("{TLS_DIR}/{KEY_KEY}");
    spec.containers[0].args.get_or_insert_with(Vec::new).extend(
        ["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", ca]
            .iter()
            .map(|a| a.to_string()),
    );
    mount_secret(spec, "tls", secret_name, None, TLS_DIR);
}

/// A node pod serves its API with the nodes' certificate and trusts the
/// CA for calls to peers.
pub fn add_to_node_pod(spec: &mut PodSpec, name: &str) {
    serve_from(
        spec,
        node_tls_secret_name(name),
        &format!("{TLS_DIR}/{CA_CERT_KEY}"),
    );
}

/// A gateway pod serves its API and S3 with the gateway's certificate, or
/// with `own_secret` (the user's), and trusts the cluster's CA for calls
/// to node pods (in the user's Secret's place, `ca.crt` of the nodes').
pub fn add_to_gateway_pod(spec: &mut PodSpec, name: &str, own_secret: Option<&str>) {
    match own_secret {
        None => serve_from(
            spec,
            gateway_tls_secret_name(name),
            &format!("{TLS_DIR}/{CA_CERT_KEY}"),
        ),
        Some(own) => {
            serve_from(
                spec,
                own.to_string(),
                &format!("{FLEET_CA_DIR}/{CA_CERT_KEY}"),
            );
            mount_secret(
                spec,
                "fleet-ca",
                node_tls_secret_name(name),
                Some(&[CA_CERT_KEY]),
                FLEET_CA_DIR,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600;

    fn names() -> Vec<String> {
        vec!["a.example".to_string(), "*.b.example".to_string()]
    }

    fn kept(ca: &str, not_after: Option<u64>) -> KeptServingCert {
        KeptServingCert {
            ca_cert_pem: ca.into(),
            not_after_unix: not_after,
            names: Some(names().join(",")),
            complete: true,
        }
    }

    #[test]
    fn a_serving_cert_is_kept_until_thirty_days_before_it_expires() {
        let now = 1_000 * DAY;
        assert!(!needs_new_serving_cert(
            Some(&kept("ca", Some(now + 89 * DAY))),
            "ca",
            &names(),
            now
        ));
        assert!(!needs_new_serving_cert(
            Some(&kept("ca", Some(now + 30 * DAY))),
            "ca",
            &names(),
            now
        ));
        assert!(needs_new_serving_cert(
            Some(&kept("ca", Some(now + 30 * DAY - 1))),
            "ca",
            &names(),
            now
        ));
        assert!(needs_new_serving_cert(
            Some(&kept("ca", Some(now - DAY))),
            "ca",
            &names(),
            now
        ));
    }

    #[test]
    fn a_serving_cert_is_issued_when_none_is_kept_or_it_is_incomplete_unknown_or_of_another_ca() {
        let now = 1_000 * DAY;
        assert!(needs_new_serving_cert(None, "ca", &names(), now));
        assert!(needs_new_serving_cert(
            Some(&kept("old ca", Some(now + 80 * DAY))),
            "ca",
            &names(),
            now
        ));
        assert!(needs_new_serving_cert(
            Some(&kept("ca", None)),
            "ca",
            &names(),
            now
        ));
        let incomplete = KeptServingCert {
            complete: false,
            ..kept("ca", Some(now + 80 * DAY))
        };
        assert!(needs_new_serving_cert(
            Some(&incomplete),
            "ca",
            &names(),
            now
        ));
    }

    #[test]
    fn the_serving_names_cover_every_node_pod_url() {
        let cluster = crate::operator::fixtures::cluster(7, 7, Some("1Gi"));
        let names = node_serving_names("media", "storage");
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

    #[test]
    fn a_serving_cert_is_issued_again_when_the_names_it_must_cover_change() {
        let now = 1_000 * DAY;
        let fine = kept("ca", Some(now + 80 * DAY));
        assert!(!needs_new_serving_cert(Some(&fine), "ca", &names(), now));
        let fewer = vec!["a.example".to_string()];
        assert!(needs_new_serving_cert(Some(&fine), "ca", &fewer, now));
        let unknown = KeptServingCert {
            names: None,
            ..fine
        };
        assert!(needs_new_serving_cert(Some(&unknown), "ca", &names(), now));
    }

    #[test]
    fn a_certificate_covers_ascii_dns_names_and_ip_addresses_only() {
        for fine in [
            "s3.example.com",
            "*.s3.example.com",
            "localhost",
            "10.0.0.1",
            "::1",
            "xn--bcher-kva.example",
        ] {
            assert_eq!(certificate_name_problem(fine), None, "{fine}");
        }
        for wrong in [
            "s3.bücher.example",
            "",
            "a..b",
            "-lead.example",
            "trail-.example",
            "under_score.example",
            "*.",
            "a.*.example",
        ] {
            assert!(certificate_name_problem(wrong).is_some(), "{wrong:?}");
        }
    }

    #[test]
    fn the_gateway_cert_covers_its_service_a_port_forward_the_s3_domain_and_the_names_asked_for() {
        let mut cluster = crate::operator::fixtures::cluster(7, 7, Some("1Gi"));
        cluster.metadata.name = Some("media".into());
        cluster.spec.s3 = Some(crate::operator::crd::S3Spec {
            domain: Some("s3.example.com".into()),
            ..Default::default()
        });
        cluster.spec.tls = Some(crate::operator::crd::TlsSpec {
            enabled: Some(true),
            gateway_names: Some(vec!["objects.example.com".into(), "localhost".into()]),
            gateway_secret: None,
            ca_rotation_overlap: None,
        });
        let names = gateway_serving_names(&cluster, "storage");
        for expected in [
            "media-gateway",
            "media-gateway.storage",
            "media-gateway.storage.svc",
            "media-gateway.storage.svc.cluster.local",
            "localhost",
            "127.0.0.1",
            "s3.example.com",
            "*.s3.example.com",
            "objects.example.com",
        ] {
            assert!(
                names.contains(&expected.to_string()),
                "{expected}: {names:?}"
            );
        }
        assert_eq!(names.len(), 9, "no name twice: {names:?}");
        let gateway = crate::operator::context::Endpoints::default().gateway(&cluster);
        let host = gateway
            .trim_start_matches("https://")
            .rsplit_once(':')
            .unwrap()
            .0;
        assert!(names.contains(&host.to_string()), "{gateway}");
    }
}
