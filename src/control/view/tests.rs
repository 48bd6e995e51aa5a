use super::*;
use crate::codec::BlobId;
use crate::wire::InventoryBlob;

/// (blob id, segments, (shard, segments held) pairs, markers).
type Held<'a> = (&'a str, u32, &'a [(u16, u32)], BlobState);

fn committed(generation: u64) -> BlobState {
    BlobState {
        commit: Some(generation),
        ..BlobState::default()
    }
}

fn staged(generation: u64) -> BlobState {
    BlobState {
        staged: Some(generation),
        ..BlobState::default()
    }
}

fn tombstone(generation: u64) -> BlobState {
    BlobState {
        tombstone: Some(generation),
        ..BlobState::default()
    }
}

fn page(node: &str, shards: &[u16], blobs: &[Held]) -> InventoryPage {
    InventoryPage {
        node: node.into(),
        shards: shards.to_vec(),
        stored_bytes: 0,
        blobs: blobs
            .iter()
            .map(|(id, segments, held, state)| InventoryBlob {
                id: id.to_string(),
                size: 100,
                segments: *segments,
                shards: held.iter().copied().collect(),
                state: *state,
            })
            .collect(),
        next: None,
    }
}

/// The view when every answering node's ownership file has caught up with
/// the assignment: each is given the shards it says it owns.
fn view_as_claimed<'a>(
    inventories: impl IntoIterator<Item = (&'a str, Option<&'a InventoryPage>)>,
) -> FleetView {
    let inventories: Vec<_> = inventories.into_iter().collect();
    let assignment: Assignment = inventories
        .iter()
        .filter_map(|(node, page)| Some((*node, (*page)?)))
        .flat_map(|(node, page)| page.shards.iter().map(move |s| (*s, node.to_string())))
        .collect();
    FleetView::from_inventories(&assignment, inventories)
}

#[test]
fn a_shard_counts_only_when_it_holds_every_segment() {
    let a = page("a", &[0, 1], &[("x", 2, &[(0, 2), (1, 1)], committed(1))]);
    let b = page("b", &[2], &[("x", 2, &[(2, 2)], committed(1))]);
    let view = view_as_claimed([("a", Some(&a)), ("b", Some(&b)), ("c", None)]);
    assert_eq!(view.ready, ["a", "b"].map(String::from).into());
    assert_eq!(view.silent, ["c"].map(String::from).into());
    assert_eq!(view.blobs["x"].complete_shards, [0, 2].into());
    assert_eq!(view.blobs["x"].segments, 2);
    assert_eq!(view.blobs["x"].generation, 1);
    assert!(view.markers.is_empty());
}

#[test]
fn pairs_on_a_node_without_metadata_still_count() {
    // Node b lost the metadata but kept its slivers (or got them first).
    let a = page("a", &[0], &[("x", 1, &[(0, 1)], committed(1))]);
    let b = page("b", &[1], &[("x", 0, &[(1, 1)], committed(1))]);
    let view = view_as_claimed([("a", Some(&a)), ("b", Some(&b))]);
    assert_eq!(view.blobs["x"].complete_shards, [0, 1].into());
}

#[test]
fn a_blob_without_metadata_anywhere_is_not_a_blob() {
    let a = page("a", &[0], &[("x", 0, &[(0, 1)], committed(1))]);
    let view = view_as_claimed([("a", Some(&a))]);
    assert!(view.blobs.is_empty());
}

#[test]
fn a_blob_never_committed_is_invisible_and_not_repaired() {
    let a = page("a", &[0], &[("x", 1, &[(0, 1)], staged(5))]);
    let b = page("b", &[1], &[("x", 1, &[(1, 1)], staged(5))]);
    let view = view_as_claimed([("a", Some(&a)), ("b", Some(&b))]);
    assert!(view.blobs.is_empty() && view.deleted.is_empty());
    assert!(view.observations().is_empty());
    assert!(view.markers.is_empty());
}

