//! HTTP clients. reqwest is built with rustls but without a crypto
//! provider of its own: the process uses ring (as kube does), installed
//! here once, before the first client is built.

use std::sync::Once;

static PROVIDER: Once = Once::new();

/// A client builder with the process' TLS provider in place; every HTTP
/// client of redstuff starts here.
pub fn client_builder() -> reqwest::ClientBuilder {
    PROVIDER.call_once(|| {
        // An error means another provider is installed already: fine too.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

/// A client with default settings.
pub fn client() -> reqwest::Client {
    client_builder().build().expect("HTTP client")
}
