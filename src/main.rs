//! The `redstuff` command: one binary, one subcommand per part.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use redstuff::auth::{TokenSet, TokenSource};
use redstuff::bench::codec::{self as codec_bench, CodecBenchOptions};
use redstuff::client::Deadlines;
use redstuff::codec::DEFAULT_SEGMENT_SIZE;
use redstuff::dev::DevConfig;
use redstuff::gateway::{FleetSource, Gateway, GatewayConfig};
use redstuff::node::{Node, NodeConfig, ShardSource};
use redstuff::store::Housekeeping;
use redstuff::units::parse_bytes;

mod cli;

/// redstuff keeps blobs in a fleet of storage nodes with Red Stuff, the
/// two-dimensional erasure code of Walrus: any f of n shards may be lost or
/// lie, and a lost shard is rebuilt from small recovery symbols of its peers.
#[derive(Debug, Parser)]
#[command(name = "redstuff", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The gateway the user commands talk to, unless `--gateway` says otherwise:
/// the default address of `redstuff dev`.
const DEFAULT_GATEWAY: &str = "http://127.0.0.1:7700";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local fleet: node processes, a gateway and the self-healing
    /// control loop, all on 127.0.0.1.
    Dev(DevArgs),
    /// Store a file as a blob through a gateway; prints the blob id. A
    /// file goes through a resumable upload: when the connection breaks,
    /// the next attempt sends only what the gateway lacks.
    Put {
        /// The file to store (`-` for standard input, streamed as it comes
        /// and sent once: never tried again).
        file: PathBuf,
        /// Gateway URL.
        #[arg(long, env = "REDSTUFF_GATEWAY", default_value = DEFAULT_GATEWAY)]
        gateway: String,
        /// Print id, size and shard acknowledgements as JSON.
        #[arg(long)]
        json: bool,
        /// Attempts after the first while the gateway is busy or out of
        /// reach (429, 502, 503, 504, a lost connection); waits as the
        /// gateway asks (Retry-After) or 1 s, doubling, at most 30 s.
        /// 0: fail at the first failure.
        #[arg(long, default_value_t = redstuff::retry::DEFAULT_RETRIES)]
        retries: u32,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        ca: CaArg,
    },
    /// Read a blob back through a gateway.
    Get {
        /// The blob id.
        id: String,
        /// Where to write it (`-` for standard output).
        #[arg(short, long)]
        output: PathBuf,
        /// Gateway URL.
        #[arg(long, env = "REDSTUFF_GATEWAY", default_value = DEFAULT_GATEWAY)]
        gateway: String,
        /// Attempts after the first while the gateway is busy or out of
        /// reach (429, 502, 503, 504, a lost connection; a download
        /// that breaks off goes on from where it stopped); waits as the
        /// gateway asks (Retry-After) or 1 s, doubling, at most 30 s.
        /// 0: fail at the first failure.
        #[arg(long, default_value_t = redstuff::retry::DEFAULT_RETRIES)]
        retries: u32,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        ca: CaArg,
    },
    /// Show the fleet: nodes (pid, address, shards, state) and blob health.
    Status {
        /// Gateway URL (of `redstuff dev`).
        #[arg(long, env = "REDSTUFF_GATEWAY", default_value = DEFAULT_GATEWAY)]
        gateway: String,
        /// Print JSON: {"nodes": [...], "blobs": [...], ...}.
        #[arg(long)]
        json: bool,
        /// List every blob; by default a fleet of more than 20 blobs gets
        /// counts by health and the blobs that are not Healthy (at most 50).
        #[arg(long)]
        all: bool,
        /// Attempts after the first while the gateway is busy or out of
        /// reach (429, 502, 503, 504, a lost connection: `redstuff dev`
        /// still starting); waits as the gateway asks (Retry-After) or 1 s,
        /// doubling, at most 30 s. 0: fail at the first failure.
        #[arg(long, default_value_t = redstuff::retry::DEFAULT_RETRIES)]
        retries: u32,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        ca: CaArg,
    },
    /// Print the CustomResourceDefinitions (StorageCluster, Blob) as YAML,
    /// or write one file per CRD into --dir.
    Crds {
        /// Write crds/<name>.yaml files here instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run the Kubernetes operator (KUBECONFIG or in-cluster credentials).
    Operator {
        /// Image of node and gateway pods when a StorageCluster names none.
        #[arg(
            long,
            env = "REDSTUFF_IMAGE",
            default_value = "ghcr.io/redstuff/redstuff:latest"
        )]
        image: String,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, default_value = "[::]:8080")]
        listen: std::net::SocketAddr,
        /// Act at once without taking the leader Lease (one replica only).
        #[arg(long)]
        no_leader_election: bool,
        /// Namespace of the leader Lease (default: the pod's namespace).
        #[arg(long, env = "POD_NAMESPACE", default_value = "redstuff-system")]
        lease_namespace: String,
        /// Namespace of the operator's pods: node pods take API calls from
        /// operator pods there only (default: the pod's namespace).
        #[arg(long, env = "POD_NAMESPACE", default_value = "redstuff-system")]
        operator_namespace: String,
        /// Name of the leader Lease.
        #[arg(long, default_value = "redstuff-operator")]
        lease_name: String,
        /// This replica's identity in the Lease (default: the pod name).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Where URL, ConfigMap and Secret sources are spooled before upload.
        #[arg(long, default_value = "/tmp/redstuff-ingest")]
        spool_dir: PathBuf,
        /// Largest source the operator ingests, e.g. 64GiB.
        #[arg(long, default_value = "64GiB", value_parser = redstuff::units::parse_bytes)]
        max_ingest: u64,
        /// Manage StorageClusters and Blobs only in these namespaces
        /// (repeat, or separate with commas; default: every namespace).
        /// Grant the operator's role in each by a RoleBinding.
        #[arg(
            long = "namespace",
            value_delimiter = ',',
            env = "REDSTUFF_WATCH_NAMESPACES"
        )]
        namespaces: Vec<String>,
        /// Secrets node and gateway pods pull their image with (repeat, or
        /// separate with commas); each must exist in every StorageCluster's
        /// namespace.
        #[arg(
            long = "image-pull-secret",
            value_delimiter = ',',
            env = "REDSTUFF_IMAGE_PULL_SECRETS"
        )]
        image_pull_secrets: Vec<String>,
        /// Pull policy of node and gateway containers (default: the
        /// Kubernetes default for the image's tag).
        #[arg(long, value_parser = ["Always", "IfNotPresent", "Never"])]
        image_pull_policy: Option<String>,
    },
    /// Print the objects the operator would create for a StorageCluster
    /// manifest (pods, claims, services, config, gateway, budget).
    RenderCluster {
        /// A StorageCluster manifest (YAML).
        file: PathBuf,
        /// Image of node and gateway pods when the spec names none.
        #[arg(long, default_value = "ghcr.io/redstuff/redstuff:latest")]
        image: String,
        /// Namespace the operator runs in (node pods take API calls from
        /// operator pods there only).
        #[arg(long, default_value = "redstuff-system")]
        operator_namespace: String,
    },
    /// Run one storage node.
    Node(NodeArgs),
    /// Run a gateway in front of a fleet.
    Gateway(GatewayArgs),
    /// Measure throughput and memory against a baseline in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// The user token sent to the gateway.
