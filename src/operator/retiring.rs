//! Lowering `spec.nodes` (pure). Node pods beyond the spec keep running,
//! and keep their shards, until those shards have moved to the other node
//! pods the way a rebalance moves them (a few at a time, each batch once
//! the last is rebuilt and every blob is Healthy: `fleet::pacing`); a node
//! pod beyond the spec is deleted only once it owns no shard and every
//! blob is Healthy again without it. Deleting
//! them at once would take all their shards out of every blob together:
//! more than f when the spec drops by more than f shards' worth of nodes,
//! and every blob unreadable once fewer than n - 2f shards are left.

use super::desired::node_pod_name;

/// Node pods `cluster` runs: the first `spec_nodes`; beyond them every
/// one up to the last that still owns a shard among `owners` (the owners
/// of the shard assignment in force), and, until the fleet has `settled`
/// (every blob Healthy again since their shards moved: rebuilt on the new
/// owners), up to the last that `were_retiring`. Retiring node pods are
/// counted up to the last one, so the running ones are always numbered
/// 0 to the count.
pub fn running_node_count<'a>(
    cluster: &str,
    spec_nodes: usize,
    owners: impl IntoIterator<Item = &'a str>,
    were_retiring: impl IntoIterator<Item = &'a str>,
    settled: bool,
) -> usize {
    let still_running = were_retiring.into_iter().filter(|_| !settled);
    owners
        .into_iter()
        .chain(still_running)
        .filter_map(|owner| node_ordinal(cluster, owner))
        .map(|ordinal| ordinal + 1)
        .fold(spec_nodes, usize::max)
}

/// The node pods beyond `spec_nodes` among the first `running`: those a
/// lowered spec retires.
pub fn retiring_nodes(cluster: &str, spec_nodes: usize, running: usize) -> Vec<String> {
    (spec_nodes..running)
        .map(|ordinal| node_pod_name(cluster, ordinal))
        .collect()
}

/// The number of node pod `pod` of `cluster` (`None` for any other name).
pub fn node_ordinal(cluster: &str, pod: &str) -> Option<usize> {
    let digits = pod.strip_prefix(cluster)?.strip_prefix("-node-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ordinal = digits.parse().ok()?;
    (node_pod_name(cluster, ordinal) == pod).then_some(ordinal)
}

/// Node pods a cluster already has: one past the highest ordinal of
/// `pods` (its node pods, its claims' node pods, the owners of its shards
/// and those retiring, by name), 0 for none (pure).
pub fn established_node_count<'a>(cluster: &str, pods: impl IntoIterator<Item = &'a str>) -> usize {
    pods.into_iter()
        .filter_map(|pod| node_ordinal(cluster, pod))
        .map(|ordinal| ordinal + 1)
        .max()
        .unwrap_or(0)
}

/// The number of the node pod whose claim is `claim` (`None` for any
/// other name).
pub fn claim_ordinal(cluster: &str, claim: &str) -> Option<usize> {
    let digits = claim.strip_prefix(cluster)?.strip_prefix("-data-")?;
    let ordinal = digits.parse().ok()?;
    (super::desired::node_claim_name(cluster, ordinal) == claim).then_some(ordinal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_has_the_node_pods_up_to_the_highest_one_it_knows() {
        assert_eq!(established_node_count("media", []), 0);
        assert_eq!(
            established_node_count("media", ["media-node-0", "media-node-4", "media-node-1"]),
            5
        );
        assert_eq!(
            established_node_count("media", ["other-node-9", "media-node-x", "media-node-01"]),
            0,
            "not its node pods"
        );
        assert_eq!(claim_ordinal("media", "media-data-3"), Some(3));
        assert_eq!(claim_ordinal("media", "media-data-03"), None);
        assert_eq!(claim_ordinal("media", "media-node-3"), None);
    }

    #[test]
    fn the_spec_decides_while_no_node_pod_beyond_it_owns_a_shard() {
        let owners = ["media-node-0", "media-node-2", "media-node-1"];
        assert_eq!(running_node_count("media", 3, owners, [], false), 3);
        assert_eq!(running_node_count("media", 5, owners, [], true), 5);
        assert_eq!(running_node_count("media", 2, [], [], false), 2);
    }

    #[test]
    fn node_pods_beyond_a_lowered_spec_run_up_to_the_last_that_owns_a_shard() {
        let owners = ["media-node-0", "media-node-1", "media-node-4"];
        assert_eq!(running_node_count("media", 2, owners, [], true), 5);
        assert_eq!(
            retiring_nodes("media", 2, 5),
            ["media-node-2", "media-node-3", "media-node-4"]
        );
        assert!(retiring_nodes("media", 5, 5).is_empty());
    }

    #[test]
    fn node_pods_that_gave_their_shards_away_run_until_the_fleet_has_settled() {
        let owners = ["media-node-0", "media-node-1"];
        let were = ["media-node-2", "media-node-3"];
        assert_eq!(running_node_count("media", 2, owners, were, false), 4);
        assert_eq!(running_node_count("media", 2, owners, were, true), 2);
        // Raised again meanwhile: the spec decides.
        assert_eq!(running_node_count("media", 4, owners, were, true), 4);
    }

    #[test]
    fn only_the_clusters_own_node_pod_names_count() {
        assert_eq!(node_ordinal("media", "media-node-12"), Some(12));
        for other in [
            "media-node-",
            "media-node-01",
            "media-node-1a",
            "media-node--1",
            "other-node-9",
            "media-gateway-9",
            "media-extra-node-9",
        ] {
            assert_eq!(node_ordinal("media", other), None, "{other}");
        }
        assert_eq!(
            running_node_count("media", 1, ["media-extra-node-9"], ["other-node-9"], false),
            1
        );
    }
}
