//! Nodes that lately left a call unanswered, remembered across the
//! operations of one process (a gateway's reads, writes and deletes).
//!
//! Without this memory every operation found a hung node anew: each read
//! whose systematic slivers it held waited the hedge delay (2 s), each
//! write and delete its call deadline. A node is marked *slow* when a
//! sliver request went unanswered past the hedge delay (reads ask it last)
//! and *silent* when a call went unanswered past its deadline (reads ask it
//! last, writes ship it nothing and deletes do not wait on it, as long as
//! the other nodes hold n - f shards: see [`passed_over`]). A marked node
//! is probed on its readiness endpoint every [`PROBE_PERIOD`]; it is
//! unmarked once it answers ready, and a probe it leaves unanswered past
//! the call deadline, or answers not ready, makes it silent. Only the
//! probe unmarks a node: a node whose disk stalls still answers calls
//! that touch no disk (a blob's state), and says it is not ready once a
//! store operation has hung long enough (`node::stall_watch`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus::IntGaugeVec;

use super::node_client::NodeCalls;
use crate::fleet::MapNode;

/// How often a marked node's readiness is probed.
pub const PROBE_PERIOD: Duration = Duration::from_secs(1);

/// How a node left its last call unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unanswered {
    /// A sliver request went past the hedge delay: reads ask it last.
    Slow,
    /// A call went past its deadline: reads ask it last, writes and
    /// deletes pass it over.
    Silent,
}

/// One marked node: how, and where its probe calls it.
#[derive(Debug, Clone)]
struct Mark {
    how: Unanswered,
    url: String,
}

/// The nodes of a fleet that lately left a call unanswered, shared by the
/// clients of one process.
#[derive(Debug)]
pub struct UnansweringNodes {
    calls: NodeCalls,
    marks: Mutex<BTreeMap<String, Mark>>,
    /// `redstuff_gateway_node_unanswering`, by node: 1 while silent.
    gauge: Option<IntGaugeVec>,
    probe_period: Duration,
}

impl UnansweringNodes {
    /// An empty memory whose probes call nodes with `calls`; `gauge` (by
    /// node) is set to 1 while a node is silent.
    pub fn new(calls: NodeCalls, gauge: Option<IntGaugeVec>) -> Arc<Self> {
        Arc::new(Self {
            calls,
            marks: Mutex::default(),
            gauge,
            probe_period: PROBE_PERIOD,
        })
    }

    /// How `node` left its last call unanswered, if it is marked.
    pub fn mark_of(&self, node: &str) -> Option<Unanswered> {
        self.lock().get(node).map(|m| m.how)
    }

