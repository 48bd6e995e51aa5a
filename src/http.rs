//! HTTP clients. reqwest is built with rustls but without a crypto
//! provider of its own: the process uses ring (as kube does), installed
//! here once, before the first client is built.
//!
//! Certificates are checked against Mozilla's root store compiled in
//! (webpki-root-certs) plus the machine's bundle where it has one
//! (`SSL_CERT_FILE`, else the usual system paths): the container image
//! holds the binary only, with no CA files, yet a Blob's `https://` source
//! must verify.

use std::sync::{Once, OnceLock};

static PROVIDER: Once = Once::new();

/// Bundles tried when `SSL_CERT_FILE` is not set.
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The trusted roots: compiled in, and the machine's.
fn roots() -> &'static [reqwest::Certificate] {
    static ROOTS: OnceLock<Vec<reqwest::Certificate>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots: Vec<reqwest::Certificate> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .filter_map(|der| reqwest::Certificate::from_der(der.as_ref()).ok())
            .collect();
        let bundle = std::env::var_os("SSL_CERT_FILE")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                SYSTEM_BUNDLES
                    .iter()
                    .map(std::path::PathBuf::from)
                    .find(|p| p.is_file())
            });
        if let Some(pem) = bundle.and_then(|path| std::fs::read(path).ok()) {
            if let Ok(system) = reqwest::Certificate::from_pem_bundle(&pem) {
                roots.extend(system);
            }
        }
        roots
    })
}

/// A client builder with the process' TLS provider and roots in place;
/// every HTTP client of redstuff starts here.
pub fn client_builder() -> reqwest::ClientBuilder {
    client_builder_trusting(None)
}

/// A client builder that also trusts `ca` (a fleet's own CA, for calls
/// to its nodes).
pub fn client_builder_trusting(ca: Option<&crate::tls::TrustedCa>) -> reqwest::ClientBuilder {
    PROVIDER.call_once(|| {
        // An error means another provider is installed already: fine too.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    let own = ca.map(|ca| ca.certificates()).unwrap_or_default();
    reqwest::Client::builder().tls_certs_only(roots().iter().chain(own).cloned())
}

/// A client with default settings.
pub fn client() -> reqwest::Client {
    client_builder().build().expect("HTTP client")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_builds_with_the_compiled_in_roots_even_without_a_system_bundle() {
        assert!(
            super::roots().len() > 100,
            "Mozilla's roots are compiled in"
        );
        super::client();
    }
}
