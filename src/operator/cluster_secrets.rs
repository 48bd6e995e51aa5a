//! The Secrets a StorageCluster's reconcile reads or makes before it
//! applies anything: the cluster and user tokens, the S3 keys, the CA and
//! the serving certificates (kept until due, issued again when they
//! expire or their names change), and the trust of node and gateway calls.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use super::cluster_ca::{CaOutcome, CurrentSince, ServingPod};
use super::crd::StorageCluster;
use super::desired::{
    tls::{self, ClusterTls},
    TOKEN_KEY,
};
use super::reconcile_error::ReconcileError;
use crate::tls::LocalCa;

/// The content of a token Secret, or a new random token when it does not
/// exist yet (or holds no token).
pub(super) async fn read_or_make_token(
    secrets: &Api<Secret>,
    name: &str,
) -> Result<String, ReconcileError> {
    let existing = secrets
        .get_opt(name)
        .await?
        .and_then(|secret| secret.data)
        .and_then(|d| {
            d.get(TOKEN_KEY)
                .map(|t| String::from_utf8_lossy(&t.0).into_owned())
        })
        .filter(|content| !crate::auth::parse_tokens(content).is_empty());
    match existing {
        Some(content) => Ok(content),
        None => crate::auth::random_token().map_err(ReconcileError::Token),
    }
}

/// The CAs and the serving certificates of `cluster`, and what its CA
/// rotation did (`cluster_ca`): each serving certificate kept unless
/// `tls::needs_new_serving_cert` says to issue one from the CA that signs
/// now, stored beside every CA trusted now.
pub(super) async fn read_or_make_tls(
    secrets: &Api<Secret>,
    cluster: &StorageCluster,
    name: &str,
    namespace: &str,
    serving_pods: &[ServingPod],
    current_since: &CurrentSince,
    min_phase: std::time::Duration,
) -> Result<(ClusterTls, CaOutcome), ReconcileError> {
    let outcome = super::cluster_ca::read_make_or_rotate(
        secrets,
        cluster,
        name,
        serving_pods,
        current_since,
        min_phase,
    )
    .await?;
    let cas = outcome.cas.clone();
    let ca = LocalCa::from_pem(&cas.current.cert_pem, &cas.current.key_pem)
        .map_err(|e| ReconcileError::Tls(e.to_string()))?;
    let trusted = cas.trusted_pem();
    let nodes = keep_or_issue(
        secrets,
        &ca,
        &trusted,
        &tls::node_tls_secret_name(name),
        tls::node_serving_names(name, namespace),
    )
    .await?;
    let gateway = match cluster.spec.gateway_secret() {
        Some(_) => None,
        None => Some(
            keep_or_issue(
                secrets,
                &ca,
                &trusted,
                &tls::gateway_tls_secret_name(name),
                tls::gateway_serving_names(cluster, namespace),
            )
            .await?,
        ),
    };
    Ok((
        ClusterTls {
            cas,
            nodes,
            gateway,
        },
        outcome,
    ))
}

