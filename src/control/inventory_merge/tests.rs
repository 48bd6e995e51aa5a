use proptest::prelude::*;

use super::*;
use crate::blob_state::BlobState;
use crate::wire::InventoryPage;

fn id(n: u8) -> BlobId {
    BlobId([n; 32])
}

/// A blob entry: `shards` held whole (one segment), its markers.
fn entry(n: u8, shards: &[u16], state: BlobState) -> (BlobId, InventoryBlob) {
    (
        id(n),
        InventoryBlob {
            id: id(n).to_string(),
            size: 10,
            segments: 1,
            shards: shards.iter().map(|s| (*s, 1)).collect(),
            state,
        },
    )
}

fn committed() -> BlobState {
    BlobState {
        commit: Some(1),
        ..BlobState::default()
    }
}

fn deleted() -> BlobState {
    BlobState {
        tombstone: Some(2),
        ..BlobState::default()
    }
}

/// One node: its name, owned shards and entries in id order.
struct Node {
    name: String,
    shards: Vec<u16>,
    entries: Vec<(BlobId, InventoryBlob)>,
}

/// Each node given the shards it says it owns (its ownership file has
/// caught up with the assignment).
fn assigned_as_claimed(nodes: &[Node]) -> crate::fleet::Assignment {
    nodes
        .iter()
        .flat_map(|n| n.shards.iter().map(|shard| (*shard, n.name.clone())))
        .collect()
}

/// The nodes by name, each with the shards it says it owns.
fn named(nodes: &[Node]) -> impl Iterator<Item = (String, BTreeSet<u16>)> + '_ {
    nodes
        .iter()
        .map(|n| (n.name.clone(), n.shards.iter().copied().collect()))
}

impl Node {
    fn whole(&self) -> InventoryPage {
        InventoryPage {
            node: self.name.clone(),
            shards: self.shards.clone(),
            stored_bytes: 0,
            blobs: self.entries.iter().map(|(_, b)| b.clone()).collect(),
            next: None,
        }
    }

    /// The page after `after`, of at most `size` entries.
    fn page(&self, after: Option<BlobId>, size: usize) -> CheckedPage {
        let rest: Vec<_> = self
            .entries
            .iter()
            .filter(|(id, _)| after.is_none_or(|a| *id > a))
            .cloned()
            .collect();
        let taken: Vec<_> = rest.iter().take(size).cloned().collect();
        let next = (rest.len() > size).then(|| taken.last().unwrap().1.id.clone());
        CheckedPage {
            ids: taken.iter().map(|(id, _)| *id).collect(),
            page: InventoryPage {
                next,
                blobs: taken.into_iter().map(|(_, b)| b).collect(),
                ..self.whole()
            },
        }
    }
}

/// Runs the merge as `observe` does, each node answering pages of its own
/// size; `fails(node, page number)` makes that page fail. Checks after
/// every round that no node has more than a page waiting.
fn merge(nodes: &[Node], sizes: &[usize], fails: impl Fn(usize, usize) -> bool) -> FleetView {
    merge_and_stops(nodes, sizes, fails).0
}

/// `merge`, and the nodes it says stopped partway.
fn merge_and_stops(
    nodes: &[Node],
    sizes: &[usize],
    fails: impl Fn(usize, usize) -> bool,
) -> (FleetView, Vec<String>) {
    let mut merge = InventoryMerge::new(named(nodes), usize::MAX);
    let mut pages = vec![0; nodes.len()];
    loop {
        let wanted = merge.wanted();
        if wanted.is_empty() {
            break;
        }
        for (node, after) in wanted {
            let answer = if fails(node, pages[node]) {
                Err("no answer".to_string())
            } else {
                Ok(nodes[node].page(after, sizes[node]))
            };
            pages[node] += 1;
            merge.take_page(node, answer);
        }
        merge.fold_ready();
        for (cursor, size) in merge.cursors.iter().zip(sizes) {
            assert!(cursor.buffered.len() <= *size, "more than a page held");
        }
    }
    let stopped = merge.stopped_partway();
    (merge.finish(), stopped)
}

fn three_nodes() -> Vec<Node> {
    let a = Node {
        name: "a".into(),
        shards: vec![0],
        entries: (1..=9).map(|n| entry(n, &[0], committed())).collect(),
    };
    let b = Node {
        name: "b".into(),
        shards: vec![1],
        entries: (3..=12).map(|n| entry(n, &[1], committed())).collect(),
    };
    let c = Node {
        name: "c".into(),
        shards: vec![2],
        entries: [
            entry(2, &[2], deleted()),
            entry(5, &[2], committed()),
            entry(11, &[2], deleted()),
        ]
        .into(),
    };
    vec![a, b, c]
}