    /// The nodes marked silent.
    pub fn silent(&self) -> BTreeSet<String> {
        self.lock()
            .iter()
            .filter(|(_, m)| m.how == Unanswered::Silent)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Records that `node` left a call unanswered (`how`); a silent node
    /// stays silent until it answers. Starts its probe when it was not
    /// marked yet.
    pub fn mark(self: &Arc<Self>, node: &MapNode, how: Unanswered) {
        let before = {
            let mut marks = self.lock();
            let before = marks.get(&node.name).map(|m| m.how);
            let mark = marks.entry(node.name.clone()).or_insert(Mark {
                how,
                url: node.url.clone(),
            });
            mark.how = mark.how.max(how);
            mark.url.clone_from(&node.url);
            before
        };
        self.changed(&node.name, before);
        if before.is_none() {
            tokio::spawn(probe(Arc::downgrade(self), node.name.clone()));
        }
    }

    /// Shows a node's mark, and says so when it is new or now silent.
    fn changed(&self, node: &str, before: Option<Unanswered>) {
        let now = self.mark_of(node);
        if let Some(gauge) = &self.gauge {
            let silent = now == Some(Unanswered::Silent);
            gauge.with_label_values(&[node]).set(i64::from(silent));
        }
        match now {
            Some(Unanswered::Slow) if before.is_none() => tracing::warn!(
                %node,
                "node left a sliver request unanswered past the hedge delay: reads ask it last until it answers again"
            ),
            Some(Unanswered::Silent) if before != now => tracing::warn!(
                %node,
                "node left a call unanswered past its deadline: writes and deletes pass it over, reads ask it last, until it answers again"
            ),
            None if before.is_some() => tracing::info!(%node, "node answers again"),
            _ => {}
        }
    }

    /// Records that `node` answered its probe ready: it is unmarked.
    fn answered(&self, node: &str) {
        let before = self.lock().remove(node).map(|m| m.how);
        if before.is_some() {
            self.changed(node, before);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Mark>> {
        self.marks.lock().expect("not poisoned")
    }
}

/// Probes a marked node until it answers (then unmarks it), it is unmarked
/// by an answer elsewhere, or the memory is gone.
async fn probe(memory: Weak<UnansweringNodes>, node: String) {
    loop {
        let Some(period) = memory.upgrade().map(|m| m.probe_period) else {
            return;
        };
        tokio::time::sleep(period).await;
        let Some(memory) = memory.upgrade() else {
            return;
        };
        let Some(url) = memory.lock().get(&node).map(|m| m.url.clone()) else {
            return;
        };
        if memory.calls.node(url).ready().await {
            memory.answered(&node);
            return;
        }
        let before = memory.lock().get_mut(&node).map(|mark| {
            let before = mark.how;
            mark.how = Unanswered::Silent;
            before
        });
        if before.is_some() {
            memory.changed(&node, before);
        }
    }
}

/// The nodes among `silent` that an operation needing `quorum` shards
/// passes over (pure): all of them when the other holders hold at least
/// `quorum` shards, else none (the operation then waits on them as on any
/// node, rather than fail for want of shards).
pub fn passed_over(
    holders: &[MapNode],
    silent: &BTreeSet<String>,
    quorum: usize,
) -> BTreeSet<String> {
    let others: usize = holders
        .iter()
        .filter(|n| !silent.contains(&n.name))
        .map(|n| n.shards.len())
        .sum();
    if others >= quorum {
        holders
            .iter()
            .filter(|n| silent.contains(&n.name) && !n.shards.is_empty())
            .map(|n| n.name.clone())
            .collect()
    } else {
        BTreeSet::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::TokenSet;
    use crate::client::Deadlines;

    fn node(name: &str, shards: &[u16], url: &str) -> MapNode {
        MapNode {
            name: name.into(),
            url: url.into(),
            shards: shards.iter().copied().collect(),
        }
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn seven() -> Vec<MapNode> {
        (0..7)
            .map(|i| node(&format!("node-{i}"), &[i], "http://127.0.0.1:9"))
            .collect()
    }

    #[test]
    fn silent_nodes_are_passed_over_while_the_others_hold_a_quorum() {
        let holders = seven();
        assert_eq!(
            passed_over(&holders, &names(&["node-1", "node-4"]), 5),
            names(&["node-1", "node-4"])
        );
        assert_eq!(passed_over(&holders, &BTreeSet::new(), 5), BTreeSet::new());
    }

    #[test]
    fn silent_nodes_are_waited_on_when_without_them_no_quorum_is_left() {
        let holders = seven();
        assert_eq!(
            passed_over(&holders, &names(&["node-1", "node-4", "node-6"]), 5),
            BTreeSet::new()
        );
    }

    #[test]
    fn a_silent_node_that_holds_no_shard_or_is_not_in_the_map_is_not_passed_over() {
        let mut holders = seven();
        holders.push(node("spare", &[], "http://127.0.0.1:9"));
        assert_eq!(
            passed_over(&holders, &names(&["spare", "gone", "node-0"]), 5),
            names(&["node-0"])
        );
    }

    fn memory() -> Arc<UnansweringNodes> {
        let calls = NodeCalls::new(TokenSet::single("t"), Deadlines::default());
        UnansweringNodes::new(calls, None)
    }

    #[tokio::test]
    async fn a_slow_node_becomes_silent_but_a_silent_one_never_merely_slow() {
        let memory = memory();
        let n = node("node-3", &[3], "http://127.0.0.1:9");
        memory.mark(&n, Unanswered::Slow);
        assert_eq!(memory.mark_of("node-3"), Some(Unanswered::Slow));
        assert!(memory.silent().is_empty());
        memory.mark(&n, Unanswered::Silent);
        memory.mark(&n, Unanswered::Slow);
        assert_eq!(memory.mark_of("node-3"), Some(Unanswered::Silent));
        assert_eq!(memory.silent(), names(&["node-3"]));
        memory.answered("node-3");
        assert_eq!(memory.mark_of("node-3"), None);
    }

    #[tokio::test]
    async fn a_marked_node_is_unmarked_once_it_answers_its_probe() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let ready = axum::Router::new().route("/readyz", axum::routing::get(|| async { "ready" }));
        tokio::spawn(async move { axum::serve(listener, ready).await });
        let memory = memory();
        memory.mark(&node("node-0", &[0], &url), Unanswered::Silent);
        for _ in 0..100 {
            if memory.mark_of("node-0").is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the probe did not unmark a node answering /readyz");
    }

    #[tokio::test]
    async fn a_node_that_does_not_answer_its_probe_stays_marked_and_becomes_silent() {
        // Accepts connections and answers nothing, as a stopped process.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let calls = NodeCalls::new(
            TokenSet::single("t"),
            Deadlines {
                call: Duration::from_millis(200),
                ..Deadlines::default()
            },
        );
        let memory = UnansweringNodes::new(calls, None);
        memory.mark(&node("node-0", &[0], &url), Unanswered::Slow);
        for _ in 0..100 {
            if memory.mark_of("node-0") == Some(Unanswered::Silent) {
                drop(listener);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("a node silent to its probe was not marked silent");
    }
}
