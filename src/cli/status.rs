//! `redstuff status`: the fleet's nodes and blobs as tables.

use std::path::Path;

use anyhow::Context as _;
use indicatif::ProgressBar;

use redstuff::retry::RetryPolicy;
use redstuff::units::format_bytes;

use super::{authorized, before_retry, http, AttemptError};

/// `redstuff status`: the fleet as a table, or JSON; tried again up to
/// `retries` times while the gateway is busy or out of reach (as when
/// `redstuff dev` is still starting).
pub async fn status(
    gateway: &str,
    token: Option<String>,
    ca: Option<&Path>,
    json: bool,
    retries: u32,
) -> anyhow::Result<()> {
    let policy = RetryPolicy::with_retries(retries);
    let http = http(ca)?;
    let url = format!("{}/v1/status", gateway.trim_end_matches('/'));
    let mut failed = 0;
    let status = loop {
        match fetch(&http, &url, gateway, &token).await {
            Ok(status) => break status,
            Err(e) => {
                failed += 1;
                before_retry(&policy, failed, e, &ProgressBar::hidden()).await?;
            }
        }
    };
    print_status(&status, json)
}

/// One attempt at the status document.
async fn fetch(
    http: &reqwest::Client,
    url: &str,
    gateway: &str,
    token: &Option<String>,
) -> Result<serde_json::Value, AttemptError> {
    let response = authorized(http.get(url), token)
        .send()
        .await
        .map_err(|e| AttemptError::unanswered(e, gateway))?;
    if !response.status().is_success() {
        return Err(AttemptError::answered(response).await);
    }
    response
        .json()
        .await
        .context("the gateway's status answer broke off or is not JSON")
        .map_err(AttemptError::transport)
}

/// Prints the status document as tables, or as JSON.
fn print_status(status: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    if json {
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
    println!();
    println!(
        "{:<44} {:>10} {:<10} {:>7}",
        "BLOB", "SIZE", "HEALTH", "SHARDS"
    );
    for blob in status["blobs"].as_array().into_iter().flatten() {
        let health = blob["health"].as_str().unwrap_or("?");
        let shown = if blob["repairing"].as_bool() == Some(true) && health != "Healthy" {
            "Repairing"
        } else {
            health
        };
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