/// The value of `key` in `secret`, when it holds a non-blank one.
pub(super) fn secret_text(secret: &Option<Secret>, key: &str) -> Option<String> {
    secret
        .as_ref()
        .and_then(|s| s.data.as_ref()?.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .filter(|v| !v.trim().is_empty())
}

/// The serving certificate for `names` kept in Secret `secret_name`, or a
/// new one from `ca` when `tls::needs_new_serving_cert` says so (`trusted`
/// being what is stored beside it).
pub(super) async fn keep_or_issue(
    secrets: &Api<Secret>,
    ca: &LocalCa,
    trusted: &str,
    secret_name: &str,
    names: Vec<String>,
) -> Result<tls::ServingPair, ReconcileError> {
    let kept = secrets.get_opt(secret_name).await?;
    let annotation = |key: &str| {
        kept.as_ref()
            .and_then(|s| s.metadata.annotations.as_ref()?.get(key).cloned())
    };
    let kept_serving = kept.as_ref().map(|_| tls::KeptServingCert {
        ca_cert_pem: secret_text(&kept, tls::CA_CERT_KEY).unwrap_or_default(),
        not_after_unix: annotation(tls::NOT_AFTER_ANNOTATION).and_then(|v| v.parse().ok()),
        names: annotation(tls::NAMES_ANNOTATION),
        complete: secret_text(&kept, tls::CERT_KEY).is_some()
            && secret_text(&kept, tls::KEY_KEY).is_some(),
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if !tls::needs_new_serving_cert(kept_serving.as_ref(), trusted, &names, now) {
        return Ok(tls::ServingPair {
            cert_pem: secret_text(&kept, tls::CERT_KEY).unwrap_or_default(),
            key_pem: secret_text(&kept, tls::KEY_KEY).unwrap_or_default(),
            not_after_unix: kept_serving.and_then(|k| k.not_after_unix).unwrap_or(0),
            names,
        });
    }
    let issued = ca
        .issue(&names, crate::tls::SERVING_VALIDITY)
        .map_err(|e| ReconcileError::Tls(format!("{secret_name}: {e}")))?;
    tracing::info!(secret = secret_name, "issued a serving certificate");
    Ok(tls::ServingPair {
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
        not_after_unix: issued
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        names,
    })
}

/// Checks the cluster's nodes against `ca_cert_pem` (a bundle) from now on.
pub(crate) fn trust_cluster_ca(trust: &crate::tls::FleetTrust, ca_cert_pem: &str) {
    let origin = std::path::Path::new("the cluster's CA Secret");
    match crate::tls::TrustedCa::from_pem(origin, ca_cert_pem.as_bytes()) {
        Ok(ca) => {
            if let Err(e) = trust.set(&ca) {
                tracing::warn!("cannot trust the cluster's CA: {e}");
            }
        }
        Err(e) => tracing::warn!("{e}"),
    }
}

/// Checks the cluster's gateway against the cluster's CA from now on, or,
/// when it serves a Secret of the user's, against that Secret's `ca.crt`
/// (Mozilla's roots when it has none). What is wrong with that Secret (it
/// is missing, its `ca.crt` does not parse, its certificate does not
/// cover the gateway Service's name the operator uploads to) is returned
/// to be told, never a reason to stop the reconcile: the gateway pod
/// waits for the Secret too, and the fleet goes on.
pub(super) async fn trust_gateway(
    secrets: &Api<Secret>,
    cluster: &StorageCluster,
    trust: &crate::tls::FleetTrust,
    ca_cert_pem: &str,
) -> Result<(), String> {
    let Some(own) = cluster.spec.gateway_secret() else {
        trust_cluster_ca(trust, ca_cert_pem);
        return Ok(());
    };
    let secret = secrets
        .get_opt(own)
        .await
        .map_err(|e| format!("cannot read the Secret {own} (spec.tls.gatewaySecret): {e}"))?
        .ok_or_else(|| format!("the Secret {own} (spec.tls.gatewaySecret) does not exist"))?;
    let secret = Some(secret);
    let ca = match secret_text(&secret, tls::CA_CERT_KEY) {
        Some(pem) => crate::tls::TrustedCa::from_pem(std::path::Path::new(own), pem.as_bytes())
            .map_err(|e| format!("ca.crt of the Secret {own} (spec.tls.gatewaySecret): {e}"))?,
        None => crate::tls::TrustedCa::public_roots(),
    };
    trust
        .set(&ca)
        .map_err(|e| format!("ca.crt of the Secret {own}: {e}"))?;
    let service = format!(
        "{}-gateway.{}.svc",
        cluster.metadata.name.as_deref().unwrap_or_default(),
        cluster.metadata.namespace.as_deref().unwrap_or_default()
    );
    let cert = secret_text(&secret, tls::CERT_KEY).unwrap_or_default();
    match crate::tls::certificate_covers(&cert, &service) {
        Some(true) => Ok(()),
        Some(false) => Err(format!(
            "the certificate of the Secret {own} (spec.tls.gatewaySecret) does not cover {service}, \
             the name the operator uploads Blob sources to and in-cluster clients call: \
             add it to the certificate's DNS names (a cert-manager Certificate's dnsNames)"
        )),
        None => Err(format!(
            "{} of the Secret {own} (spec.tls.gatewaySecret) holds no certificate that parses",
            tls::CERT_KEY
        )),
    }
}

/// The S3 access key the operator keeps in `name`, or new keys.
pub(super) async fn read_or_make_s3_keys(
    secrets: &Api<Secret>,
    name: &str,
) -> Result<crate::s3::credentials::S3Keys, ReconcileError> {
    use crate::operator::desired::s3::{ACCESS_KEY, SECRET_KEY};
    let existing = secrets.get_opt(name).await?.and_then(|secret| secret.data);
    let read = |key: &str| {
        existing
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let (Some(access_key), Some(secret_key)) = (read(ACCESS_KEY), read(SECRET_KEY)) {
        return Ok(crate::s3::credentials::S3Keys {
            access_key,
            secret_key,
        });
    }
    crate::s3::credentials::S3Keys::generate().map_err(ReconcileError::Token)
}
