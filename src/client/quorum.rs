//! Asking the fleet about one blob: every node's markers, gathered until
//! the answers cover a quorum of n - f shards. Any two quorums share a
//! shard, so a delete or commit acknowledged by a quorum is always seen.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::blob_client::BlobClient;
use crate::blob_state::{self, BlobState, Verdict};
use crate::codec::BlobId;
use crate::wire::NodeBlobState;

/// One node's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateAnswer {
    /// The node.
    pub node: String,
    /// The shards it holds in the fleet map.
    pub shards: BTreeSet<u16>,
    /// What it said.
    pub state: NodeBlobState,
}

/// What the nodes said about a blob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCollection {
    /// Answers, in the order they came.
    pub answers: Vec<StateAnswer>,
    /// Nodes that did not answer within their deadline (down, stopped,
    /// partitioned).
    pub silent: BTreeSet<String>,
}

impl StateCollection {
    /// Shards whose node answered.
    pub fn answered_shards(&self) -> usize {
        self.answers.iter().map(|a| a.shards.len()).sum()
    }

    /// What the markers add up to.
    pub fn verdict(&self) -> Verdict {
        blob_state::resolve(self.answers.iter().map(|a| &a.state.state))
    }

    /// Shards whose node's markers satisfy `test`.
    pub fn shards_where(&self, test: impl Fn(&BlobState) -> bool) -> usize {
        self.answers
            .iter()
            .filter(|a| test(&a.state.state))
            .map(|a| a.shards.len())
            .sum()
    }

    /// Every generation seen.
    pub fn generations(&self) -> impl Iterator<Item = Option<u64>> + '_ {
        self.answers.iter().map(|a| a.state.state.newest())
    }

    /// The blob's (length, segments) as most answering shards report them
    /// from their metadata: a lying minority cannot set the size of what
    /// is read from anyone.
    pub fn layout_claim(&self) -> Option<(u64, u32)> {
        self.layout_claims()
            .into_iter()
            .next()
            .map(|(claim, _)| claim)
    }

    /// Every (length, segments) answering nodes report, with the nodes
    /// reporting it (most shards first): the claim most shards report
    /// first, a tie going to the smaller layout (a liar gains nothing by
    /// claiming a huge one). The metadata proves itself against the blob
    /// id, so a reader may try the holders of each claim in turn.
    pub fn layout_claims(&self) -> Vec<((u64, u32), Vec<&str>)> {
        let mut claims: BTreeMap<(u64, u32), (usize, Vec<&StateAnswer>)> = BTreeMap::new();
        for answer in &self.answers {
            if let (Some(size), Some(segments)) = (answer.state.size, answer.state.segments) {
                let claim = claims.entry((size, segments)).or_default();
                claim.0 += answer.shards.len().max(1);
                claim.1.push(answer);
            }
        }
        let mut ordered: Vec<_> = claims.into_iter().collect();
        // Stable: among equal votes the smaller layout (BTreeMap order) stays first.
        ordered.sort_by_key(|(_, (votes, _))| std::cmp::Reverse(*votes));
        ordered
            .into_iter()
            .map(|(claim, (_, mut holders))| {
                holders.sort_by_key(|a| std::cmp::Reverse(a.shards.len()));
                (
                    claim,
                    holders.into_iter().map(|a| a.node.as_str()).collect(),
                )
            })
            .collect()
    }
}