#[test]
fn a_commit_on_some_nodes_is_carried_to_the_others_holding_the_blob() {
    let a = page("a", &[0], &[("x", 1, &[(0, 1)], committed(5))]);
    let b = page("b", &[1], &[("x", 1, &[(1, 1)], staged(5))]);
    let c = page("c", &[2], &[]);
    let view = view_as_claimed([("a", Some(&a)), ("b", Some(&b)), ("c", Some(&c))]);
    assert_eq!(view.blobs["x"].complete_shards, [0, 1].into());
    assert_eq!(
        view.markers,
        vec![MarkerTask {
            node: "b".into(),
            blob: "x".into(),
            marker: Marker::Commit(5)
        }],
        "c holds nothing: the repair commits there"
    );
}

#[test]
fn a_tombstone_anywhere_wins_and_goes_to_every_answering_node() {
    // b slept through the delete; d holds nothing; e is silent.
    let a = page("a", &[0], &[("x", 0, &[], tombstone(9))]);
    let b = page("b", &[1], &[("x", 1, &[(1, 1)], committed(5))]);
    let d = page("d", &[2], &[]);
    let view = view_as_claimed([
        ("a", Some(&a)),
        ("b", Some(&b)),
        ("d", Some(&d)),
        ("e", None),
    ]);
    assert!(view.blobs.is_empty(), "a deleted blob is not visible");
    assert_eq!(view.deleted, [("x".to_string(), 9)].into());
    let tasks: Vec<(&str, Marker)> = view
        .markers
        .iter()
        .map(|t| (t.node.as_str(), t.marker))
        .collect();
    assert_eq!(
        tasks,
        vec![("b", Marker::Tombstone(9)), ("d", Marker::Tombstone(9))]
    );
}

#[test]
fn the_same_bytes_written_again_after_a_delete_are_visible_and_the_sleeper_is_updated() {
    let a = page(
        "a",
        &[0],
        &[(
            "x",
            1,
            &[(0, 1)],
            BlobState {
                commit: Some(12),
                tombstone: Some(9),
                ..BlobState::default()
            },
        )],
    );
    let b = page("b", &[1], &[("x", 1, &[(1, 1)], committed(5))]);
    let view = view_as_claimed([("a", Some(&a)), ("b", Some(&b))]);
    assert_eq!(view.blobs["x"].generation, 12);
    assert_eq!(view.markers[0].marker, Marker::Commit(12));
    assert_eq!(view.markers[0].node, "b");
}

#[test]
fn the_size_most_shards_report_wins_over_a_liars() {
    let mut liar = page("liar", &[0], &[("x", 9, &[], committed(1))]);
    liar.blobs[0].size = 1 << 40;
    let a = page("a", &[1, 2], &[("x", 1, &[(1, 1), (2, 1)], committed(1))]);
    let view = view_as_claimed([("liar", Some(&liar)), ("a", Some(&a))]);
    assert_eq!((view.blobs["x"].size, view.blobs["x"].segments), (100, 1));
}

