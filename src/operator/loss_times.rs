//! When each lost node pod was lost, for `redstuff_repair_start_delay_seconds`
//! (pure): the time from a loss to the first repair it caused.

use std::collections::HashMap;

use k8s_openapi::jiff::Timestamp;

use crate::fleet::Assignment;

/// Carries the loss time of a node whose shards moved away (evicted past
/// the grace period) to each shard's new owner: the first repair the loss
/// causes is the rebuild there, and the node itself, owning nothing,
/// counts as whole once back, so its own time would be forgotten unmeasured.
pub fn carry_to_new_owners(
    lost_at: &mut HashMap<String, Timestamp>,
    previous: &Assignment,
    assignment: &Assignment,
) {
    for (shard, owner) in previous {
        let Some(since) = lost_at.get(owner).copied() else {
            continue;
        };
        if let Some(new_owner) = assignment.get(shard).filter(|new| *new != owner) {
            lost_at.entry(new_owner.clone()).or_insert(since);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(owners: &[(u16, &str)]) -> Assignment {
        owners.iter().map(|(s, n)| (*s, n.to_string())).collect()
    }

    #[test]
    fn the_new_owners_of_a_lost_nodes_shards_count_from_its_loss() {
        let lost: Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        let mut lost_at = HashMap::from([("n2".to_string(), lost)]);
        let previous = assignment(&[(0, "n0"), (1, "n1"), (2, "n2"), (3, "n2")]);
        let moved = assignment(&[(0, "n0"), (1, "n1"), (2, "n0"), (3, "n1")]);
        carry_to_new_owners(&mut lost_at, &previous, &moved);
        assert_eq!(lost_at.get("n0"), Some(&lost));
        assert_eq!(lost_at.get("n1"), Some(&lost));
        assert_eq!(lost_at.get("n2"), Some(&lost));
    }

    #[test]
    fn shards_staying_or_moving_between_nodes_never_lost_carry_nothing() {
        let lost: Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        let earlier: Timestamp = "2026-12-07T09:00:00Z".parse().unwrap();
        let mut lost_at = HashMap::from([("n2".to_string(), lost), ("n1".to_string(), earlier)]);
        let previous = assignment(&[(0, "n0"), (1, "n1"), (2, "n2")]);
        // n2 keeps its shard; n0's moves to n3 (a rebalance).
        let next = assignment(&[(0, "n3"), (1, "n1"), (2, "n2")]);
        carry_to_new_owners(&mut lost_at, &previous, &next);
        assert_eq!(lost_at.len(), 2);
        // A node already counting keeps its own, earlier time.
        let moved = assignment(&[(0, "n0"), (1, "n1"), (2, "n1")]);
        carry_to_new_owners(&mut lost_at, &previous, &moved);
        assert_eq!(lost_at.get("n1"), Some(&earlier));
    }
}
