//! The certificate a process serves, from PEM files read again when they
//! change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::TlsError;

/// How often the files are read again. The kubelet updates a mounted
/// Secret within about a minute of a change; a few seconds more is nothing.
pub const TLS_RELOAD_PERIOD: Duration = Duration::from_secs(5);

/// The certificate chain and key a server presents, kept current with
/// their files.
pub struct ServingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Loaded>,
}

struct Loaded {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    key: Arc<CertifiedKey>,
    not_after_unix: Option<i64>,
}

/// When the certificate `der` expires, in Unix seconds.
fn not_after_unix(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Whether the first certificate of `pem` names DNS name `host` among its
/// subject alternative names, a `*.` wildcard covering one label; `None`
/// when it holds no certificate that parses.
pub fn certificate_covers(pem: &str, host: &str) -> Option<bool> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let names = cert.subject_alternative_name().ok()?;
    let host = host.to_ascii_lowercase();
    Some(names.is_some_and(|names| {
        names.value.general_names.iter().any(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => dns_name_covers(dns, &host),
            _ => false,
        })
    }))
}

/// Whether certificate name `pattern` covers `host` (pure): equal, or a
/// `*.` wildcard standing for exactly one leftmost label.
fn dns_name_covers(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == host,
    }
}

/// When the first certificate of `pem` expires, in Unix seconds (`None`
/// when it holds none that parses).
pub fn certificate_not_after_unix(pem: &str) -> Option<i64> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    not_after_unix(der.as_ref())
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish()
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })
}

/// The chain of `cert_pem` (the server's first) with the key of
/// `key_pem`, which must be the first certificate's.
fn certified_key(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let invalid = |path: &Path, what: String| TlsError::Invalid {
        path: path.into(),
        what,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert_path, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(cert_path, "holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| invalid(key_path, format!("not a PEM private key: {e}")))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        invalid(
            key_path,
            format!("not the key of {}: {e}", cert_path.display()),
        )
    })
}

impl ServingCert {
    /// Reads the chain (PEM, the server's certificate first) and its key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let (cert_pem, key_pem) = (read(cert_path)?, read(key_path)?);
        let key = certified_key(cert_path, &cert_pem, key_path, &key_pem)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            current: RwLock::new(Loaded {
                not_after_unix: key
                    .end_entity_cert()
                    .ok()
                    .and_then(|der| not_after_unix(der.as_ref())),
                cert_pem,
                key_pem,
                key: Arc::new(key),
            }),
        }))
    }

    /// The pair of `cert_path` and `key_path`, when both are named.
    pub fn load_optional(
        cert_path: Option<&Path>,
        key_path: Option<&Path>,
    ) -> Result<Option<Arc<Self>>, TlsError> {
        match (cert_path, key_path) {
            (Some(cert), Some(key)) => Self::load(cert, key).map(Some),
            _ => Ok(None),
        }
    }

    /// Reads the files again; whether they changed. Files that changed
    /// into something unusable (or a key that is not the certificate's,
    /// as while a Secret is half updated) leave the current pair served.
    pub fn refresh(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = (read(&self.cert_path)?, read(&self.key_path)?);
        {
            let current = self.current.read().expect("serving cert lock");
            if current.cert_pem == cert_pem && current.key_pem == key_pem {
                return Ok(false);
            }
        }
        let key = certified_key(&self.cert_path, &cert_pem, &self.key_path, &key_pem)?;
        *self.current.write().expect("serving cert lock") = Loaded {
            not_after_unix: key
                .end_entity_cert()
                .ok()
                .and_then(|der| not_after_unix(der.as_ref())),
            cert_pem,
            key_pem,
            key: Arc::new(key),
        };
        Ok(true)
    }

    /// Reads the files again every `period` while anyone holds this,
    /// keeping `expiry` at the expiry of the certificate served (Unix
    /// seconds).
    pub fn watch(self: &Arc<Self>, period: Duration, expiry: prometheus::IntGauge) {
        let this = Arc::downgrade(self);
        expiry.set(self.not_after_unix().unwrap_or(0));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(serving) = this.upgrade() else {
                    return;
                };
                let refreshed = serving.refresh();
                expiry.set(serving.not_after_unix().unwrap_or(0));
                match refreshed {
                    Ok(true) => tracing::info!(
                        cert = %serving.cert_path.display(),
                        "serving the renewed certificate"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("keeping the certificate served: {e}"),
                }
            }
        });
    }

    /// When the certificate served now expires, in Unix seconds.
    pub fn not_after_unix(&self) -> Option<i64> {
        self.current
            .read()
            .expect("serving cert lock")
            .not_after_unix
    }

    /// The chain and key served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().expect("serving cert lock").key.clone()
    }

    /// A server configuration presenting the current pair to every client.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn a_certificate_name_covers_its_host_and_a_wildcard_exactly_one_label() {
        assert!(dns_name_covers(
            "media-gateway.storage.svc",
            "media-gateway.storage.svc"
        ));
        assert!(dns_name_covers(
            "*.storage.svc",
            "media-gateway.storage.svc"
        ));
        assert!(dns_name_covers(
            "*.Storage.SVC",
            "media-gateway.storage.svc"
        ));
        assert!(!dns_name_covers("*.svc", "media-gateway.storage.svc"));
        assert!(!dns_name_covers("*.storage.svc", "storage.svc"));
        assert!(!dns_name_covers(
            "media-gateway.storage",
            "media-gateway.storage.svc"
        ));
    }

    #[test]
    fn a_certificate_covers_the_names_it_was_issued_for_and_no_other() {
        let ca = crate::tls::LocalCa::generate("test").unwrap();
        let issued = ca
            .issue(
                &["*.storage.svc".to_string(), "localhost".to_string()],
                crate::tls::SERVING_VALIDITY,
            )
            .unwrap();
        assert_eq!(
            certificate_covers(&issued.cert_pem, "media-gateway.storage.svc"),
            Some(true)
        );
        assert_eq!(
            certificate_covers(&issued.cert_pem, "LOCALHOST"),
            Some(true)
        );
        assert_eq!(
            certificate_covers(&issued.cert_pem, "media-gateway.other.svc"),
            Some(false)
        );
        assert_eq!(certificate_covers("not a certificate", "localhost"), None);
    }
}
