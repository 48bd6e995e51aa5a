//! `redstuff bench s3`: the S3 front beside the native API in one run, on
//! one local 7-shard fleet: PUTs and GETs of files of the same size
//! through the native API with its own client (`redstuff put`/`get`, the
//! baseline) and through S3 with the aws cli, after a warm-up PUT,
//! alternating, the fastest of each counting, as ratios; an object of the
//! same size stored in one PUT (`aws s3api put-object`, one blob of 64 MiB
//! segments) read back by the aws cli in its 8 MiB ranges, ten at once,
//! with how often the gateway fetched each row of a segment those ranges
//! needed; then a listing of many keys through S3 (boto3's paginator), its
//! time and the growth of this process's memory (the gateway runs in it).
//! Every object has bytes of its own, so no GET finds its rows in the
//! gateway's cache from an earlier one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::StopRequest;
use crate::units::format_bytes;

/// What to measure.
#[derive(Debug, Clone)]
pub struct S3BenchOptions {
    /// The `redstuff` executable the fleet's nodes run.
    pub exe: PathBuf,
    /// Size of the object.
    pub size: u64,
    /// Keys listed.
    pub keys: u64,
    /// Where the aws cli and boto3 are (a venv's bin, first on PATH).
    pub clients: Option<PathBuf>,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct S3BenchReport {
    /// Object size.
    pub size: u64,
    /// Native PUT, MB/s.
    pub native_put_mb_per_s: f64,
    /// Native GET, MB/s.
    pub native_get_mb_per_s: f64,
    /// S3 PUT with the aws cli, MB/s.
    pub s3_put_mb_per_s: f64,
    /// S3 GET with the aws cli, MB/s.
    pub s3_get_mb_per_s: f64,
    /// S3 PUT / native PUT.
    pub put_ratio: f64,
    /// S3 GET / native GET.
    pub get_ratio: f64,
    /// S3 GET with the aws cli of the object stored in one PUT (8 MiB
    /// ranges of its 64 MiB segments, ten at once), MB/s.
    pub s3_ranged_get_mb_per_s: f64,
    /// That GET / native GET.
    pub ranged_get_ratio: f64,
    /// Rows the gateway fetched from nodes (alone or with their segment)
    /// per row the ranges needed: at most 1 when each row is fetched once.
    pub ranged_rows_fetched_per_row: f64,
    /// Of the rows fetched, the share fetched alone (not decoded with
    /// their whole segment).
    pub ranged_rows_alone_share: f64,
    /// Keys listed.
    pub keys: u64,
    /// Seconds to list them all (pages of 1,000).
    pub list_seconds: f64,
    /// Growth of this process's resident memory while listing, bytes.
    pub list_rss_growth_bytes: u64,
}

/// Each side's transfers run this many times, alternating with the
/// other's; the fastest counts.
const ROUNDS: usize = 2;

/// The least `--size`: two of the aws cli's 8 MiB parts and ranges, and a
/// transfer long enough beside the aws cli's start-up.
pub const MIN_SIZE: u64 = 16 << 20;

/// `--size` is below [`MIN_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "--size {}: at least {} (the aws cli's start-up, taken off its times, would be most of a smaller transfer's)",
    format_bytes(*size),
    format_bytes(MIN_SIZE)
)]
pub struct SizeTooSmall {
    /// The size asked for.
    pub size: u64,
}

/// Checks the object's size before anything starts.
pub fn check_size(size: u64) -> Result<(), SizeTooSmall> {
    if size < MIN_SIZE {
        return Err(SizeTooSmall { size });
    }
    Ok(())
}

/// A client's run too short to say how fast its transfer went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the transfer took {:.3} s, no longer than the client's start-up ({:.3} s, taken off) by a \
     meaningful margin: use a larger --size",
    measured.as_secs_f64(),
    startup.as_secs_f64()
)]
pub struct TooShortToMeasure {
    /// The client's whole run.
    pub measured: Duration,
    /// Its start-up, measured apart.
    pub startup: Duration,
}

/// MB/s of `bytes` moved by a client's run that took `measured`, its
/// `startup` (measured apart) taken off. What is left must be at least a
/// tenth of `measured`: less, and the rate would be mostly the noise of
/// the start-up's time.
pub fn transfer_mb_per_s(
    bytes: u64,
    measured: Duration,
    startup: Duration,
) -> Result<f64, TooShortToMeasure> {
    let left = measured.saturating_sub(startup);
    if left.is_zero() || left < measured / 10 {
        return Err(TooShortToMeasure { measured, startup });
    }
    Ok(bytes as f64 / left.as_secs_f64() / 1e6)
}

