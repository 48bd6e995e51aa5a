//! `redstuff bench fleet`: a local 7-shard fleet for real (node processes,
//! gateway, control loop), measured against this machine's limits in the
//! same run: put and get of a blob through the gateway (the better of two
//! blobs, as the limits are the best of several runs), against the codec
//! alone and against writing the encoded bytes with fsync to the same
//! disk; optionally several clients at once; small operations with one
//! node stopped (`hung_node`); then the time and the bytes to rebuild a
//! node wiped while it held a given amount of slivers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use super::StopRequest;
use crate::codec::{decode_segment, BlobEncoder, EncodingConfig, Primary, Sliver};
use crate::units::format_bytes;

/// What to measure.
#[derive(Debug, Clone)]
pub struct FleetBenchOptions {
    /// The `redstuff` executable the fleet's nodes run.
    pub exe: PathBuf,
    /// Size of the blob put and got through the gateway.
    pub size: u64,
    /// Slivers the wiped node must hold before it is wiped.
    pub repair_bytes: u64,
    /// Segment size.
    pub segment_size: u64,
    /// Blobs put, then got, at once after the single-blob run (1: none).
    pub clients: usize,
    /// The gateway's upload memory budget.
    pub upload_memory: u64,
    /// The gateway's read memory budget.
    pub read_memory: u64,
    /// The fleet serves TLS (`redstuff dev --tls`): nodes, and the gateway
    /// the client calls.
    pub tls: bool,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct FleetBenchReport {
    /// Shards.
    pub shards: u16,
    /// Whether every call went over TLS (the client's to the gateway, the
    /// gateway's to nodes).
    pub tls: bool,
    /// Blob size put and got.
    pub size: u64,
    /// Codec alone: encode with commitments, MB/s.
    pub codec_encode_mb_per_s: f64,
    /// Codec alone: verified decode from systematic slivers, MB/s.
    pub codec_decode_mb_per_s: f64,
    /// PUT through the gateway, MB/s of blob.
    pub put_mb_per_s: f64,
    /// GET through the gateway, MB/s of blob.
    pub get_mb_per_s: f64,
    /// The first PUT on the freshly started fleet, MB/s of blob: its
    /// processes touch their memory for the first time (the better of the
    /// two PUTs is `put_mb_per_s`).
    pub first_put_mb_per_s: f64,
    /// The machine's cores.
    pub cores: usize,
    /// What every process together used during the PUT counted, CPU-seconds
    /// (`None` off Linux).
    pub put_cpu_seconds: Option<f64>,
    /// The share of the cores' time busy during that PUT: near 1, the PUT
    /// was bound by the cores.
    pub put_cores_busy: Option<f64>,
    /// As `put_cpu_seconds`, for the GET counted.
    pub get_cpu_seconds: Option<f64>,
    /// As `put_cores_busy`, for the GET counted.
    pub get_cores_busy: Option<f64>,
    /// Writing the encoded blob (3.73x its bytes, a file per sliver, each
    /// fsynced, seven writers as seven nodes) to the fleet's disk, MB/s of blob.
    pub disk_write_mb_per_s: f64,
    /// The machine's limit for a PUT: the slower of encode and disk write.
    pub put_limit_mb_per_s: f64,
    /// Reading the systematic primary slivers of the written blob back as
    /// the nodes read them for a GET (past the page cache, one reader per
    /// sliver of a segment at once), MB/s of blob.
    pub disk_read_mb_per_s: f64,
    /// get / the slower of decode and the disk read: how near a GET comes
    /// to the machine's limit for its work (the goal is against
    /// decode alone, `get_ratio`).
    pub get_ratio_to_limit: f64,
    /// put / the machine's limit.
    pub put_ratio: f64,
    /// get / codec decode.
    pub get_ratio: f64,
    /// Bytes of slivers the wiped node held.
    pub wiped_node_bytes: u64,
    /// Blob bytes stored in the fleet when the node was wiped.
    pub fleet_blob_bytes: u64,
    /// Seconds from the kill to every blob Healthy again.
    pub repair_seconds: f64,
    /// Bytes moved between nodes by the repair.
    pub repair_bytes_moved: u64,
    /// Bytes a repair that re-reads whole blobs would move.
    pub naive_repair_bytes: u64,
    /// Several clients at once, when asked for.
    pub concurrent: Option<super::concurrent::ConcurrentReport>,
    /// Small operations with one node stopped, against the same with
    /// every node answering.
    pub hung_node: super::hung_node::HungNodeReport,
}

/// MB/s of `bytes` moved in `elapsed`.
pub(super) fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6
}

