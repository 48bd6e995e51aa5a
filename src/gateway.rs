//! `redstuff gateway`: the HTTP front door for users.
//!
//! | method and path | what |
//! |---|---|
//! | PUT `/v1/blobs` | stores the request body (streamed) as a blob; answers `{"id", "size", ...}` |
//! | GET `/v1/blobs/{id}` | streams the blob back, segment by segment |
//! | HEAD `/v1/blobs/{id}` | whether it exists, and its size |
//! | DELETE `/v1/blobs/{id}` | removes it from every node |
//! | GET `/v1/status` | the fleet's state, where a control loop publishes it (`redstuff dev`) |
//!
//! An upload is spooled to a temporary file as it streams in (it is read
//! twice when it spans several segments, see `client`), so memory holds one
//! segment at a time whatever the blob's size. Nothing is visible before
//! the write is durable: a failed or interrupted upload leaves no blob id
//! behind (slivers already sent become garbage for the control loop).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use futures_util::StreamExt;
use prometheus::Registry;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::api_error::ApiError;
use crate::client::{BlobClient, BlobIoError};
use crate::codec::BlobId;
use crate::fleet::FleetMap;
use crate::metrics::GatewayMetrics;
use crate::wire::StoredBlob;

/// Where the gateway learns the fleet map.
#[derive(Debug, Clone)]
pub enum FleetSource {
    /// A JSON file rewritten by the control loop; re-read when it changes.
    File(PathBuf),
    /// A fixed map.
    Fixed(FleetMap),
}

/// Shared fleet status published by a control loop, served at /v1/status.
pub type StatusBoard = Arc<RwLock<Option<serde_json::Value>>>;

/// How a gateway is set up.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The fleet map.
    pub fleet: FleetSource,
    /// Where uploads are spooled.
    pub spool_dir: PathBuf,
    /// Largest blob accepted, in bytes.
    pub max_blob_bytes: u64,
}

struct GatewayState {
    fleet: FleetSource,
    map: RwLock<(Option<FleetMap>, Option<SystemTime>)>,
    http: reqwest::Client,
    registry: Registry,
    metrics: GatewayMetrics,
    spool_dir: PathBuf,
    max_blob_bytes: u64,
    status: StatusBoard,
    /// Metrics of the process around the gateway (the `dev` loop's).
    extra_metrics: RwLock<Option<Registry>>,
}

impl GatewayState {
    fn refresh_map(&self) {
        let FleetSource::File(path) = &self.fleet else {
            return;
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified.is_none() || modified == self.map.read().expect("not poisoned").1 {
            return;
        }
        match FleetMap::read(path) {
            Ok(map) => *self.map.write().expect("not poisoned") = (Some(map), modified),
            Err(e) => tracing::warn!("keeping the current fleet map: {e:#}"),
        }
    }

    fn client(&self) -> Result<BlobClient, ApiError> {
        self.refresh_map();
        let map = self
            .map
            .read()
            .expect("not poisoned")
            .0
            .clone()
            .ok_or_else(|| {
                ApiError::unavailable("no fleet map yet: the control loop has not published one")
            })?;
        Ok(BlobClient::new(
            self.http.clone(),
            map,
            Some(self.metrics.clone()),
        ))
    }
}

/// A gateway bound to its address.
pub struct Gateway {
    listener: TcpListener,
    router: Router,
    state: Arc<GatewayState>,
}

impl Gateway {
    /// Binds `addr`; `status` is what /v1/status serves.
    pub async fn bind(
        config: GatewayConfig,
        addr: SocketAddr,
        status: StatusBoard,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.spool_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create spool dir {}: {e}",
                config.spool_dir.display()
            )
        })?;
        let registry = Registry::new();
        let metrics = GatewayMetrics::new(&registry);
        let initial = match &config.fleet {
            FleetSource::Fixed(map) => Some(map.clone()),
            FleetSource::File(_) => None,
        };
        let state = Arc::new(GatewayState {
            fleet: config.fleet,
            map: RwLock::new((initial, None)),
            http: crate::http::client_builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(300))
                .build()?,
            registry,
            metrics,
            spool_dir: config.spool_dir,
            max_blob_bytes: config.max_blob_bytes,
            status,
            extra_metrics: RwLock::new(None),
        });
        state.refresh_map();
        let router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .route("/v1/status", get(status_json))
            .route("/v1/blobs", put(put_blob).post(put_blob))
            .route(
                "/v1/blobs/{id}",
                get(get_blob).head(head_blob).delete(delete_blob),
            )
            .fallback(|| async { ApiError::not_found("no such route; the API lives under /v1") })
            .layer(middleware::from_fn_with_state(state.clone(), track))
            .layer(DefaultBodyLimit::disable())
            .with_state(state.clone());
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        Ok(Self {
            listener,
            router,
            state,
        })
    }

    /// Also serves `registry` at /metrics (the control loop's metrics, when
    /// the gateway runs inside `redstuff dev`).
    pub fn with_extra_metrics(self, registry: Registry) -> Self {
        *self.state.extra_metrics.write().expect("not poisoned") = Some(registry);
        self
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }
}

