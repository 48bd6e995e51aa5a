//! `redstuff bench codec`: throughput and memory of encode (with
//! commitments), decode and the rebuild of one sliver pair, against a
//! one-dimensional reed-solomon-simd encode of the same bytes in the same
//! run.
//!
//! The blob is generated on the fly (or read from a file) one segment at a
//! time, so a blob far larger than memory can be measured: memory holds one
//! segment, its slivers and the working set of the phase at hand.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rayon::prelude::*;
use serde::Serialize;

use crate::bench::memory;
use crate::codec::config::{BlobLayout, EncodingConfig};
use crate::codec::{
    decode_segment, decode_segment_with, encode_segment_shared, rebuild, rs, BlobMetadata,
    DecodeError, DecodedSegment, EncodedSegment, Primary, PrimarySliver, RecoverySymbol, Secondary,
    SymbolSource, Verification,
};
use crate::units::format_bytes;

/// What to measure.
#[derive(Debug, Clone)]
pub struct CodecBenchOptions {
    /// Shard count n.
    pub shards: u16,
    /// Blob size in bytes (ignored when `input` is given).
    pub size: u64,
    /// Segment size in bytes.
    pub segment_size: u64,
    /// Read the blob from this file instead of generating it.
    pub input: Option<PathBuf>,
    /// How many times to run the whole blob (at least 1); the median is
    /// reported.
    pub rounds: usize,
    /// Run the encode phase alone (no baseline, decode or rebuild): its
    /// peak memory is then the encoder's, not what other phases left.
    pub encode_only: bool,
}

/// One measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// Phase name.
    pub phase: &'static str,
    /// What it does, for people.
    pub description: &'static str,
    /// Seconds spent in the phase, summed over segments (median round).
    pub seconds: f64,
    /// Blob bytes per second, in MB/s (10^6 bytes).
    pub mb_per_s: f64,
    /// Throughput as a fraction of the baseline's; `None` (JSON null)
    /// when no baseline ran (`--encode-only`).
    pub ratio_to_baseline: Option<f64>,
    /// Largest resident memory seen during the phase, in bytes.
    pub peak_rss_bytes: Option<u64>,
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct CodecBenchReport {
    /// Shard count n.
    pub shards: usize,
    /// f.
    pub f: usize,
    /// p.
    pub p: usize,
    /// q.
    pub q: usize,
    /// Blob size in bytes.
    pub size: u64,
    /// Segment size in bytes.
    pub segment_size: u64,
    /// Number of segments.
    pub segments: u64,
    /// Threads used.
    pub threads: usize,
    /// Rounds run; times are the median round's.
    pub rounds: usize,
    /// Bytes of all slivers over the blob size.
    pub expansion: f64,
    /// Bytes moved to rebuild one sliver pair in every segment (symbols
    /// and proofs).
    pub repair_bytes: u64,
    /// `(p + q)` symbols per segment, the ideal repair traffic.
    pub repair_symbol_bytes: u64,
    /// Peak resident memory of the whole run.
    pub peak_rss_bytes: Option<u64>,
    /// Every phase.
    pub phases: Vec<PhaseResult>,
}

/// Time and peak memory of one phase, per round.
struct Tally {
    rounds: Vec<Duration>,
    peak: Option<u64>,
}

impl Tally {
    fn new(rounds: usize) -> Self {
        Self {
            rounds: vec![Duration::ZERO; rounds],
            peak: None,
        }
    }

    fn measure<T>(&mut self, round: usize, work: impl FnOnce() -> T) -> T {
        let can_reset = memory::reset_peak();
        let start = Instant::now();
        let out = work();
        self.rounds[round] += start.elapsed();
        if can_reset {
            self.peak = self.peak.max(memory::peak_rss_bytes());
        }
        out
    }

    /// The median round: later rounds run with warm caches and allocator.
    fn median(&self) -> Duration {
        let mut sorted = self.rounds.clone();
        sorted.sort();
        sorted[sorted.len() / 2]
    }
}