#[derive(Debug, Args)]
struct TokenArg {
    /// The gateway's user token (default: REDSTUFF_TOKEN, else the token
    /// file of a `redstuff dev` in this directory, redstuff-dev/token).
    #[arg(long, env = "REDSTUFF_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl TokenArg {
    fn resolve(&self) -> Option<String> {
        self.token.clone().or_else(|| {
            let path = redstuff::dev::user_token_path(std::path::Path::new("redstuff-dev"));
            let text = std::fs::read_to_string(path).ok()?;
            redstuff::auth::parse_tokens(&text).into_iter().next()
        })
    }
}

/// The CA a gateway serving TLS is checked against, besides the usual roots.
#[derive(Debug, Args)]
struct CaArg {
    /// Also trust this CA (PEM) for an `https://` gateway (default:
    /// REDSTUFF_TLS_CA, else the CA of a `redstuff dev --tls` in this
    /// directory, redstuff-dev/tls/ca.crt, when the URL is https://).
    #[arg(long, env = "REDSTUFF_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

impl CaArg {
    fn resolve(&self, gateway: &str) -> Option<PathBuf> {
        self.tls_ca.clone().or_else(|| {
            let dev = redstuff::dev::ca_path(std::path::Path::new("redstuff-dev"));
            (gateway.starts_with("https://") && dev.is_file()).then_some(dev)
        })
    }
}

#[derive(Debug, Args)]
struct DevArgs {
    /// Shard count n (4 to 1000); f = (n - 1) / 3 shards may be lost or lie.
    #[arg(long, default_value_t = 7)]
    shards: u16,
    /// Node processes; shards are spread evenly over them.
    #[arg(long, default_value_t = 7)]
    nodes: usize,
    /// Where nodes keep their data, and the fleet its state.
    #[arg(long, default_value = "redstuff-dev")]
    data_dir: PathBuf,
    /// The gateway's address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    gateway_addr: std::net::SocketAddr,
    /// Segment size of new blobs.
    #[arg(long, default_value_t = DEFAULT_SEGMENT_SIZE, value_parser = parse_bytes)]
    segment_size: u64,
    /// How often the control loop looks at the fleet, in milliseconds.
    #[arg(long, default_value_t = 500)]
    period_ms: u64,
    /// Repairs in flight at most.
    #[arg(long, default_value_t = 4)]
    max_concurrent_repairs: usize,
    /// Seconds nodes rest between two passes re-reading and checking
    /// every stored file (0: never).
    #[arg(long, default_value_t = 60)]
    scrub_interval_secs: u64,
    /// Deadline of every call to a node, in seconds: a node silent longer
    /// (stopped, hung, partitioned) is passed over.
    #[arg(long, default_value_t = 5.0)]
    node_timeout_secs: f64,
    /// Nodes remove uploads never committed after this many seconds idle.
    #[arg(long, default_value_t = 900)]
    staged_ttl_secs: u64,
    /// Serve GET, HEAD and status without a user token.
    #[arg(long)]
    anonymous_reads: bool,
    /// Uploads the gateway handles at once; four times as many more wait for a slot
    /// (--upload-wait-secs), and the rest get 503 with Retry-After.
    #[arg(long, default_value_t = 8)]
    max_uploads: usize,
    /// Seconds an upload past --max-uploads waits for a slot before it gets
    /// 503 (0: refused at once).
    #[arg(long, default_value = "10", value_parser = redstuff::units::parse_seconds)]
    upload_wait_secs: std::time::Duration,
    /// Seconds the pairs of an upload whose client was cut off stay on the
    /// nodes, so that a retry of the same bytes sends only what they lack
    /// (0: removed at once); also how long a resumable upload
    /// (/v1/uploads) no request touches is kept (at least 10 s).
    #[arg(long, default_value = "120", value_parser = redstuff::units::parse_seconds)]
    cut_upload_kept_secs: std::time::Duration,
    /// Bytes of segments the gateway's uploads may hold in memory
    /// together (about 4.7x a 64 MiB segment each at n = 7, 5.5x at n =
    /// 1000, its slivers and the encoder's buffers); an upload past it
    /// waits, reading its body no further.
    #[arg(long, default_value = "2GiB", value_parser = parse_bytes)]
    upload_memory: u64,
    /// Bytes of rows the gateway's reads may hold in memory together,
    /// besides cached rows no reader holds (a 64 MiB segment read whole holds 64 MiB
    /// until its last byte has left for the client; rows several readers
    /// hold count once); a read past it waits (--read-wait-secs for its
    /// first segment, then 503 with Retry-After).
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    read_memory: u64,
    /// Seconds a read waits for its first segment's share of --read-memory
    /// before it gets 503 (0: refused at once).
    #[arg(long, default_value = "10", value_parser = redstuff::units::parse_seconds)]
    read_wait_secs: std::time::Duration,
    /// Seconds a response of the gateway or S3 may make no progress (its
    /// client reads nothing), or an upload's body bring nothing, before
    /// its connection ends, giving back what it held (more than 0).
    #[arg(long, default_value = "60", value_parser = redstuff::units::parse_positive_seconds)]
    client_stall_secs: std::time::Duration,
    /// The S3 endpoint's address. Keys come from REDSTUFF_S3_ACCESS_KEY and
    /// REDSTUFF_S3_SECRET_KEY when set, else from DATA_DIR/s3-credentials
    /// (generated at first start); further profiles in that file are
    /// further keys (the file is read again every few seconds).
    #[arg(long, default_value = "127.0.0.1:7780")]
    s3_addr: std::net::SocketAddr,
    /// Serve no S3 endpoint.
    #[arg(long)]
    no_s3: bool,
    /// Seconds a blob no S3 key or upload refers to any more is kept
    /// before it is deleted.
    #[arg(long, default_value_t = 600)]
    s3_collect_after_secs: u64,
    /// Seconds after which an unfinished multipart upload that received
    /// no part meanwhile is aborted.
    #[arg(long, default_value_t = 86_400)]
    s3_upload_max_age_secs: u64,
    /// Keep the S3 index in PostgreSQL at this URL
    /// (postgresql://USER:PASSWORD@HOST:PORT/DB) instead of DATA_DIR/s3-index.redb.
    #[arg(long, env = "REDSTUFF_S3_INDEX_POSTGRES", hide_env_values = true)]
    s3_index_postgres: Option<String>,
    /// Serve virtual-hosted-style S3 (BUCKET.DOMAIN, resolving to this
    /// machine) besides path style.
    #[arg(long)]
    s3_domain: Option<String>,
    /// Serve TLS: nodes, the gateway and S3 serve a certificate from a CA
    /// kept in DATA_DIR/tls/ (made at the first start; clients trust
    /// DATA_DIR/tls/ca.crt); the gateway, the loop and the nodes' repairs
    /// trust that CA.
    #[arg(long)]
    tls: bool,
    /// Test only: make node I serve corrupted slivers and symbols.
    #[arg(long, hide = true)]
    test_corrupt_node: Vec<usize>,
    /// Test only: make node I replay other nodes' valid slivers and symbols.
    #[arg(long, hide = true)]
    test_replaying_node: Vec<usize>,
}

#[derive(Debug, Args)]
struct NodeArgs {
    /// The node's name.
    #[arg(long)]
    name: String,
    /// Data directory (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to listen on (port 0: any free port); the first line on
    /// stdout is {"event": "listening", "url": ...}.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Also serve /metrics, /healthz and /readyz on this address (no token).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Shards owned, fixed (e.g. 0,3,5).
    #[arg(long, value_delimiter = ',', conflicts_with = "shards_file")]
    shards: Vec<u16>,
    /// JSON file {"shards": [...]} re-read when it changes.
    #[arg(long)]
    shards_file: Option<PathBuf>,
    /// File of cluster tokens (one per line, the first sent to peers);
    /// re-read while the node runs. Every route but /healthz, /readyz and
    /// /metrics requires one of them.
    #[arg(long)]
    token_file: PathBuf,
    /// The fleet map (JSON), where the node finds its peers for repairs;
    /// re-read when it changes.
    #[arg(long)]
    fleet: Option<PathBuf>,
    /// Cap on stored bytes; writes past it answer 507.
    #[arg(long, value_parser = parse_bytes)]
    capacity: Option<u64>,
    /// Largest metadata accepted.
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    max_metadata: u64,
    /// Parsed metadata kept in memory.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    metadata_cache: u64,
    /// Re-read and check every stored file, this many seconds after the
    /// last pass ended (0: never).
    #[arg(long, default_value_t = 86400)]
    scrub_interval_secs: u64,
    /// Bytes per second the scrub reads at most (0: no limit), so client
    /// reads and repairs keep the disk.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    scrub_max_bytes_per_sec: u64,
    /// Deadline of every call to a peer, in seconds.
    #[arg(long, default_value_t = 5.0)]
    node_timeout_secs: f64,
    /// Remove uploads never committed after this many seconds idle.
    #[arg(long, default_value_t = 900)]
    staged_ttl_secs: u64,
    /// Delete quarantined files after this many seconds.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    quarantine_retention_secs: u64,
    /// Serve the API over TLS with this certificate chain (PEM, the node's
    /// first), read again when it changes; --metrics-listen stays plain.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Check peers serving TLS against this CA (PEM), read again when it
    /// changes.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Test only: flip a bit in every sliver and symbol served.
    #[arg(long, hide = true)]
    test_corrupt_reads: bool,
    /// Test only: serve the next shard's valid slivers and symbols instead of its own.
    #[arg(long, hide = true)]
    test_replay_reads: bool,
}

#[derive(Debug, Args)]
struct GatewayArgs {
    /// The fleet map file (JSON), re-read when it changes.
    #[arg(long)]
    fleet: PathBuf,
    /// Address to listen on (the first line on stdout is {"event":
    /// "listening", "url": URL}, with "metrics": URL under --metrics-listen).
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: std::net::SocketAddr,
    /// Where S3 uploads are spooled while their checksums are verified
    /// (PUT /v1/blobs streams without a spool).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("redstuff-spool"))]
    spool_dir: PathBuf,
    /// Largest blob accepted.
    #[arg(long, default_value = "1TiB", value_parser = parse_bytes)]
    max_blob: u64,
    /// Bytes the spool may hold for S3 uploads in flight (SlowDown beyond;
    /// default: whatever its disk has free).
    #[arg(long, value_parser = parse_bytes)]
    max_spool: Option<u64>,
    /// Uploads handled at once; four times as many more wait for a slot
    /// (--upload-wait-secs), and the rest get 503 with Retry-After.
    #[arg(long, default_value_t = 8)]
    max_uploads: usize,
    /// Seconds an upload past --max-uploads waits for a slot before it gets
    /// 503 (0: refused at once).
    #[arg(long, default_value = "10", value_parser = redstuff::units::parse_seconds)]
    upload_wait_secs: std::time::Duration,
    /// Seconds the pairs of an upload whose client was cut off stay on the
    /// nodes, so that a retry of the same bytes sends only what they lack
    /// (0: removed at once); also how long a resumable upload
    /// (/v1/uploads) no request touches is kept (at least 10 s).
    #[arg(long, default_value = "120", value_parser = redstuff::units::parse_seconds)]
    cut_upload_kept_secs: std::time::Duration,
    /// Bytes of segments all uploads together may hold in memory (about
    /// 4.7x a 64 MiB segment each at n = 7, 5.5x at n = 1000, its slivers
    /// and the encoder's buffers); an upload past it waits, reading its
    /// body no further.
    #[arg(long, default_value = "2GiB", value_parser = parse_bytes)]
    upload_memory: u64,
    /// Bytes of rows the gateway's reads may hold in memory together,
    /// besides cached rows no reader holds (a 64 MiB segment read whole holds 64 MiB
    /// until its last byte has left for the client; rows several readers
    /// hold count once); a read past it waits (--read-wait-secs for its
    /// first segment, then 503 with Retry-After).
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    read_memory: u64,
    /// Seconds a read waits for its first segment's share of --read-memory
    /// before it gets 503 (0: refused at once).
    #[arg(long, default_value = "10", value_parser = redstuff::units::parse_seconds)]
    read_wait_secs: std::time::Duration,
    /// Seconds a response may make no progress (its client reads nothing),
    /// or a native upload's body bring nothing, before its connection
    /// ends, giving back what it held (a GET's share of --read-memory, an
    /// upload's slot); the native API and S3 alike (more than 0).
    #[arg(long, default_value = "60", value_parser = redstuff::units::parse_positive_seconds)]
    client_stall_secs: std::time::Duration,
    /// File of cluster tokens (the first is sent to nodes); re-read while
    /// the gateway runs.
    #[arg(long)]
    cluster_token_file: PathBuf,
    /// File of user tokens (one per line) accepted from clients; re-read
    /// while the gateway runs.
    #[arg(long)]
    user_tokens_file: PathBuf,
    /// Serve GET and HEAD without a user token.
    #[arg(long)]
    anonymous_reads: bool,
    /// Deadline of every call to a node, in seconds.
    #[arg(long, default_value_t = 5.0)]
    node_timeout_secs: f64,
    /// Check nodes serving TLS (`https://` in the fleet map) against this
    /// CA (PEM), read again when it changes.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Serve the API and S3 over TLS with this certificate chain (PEM, the
    /// gateway's first), read again when it changes; --metrics-listen
    /// stays plain.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Also serve /metrics, /healthz and /readyz on this address, plain
    /// HTTP and without a token (for probes and scrapers).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Bytes of verified rows of segments kept for later reads, so ranges
    /// of the same segment fetch each row once (0: none).
    #[arg(long, default_value = "128MiB", value_parser = parse_bytes)]
    segment_cache: u64,
    /// Also serve S3 on this address (the second line on stdout is
    /// {"event": "listening", "s3": URL}).
    #[arg(long)]
    s3_listen: Option<std::net::SocketAddr>,
    /// The S3 index file (redb), on a durable volume: one gateway.
    #[arg(long, requires = "s3_listen", conflicts_with = "s3_index_postgres")]
    s3_index: Option<PathBuf>,
    /// The S3 index in PostgreSQL at this URL
    /// (postgresql://USER:PASSWORD@HOST:PORT/DB): several gateways.
    #[arg(
        long,
        requires = "s3_listen",
        env = "REDSTUFF_S3_INDEX_POSTGRES",
        hide_env_values = true
    )]
    s3_index_postgres: Option<String>,
    /// S3 access keys: a file in the AWS shared-credentials format, every
    /// profile with both keys a key the endpoint accepts (read again every
    /// few seconds: edit it to add, rotate or revoke a key).
    /// REDSTUFF_S3_ACCESS_KEY and REDSTUFF_S3_SECRET_KEY add one more.
    #[arg(long, requires = "s3_listen")]
    s3_credentials_file: Option<PathBuf>,
    /// S3 access keys from a directory as Kubernetes mounts a Secret:
    /// files `accessKey` and `secretKey` (one key) and `credentials` (a
    /// credentials file, every profile a key); read again every few
    /// seconds, so a changed Secret takes effect without a restart.
    #[arg(long, requires = "s3_listen")]
    s3_keys_dir: Option<PathBuf>,
    /// Serve virtual-hosted-style S3 (BUCKET.DOMAIN) besides path style.
    #[arg(long, requires = "s3_listen")]
    s3_domain: Option<String>,
    /// Seconds a blob no S3 key or upload refers to any more is kept.
    #[arg(long, default_value_t = 600)]
    s3_collect_after_secs: u64,
    /// Seconds after which an unfinished multipart upload that received
    /// no part meanwhile is aborted.
    #[arg(long, default_value_t = 86_400)]
    s3_upload_max_age_secs: u64,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Encode (with commitments), decode and rebuild one sliver pair of a
    /// blob generated on the fly or read from a file, against a 1-D
    /// reed-solomon-simd encode of the same bytes.
    Codec(CodecArgs),
    /// Put and get a blob through the gateway of a local 7-shard fleet, as
    /// ratios to this machine's limits measured in the same run (the codec
    /// and the disk alone), with how busy the cores were; then wipe a node
    /// and time its repair.
    Fleet(FleetArgs),
    /// The S3 front beside the native API on one local fleet: PUT and GET
    /// of one object through both (the aws cli for S3; after a warm-up PUT,
    /// the faster of two runs each) as ratios; the object stored in one PUT
    /// read by the aws cli in 8 MiB ranges (rows fetched per row needed);
    /// then a listing of many keys through S3, its time and memory.
    S3(S3BenchArgs),
    /// The control loop's planning at scale (shard assignment, inventory
    /// view, health, repair plan, and a reading of changes that folds every
    /// hundredth blob again) on synthetic inventories, against one plain
    /// pass over them; time and memory per step.
    Plan(PlanArgs),
    /// A randomized fault run: concurrent puts, gets and deletes on a local
    /// fleet while up to f nodes are killed, stopped, resumed and wiped at
    /// random; then the history is checked (exits 1 on any violation).
    Faults(FaultsArgs),
}

