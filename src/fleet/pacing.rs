//! Pacing a rebalance (pure). A shard whose owner is gone (evicted after
//! the grace period) moves at once: nothing is left to protect. A shard
//! whose owner is still there (a node came back, or the cluster grew)
//! moves only a few at a time: its new owner holds none of its pairs until
//! they are rebuilt, so every shard in transit is one shard fewer for every
//! blob, and moving more than f at once would leave blobs AtRisk or
//! unreadable while their data sits, unread, on the old owners.

use std::collections::BTreeSet;

use super::{Assignment, NodeSpec};

/// Shards that may move away from owners still present at once: half of
/// f (at least one), so a rebalance leaves every blob at least half its
/// tolerance and only ever Degraded.
pub fn moves_at_once(f: usize) -> usize {
    (f / 2).max(1)
}

/// The assignment to apply now on the way from `previous` to `target`:
/// shards without a present previous owner take their target at once;
/// of the shards leaving an owner in `holders`, the first `room` (by
/// shard) move and the others stay where they are for a later step.
pub fn pace_moves(
    previous: &Assignment,
    target: &Assignment,
    holders: &[NodeSpec],
    room: usize,
) -> Assignment {
    let leaving = leaving_present_owner(previous, holders);
    let mut left = room;
    target
        .iter()
        .map(|(shard, owner)| match leaving(*shard, owner) {
            Some(before) if left == 0 => (*shard, before.clone()),
            Some(_) => {
                left -= 1;
                (*shard, owner.clone())
            }
            None => (*shard, owner.clone()),
        })
        .collect()
}

/// Shards of `next` whose owner differs from `previous`'s, still present.
pub fn live_moves(previous: &Assignment, next: &Assignment, holders: &[NodeSpec]) -> usize {
    let leaving = leaving_present_owner(previous, holders);
    next.iter()
        .filter(|(shard, owner)| leaving(**shard, owner).is_some())
        .count()
}

/// For a shard and the owner it goes to: its owner in `previous` when that
/// is another node still among `holders`.
fn leaving_present_owner<'a>(
    previous: &'a Assignment,
    holders: &[NodeSpec],
) -> impl Fn(u16, &String) -> Option<&'a String> {
    let present: BTreeSet<String> = holders.iter().map(|n| n.name.clone()).collect();
    move |shard, owner| {
        previous
            .get(&shard)
            .filter(|before| *before != owner && present.contains(before.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::assign;

    fn specs(names: &[&str]) -> Vec<NodeSpec> {
        names
            .iter()
            .map(|n| NodeSpec {
                name: n.to_string(),
                domain: n.to_string(),
            })
            .collect()
    }

    #[test]
    fn the_shards_of_an_evicted_node_move_at_once() {
        let all = specs(&["a", "b", "c"]);
        let before = assign(9, &all, &Assignment::new());
        let stay = specs(&["a", "b"]);
        let target = assign(9, &stay, &before);
        assert_eq!(pace_moves(&before, &target, &stay, 0), target);
    }

    #[test]
    fn a_new_cluster_takes_its_assignment_at_once() {
        let all = specs(&["a", "b", "c"]);
        let target = assign(9, &all, &Assignment::new());
        assert_eq!(pace_moves(&Assignment::new(), &target, &all, 0), target);
    }

    #[test]
    fn shards_leaving_present_owners_move_a_few_at_a_time_until_balanced() {
        // Three nodes hold 12 shards; a fourth arrives (a node back from
        // eviction, or the cluster grown): three shards must move to it.
        let three = specs(&["a", "b", "c"]);
        let four = specs(&["a", "b", "c", "d"]);
        let mut current = assign(12, &three, &Assignment::new());
        let balanced = assign(12, &four, &current);
        let mut steps = 0;
        loop {
            let target = assign(12, &four, &current);
            let next = pace_moves(&current, &target, &four, 1);
            assert!(live_moves(&current, &next, &four) <= 1);
            if next == current {
                break;
            }
            current = next;
            steps += 1;
            assert!(steps <= 12, "a rebalance ends");
        }
        assert_eq!(steps, 3);
        assert_eq!(current, balanced);
        assert_eq!(pace_moves(&current, &current, &four, 0), current);
    }

    #[test]
    fn no_room_keeps_every_present_owner() {
        let three = specs(&["a", "b", "c"]);
        let four = specs(&["a", "b", "c", "d"]);
        let current = assign(12, &three, &Assignment::new());
        let target = assign(12, &four, &current);
        assert_ne!(target, current);
        assert_eq!(pace_moves(&current, &target, &four, 0), current);
    }

    #[test]
    fn half_of_f_moves_at_once_and_never_none() {
        assert_eq!(moves_at_once(0), 1);
        assert_eq!(moves_at_once(2), 1);
        assert_eq!(moves_at_once(33), 16);
    }
}
