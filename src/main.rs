//! The `redstuff` command: one binary, one subcommand per part.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use redstuff::bench::codec::{self as codec_bench, CodecBenchOptions};
use redstuff::codec::DEFAULT_SEGMENT_SIZE;
use redstuff::units::parse_bytes;

/// redstuff keeps blobs in a fleet of storage nodes with Red Stuff, the
/// two-dimensional erasure code of Walrus: any f of n shards may be lost or
/// lie, and a lost shard is rebuilt from small recovery symbols of its peers.
#[derive(Debug, Parser)]
#[command(name = "redstuff", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure throughput and memory against a baseline in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Encode (with commitments), decode and rebuild one sliver pair of a
    /// blob generated on the fly or read from a file, against a 1-D
    /// reed-solomon-simd encode of the same bytes.
    Codec(CodecArgs),
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
}

fn main() -> ExitCode {
    keep_freed_memory_a_while();
    let cli = Cli::parse();
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
    }
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

/// Keeps freed memory for a second (mimalloc's default is 10 ms), so the
/// next segment reuses the last one's pages instead of faulting in fresh
/// zeroed ones: 186 ms against 116 ms per 64 MiB encode at n = 100.
fn keep_freed_memory_a_while() {
    // SAFETY: sets a plain integer option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000) };
}