/// Rounds to run by default (the median round is reported): 15 up to
/// 16 MiB, where a phase takes milliseconds and the first round pays for
/// waking threads and warming caches; 3 up to 256 MiB; 1 beyond.
pub fn default_rounds(size: u64) -> usize {
    if size <= 16 << 20 {
        15
    } else if size <= 256 << 20 {
        3
    } else {
        1
    }
}

/// Index of the encode phase in [`PHASES`].
const ENCODE: usize = 1;

const PHASES: [(&str, &str); 7] = [
    (
        "baseline",
        "1-D reed-solomon-simd encode, p + (n - p), cache-sized stripes, all threads",
    ),
    (
        "encode",
        "Red Stuff encode with commitments (2n sliver hashes per segment)",
    ),
    (
        "decode_systematic",
        "decode from the p systematic primary slivers, each verified against its hash",
    ),
    (
        "decode_recovery",
        "decode from the last p primary slivers (Reed-Solomon on every column), decoded systematic slivers verified",
    ),
    (
        "decode_strict",
        "decode from the p systematic primary slivers, the whole encoding re-derived and all 2n hashes checked",
    ),
    (
        "rebuild_peers",
        "peers serving one lost pair: p + q slivers expanded, symbols and proofs cut",
    ),
    (
        "rebuild_node",
        "the rebuilding node: verify p + q symbols, decode both slivers, check their hashes",
    ),
];

