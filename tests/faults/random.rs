//! All promises at once, at random: `redstuff bench faults` for 20 s (a
//! new seed each run, printed; replay one with `--seed`). The whole run,
//! the fleet's start and its heal wait included, must end within a minute.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Seconds of load and faults.
const SECONDS: u64 = 20;
/// The whole run: the load, the fleet's start and its heal wait.
const WHOLE_RUN: Duration = Duration::from_secs(60);

#[test]
fn a_short_randomized_fault_run_keeps_every_promise_within_a_minute() {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args([
            "bench",
            "faults",
            "--seconds",
            &SECONDS.to_string(),
            "--json",
        ])
        .env("REDSTUFF_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        text
    });
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > WHOLE_RUN {
            // SIGTERM first, so the run ends its node processes.
            // SAFETY: a signal to the child this test started, still running.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let grace = Instant::now();
            while grace.elapsed() < Duration::from_secs(10) {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    let Some(status) = status else {
        panic!("the fault run did not end within {WHOLE_RUN:?}:\n{stderr}");
    };
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no report ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(
        report["violations"],
        serde_json::json!([]),
        "seed {}: {report:#}",
        report["seed"]
    );
    assert!(status.success(), "{stderr}");
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
    // At most f = 2 nodes are faulty at once, and a wiped one until the
    // fleet healed it: two early wipes and a slow heal (a loaded machine)
    // can leave a run at two faults, which it always injects.
    assert!(injected >= 2, "{report:#}");
    assert!(report["blobs_checked"].as_u64() > Some(0));
    eprintln!(
        "the run took {:?} (heal {} s)",
        start.elapsed(),
        report["heal_seconds"]
    );
}