/// The least `--size`: smaller blobs measure the requests' own overheads
/// more than the fleet, and the fill before the repair would store
/// thousands of them.
pub const MIN_SIZE: u64 = 4 << 20;
/// The largest `--size` where the memory available is not known.
pub const MAX_SIZE_UNKNOWN_MEMORY: u64 = 16 << 30;
/// Bytes the bench holds per byte of `--size` at its peak: the blob and
/// its encoding (3.73 times its bytes) while the codec alone is measured.
const MEMORY_PER_SIZE_BYTE: u64 = 5;
/// The most blobs stored to fill the node wiped before the repair.
pub const MAX_FILL_PUTS: u64 = 2_000;

/// The seed of the repair stage's first fill blob (the next ones count
/// up): far from the seeds of the blobs stored before it (1, 101, 1000
/// and up for concurrent clients, 50,000 and up for the hung node), so a
/// fill PUT never stores bytes the fleet holds already and every byte it
/// counts is one more on the nodes.
pub const FIRST_FILL_SEED: u64 = 1 << 32;

/// Why `bench fleet` refuses its sizes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetSizeError {
    /// `--size` is below [`MIN_SIZE`].
    #[error(
        "--size {}: at least {} (smaller blobs measure the requests' overheads, not the fleet)",
        format_bytes(*size),
        format_bytes(MIN_SIZE)
    )]
    TooSmall {
        /// The size asked for.
        size: u64,
    },
    /// What the bench would hold for `--size` is more than the memory
    /// available.
    #[error(
        "--size {}: the bench would hold about {} (the blob and its encoding), more than the {} of memory available",
        format_bytes(*size),
        format_bytes(*needed),
        format_bytes(*available)
    )]
    BeyondMemory {
        /// The size asked for.
        size: u64,
        /// What the bench would hold.
        needed: u64,
        /// The memory available.
        available: u64,
    },
    /// `--size` is above [`MAX_SIZE_UNKNOWN_MEMORY`] where the memory
    /// available is not known.
    #[error(
        "--size {}: at most {} where the memory available is not known",
        format_bytes(*size),
        format_bytes(MAX_SIZE_UNKNOWN_MEMORY)
    )]
    BeyondCap {
        /// The size asked for.
        size: u64,
    },
    /// Filling the node wiped before the repair would take more blobs of
    /// `--size` than [`MAX_FILL_PUTS`].
    #[error(
        "--repair-bytes {} with --size {} would store about {puts} blobs before the repair \
         (at most {}): raise --size or lower --repair-bytes",
        format_bytes(*repair_bytes),
        format_bytes(*size),
        MAX_FILL_PUTS
    )]
    TooManyFillPuts {
        /// The slivers the wiped node must hold.
        repair_bytes: u64,
        /// The size asked for.
        size: u64,
        /// The blobs the fill would store, at most.
        puts: u64,
    },
}

/// Checks `bench fleet`'s sizes before anything starts: `size` at least
/// [`MIN_SIZE`]; what the bench holds for it within `available_memory`
/// (at most [`MAX_SIZE_UNKNOWN_MEMORY`] where that is not known); and the
/// fill of the node wiped with `repair_bytes` of slivers within
/// [`MAX_FILL_PUTS`] blobs.
pub fn check_sizes(
    size: u64,
    repair_bytes: u64,
    available_memory: Option<u64>,
) -> Result<(), FleetSizeError> {
    if size < MIN_SIZE {
        return Err(FleetSizeError::TooSmall { size });
    }
    let needed = size.saturating_mul(MEMORY_PER_SIZE_BYTE);
    match available_memory {
        Some(available) if needed > available => {
            return Err(FleetSizeError::BeyondMemory {
                size,
                needed,
                available,
            })
        }
        None if size > MAX_SIZE_UNKNOWN_MEMORY => return Err(FleetSizeError::BeyondCap { size }),
        _ => {}
    }
    let puts = fill_puts(size, repair_bytes);
    if puts > MAX_FILL_PUTS {
        return Err(FleetSizeError::TooManyFillPuts {
            repair_bytes,
            size,
            puts,
        });
    }
    Ok(())
}

