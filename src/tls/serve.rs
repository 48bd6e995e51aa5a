//! Serving a router (or any HTTP service) over plain HTTP or over TLS,
//! until a shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::ServingCert;

/// How long a client may take over its TLS handshake (a client that
/// connects and says nothing holds no task past it).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's headers, counted from
/// the end of its previous request: also how long an idle keep-alive
/// connection is kept (hyper's timer runs while it waits). Longer than
/// clients keep idle connections (reqwest's and Go's pools 90 s), so a
/// client closes an idle one before the server does and never sends a
/// request on one the server is closing (through a kubectl port-forward
/// the server's close is not seen until the next request).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a shutdown waits for the requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Errors of one connection, not of the listener: accept the next at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// What a server serving TLS reports: when the certificate it serves
/// expires, and the handshakes that did not become connections.
#[derive(Clone)]
pub struct TlsMetrics {
    /// Set to the expiry of the certificate served (Unix seconds).
    pub certificate_expiry: prometheus::IntGauge,
    /// Counts the handshakes refused and abandoned.
    pub handshakes: HandshakeCounters,
}

/// Counters of the TLS handshakes that did not become connections, by
/// whose doing.
#[derive(Clone)]
pub struct HandshakeCounters {
    /// Handshakes that failed or timed out: a caller without the CA (its
    /// alert), plain HTTP, a malformed message, a caller that stalls.
    pub failed: prometheus::IntCounter,
    /// Handshakes the caller ended without a word before they finished:
    /// a call cancelled while it connected (a read that had its answers
    /// from other nodes), a TCP probe. Nothing was refused.
    pub abandoned: prometheus::IntCounter,
}

/// How a TLS handshake that did not finish ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandshakeEnd {
    /// The handshake failed: the caller's alert, a message that is not
    /// TLS, a certificate refused.
    Failed,
    /// The caller closed or reset the connection without an alert.
    Abandoned,
}

/// How a handshake that ended in `error` ended: the connection closed or
/// reset by the caller is abandoned (a TLS client that refuses the
/// server's certificate says so in an alert first), anything else failed.
fn handshake_end(error: &std::io::Error) -> HandshakeEnd {
    use std::io::ErrorKind::*;
    match error.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => HandshakeEnd::Abandoned,
        _ => HandshakeEnd::Failed,
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then waits
/// for the requests in progress (over TLS at most `SHUTDOWN_GRACE`): over
/// TLS with `tls`, its files read again every `TLS_RELOAD_PERIOD` while
/// it serves, else plain HTTP. A connection ends once a write to it made
/// no progress for `stall` (`stalled_clients`).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<Arc<ServingCert>>,
    stall: Duration,
    metrics: TlsMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        let listener = crate::stalled_clients::GuardedListener::new(listener, stall);
        return axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
    };
    tls.watch(super::TLS_RELOAD_PERIOD, metrics.certificate_expiry);
    serve_tls(
        listener,
        TowerToHyperService::new(router),
        tls,
        stall,
        metrics.handshakes,
        shutdown,
    )
    .await
}

/// Counts a failed handshake, logged with where the caller can be found:
/// a client without the CA, or a bug.
fn refused(counters: &HandshakeCounters, peer: std::net::SocketAddr, why: &str) {
    tracing::info!(%peer, "refused a TLS handshake: {why}");
    counters.failed.inc();
}

/// Serves `service` over TLS with `tls` on `listener` until `shutdown`
/// completes, then waits at most `SHUTDOWN_GRACE` for the requests in
/// progress. Handshakes that did not become connections are counted in
/// `handshakes`.
pub async fn serve_tls<S, B>(
    listener: TcpListener,
    service: S,
    tls: Arc<ServingCert>,
    stall: Duration,
    handshakes: HandshakeCounters,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let acceptor = TlsAcceptor::from(tls.server_config());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) if is_connection_error(&e) => continue,
                    Err(e) => {
                        // Out of descriptors and the like: wait, do not spin.
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let acceptor = acceptor.clone();
                let service = service.clone();
                let watcher = graceful.watcher();
                let counters = handshakes.clone();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(crate::stalled_clients::guard(socket, stall))).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) if handshake_end(&e) == HandshakeEnd::Abandoned => {
                            tracing::debug!(%peer, "a caller left its TLS handshake: {e}");
                            return counters.abandoned.inc();
                        }
                        Ok(Err(e)) => return refused(&counters, peer, &e.to_string()),
                        Err(_) => return refused(&counters, peer, "timed out"),
                    };
                    let mut http = Builder::new(TokioExecutor::new());
                    http.http1()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT);
                    let connection = http
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(connection).await {
                        tracing::debug!("TLS connection ended: {e}");
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in progress after {SHUTDOWN_GRACE:?}: ending them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::LocalCa;
    use tokio::io::AsyncWriteExt as _;

    /// Serves a router over TLS on a new loopback port; its address and
    /// the handshake counters.
    async fn serve_counted(dir: &std::path::Path) -> (std::net::SocketAddr, HandshakeCounters) {
        let issued = LocalCa::generate("test")
            .unwrap()
            .issue(&["localhost".to_string()], Duration::from_secs(3600))
            .unwrap();
        let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert_path, &issued.cert_pem).unwrap();
        std::fs::write(&key_path, &issued.key_pem).unwrap();
        let serving = ServingCert::load(&cert_path, &key_path).unwrap();
        let handshakes = HandshakeCounters {
            failed: prometheus::IntCounter::new("failed", "test").unwrap(),
            abandoned: prometheus::IntCounter::new("abandoned", "test").unwrap(),
        };
        let metrics = TlsMetrics {
            certificate_expiry: prometheus::IntGauge::new("expiry", "test").unwrap(),
            handshakes: handshakes.clone(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve(
            listener,
            app,
            Some(serving),
            Duration::from_secs(30),
            metrics,
            std::future::pending(),
        ));
        (address, handshakes)
    }

    /// Waits until `counter` reaches `count`, then checks it went no
    /// further.
    async fn counted(counter: &prometheus::IntCounter, count: u64, what: &str) {
        let reached = async {
            while counter.get() < count {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), reached)
            .await
            .unwrap_or_else(|_| panic!("{what}: {} counted of {count}", counter.get()));
        assert_eq!(counter.get(), count, "{what}");
    }

    #[tokio::test]
    async fn a_caller_leaving_mid_handshake_is_counted_abandoned_and_only_a_refused_one_failed() {
        let dir = tempfile::tempdir().unwrap();
        let (address, handshakes) = serve_counted(dir.path()).await;
        // A TCP probe: connects and closes.
        drop(tokio::net::TcpStream::connect(address).await.unwrap());
        // A call cancelled while it connected: part of a ClientHello, then
        // the connection closed.
        let mut cut = tokio::net::TcpStream::connect(address).await.unwrap();
        cut.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00])
            .await
            .unwrap();
        drop(cut);
        counted(&handshakes.abandoned, 2, "the callers that left").await;
        assert_eq!(handshakes.failed.get(), 0, "nobody was refused yet");

        // Plain HTTP, and a client that does not trust the CA (its alert):
        // refused.
        let mut plain = tokio::net::TcpStream::connect(address).await.unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let untrusting = crate::http::client()
            .get(format!("https://localhost:{}/", address.port()))
            .send()
            .await;
        assert!(untrusting.is_err());
        counted(&handshakes.failed, 2, "the refused callers").await;
        assert_eq!(handshakes.abandoned.get(), 2, "no refusal counted as left");
        drop(plain);
    }
}
