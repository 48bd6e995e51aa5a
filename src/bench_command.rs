//! `redstuff bench ...`: throughput and memory against a baseline measured
//! in the same run.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use redstuff::bench::codec::{self as codec_bench, CodecBenchOptions};
use redstuff::bench::{Interrupted, StopRequest};
use redstuff::codec::DEFAULT_SEGMENT_SIZE;
use redstuff::units::parse_bytes;

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
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
pub(crate) struct FaultsArgs {
    /// Seconds of load and faults (the long run: 300 or more; at most a
    /// day, 86400).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(..=86_400))]
    seconds: u64,
    /// Concurrent clients (1 or more).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    clients: u32,
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
pub(crate) struct PlanArgs {
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
pub(crate) struct FleetArgs {
    /// Size of the blob put and got through the gateway (at least 4MiB;
    /// the bench holds about 5 times it, which must fit in the memory
    /// available).
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
pub(crate) struct S3BenchArgs {
    /// Size of the object (at least 16MiB).
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
pub(crate) struct CodecArgs {
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
    /// How many times to run the whole blob (1 or more); the median round
    /// is reported (default, by the blob's size or the input file's: 15 up
    /// to 16 MiB, 3 up to 256 MiB, else 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: Option<u32>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Run the encode phase alone, so its peak RSS is the encoder's own
    /// (the other phases leave memory the allocator keeps for reuse).
    #[arg(long)]
    encode_only: bool,
}

impl BenchCommand {
    /// Whether the bench runs a gateway or nodes (the fleet benches run
    /// `dev` in their own process).
    pub(crate) fn runs_servers(&self) -> bool {
        matches!(self, Self::Fleet(_) | Self::S3(_) | Self::Faults(_))
    }

    /// Runs the bench and prints its report. A fleet bench interrupted
    /// (Ctrl-C, SIGTERM) cleans up, then ends the process with 128 + the
    /// signal (130, 143).
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let result = match self {
            Self::Codec(args) => bench_codec(args),
            Self::Fleet(args) => crate::runtime()?.block_on(bench_fleet(args)),
            Self::S3(args) => crate::runtime()?.block_on(bench_s3(args)),
            Self::Plan(args) => bench_plan(args),
            Self::Faults(args) => crate::runtime()?.block_on(bench_faults(args)),
        };
        if let Err(error) = &result {
            if error.downcast_ref::<Interrupted>().is_some() {
                eprintln!("{error}");
                let signal = STOPPED_BY.get().copied();
                std::process::exit(signal.unwrap_or(crate::StopSignal::Interrupt).exit_code());
            }
        }
        result
    }
}

/// The signal that stopped a fleet bench.
static STOPPED_BY: std::sync::OnceLock<crate::StopSignal> = std::sync::OnceLock::new();

/// A stop request made by the first Ctrl-C (SIGINT) or SIGTERM, so that a
/// fleet bench resumes and stops its nodes and removes its files instead
/// of dying with them left behind; a second signal ends the process at
/// once. The handlers are installed here, before the bench starts
/// anything; call within the runtime.
fn stop_on_signal() -> anyhow::Result<StopRequest> {
    let (request, requested) = tokio::sync::watch::channel(false);
    let mut signals = crate::StopSignals::new();
    tokio::spawn(async move {
        let _ = STOPPED_BY.set(signals.next().await);
        eprintln!("stopping: the fleet's nodes and files go first (a second signal ends at once)");
        let _ = request.send(true);
        std::process::exit(signals.next().await.exit_code());
    });
    Ok(StopRequest::new(requested))
}

async fn bench_fleet(args: FleetArgs) -> anyhow::Result<()> {
    let stop = stop_on_signal()?;
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
    let report = redstuff::bench::fleet::run(&options, stop, |line| eprintln!("{line}")).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", redstuff::bench::fleet::render_table(&report));
    }
    Ok(())
}

async fn bench_s3(args: S3BenchArgs) -> anyhow::Result<()> {
    let stop = stop_on_signal()?;
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
    let report = redstuff::bench::s3::run(&options, stop, |line| eprintln!("{line}")).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", redstuff::bench::s3::render(&report));
    }
    Ok(())
}

async fn bench_faults(args: FaultsArgs) -> anyhow::Result<()> {
    let stop = stop_on_signal()?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let options = redstuff::bench::faults::FaultRunOptions {
        exe: std::env::current_exe()?,
        duration: std::time::Duration::from_secs(args.seconds),
        clients: args.clients as usize,
        seed,
        history: args.history,
    };
    let report = redstuff::bench::faults::run(&options, stop, |line| eprintln!("{line}")).await?;
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
    let input_len = match &args.input {
        Some(path) => Some(
            std::fs::metadata(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
                .len(),
        ),
        None => None,
    };
    let options = CodecBenchOptions {
        shards: args.shards,
        size: args.size,
        segment_size: args.segment_size,
        input: args.input,
        rounds: codec_rounds(args.rounds, args.size, input_len),
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

/// The rounds of `bench codec`: those asked for, else the default for the
/// blob's size, which with `--input` is the input file's length (`--size`
/// is ignored then).
fn codec_rounds(asked: Option<u32>, size: u64, input_len: Option<u64>) -> usize {
    match asked {
        Some(rounds) => rounds as usize,
        None => codec_bench::default_rounds(input_len.unwrap_or(size)),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `redstuff bench ...` alone.
    #[derive(Debug, Parser)]
    struct Bench {
        #[command(subcommand)]
        bench: BenchCommand,
    }

    #[test]
    fn default_rounds_follow_the_input_files_length() {
        // --size keeps its default of 64 MiB (3 rounds) with --input.
        assert_eq!(codec_rounds(None, 64 << 20, Some(1 << 20)), 15);
        assert_eq!(codec_rounds(None, 64 << 20, Some(1 << 30)), 1);
        assert_eq!(codec_rounds(None, 64 << 20, None), 3);
        assert_eq!(codec_rounds(Some(2), 64 << 20, Some(1 << 20)), 2);
    }

    #[test]
    fn zero_rounds_or_clients_and_seconds_past_a_day_are_refused_by_the_parser() {
        let parses = |args: &[&str]| {
            Bench::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
                .map(|cli| cli.bench)
                .is_ok()
        };
        assert!(parses(&["codec", "--rounds", "1"]));
        assert!(!parses(&["codec", "--rounds", "0"]));
        assert!(parses(&["faults", "--clients", "1", "--seconds", "86400"]));
        assert!(!parses(&["faults", "--clients", "0"]));
        assert!(!parses(&["faults", "--seconds", "86401"]));
        assert!(!parses(&["faults", "--seconds", "18446744073709551615"]));
    }
}
