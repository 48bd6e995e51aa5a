//! `redstuff bench fleet --clients N`: N clients putting different blobs
//! through the gateway at once, then getting them at once, then all
//! getting the same blob at once (one object pulled by many, whose rows
//! the gateway fetches once and shares), with the gateway's memory
//! against its upload and read budgets.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::fleet::{get_checked, mb_per_s, metric_values, put_file, Expected, FleetBenchOptions};
use crate::units::format_bytes;

/// Several clients putting, then getting, different blobs at once, then
/// all getting the same blob at once.
#[derive(Debug, Clone, Serialize)]
pub struct ConcurrentReport {
    /// Clients.
    pub clients: usize,
    /// Blob bytes each put and got.
    pub size: u64,
    /// All PUTs together, MB/s of blob.
    pub put_mb_per_s: f64,
    /// All GETs together, MB/s of blob.
    pub get_mb_per_s: f64,
    /// PUTs answered 503 (every upload slot taken) and retried.
    pub put_retries: u64,
    /// The gateway's process: resident memory before, and at its peak
    /// during the concurrent puts and gets.
    pub rss_before_bytes: u64,
    /// See `rss_before_bytes`.
    pub rss_peak_bytes: u64,
    /// The peak while the puts ran.
    pub rss_peak_puts_bytes: u64,
    /// The gateway's upload memory budget (`--upload-memory`): what the
    /// segments of all uploads may hold together.
    pub upload_memory_bytes: u64,
    /// Whether the peak during the puts stayed within the memory before
    /// plus the upload memory budget.
    pub puts_within_upload_memory: bool,
    /// Resident memory when the gets began.
    pub rss_before_gets_bytes: u64,
    /// The peak while the gets ran.
    pub rss_peak_gets_bytes: u64,
    /// The gateway's read memory budget (`--read-memory`): what the rows
    /// of all reads may hold together.
    pub read_memory_bytes: u64,
    /// Whether the peak during the gets stayed within the memory when they
    /// began plus the read memory budget.
    pub gets_within_read_memory: bool,
    /// Every client getting the same blob at once (one object pulled by
    /// many), MB/s of blob delivered to all of them together.
    pub same_blob_get_mb_per_s: f64,
    /// Rows of segments the gateway fetched from nodes for those gets.
    pub same_blob_rows_fetched: u64,
    /// Rows it gave them from the cache or from a fetch under way instead.
    pub same_blob_rows_shared: u64,
    /// The gateway's resident memory at its peak during those gets.
    pub rss_peak_same_blob_bytes: u64,
}

/// The gateway's rows of segments read so far: fetched from nodes, and
/// given from its cache or from a fetch under way.
struct RowsRead {
    fetched: u64,
    shared: u64,
}

async fn read_rows(http: &reqwest::Client, gateway: &str) -> anyhow::Result<RowsRead> {
    let series = ["alone", "segment", "cache", "shared"]
        .map(|source| format!("redstuff_gateway_read_rows_total{{source=\"{source}\"}}"));
    let counts = metric_values(http, gateway, &series.each_ref().map(String::as_str)).await?;
    Ok(RowsRead {
        fetched: counts[0] + counts[1],
        shared: counts[2] + counts[3],
    })
}