/// At most how many blobs of `size` leave one of the 7 nodes holding
/// `repair_bytes` of slivers: each leaves it more than half its size
/// (3.73 times the blob over 7 nodes).
fn fill_puts(size: u64, repair_bytes: u64) -> u64 {
    repair_bytes.div_ceil((size / 2).max(1))
}

/// Runs the benchmark; `log` is told what happens. Once `stop` is
/// requested it resumes any node it stopped, stops the fleet, removes its
/// files and returns [`super::Interrupted`].
pub async fn run(
    options: &FleetBenchOptions,
    mut stop: StopRequest,
    mut log: impl FnMut(&str),
) -> anyhow::Result<FleetBenchReport> {
    check_sizes(
        options.size,
        options.repair_bytes,
        super::memory::available_bytes(),
    )?;
    let shards = 7u16;
    let work = tempfile::tempdir()?;
    let blob_path = work.path().join("blob");
    let mut data = vec![0u8; options.size as usize];
    super::fill(&mut data, 1);
    super::write_input(&blob_path, &data)?;

    // The codec alone on the same bytes: the best of three runs, so the
    // first run's thread start-up and page faults do not count against it.
    let config = EncodingConfig::new(shards)?;
    let encoder = BlobEncoder::new(config, options.segment_size)?;
    let (mut encode_time, mut decode_time) = (Duration::MAX, Duration::MAX);
    let mut encoded = Vec::new();
    for _ in 0..3 {
        stop.check()?;
        encoded.clear();
        let start = Instant::now();
        let (metadata, segments) = tokio::task::block_in_place(|| encoder.encode(&data))?;
        encode_time = encode_time.min(start.elapsed());
        let start = Instant::now();
        for segment in &segments {
            let systematic: Vec<Sliver<Primary>> = segment.primary[..config.p()].to_vec();
            tokio::task::block_in_place(|| decode_segment(&metadata, segment.index, systematic))?;
        }
        decode_time = decode_time.min(start.elapsed());
        encoded = segments;
    }
    log(&format!(
        "codec alone: encode {:.0} MB/s, decode {:.0} MB/s",
        mb_per_s(options.size, encode_time),
        mb_per_s(options.size, decode_time)
    ));
    // The disk alone: the best of two runs too, each written, then its
    // systematic slivers read back.
    let disk_dir = work.path().join("disk");
    let (mut disk_time, mut read_time) = (Duration::MAX, Duration::MAX);
    for _ in 0..2 {
        stop.check()?;
        let took = tokio::task::block_in_place(|| write_like_nodes(&disk_dir, &encoded))?;
        disk_time = disk_time.min(took);
        let took =
            tokio::task::block_in_place(|| read_like_nodes(&disk_dir, &encoded, config.p()))?;
        read_time = read_time.min(took);
        std::fs::remove_dir_all(&disk_dir)?;
    }
    drop(encoded);
    log(&format!(
        "disk alone: the encoded blob written with fsync at {:.0} MB/s of blob, \
         its systematic slivers read back at {:.0} MB/s",
        mb_per_s(options.size, disk_time),
        mb_per_s(options.size, read_time)
    ));

    stop.check()?;

    // The fleet.
    let (url_tx, url_rx) = tokio::sync::oneshot::channel::<(String, PathBuf, Option<PathBuf>)>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let dev_config = crate::dev::DevConfig {
        shards,
        segment_size: options.segment_size,
        period: Duration::from_millis(200),
        scrub_interval_secs: 0,
        upload_memory_bytes: options.upload_memory,
        read_memory_bytes: options.read_memory,
        tls: options.tls,
        ..crate::dev::DevConfig::new(work.path().join("fleet"), options.exe.clone())
    };
    let fleet = tokio::spawn(crate::dev::run(
        dev_config,
        async move {
            let _ = stop_rx.await;
        },
        move |endpoints| {
            let _ = url_tx.send((
                endpoints.gateway.clone(),
                endpoints.token.clone(),
                endpoints.ca.clone(),
            ));
        },
    ));
    let started = super::until_stopped(&mut stop, async {
        url_rx
            .await
            .map_err(|_| anyhow::anyhow!("the fleet did not start"))
    })
    .await;
    let connected = started.and_then(|(gateway, token, ca)| {
        Ok((
            crate::dev::authorized_client(&token, ca.as_deref())?,
            gateway,
        ))
    });
    let (http, gateway) = match connected {
        Ok(connected) => connected,
        Err(e) => {
            let _ = stop_tx.send(());
            let _ = fleet.await;
            return Err(e);
        }
    };
    let result = super::until_stopped(
        &mut stop,
        measure(options, &http, &gateway, &blob_path, &data, &mut log),
    )
    .await;
    if result.is_err() {
        // Failed or interrupted while a node was stopped: none stays so.
        super::nodes::resume_all(&http, &gateway).await;
    }
    let _ = stop_tx.send(());
    let _ = fleet.await;
    let (single, concurrent, hung_node, repair) = result?;
    let (put_time, get_time) = (single.put.took, single.get.took);
    let encode = mb_per_s(options.size, encode_time);
    let decode = mb_per_s(options.size, decode_time);
    let disk = mb_per_s(options.size, disk_time);
    let limit = encode.min(disk);
    let disk_read = mb_per_s(options.size, read_time);
    let put = mb_per_s(options.size, put_time);
    let get = mb_per_s(options.size, get_time);
    Ok(FleetBenchReport {
        shards,
        tls: options.tls,
        size: options.size,
        codec_encode_mb_per_s: encode,
        codec_decode_mb_per_s: decode,
        disk_write_mb_per_s: disk,
        put_limit_mb_per_s: limit,
        disk_read_mb_per_s: disk_read,
        get_ratio_to_limit: get / decode.min(disk_read),
        put_mb_per_s: put,
        get_mb_per_s: get,
        first_put_mb_per_s: mb_per_s(options.size, single.first_put),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        put_cpu_seconds: single.put.cpu.map(|c| c.busy_seconds),
        put_cores_busy: single.put.cpu.map(|c| c.busy_share),
        get_cpu_seconds: single.get.cpu.map(|c| c.busy_seconds),
        get_cores_busy: single.get.cpu.map(|c| c.busy_share),
        put_ratio: put / limit,
        get_ratio: get / decode,
        wiped_node_bytes: repair.0,
        fleet_blob_bytes: repair.1,
        repair_seconds: repair.2.as_secs_f64(),
        repair_bytes_moved: repair.3,
        naive_repair_bytes: repair.1,
        concurrent,
        hung_node,
    })
}

