//! Calls the control loop makes to nodes, one per (node, blob) task:
//! carrying markers, releasing strays. A step makes at most a limit of
//! them, shared out across the nodes in turns, so one node's backlog (a
//! full disk refusing every tombstone, a hung node eating the deadline)
//! never holds back what the other nodes are owed; and a node whose calls
//! keep failing is passed over for the rest of the step.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use futures_util::stream::{self, StreamExt};

use super::{MarkerTask, NodeAddress, ReleaseTask};
use crate::client::{NodeCalls, NodeClient};
use crate::codec::BlobId;

/// Calls to nodes made at once by `on_nodes`.
const CONCURRENCY: usize = 16;

/// Failed calls in a row after which a node's other tasks wait for the
/// next step.
const FAILURES_TO_PASS_OVER: usize = 3;

/// A call the control loop makes to one node about one blob.
pub(super) trait NodeTask: Clone {
    /// The node's name.
    fn node(&self) -> &str;
    /// The blob id, as the inventory gave it.
    fn blob(&self) -> &str;
}

impl NodeTask for MarkerTask {
    fn node(&self) -> &str {
        &self.node
    }
    fn blob(&self) -> &str {
        &self.blob
    }
}

impl NodeTask for ReleaseTask {
    fn node(&self) -> &str {
        &self.node
    }
    fn blob(&self) -> &str {
        &self.blob
    }
}

/// `tasks` in turns across their nodes: every node's first task (nodes
/// in the order they first appear), then every node's second, and so on;
/// each node's tasks keep their order.
pub(super) fn in_turns<T: NodeTask>(tasks: &[T]) -> Vec<&T> {
    let mut by_node: Vec<(&str, Vec<&T>)> = Vec::new();
    for task in tasks {
        match by_node.iter_mut().find(|(node, _)| *node == task.node()) {
            Some((_, queue)) => queue.push(task),
            None => by_node.push((task.node(), vec![task])),
        }
    }
    let longest = by_node.iter().map(|(_, q)| q.len()).max().unwrap_or(0);
    (0..longest)
        .flat_map(|turn| {
            by_node
                .iter()
                .filter_map(move |(_, q)| q.get(turn).copied())
        })
        .collect()
}

/// Runs `act` on up to `limit` tasks (taken in turns across their nodes)
/// with the parsed blob id and a client of the task's node, `CONCURRENCY`
/// at once (each call within the call deadline); tasks of nodes not in
/// `nodes`, with an id that does not parse, or of a node whose last
/// `FAILURES_TO_PASS_OVER` calls failed, are skipped. Returns how many
/// `act` calls succeeded.
pub(super) async fn on_nodes<T, F, Fut>(
    calls: &NodeCalls,
    nodes: &[NodeAddress],
    tasks: &[T],
    limit: usize,
    act: F,
) -> usize
where
    T: NodeTask,
    F: Fn(T, BlobId, NodeClient) -> Fut,
    Fut: Future<Output = bool>,
{
    let prepared: Vec<(T, BlobId, NodeClient)> = in_turns(tasks)
        .into_iter()
        .take(limit)
        .filter_map(|task| {
            let node = nodes.iter().find(|n| n.name == task.node())?;
            let id = task.blob().parse().ok()?;
            Some((task.clone(), id, calls.node(&node.url)))
        })
        .collect();
    let failing: Mutex<BTreeMap<String, usize>> = Mutex::default();
    let failing = &failing;
    let act = &act;
    stream::iter(prepared.into_iter().map(|(task, id, client)| async move {
        let node = task.node().to_string();
        let passed_over = |failing: &BTreeMap<String, usize>| {
            failing.get(&node).copied().unwrap_or(0) >= FAILURES_TO_PASS_OVER
        };
        if passed_over(&failing.lock().expect("not poisoned")) {
            return false;
        }
        let done = act(task, id, client).await;
        let mut failing = failing.lock().expect("not poisoned");
        if done {
            failing.remove(&node);
        } else {
            *failing.entry(node).or_default() += 1;
        }
        done
    }))
    .buffer_unordered(CONCURRENCY)
    .filter(|done| std::future::ready(*done))
    .count()
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Marker;

    fn task(node: &str, seed: u32) -> MarkerTask {
        MarkerTask {
            node: node.to_string(),
            blob: BlobId(*blake3::hash(&seed.to_le_bytes()).as_bytes()).to_string(),
            marker: Marker::Tombstone(1),
        }
    }

    fn address(name: &str) -> NodeAddress {
        NodeAddress {
            name: name.to_string(),
            url: "http://127.0.0.1:9".to_string(),
            shards: Default::default(),
        }
    }

    #[test]
    fn tasks_are_taken_in_turns_across_nodes_each_nodes_in_order() {
        let tasks = [
            task("a", 1),
            task("a", 2),
            task("a", 3),
            task("b", 4),
            task("c", 5),
            task("b", 6),
        ];
        let order: Vec<(&str, &str)> = in_turns(&tasks)
            .into_iter()
            .map(|t| (t.node.as_str(), t.blob.as_str()))
            .collect();
        let expected: Vec<(&str, &str)> = [0, 3, 4, 1, 5, 2]
            .map(|i| (tasks[i].node.as_str(), tasks[i].blob.as_str()))
            .into();
        assert_eq!(order, expected);
    }

    #[tokio::test]
    async fn one_nodes_backlog_of_refused_calls_holds_back_no_other_nodes_task() {
        let mut tasks: Vec<MarkerTask> = (0..1001).map(|i| task("a", i)).collect();
        tasks.push(task("b", 5000));
        let calls = NodeCalls::new(
            crate::auth::TokenSet::single("t"),
            crate::client::Deadlines::default(),
        );
        let asked: Mutex<Vec<String>> = Mutex::default();
        let done = on_nodes(
            &calls,
            &[address("a"), address("b")],
            &tasks,
            1000,
            |task, _, _| {
                asked.lock().unwrap().push(task.node.clone());
                let refused = task.node == "a";
                async move { !refused }
            },
        )
        .await;
        assert_eq!(done, 1, "b took its marker");
        let asked = asked.into_inner().unwrap();
        assert!(asked.contains(&"b".to_string()));
        // a's failing calls stop once it failed a few in a row (the calls
        // already under way when it did still end).
        let asked_a = asked.iter().filter(|n| *n == "a").count();
        assert!(asked_a < FAILURES_TO_PASS_OVER + CONCURRENCY, "{asked_a}");
    }
}