/// Asks every node holding shards about `id`, concurrently, until the
/// answers cover `quorum` shards (or every node answered or failed). The
/// calls still out are heard out in the background
/// ([`super::hear_out_in_background`]).
pub async fn collect_states(client: &BlobClient, id: &BlobId, quorum: usize) -> StateCollection {
    let id = *id;
    let mut pending: FuturesUnordered<_> = client
        .holders()
        .map(|node| {
            let call = client.client(node);
            let (name, shards) = (node.name.clone(), node.shards.clone());
            async move { (name, shards, call.state(&id).await) }
        })
        .collect();
    let mut collection = StateCollection::default();
    while let Some((node, shards, answer)) = pending.next().await {
        match answer {
            Ok(state) => collection.answers.push(StateAnswer {
                node,
                shards,
                state,
            }),
            Err(e) if e.is_silence() => {
                client.unanswered(&node, super::unanswering::Unanswered::Silent);
                collection.silent.insert(node);
            }
            Err(e) => tracing::debug!(%node, "state of {id}: {e}"),
        }
        if collection.answered_shards() >= quorum {
            break;
        }
    }
    super::hear_out_in_background(pending);
    collection
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The answer of `node` holding `shards`, with `state` and the layout
    /// (size, segments) it reports.
    pub(in crate::client) fn answer(
        node: &str,
        shards: &[u16],
        state: BlobState,
        layout: Option<(u64, u32)>,
    ) -> StateAnswer {
        StateAnswer {
            node: node.into(),
            shards: shards.iter().copied().collect(),
            state: NodeBlobState {
                state,
                size: layout.map(|l| l.0),
                segments: layout.map(|l| l.1),
                ..NodeBlobState::default()
            },
        }
    }

    #[test]
    fn a_tie_between_layouts_goes_to_the_smaller() {
        let committed = BlobState {
            commit: Some(3),
            ..Default::default()
        };
        let collection = StateCollection {
            answers: vec![
                answer("liar", &[0], committed, Some((1 << 40, 1 << 20))),
                answer("a", &[1], committed, Some((100, 1))),
            ],
            silent: Default::default(),
        };
        assert_eq!(collection.layout_claim(), Some((100, 1)));
    }

    #[test]
    fn the_layout_most_shards_report_wins_over_a_liars() {
        let committed = BlobState {
            commit: Some(3),
            ..Default::default()
        };
        let collection = StateCollection {
            answers: vec![
                answer("liar", &[0], committed, Some((1 << 40, 1 << 20))),
                answer("a", &[1, 2], committed, Some((100, 1))),
                answer("b", &[3], committed, Some((100, 1))),
                answer("empty", &[4], BlobState::default(), None),
            ],
            silent: ["c".to_string()].into(),
        };
        assert_eq!(collection.layout_claim(), Some((100, 1)));
        assert_eq!(
            collection.layout_claims(),
            vec![
                ((100, 1), vec!["a", "b"]),
                ((1 << 40, 1 << 20), vec!["liar"])
            ]
        );
        assert_eq!(collection.answered_shards(), 5);
        assert_eq!(collection.verdict(), Verdict::Visible(3));
        assert_eq!(collection.shards_where(|s| s.commit.is_some()), 4);
    }

    /// The address of the caller's end of each connection a call came on.
    pub(in crate::client) type Callers =
        std::sync::Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>;

    /// A node answering, after `delay`, every state call with an empty
    /// state and every metadata call with `metadata`, recording where each
    /// call came from; its URL and those callers.
    pub(in crate::client) async fn recording_node(
        delay: std::time::Duration,
        metadata: Vec<u8>,
    ) -> (String, Callers) {
        use axum::extract::ConnectInfo;
        use axum::routing::get;
        let callers: Callers = Default::default();
        let (on_state, on_metadata) = (callers.clone(), callers.clone());
        let app = axum::Router::new()
            .route(
                "/v1/blobs/{id}/state",
                get(
                    move |ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>| {
                        on_state.lock().unwrap().push(peer);
                        async move {
                            tokio::time::sleep(delay).await;
                            axum::Json(NodeBlobState::default())
                        }
                    },
                ),
            )
            .route(
                "/v1/blobs/{id}/metadata",
                get(
                    move |ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>| {
                        on_metadata.lock().unwrap().push(peer);
                        let metadata = metadata.clone();
                        async move {
                            tokio::time::sleep(delay).await;
                            metadata
                        }
                    },
                ),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await
        });
        (url, callers)
    }

    #[tokio::test]
    async fn the_states_a_quorum_did_not_need_are_still_heard_out_keeping_their_connections() {
        use std::time::Duration;
        // n = 4: three nodes answer at once, node-3 after 300 ms.
        let mut urls = Vec::new();
        let mut slow_callers = None;
        for i in 0..4 {
            let delay = Duration::from_millis(if i == 3 { 300 } else { 0 });
            let (url, callers) = recording_node(delay, Vec::new()).await;
            urls.push(url);
            if i == 3 {
                slow_callers = Some(callers);
            }
        }
        let slow_callers = slow_callers.unwrap();
        let client = super::super::test_fleet::client_of(4, urls, 5.0);
        let id = BlobId([9; 32]);

        let first = collect_states(&client, &id, 3).await;
        assert_eq!(
            first.answered_shards(),
            3,
            "the quorum, without the slow node"
        );
        assert!(first.answers.iter().all(|a| a.node != "node-3"));
        // The slow node's answer is read after all: its connection goes
        // back to the pool, and the next call to it comes on the same one
        // (a call dropped mid-answer would have closed it).
        tokio::time::sleep(Duration::from_millis(600)).await;
        collect_states(&client, &id, 4).await;
        let callers = slow_callers.lock().unwrap().clone();
        assert_eq!(callers.len(), 2, "{callers:?}");
        assert_eq!(callers[0], callers[1], "a second connection was opened");
    }
}