/// Runs the benchmark; `progress` is told each segment as it completes.
pub fn run(
    options: &CodecBenchOptions,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<CodecBenchReport> {
    let config = EncodingConfig::new(options.shards)?;
    let size = match &options.input {
        Some(path) => std::fs::metadata(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
            .len(),
        None => options.size,
    };
    let layout = BlobLayout::new(config, options.segment_size, size)?;
    anyhow::ensure!(options.rounds >= 1, "at least 1 round is needed");
    let rounds = options.rounds;
    let mut tallies: Vec<Tally> = (0..PHASES.len()).map(|_| Tally::new(rounds)).collect();
    let mut repair = RepairTraffic::default();
    let mut segment_data = Vec::new();
    let segments = layout.segment_count();

    for round in 0..rounds {
        let mut input = match &options.input {
            Some(path) => Some(File::open(path)?),
            None => None,
        };
        for index in 0..segments {
            let len = layout.segment(index).expect("index below count").len() as usize;
            segment_data.clear();
            match input.as_mut() {
                Some(file) => {
                    file.by_ref()
                        .take(len as u64)
                        .read_to_end(&mut segment_data)?;
                    if segment_data.len() != len {
                        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                    }
                }
                None => fill_pseudo_random(&mut segment_data, len, index),
            }
            // The slivers share the segment's buffer, as on a gateway.
            let segment = Bytes::from(std::mem::take(&mut segment_data));
            if options.encode_only {
                tallies[ENCODE].measure(round, || encode_segment_shared(config, 0, segment));
            } else {
                let traffic =
                    measure_segment(&config, options.segment_size, segment, &mut tallies, round)
                        .map_err(|e| anyhow::anyhow!("segment {index}: {e}"))?;
                if round == 0 {
                    repair.add(&traffic);
                }
            }
            progress(
                round as u64 * segments + index + 1,
                rounds as u64 * segments,
            );
        }
    }

    let baseline_rate = if options.encode_only {
        0.0
    } else {
        rate(size, tallies[0].median())
    };
    let phases = PHASES
        .iter()
        .zip(&tallies)
        .enumerate()
        .filter(|(i, _)| !options.encode_only || *i == ENCODE)
        .map(|(_, ((phase, description), tally))| {
            let mb_per_s = rate(size, tally.median());
            PhaseResult {
                phase,
                description,
                seconds: tally.median().as_secs_f64(),
                mb_per_s,
                ratio_to_baseline: (baseline_rate > 0.0).then(|| mb_per_s / baseline_rate),
                peak_rss_bytes: tally.peak,
            }
        })
        .collect();
    Ok(CodecBenchReport {
        shards: config.n(),
        f: config.f(),
        p: config.p(),
        q: config.q(),
        size,
        segment_size: options.segment_size,
        segments,
        threads: rayon::current_num_threads(),
        expansion: if size == 0 {
            0.0
        } else {
            layout.encoded_len() as f64 / size as f64
        },
        rounds,
        repair_bytes: repair.sent,
        repair_symbol_bytes: repair.ideal,
        // Each phase's peak counts from its start; between phases nothing
        // grows. Without resets the process's high-water mark is the run's.
        peak_rss_bytes: tallies
            .iter()
            .filter_map(|t| t.peak)
            .max()
            .or_else(memory::peak_rss_bytes),
        phases,
    })
}

/// Bytes moved to rebuild one pair: what was sent, and the ideal (p + q) symbols.
#[derive(Debug, Default)]
struct RepairTraffic {
    sent: u64,
    ideal: u64,
}

impl RepairTraffic {
    fn add(&mut self, other: &RepairTraffic) {
        self.sent += other.sent;
        self.ideal += other.ideal;
    }
}

/// Runs every phase on one segment, checking each result. The rebuild
/// phases run first, while every sliver is held; the decodes then hold
/// only the primary slivers they read, as a reader would.
fn measure_segment(
    config: &EncodingConfig,
    segment_size: u64,
    segment: Bytes,
    tallies: &mut [Tally],
    round: usize,
) -> anyhow::Result<RepairTraffic> {
    let config = *config;
    let data = &segment[..];
    tallies[0].measure(round, || baseline_encode(&config, data));
    let encoded = tallies[1].measure(round, || encode_segment_shared(config, 0, segment.clone()));
    let metadata = &single_segment_metadata(&config, segment_size, &encoded);

    let (primary_symbols, secondary_symbols) =
        tallies[5].measure(round, || serve_pair_zero(&encoded));
    let traffic = RepairTraffic {
        sent: primary_symbols
            .iter()
            .map(|s| s.to_bytes().len() as u64)
            .sum::<u64>()
            + secondary_symbols
                .iter()
                .map(|s| s.to_bytes().len() as u64)
                .sum::<u64>(),
        ideal: encoded.layout.repair_symbol_bytes(),
    };
    let rebuilt = tallies[6].measure(round, || {
        let secondary = rebuild::<Secondary>(metadata, 0, 0, primary_symbols);
        let primary = rebuild::<Primary>(metadata, 0, 0, secondary_symbols);
        (secondary, primary)
    });
    match rebuilt {
        (Ok(s), Ok(p)) if s.sliver == encoded.secondary[0] && p.sliver == encoded.primary[0] => {}
        _ => anyhow::bail!("the rebuild of pair 0 did not reproduce the lost slivers"),
    }

    let p = config.p();
    let mut primary = encoded.primary;
    drop(encoded.secondary);
    // Each phase measures its own memory, not the encoder's spare buffers
    // (a gateway frees those once idle; `--encode-only` keeps them from one
    // segment to the next, as a gateway does while it encodes).
    crate::codec::buffer_pool::release_idle(Duration::ZERO);
    let tail = primary.split_off(config.n() - p);
    primary.truncate(p);
    let systematic = primary;
    let decoded = tallies[2].measure(round, || decode_segment(metadata, 0, systematic.clone()));
    check_decoded(decoded, data)?;
    let decoded = tallies[3].measure(round, || decode_segment(metadata, 0, tail));
    check_decoded(decoded, data)?;
    let decoded = tallies[4].measure(round, || {
        decode_segment_with(metadata, 0, systematic, Verification::Strict)
    });
    check_decoded(decoded, data)?;
    crate::codec::buffer_pool::release_idle(Duration::ZERO);
    Ok(traffic)
}

fn rate(bytes: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        bytes as f64 / seconds / 1e6
    } else {
        0.0
    }
}

fn check_decoded(
    decoded: Result<DecodedSegment, DecodeError>,
    expected: &[u8],
) -> anyhow::Result<()> {
    let decoded = decoded?;
    anyhow::ensure!(
        decoded.data == expected,
        "decoded bytes differ from the input"
    );
    Ok(())
}

/// Metadata of a blob made of this one segment alone, so the decode and
/// rebuild phases run without holding every segment's hashes. (The bench
/// encodes every segment as segment 0; a segment's slivers and hashes do
/// not depend on its index.)
fn single_segment_metadata(
    config: &EncodingConfig,
    segment_size: u64,
    encoded: &EncodedSegment,
) -> BlobMetadata {
    let layout =
        BlobLayout::new(*config, segment_size, encoded.layout.len()).expect("valid layout");
    BlobMetadata::new(layout, vec![encoded.hashes.clone()]).expect("consistent hashes")
}

/// Peers answer the rebuild of pair 0: primary slivers 1..=p give symbols
/// for secondary sliver 0, secondary slivers 1..=q give symbols for primary 0.
type PairSymbols = (Vec<RecoverySymbol<Primary>>, Vec<RecoverySymbol<Secondary>>);

fn serve_pair_zero(encoded: &EncodedSegment) -> PairSymbols {
    let config = encoded.layout.config();
    let (p, q) = (config.p(), config.q());
    let primary = encoded.primary[1..=p]
        .par_iter()
        .map(|sliver: &PrimarySliver| SymbolSource::new(sliver).symbol(0).expect("target below n"))
        .collect();
    let secondary = encoded.secondary[1..=q]
        .par_iter()
        .map(|sliver| SymbolSource::new(sliver).symbol(0).expect("target below n"))
        .collect();
    (primary, secondary)
}

/// The baseline: the segment as p shards, extended by n - p recovery shards
/// with reed-solomon-simd, in cache-sized stripes spread over all threads.
/// Only the last shard is copied (to pad it); the others are read in place.
fn baseline_encode(config: &EncodingConfig, data: &[u8]) -> Vec<Vec<u8>> {
    let (n, p) = (config.n(), config.p());
    let shard_len = data.len().div_ceil(p).max(2).next_multiple_of(2);
    let full = (data.len() / shard_len).min(p);
    let mut tail = data[full * shard_len..].to_vec();
    tail.resize((p - full) * shard_len, 0);
    let shards: Vec<&[u8]> = data[..full * shard_len]
        .chunks_exact(shard_len)
        .chain(tail.chunks_exact(shard_len))
        .collect();
    let stripes: Vec<_> = rs::stripes(shard_len, n).collect();
    stripes
        .into_par_iter()
        .map(|stripe| {
            let originals: Vec<&[u8]> = shards.iter().map(|s| &s[stripe.clone()]).collect();
            let mut out = vec![0u8; (n - p) * stripe.len()];
            rs::encode_recovery(&originals, n - p, &mut out);
            out
        })
        .collect()
}

/// Fills `buffer` with `len` pseudo-random bytes, a different stream per segment.
fn fill_pseudo_random(buffer: &mut Vec<u8>, len: usize, segment: u64) {
    buffer.resize(len, 0);
    buffer
        .par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(chunk, bytes)| {
            let mut state = segment.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (chunk as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
            for word in bytes.chunks_mut(8) {
                // splitmix64
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                word.copy_from_slice(&z.to_le_bytes()[..word.len()]);
            }
        });
}

/// The report as a table for people.
pub fn render_table(report: &CodecBenchReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "redstuff bench codec: n = {} (f = {}, p = {}, q = {}), {} in {} segment(s) of up to {}, {} threads, median of {} round(s)\n",
        report.shards,
        report.f,
        report.p,
        report.q,
        format_bytes(report.size),
        report.segments,
        format_bytes(report.segment_size),
        report.threads,
        report.rounds
    ));
    out.push_str(&format!(
        "{:<18} {:>10} {:>10} {:>9} {:>11}\n",
        "phase", "MB/s", "seconds", "ratio", "peak RSS"
    ));
    for phase in &report.phases {
        out.push_str(&format!(
            "{:<18} {:>10.1} {:>10.3} {:>9} {:>11}\n",
            phase.phase,
            phase.mb_per_s,
            phase.seconds,
            phase
                .ratio_to_baseline
                .map_or("-".into(), |ratio| format!("{ratio:.3}")),
            phase.peak_rss_bytes.map_or("-".into(), format_bytes)
        ));
    }
    out.push_str(&format!(
        "stored: {:.2}x the blob; rebuilding one pair moves {} with proofs ({} of symbols alone), {:.4} of the blob\n",
        report.expansion,
        format_bytes(report.repair_bytes),
        format_bytes(report.repair_symbol_bytes),
        if report.size == 0 { 0.0 } else { report.repair_bytes as f64 / report.size as f64 },
    ));
    out.push_str(&format!(
        "peak RSS of the run: {}; ratio = phase MB/s / baseline MB/s\n",
        report.peak_rss_bytes.map_or("-".into(), format_bytes)
    ));
    out
}

