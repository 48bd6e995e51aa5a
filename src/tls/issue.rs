//! Issuing certificates from a CA of our own: `redstuff dev --tls` and the
//! operator make one per fleet, and with it the serving certificate of its
//! nodes.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::TlsError;

/// How long a serving certificate is valid; it is renewed well before.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// How long a CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Clocks of the machines involved may lag this much behind the issuer's.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

fn issue_error(e: rcgen::Error) -> TlsError {
    TlsError::Issue(e.to_string())
}

/// A CA: its certificate and the key that signs with it.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalCa(..)")
    }
}

/// The parameters of the CA named `name`: what a certificate it signs
/// names as its issuer.
fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "redstuff");
    dn.push(DnType::CommonName, format!("{name} CA"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// The certificate and key issued for a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
    /// When it stops being valid.
    pub not_after: SystemTime,
}

impl LocalCa {
    /// A new CA named `name` (its certificate says "`name` CA"), valid ten years.
    pub fn generate(name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(issue_error)?;
        let mut params = ca_params(name);
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + CA_VALIDITY).into();
        let cert_pem = params.self_signed(&key).map_err(issue_error)?.pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem,
        })
    }

    /// A CA from its certificate and key as they were kept (its issuer
    /// name and key identifier are taken from the certificate as they
    /// are). Every certificate it issues is checked against `cert_pem`, so
    /// a key that is not the certificate's is found at the first issue.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(issue_error)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(issue_error)?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA's certificate (PEM): what callers trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PEM).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A server certificate for `names` (DNS names, `*.` wildcards, IP
    /// addresses), valid for `validity` from now.
    pub fn issue(&self, names: &[String], validity: Duration) -> Result<IssuedCert, TlsError> {
        let key = KeyPair::generate().map_err(issue_error)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(issue_error)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "redstuff");
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_after = now + validity;
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &self.issuer).map_err(issue_error)?;
        if let Some(name) = names.first() {
            self.check_chain(cert.der(), name)?;
        }
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }

    /// That `der` is valid for `name` (a wildcard's label filled in) as a
    /// client trusting this CA's certificate checks it.
    fn check_chain(&self, der: &[u8], name: &str) -> Result<(), TlsError> {
        use rustls::client::danger::ServerCertVerifier as _;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let broken = |what: String| {
            TlsError::Issue(format!(
                "the CA's certificate and key do not go together: {what}"
            ))
        };
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| broken(e.to_string()))?;
        roots.add(ca).map_err(|e| broken(e.to_string()))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| broken(e.to_string()))?;
        let host = name.replacen("*.", "node.", 1);
        let server = ServerName::try_from(host).map_err(|e| broken(e.to_string()))?;
        verifier
            .verify_server_cert(
                &CertificateDer::from(der.to_vec()),
                &[],
                &server,
                &[],
                UnixTime::now(),
            )
            .map_err(|e| broken(e.to_string()))?;
        Ok(())
    }
}
