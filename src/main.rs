//! The `redstuff` command: one binary, one subcommand per part.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use bench_command::BenchCommand;
use serve::{DevArgs, GatewayArgs, NodeArgs};

mod bench_command;
mod cli;
mod serve;

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
        /// The file to store (`-` for standard input; it, a pipe or a
        /// device is streamed as it comes and sent once: never tried
        /// again).
        file: PathBuf,
        /// Gateway URL.
        #[arg(long, env = "REDSTUFF_GATEWAY", default_value = DEFAULT_GATEWAY,
              value_parser = cli::parse_gateway_url)]
        gateway: String,
        /// Print id, size and shard acknowledgements as JSON.
        #[arg(long)]
        json: bool,
        /// Attempts after the first while the gateway is busy or out of
        /// reach (408, 429, 502, 503, 504, a lost connection); waits as
        /// the gateway asks (Retry-After) or 1 s, doubling, at most 30 s
        /// (each wait between half and all of its step).
        /// 0: fail at the first failure.
        #[arg(long, default_value_t = redstuff::retry::DEFAULT_RETRIES)]
        retries: u32,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        ca: CaArg,
        #[command(flatten)]
        stall: StallArg,
    },
    /// Read a blob back through a gateway.
    Get {
        /// The blob id.
        id: String,
        /// Where to write it (`-` for standard output). A file is written
        /// beside it (FILE.XXXXXX.partial) and renamed over it once durable,
        /// keeping its mode; a failed or interrupted read leaves it as it was.
        #[arg(short, long)]
        output: PathBuf,
        /// Gateway URL.
        #[arg(long, env = "REDSTUFF_GATEWAY", default_value = DEFAULT_GATEWAY,
              value_parser = cli::parse_gateway_url)]
        gateway: String,
        /// Attempts after the first while the gateway is busy or out of
        /// reach (408, 429, 502, 503, 504, a lost connection; a download
        /// that breaks off goes on from where it stopped); waits as the
        /// gateway asks (Retry-After) or 1 s, doubling, at most 30 s
        /// (each wait between half and all of its step).
        /// 0: fail at the first failure.
        #[arg(long, default_value_t = redstuff::retry::DEFAULT_RETRIES)]
        retries: u32,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        ca: CaArg,
        #[command(flatten)]
        stall: StallArg,
    },
    /// Show the fleet: nodes (pid, address, shards, state) and blob health.
    Status {
        /// Gateway URL (of `redstuff dev`).
        #[arg(long, env = "REDSTUFF_GATEWAY", default_value = DEFAULT_GATEWAY,
              value_parser = cli::parse_gateway_url)]
        gateway: String,
        /// Print JSON: {"nodes": [...], "blobs": [...], ...}.
        #[arg(long)]
        json: bool,
        /// List every blob; by default a fleet of more than 20 blobs gets
        /// counts by health and the blobs that are not Healthy (at most 50).
        #[arg(long)]
        all: bool,
        /// Attempts after the first while the gateway is busy or out of
        /// reach (408, 429, 502, 503, 504, a lost connection: `redstuff
        /// dev` still starting); waits as the gateway asks (Retry-After)
        /// or 1 s, doubling, at most 30 s (each wait between half and all
        /// of its step). 0: fail at the first failure.
        #[arg(long, default_value_t = redstuff::retry::DEFAULT_RETRIES)]
        retries: u32,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        ca: CaArg,
        #[command(flatten)]
        stall: StallArg,
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
        /// Most the spool may hold, e.g. 70Gi (its emptyDir's size limit,
        /// past which the kubelet evicts the operator): a download that
        /// would not fit beside the downloads kept for a retry and those
        /// in flight waits (SpoolFull). Default: no limit.
        #[arg(long, value_parser = redstuff::units::parse_bytes)]
        spool_limit: Option<u64>,
        /// Most Blob sources fetched and stored at once (each holds a
        /// spool file and a gateway upload); the others wait, Queued.
        #[arg(long, default_value_t = redstuff::operator::context::DEFAULT_MAX_CONCURRENT_INGESTS as u16,
              value_parser = clap::value_parser!(u16).range(1..=64))]
        max_concurrent_ingests: u16,
        /// Seconds an ingest's upload may go without the gateway taking a
        /// byte of it or, once sent, answering: then it fails
        /// (GatewayFailed) and is tried again 30 s later. A gateway
        /// waiting for upload memory takes nothing meanwhile.
        #[arg(long, default_value = "300", value_parser = redstuff::units::parse_positive_seconds)]
        ingest_stall_secs: std::time::Duration,
        /// Let Blob URL sources reach these addresses too (repeat, or
        /// separate with commas): `loopback` (the operator's own pod) and
        /// `link-local` (cloud metadata endpoints) are refused otherwise,
        /// whether a URL names them, its host resolves to them or a
        /// redirect leads there.
        #[arg(long, value_enum, value_delimiter = ',')]
        blob_sources_may_reach: Vec<redstuff::operator::source_addresses::LocalAddresses>,
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