/// Shards 0-3 given to a-d; x committed with 2 segments, whole on a-c.
fn honest_a_to_c() -> (Assignment, [InventoryPage; 3]) {
    let assignment: Assignment = [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
        .into_iter()
        .map(|(shard, node)| (shard, node.to_string()))
        .collect();
    let pages = [("a", 0), ("b", 1), ("c", 2)]
        .map(|(node, shard)| page(node, &[shard], &[("x", 2, &[(shard, 2)], committed(1))]));
    (assignment, pages)
}

/// The view under `assignment` of nodes a-d answering with `pages` (None:
/// not answering).
fn view_a_to_d(assignment: &Assignment, pages: [Option<&InventoryPage>; 4]) -> FleetView {
    FleetView::from_inventories(assignment, ["a", "b", "c", "d"].into_iter().zip(pages))
}

#[test]
fn a_node_claiming_every_shard_neither_makes_a_blob_whole_nor_outvotes_its_layout() {
    let (assignment, [a, b, c]) = honest_a_to_c();
    // d owns shard 3 and holds none of it, yet says it owns all four
    // shards and holds each whole in the one segment it claims x has.
    let mut liar = page(
        "d",
        &[0, 1, 2, 3],
        &[("x", 1, &[(0, 1), (1, 1), (2, 1), (3, 1)], committed(1))],
    );
    liar.blobs[0].size = 1 << 40;
    let view = view_a_to_d(&assignment, [Some(&a), Some(&b), Some(&c), Some(&liar)]);
    let x = &view.blobs["x"];
    assert_eq!((x.size, x.segments), (100, 2), "the layout of a, b and c");
    assert_eq!(x.complete_shards, [0, 1, 2].into(), "shard 3 is missing");
    let encoding = EncodingConfig::new(4).unwrap();
    assert_eq!(view.health_of(&encoding, x), Health::Degraded);
}

#[test]
fn nodes_given_no_shard_outvote_no_owner_on_a_layout() {
    let (assignment, [a, _, _]) = honest_a_to_c();
    let liar = |node| page(node, &[], &[("x", 1, &[], committed(1))]);
    let (e, g) = (liar("e"), liar("g"));
    let view = FleetView::from_inventories(
        &assignment,
        [("a", Some(&a)), ("e", Some(&e)), ("g", Some(&g))],
    );
    assert_eq!(view.blobs["x"].segments, 2, "a's");
    // Alone, such a node's layout is the only one there is.
    let view = FleetView::from_inventories(&assignment, [("e", Some(&e))]);
    assert_eq!(view.blobs["x"].segments, 1);
}

#[test]
fn a_node_claiming_a_shard_it_is_not_given_never_gets_a_copy_released() {
    // Shard 1 moved from a to b, which has not rebuilt it yet; d claims
    // shard 1 and says it holds it whole.
    let (assignment, [_, _, c]) = honest_a_to_c();
    let a = page("a", &[0], &[("x", 2, &[(0, 2), (1, 2)], committed(1))]);
    let b = page("b", &[1], &[]);
    let liar = page("d", &[1, 3], &[("x", 2, &[(1, 2)], committed(1))]);
    let view = view_a_to_d(&assignment, [Some(&a), Some(&b), Some(&c), Some(&liar)]);
    assert_eq!(view.blobs["x"].complete_shards, [0, 2].into());
    assert!(
        view.releases(&assignment).is_empty(),
        "a keeps its copy of shard 1 until b holds it"
    );
}

#[test]
fn a_node_claiming_the_shards_of_a_silent_node_does_not_make_them_within_reach() {
    // d owns shard 3 and does not answer; a claims it too, holding nothing
    // of x there: the blob may still be readable with d's shard.
    let encoding = EncodingConfig::new(4).unwrap(); // f 1, p 2, q 3
    let (assignment, _) = honest_a_to_c();
    let a = page("a", &[0, 3], &[("x", 1, &[(0, 1)], committed(1))]);
    let b = page("b", &[1], &[]);
    let c = page("c", &[2], &[]);
    let view = view_a_to_d(&assignment, [Some(&a), Some(&b), Some(&c), None]);
    assert_eq!(view.unanswered_shards(4), 1);
    assert_eq!(view.health_of(&encoding, &view.blobs["x"]), Health::AtRisk);
}

#[test]
fn a_shard_counts_only_once_the_assignment_gives_it_to_the_node_holding_it() {
    // The assignment moved shard 1 from a to b; a's ownership file has not
    // caught up, so a still says it owns 1 and holds it whole: reads and
    // repairs go to b, which holds nothing of it yet.
    let (assignment, [_, _, c]) = honest_a_to_c();
    let a = page("a", &[0, 1], &[("x", 2, &[(0, 2), (1, 2)], committed(1))]);
    let b = page("b", &[], &[]);
    let view = view_a_to_d(&assignment, [Some(&a), Some(&b), Some(&c), None]);
    assert_eq!(view.blobs["x"].complete_shards, [0, 2].into());
    assert!(
        view.strays.is_empty(),
        "a owns shard 1 by its file: no stray"
    );
    assert!(!view.ownership_matches(&assignment));
}

#[test]
fn a_node_has_repairs_only_while_a_blob_that_can_be_rebuilt_misses_its_shards() {
    let encoding = EncodingConfig::new(4).unwrap(); // f 1, p 2, q 3
    let (assignment, [a, b, c]) = honest_a_to_c();
    let d = page("d", &[3], &[]);
    let view = view_a_to_d(&assignment, [Some(&a), Some(&b), Some(&c), Some(&d)]);
    assert!(view.node_has_repairs(&encoding, &assignment, "d"));
    assert!(!view.node_has_repairs(&encoding, &assignment, "a"));
    // Held on a alone, x is Lost: its pairs will never be rebuilt.
    let empty = |node, shard| page(node, &[shard], &[]);
    let (b, c) = (empty("b", 1), empty("c", 2));
    let view = view_a_to_d(&assignment, [Some(&a), Some(&b), Some(&c), Some(&d)]);
    assert_eq!(view.health_of(&encoding, &view.blobs["x"]), Health::Lost);
    assert!(!view.node_has_repairs(&encoding, &assignment, "d"));
}

#[test]
fn shards_an_owner_does_not_know_of_yet_are_not_repaired_there() {
    let a = page("a", &[0], &[]);
    let view = view_as_claimed([("a", Some(&a)), ("b", None)]);
    let assignment: Assignment = [(0, "a".into()), (1, "a".into()), (2, "b".into())].into();
    assert_eq!(view.confirmed(&assignment), [(0, "a".to_string())].into());
}

#[test]
fn ownership_matches_when_every_answering_node_owns_what_the_assignment_gives_it() {
    let a = page("a", &[0, 2], &[]);
    let b = page("b", &[1], &[]);
    let view = view_as_claimed([("a", Some(&a)), ("b", Some(&b)), ("c", None)]);
    let mut assignment: Assignment = [
        (0, "a".into()),
        (1, "b".into()),
        (2, "a".into()),
        (3, "c".into()),
    ]
    .into();
    assert!(view.ownership_matches(&assignment), "silent c is not asked");
    assignment.insert(2, "b".into());
    assert!(
        !view.ownership_matches(&assignment),
        "a still owns 2, b not yet"
    );
}

#[test]
fn a_node_is_whole_when_its_shards_hold_every_blob() {
    // a still says it owns shard 1, which the assignment gave to b.
    let a = page(
        "a",
        &[0, 1],
        &[
            ("x", 1, &[(0, 1), (1, 1)], committed(1)),
            ("y", 1, &[(0, 1)], committed(1)),
        ],
    );
    let view = view_as_claimed([("a", Some(&a))]);
    let assignment: Assignment = [(0, "a".into()), (1, "b".into())].into();
    assert!(view.node_is_whole(&assignment, "a"));
    assert!(!view.node_is_whole(&assignment, "b"), "y misses shard 1");
}

#[test]
fn health_counts_lost_blobs_and_missing_pairs_of_blobs_that_can_be_rebuilt_follow_the_view() {
    let encoding = EncodingConfig::new(4).unwrap(); // f 1, p 2, q 3
    let a = page(
        "a",
        &[0, 1, 2, 3],
        &[
            ("whole", 1, &[(0, 1), (1, 1), (2, 1), (3, 1)], committed(1)),
            ("one-gone", 1, &[(0, 1), (1, 1), (2, 1)], committed(1)),
            ("lost", 1, &[(0, 1)], committed(1)),
        ],
    );
    let view = view_as_claimed([("a", Some(&a))]);
    let counts = view.health_counts(&encoding);
    assert_eq!(counts[&Health::Healthy], 1);
    assert_eq!(counts[&Health::Degraded], 1);
    assert_eq!(counts[&Health::Lost], 1);
    assert_eq!(
        view.missing_pairs(&encoding),
        1,
        "the Lost blob's pairs will never be rebuilt: not counted"
    );
    assert_eq!(view.lost_blobs(&encoding).collect::<Vec<_>>(), ["lost"]);
}

#[test]
fn a_blob_is_lost_only_when_the_shards_of_nodes_not_answering_could_not_make_it_readable() {
    let encoding = EncodingConfig::new(7).unwrap(); // f 2, p 3, q 5
    let held: &[Held] = &[("x", 1, &[(0, 1), (1, 1)], committed(1))];
    // Shards 2-6 are on nodes that did not answer or were not asked.
    let a = page("a", &[0, 1], held);
    let view = view_as_claimed([("a", Some(&a)), ("b", None)]);
    assert_eq!(view.unanswered_shards(7), 5);
    assert_eq!(view.health_counts(&encoding)[&Health::Lost], 0);
    assert_eq!(view.health_counts(&encoding)[&Health::AtRisk], 1);
    assert_eq!(view.lost_blobs(&encoding).count(), 0);
    assert_eq!(view.missing_pairs(&encoding), 5);
    // Every owner answered, holding nothing of it: it is Lost.
    let rest = page("b", &[2, 3, 4, 5, 6], &[]);
    let view = view_as_claimed([("a", Some(&a)), ("b", Some(&rest))]);
    assert_eq!(view.unanswered_shards(7), 0);
    assert_eq!(view.lost_blobs(&encoding).collect::<Vec<_>>(), ["x"]);
}

#[test]
fn pairs_of_a_shard_its_holder_no_longer_owns_do_not_count() {
    // Shard 1 moved from a to b (a came back after its eviction, or the
    // shards were rebalanced); b has not rebuilt it yet. Reads ask b.
    let a = page("a", &[0], &[("x", 1, &[(0, 1), (1, 1)], committed(1))]);
    let b = page("b", &[1], &[]);
    let view = view_as_claimed([("a", Some(&a)), ("b", Some(&b))]);
    assert_eq!(view.blobs["x"].complete_shards, [0].into());
}

#[test]
fn a_copy_left_behind_is_released_once_the_owner_holds_the_shard_whole() {
    // Shard 1 moved from a to b, and b rebuilt it; shard 2 moved from a
    // to c, which holds only one of its two segments so far.
    let a = page(
        "a",
        &[0],
        &[("x", 2, &[(0, 2), (1, 2), (2, 2)], committed(1))],
    );
    let b = page("b", &[1], &[("x", 2, &[(1, 2)], committed(1))]);
    let c = page("c", &[2], &[("x", 2, &[(2, 1)], committed(1))]);
    let view = view_as_claimed([("a", Some(&a)), ("b", Some(&b)), ("c", Some(&c))]);
    assert_eq!(view.blobs["x"].complete_shards, [0, 1].into());
    let assignment: Assignment = [(0, "a".into()), (1, "b".into()), (2, "c".into())].into();
    assert_eq!(
        view.releases(&assignment),
        vec![ReleaseTask {
            node: "a".into(),
            blob: "x".into(),
            shard: 1
        }],
        "shard 2 stays on a until c holds every segment"
    );
}

#[test]
fn a_copy_is_kept_where_the_assignment_gives_the_shard_back() {
    // a's ownership file has not caught up yet: the assignment gave
    // shard 1 back to it while b still owns it.
    let a = page("a", &[0], &[("x", 1, &[(0, 1), (1, 1)], committed(1))]);
    let b = page("b", &[1], &[("x", 1, &[(1, 1)], committed(1))]);
    let view = view_as_claimed([("a", Some(&a)), ("b", Some(&b))]);
    assert_eq!(view.strays.len(), 1);
    let assignment: Assignment = [(0, "a".into()), (1, "a".into())].into();
    assert!(view.releases(&assignment).is_empty());
}

#[test]
fn nothing_is_released_of_blobs_not_visible() {
    // Deleted: the tombstone removes the data. Staged: the write may
    // still commit, or the staged TTL collects it.
    let a = page(
        "a",
        &[0],
        &[
            ("gone", 1, &[(1, 1)], tombstone(3)),
            ("pending", 1, &[(1, 1)], staged(4)),
        ],
    );
    let b = page(
        "b",
        &[1],
        &[
            ("gone", 0, &[], tombstone(3)),
            ("pending", 1, &[(1, 1)], staged(4)),
        ],
    );
    let view = view_as_claimed([("a", Some(&a)), ("b", Some(&b))]);
    assert!(view.strays.is_empty());
}

/// A node's entry of blob `n` of kind `kind`: what it holds and its markers.
fn varied_entry(node: u16, n: u8, kind: u8) -> InventoryBlob {
    let state = match kind % 4 {
        0 => committed(3),
        1 => tombstone(4),
        2 => staged(2),
        _ => BlobState {
            commit: Some(5),
            tombstone: Some(4),
            ..BlobState::default()
        },
    };
    let shards = match kind / 4 % 3 {
        0 => vec![],
        1 => vec![(node, 2)],
        _ => vec![(node, 1), (9, 2)],
    };
    InventoryBlob {
        id: BlobId([n; 32]).to_string(),
        size: 100,
        segments: if (kind / 12).is_multiple_of(2) { 2 } else { 0 },
        shards: shards.into_iter().collect(),
        state,
    }
}

fn varied_pages(held: &[std::collections::BTreeMap<u8, u8>]) -> Vec<InventoryPage> {
    held.iter()
        .enumerate()
        .map(|(i, blobs)| InventoryPage {
            node: format!("n{i}"),
            shards: vec![i as u16],
            stored_bytes: 0,
            blobs: blobs
                .iter()
                .map(|(n, kind)| varied_entry(i as u16, *n, *kind))
                .collect(),
            next: None,
        })
        .collect()
}

fn view_of(pages: &[InventoryPage]) -> FleetView {
    view_as_claimed(pages.iter().map(|p| (p.node.as_str(), Some(p))))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, ..Default::default() })]

    /// Any fleet before and after any changes: the view before, with only
    /// the blobs whose entries changed on some node forgotten and folded
    /// again from every node's new entries, is the view of the whole new
    /// inventories.
    #[test]
    fn folding_again_only_the_changed_blobs_gives_the_view_of_the_new_inventories(
        before in proptest::collection::vec(proptest::collection::btree_map(0u8..20, 0u8..24, 0..15), 1..4),
        changes in proptest::collection::vec(proptest::collection::btree_map(0u8..20, proptest::option::of(0u8..24), 0..8), 3),
    ) {
        let after: Vec<std::collections::BTreeMap<u8, u8>> = before
            .iter()
            .zip(&changes)
            .map(|(held, changed)| {
                let mut held = held.clone();
                for (n, kind) in changed {
                    match kind {
                        Some(kind) => held.insert(*n, *kind),
                        None => held.remove(n),
                    };
                }
                held
            })
            .collect();
        let changed: std::collections::HashSet<String> = before
            .iter()
            .zip(&after)
            .flat_map(|(b, a)| {
                b.keys()
                    .chain(a.keys())
                    .filter(|n| b.get(n) != a.get(n))
                    .map(|n| BlobId([*n; 32]).to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        let new_pages = varied_pages(&after);
        let mut builder = ViewBuilder::resume(view_of(&varied_pages(&before)));
        builder.forget(&changed);
        for id in &changed {
            let entries: Vec<(&str, &InventoryBlob)> = new_pages
                .iter()
                .filter_map(|p| Some((p.node.as_str(), p.blobs.iter().find(|b| &b.id == id)?)))
                .collect();
            builder.fold(id, &entries);
        }
        proptest::prop_assert_eq!(builder.finish(), view_of(&new_pages));
    }
}
