//! `redstuff status`: the fleet's nodes and blobs as tables.

use std::path::Path;

use indicatif::ProgressBar;

use redstuff::retry::RetryPolicy;
use redstuff::units::format_bytes;

use super::{authorized, before_retry, http, AttemptError};

/// Blobs a table lists whole; a fleet with more gets counts by health
/// and its blobs that are not Healthy.
const BLOBS_LISTED_WHOLE: usize = 20;

/// Blobs that are not Healthy listed at most (without `--all`).
const MOST_UNHEALTHY_LISTED: usize = 50;

/// How `redstuff status` prints the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusFormat {
    /// The gateway's JSON as it is.
    pub json: bool,
    /// Every blob in the table.
    pub all: bool,
}

/// `redstuff status`: the fleet as a table, or JSON; tried again up to
/// `retries` times while the gateway is busy or out of reach (as when
/// `redstuff dev` is still starting).
pub async fn status(
    gateway: &str,
    token: Option<String>,
    ca: Option<&Path>,
    format: StatusFormat,
    retries: u32,
    stall: std::time::Duration,
) -> anyhow::Result<()> {
    let policy = RetryPolicy::with_retries(retries);
    let http = http(ca)?;
    let url = format!("{}/v1/status", gateway.trim_end_matches('/'));
    let mut failed = 0;
    let status = loop {
        match fetch(&http, &url, gateway, &token, stall).await {
            Ok(status) => break status,
            Err(e) => {
                failed += 1;
                before_retry(&policy, failed, e, &ProgressBar::hidden()).await?;
            }
        }
    };
    // A reader that stops early (`| head`) ends the command the way it
    // ends `cat`, by SIGPIPE, instead of a panic in println. Only now: the
    // gateway's answer is in, and nothing is written to a socket after.
    // SAFETY: setting a signal's disposition to its default, in a process
    // that installed no handler for it.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    print_status(&status, format)
}

/// One attempt at the status document.
async fn fetch(
    http: &reqwest::Client,
    url: &str,
    gateway: &str,
    token: &Option<String>,
    stall: std::time::Duration,
) -> Result<serde_json::Value, AttemptError> {
    let response =
        AttemptError::unless_unanswered(authorized(http.get(url), token), stall, gateway).await?;
    if !response.status().is_success() {
        return Err(AttemptError::answered(response).await);
    }
    AttemptError::json_within(response, stall, gateway).await
}

/// The health a blob of the status document is shown with: Repairing
/// while a repair of a blob that is not Healthy runs.
fn shown_health(blob: &serde_json::Value) -> &str {
    let health = blob["health"].as_str().unwrap_or("?");
    if blob["repairing"].as_bool() == Some(true) && health != "Healthy" {
        "Repairing"
    } else {
        health
    }
}

/// The blobs the table lists, and the line said above them: every blob
/// of a small fleet (or with `all`), else counts by health and the first
/// `MOST_UNHEALTHY_LISTED` blobs that are not Healthy (pure).
fn blobs_listed(
    blobs: &[serde_json::Value],
    all: bool,
) -> (Vec<&serde_json::Value>, Option<String>) {
    if all || blobs.len() <= BLOBS_LISTED_WHOLE {
        return (blobs.iter().collect(), None);
    }
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for blob in blobs {
        *counts.entry(shown_health(blob)).or_default() += 1;
    }
    let unhealthy: Vec<&serde_json::Value> = blobs
        .iter()
        .filter(|b| shown_health(b) != "Healthy")
        .collect();
    let counted: Vec<String> = counts.iter().map(|(h, n)| format!("{n} {h}")).collect();
    let mut said = format!("blobs {}: {}", blobs.len(), counted.join(", "));
    if unhealthy.len() > MOST_UNHEALTHY_LISTED {
        said.push_str(&format!(
            "; the first {MOST_UNHEALTHY_LISTED} not Healthy below"
        ));
    } else if !unhealthy.is_empty() {
        said.push_str("; those not Healthy below");
    }
    said.push_str(" (--all lists every blob)");
    (
        unhealthy.into_iter().take(MOST_UNHEALTHY_LISTED).collect(),
        Some(said),
    )
}