impl Command {
    /// Whether the command runs a gateway or nodes.
    fn runs_servers(&self) -> bool {
        match self {
            Command::Dev(_) | Command::Node(_) | Command::Gateway(_) => true,
            Command::Bench(bench) => bench.runs_servers(),
            _ => false,
        }
    }
}

/// How long a command waits for a gateway that makes no progress.
#[derive(Debug, Args)]
struct StallArg {
    /// Seconds the gateway may make no progress (no answer, no byte of an
    /// upload taken, no byte of a download) before the attempt counts as
    /// a lost connection, and is tried again as one. Longer than the
    /// gateway's own --client-stall-secs (60), so a gateway that is only
    /// slow says so first.
    #[arg(long, default_value = "90", value_parser = redstuff::units::parse_positive_seconds)]
    stall_secs: std::time::Duration,
}

/// The user token sent to the gateway.
#[derive(Debug, Args)]
struct TokenArg {
    /// The gateway's user token (default: REDSTUFF_TOKEN, else the token
    /// file of a `redstuff dev` in this directory, redstuff-dev/token).
    #[arg(long, env = "REDSTUFF_TOKEN", hide_env_values = true,
          value_parser = cli::parse_token)]
    token: Option<String>,
}

impl TokenArg {
    fn resolve(&self) -> Option<String> {
        self.token.clone().filter(|t| !t.is_empty()).or_else(|| {
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
    if cli.command.runs_servers() {
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
        Command::Bench(bench) => bench.run(),
        Command::Dev(args) => runtime()?.block_on(serve::dev(args)),
        Command::Node(args) => runtime()?.block_on(serve::node(args)),
        Command::Gateway(args) => runtime()?.block_on(serve::gateway(args)),
        Command::Put {
            file,
            gateway,
            json,
            retries,
            token,
            ca,
            stall,
        } => user_command(cli::put(
            &file,
            &gateway,
            token.resolve(),
            ca.resolve(&gateway).as_deref(),
            json,
            retries,
            stall.stall_secs,
        )),
        Command::Get {
            id,
            output,
            gateway,
            retries,
            token,
            ca,
            stall,
        } => user_command(cli::get(
            &id,
            &output,
            &gateway,
            token.resolve(),
            ca.resolve(&gateway).as_deref(),
            retries,
            stall.stall_secs,
        )),
        Command::Status {
            gateway,
            json,
            all,
            retries,
            token,
            ca,
            stall,
        } => user_command(cli::status(
            &gateway,
            token.resolve(),
            ca.resolve(&gateway).as_deref(),
            cli::StatusFormat { json, all },
            retries,
            stall.stall_secs,
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
            spool_limit,
            max_concurrent_ingests,
            ingest_stall_secs,
            blob_sources_may_reach,
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
                    spool_limit,
                    max_concurrent_ingests: max_concurrent_ingests.into(),
                    ingest_stall: ingest_stall_secs,
                    blob_sources_may_reach,
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

/// Runs a user command (put, get, status) to its end. The runtime is not
/// waited for: a read of standard input or a pipe that is still blocked
/// (the gateway refused the upload, and the source sends nothing more)
/// would hold the process, and its error, until the source sent more.
fn user_command(
    command: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let result = runtime.block_on(command);
    runtime.shutdown_background();
    result
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed
/// when this is called, not when the future is first polled: a signal
/// that comes while `dev` is still starting its nodes is kept for the
/// loop, instead of ending the process and leaving the nodes running.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let stop = stop_signal();
    async move {
        stop.await;
    }
}

/// The signal that asked a command to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl StopSignal {
    /// The exit status of a command that stopped for it: 128 plus the
    /// signal's number, as a shell reports a process the signal ended.
    fn exit_code(self) -> i32 {
        128 + match self {
            StopSignal::Interrupt => libc::SIGINT,
            StopSignal::Terminate => libc::SIGTERM,
        }
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM with which came first; the
/// handlers are installed when this is called (see [`shutdown_signal`]).
fn stop_signal() -> impl std::future::Future<Output = StopSignal> {
    let mut signals = StopSignals::new();
    async move { signals.next().await }
}

/// Listens for SIGINT and SIGTERM from its making on.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers; call within the runtime.
    fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        StopSignals {
            interrupt: signal(SignalKind::interrupt()).expect("SIGINT handler"),
            terminate: signal(SignalKind::terminate()).expect("SIGTERM handler"),
        }
    }

    /// The next of the two to come.
    async fn next(&mut self) -> StopSignal {
        tokio::select! {
            _ = self.interrupt.recv() => StopSignal::Interrupt,
            _ = self.terminate.recv() => StopSignal::Terminate,
        }
    }
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
