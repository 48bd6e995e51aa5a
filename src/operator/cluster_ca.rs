//! A cluster's CA Secret: read, made when missing (stored before anything
//! uses it), and rotated one step at a time (`ca_rotation` decides; this
//! reads what it needs, asks every pod which certificate it serves, and
//! writes the Secret before anything uses what it holds).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use super::ca_rotation::{self, CaPem, CaSet, CaStep, RotationFacts};
use super::context::Context;
use super::crd::StorageCluster;
use super::desired::{tls, GATEWAY_PORT};
use super::lifecycle::NodeDecision;
use super::reconcile_error::ReconcileError;
use crate::tls::LocalCa;

/// How long after every pod was first seen current a rotation steps on:
/// a pod reads its trust file on its own tick (`TLS_RELOAD_PERIOD`),
/// possibly just after it read the certificate it is seen serving.
const TRUST_SETTLE: Duration = Duration::from_secs(2 * crate::tls::TLS_RELOAD_PERIOD.as_secs());

/// How long one pod's TLS handshake may take.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

/// A pod whose served certificate a rotation waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ServingPod {
    /// The pod, as Events name it.
    pub name: String,
    /// `host:port` to shake hands with.
    pub address: String,
    /// The server name to ask for.
    pub server_name: String,
    /// Which serving Secret it serves.
    pub secret: String,
}

/// What a reconcile did to the CA set, to be told.
#[derive(Debug, Clone)]
pub(super) struct CaOutcome {
    /// The CAs from now on.
    pub cas: CaSet,
    /// The step taken (`Stay` most of the time).
    pub step: CaStep,
    /// During a rotation, the pods not yet serving their Secret's
    /// certificate, each with why.
    pub waiting_for: Vec<String>,
}

/// Since when every pod has been seen serving its Secret's certificate in
/// the rotation phase that began at the key (Unix seconds), kept between
/// reconciles of one cluster.
#[derive(Debug, Default)]
pub struct CurrentSince(Mutex<Option<(u64, Instant)>>);

