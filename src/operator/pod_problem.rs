//! Why a node pod is not ready, in Kubernetes' own words: the scheduler's
//! reason, a container's waiting or terminated state, or its restarts.
//! A pure function of the pod, so the StorageCluster status can say what
//! an operator on call would otherwise dig out of `kubectl describe pod`.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// Longest problem text kept in the status (the scheduler's messages can
/// list every Kubernetes node).
const MAX_LEN: usize = 240;

fn shorten(text: String) -> String {
    if text.len() <= MAX_LEN {
        return text;
    }
    let mut end = MAX_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

fn reason_and_message(reason: Option<&str>, message: Option<&str>, fallback: &str) -> String {
    let reason = reason.filter(|r| !r.is_empty()).unwrap_or(fallback);
    match message.map(str::trim).filter(|m| !m.is_empty()) {
        Some(message) => format!("{reason}: {message}"),
        None => reason.to_string(),
    }
}

fn container_problem(status: &ContainerStatus) -> Option<String> {
    let state = status.state.as_ref();
    if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
        let mut text = reason_and_message(
            waiting.reason.as_deref(),
            waiting.message.as_deref(),
            "Waiting",
        );
        if let Some(last) = status
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
        {
            text.push_str(&format!(
                " (restarted {} times, last exit {}{})",
                status.restart_count,
                last.exit_code,
                last.reason
                    .as_deref()
                    .map(|r| format!(" {r}"))
                    .unwrap_or_default()
            ));
        }
        return Some(text);
    }
    if let Some(terminated) = state.and_then(|s| s.terminated.as_ref()) {
        return Some(format!(
            "{} (exit {})",
            reason_and_message(
                terminated.reason.as_deref(),
                terminated.message.as_deref(),
                "Terminated",
            ),
            terminated.exit_code
        ));
    }
    None
}

/// Why `pod` is not ready, or None when Kubernetes reports nothing wrong
/// (it is ready, or simply starting).
pub fn pod_problem(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let condition = |type_: &str| conditions.iter().find(|c| c.type_ == type_);
    if condition("Ready").is_some_and(|c| c.status == "True") {
        return None;
    }
    if let Some(c) = condition("PodScheduled").filter(|c| c.status == "False") {
        return Some(shorten(reason_and_message(
            c.reason.as_deref(),
            c.message.as_deref(),
            "Unschedulable",
        )));
    }
    // An init container that ran and ended well (an injected one's, as
    // often) is no problem.
    let finished_well = |c: &&ContainerStatus| {
        c.state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0)
    };
    let init = status
        .init_container_statuses
        .iter()
        .flatten()
        .filter(|c| !finished_well(c));
    let containers = init.chain(status.container_statuses.iter().flatten());
    if let Some(problem) = containers.filter_map(container_problem).next() {
        return Some(shorten(problem));
    }
    if status.phase.as_deref() == Some("Failed") {
        return Some(shorten(reason_and_message(
            status.reason.as_deref(),
            status.message.as_deref(),
            "Failed",
        )));
    }
    if status.phase.as_deref() == Some("Running") {
        return Some("NotReady: running, but its readiness probe (/readyz) does not pass".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "media-node-2"},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn the_problem_is_said_in_kubernetes_words() {
        let table = [
            (
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient memory."}]}),
                Some("Unschedulable: 0/3 nodes are available: 3 Insufficient memory."),
            ),
            (
                json!({"phase": "Pending", "containerStatuses": [{"name": "node", "image": "x",
                    "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "ImagePullBackOff",
                        "message": "Back-off pulling image \"registry.example/redstuff:9\""}}}]}),
                Some("ImagePullBackOff: Back-off pulling image \"registry.example/redstuff:9\""),
            ),
            (
                json!({"phase": "Running", "containerStatuses": [{"name": "node", "image": "x",
                    "imageID": "", "ready": false, "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 2, "reason": "Error"}}}]}),
                Some("CrashLoopBackOff (restarted 4 times, last exit 2 Error)"),
            ),
            (
                json!({"phase": "Failed", "reason": "Evicted",
                    "message": "The node was low on resource: ephemeral-storage."}),
                Some("Evicted: The node was low on resource: ephemeral-storage."),
            ),
            (
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}),
                Some("NotReady: running, but its readiness probe (/readyz) does not pass"),
            ),
            (
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}),
                None,
            ),
            (
                json!({"phase": "Running",
                    "initContainerStatuses": [{"name": "istio-init", "image": "x", "imageID": "",
                        "ready": true, "restartCount": 0,
                        "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
                    "containerStatuses": [{"name": "node", "image": "x", "imageID": "",
                        "ready": false, "restartCount": 1,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}),
                Some("CrashLoopBackOff"),
            ),
            (json!({"phase": "Pending"}), None),
        ];
        for (status, want) in table {
            assert_eq!(
                pod_problem(&pod(status.clone())).as_deref(),
                want,
                "{status}"
            );
        }
    }

    #[test]
    fn long_scheduler_messages_are_cut() {
        let message = "0/5000 nodes are available: ".to_string() + &"x".repeat(5000);
        let p = pod(
            json!({"conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": message}]}),
        );
        let problem = pod_problem(&p).unwrap();
        assert!(problem.len() <= MAX_LEN + 3, "{}", problem.len());
        assert!(problem.starts_with("Unschedulable: 0/5000 nodes"));
        assert!(problem.ends_with("..."));
    }
}