#[test]
fn the_merged_view_is_the_view_of_the_whole_inventories() {
    let nodes = three_nodes();
    let whole: Vec<InventoryPage> = nodes.iter().map(Node::whole).collect();
    let expected = FleetView::from_inventories(
        &assigned_as_claimed(&nodes),
        nodes
            .iter()
            .zip(&whole)
            .map(|(n, page)| (n.name.as_str(), Some(page))),
    );
    for sizes in [[1, 1, 1], [2, 3, 1], [4, 1, 5], [100, 100, 100]] {
        assert_eq!(
            merge(&nodes, &sizes, |_, _| false),
            expected,
            "pages {sizes:?}"
        );
    }
    assert_eq!(expected.blobs[&id(5).to_string()].complete_shards.len(), 3);
    assert_eq!(expected.deleted[&id(2).to_string()], 2);
}

#[test]
fn a_node_failing_its_first_page_did_not_answer() {
    let nodes = three_nodes();
    let (view, stopped) = merge_and_stops(&nodes, &[2, 2, 2], |node, page| node == 1 && page == 0);
    assert!(stopped.is_empty(), "it never answered: {stopped:?}");
    assert_eq!(view.silent, ["b".to_string()].into());
    assert!(!view.ready.contains("b") && !view.owned.contains_key("b"));
    assert_eq!(view.blobs[&id(9).to_string()].complete_shards, [0].into());
}

#[test]
fn a_node_failing_a_later_page_stopped_and_what_it_listed_before_still_counts() {
    let nodes = three_nodes();
    // b's first page lists blobs 3 and 4; its second fails.
    let (view, stopped) = merge_and_stops(&nodes, &[2, 2, 2], |node, page| node == 1 && page == 1);
    assert_eq!(stopped, ["b"]);
    assert_eq!(view.silent, ["b".to_string()].into());
    assert!(!view.ready.contains("b") && !view.owned.contains_key("b"));
    assert_eq!(
        view.blobs[&id(4).to_string()].complete_shards,
        [0, 1].into()
    );
    assert_eq!(view.blobs[&id(6).to_string()].complete_shards, [0].into());
    // Tombstones go to the nodes answering when the blob is folded: b
    // still answered for blob 2, no longer for blob 11.
    let tombstoned = |blob: u8| -> Vec<&str> {
        view.markers
            .iter()
            .filter(|m| m.blob == id(blob).to_string())
            .map(|m| m.node.as_str())
            .collect()
    };
    assert_eq!(tombstoned(2), ["a", "b"]);
    assert_eq!(tombstoned(11), ["a"]);
}

#[test]
fn a_node_listing_more_blobs_than_allowed_is_cut_there() {
    let nodes = three_nodes();
    let mut merge = InventoryMerge::new(named(&nodes), 4);
    while let Some((node, after)) = merge.wanted().first().copied() {
        merge.take_page(node, Ok(nodes[node].page(after, 3)));
        merge.fold_ready();
    }
    assert_eq!(merge.listed(0), 3);
    let view = merge.finish();
    assert_eq!(view.silent, ["a", "b"].map(String::from).into());
    assert_eq!(view.ready, ["c".to_string()].into());
}

fn state_of(kind: u8) -> BlobState {
    match kind % 3 {
        0 => committed(),
        1 => deleted(),
        _ => BlobState {
            commit: Some(3),
            tombstone: Some(2),
            ..BlobState::default()
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Any fleet, any page sizes, any page failing: the merge equals the
    /// view of the whole inventories of the nodes that answered every
    /// page, whenever no node failed after its first page.
    #[test]
    fn any_paging_gives_the_view_of_the_whole_inventories(
        held in proptest::collection::vec(proptest::collection::btree_map(0u8..40, 0u8..6, 0..30), 1..5),
        sizes in proptest::collection::vec(1usize..7, 5),
        silent in proptest::collection::vec(any::<bool>(), 5),
    ) {
        let nodes: Vec<Node> = held
            .iter()
            .enumerate()
            .map(|(i, blobs)| Node {
                name: format!("n{i}"),
                shards: vec![i as u16],
                entries: blobs
                    .iter()
                    .map(|(n, kind)| {
                        let shards: &[u16] = if kind % 2 == 0 { &[] } else { &[i as u16, 9] };
                        entry(*n, shards, state_of(*kind))
                    })
                    .collect(),
            })
            .collect();
        let whole: Vec<InventoryPage> = nodes.iter().map(Node::whole).collect();
        let expected = FleetView::from_inventories(
            &assigned_as_claimed(&nodes),
            nodes.iter().zip(&whole).enumerate().map(|(i, (n, page))| {
                (n.name.as_str(), (!silent[i]).then_some(page))
            }),
        );
        let merged = merge(&nodes, &sizes[..nodes.len()], |node, page| silent[node] && page == 0);
        prop_assert_eq!(merged, expected);
    }
}