#[derive(Debug, Args)]
struct FaultsArgs {
    /// Seconds of load and faults (the long run: 300 or more).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// Seed of every random choice (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Write the operation history here (JSON lines).
    #[arg(long)]
    history: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PlanArgs {
    /// Blobs in the fleet.
    #[arg(long, default_value_t = 10_000)]
    blobs: usize,
    /// Node pods.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Shards n.
    #[arg(long, default_value_t = 1000)]
    shards: u16,
    /// Nodes back on empty volumes (every blob misses their shards).
    #[arg(long, default_value_t = 3)]
    wiped: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct FleetArgs {
    /// Size of the blob put and got through the gateway.
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    size: u64,
    /// Slivers the wiped node holds before it is wiped (more blobs are
    /// stored until it does).
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    repair_bytes: u64,
    /// Segment size.
    #[arg(long, default_value_t = DEFAULT_SEGMENT_SIZE, value_parser = parse_bytes)]
    segment_size: u64,
    /// Also put, then get, this many different blobs of --size at once,
    /// then get one of them by as many clients at once (aggregate
    /// throughput, rows fetched and shared, and the gateway's peak
    /// memory); 1 skips it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    clients: u32,
    /// The gateway's upload memory budget (as `redstuff dev
    /// --upload-memory`); the concurrent PUTs' peak is checked against it.
    #[arg(long, default_value = "2GiB", value_parser = parse_bytes)]
    upload_memory: u64,
    /// The gateway's read memory budget (as `redstuff dev --read-memory`);
    /// the concurrent GETs' peak is checked against it.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    read_memory: u64,
    /// The fleet serves TLS (as `redstuff dev --tls`: the client's calls to
    /// the gateway and the gateway's to nodes): what TLS costs the PUT, the
    /// GET and the repair.
    #[arg(long)]
    tls: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct S3BenchArgs {
    /// Size of the object.
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    size: u64,
    /// Keys listed through S3.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Directory holding `aws` and a Python with boto3 (default: the bin/
    /// of the venv scripts/s3-clients makes, when it exists:
    /// $REDSTUFF_S3_CLIENTS, else $REDSTUFF_CACHE/s3-clients, else
    /// ~/.cache/redstuff/s3-clients; else PATH).
    #[arg(long)]
    clients: Option<PathBuf>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CodecArgs {
    /// Shard count n (4 to 1000); f = (n - 1) / 3 shards may be lost or lie.
    #[arg(long, default_value_t = 100)]
    shards: u16,
    /// Blob size, e.g. 1MiB, 64MiB, 4GiB (ignored with --input).
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    size: u64,
    /// Segment size: each segment is its own Red Stuff matrix (1KiB to 1GiB).
    #[arg(long, default_value_t = DEFAULT_SEGMENT_SIZE, value_parser = parse_bytes)]
    segment_size: u64,
    /// Read the blob from this file instead of generating it.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Print one JSON object per line: one per phase, then a summary.
    #[arg(long)]
    json: bool,
    /// How many times to run the whole blob; the median round is reported
    /// (default: 15 up to 16 MiB, 3 up to 256 MiB, else 1).
    #[arg(long)]
    rounds: Option<usize>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Run the encode phase alone, so its peak RSS is the encoder's own
    /// (the other phases leave memory the allocator keeps for reuse).
    #[arg(long)]
    encode_only: bool,
}

fn main() -> ExitCode {
    keep_freed_memory_a_while(PURGE_DELAY_MS);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REDSTUFF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Every command that runs a gateway or nodes (the fleet benches run
    // `dev` in their own process).
    if matches!(
        cli.command,
        Command::Dev(_)
            | Command::Node(_)
            | Command::Gateway(_)
            | Command::Bench(
                BenchCommand::Fleet(_) | BenchCommand::S3(_) | BenchCommand::Faults(_)
            )
    ) {
        keep_freed_memory_a_while(SERVER_PURGE_DELAY_MS);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bench(BenchCommand::Codec(args)) => bench_codec(args),
        Command::Bench(BenchCommand::Fleet(args)) => runtime()?.block_on(bench_fleet(args)),
        Command::Bench(BenchCommand::S3(args)) => runtime()?.block_on(bench_s3(args)),
        Command::Bench(BenchCommand::Plan(args)) => bench_plan(args),
        Command::Bench(BenchCommand::Faults(args)) => runtime()?.block_on(bench_faults(args)),
        Command::Dev(args) => runtime()?.block_on(dev(args)),
        Command::Node(args) => runtime()?.block_on(node(args)),
        Command::Gateway(args) => runtime()?.block_on(gateway(args)),
        Command::Put {
            file,
            gateway,
            json,
            retries,
            token,
            ca,
        } => runtime()?.block_on(cli::put(
            &file,
            &gateway,
            token.resolve(),
            ca.resolve(&gateway).as_deref(),
            json,
            retries,
        )),
        Command::Get {
            id,
            output,
            gateway,
            retries,
            token,
            ca,
        } => runtime()?.block_on(cli::get(
            &id,
            &output,
            &gateway,
            token.resolve(),
            ca.resolve(&gateway).as_deref(),
            retries,
        )),
        Command::Status {
            gateway,
            json,
            all,
            retries,
            token,
            ca,
        } => runtime()?.block_on(cli::status(
            &gateway,
            token.resolve(),
            ca.resolve(&gateway).as_deref(),
            cli::StatusFormat { json, all },
            retries,
        )),
        Command::Crds { dir } => crds(dir),
        Command::RenderCluster {
            file,
            image,
            operator_namespace,
        } => {
            let manifest = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let settings =
                redstuff::operator::desired::OperatorSettings::new(image, operator_namespace);
            print!(
                "{}",
                redstuff::operator::render_cluster(&manifest, &settings)?
            );
            Ok(())
        }
        Command::Operator {
            image,
            listen,
            no_leader_election,
            lease_namespace,
            operator_namespace,
            lease_name,
            identity,
            spool_dir,
            max_ingest,
            namespaces,
            image_pull_secrets,
            image_pull_policy,
        } => {
            let identity = identity.unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    std::env::var("HOSTNAME").unwrap_or_else(|_| "operator".into()),
                    std::process::id()
                )
            });
            runtime()?.block_on(redstuff::operator::run::run(
                redstuff::operator::run::OperatorOptions {
                    image,
                    listen,
                    leader_election: !no_leader_election,
                    lease_namespace,
                    namespace: operator_namespace,
                    lease_name,
                    identity,
                    spool_dir,
                    max_ingest_bytes: max_ingest,
                    shutdown_timeout: std::time::Duration::from_secs(20),
                    namespaces,
                    image_pull_secrets,
                    image_pull_policy,
                },
            ))
        }
    }
}

fn crds(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let crds = redstuff::operator::crds_yaml();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for (name, yaml) in crds {
                std::fs::write(dir.join(name), yaml)?;
            }
        }
        None => {
            for (_, yaml) in crds {
                print!("---\n{yaml}");
            }
        }
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn node(args: NodeArgs) -> anyhow::Result<()> {
    let shards = match args.shards_file {
        Some(path) => ShardSource::File(path),
        None => ShardSource::Fixed(args.shards.into_iter().collect()),
    };
    let tokens = std::sync::Arc::new(TokenSet::load(TokenSource::File(args.token_file))?);
    let config = NodeConfig {
        fleet: args.fleet,
        deadlines: Deadlines::from_secs(args.node_timeout_secs),
        capacity: args.capacity,
        max_metadata_bytes: args.max_metadata,
        metadata_cache_bytes: args.metadata_cache,
        lie: if args.test_corrupt_reads {
            Some(redstuff::node::Lie::FlipBits)
        } else if args.test_replay_reads {
            Some(redstuff::node::Lie::Replay)
        } else {
            None
        },
        scrub_interval: (args.scrub_interval_secs > 0)
            .then(|| std::time::Duration::from_secs(args.scrub_interval_secs)),
        scrub_max_bytes_per_sec: (args.scrub_max_bytes_per_sec > 0)
            .then_some(args.scrub_max_bytes_per_sec),
        housekeeping: Housekeeping {
            staged_ttl: std::time::Duration::from_secs(args.staged_ttl_secs),
            quarantine_retention: std::time::Duration::from_secs(args.quarantine_retention_secs),
        },
        tls: redstuff::tls::ServingCert::load_optional(
            args.tls_cert.as_deref(),
            args.tls_key.as_deref(),
        )?,
        peers_ca: redstuff::tls::TrustedCa::from_optional_file(args.tls_ca.as_deref())?,
        ..NodeConfig::new(&args.name, args.data_dir, shards, tokens)
    };
    let mut node = Node::bind(config, args.listen).await?;
    if let Some(addr) = args.metrics_listen {
        node = node.with_metrics_listener(addr).await?;
    }
    let url = node.url();
    println!(
        "{}",
        serde_json::json!({"event": "listening", "node": args.name, "url": url})
    );
    tracing::info!(node = %args.name, %url, "listening");
    node.serve(shutdown_signal()).await
}

async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let cluster_tokens =
        std::sync::Arc::new(TokenSet::load(TokenSource::File(args.cluster_token_file))?);
    let user_tokens =
        std::sync::Arc::new(TokenSet::load(TokenSource::File(args.user_tokens_file))?);
    let config = GatewayConfig {
        max_blob_bytes: args.max_blob,
        max_spool_bytes: args.max_spool,
        max_uploads: args.max_uploads,
        upload_wait: args.upload_wait_secs,
        cut_upload_kept: args.cut_upload_kept_secs,
        upload_memory_bytes: args.upload_memory,
        read_memory_bytes: args.read_memory,
        read_wait: args.read_wait_secs,
        client_stall: args.client_stall_secs,
        anonymous_reads: args.anonymous_reads,
        deadlines: Deadlines::from_secs(args.node_timeout_secs),
        segment_cache_bytes: usize::try_from(args.segment_cache).unwrap_or(usize::MAX),
        nodes_ca: redstuff::tls::TrustedCa::from_optional_file(args.tls_ca.as_deref())?,
        tls: redstuff::tls::ServingCert::load_optional(
            args.tls_cert.as_deref(),
            args.tls_key.as_deref(),
        )?,
        ..GatewayConfig::new(
            FleetSource::File(args.fleet),
            args.spool_dir,
            cluster_tokens,
            user_tokens,
        )
    };
    let mut gateway = Gateway::bind(config, args.listen, Default::default()).await?;
    if let Some(addr) = args.metrics_listen {
        gateway = gateway.with_metrics_listener(addr).await?;
    }
    let mut listening = serde_json::json!({"event": "listening", "url": gateway.url()});
    if let Some(addr) = gateway.metrics_addr() {
        listening["metrics"] = format!("http://{addr}").into();
    }
    println!("{listening}");
    let Some(s3_listen) = args.s3_listen else {
        return gateway.serve(shutdown_signal()).await;
    };
    // The environment's key, every profile of the credentials file, and the
    // Secret's directory.
    use redstuff::s3::keyring::KeySource;
    let keys: Vec<KeySource> = s3_keys_from_env()
        .map(KeySource::Fixed)
        .into_iter()
        .chain(args.s3_credentials_file.map(KeySource::CredentialsFile))
        .chain(args.s3_keys_dir.map(KeySource::SecretDir))
        .collect();
    anyhow::ensure!(
        !keys.is_empty(),
        "S3 needs an access key: --s3-credentials-file, --s3-keys-dir, or REDSTUFF_S3_ACCESS_KEY and REDSTUFF_S3_SECRET_KEY"
    );
    let s3 = redstuff::s3::S3Server::bind(
        redstuff::s3::S3Config {
            listen: s3_listen,
            index: match (args.s3_index, args.s3_index_postgres) {
                (Some(path), _) => redstuff::s3::IndexLocation::File(path),
                (None, Some(url)) => redstuff::s3::IndexLocation::Postgres(url),
                (None, None) => anyhow::bail!(
                    "--s3-listen needs an index: --s3-index FILE or --s3-index-postgres URL"
                ),
            },
            keys,
            keys_reload_every: redstuff::s3::keyring::RELOAD_EVERY,
            domain: args.s3_domain,
            collect_after: std::time::Duration::from_secs(args.s3_collect_after_secs),
            upload_max_age: std::time::Duration::from_secs(args.s3_upload_max_age_secs),
            collect_every: std::time::Duration::from_secs(args.s3_collect_after_secs.clamp(1, 10)),
        },
        gateway.door(),
    )
    .await?;
    println!(
        "{}",
        serde_json::json!({"event": "listening", "s3": s3.url()})
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let s3_task = tokio::spawn(s3.serve(wait(stopped.clone())));
    let gateway_task = tokio::spawn(gateway.serve(wait(stopped)));
    shutdown_signal().await;
    let _ = stop.send(true);
    gateway_task.await??;
    s3_task.await??;
    Ok(())
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let config = DevConfig {
        shards: args.shards,
        nodes: args.nodes,
        data_dir: args.data_dir.clone(),
        gateway_addr: args.gateway_addr,
        segment_size: args.segment_size,
        exe: std::env::current_exe()?,
        period: std::time::Duration::from_millis(args.period_ms.max(50)),
        max_concurrent_repairs: args.max_concurrent_repairs.max(1),
        corrupt_nodes: args.test_corrupt_node,
        replaying_nodes: args.test_replaying_node,
        scrub_interval_secs: args.scrub_interval_secs,
        node_timeout_secs: args.node_timeout_secs,
        staged_ttl_secs: args.staged_ttl_secs,
        anonymous_reads: args.anonymous_reads,
        max_uploads: args.max_uploads,
        upload_wait: args.upload_wait_secs,
        cut_upload_kept: args.cut_upload_kept_secs,
        upload_memory_bytes: args.upload_memory,
        read_memory_bytes: args.read_memory,
        read_wait: args.read_wait_secs,
        client_stall: args.client_stall_secs,
        s3: (!args.no_s3).then(|| redstuff::dev::DevS3 {
            addr: args.s3_addr,
            keys: s3_keys_from_env(),
            collect_after: std::time::Duration::from_secs(args.s3_collect_after_secs),
            upload_max_age: std::time::Duration::from_secs(args.s3_upload_max_age_secs),
            index_postgres: args.s3_index_postgres.clone(),
            domain: args.s3_domain.clone(),
        }),
        tls: args.tls,
    };
    let nodes = args.nodes;
    let shards = args.shards;
    redstuff::dev::run(config, shutdown_signal(), move |endpoints| {
        // Whoever reads our stdout may have gone: that must not stop the fleet.
        let mut out = std::io::stdout().lock();
        let url = &endpoints.gateway;
        let token = endpoints.token.display();
        let ca = endpoints.ca.as_ref().map(|ca| ca.display().to_string());
        let (trust, curl_trust) = match &ca {
            Some(ca) => (format!(" --tls-ca {ca}"), format!(" --cacert {ca}")),
            None => Default::default(),
        };
        let _ = writeln!(
            out,
            "redstuff dev: {nodes} nodes holding {shards} shards are up\n  \
             gateway:  {url}    (redstuff put FILE --gateway {url}{trust})\n  \
             token:    {token}    (export REDSTUFF_TOKEN=$(cat {token}))\n  \
             curl:     curl{curl_trust} -H \"Authorization: Bearer $(cat {token})\" -T FILE {url}/v1/blobs"
        );
        if let Some(ca) = &ca {
            let _ = writeln!(
                out,
                "  ca:       {ca}    (the CA clients trust: export REDSTUFF_TLS_CA={ca})"
            );
        }
        if let Some((s3, keys, file)) = &endpoints.s3 {
            let bundle = ca
                .as_ref()
                .map(|ca| format!("AWS_CA_BUNDLE={ca} "))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  s3:       {s3}    (keys in {})\n  \
                 aws:      AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} AWS_DEFAULT_REGION=us-east-1 \
                 {bundle}aws --endpoint-url {s3} s3 ls",
                file.display(),
                keys.access_key,
                keys.secret_key
            );
        }
        let _ = writeln!(
            out,
            "  metrics:  {url}/metrics\n  \
             status:   redstuff status --gateway {url}{trust}\n  \
             data:     {}\n\
             Ctrl-C stops every node.",
            args.data_dir.display()
        );
        let _ = out.flush();
    })
    .await
}