/// Writes every sliver of `segments` as the nodes would: one writer per
/// pair index, a file per sliver written as the store writes (past the page
/// cache where it can), each fsynced, and the directory fsynced.
fn write_like_nodes(
    dir: &std::path::Path,
    segments: &[crate::codec::EncodedSegment],
) -> anyhow::Result<Duration> {
    let pairs = segments.first().map_or(0, |s| s.primary.len());
    let start = Instant::now();
    std::thread::scope(|scope| {
        let writers: Vec<_> = (0..pairs)
            .map(|pair| {
                scope.spawn(move || -> std::io::Result<()> {
                    let shard_dir = dir.join(pair.to_string());
                    std::fs::create_dir_all(&shard_dir)?;
                    for segment in segments {
                        for (kind, bytes) in [
                            ("primary", segment.primary[pair].to_bytes()),
                            ("secondary", segment.secondary[pair].to_bytes()),
                        ] {
                            let path = bench_sliver_path(dir, pair, segment.index, kind);
                            crate::store::write_file_like_a_store(&path, &bytes)?;
                        }
                        std::fs::File::open(&shard_dir)?.sync_all()?;
                    }
                    Ok(())
                })
            })
            .collect();
        writers
            .into_iter()
            .try_for_each(|w| w.join().expect("writer thread"))
    })?;
    Ok(start.elapsed())
}

/// Where `write_like_nodes` puts the `kind` sliver of `pair` in `segment`.
fn bench_sliver_path(dir: &std::path::Path, pair: usize, segment: u32, kind: &str) -> PathBuf {
    dir.join(pair.to_string()).join(format!("{segment}.{kind}"))
}

/// An operation's time and what the machine's cores did meanwhile.
#[derive(Debug, Clone, Copy)]
struct Timed {
    took: Duration,
    cpu: Option<super::cpu::CpuUse>,
}

impl Timed {
    /// Runs `work`, timing it and measuring the cores meanwhile.
    async fn run<T>(work: impl std::future::Future<Output = T>) -> (T, Timed) {
        let start = Instant::now();
        let (result, cpu) = super::cpu::measured(work).await;
        let took = start.elapsed();
        (result, Timed { took, cpu })
    }

    /// The faster of two.
    fn best(self, other: Timed) -> Timed {
        if other.took < self.took {
            other
        } else {
            self
        }
    }
}