/// The report as JSON lines: one object per phase, then a summary object.
pub fn render_json_lines(report: &CodecBenchReport) -> String {
    let mut out = String::new();
    for phase in &report.phases {
        let line = serde_json::json!({
            "bench": "codec",
            "shards": report.shards,
            "size": report.size,
            "phase": phase,
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    let summary = serde_json::json!({ "bench": "codec", "summary": report });
    out.push_str(&summary.to_string());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::config::HASH_LEN;
    use crate::codec::merkle;

    #[test]
    fn a_small_run_measures_every_phase_and_checks_its_results() {
        let options = CodecBenchOptions {
            shards: 7,
            size: 300_000,
            segment_size: 128 << 10,
            input: None,
            rounds: 1,
            encode_only: false,
        };
        let mut seen = Vec::new();
        let report = run(&options, |done, total| seen.push((done, total))).unwrap();
        assert_eq!(seen, vec![(1, 3), (2, 3), (3, 3)]);
        assert_eq!(report.phases.len(), PHASES.len());
        assert!(report.phases.iter().all(|p| p.seconds > 0.0));
        // Repair moves (p + q) symbols per segment plus proofs and headers.
        assert!(report.repair_bytes > report.repair_symbol_bytes);
        let per_symbol_overhead = (merkle::proof_len(7) * HASH_LEN + 32) as u64;
        assert!(report.repair_bytes <= report.repair_symbol_bytes + 3 * 8 * per_symbol_overhead);
        let lines = render_json_lines(&report);
        assert_eq!(lines.lines().count(), PHASES.len() + 1);
        for line in lines.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        assert!(render_table(&report).contains("decode_strict"));
    }

    #[test]
    fn an_input_file_is_read_segment_by_segment() {
        let dir = std::env::temp_dir().join(format!("redstuff-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("blob");
        std::fs::write(&path, vec![7u8; 5000]).unwrap();
        let options = CodecBenchOptions {
            shards: 4,
            size: 0,
            segment_size: 2048,
            input: Some(path),
            rounds: 2,
            encode_only: false,
        };
        let report = run(&options, |_, _| {}).unwrap();
        assert_eq!((report.size, report.segments), (5000, 3));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn encode_only_measures_the_encode_phase_alone() {
        let options = CodecBenchOptions {
            shards: 7,
            size: 300_000,
            segment_size: 128 << 10,
            input: None,
            rounds: 1,
            encode_only: true,
        };
        let report = run(&options, |_, _| {}).unwrap();
        let phases: Vec<&str> = report.phases.iter().map(|p| p.phase).collect();
        assert_eq!(phases, ["encode"]);
        assert!(report.phases[0].seconds > 0.0);
        assert!(render_table(&report).contains("encode"));
        let json = serde_json::to_value(&report).unwrap();
        assert!(
            json["phases"][0]["ratio_to_baseline"].is_null(),
            "no baseline ran: no ratio, not 0: {json}"
        );
    }

    #[test]
    fn invalid_parameters_are_errors() {
        let options = |shards, segment_size| CodecBenchOptions {
            shards,
            size: 10,
            segment_size,
            input: None,
            rounds: 1,
            encode_only: false,
        };
        assert!(run(&options(3, 1 << 20), |_, _| {}).is_err());
        assert!(run(&options(7, 10), |_, _| {}).is_err());
        let no_rounds = CodecBenchOptions {
            rounds: 0,
            ..options(7, 1 << 20)
        };
        let error = run(&no_rounds, |_, _| {}).unwrap_err().to_string();
        assert!(error.contains("at least 1 round"), "{error}");
    }
}