/// Prints the status document as tables, or as JSON.
fn print_status(status: &serde_json::Value, format: StatusFormat) -> anyhow::Result<()> {
    if format.json {
        println!("{}", serde_json::to_string_pretty(status)?);
        return Ok(());
    }
    let age = status["observed_at_ms"]
        .as_u64()
        .map_or(String::new(), |at| {
            let now = redstuff::blob_state::now_nanos() / 1_000_000;
            format!(
                "  (as of {:.1} s ago)",
                now.saturating_sub(at) as f64 / 1000.0
            )
        });
    println!(
        "shards {}  tolerates {} lost shards ({} whole nodes){age}",
        status["shards"], status["fault_tolerance"], status["tolerated_node_losses"]
    );
    println!();
    println!(
        "{:<10} {:>8} {:<24} {:<10} {:>8}  shards",
        "NODE", "PID", "ADDRESS", "STATE", "RESTARTS"
    );
    for node in status["nodes"].as_array().into_iter().flatten() {
        let shards: Vec<String> = node["shards"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s.to_string())
            .collect();
        println!(
            "{:<10} {:>8} {:<24} {:<10} {:>8}  {}",
            node["name"].as_str().unwrap_or("?"),
            node["pid"].as_u64().map_or("-".into(), |p| p.to_string()),
            node["address"].as_str().unwrap_or("?"),
            node["state"].as_str().unwrap_or("?"),
            node["restarts"],
            shards.join(",")
        );
    }
    for node in status["nodes"].as_array().into_iter().flatten() {
        let failing = &node["failing_repairs"];
        if failing.is_object() {
            println!(
                "repairs on {} failed {} times in a row (retried); the last, of blob {}: {}",
                node["name"].as_str().unwrap_or("?"),
                failing["count"],
                failing["blob"].as_str().unwrap_or("?"),
                failing["why"].as_str().unwrap_or("?")
            );
        }
    }
    println!();
    let blobs = status["blobs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let (listed, said) = blobs_listed(blobs, format.all);
    if let Some(said) = said {
        println!("{said}");
        if listed.is_empty() {
            return Ok(());
        }
        println!();
    }
    println!(
        "{:<44} {:>10} {:<10} {:>7}",
        "BLOB", "SIZE", "HEALTH", "SHARDS"
    );
    for blob in listed {
        let shown = shown_health(blob);
        println!(
            "{:<44} {:>10} {:<10} {:>3}/{}",
            blob["id"].as_str().unwrap_or("?"),
            format_bytes(blob["size"].as_u64().unwrap_or(0)),
            shown,
            blob["shards_complete"],
            status["shards"]
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn blobs(healthy: usize, degraded: usize, repairing: usize) -> Vec<serde_json::Value> {
        let blob = |i: usize, health: &str, repairing: bool| {
            json!({"id": format!("b{i:04}"), "size": 1, "health": health,
                   "repairing": repairing, "shards_complete": 7})
        };
        (0..healthy)
            .map(|i| blob(i, "Healthy", false))
            .chain((0..degraded).map(|i| blob(healthy + i, "Degraded", false)))
            .chain((0..repairing).map(|i| blob(healthy + degraded + i, "Degraded", true)))
            .collect()
    }

    #[test]
    fn a_small_fleet_lists_every_blob() {
        let all = blobs(19, 1, 0);
        let (listed, said) = blobs_listed(&all, false);
        assert_eq!((listed.len(), said), (20, None));
    }

    #[test]
    fn a_large_fleet_gets_counts_by_health_and_the_blobs_not_healthy() {
        let many = blobs(1000, 2, 1);
        let (listed, said) = blobs_listed(&many, false);
        assert_eq!(
            said.as_deref(),
            Some("blobs 1003: 2 Degraded, 1000 Healthy, 1 Repairing; those not Healthy below (--all lists every blob)")
        );
        let ids: Vec<&str> = listed.iter().map(|b| b["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["b1000", "b1001", "b1002"]);
        let (listed, said) = blobs_listed(&many, true);
        assert_eq!((listed.len(), said), (1003, None));
        let healthy = blobs(30, 0, 0);
        let (listed, said) = blobs_listed(&healthy, false);
        assert!(listed.is_empty());
        assert_eq!(
            said.as_deref(),
            Some("blobs 30: 30 Healthy (--all lists every blob)")
        );
    }

    #[test]
    fn at_most_fifty_blobs_not_healthy_are_listed_without_all() {
        let sick = blobs(0, 80, 0);
        let (listed, said) = blobs_listed(&sick, false);
        assert_eq!(listed.len(), MOST_UNHEALTHY_LISTED);
        assert!(said.unwrap().contains("the first 50 not Healthy below"));
    }
}
