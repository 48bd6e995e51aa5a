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
/// expires, and how many handshakes failed.
#[derive(Clone)]
pub struct TlsMetrics {
    /// Set to the expiry of the certificate served (Unix seconds).
    pub certificate_expiry: prometheus::IntGauge,
    /// Counts failed or timed-out handshakes.
    pub handshake_failures: prometheus::IntCounter,
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
        Some(metrics.handshake_failures),
        shutdown,
    )
    .await
}

/// Serves `service` over TLS with `tls` on `listener` until `shutdown`
/// completes, then waits at most `SHUTDOWN_GRACE` for the requests in
/// progress. Failed handshakes are counted in `handshake_failures`.
pub async fn serve_tls<S, B>(
    listener: TcpListener,
    service: S,
    tls: Arc<ServingCert>,
    stall: Duration,
    handshake_failures: Option<prometheus::IntCounter>,
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
                let failures = handshake_failures.clone();
                tokio::spawn(async move {
                    // Said where the caller can be found: a refused
                    // handshake is a client without the CA, or a bug.
                    let failed = |why: String| {
                        tracing::info!(%peer, "refused a TLS handshake: {why}");
                        if let Some(counter) = &failures {
                            counter.inc();
                        }
                    };
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(crate::stalled_clients::guard(socket, stall))).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return failed(e.to_string()),
                        Err(_) => return failed("timed out".into()),
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
