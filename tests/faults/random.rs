//! All promises at once, at random: `redstuff bench faults` for 20 s (a
//! new seed each run, printed; replay one with `--seed`).

use std::process::Command;

#[test]
fn a_short_randomized_fault_run_keeps_every_promise() {
    let output = Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args(["bench", "faults", "--seconds", "20", "--json"])
        .env("REDSTUFF_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no report ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(
        report["violations"],
        serde_json::json!([]),
        "seed {}: {report:#}",
        report["seed"]
    );
    assert!(output.status.success(), "{stderr}");
    let operations: u64 = report["operations"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let faults = &report["faults"];
    let injected: u64 = ["kills", "stops", "wipes"]
        .iter()
        .map(|k| faults[k].as_u64().unwrap())
        .sum();
    assert!(operations >= 30, "{report:#}");
    assert!(injected >= 5, "{report:#}");
    assert!(report["blobs_checked"].as_u64() > Some(0));
}