/// S3 keys from REDSTUFF_S3_ACCESS_KEY and REDSTUFF_S3_SECRET_KEY, when
/// both are set.
fn s3_keys_from_env() -> Option<redstuff::s3::credentials::S3Keys> {
    let access_key = std::env::var("REDSTUFF_S3_ACCESS_KEY")
        .ok()
        .filter(|k| !k.is_empty())?;
    let secret_key = std::env::var("REDSTUFF_S3_SECRET_KEY")
        .ok()
        .filter(|k| !k.is_empty())?;
    Some(redstuff::s3::credentials::S3Keys {
        access_key,
        secret_key,
    })
}

async fn bench_fleet(args: FleetArgs) -> anyhow::Result<()> {
    let options = redstuff::bench::fleet::FleetBenchOptions {
        exe: std::env::current_exe()?,
        size: args.size,
        repair_bytes: args.repair_bytes,
        segment_size: args.segment_size,
        clients: args.clients as usize,
        upload_memory: args.upload_memory,
        read_memory: args.read_memory,
        tls: args.tls,
    };
    let report = redstuff::bench::fleet::run(&options, |line| eprintln!("{line}")).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", redstuff::bench::fleet::render_table(&report));
    }
    Ok(())
}

async fn bench_s3(args: S3BenchArgs) -> anyhow::Result<()> {
    // Where scripts/s3-clients puts its venv.
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let default_venv = env("REDSTUFF_S3_CLIENTS")
        .map(PathBuf::from)
        .or_else(|| env("REDSTUFF_CACHE").map(|c| PathBuf::from(c).join("s3-clients")))
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache/redstuff/s3-clients")))
        .map(|venv| venv.join("bin"))
        .filter(|bin| bin.join("aws").exists());
    let options = redstuff::bench::s3::S3BenchOptions {
        exe: std::env::current_exe()?,
        size: args.size,
        keys: args.keys,
        clients: args.clients.or(default_venv),
    };
    let report = redstuff::bench::s3::run(&options, |line| eprintln!("{line}")).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", redstuff::bench::s3::render(&report));
    }
    Ok(())
}

