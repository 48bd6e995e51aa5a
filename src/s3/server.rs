//! Serving the S3 front: its listener (path style always, virtual-hosted
//! style under a base domain when one is set), SigV4 against the access
//! keys of its keyring (re-read while it runs), and the collector that
//! deletes blobs no key or upload refers to after a grace period and
//! aborts uploads left unfinished too long.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

use super::front::{now_ms, Front};
use super::index::{Claim, Index};
use super::keyring::{KeySource, Keyring};
use crate::client::DeleteOutcome;
use crate::gateway::Door;
use crate::held_back_body;
use crate::metrics::S3Metrics;
use crate::refused_body::{self, WatchedBody};

/// Where the index lives.
#[derive(Clone, PartialEq, Eq)]
pub enum IndexLocation {
    /// An embedded file (redb): one gateway.
    File(PathBuf),
    /// A PostgreSQL database (its URL): several gateways.
    Postgres(String),
}

impl std::fmt::Debug for IndexLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IndexLocation::File(path) => write!(f, "{}", path.display()),
            // The URL may carry a password.
            IndexLocation::Postgres(_) => write!(f, "PostgreSQL"),
        }
    }
}

/// How the S3 front is set up.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Where the index lives.
    pub index: IndexLocation,
    /// Where the access keys clients sign with come from (each source
    /// holding at least one key at start).
    pub keys: Vec<KeySource>,
    /// How often the key files are read again.
    pub keys_reload_every: Duration,
    /// Serve virtual-hosted style under this domain (`bucket.DOMAIN`).
    pub domain: Option<String>,
    /// How long a blob no key refers to stays before it is deleted.
    pub collect_after: Duration,
    /// How old an unfinished multipart upload gets before it is aborted.
    pub upload_max_age: Duration,
    /// How often the collector looks.
    pub collect_every: Duration,
}

/// The S3 front bound to its address.
pub struct S3Server {
    listener: TcpListener,
    front: Front,
    keyring: Keyring,
    config: S3Config,
}

impl S3Server {
    /// Opens the index and binds the listener.
    pub async fn bind(config: S3Config, door: Door) -> anyhow::Result<Self> {
        let keyring = Keyring::load(config.keys.clone())
            .map_err(|e| anyhow::anyhow!("S3 access keys: {e}"))?;
        let location = config.index.clone();
        let index = tokio::task::spawn_blocking(move || Index::at(&location))
            .await?
            .with_context(|| format!("cannot open the S3 index ({:?})", config.index))?;
        let metrics = S3Metrics::new(door.registry());
        let listener = crate::listen::bind(config.listen).await?;
        let index = Arc::new(index);
        door.guard_deletes_with(index.clone());
        Ok(Self {
            listener,
            front: Front {
                door,
                index,
                metrics,
            },
            keyring,
            config,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// Its URL: `https://` when the gateway serves TLS (S3 then serves the
    /// gateway's certificate too).
    pub fn url(&self) -> String {
        let scheme = if self.front.door.tls().is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.local_addr())
    }

    /// Serves until `shutdown` completes; the collector runs meanwhile.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let mut builder = S3ServiceBuilder::new(self.front.clone());
        builder.set_auth(self.keyring.clone());
        if let Some(domain) = &self.config.domain {
            builder.set_host(
                super::host::BaseDomain::new(domain)
                    .map_err(|e| anyhow::anyhow!("S3 domain: {e}"))?,
            );
        }
        let s3 = builder.build();
        let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let s3 = s3.clone();
            let expects_continue = held_back_body::expects_continue(request.headers());
            let request = if refused_body::lingers(request.headers()) {
                request.map(|body| s3s::Body::http_body(WatchedBody::new(body)))
            } else {
                request.map(s3s::Body::from)
            };
            async move {
                let mut response = s3.call(request).await?;
                held_back_body::mark_close(expects_continue, &mut response);
                Ok::<_, s3s::HttpError>(response)
            }
        });
        let collector = tokio::spawn(collect_forever(self.front.clone(), self.config.clone()));
        let key_reloads = tokio::spawn(
            self.keyring
                .clone()
                .refresh_forever(self.config.keys_reload_every),
        );
        let served = match self.front.door.tls() {
            Some(tls) => {
                let metrics = self.front.door.metrics();
                let handshakes = crate::tls::HandshakeCounters {
                    failed: metrics.tls_handshake_failures.clone(),
                    abandoned: metrics.tls_handshakes_abandoned.clone(),
                };
                let stall = self.front.door.client_stall();
                crate::tls::serve_tls(self.listener, service, tls, stall, handshakes, shutdown)
                    .await
            }
            None => {
                serve_plain(
                    self.listener,
                    self.front.door.client_stall(),
                    service,
                    shutdown,
                )
                .await;
                Ok(())
            }
        };
        collector.abort();
        key_reloads.abort();
        Ok(served?)
    }
}

