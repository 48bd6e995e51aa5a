//! TLS between redstuff's processes. A node serves its API with a
//! certificate and key read from PEM files and read again when they
//! change, so a renewed certificate (a mounted Secret updated in place) is
//! served without a restart; whoever calls nodes checks them against the
//! fleet's CA, read from a PEM file and read again when it changes.
//!
//! One serving certificate covers every node of a cluster (its names are
//! the node pods' DNS names under one wildcard): a node can impersonate
//! another, but every node already holds the cluster token, so it gains
//! nothing it did not have.

mod fleet_trust;
mod issue;
mod local_files;
mod serve;
mod served_cert;
mod serving;

pub use fleet_trust::FleetTrust;
pub use issue::{IssuedCert, LocalCa, SERVING_VALIDITY};
pub use local_files::{ensure_local_files, LocalTlsFiles};
pub use serve::{serve, serve_tls, HandshakeCounters, TlsMetrics};
pub use served_cert::{first_certificate_der, served_certificate};
pub use serving::{certificate_covers, certificate_not_after_unix, ServingCert, TLS_RELOAD_PERIOD};

use std::path::{Path, PathBuf};

/// What can go wrong reading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM of the kind expected.
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A certificate could not be made.
    #[error("cannot issue a certificate: {0}")]
    Issue(String),
}

/// The CA certificates of a fleet (a PEM bundle file), which callers
/// check its nodes against.
#[derive(Clone)]
pub struct TrustedCa {
    certs: Vec<reqwest::Certificate>,
    ders: Vec<rustls::pki_types::CertificateDer<'static>>,
    path: PathBuf,
}

impl std::fmt::Debug for TrustedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TrustedCa({}, {} certificates)",
            self.path.display(),
            self.certs.len()
        )
    }
}

impl TrustedCa {
    /// The certificates of a PEM bundle file (at least one).
    pub fn from_pem_file(path: &Path) -> Result<Self, TlsError> {
        let pem = std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_pem(path, &pem)
    }

    /// The certificates of the PEM bundle file at `path`, when one is
    /// named.
    pub fn from_optional_file(path: Option<&Path>) -> Result<Option<Self>, TlsError> {
        path.map(Self::from_pem_file).transpose()
    }

    /// The certificates of a PEM bundle (at least one); `origin` names
    /// where it came from in errors.
    pub fn from_pem(origin: &Path, pem: &[u8]) -> Result<Self, TlsError> {
        use rustls::pki_types::pem::PemObject;
        let invalid = |what: String| TlsError::Invalid {
            path: origin.into(),
            what,
        };
        let ders = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("not a PEM certificate bundle: {e}")))?;
        if ders.is_empty() {
            return Err(invalid("holds no certificate".into()));
        }
        let certs = ders
            .iter()
            .map(|der| reqwest::Certificate::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("not a certificate: {e}")))?;
        Ok(Self {
            certs,
            ders,
            path: origin.into(),
        })
    }

    /// Mozilla's root certificates (compiled in): what a certificate from
    /// a public CA is checked against.
    pub fn public_roots() -> Self {
        let ders: Vec<_> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .map(|der| der.clone().into_owned())
            .collect();
        let certs = ders
            .iter()
            .filter_map(|der| reqwest::Certificate::from_der(der).ok())
            .collect();
        Self {
            certs,
            ders,
            path: PathBuf::from("Mozilla's root certificates"),
        }
    }

    /// The file they came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The same certificates, DER-encoded.
    pub fn ders(&self) -> &[rustls::pki_types::CertificateDer<'static>] {
        &self.ders
    }

    /// The certificates.
    pub fn certificates(&self) -> &[reqwest::Certificate] {
        &self.certs
    }
}