async fn bench_faults(args: FaultsArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let options = redstuff::bench::faults::FaultRunOptions {
        exe: std::env::current_exe()?,
        duration: std::time::Duration::from_secs(args.seconds),
        clients: args.clients.max(1),
        seed,
        history: args.history,
    };
    let report = redstuff::bench::faults::run(&options, |line| eprintln!("{line}")).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", redstuff::bench::faults::render(&report));
    }
    anyhow::ensure!(
        report.violations.is_empty(),
        "{} violations (seed {seed})",
        report.violations.len()
    );
    Ok(())
}

fn bench_plan(args: PlanArgs) -> anyhow::Result<()> {
    let options = redstuff::bench::plan::PlanBenchOptions {
        blobs: args.blobs,
        nodes: args.nodes,
        shards: args.shards,
        nodes_wiped: args.wiped,
        // As the control loop plans: what it starts and queues.
        limit: redstuff::control::MOST_QUEUED,
    };
    let report = redstuff::bench::plan::run(&options, |line| eprintln!("{line}"))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", redstuff::bench::plan::render_table(&report));
    }
    Ok(())
}

fn bench_codec(args: CodecArgs) -> anyhow::Result<()> {
    if let Some(threads) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()?;
    }
    let options = CodecBenchOptions {
        shards: args.shards,
        size: args.size,
        segment_size: args.segment_size,
        input: args.input,
        rounds: args
            .rounds
            .unwrap_or(codec_bench::default_rounds(args.size)),
        encode_only: args.encode_only,
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} segments, {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("bench codec n={}", options.shards));
    let report = codec_bench::run(&options, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    if args.json {
        print!("{}", codec_bench::render_json_lines(&report));
    } else {
        print!("{}", codec_bench::render_table(&report));
    }
    Ok(())
}