async fn track(State(state): State<Arc<GatewayState>>, request: Request, next: Next) -> Response {
    let op = match (request.method().as_str(), request.uri().path()) {
        ("PUT" | "POST", "/v1/blobs") => "put",
        ("GET", path) if path.starts_with("/v1/blobs/") => "get",
        ("HEAD", _) => "head",
        ("DELETE", _) => "delete",
        _ => "other",
    };
    let start = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .request_duration
        .with_label_values(&[op])
        .observe(start.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .with_label_values(&[op, response.status().as_str()])
        .inc();
    response
}

async fn readyz(State(state): State<Arc<GatewayState>>) -> Result<&'static str, ApiError> {
    state.client().map(|_| "ready")
}

async fn metrics_text(State(state): State<Arc<GatewayState>>) -> impl IntoResponse {
    let mut text = crate::metrics::render(&state.registry);
    if let Some(extra) = state.extra_metrics.read().expect("not poisoned").as_ref() {
        text.push_str(&crate::metrics::render(extra));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn status_json(
    State(state): State<Arc<GatewayState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .status
        .read()
        .expect("not poisoned")
        .clone()
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found("no fleet status is published here (it comes from `redstuff dev`)")
        })
}

fn io_error(e: BlobIoError) -> ApiError {
    match e {
        BlobIoError::NotFound(_) => ApiError::not_found(e.to_string()),
        BlobIoError::NotDurable { .. } | BlobIoError::Unreadable { .. } | BlobIoError::Map(_) => {
            ApiError::unavailable(e.to_string())
        }
        BlobIoError::Inconsistent(_) => ApiError::unprocessable(e.to_string()),
        BlobIoError::Encode(ref inner) => match inner {
            crate::codec::EncodeError::Config(_) => ApiError::too_large(e.to_string()),
            crate::codec::EncodeError::Io(_) => ApiError::internal(e.to_string()),
        },
        BlobIoError::Io(_) => ApiError::internal(e.to_string()),
    }
}

async fn put_blob(
    State(state): State<Arc<GatewayState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let client = state.client()?;
    let spool = tempfile::NamedTempFile::new_in(&state.spool_dir)
        .map_err(|e| ApiError::internal(format!("cannot spool the upload: {e}")))?;
    let mut file = tokio::fs::File::from_std(
        spool
            .reopen()
            .map_err(|e| ApiError::internal(format!("cannot spool the upload: {e}")))?,
    );
    let mut received: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("upload interrupted: {e}")))?;
        received += chunk.len() as u64;
        if received > state.max_blob_bytes {
            return Err(ApiError::too_large(format!(
                "blob larger than the gateway's limit of {} bytes",
                state.max_blob_bytes
            )));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal(format!("cannot spool the upload: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::internal(format!("cannot spool the upload: {e}")))?;
    drop(file);
    let outcome = client.write_file(spool.path()).await.map_err(io_error)?;
    state.metrics.put_bytes.inc_by(received);
    let stored = StoredBlob {
        id: outcome.metadata.blob_id().to_string(),
        size: outcome.metadata.len(),
        shards_acknowledged: outcome.acknowledged.len(),
        shards_missing: outcome.missing.into_iter().collect(),
    };
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

fn parse_id(text: &str) -> Result<BlobId, ApiError> {
    text.parse()
        .map_err(|e| ApiError::bad_request(format!("invalid blob id {text:?}: {e}")))
}

async fn head_blob(
    State(state): State<Arc<GatewayState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let metadata = state.client()?.metadata(&id).await.map_err(io_error)?;
    Ok((
        [
            (header::CONTENT_LENGTH, metadata.len().to_string()),
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        ],
        Body::empty(),
    )
        .into_response())
}

async fn get_blob(
    State(state): State<Arc<GatewayState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let client = state.client()?;
    let metadata = client.metadata(&id).await.map_err(io_error)?;
    let len = metadata.len();
    // The first segment is read before answering, so a blob that cannot be
    // read gets an error status rather than a broken 200.
    let first = client.read_segment(&metadata, 0).await.map_err(io_error)?;
    state.metrics.get_bytes.inc_by(first.len() as u64);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
    tx.send(Ok(first.into())).await.expect("receiver alive");
    let metrics = state.metrics.clone();
    tokio::spawn(async move {
        for index in 1..metadata.segment_count() as u32 {
            match client.read_segment(&metadata, index).await {
                Ok(data) => {
                    metrics.get_bytes.inc_by(data.len() as u64);
                    if tx.send(Ok(data.into())).await.is_err() {
                        return; // the reader went away
                    }
                }
                Err(e) => {
                    tracing::warn!("read of {} failed: {e}", metadata.blob_id());
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((
        [
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        ],
        body,
    )
        .into_response())
}

async fn delete_blob(
    State(state): State<Arc<GatewayState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    if state.client()?.delete(&id).await {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "blob {id} not found on any node"
        )))
    }
}