/// The single-blob PUTs and GETs: the better of each, and the first PUT.
struct SingleBlob {
    put: Timed,
    get: Timed,
    first_put: Duration,
}

/// Reads back the systematic primary slivers `write_like_nodes` wrote in
/// `dir`, as nodes serve a GET: for each segment its `p` slivers at once,
/// one reader each, past the page cache; returns the time taken.
fn read_like_nodes(
    dir: &std::path::Path,
    segments: &[crate::codec::EncodedSegment],
    p: usize,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    for segment in segments {
        std::thread::scope(|scope| {
            let readers: Vec<_> = (0..p)
                .map(|pair| {
                    let path = bench_sliver_path(dir, pair, segment.index, "primary");
                    scope
                        .spawn(move || crate::store::read_file_like_a_store(&path).map(|b| b.len()))
                })
                .collect();
            readers
                .into_iter()
                .try_for_each(|r| r.join().expect("reader thread").map(|_| ()))
        })?;
    }
    Ok(start.elapsed())
}

type Measured = (
    SingleBlob,
    Option<super::concurrent::ConcurrentReport>,
    super::hung_node::HungNodeReport,
    (u64, u64, Duration, u64),
);

/// PUTs the file at `path` through the gateway, retrying while every
/// upload slot is taken; returns the blob id and the retries.
pub(super) async fn put_file(
    http: &reqwest::Client,
    gateway: &str,
    path: &std::path::Path,
) -> anyhow::Result<(String, u64)> {
    let mut retries = 0;
    loop {
        let file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        let response = http
            .put(format!("{gateway}/v1/blobs"))
            .header("content-length", len)
            .body(reqwest::Body::wrap_stream(
                tokio_util::io::ReaderStream::with_capacity(file, 1 << 20),
            ))
            .send()
            .await?;
        if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && response.headers().contains_key("retry-after")
            && retries < 600
        {
            retries += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        anyhow::ensure!(
            response.status().is_success(),
            "PUT failed: {}",
            response.text().await?
        );
        let body: serde_json::Value = response.json().await?;
        return Ok((body["id"].as_str().unwrap_or_default().to_string(), retries));
    }
}

/// What a GET's body must be.
#[derive(Clone, Copy)]
pub(super) enum Expected<'a> {
    /// Exactly these bytes, compared as they arrive (a fraction of the
    /// cost of hashing them, which the GET measured would share its cores
    /// with).
    Bytes(&'a [u8]),
    /// Bytes with this BLAKE3 hash (blobs not held in memory).
    Hash(blake3::Hash),
}

/// GETs a blob and checks its body is `expected`.
pub(super) async fn get_checked(
    http: &reqwest::Client,
    gateway: &str,
    id: &str,
    expected: Expected<'_>,
) -> anyhow::Result<()> {
    let response = http.get(format!("{gateway}/v1/blobs/{id}")).send().await?;
    anyhow::ensure!(
        response.status().is_success(),
        "GET failed: {}",
        response.status()
    );
    let mut hasher = blake3::Hasher::new();
    let mut offset = 0;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        match expected {
            Expected::Bytes(bytes) => anyhow::ensure!(
                bytes.get(offset..offset + chunk.len()) == Some(&chunk[..]),
                "the blob read back differs at or after byte {offset}"
            ),
            Expected::Hash(_) => {
                hasher.update(&chunk);
            }
        }
        offset += chunk.len();
    }
    let whole = match expected {
        Expected::Bytes(bytes) => offset == bytes.len(),
        Expected::Hash(hash) => hasher.finalize() == hash,
    };
    anyhow::ensure!(whole, "the blob read back differs");
    Ok(())
}

