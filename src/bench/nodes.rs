//! The node processes of a fleet bench, as the gateway's `/v1/status` of
//! `redstuff dev` names them, and the signals the benches send them.

use std::collections::BTreeMap;
use std::time::Duration;

/// Why a status gives no process to signal for a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodePidError {
    /// The status lists no node of that name.
    #[error("the fleet's status lists no node {0}")]
    NoSuchNode(String),
    /// The node is listed without a process (down, or being restarted).
    #[error("the fleet's status names no process for {0}: it is down")]
    NoProcess(String),
}

/// The entry of node `name` in `status`.
pub(crate) fn node<'a>(status: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    status["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
}

/// The process id `status` gives node `name`; never 0 or negative, which
/// `kill` takes for whole process groups (the bench's own among them):
/// a node whose status names no process (`pid` null while it is down) is
/// an error.
pub(crate) fn node_pid(status: &serde_json::Value, name: &str) -> Result<i32, NodePidError> {
    let node = node(status, name).ok_or_else(|| NodePidError::NoSuchNode(name.to_string()))?;
    node["pid"]
        .as_i64()
        .and_then(|pid| i32::try_from(pid).ok())
        .filter(|pid| *pid > 0)
        .ok_or_else(|| NodePidError::NoProcess(name.to_string()))
}

/// Every node of `status` with a process, by name.
pub(crate) fn node_pids(status: &serde_json::Value) -> BTreeMap<String, i32> {
    status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            let name = n["name"].as_str()?;
            Some((name.to_string(), node_pid(status, name).ok()?))
        })
        .collect()
}

/// Sends `signal` to the node process `pid` (one [`node_pid`] gave);
/// nothing to a pid that is not one process's.
pub(crate) fn signal(pid: i32, signal: libc::c_int) {
    if pid <= 0 {
        return;
    }
    // SAFETY: a plain syscall on a node process of the fleet this bench
    // started.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Resumes every node process of the fleet behind `gateway` (SIGCONT,
/// which a running process ignores), so that none stays stopped when a
/// bench fails or is interrupted while it had one stopped. Best effort:
/// without a status within 10 s, none.
pub(crate) async fn resume_all(http: &reqwest::Client, gateway: &str) {
    let answer = http
        .get(format!("{gateway}/v1/status"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let Ok(response) = answer else {
        return;
    };
    let Ok(status) = response.json::<serde_json::Value>().await else {
        return;
    };
    for pid in node_pids(&status).into_values() {
        signal(pid, libc::SIGCONT);
    }
}

/// Now, in milliseconds since the Unix epoch (as the status's
/// `observed_at_ms`).
pub(crate) fn now_ms() -> u64 {
    crate::blob_state::now_nanos() / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_whose_status_names_no_process_is_an_error_not_pid_0() {
        let status = serde_json::json!({
            "nodes": [
                {"name": "node-0", "pid": null, "state": "down"},
                {"name": "node-1", "pid": 0},
                {"name": "node-2", "pid": -1},
                {"name": "node-3"},
                {"name": "node-4", "pid": 4242},
                {"name": "node-5", "pid": 1u64 << 40},
            ]
        });
        for name in ["node-0", "node-1", "node-2", "node-3", "node-5"] {
            assert_eq!(
                node_pid(&status, name),
                Err(NodePidError::NoProcess(name.to_string())),
                "{name}"
            );
        }
        assert_eq!(node_pid(&status, "node-4"), Ok(4242));
        assert_eq!(
            node_pid(&status, "node-9"),
            Err(NodePidError::NoSuchNode("node-9".to_string()))
        );
        assert_eq!(
            node_pid(&serde_json::Value::Null, "node-4"),
            Err(NodePidError::NoSuchNode("node-4".to_string()))
        );
        assert_eq!(
            node_pids(&status),
            BTreeMap::from([("node-4".to_string(), 4242)])
        );
        assert!(NodePidError::NoProcess("node-0".into())
            .to_string()
            .contains("no process for node-0"));
    }
}