/// What an object of the bench is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Object {
    /// Put and got through the native API.
    Native,
    /// Put and got through S3 by `aws s3 cp`.
    S3,
    /// Stored in one PUT through S3, read back in ranges.
    OnePut,
}

/// The seed of the bytes of `object` in `round` (`None`: the warm-up's):
/// distinct for every pair, so every object has bytes of its own.
fn object_seed(round: Option<usize>, object: Object) -> u64 {
    let round = round.map_or(0, |r| r as u64 + 1);
    1 + round * 3 + object as u64
}

/// Fills `data` with the bytes of `seed` and writes them to `file`.
fn write_object(file: &Path, data: &mut [u8], seed: u64) -> std::io::Result<()> {
    super::fill(data, seed);
    super::write_input(file, data)
}

/// The fastest PUT and GET of each side, each client's whole run.
struct Transfers {
    native_put: Duration,
    native_get: Duration,
    s3_put: Duration,
    s3_get: Duration,
    s3_ranged_get: Duration,
}

impl Default for Transfers {
    fn default() -> Self {
        Self {
            native_put: Duration::MAX,
            native_get: Duration::MAX,
            s3_put: Duration::MAX,
            s3_get: Duration::MAX,
            s3_ranged_get: Duration::MAX,
        }
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Fills the index at `path` with `keys` keys in bucket `listing`, all
/// naming one (absent) blob: the listing reads the index only.
fn fill_index(path: &Path, keys: u64) -> anyhow::Result<()> {
    let index = crate::s3::index::Index::open(path)?;
    index.create_bucket("listing", 1)?;
    let record = crate::s3::records::ObjectRecord {
        parts: vec![crate::s3::records::BlobPart {
            blob: "listing-bench".into(),
            size: 1,
        }],
        size: 1,
        etag: "00000000000000000000000000000000".into(),
        checksums: Default::default(),
        content_type: None,
        metadata: Default::default(),
        headers: Default::default(),
        tags: Default::default(),
        modified_ms: 1,
    };
    index.put_many(
        "listing",
        (0..keys).map(|i| format!("dir{}/key-{i:08}", i % 10)),
        &record,
    )?;
    Ok(())
}

/// Runs the benchmark; `log` is told what happens. Once `stop` is
/// requested it stops the fleet, removes its files and returns
/// [`super::Interrupted`].
pub async fn run(
    options: &S3BenchOptions,
    mut stop: StopRequest,
    mut log: impl FnMut(&str),
) -> anyhow::Result<S3BenchReport> {
    check_size(options.size)?;
    let work = tempfile::tempdir()?;
    let file = work.path().join("object");
    let fleet_dir = work.path().join("fleet");
    std::fs::create_dir_all(&fleet_dir)?;
    log(&format!("filling the index with {} keys", options.keys));
    let index_path = fleet_dir.join("s3-index.redb");
    tokio::task::block_in_place(|| fill_index(&index_path, options.keys))?;
    stop.check()?;

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = crate::dev::DevConfig {
        period: Duration::from_millis(500),
        scrub_interval_secs: 0,
        s3: Some(crate::dev::DevS3 {
            addr: "127.0.0.1:0".parse()?,
            keys: None,
            collect_after: Duration::from_secs(3600),
            upload_max_age: Duration::from_secs(86_400),
            index_postgres: None,
            domain: None,
        }),
        ..crate::dev::DevConfig::new(fleet_dir, options.exe.clone())
    };
    let fleet = tokio::spawn(crate::dev::run(
        config,
        async move {
            let _ = stop_rx.await;
        },
        move |endpoints| {
            let _ = ready_tx.send(endpoints.clone());
        },
    ));
    let started = super::until_stopped(&mut stop, async {
        ready_rx
            .await
            .map_err(|_| anyhow::anyhow!("the fleet did not start"))
    })
    .await;
    let result = match started {
        Ok(endpoints) => {
            let watching = stop.clone();
            super::until_stopped(
                &mut stop,
                measure(options, &endpoints, &file, &watching, &mut log),
            )
            .await
        }
        Err(e) => Err(e),
    };
    let _ = stop_tx.send(());
    let _ = fleet.await;
    result
}

async fn measure(
    options: &S3BenchOptions,
    endpoints: &crate::dev::DevEndpoints,
    file: &Path,
    stop: &StopRequest,
    log: &mut impl FnMut(&str),
) -> anyhow::Result<S3BenchReport> {
    let gateway = &endpoints.gateway;
    let (s3, keys, _) = endpoints
        .s3
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the fleet serves no S3"))?;
    let size = options.size;

    let path = match &options.clients {
        Some(bin) => format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
        None => std::env::var("PATH").unwrap_or_default(),
    };
    let token = std::fs::read_to_string(&endpoints.token)?;
    let token = crate::auth::parse_tokens(&token)
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the fleet wrote no user token"))?;
    // A client run to its end: how long it took and what it printed.
    let client = |program: &str, args: &[&str]| -> anyhow::Result<(Duration, String)> {
        // Clients run to their end: the stop is seen between them.
        stop.check()?;
        let start = Instant::now();
        let output = Command::new(program)
            .args(args)
            .env("PATH", &path)
            .env("REDSTUFF_GATEWAY", gateway)
            .env("REDSTUFF_TOKEN", &token)
            .env("AWS_ACCESS_KEY_ID", &keys.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &keys.secret_key)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("REDSTUFF_S3_ENDPOINT", &s3)
            .output()
            .map_err(|e| {
                anyhow::anyhow!("cannot run {program}: {e} (scripts/s3-clients installs it)")
            })?;
        anyhow::ensure!(
            output.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok((
            start.elapsed(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ))
    };
    // The listing first, while the process holds no buffers of the
    // transfers below.
    let before = rss_bytes();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let script = format!(
        "import boto3, os\n\
         s3 = boto3.client('s3', endpoint_url=os.environ['REDSTUFF_S3_ENDPOINT'], region_name='us-east-1')\n\
         n = sum(len(p.get('Contents', [])) for p in s3.get_paginator('list_objects_v2').paginate(Bucket='listing'))\n\
         assert n == {}, n\n",
        options.keys
    );
    let mut phase = super::memory::PhasePeak::start();
    let (list, _) = tokio::task::block_in_place(|| client("python3", &["-c", &script]))?;
    sampler.abort();
    let growth = phase
        .end(peak.load(std::sync::atomic::Ordering::Relaxed))
        .saturating_sub(before);
    log(&format!(
        "listed {} keys in {:.1} s (memory +{})",
        options.keys,
        list.as_secs_f64(),
        format_bytes(growth)
    ));
    // The native side through its own client, file to file, as the aws
    // cli goes below: both pay for reading and writing the files, and for
    // making the file read back durable (`redstuff get` fsyncs it before
    // renaming it into place; the aws cli does not, so the bench does).
    let exe = options.exe.to_str().unwrap_or_default();
    let file_text = file.to_str().unwrap_or_default();
    let back = file.with_extension("back");
    let back_text = back.to_str().unwrap_or_default();
    let native = |args: &[&str]| tokio::task::block_in_place(|| client(exe, args));
    let aws = |args: &[&str]| tokio::task::block_in_place(|| client("aws", args)).map(|r| r.0);
    aws(&["--endpoint-url", &s3, "s3", "mb", "s3://bench"])?;
    // The aws cli's own start-up is measured once and taken off.
    let idle = aws(&["--endpoint-url", &s3, "s3", "ls", "s3://bench"])?;
    // One object's bytes at a time, each written to `file` for the
    // clients.
    let mut data = vec![0u8; usize::try_from(size)?];
    // A fresh fleet's first PUT pays for faulting in the gateway's buffers
    // (bench fleet's "first PUT"); it is not counted for either side.
    write_object(file, &mut data, object_seed(None, Object::Native))?;
    native(&["put", file_text])?;
    // `file` stored as one S3 object `key` in one PUT.
    let put_whole = |key: &str| {
        aws(&[
            "--endpoint-url",
            &s3,
            "s3api",
            "put-object",
            "--bucket",
            "bench",
            "--key",
            key,
            "--body",
            file_text,
        ])
    };
    put_whole("warm-up")?;
    // An object copied to a file by the aws cli, made durable, checked
    // against `expected` and removed: how long that took.
    let s3_get = |url: &str, expected: &[u8]| -> anyhow::Result<Duration> {
        let start = Instant::now();
        aws(&[
            "--endpoint-url",
            &s3,
            "s3",
            "cp",
            "--only-show-errors",
            url,
            back_text,
        ])?;
        std::fs::File::open(&back)?.sync_all()?;
        let get = start.elapsed();
        anyhow::ensure!(
            std::fs::read(&back)? == expected,
            "the S3 GET of {url} differs"
        );
        std::fs::remove_file(&back)?;
        Ok(get)
    };
    let mut rows = ServedRows::default();
    let mut best = Transfers::default();
    for round in 0..ROUNDS {
        write_object(file, &mut data, object_seed(Some(round), Object::Native))?;
        let (put, id) = native(&["put", file_text])?;
        let id = id.lines().last().unwrap_or_default().trim().to_string();
        let (get, _) = native(&["get", &id, "--output", back_text])?;
        anyhow::ensure!(std::fs::read(&back)? == data, "native GET differs");
        std::fs::remove_file(&back)?;
        best.native_put = best.native_put.min(put);
        best.native_get = best.native_get.min(get);

        write_object(file, &mut data, object_seed(Some(round), Object::S3))?;
        let url = format!("s3://bench/object-{round}");
        let put = aws(&[
            "--endpoint-url",
            &s3,
            "s3",
            "cp",
            "--only-show-errors",
            file_text,
            &url,
        ])?;
        let get = s3_get(&url, &data[..])?;
        best.s3_put = best.s3_put.min(put);
        best.s3_get = best.s3_get.min(get);

        write_object(file, &mut data, object_seed(Some(round), Object::OnePut))?;
        let key = format!("whole-{round}");
        put_whole(&key)?;
        let before = gateway_rows(gateway).await?;
        let get = s3_get(&format!("s3://bench/{key}"), &data[..])?;
        rows = rows + (gateway_rows(gateway).await? - before);
        best.s3_ranged_get = best.s3_ranged_get.min(get);
    }
    let Transfers {
        native_put,
        native_get,
        s3_put,
        s3_get,
        s3_ranged_get,
    } = best;
    // The native client's start-up is a small part of its run: not taken
    // off, as before.
    let rate = |measured: Duration, startup: Duration| transfer_mb_per_s(size, measured, startup);
    let (native_put, native_get) = (
        rate(native_put, Duration::ZERO)?,
        rate(native_get, Duration::ZERO)?,
    );
    let (s3_put, s3_get) = (rate(s3_put, idle)?, rate(s3_get, idle)?);
    let s3_ranged_get = rate(s3_ranged_get, idle)?;
    log(&format!(
        "native (redstuff put/get): PUT {native_put:.0} MB/s, GET {native_get:.0} MB/s"
    ));
    log(&format!(
        "S3 (aws cli): PUT {s3_put:.0} MB/s, GET {s3_get:.0} MB/s, GET of the object stored in one PUT {s3_ranged_get:.0} MB/s ({rows:?})"
    ));
    Ok(S3BenchReport {
        size,
        native_put_mb_per_s: native_put,
        native_get_mb_per_s: native_get,
        s3_put_mb_per_s: s3_put,
        s3_get_mb_per_s: s3_get,
        put_ratio: s3_put / native_put,
        get_ratio: s3_get / native_get,
        s3_ranged_get_mb_per_s: s3_ranged_get,
        ranged_get_ratio: s3_ranged_get / native_get,
        ranged_rows_fetched_per_row: rows.fetched() as f64 / rows.needed().max(1) as f64,
        ranged_rows_alone_share: rows.alone as f64 / rows.fetched().max(1) as f64,
        keys: options.keys,
        list_seconds: list.as_secs_f64(),
        list_rss_growth_bytes: growth,
    })
}

/// Rows of segments a gateway served, by where they came from (its
/// `redstuff_gateway_read_rows_total`).
#[derive(Debug, Clone, Copy, Default)]
struct ServedRows {
    cache: u64,
    shared: u64,
    alone: u64,
    segment: u64,
}

impl ServedRows {
    /// Rows fetched from nodes.
    fn fetched(&self) -> u64 {
        self.alone + self.segment
    }
    /// Rows reads needed.
    fn needed(&self) -> u64 {
        self.fetched() + self.cache + self.shared
    }
}

impl std::ops::Add for ServedRows {
    type Output = ServedRows;
    fn add(self, other: ServedRows) -> ServedRows {
        ServedRows {
            cache: self.cache + other.cache,
            shared: self.shared + other.shared,
            alone: self.alone + other.alone,
            segment: self.segment + other.segment,
        }
    }
}

impl std::ops::Sub for ServedRows {
    type Output = ServedRows;
    fn sub(self, before: ServedRows) -> ServedRows {
        ServedRows {
            cache: self.cache.saturating_sub(before.cache),
            shared: self.shared.saturating_sub(before.shared),
            alone: self.alone.saturating_sub(before.alone),
            segment: self.segment.saturating_sub(before.segment),
        }
    }
}

/// The gateway's counts of rows served so far.
async fn gateway_rows(gateway: &str) -> anyhow::Result<ServedRows> {
    let text = reqwest::get(format!("{gateway}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    let count = |source: &str| -> u64 {
        let prefix = format!("redstuff_gateway_read_rows_total{{source=\"{source}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(ServedRows {
        cache: count("cache"),
        shared: count("shared"),
        alone: count("alone"),
        segment: count("segment"),
    })
}

/// The report as a table.
pub fn render(r: &S3BenchReport) -> String {
    format!(
        "object {}: native (redstuff put/get) PUT {:.0} MB/s, GET {:.0} MB/s; S3 (aws cli) PUT {:.0} MB/s ({:.2}x), GET {:.0} MB/s ({:.2}x)\n\
         the object stored in one PUT, read by the aws cli in 8 MiB ranges: {:.0} MB/s ({:.2}x), {:.2} row fetches per row needed, {:.0}% of them alone\n\
         listing {} keys through S3: {:.1} s, gateway memory +{}\n",
        format_bytes(r.size),
        r.native_put_mb_per_s,
        r.native_get_mb_per_s,
        r.s3_put_mb_per_s,
        r.put_ratio,
        r.s3_get_mb_per_s,
        r.get_ratio,
        r.s3_ranged_get_mb_per_s,
        r.ranged_get_ratio,
        r.ranged_rows_fetched_per_row,
        r.ranged_rows_alone_share * 100.0,
        r.keys,
        r.list_seconds,
        format_bytes(r.list_rss_growth_bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_refused_when_the_transfer_took_no_longer_than_the_clients_start_up() {
        let ms = Duration::from_millis;
        assert_eq!(
            transfer_mb_per_s(1_000_000, ms(500), ms(500)),
            Err(TooShortToMeasure {
                measured: ms(500),
                startup: ms(500)
            })
        );
        assert!(transfer_mb_per_s(1_000_000, ms(400), ms(500)).is_err());
        // 5% of the time left: mostly the noise of the start-up's time.
        assert!(transfer_mb_per_s(1_000_000, ms(1000), ms(950)).is_err());
        assert!(transfer_mb_per_s(0, Duration::ZERO, Duration::ZERO).is_err());
        let error = transfer_mb_per_s(1_000_000, ms(500), ms(600))
            .unwrap_err()
            .to_string();
        assert!(error.contains("use a larger --size"), "{error}");
    }

    #[test]
    fn a_rate_takes_the_clients_start_up_off() {
        let s = Duration::from_secs;
        assert_eq!(transfer_mb_per_s(100_000_000, s(3), s(1)), Ok(50.0));
        assert_eq!(
            transfer_mb_per_s(100_000_000, s(2), Duration::ZERO),
            Ok(50.0)
        );
        // A tenth of the time left is enough.
        let rate = transfer_mb_per_s(1_000_000, s(10), s(9)).unwrap();
        assert!((rate - 1.0).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn sizes_below_the_minimum_are_refused() {
        for size in [0, 1, MIN_SIZE - 1] {
            assert_eq!(check_size(size), Err(SizeTooSmall { size }));
        }
        assert_eq!(check_size(MIN_SIZE), Ok(()));
        assert_eq!(check_size(256 << 20), Ok(()));
        let error = check_size(0).unwrap_err().to_string();
        assert!(error.contains("--size 0 B: at least 16.0 MiB"), "{error}");
    }

    #[test]
    fn every_round_and_object_has_bytes_of_its_own() {
        let objects = [Object::Native, Object::S3, Object::OnePut];
        let rounds = std::iter::once(None).chain((0..ROUNDS).map(Some));
        let seeds: Vec<u64> = rounds
            .flat_map(|round| objects.map(|object| object_seed(round, object)))
            .collect();
        let distinct: std::collections::BTreeSet<u64> = seeds.iter().copied().collect();
        assert_eq!(distinct.len(), seeds.len(), "{seeds:?}");
        let bytes = |seed| {
            let mut data = vec![0u8; 64];
            super::super::fill(&mut data, seed);
            data
        };
        assert_ne!(
            bytes(object_seed(Some(0), Object::OnePut)),
            bytes(object_seed(Some(1), Object::OnePut))
        );
    }
}