/// Serves `service` over plain HTTP on `listener` until `shutdown`; a
/// connection ends once a write to it made no progress for `stall`.
async fn serve_plain<S, B>(
    listener: TcpListener,
    stall: std::time::Duration,
    service: S,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) where
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
    let http = Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else { continue };
                let connection = http
                    .serve_connection(
                        TokioIo::new(crate::stalled_clients::guard(socket, stall)),
                        service.clone(),
                    )
                    .into_owned();
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!("S3 connection ended: {e}");
                    }
                });
            }
        }
    }
}

async fn collect_forever(front: Front, config: S3Config) {
    let mut tick = tokio::time::interval(config.collect_every);
    loop {
        tick.tick().await;
        if let Err(e) = collect_once(&front, &config).await {
            tracing::warn!("S3 collection: {e:#}");
        }
    }
}

/// One round of the collector: abandoned uploads aborted, then blobs
/// unreferenced past the grace period claimed and deleted.
pub async fn collect_once(front: &Front, config: &S3Config) -> anyhow::Result<()> {
    let now = now_ms();
    let index = front.index.clone();
    let max_age = config.upload_max_age.as_millis() as u64;
    let abandoned = {
        let index = index.clone();
        tokio::task::spawn_blocking(move || index.uploads_idle_since(now.saturating_sub(max_age)))
            .await??
    };
    for (id, upload) in abandoned {
        let index = index.clone();
        let result = tokio::task::spawn_blocking(move || {
            index.abort_upload((&upload.bucket, &upload.key, &id), now)
        })
        .await?;
        if result.is_ok() {
            front.metrics.uploads_expired.inc();
        }
    }
    let grace = config.collect_after.as_millis() as u64;
    let claimed = {
        let index = index.clone();
        tokio::task::spawn_blocking(move || {
            index.claim_unreferenced(now.saturating_sub(grace), now)
        })
        .await??
    };
    if claimed.is_empty() {
        return Ok(());
    }
    let client = front.door.client().map_err(anyhow::Error::msg)?;
    for Claim { blob, token } in claimed {
        // A long round may outlast a claim's lease: another collector may
        // have taken it over, and a key may refer to the blob again.
        let checked_at = now_ms();
        let held = {
            let (index, blob) = (index.clone(), blob.clone());
            tokio::task::spawn_blocking(move || index.holds_claim(&blob, token, checked_at))
                .await??
        };
        if !held {
            continue;
        }
        let Ok(id) = blob.parse() else {
            tracing::warn!(%blob, "the index holds a bad blob id; forgetting it");
            let index = index.clone();
            tokio::task::spawn_blocking(move || index.collected(&blob, token)).await??;
            continue;
        };
        let index = index.clone();
        // Only writes up to the check: a collector stopped past the claim's
        // lease right after it must not delete the same bytes stored again
        // through S3 meanwhile (their write is newer than the check).
        let fence = checked_at.saturating_mul(1_000_000);
        match client.delete_written_before(&id, fence).await {
            Ok(DeleteOutcome::Deleted { .. }) | Ok(DeleteOutcome::NotFound) => {
                front.metrics.blobs_collected.inc();
                tokio::task::spawn_blocking(move || index.collected(&blob, token)).await??;
            }
            Err(e @ crate::client::BlobIoError::WrittenSince { .. }) => {
                tracing::info!(%blob, "not collected: {e}");
                tokio::task::spawn_blocking(move || index.release(&blob, token)).await??;
            }
            // Given back: the next round claims it again.
            Err(e) => {
                tracing::warn!(%blob, "collecting: {e}");
                tokio::task::spawn_blocking(move || index.release(&blob, token)).await??;
            }
        }
    }
    Ok(())
}