async fn measure(
    options: &FleetBenchOptions,
    http: &reqwest::Client,
    gateway: &str,
    blob_path: &std::path::Path,
    data: &[u8],
    log: &mut impl FnMut(&str),
) -> anyhow::Result<Measured> {
    let put = |path: PathBuf| async move { put_file(http, gateway, &path).await.map(|(id, _)| id) };
    // Two different blobs of the same size, each put then got; the faster
    // of each counts (as for the codec alone, whose best of three counts),
    // so the first request's fresh processes and pages do not count
    // against the fleet.
    let mut second = vec![0u8; options.size as usize];
    super::fill(&mut second, 101);
    let second_path = blob_path.with_extension("second");
    super::write_input(&second_path, &second)?;
    let never = Timed {
        took: Duration::MAX,
        cpu: None,
    };
    let mut single = SingleBlob {
        put: never,
        get: never,
        first_put: Duration::ZERO,
    };
    for (round, (path, bytes)) in [
        (blob_path.to_path_buf(), data),
        (second_path.clone(), &second[..]),
    ]
    .into_iter()
    .enumerate()
    {
        let (id, timed) = Timed::run(put(path)).await;
        let id = id?;
        if round == 0 {
            single.first_put = timed.took;
        }
        single.put = single.put.best(timed);
        log(&format!(
            "put {} in {:.2} s{}",
            format_bytes(options.size),
            timed.took.as_secs_f64(),
            busy_note(timed)
        ));
        let (got, timed) =
            Timed::run(get_checked(http, gateway, &id, Expected::Bytes(bytes))).await;
        got?;
        single.get = single.get.best(timed);
        log(&format!(
            "got it back in {:.2} s{}",
            timed.took.as_secs_f64(),
            busy_note(timed)
        ));
    }
    std::fs::remove_file(&second_path)?;
    drop(second);

    let concurrent = if options.clients > 1 {
        let dir = blob_path.parent().expect("the blob sits in a directory");
        Some(super::concurrent::measure(options, http, gateway, dir, log).await?)
    } else {
        None
    };

    let hung = super::hung_node::measure(http, gateway, log).await?;

    // Fill the fleet until node-0 holds the requested amount of slivers.
    let status_of = || async {
        let status: serde_json::Value = http
            .get(format!("{gateway}/v1/status"))
            .send()
            .await?
            .json()
            .await?;
        Ok::<serde_json::Value, anyhow::Error>(status)
    };
    let node_bytes = |dir: &str| dir_bytes(std::path::Path::new(dir));
    let mut stored =
        2 * options.size + concurrent.as_ref().map_or(0, |c| c.size * c.clients as u64);
    let mut seed = FIRST_FILL_SEED;
    let mut puts = 0;
    let data_dir = loop {
        let status = status_of().await?;
        let dir = super::nodes::node(&status, WIPED)
            .and_then(|n| n["data_dir"].as_str())
            .unwrap_or_default()
            .to_string();
        if !dir.is_empty() && node_bytes(&dir) >= options.repair_bytes {
            break dir;
        }
        anyhow::ensure!(
            puts < MAX_FILL_PUTS,
            "{WIPED} holds {} of slivers after {puts} more blobs, not the {} asked for",
            format_bytes(node_bytes(&dir)),
            format_bytes(options.repair_bytes)
        );
        puts += 1;
        let mut chunk = vec![0u8; options.size as usize];
        super::fill(&mut chunk, seed);
        let path = blob_path.with_extension(seed.to_string());
        super::write_input(&path, &chunk)?;
        put(path.clone()).await?;
        std::fs::remove_file(path)?;
        stored += options.size;
        seed += 1;
    };
    let wiped = node_bytes(&data_dir);
    let before = repair_bytes_total(http, gateway).await?;
    let status = status_of().await?;
    let blobs = status["blobs"].as_array().map_or(0, Vec::len);
    log(&format!(
        "wiping {WIPED} holding {} of {} blobs",
        format_bytes(wiped),
        blobs
    ));
    let pid = super::nodes::node_pid(&status, WIPED)?;
    let restarts_before = super::nodes::node(&status, WIPED)
        .and_then(|n| n["restarts"].as_u64())
        .unwrap_or(0);
    // Move the data away first: the loop restarts the node at once, and it
    // must find an empty directory, not one being deleted.
    let wiped_dir = format!("{data_dir}.wiped");
    std::fs::rename(&data_dir, &wiped_dir)?;
    super::nodes::signal(pid, libc::SIGKILL);
    let killed_at_ms = super::nodes::now_ms();
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let status = status_of().await?;
        if repaired_since_kill(&status, WIPED, restarts_before, killed_at_ms) {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(1800),
            "repair did not finish in 30 minutes"
        );
    }
    let repair_time = start.elapsed();
    // Deleted only now: deleting gigabytes would have competed with the
    // repair for the disk, and its time is not the repair's.
    std::fs::remove_dir_all(&wiped_dir)?;
    let moved = repair_bytes_total(http, gateway).await? - before;
    log(&format!(
        "repaired in {:.2} s, {} moved",
        repair_time.as_secs_f64(),
        format_bytes(moved)
    ));
    Ok((
        single,
        concurrent,
        hung,
        (wiped, stored, repair_time, moved),
    ))
}

