//! Trust in one fleet's CA that can change after the HTTP client is made:
//! the operator makes a cluster's node client before it reads the CA's
//! Secret; gateways and nodes read the CA's file again when it changes
//! (a replaced CA is trusted without a restart).

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::TrustedCa;

/// The CA a fleet's nodes are checked against, once known; until then
/// every TLS connection is refused.
#[derive(Debug, Default)]
pub struct FleetTrust {
    verifier: RwLock<Option<(Vec<CertificateDer<'static>>, Arc<WebPkiServerVerifier>)>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl FleetTrust {
    /// Trusts `ca` (only it) from now on; a CA already trusted is kept
    /// as is.
    pub fn set(&self, ca: &TrustedCa) -> Result<(), rustls::Error> {
        if let Some((current, _)) = &*self.verifier.read().expect("trust lock") {
            if current == ca.ders() {
                return Ok(());
            }
            tracing::info!("trusting the fleet's new CA ({ca:?})");
        }
        let mut roots = rustls::RootCertStore::empty();
        for der in ca.ders() {
            roots.add(der.clone())?;
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        *self.verifier.write().expect("trust lock") = Some((ca.ders().to_vec(), verifier));
        Ok(())
    }

    /// Trusts the CA of `ca`'s file, and reads that file again every
    /// `period` while anyone holds this, trusting what it then holds.
    pub fn watching(ca: &TrustedCa, period: std::time::Duration) -> Arc<Self> {
        let trust = Arc::new(Self::default());
        if let Err(e) = trust.set(ca) {
            tracing::warn!("cannot trust {ca:?}: {e}");
        }
        let this = Arc::downgrade(&trust);
        let path = ca.path().to_path_buf();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(trust) = this.upgrade() else { return };
                let outcome = TrustedCa::from_pem_file(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|ca| trust.set(&ca).map_err(|e| e.to_string()));
                if let Err(e) = outcome {
                    tracing::warn!("keeping the CA trusted: {e}");
                }
            }
        });
        trust
    }

    fn current(&self) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        self.verifier
            .read()
            .expect("trust lock")
            .as_ref()
            .map(|(_, v)| v.clone())
            .ok_or_else(|| rustls::Error::General("the fleet's CA is not known yet".into()))
    }

    /// A client configuration checking servers against this trust.
    pub fn client_config(self: &Arc<Self>) -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth()
    }
}

impl ServerCertVerifier for FleetTrust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
