//! The command-line arguments of `redstuff dev`, `node` and `gateway`.

use std::path::PathBuf;

use clap::Args;
use redstuff::codec::DEFAULT_SEGMENT_SIZE;
use redstuff::units::parse_bytes;

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Shard count n (4 to 1000); f = (n - 1) / 3 shards may be lost or lie.
    #[arg(long, default_value_t = 7)]
    pub(crate) shards: u16,
    /// Node processes; shards are spread evenly over them.
    #[arg(long, default_value_t = 7)]
    pub(crate) nodes: usize,
    /// Where nodes keep their data, and the fleet its state.
    #[arg(long, default_value = "redstuff-dev")]
    pub(crate) data_dir: PathBuf,
    /// The gateway's address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub(crate) gateway_addr: std::net::SocketAddr,
    /// Segment size of new blobs.
    #[arg(long, default_value_t = DEFAULT_SEGMENT_SIZE, value_parser = parse_bytes)]
    pub(crate) segment_size: u64,
    /// How often the control loop looks at the fleet, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub(crate) period_ms: u64,
    /// Repairs in flight at most.
    #[arg(long, default_value_t = 4)]
    pub(crate) max_concurrent_repairs: usize,
    /// Seconds nodes rest between two passes re-reading and checking
    /// every stored file (0: never).
    #[arg(long, default_value_t = 60)]
    pub(crate) scrub_interval_secs: u64,
    /// Deadline of every call to a node, in seconds: a node silent longer
    /// (stopped, hung, partitioned) is passed over.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) node_timeout_secs: f64,
    /// Nodes remove uploads never committed after this many seconds idle.
    #[arg(long, default_value_t = 900)]
    pub(crate) staged_ttl_secs: u64,
    /// Serve GET, HEAD and status without a user token.
    #[arg(long)]
    pub(crate) anonymous_reads: bool,
    /// Uploads the gateway handles at once; four times as many more wait for a slot
    /// (--upload-wait-secs), and the rest get 503 with Retry-After.
    #[arg(long, default_value_t = 8)]
    pub(crate) max_uploads: usize,
    /// Seconds an upload past --max-uploads waits for a slot before it gets
    /// 503 (0: refused at once).
    #[arg(long, default_value = "10", value_parser = redstuff::units::parse_seconds)]
    pub(crate) upload_wait_secs: std::time::Duration,
    /// Seconds the pairs of an upload whose client was cut off stay on the
    /// nodes, so that a retry of the same bytes sends only what they lack
    /// (0: removed at once); also how long a resumable upload
    /// (/v1/uploads) that takes no bytes is kept (at least 10 s).
    #[arg(long, default_value = "120", value_parser = redstuff::units::parse_seconds)]
    pub(crate) cut_upload_kept_secs: std::time::Duration,
    /// Bytes of segments the gateway's uploads may hold in memory
    /// together (about 4.7x a 64 MiB segment each at n = 7, 5.5x at n =
    /// 1000, its slivers and the encoder's buffers); an upload past it
    /// waits, reading its body no further.
    #[arg(long, default_value = "2GiB", value_parser = parse_bytes)]
    pub(crate) upload_memory: u64,
    /// Bytes of rows the gateway's reads may hold in memory together,
    /// besides cached rows no reader holds (a 64 MiB segment read whole holds 64 MiB
    /// until its last byte has left for the client; rows several readers
    /// hold count once); a read past it waits (--read-wait-secs for its
    /// first segment, then 503 with Retry-After).
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    pub(crate) read_memory: u64,
    /// Seconds a read waits for its first segment's share of --read-memory
    /// before it gets 503 (0: refused at once).
    #[arg(long, default_value = "10", value_parser = redstuff::units::parse_seconds)]
    pub(crate) read_wait_secs: std::time::Duration,
    /// Seconds a response of the gateway or S3 may make no progress (its
    /// client reads nothing), or an upload's body bring nothing, before
    /// its connection ends, giving back what it held (more than 0).
    #[arg(long, default_value = "60", value_parser = redstuff::units::parse_positive_seconds)]
    pub(crate) client_stall_secs: std::time::Duration,
    /// The S3 endpoint's address. Keys come from REDSTUFF_S3_ACCESS_KEY and
    /// REDSTUFF_S3_SECRET_KEY when set, else from DATA_DIR/s3-credentials
    /// (generated at first start); further profiles in that file are
    /// further keys (the file is read again every few seconds).
    #[arg(long, default_value = "127.0.0.1:7780")]
    pub(crate) s3_addr: std::net::SocketAddr,
    /// Serve no S3 endpoint.
    #[arg(long)]
    pub(crate) no_s3: bool,
    /// Seconds a blob no S3 key or upload refers to any more is kept
    /// before it is deleted.
    #[arg(long, default_value_t = 600)]
    pub(crate) s3_collect_after_secs: u64,
    /// Seconds after which an unfinished multipart upload that received
    /// no part meanwhile is aborted.
    #[arg(long, default_value_t = 86_400)]
    pub(crate) s3_upload_max_age_secs: u64,
    /// Keep the S3 index in PostgreSQL at this URL
    /// (postgresql://USER:PASSWORD@HOST:PORT/DB) instead of DATA_DIR/s3-index.redb.
    #[arg(long, env = "REDSTUFF_S3_INDEX_POSTGRES", hide_env_values = true)]
    pub(crate) s3_index_postgres: Option<String>,
    /// Serve virtual-hosted-style S3 (BUCKET.DOMAIN, resolving to this
    /// machine) besides path style.
    #[arg(long)]
    pub(crate) s3_domain: Option<String>,
    /// Serve TLS: nodes, the gateway and S3 serve a certificate from a CA
    /// kept in DATA_DIR/tls/ (made at the first start; clients trust
    /// DATA_DIR/tls/ca.crt); the gateway, the loop and the nodes' repairs
    /// trust that CA.
    #[arg(long)]
    pub(crate) tls: bool,
    /// Test only: make node I serve corrupted slivers and symbols.
    #[arg(long, hide = true)]
    pub(crate) test_corrupt_node: Vec<usize>,
    /// Test only: make node I replay other nodes' valid slivers and symbols.
    #[arg(long, hide = true)]
    pub(crate) test_replaying_node: Vec<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// The node's name.
    #[arg(long)]
    pub(crate) name: String,
    /// Data directory (created if missing).
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    /// Address to listen on (port 0: any free port); the first line on
    /// stdout is {"event": "listening", "url": ...}.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(crate) listen: std::net::SocketAddr,
    /// Also serve /metrics, /healthz and /readyz on this address (no token).
    #[arg(long)]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    /// Shards owned, fixed (e.g. 0,3,5).
    #[arg(long, value_delimiter = ',', conflicts_with = "shards_file")]
    pub(crate) shards: Vec<u16>,
    /// JSON file {"shards": [...]} re-read when it changes.
    #[arg(long)]
    pub(crate) shards_file: Option<PathBuf>,
    /// File of cluster tokens (one per line, the first sent to peers);
    /// re-read while the node runs. Every route but /healthz, /readyz and
    /// /metrics requires one of them.
    #[arg(long)]
    pub(crate) token_file: PathBuf,
    /// The fleet map (JSON), where the node finds its peers for repairs;
    /// re-read when it changes.
    #[arg(long)]
    pub(crate) fleet: Option<PathBuf>,
    /// Cap on stored bytes; writes past it answer 507.
    #[arg(long, value_parser = parse_bytes)]
    pub(crate) capacity: Option<u64>,
    /// Largest metadata accepted.
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    pub(crate) max_metadata: u64,
    /// Parsed metadata kept in memory.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    pub(crate) metadata_cache: u64,
    /// Re-read and check every stored file, this many seconds after the
    /// last pass ended (0: never).
    #[arg(long, default_value_t = 86400)]
    pub(crate) scrub_interval_secs: u64,
    /// Bytes per second the scrub reads at most (0: no limit), so client
    /// reads and repairs keep the disk.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    pub(crate) scrub_max_bytes_per_sec: u64,
    /// Deadline of every call to a peer, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) node_timeout_secs: f64,
    /// Remove uploads never committed after this many seconds idle.
    #[arg(long, default_value_t = 900)]
    pub(crate) staged_ttl_secs: u64,
    /// Delete quarantined files after this many seconds.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub(crate) quarantine_retention_secs: u64,
    /// Serve the API over TLS with this certificate chain (PEM, the node's
    /// first), read again when it changes; --metrics-listen stays plain.
    #[arg(long, requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Check peers serving TLS against this CA (PEM), read again when it
    /// changes.
    #[arg(long)]
    pub(crate) tls_ca: Option<PathBuf>,
    /// Test only: flip a bit in every sliver and symbol served.
    #[arg(long, hide = true)]
    pub(crate) test_corrupt_reads: bool,
    /// Test only: serve the next shard's valid slivers and symbols instead of its own.
    #[arg(long, hide = true)]
    pub(crate) test_replay_reads: bool,
}