/// The node the repair stage wipes.
const WIPED: &str = "node-0";

/// Whether `status` shows the repair of node `name`, killed at
/// `killed_at_ms` (Unix milliseconds) after `restarts_before` restarts,
/// done: the loop began reading the inventories it shows after the kill
/// (an earlier reading shows the fleet as it was before), the node has
/// restarted since, and every blob is Healthy.
fn repaired_since_kill(
    status: &serde_json::Value,
    name: &str,
    restarts_before: u64,
    killed_at_ms: u64,
) -> bool {
    let fresh = status["observed_at_ms"]
        .as_u64()
        .is_some_and(|at| at > killed_at_ms);
    let restarted = super::nodes::node(status, name)
        .and_then(|n| n["restarts"].as_u64())
        .is_some_and(|restarts| restarts > restarts_before);
    let healthy = status["blobs"]
        .as_array()
        .is_some_and(|blobs| !blobs.is_empty() && blobs.iter().all(|b| b["health"] == "Healthy"));
    fresh && restarted && healthy
}

/// ", cores N% busy (C CPU-s)" for a log line, or nothing off Linux.
fn busy_note(timed: Timed) -> String {
    timed.cpu.map_or(String::new(), |c| {
        format!(
            ", cores {:.0}% busy ({:.2} CPU-s)",
            100.0 * c.busy_share,
            c.busy_seconds
        )
    })
}

async fn repair_bytes_total(http: &reqwest::Client, gateway: &str) -> anyhow::Result<u64> {
    Ok(metric_values(http, gateway, &["redstuff_repair_bytes_total"]).await?[0])
}

