//! `redstuff bench s3`: the S3 front beside the native API in one run, on
//! one local 7-shard fleet: PUTs and GETs of the same file through the
//! native API with its own client (`redstuff put`/`get`, the baseline)
//! and through S3 with the aws cli, after a warm-up PUT, alternating, the
//! fastest of each counting, as ratios; the same object stored in one PUT
//! (`aws s3api put-object`, one blob of 64 MiB segments) read back by the
//! aws cli in its 8 MiB ranges, ten at once, with how often the gateway
//! fetched each row of a segment those ranges needed;
//! then a listing of many keys through S3 (boto3's paginator), its time
//! and the growth of this process's memory (the gateway runs in it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

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

/// The fastest PUT and GET of each side.
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

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6
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

/// Runs the benchmark; `log` is told what happens.
pub async fn run(
    options: &S3BenchOptions,
    mut log: impl FnMut(&str),
) -> anyhow::Result<S3BenchReport> {
    let work = tempfile::tempdir()?;
    let file = work.path().join("object");
    let mut data = vec![0u8; options.size as usize];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for word in data.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
    }
    super::write_input(&file, &data)?;
    let fleet_dir = work.path().join("fleet");
    std::fs::create_dir_all(&fleet_dir)?;
    log(&format!("filling the index with {} keys", options.keys));
    let index_path = fleet_dir.join("s3-index.redb");
    tokio::task::block_in_place(|| fill_index(&index_path, options.keys))?;

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
    let endpoints = ready_rx
        .await
        .map_err(|_| anyhow::anyhow!("the fleet did not start"))?;
    let result = measure(options, &endpoints, &file, &data, &mut log).await;
    let _ = stop_tx.send(());
    let _ = fleet.await;
    result
}

async fn measure(
    options: &S3BenchOptions,
    endpoints: &crate::dev::DevEndpoints,
    file: &Path,
    data: &[u8],
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
    let (list, _) = tokio::task::block_in_place(|| client("python3", &["-c", &script]))?;
    sampler.abort();
    let growth = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before);
    log(&format!(
        "listed {} keys in {:.1} s (memory +{})",
        options.keys,
        list.as_secs_f64(),
        crate::units::format_bytes(growth)
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
    // A fresh fleet's first PUT pays for faulting in the gateway's buffers
    // (bench fleet's "first PUT"); it is not counted for either side.
    native(&["put", file_text])?;
    aws(&[
        "--endpoint-url",
        &s3,
        "s3api",
        "put-object",
        "--bucket",
        "bench",
        "--key",
        "whole",
        "--body",
        file_text,
    ])?;
    // An object copied to a file by the aws cli, made durable, checked and
    // removed: how long that took, the aws cli's start-up taken off.
    let s3_get = |url: &str| -> anyhow::Result<Duration> {
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
        let get = start.elapsed().saturating_sub(idle);
        anyhow::ensure!(std::fs::read(&back)? == data, "the S3 GET of {url} differs");
        std::fs::remove_file(&back)?;
        Ok(get)
    };
    let mut rows = ServedRows::default();
    let mut best = Transfers::default();
    for _ in 0..ROUNDS {
        let (put, id) = native(&["put", file_text])?;
        let id = id.lines().last().unwrap_or_default().trim().to_string();
        let (get, _) = native(&["get", &id, "--output", back_text])?;
        anyhow::ensure!(std::fs::read(&back)? == data, "native GET differs");
        std::fs::remove_file(&back)?;
        best.native_put = best.native_put.min(put);
        best.native_get = best.native_get.min(get);

        let put = aws(&[
            "--endpoint-url",
            &s3,
            "s3",
            "cp",
            "--only-show-errors",
            file_text,
            "s3://bench/object",
        ])?
        .saturating_sub(idle);
        let get = s3_get("s3://bench/object")?;
        best.s3_put = best.s3_put.min(put);
        best.s3_get = best.s3_get.min(get);

        let before = gateway_rows(gateway).await?;
        let get = s3_get("s3://bench/whole")?;
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
    log(&format!(
        "native (redstuff put/get): PUT {:.0} MB/s, GET {:.0} MB/s",
        mb_per_s(size, native_put),
        mb_per_s(size, native_get)
    ));
    log(&format!(
        "S3 (aws cli): PUT {:.0} MB/s, GET {:.0} MB/s, GET of the object stored in one PUT {:.0} MB/s ({rows:?})",
        mb_per_s(size, s3_put),
        mb_per_s(size, s3_get),
        mb_per_s(size, s3_ranged_get)
    ));

    let (native_put, native_get) = (mb_per_s(size, native_put), mb_per_s(size, native_get));
    let (s3_put, s3_get) = (mb_per_s(size, s3_put), mb_per_s(size, s3_get));
    let s3_ranged_get = mb_per_s(size, s3_ranged_get);
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
        crate::units::format_bytes(r.size),
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
        crate::units::format_bytes(r.list_rss_growth_bytes)
    )
}