/// `clients` different blobs put at once, then got at once, then the
/// first of them got by every client at once, while the gateway's (this
/// process's) resident memory is watched.
pub(super) async fn measure(
    options: &FleetBenchOptions,
    http: &reqwest::Client,
    gateway: &str,
    dir: &std::path::Path,
    log: &mut impl FnMut(&str),
) -> anyhow::Result<ConcurrentReport> {
    let clients = options.clients;
    let mut files = Vec::new();
    for client in 0..clients {
        let mut data = vec![0u8; options.size as usize];
        super::fill(&mut data, 1000 + client as u64);
        let path = dir.join(format!("client-{client}"));
        super::write_input(&path, &data)?;
        files.push((path, blake3::hash(&data)));
    }
    let rss_before = super::memory::current_rss_bytes().unwrap_or(0);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss_before));
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (peak, watching) = (peak.clone(), watching.clone());
        tokio::spawn(async move {
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let now = super::memory::current_rss_bytes().unwrap_or(0);
                peak.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // The kernel's high-water mark sees a peak between samples; the
    // samples stand in where it cannot be reset.
    let mut phase = super::memory::PhasePeak::start();
    let start = Instant::now();
    let puts =
        futures_util::future::join_all(files.iter().map(|(path, _)| put_file(http, gateway, path)))
            .await;
    let put_time = start.elapsed();
    let peak_puts = phase.end(peak.load(std::sync::atomic::Ordering::Relaxed));
    let mut ids = Vec::new();
    let mut retries = 0;
    for put in puts {
        let (id, r) = put?;
        ids.push(id);
        retries += r;
    }
    let rss_before_gets = super::memory::current_rss_bytes().unwrap_or(0);
    let peak_before_gets = peak.swap(rss_before_gets, std::sync::atomic::Ordering::Relaxed);
    let mut phase = super::memory::PhasePeak::start();
    let start = Instant::now();
    let gets = futures_util::future::join_all(
        ids.iter()
            .zip(&files)
            .map(|(id, (_, hash))| get_checked(http, gateway, id, Expected::Hash(*hash))),
    )
    .await;
    let get_time = start.elapsed();
    for get in gets {
        get?;
    }
    let peak_gets = phase.end(peak.swap(
        super::memory::current_rss_bytes().unwrap_or(0),
        std::sync::atomic::Ordering::Relaxed,
    ));
    let mut phase = super::memory::PhasePeak::start();
    let rows_before = read_rows(http, gateway).await?;
    let start = Instant::now();
    let same = futures_util::future::join_all(
        (0..clients).map(|_| get_checked(http, gateway, &ids[0], Expected::Hash(files[0].1))),
    )
    .await;
    let same_time = start.elapsed();
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = watcher.await;
    let peak_same = phase.end(peak.load(std::sync::atomic::Ordering::Relaxed));
    for get in same {
        get?;
    }
    let rows_after = read_rows(http, gateway).await?;
    for (path, _) in &files {
        let _ = std::fs::remove_file(path);
    }
    let total = options.size * clients as u64;
    let report = ConcurrentReport {
        clients,
        size: options.size,
        put_mb_per_s: mb_per_s(total, put_time),
        get_mb_per_s: mb_per_s(total, get_time),
        put_retries: retries,
        rss_before_bytes: rss_before,
        rss_peak_bytes: peak_before_gets.max(peak_gets).max(peak_same),
        rss_peak_puts_bytes: peak_puts,
        upload_memory_bytes: options.upload_memory,
        puts_within_upload_memory: peak_puts <= rss_before + options.upload_memory,
        rss_before_gets_bytes: rss_before_gets,
        rss_peak_gets_bytes: peak_gets,
        read_memory_bytes: options.read_memory,
        gets_within_read_memory: peak_gets <= rss_before_gets + options.read_memory,
        same_blob_get_mb_per_s: mb_per_s(total, same_time),
        same_blob_rows_fetched: rows_after.fetched - rows_before.fetched,
        same_blob_rows_shared: rows_after.shared - rows_before.shared,
        rss_peak_same_blob_bytes: peak_same,
    };
    log(&format!(
        "{clients} clients: put {:.0} MB/s, get {:.0} MB/s together, get of one blob {:.0} MB/s",
        report.put_mb_per_s, report.get_mb_per_s, report.same_blob_get_mb_per_s
    ));
    Ok(report)
}

/// How a peak stood against its bound, for people.
fn within(ok: bool) -> &'static str {
    if ok {
        "within"
    } else {
        "OVER"
    }
}

/// The report's lines in `bench fleet`'s table (`row` formats one).
pub(super) fn render(
    c: &ConcurrentReport,
    row: &dyn Fn(&str, f64, Option<f64>) -> String,
) -> String {
    let mut out = String::new();
    out.push_str(&row(
        &format!("{} clients at once: PUT", c.clients),
        c.put_mb_per_s,
        None,
    ));
    out.push_str(&row(
        &format!("{} clients at once: GET", c.clients),
        c.get_mb_per_s,
        None,
    ));
    out.push_str(&format!(
        "  gateway memory {} before; at its peak {} during the PUTs ({} the {} before plus the \
         upload memory of {}), {} overall; {} PUTs waited for an upload slot\n",
        format_bytes(c.rss_before_bytes),
        format_bytes(c.rss_peak_puts_bytes),
        within(c.puts_within_upload_memory),
        format_bytes(c.rss_before_bytes),
        format_bytes(c.upload_memory_bytes),
        format_bytes(c.rss_peak_bytes),
        c.put_retries
    ));
    out.push_str(&format!(
        "  gateway memory {} when the GETs began; at its peak {} during them ({} the {} plus \
         the read memory of {})\n",
        format_bytes(c.rss_before_gets_bytes),
        format_bytes(c.rss_peak_gets_bytes),
        within(c.gets_within_read_memory),
        format_bytes(c.rss_before_gets_bytes),
        format_bytes(c.read_memory_bytes),
    ));
    out.push_str(&row(
        &format!("{} clients at once: GET of one blob", c.clients),
        c.same_blob_get_mb_per_s,
        None,
    ));
    out.push_str(&format!(
        "  rows fetched from nodes {}, shared from the cache or a fetch under way {}; gateway \
         memory at its peak {}\n",
        c.same_blob_rows_fetched,
        c.same_blob_rows_shared,
        format_bytes(c.rss_peak_same_blob_bytes),
    ));
    out
}