#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// The fleet map file (JSON), re-read when it changes.
    #[arg(long)]
    pub(crate) fleet: PathBuf,
    /// Address to listen on (the first line on stdout is {"event":
    /// "listening", "url": URL}, with "metrics": URL under --metrics-listen).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub(crate) listen: std::net::SocketAddr,
    /// Where S3 uploads are spooled while their checksums are verified
    /// (PUT /v1/blobs streams without a spool).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("redstuff-spool"))]
    pub(crate) spool_dir: PathBuf,
    /// Largest blob accepted.
    #[arg(long, default_value = "1TiB", value_parser = parse_bytes)]
    pub(crate) max_blob: u64,
    /// Bytes the spool may hold for S3 uploads in flight (SlowDown beyond;
    /// default: whatever its disk has free).
    #[arg(long, value_parser = parse_bytes)]
    pub(crate) max_spool: Option<u64>,
    /// Uploads handled at once; four times as many more wait for a slot
    /// (--upload-wait-secs), and the rest get 503 with Retry-After.
    #[arg(long, default_value_t = 8)]
    pub(crate) max_uploads: usize,
    /// Seconds an upload past --max-uploads waits for a slot before it gets
    /// 503 (0: refused at once).
    #[arg(long, default_value = "10", value_parser = redstuff::units::parse_seconds)]
    pub(crate) upload_wait_secs: std::time::Duration,
    /// Seconds the pairs of an upload whose client was cut off stay on the
    /// nodes, so that a retry of the same bytes sends only what they lack
    /// (0: removed at once); also how long a resumable upload
    /// (/v1/uploads) that takes no bytes is kept (at least 10 s).
    #[arg(long, default_value = "120", value_parser = redstuff::units::parse_seconds)]
    pub(crate) cut_upload_kept_secs: std::time::Duration,
    /// Bytes of segments all uploads together may hold in memory (about
    /// 4.7x a 64 MiB segment each at n = 7, 5.5x at n = 1000, its slivers
    /// and the encoder's buffers); an upload past it waits, reading its
    /// body no further.
    #[arg(long, default_value = "2GiB", value_parser = parse_bytes)]
    pub(crate) upload_memory: u64,
    /// Bytes of rows the gateway's reads may hold in memory together,
    /// besides cached rows no reader holds (a 64 MiB segment read whole holds 64 MiB
    /// until its last byte has left for the client; rows several readers
    /// hold count once); a read past it waits (--read-wait-secs for its
    /// first segment, then 503 with Retry-After).
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    pub(crate) read_memory: u64,
    /// Seconds a read waits for its first segment's share of --read-memory
    /// before it gets 503 (0: refused at once).
    #[arg(long, default_value = "10", value_parser = redstuff::units::parse_seconds)]
    pub(crate) read_wait_secs: std::time::Duration,
    /// Seconds a response may make no progress (its client reads nothing),
    /// or a native upload's body bring nothing, before its connection
    /// ends, giving back what it held (a GET's share of --read-memory, an
    /// upload's slot); the native API and S3 alike (more than 0).
    #[arg(long, default_value = "60", value_parser = redstuff::units::parse_positive_seconds)]
    pub(crate) client_stall_secs: std::time::Duration,
    /// File of cluster tokens (the first is sent to nodes); re-read while
    /// the gateway runs.
    #[arg(long)]
    pub(crate) cluster_token_file: PathBuf,
    /// File of user tokens (one per line) accepted from clients; re-read
    /// while the gateway runs.
    #[arg(long)]
    pub(crate) user_tokens_file: PathBuf,
    /// Serve GET and HEAD without a user token.
    #[arg(long)]
    pub(crate) anonymous_reads: bool,
    /// Deadline of every call to a node, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) node_timeout_secs: f64,
    /// Check nodes serving TLS (`https://` in the fleet map) against this
    /// CA (PEM), read again when it changes.
    #[arg(long)]
    pub(crate) tls_ca: Option<PathBuf>,
    /// Serve the API and S3 over TLS with this certificate chain (PEM, the
    /// gateway's first), read again when it changes; --metrics-listen
    /// stays plain.
    #[arg(long, requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Also serve /metrics, /healthz and /readyz on this address, plain
    /// HTTP and without a token (for probes and scrapers).
    #[arg(long)]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    /// Bytes of verified rows of segments kept for later reads, so ranges
    /// of the same segment fetch each row once (0: none).
    #[arg(long, default_value = "128MiB", value_parser = parse_bytes)]
    pub(crate) segment_cache: u64,
    /// Also serve S3 on this address (the second line on stdout is
    /// {"event": "listening", "s3": URL}).
    #[arg(long)]
    pub(crate) s3_listen: Option<std::net::SocketAddr>,
    /// The S3 index file (redb), on a durable volume: one gateway.
    #[arg(long, requires = "s3_listen", conflicts_with = "s3_index_postgres")]
    pub(crate) s3_index: Option<PathBuf>,
    /// The S3 index in PostgreSQL at this URL
    /// (postgresql://USER:PASSWORD@HOST:PORT/DB): several gateways.
    #[arg(
        long,
        requires = "s3_listen",
        env = "REDSTUFF_S3_INDEX_POSTGRES",
        hide_env_values = true
    )]
    pub(crate) s3_index_postgres: Option<String>,
    /// S3 access keys: a file in the AWS shared-credentials format, every
    /// profile with both keys a key the endpoint accepts (read again every
    /// few seconds: edit it to add, rotate or revoke a key).
    /// REDSTUFF_S3_ACCESS_KEY and REDSTUFF_S3_SECRET_KEY add one more.
    #[arg(long, requires = "s3_listen")]
    pub(crate) s3_credentials_file: Option<PathBuf>,
    /// S3 access keys from a directory as Kubernetes mounts a Secret:
    /// files `accessKey` and `secretKey` (one key) and `credentials` (a
    /// credentials file, every profile a key); read again every few
    /// seconds, so a changed Secret takes effect without a restart.
    #[arg(long, requires = "s3_listen")]
    pub(crate) s3_keys_dir: Option<PathBuf>,
    /// Serve virtual-hosted-style S3 (BUCKET.DOMAIN) besides path style.
    #[arg(long, requires = "s3_listen")]
    pub(crate) s3_domain: Option<String>,
    /// Seconds a blob no S3 key or upload refers to any more is kept.
    #[arg(long, default_value_t = 600)]
    pub(crate) s3_collect_after_secs: u64,
    /// Seconds after which an unfinished multipart upload that received
    /// no part meanwhile is aborted.
    #[arg(long, default_value_t = 86_400)]
    pub(crate) s3_upload_max_age_secs: u64,
}