// Segment-sized buffers are freed and allocated again for every segment.
// glibc (and jemalloc, for zeroed requests) give such pages back to the
// kernel, which must fault and zero them again on the next touch: measured
// here at a third of encode time. mimalloc keeps them for reuse.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (v2): milliseconds before freed
/// memory goes back to the kernel. The Rust bindings name no constant for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory is kept for reuse (mimalloc's default is 10 ms):
/// a second, so the next segment reuses the last one's pages instead of
/// faulting in fresh zeroed ones (186 ms against 116 ms per 64 MiB encode
/// at n = 100).
const PURGE_DELAY_MS: std::ffi::c_long = 1000;
/// The same for nodes and gateways: their buffers of one request are freed
/// and allocated again for the next (a pair, a sliver read, a decoded
/// segment), and mimalloc 3 purged them between requests of one PUT even
/// at a second (300 fresh 2 MiB pages per 256 MiB GET on the gateway);
/// ten seconds made `bench fleet`'s PUT 30% faster (135-146 -> 182-189
/// MB/s). What is freed still goes back to the kernel after ten idle
/// seconds.
const SERVER_PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// Sets how long freed memory is kept; mimalloc's own
/// `MIMALLOC_PURGE_DELAY`, when set, wins.
fn keep_freed_memory_a_while(milliseconds: std::ffi::c_long) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets a plain integer option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, milliseconds) };
}