/// The values of the gateway's metrics `series` (a name with its labels,
/// as /metrics prints it), 0 for one not printed.
pub(super) async fn metric_values(
    http: &reqwest::Client,
    gateway: &str,
    series: &[&str],
) -> anyhow::Result<Vec<u64>> {
    let text = http
        .get(format!("{gateway}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(series
        .iter()
        .map(|name| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0) as u64
        })
        .collect())
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The report as a table for people.
pub fn render_table(r: &FleetBenchReport) -> String {
    let mut out = format!(
        "redstuff bench fleet: {} shards on 7 node processes{}, blob of {}\n\
         {:<38} {:>10} {:>10}\n",
        r.shards,
        if r.tls { " serving TLS" } else { "" },
        format_bytes(r.size),
        "what",
        "MB/s",
        "ratio"
    );
    let row = |what: &str, mb: f64, ratio: Option<f64>| {
        format!(
            "{what:<38} {mb:>10.1} {:>10}\n",
            ratio.map_or("-".to_string(), |r| format!("{r:.3}"))
        )
    };
    out.push_str(&row("codec encode", r.codec_encode_mb_per_s, None));
    out.push_str(&row("codec decode", r.codec_decode_mb_per_s, None));
    out.push_str(&row(
        "disk: encoded blob written, fsync",
        r.disk_write_mb_per_s,
        None,
    ));
    out.push_str(&row(
        "disk: systematic slivers read back",
        r.disk_read_mb_per_s,
        None,
    ));
    out.push_str(&row(
        "PUT (ratio to slower of encode, write)",
        r.put_mb_per_s,
        Some(r.put_ratio),
    ));
    out.push_str(&row(
        "GET (ratio to decode)",
        r.get_mb_per_s,
        Some(r.get_ratio),
    ));
    out.push_str(&format!(
        "  GET: {:.3} of the slower of decode and the disk read\n",
        r.get_ratio_to_limit
    ));
    for (what, seconds, busy) in [
        ("PUT", r.put_cpu_seconds, r.put_cores_busy),
        ("GET", r.get_cpu_seconds, r.get_cores_busy),
    ] {
        if let (Some(seconds), Some(busy)) = (seconds, busy) {
            out.push_str(&format!(
                "  {what}: the {} cores {:.0}% busy, {:.2} CPU-s by every process; \
                 with the cores all busy it would reach {:.0} MB/s\n",
                r.cores,
                100.0 * busy,
                seconds,
                r.size as f64 / 1e6 / (seconds / r.cores as f64).max(1e-9)
            ));
        }
    }
    out.push_str(&row(
        "first PUT on the fresh fleet",
        r.first_put_mb_per_s,
        None,
    ));
    if let Some(c) = &r.concurrent {
        out.push_str(&super::concurrent::render(c, &row));
    }
    out.push_str(&super::hung_node::render(&r.hung_node));
    out.push_str(&format!(
        "repair of a wiped node holding {} of slivers ({} of blobs in the fleet):\n  \
         {:.2} s, {} moved between nodes, {:.3} of the {} a whole-blob repair would read\n",
        format_bytes(r.wiped_node_bytes),
        format_bytes(r.fleet_blob_bytes),
        r.repair_seconds,
        format_bytes(r.repair_bytes_moved),
        r.repair_bytes_moved as f64 / r.naive_repair_bytes.max(1) as f64,
        format_bytes(r.naive_repair_bytes),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_sizes_below_the_minimum_or_beyond_memory_are_refused_before_anything_starts() {
        let gib = 1u64 << 30;
        assert_eq!(check_sizes(256 << 20, gib, Some(8 * gib)), Ok(()));
        assert_eq!(check_sizes(256 << 20, gib, None), Ok(()));
        for size in [0, 1, MIN_SIZE - 1] {
            assert_eq!(
                check_sizes(size, gib, Some(8 * gib)),
                Err(FleetSizeError::TooSmall { size })
            );
        }
        assert_eq!(
            check_sizes(2 * gib, gib, Some(8 * gib)),
            Err(FleetSizeError::BeyondMemory {
                size: 2 * gib,
                needed: 10 * gib,
                available: 8 * gib
            })
        );
        assert_eq!(
            check_sizes(u64::MAX, gib, Some(8 * gib)),
            Err(FleetSizeError::BeyondMemory {
                size: u64::MAX,
                needed: u64::MAX,
                available: 8 * gib
            })
        );
        assert_eq!(
            check_sizes(32 * gib, gib, None),
            Err(FleetSizeError::BeyondCap { size: 32 * gib })
        );
        let error = check_sizes(0, gib, None).unwrap_err().to_string();
        assert!(error.contains("--size 0 B: at least 4.0 MiB"), "{error}");
    }

    #[test]
    fn a_fill_of_more_blobs_than_the_bound_is_refused() {
        // Each blob leaves a node more than half its size.
        assert_eq!(fill_puts(4 << 20, 1 << 30), 512);
        assert_eq!(fill_puts(256 << 20, 0), 0);
        assert_eq!(check_sizes(MIN_SIZE, 1 << 30, None), Ok(()));
        let error = check_sizes(MIN_SIZE, 16 << 30, None).unwrap_err();
        assert_eq!(
            error,
            FleetSizeError::TooManyFillPuts {
                repair_bytes: 16 << 30,
                size: MIN_SIZE,
                puts: 8192
            }
        );
        assert!(error.to_string().contains("raise --size"), "{error}");
    }

    #[test]
    fn repair_wait_ignores_a_status_observed_before_the_kill() {
        let status = |observed_at_ms: u64, restarts: u64, health: &str| {
            serde_json::json!({
                "observed_at_ms": observed_at_ms,
                "nodes": [
                    {"name": "node-0", "pid": 42, "restarts": restarts},
                    {"name": "node-1", "pid": 43, "restarts": 0},
                ],
                "blobs": [{"id": "a", "health": "Healthy"}, {"id": "b", "health": health}],
            })
        };
        // Killed at 1000 ms after 1 restart.
        assert!(repaired_since_kill(
            &status(1500, 2, "Healthy"),
            "node-0",
            1,
            1000
        ));
        assert!(
            !repaired_since_kill(&status(900, 2, "Healthy"), "node-0", 1, 1000),
            "observed before the kill"
        );
        assert!(
            !repaired_since_kill(&status(1000, 2, "Healthy"), "node-0", 1, 1000),
            "observed as the node was killed"
        );
        assert!(
            !repaired_since_kill(&status(1500, 1, "Healthy"), "node-0", 1, 1000),
            "not restarted since the kill"
        );
        assert!(
            !repaired_since_kill(&status(1500, 2, "Degraded"), "node-0", 1, 1000),
            "a blob not Healthy yet"
        );
        let no_blobs = serde_json::json!({
            "observed_at_ms": 1500,
            "nodes": [{"name": "node-0", "restarts": 2}],
            "blobs": [],
        });
        assert!(!repaired_since_kill(&no_blobs, "node-0", 1, 1000));
        assert!(!repaired_since_kill(
            &serde_json::Value::Null,
            "node-0",
            1,
            1000
        ));
    }
}