impl CurrentSince {
    /// Whether the pods have been current long enough, given whether they
    /// all are now.
    fn settled(&self, phase_since: u64, all_current: bool) -> bool {
        let mut seen = self.0.lock().expect("not poisoned");
        if !all_current {
            *seen = None;
            return false;
        }
        match *seen {
            Some((key, at)) if key == phase_since => at.elapsed() >= TRUST_SETTLE,
            _ => {
                *seen = Some((phase_since, Instant::now()));
                false
            }
        }
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn issue_error(e: crate::tls::TlsError) -> ReconcileError {
    ReconcileError::Tls(e.to_string())
}

/// A new CA for cluster `name`, as PEM.
fn new_ca(name: &str) -> Result<CaPem, ReconcileError> {
    let ca = LocalCa::generate(name).map_err(issue_error)?;
    Ok(CaPem {
        cert_pem: ca.cert_pem().to_string(),
        key_pem: ca.key_pem(),
    })
}

/// The CA Secret of `cluster`, created with a new CA when there is none.
async fn read_or_make_secret(
    secrets: &Api<Secret>,
    cluster: &StorageCluster,
    name: &str,
) -> Result<Secret, ReconcileError> {
    let ca_name = tls::ca_secret_name(name);
    if let Some(kept) = secrets.get_opt(&ca_name).await? {
        return Ok(kept);
    }
    // A value the annotation already has asks nothing of a CA made now.
    let mut cas = CaSet::single(new_ca(name)?);
    cas.request = rotate_annotation(cluster).map(str::to_string);
    let secret = tls::ca_secret(cluster, name, &cas);
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(created) => {
            tracing::info!(cluster = name, "made the cluster's CA");
            Ok(created)
        }
        // Made meanwhile by another reconcile: that one is the CA.
        Err(kube::Error::Api(e)) if e.code == 409 => secrets
            .get_opt(&ca_name)
            .await?
            .ok_or_else(|| ReconcileError::Tls(format!("the Secret {ca_name} went away"))),
        Err(e) => Err(e.into()),
    }
}

/// The CAs of `cluster` after this reconcile's rotation step, if any: the
/// step is decided from the StorageCluster's rotate annotation, the CA's
/// expiry, the overlap and (during a rotation) which certificate each of
/// `pods` serves, and the CA Secret is written before anything uses it
/// (with the resource version read, so a concurrent change fails it).
pub(super) async fn read_make_or_rotate(
    secrets: &Api<Secret>,
    cluster: &StorageCluster,
    name: &str,
    pods: &[ServingPod],
    current_since: &CurrentSince,
    min_phase: Duration,
) -> Result<CaOutcome, ReconcileError> {
    let kept = read_or_make_secret(secrets, cluster, name).await?;
    let ca_name = tls::ca_secret_name(name);
    let cas = tls::cas_of_secret(&kept).ok_or_else(|| {
        ReconcileError::Tls(format!(
            "the Secret {ca_name} lacks {} or {}: delete it to have a new CA made",
            tls::CA_CERT_KEY,
            tls::CA_KEY_KEY
        ))
    })?;
    let rotating = cas.phase() != ca_rotation::CaPhase::Steady;
    let waiting_for = if rotating {
        pods_not_current(secrets, pods, &cas.trusted_pem()).await
    } else {
        Vec::new()
    };
    let pods_current = rotating
        && current_since.settled(cas.phase_since_unix.unwrap_or(0), waiting_for.is_empty());
    let requested = rotate_annotation(cluster);
    let now = now_unix();
    let facts = RotationFacts {
        requested,
        current_not_after_unix: crate::tls::certificate_not_after_unix(&cas.current.cert_pem)
            .and_then(|at| u64::try_from(at).ok()),
        now_unix: now,
        overlap: cluster.spec.ca_rotation_overlap(),
        min_phase,
        pods_current,
    };
    let step = ca_rotation::next_ca_step(&cas, &facts);
    if step == CaStep::Stay {
        return Ok(CaOutcome {
            cas,
            step,
            waiting_for,
        });
    }
    let made = match step {
        CaStep::Begin { .. } => Some(new_ca(name)?),
        _ => None,
    };
    let next = cas.after(&step, made, now);
    let mut secret = tls::ca_secret(cluster, name, &next);
    secret.metadata.resource_version = kept.metadata.resource_version.clone();
    secrets
        .patch(
            &ca_name,
            &PatchParams::apply(super::apply_objects::FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
    tracing::info!(cluster = name, ?step, "rotating the cluster's CA");
    Ok(CaOutcome {
        cas: next,
        step,
        waiting_for: Vec::new(),
    })
}

/// The value of the rotate annotation on `cluster`.
fn rotate_annotation(cluster: &StorageCluster) -> Option<&str> {
    cluster
        .metadata
        .annotations
        .as_ref()?
        .get(ca_rotation::ROTATE_ANNOTATION)
        .map(String::as_str)
}

/// What is not yet current for the phase whose bundle is `trusted`, each
/// with why: a serving Secret not yet written for it (its `ca.crt` is
/// another bundle: an apply failed or has not happened), a pod not
/// serving its Secret's certificate or that cannot be asked, or no pod
/// to ask at all.
async fn pods_not_current(
    secrets: &Api<Secret>,
    pods: &[ServingPod],
    trusted: &str,
) -> Vec<String> {
    if pods.is_empty() {
        return vec!["no running pod to ask".to_string()];
    }
    let mut expected = std::collections::BTreeMap::new();
    let mut behind = Vec::new();
    for pod in pods {
        if expected.contains_key(&pod.secret) {
            continue;
        }
        let cert = match secrets.get_opt(&pod.secret).await {
            Ok(secret) => {
                let text = |key| super::cluster_secrets::secret_text(&secret, key);
                if text(tls::CA_CERT_KEY).as_deref() != Some(trusted) {
                    behind.push(format!(
                        "the Secret {} is not yet written for this phase",
                        pod.secret
                    ));
                    None
                } else {
                    text(tls::CERT_KEY).and_then(|pem| crate::tls::first_certificate_der(&pem))
                }
            }
            Err(e) => {
                tracing::debug!("reading {}: {e}", pod.secret);
                None
            }
        };
        expected.insert(pod.secret.clone(), cert);
    }
    if !behind.is_empty() {
        return behind;
    }
    let asks = pods.iter().map(|pod| async {
        let served =
            crate::tls::served_certificate(&pod.address, &pod.server_name, HANDSHAKE_DEADLINE)
                .await;
        let wanted = expected.get(&pod.secret).cloned().flatten();
        match (served, wanted) {
            (Ok(served), Some(wanted)) if served == wanted => None,
            (Ok(_), Some(_)) => Some(format!(
                "{} still serves an older certificate than its Secret {}",
                pod.name, pod.secret
            )),
            (_, None) => Some(format!(
                "the Secret {} holds no certificate to compare",
                pod.secret
            )),
            (Err(why), _) => Some(format!("{}: {why}", pod.name)),
        }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// `host:port` and the host of a base URL.
fn address_of(url: &str) -> Option<(String, String)> {
    let url = reqwest::Url::parse(url).ok()?;
    let host = url.host_str()?.trim_matches(['[', ']']).to_string();
    let port = url.port_or_known_default()?;
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Some((address, host))
}

/// A node pod reached at `url`, serving the nodes' Secret.
pub(super) fn node_pod(cluster_name: &str, pod: &str, url: &str) -> Option<ServingPod> {
    let (address, server_name) = address_of(url)?;
    Some(ServingPod {
        name: pod.to_string(),
        address,
        server_name,
        secret: tls::node_tls_secret_name(cluster_name),
    })
}

/// The gateway pods of `cluster` serving the gateway's Secret of the
/// cluster's CA (none when it serves a Secret of the user's): the one an
/// endpoint override names, else every running pod the Deployment made,
/// by its address, asked for the gateway Service's name.
pub(super) async fn gateway_pods(
    pods: &Api<Pod>,
    cluster: &StorageCluster,
    override_url: Option<String>,
) -> Result<Vec<ServingPod>, kube::Error> {
    if cluster.spec.gateway_secret().is_some() {
        return Ok(Vec::new());
    }
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let namespace = cluster.metadata.namespace.clone().unwrap_or_default();
    let secret = tls::gateway_tls_secret_name(&name);
    if let Some(url) = override_url {
        return Ok(address_of(&url)
            .map(|(address, server_name)| ServingPod {
                name: format!("{name}-gateway"),
                address,
                server_name,
                secret,
            })
            .into_iter()
            .collect());
    }
    let selector = super::desired::pod_selector(&name, "gateway");
    let labels = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let listed = pods.list(&ListParams::default().labels(&labels)).await?;
    let service = format!("{name}-gateway.{namespace}.svc");
    Ok(listed
        .items
        .into_iter()
        .filter(|pod| {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                && pod.metadata.deletion_timestamp.is_none()
        })
        .filter_map(|pod| {
            let status = pod.status?;
            if status.phase.as_deref() != Some("Running") {
                return None;
            }
            let ip = status.pod_ip?;
            let address = if ip.contains(':') {
                format!("[{ip}]:{GATEWAY_PORT}")
            } else {
                format!("{ip}:{GATEWAY_PORT}")
            };
            Some(ServingPod {
                name: pod.metadata.name.unwrap_or_default(),
                address,
                server_name: service.clone(),
                secret: secret.clone(),
            })
        })
        .collect())
}

/// Every pod a rotation of `cluster`'s CA waits for: its available node
/// pods and its gateway pods (a pod not running reads the current Secret
/// when it starts). Gateway pods that cannot be listed are told in the
/// log and waited for as one that cannot be asked.
pub(super) async fn serving_pods(
    ctx: &Context,
    client: &kube::Client,
    cluster: &StorageCluster,
    decisions: &[NodeDecision],
) -> Vec<ServingPod> {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let namespace = cluster.metadata.namespace.clone().unwrap_or_default();
    let mut pods: Vec<ServingPod> = decisions
        .iter()
        .enumerate()
        .filter(|(_, d)| d.available)
        .filter_map(|(index, d)| node_pod(&name, &d.name, &ctx.endpoints.node(cluster, index)))
        .collect();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    match gateway_pods(&api, cluster, ctx.endpoints.gateway_override(cluster)).await {
        Ok(gateways) => pods.extend(gateways),
        Err(e) => {
            tracing::warn!(cluster = %name, "cannot list the gateway pods: {e}");
            pods.push(ServingPod {
                name: format!("{name}-gateway"),
                address: String::new(),
                server_name: format!("{name}-gateway.{namespace}.svc"),
                secret: tls::gateway_tls_secret_name(&name),
            });
        }
    }
    pods
}

/// Tells a rotation's step as a Normal Event on the StorageCluster; a
/// rotation waiting on pods is logged, not told again each reconcile.
pub(super) async fn tell(ctx: &Context, cluster: &StorageCluster, outcome: &CaOutcome) {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let overlap = cluster.spec.ca_rotation_overlap();
    // Each step has a reason of its own: Events of one reason are folded
    // into one (a count), which would hide every note but the first.
    let (reason, note) = match &outcome.step {
        CaStep::Stamp => {
            tracing::info!(cluster = %name, "the CA Secret lacked when its rotation phase began: counting from now");
            return;
        }
        CaStep::Stay => {
            if !outcome.waiting_for.is_empty() {
                tracing::info!(
                    cluster = %name,
                    "the CA rotation waits for: {}",
                    outcome.waiting_for.join("; ")
                );
            }
            return;
        }
        CaStep::Begin { why } => {
            let cause = match why {
                ca_rotation::RotationCause::Asked(value) => format!(
                    "asked by the annotation {}={value}",
                    ca_rotation::ROTATE_ANNOTATION
                ),
                ca_rotation::RotationCause::Expiring => {
                    "the CA expires within a year".to_string()
                }
            };
            let clients = match cluster.spec.gateway_secret() {
                Some(own) => format!(
                    "the gateway serves the Secret {own} (spec.tls.gatewaySecret), so its clients need nothing"
                ),
                None => format!(
                    "clients outside the cluster should take ca.crt of {} now (it holds both)",
                    tls::gateway_tls_secret_name(&name)
                ),
            };
            (
                "CaRotationStarted",
                format!(
                    "rotating the cluster's CA ({cause}): a new CA is trusted beside the current one; it signs once every pod serves its renewed certificate and {} passed (spec.tls.caRotationOverlap); {clients}",
                    humantime_secs(overlap),
                ),
            )
        }
        CaStep::Switch => (
            "CaRotationSigning",
            "the new CA signs: every pod gets a certificate from it; the previous CA stays trusted until every pod serves one".to_string(),
        ),
        CaStep::Finish => (
            "CaRotationDone",
            "the CA rotation is done: the previous CA is trusted no more; every ca.crt the operator writes holds only the new one".to_string(),
        ),
    };
    ctx.publish(cluster, false, reason, note).await;
}

/// A duration as `1h2m3s`.
fn humantime_secs(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut text = String::new();
    if h > 0 {
        text += &format!("{h}h");
    }
    if m > 0 {
        text += &format!("{m}m");
    }
    if s > 0 || text.is_empty() {
        text += &format!("{s}s");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_url_gives_the_address_and_name_to_shake_hands_with() {
        let pod = node_pod(
            "media",
            "media-node-0",
            "https://media-node-0.media-nodes.storage.svc:7800",
        )
        .unwrap();
        assert_eq!(pod.address, "media-node-0.media-nodes.storage.svc:7800");
        assert_eq!(pod.server_name, "media-node-0.media-nodes.storage.svc");
        assert_eq!(pod.secret, "media-node-tls");
        let loopback = node_pod("media", "media-node-1", "https://[::1]:9000").unwrap();
        assert_eq!(loopback.address, "[::1]:9000");
        assert_eq!(loopback.server_name, "::1");
    }

    #[test]
    fn an_overlap_is_told_in_the_spec_s_own_units() {
        assert_eq!(humantime_secs(Duration::from_secs(600)), "10m");
        assert_eq!(humantime_secs(Duration::from_secs(3725)), "1h2m5s");
        assert_eq!(humantime_secs(Duration::ZERO), "0s");
    }

    #[test]
    fn pods_count_as_current_only_after_settling_in_the_same_phase() {
        let since = CurrentSince::default();
        assert!(!since.settled(10, true), "first seen now: not settled yet");
        assert!(!since.settled(10, false));
        *since.0.lock().unwrap() = Some((10, Instant::now() - TRUST_SETTLE));
        assert!(since.settled(10, true));
        assert!(!since.settled(11, true), "another phase starts over");
    }
}
