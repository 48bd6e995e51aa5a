//! Ending connections whose peer stops taking what is sent. A response
//! the client does not read holds what the server has in flight for it
//! (a GET's rows and their share of the read memory) for as long as the
//! connection lives; without a bound a few such clients could hold all of
//! it. A write that makes no progress for the stall time fails, and the
//! connection ends with it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_io_timeout::TimeoutStream;

/// How long a write may make no progress before its connection ends, by
/// default: far longer than any client that reads takes, and what common
/// web servers allow (nginx's `send_timeout`).
pub const DEFAULT_CLIENT_STALL: Duration = Duration::from_secs(60);

/// A connection whose writes fail after `stall` without progress.
pub type Guarded<S> = Pin<Box<TimeoutStream<S>>>;

/// `stream`, its writes failing after `stall` without progress.
pub fn guard<S: AsyncRead + AsyncWrite>(stream: S, stall: Duration) -> Guarded<S> {
    let mut stream = TimeoutStream::new(stream);
    stream.set_write_timeout(Some(stall));
    Box::pin(stream)
}

/// A listener whose connections are guarded (for `axum::serve`).
pub struct GuardedListener {
    listener: TcpListener,
    stall: Duration,
}

impl GuardedListener {
    /// Guards the connections `listener` accepts with `stall`.
    pub fn new(listener: TcpListener, stall: Duration) -> Self {
        Self { listener, stall }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = Guarded<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        (guard(stream, self.stall), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_the_peer_never_takes_fails_after_the_stall_and_one_it_takes_does_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let (accepted, _) = listener.accept().await.unwrap();
        let peer = peer.await.unwrap();
        let mut guarded = guard(accepted, Duration::from_millis(300));
        // Taken by the sockets' buffers: it goes through.
        guarded.write_all(&[7u8; 1024]).await.unwrap();
        // Far more than the buffers hold, and the peer reads nothing.
        let stalled = tokio::time::timeout(
            Duration::from_secs(30),
            guarded.write_all(&vec![7u8; 256 << 20]),
        )
        .await
        .expect("the stall ends the write, not the test's bound");
        assert_eq!(stalled.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        drop(peer);
    }
}
