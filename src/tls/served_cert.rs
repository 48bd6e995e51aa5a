//! Which certificate a server presents right now: one TLS handshake that
//! keeps the server's end-entity certificate and sends nothing. The
//! operator asks it of every pod during a CA rotation, to see each has
//! read its Secret's current files.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// How long closing the connection may take once the certificate is seen.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// Accepts any certificate and keeps the server's (nothing is sent over
/// the connection, so nothing depends on who answered), but checks that
/// the server holds the key of the certificate it shows.
#[derive(Debug)]
struct KeepsCertificate {
    seen: Mutex<Option<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for KeepsCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().expect("seen lock") = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The end-entity certificate (DER) the server at `address` (`host:port`)
/// presents for `server_name`, within `deadline`; why not, in one sentence.
pub async fn served_certificate(
    address: &str,
    server_name: &str,
    deadline: Duration,
) -> Result<Vec<u8>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let keeper = Arc::new(KeepsCertificate {
        seen: Mutex::new(None),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(keeper.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("{server_name} is not a server name: {e}"))?;
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {address} failed: {e}"))
    };
    let mut stream = tokio::time::timeout(deadline, handshake)
        .await
        .map_err(|_| format!("no TLS handshake with {address} within {deadline:?}"))??;
    // Closed as a client should (close_notify, then what the server still
    // sends read to its end): a connection dropped with unread data is
    // reset, and a server may count that as a failed handshake.
    let close = async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        stream.shutdown().await?;
        let mut rest = [0u8; 1024];
        while stream.read(&mut rest).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(CLOSE_DEADLINE, close).await;
    let seen = keeper.seen.lock().expect("seen lock").take();
    seen.ok_or_else(|| format!("{address} showed no certificate"))
}

/// The end-entity certificate (DER) of a PEM chain: its first.
pub fn first_certificate_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|der| der.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{LocalCa, ServingCert};

    /// Serves `serving` on a new loopback port; its address.
    async fn serve_over_tls(
        serving: Option<Arc<ServingCert>>,
    ) -> (String, tokio::task::JoinHandle<()>) {
        serve_counting(serving, counters()).await
    }

    /// Fresh handshake counters.
    fn counters() -> crate::tls::HandshakeCounters {
        crate::tls::HandshakeCounters {
            failed: prometheus::IntCounter::new("failures", "test").unwrap(),
            abandoned: prometheus::IntCounter::new("abandoned", "test").unwrap(),
        }
    }

    /// The same, counting handshakes in `handshakes`.
    async fn serve_counting(
        serving: Option<Arc<ServingCert>>,
        handshakes: crate::tls::HandshakeCounters,
    ) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let metrics = crate::tls::TlsMetrics {
            certificate_expiry: prometheus::IntGauge::new("expiry", "test").unwrap(),
            handshakes,
        };
        let server = tokio::spawn(async move {
            let _ = crate::tls::serve(
                listener,
                app,
                serving,
                Duration::from_secs(30),
                metrics,
                std::future::pending(),
            )
            .await;
        });
        (address, server)
    }

    #[tokio::test]
    async fn a_server_is_seen_serving_the_certificate_of_its_files_and_a_renewal_once_read() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::generate("test").unwrap();
        let names = vec!["localhost".to_string()];
        let first = ca.issue(&names, Duration::from_secs(3600)).unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_path, &first.cert_pem).unwrap();
        std::fs::write(&key_path, &first.key_pem).unwrap();
        let serving = ServingCert::load(&cert_path, &key_path).unwrap();
        let (address, server) = serve_over_tls(Some(serving.clone())).await;
        let seen = served_certificate(&address, "localhost", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(Some(seen), first_certificate_der(&first.cert_pem));

        let renewed = ca.issue(&names, Duration::from_secs(7200)).unwrap();
        std::fs::write(&cert_path, &renewed.cert_pem).unwrap();
        std::fs::write(&key_path, &renewed.key_pem).unwrap();
        serving.refresh().unwrap();
        let seen = served_certificate(&address, "localhost", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(Some(seen), first_certificate_der(&renewed.cert_pem));
        server.abort();
    }

    #[tokio::test]
    async fn asking_which_certificate_a_server_serves_is_never_a_failed_handshake_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let issued = LocalCa::generate("test")
            .unwrap()
            .issue(&["localhost".to_string()], Duration::from_secs(3600))
            .unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_path, &issued.cert_pem).unwrap();
        std::fs::write(&key_path, &issued.key_pem).unwrap();
        let serving = ServingCert::load(&cert_path, &key_path).unwrap();
        let handshakes = counters();
        let failures = handshakes.failed.clone();
        let (address, server) = serve_counting(Some(serving), handshakes.clone()).await;
        for _ in 0..30 {
            served_certificate(&address, "localhost", Duration::from_secs(10))
                .await
                .unwrap();
        }
        // A client that is refused is counted: the counter counts.
        let refused = crate::http::client()
            .get(format!("https://{address}/"))
            .send()
            .await;
        assert!(refused.is_err());
        let counted = async {
            while failures.get() == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), counted)
            .await
            .expect("the refused client is counted");
        assert_eq!(failures.get(), 1, "only the refused client failed");
        assert_eq!(handshakes.abandoned.get(), 0, "no probe left a handshake");
        server.abort();
    }

    #[tokio::test]
    async fn a_server_without_tls_is_an_error_not_a_certificate() {
        let (address, server) = serve_over_tls(None).await;
        let seen = served_certificate(&address, "localhost", Duration::from_secs(10)).await;
        assert!(seen.is_err(), "{seen:?}");
        server.abort();
    }
}
