//! Binding server sockets. `[::]` listens on IPv6 and IPv4 at once where
//! the kernel has IPv6 (a pod's `localhost` may resolve to `::1`, which is
//! how `kubectl port-forward` and some probes connect); on a kernel
//! without IPv6 it falls back to `0.0.0.0` on the same port.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::TcpListener;

/// Binds `addr`, falling back from `[::]` to `0.0.0.0` without IPv6.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() && no_ipv6(&e) => {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::info!(%addr, "no IPv6 here ({e}): listening on {v4}");
            TcpListener::bind(v4)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {v4}: {e}"))
        }
        Err(e) => Err(anyhow::anyhow!("cannot listen on {addr}: {e}")),
    }
}

/// Serves `router` over plain HTTP on `listener` in a task of its own, for
/// as long as the process runs (a metrics and probes port); a failure is
/// logged.
pub fn serve_metrics_in_background(listener: TcpListener, router: axum::Router) {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!("the metrics listener stopped: {e}");
        }
    });
}

fn no_ipv6(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_unspecified_ipv6_address_takes_ipv4_connections_too() {
        let listener = super::bind("[::]:0".parse().unwrap()).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        accept.await.unwrap().unwrap();
    }
}
