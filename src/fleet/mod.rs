//! Control decisions of the fleet, Kubernetes-agnostic and pure: shard
//! placement, blob health and repair planning are functions of observed
//! state, tested as tables. The local loop (`dev`) and the operator are
//! thin shells that observe, call these, and act.

mod map;
mod pacing;
mod shard_set;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::codec::EncodingConfig;
pub use map::{FleetMap, MapFile, MapNode};
pub use pacing::{live_moves, moves_at_once, pace_moves};
pub use shard_set::ShardSet;

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Unique name.
    pub name: String,
    /// Failure domain (zone or host); nodes sharing it fail together.
    pub domain: String,
}

/// Shard -> owning node name.
pub type Assignment = BTreeMap<u16, String>;

/// Assigns `shards` shards to `nodes`: every node gets `shards / nodes` or
/// one more; the extra shards go round-robin over failure domains so no
/// domain holds more than it must; a shard stays with its previous owner
/// whenever that owner still exists and has room, so a small change moves
/// few shards. Deterministic for the same input.
pub fn assign(shards: u16, nodes: &[NodeSpec], previous: &Assignment) -> Assignment {
    if nodes.is_empty() {
        return Assignment::new();
    }
    let count = nodes.len();
    let base = usize::from(shards) / count;
    let extra = usize::from(shards) % count;

    // Nodes ordered for the extra shards: each goes to the domain holding
    // the fewest shards so far (its nodes' base shards and the extras it
    // got), so a large domain, which holds the most already, gets its
    // extras last; previous holdings decide among a domain's nodes.
    let held = |name: &str| previous.values().filter(|n| n.as_str() == name).count();
    let mut by_domain: BTreeMap<&str, Vec<&NodeSpec>> = BTreeMap::new();
    for node in nodes {
        by_domain
            .entry(node.domain.as_str())
            .or_default()
            .push(node);
    }
    let mut domains: Vec<Vec<&NodeSpec>> = by_domain.into_values().collect();
    for members in &mut domains {
        members.sort_by(|a, b| held(&b.name).cmp(&held(&a.name)).then(a.name.cmp(&b.name)));
    }
    let round_robin = fewest_shards_first(&domains, base);
    // Nodes that already hold an extra shard keep it, whatever their domain
    // became (a pod rescheduled or not scheduled yet): no shard moves
    // while its owner stays.
    let mut round_robin = round_robin;
    round_robin.sort_by_key(|node| held(&node.name) <= base);
    let mut room: BTreeMap<&str, usize> = round_robin
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), base + usize::from(i < extra)))
        .collect();

    let mut assignment = Assignment::new();
    for shard in 0..shards {
        if let Some(owner) = previous.get(&shard) {
            if let Some(left) = room.get_mut(owner.as_str()).filter(|left| **left > 0) {
                *left -= 1;
                assignment.insert(shard, owner.clone());
            }
        }
    }
    for shard in 0..shards {
        if assignment.contains_key(&shard) {
            continue;
        }
        let name = room
            .iter()
            .filter(|(_, left)| **left > 0)
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(name, _)| *name)
            .expect("room for every shard");
        *room.get_mut(name).expect("present") -= 1;
        assignment.insert(shard, name.to_string());
    }
    assignment
}

/// Every node of `domains` (each a domain's nodes in the order they take
/// extra shards), ordered so that each next one is in the domain holding
/// the fewest shards when each node holds `base` and each node before it
/// one more; ties go to the domain listed first.
fn fewest_shards_first<'a>(domains: &[Vec<&'a NodeSpec>], base: usize) -> Vec<&'a NodeSpec> {
    let mut held: Vec<usize> = domains.iter().map(|members| members.len() * base).collect();
    let mut taken = vec![0usize; domains.len()];
    let mut order = Vec::with_capacity(domains.iter().map(Vec::len).sum());
    while let Some(domain) = (0..domains.len())
        .filter(|d| taken[*d] < domains[*d].len())
        .min_by_key(|d| (held[*d], *d))
    {
        order.push(domains[domain][taken[domain]]);
        taken[domain] += 1;
        held[domain] += 1;
    }
    order
}

/// The shards `assignment` gives `node`, in order.
pub fn shards_of(assignment: &Assignment, node: &str) -> BTreeSet<u16> {
    assignment
        .iter()
        .filter(|(_, owner)| owner.as_str() == node)
        .map(|(shard, _)| *shard)
        .collect()
}

/// How many whole failure domains can be lost without losing any shard
/// beyond the f the code tolerates: the largest k such that the k domains
/// holding the most shards hold at most f shards together.
pub fn tolerated_domain_losses(assignment: &Assignment, nodes: &[NodeSpec], f: usize) -> usize {
    let domain_of: BTreeMap<&str, &str> = nodes
        .iter()
        .map(|n| (n.name.as_str(), n.domain.as_str()))
        .collect();
    let mut per_domain: BTreeMap<&str, usize> = BTreeMap::new();
    for owner in assignment.values() {
        let domain = domain_of
            .get(owner.as_str())
            .copied()
            .unwrap_or(owner.as_str());
        *per_domain.entry(domain).or_default() += 1;
    }
    let mut counts: Vec<usize> = per_domain.into_values().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let mut total = 0;
    counts
        .iter()
        .take_while(|c| {
            total += **c;
            total <= f
        })
        .count()
}

/// The health of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Health {
    /// More than f shards are missing but at least p remain: readable, and
    /// repairable, but one more loss pattern away from Lost.
    AtRisk,
    /// Some shards miss their pairs, at most f: fully within tolerance.
    Degraded,
    /// Every shard holds a valid pair of every segment.
    Healthy,
    /// Fewer than p shards hold pairs, counting those of nodes that did
    /// not answer: the blob cannot be read or rebuilt.
    Lost,
}

impl Health {
    /// All values, for metrics.
    pub const ALL: [Health; 4] = [
        Health::Healthy,
        Health::Degraded,
        Health::AtRisk,
        Health::Lost,
    ];

    /// The name shown to users and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Health::Healthy => "Healthy",
            Health::Degraded => "Degraded",
            Health::AtRisk => "AtRisk",
            Health::Lost => "Lost",
        }
    }
}

/// Health from the number of shards holding complete pairs.
pub fn health(config: &EncodingConfig, complete_shards: usize) -> Health {
    if complete_shards >= config.n() {
        Health::Healthy
    } else if complete_shards >= config.q() {
        Health::Degraded
    } else if complete_shards >= config.p() {
        Health::AtRisk
    } else {
        Health::Lost
    }
}

/// Health as a reading sees it, `unanswered` shards belonging to nodes
/// that did not answer it (down, not ready, silent): too few pairs seen is
/// Lost only when those shards could not make the blob readable either;
/// until then it is AtRisk (out of reach, perhaps not gone).
pub fn health_in_reach(
    config: &EncodingConfig,
    complete_shards: usize,
    unanswered: usize,
) -> Health {
    match health(config, complete_shards) {
        Health::Lost if complete_shards + unanswered >= config.p() => Health::AtRisk,
        health => health,
    }
}

/// What the fleet holds of one blob (borrowed from the view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobObservation<'a> {
    /// The blob id.
    pub id: &'a str,
    /// Shards holding its pair in every segment.
    pub complete_shards: &'a ShardSet,
}

/// One repair to start: `node` rebuilds `shards` of `blob`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairTask {
    /// The blob id.
    pub blob: String,
    /// The node that owns the shards and rebuilds them.
    pub node: String,
    /// Its shards that miss pairs.
    pub shards: Vec<u16>,
    /// The blob's health now.
    pub health: Health,
}

/// Which repairs to start now: for every blob that is neither Healthy nor
/// Lost, each ready owner of missing shards rebuilds them. Most at risk
/// first (fewest complete shards), then by blob id; at most `limit` tasks.
pub fn plan_repairs(
    config: &EncodingConfig,
    blobs: &[BlobObservation],
    assignment: &Assignment,
    ready: &BTreeSet<String>,
    limit: usize,
) -> Vec<RepairTask> {
    let needs_repair = |blob: &&BlobObservation| {
        !matches!(
            health(config, blob.complete_shards.len()),
            Health::Healthy | Health::Lost
        )
    };
    let mut ordered: Vec<&BlobObservation> = blobs.iter().filter(needs_repair).collect();
    ordered.sort_by(|a, b| {
        a.complete_shards
            .len()
            .cmp(&b.complete_shards.len())
            .then(a.id.cmp(b.id))
    });
    let mut tasks = Vec::new();
    for blob in ordered {
        let state = health(config, blob.complete_shards.len());
        let mut by_node: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
        for shard in 0..config.n() as u16 {
            if blob.complete_shards.contains(&shard) {
                continue;
            }
            if let Some(owner) = assignment.get(&shard).filter(|o| ready.contains(*o)) {
                by_node.entry(owner).or_default().push(shard);
            }
        }
        for (node, shards) in by_node {
            if tasks.len() == limit {
                return tasks;
            }
            tasks.push(RepairTask {
                blob: blob.id.to_string(),
                node: node.to_string(),
                shards,
                health: state,
            });
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(specs: &[(&str, &str)]) -> Vec<NodeSpec> {
        specs
            .iter()
            .map(|(name, domain)| NodeSpec {
                name: name.to_string(),
                domain: domain.to_string(),
            })
            .collect()
    }

    fn counts(a: &Assignment) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for owner in a.values() {
            *c.entry(owner.clone()).or_default() += 1;
        }
        c
    }

    #[test]
    fn shards_are_balanced_over_nodes() {
        for (shards, node_count) in [
            (7u16, 7usize),
            (7, 3),
            (10, 4),
            (100, 7),
            (4, 4),
            (1000, 33),
        ] {
            let specs: Vec<NodeSpec> = (0..node_count)
                .map(|i| NodeSpec {
                    name: format!("n{i:02}"),
                    domain: format!("n{i:02}"),
                })
                .collect();
            let a = assign(shards, &specs, &Assignment::new());
            assert_eq!(a.len(), shards as usize);
            let c = counts(&a);
            let (min, max) = (c.values().min().unwrap(), c.values().max().unwrap());
            assert!(max - min <= 1, "{shards} over {node_count}: {c:?}");
        }
    }

    #[test]
    fn extra_shards_spread_over_zones() {
        // 10 shards, 6 nodes in 3 zones: 4 nodes get 2 shards, 2 get 1. The
        // 2-shard nodes must not pile into one zone: each zone holds 3 or 4.
        let specs = nodes(&[
            ("a1", "a"),
            ("a2", "a"),
            ("b1", "b"),
            ("b2", "b"),
            ("c1", "c"),
            ("c2", "c"),
        ]);
        let a = assign(10, &specs, &Assignment::new());
        let mut per_zone: BTreeMap<char, usize> = BTreeMap::new();
        for owner in a.values() {
            *per_zone.entry(owner.chars().next().unwrap()).or_default() += 1;
        }
        assert!(
            per_zone.values().all(|c| (3..=4).contains(c)),
            "{per_zone:?}"
        );
        // f = 3: losing any one zone (at most 4 shards) is too much, so 0...
        assert_eq!(tolerated_domain_losses(&a, &specs, 3), 0);
        // ...but with f = 4 one zone may go.
        assert_eq!(tolerated_domain_losses(&a, &specs, 4), 1);
    }

    #[test]
    fn extra_shards_go_to_the_domains_holding_fewest_so_a_large_domain_is_not_loaded_most() {
        // n = 7 (f = 2) on 5 nodes in 4 zones, zone a with two of them:
        // zone a holds 2 before any extra, so the 2 extras go to b and c
        // and losing any one zone loses at most 2 shards.
        let specs = nodes(&[
            ("n0", "a"),
            ("n1", "a"),
            ("n2", "b"),
            ("n3", "c"),
            ("n4", "d"),
        ]);
        let a = assign(7, &specs, &Assignment::new());
        assert_eq!(tolerated_domain_losses(&a, &specs, 2), 1, "{a:?}");
        // Whatever the layout, a domain that got an extra holds at most
        // one more than a domain with a node still without one: no extra
        // could go elsewhere and lower the most a domain holds.
        let layouts: [&[usize]; 6] = [
            &[2, 1, 1, 1],
            &[3, 1],
            &[4, 2, 1],
            &[1, 1, 5],
            &[3, 3, 2],
            &[6],
        ];
        for sizes in layouts {
            let specs: Vec<NodeSpec> = sizes
                .iter()
                .enumerate()
                .flat_map(|(d, size)| {
                    (0..*size).map(move |i| NodeSpec {
                        name: format!("z{d}-n{i}"),
                        domain: format!("z{d}"),
                    })
                })
                .collect();
            for shards in specs.len() as u16..=4 * specs.len() as u16 {
                let a = assign(shards, &specs, &Assignment::new());
                let base = usize::from(shards) / specs.len();
                let c = counts(&a);
                let per_domain = |d: usize| -> (usize, bool, bool) {
                    let of: Vec<usize> = (0..sizes[d])
                        .map(|i| c.get(&format!("z{d}-n{i}")).copied().unwrap_or(0))
                        .collect();
                    (
                        of.iter().sum(),
                        of.iter().any(|n| *n > base),
                        of.contains(&base),
                    )
                };
                for with_extra in 0..sizes.len() {
                    for without in 0..sizes.len() {
                        let (high, has_extra, _) = per_domain(with_extra);
                        let (low, _, has_room) = per_domain(without);
                        assert!(
                            !(has_extra && has_room) || high <= low + 1,
                            "{shards} shards over {sizes:?}: {c:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_small_change_moves_few_shards() {
        let specs: Vec<NodeSpec> = (0..7)
            .map(|i| NodeSpec {
                name: format!("n{i}"),
                domain: format!("n{i}"),
            })
            .collect();
        let before = assign(70, &specs, &Assignment::new());
        // One node leaves: only its 10 shards move.
        let fewer: Vec<NodeSpec> = specs.iter().filter(|n| n.name != "n3").cloned().collect();
        let after = assign(70, &fewer, &before);
        let moved = before.iter().filter(|(s, o)| after[*s] != **o).count();
        assert_eq!(moved, 10);
        assert!(!after.values().any(|o| o == "n3"));
        // Same input, same answer; and a rerun with the result changes nothing.
        assert_eq!(assign(70, &fewer, &before), after);
        assert_eq!(assign(70, &fewer, &after), after);
    }

    #[test]
    fn no_shard_moves_when_only_the_domains_change() {
        // 7 shards on 3 nodes: one node holds 3. Its pod is rescheduled (or
        // not scheduled yet) and its domain changes: it keeps its 3.
        let before_specs = nodes(&[("n0", "zone-b"), ("n1", "zone-c"), ("n2", "zone-d")]);
        let before = assign(7, &before_specs, &Assignment::new());
        for domains in [["zone-b", "zone-c", "a"], ["a", "a", "a"], ["z", "y", "x"]] {
            let specs = nodes(&[("n0", domains[0]), ("n1", domains[1]), ("n2", domains[2])]);
            assert_eq!(assign(7, &specs, &before), before, "{domains:?}");
        }
    }

    #[test]
    fn domain_losses_count_whole_domains_up_to_f() {
        let specs = nodes(&[
            ("a", "z1"),
            ("b", "z2"),
            ("c", "z3"),
            ("d", "z4"),
            ("e", "z5"),
            ("f", "z6"),
            ("g", "z7"),
        ]);
        let a = assign(7, &specs, &Assignment::new());
        assert_eq!(tolerated_domain_losses(&a, &specs, 2), 2);
        let one_zone = nodes(&[("a", "z"), ("b", "z"), ("c", "z"), ("d", "z")]);
        let a = assign(4, &one_zone, &Assignment::new());
        assert_eq!(tolerated_domain_losses(&a, &one_zone, 1), 0);
    }

    #[test]
    fn health_follows_the_thresholds() {
        let c = EncodingConfig::new(7).unwrap(); // f 2, p 3, q 5
        let table = [
            (7, Health::Healthy),
            (6, Health::Degraded),
            (5, Health::Degraded),
            (4, Health::AtRisk),
            (3, Health::AtRisk),
            (2, Health::Lost),
            (0, Health::Lost),
        ];
        for (complete, expected) in table {
            assert_eq!(health(&c, complete), expected, "{complete} complete shards");
        }
    }

    #[test]
    fn a_blob_is_lost_only_when_the_shards_out_of_reach_could_not_make_it_readable_either() {
        let c = EncodingConfig::new(7).unwrap(); // f 2, p 3, q 5
        let table = [
            // (complete, unanswered, health)
            (2, 0, Health::Lost),
            (2, 1, Health::AtRisk),
            (0, 3, Health::AtRisk),
            (0, 2, Health::Lost),
            (4, 3, Health::AtRisk),
            (7, 0, Health::Healthy),
        ];
        for (complete, unanswered, expected) in table {
            assert_eq!(
                health_in_reach(&c, complete, unanswered),
                expected,
                "{complete} complete, {unanswered} out of reach"
            );
        }
    }

    #[test]
    fn repairs_go_to_ready_owners_most_at_risk_first_within_the_limit() {
        let c = EncodingConfig::new(7).unwrap();
        let assignment: Assignment = (0..7).map(|s| (s, format!("n{}", s % 4))).collect();
        let ready: BTreeSet<String> = ["n0", "n1", "n3"].iter().map(|s| s.to_string()).collect();
        let held: Vec<(&str, ShardSet)> = [
            ("healthy", &[0, 1, 2, 3, 4, 5, 6][..]),
            ("degraded", &[0, 1, 2, 3, 4, 5]),
            ("at-risk", &[2, 3, 4, 5]),
            ("lost", &[1, 2]),
        ]
        .into_iter()
        .map(|(id, complete)| (id, complete.iter().copied().collect()))
        .collect();
        let blobs: Vec<BlobObservation> = held
            .iter()
            .map(|(id, complete_shards)| BlobObservation {
                id,
                complete_shards,
            })
            .collect();
        let plan = plan_repairs(&c, &blobs, &assignment, &ready, 10);
        let summary: Vec<(&str, &str, Vec<u16>, Health)> = plan
            .iter()
            .map(|t| (t.blob.as_str(), t.node.as_str(), t.shards.clone(), t.health))
            .collect();
        // n2 (shards 2 and 6) is not ready: its shards wait, so the
        // degraded blob (missing only shard 6) gets no task yet.
        assert_eq!(
            summary,
            vec![
                ("at-risk", "n0", vec![0], Health::AtRisk),
                ("at-risk", "n1", vec![1], Health::AtRisk),
            ]
        );
        assert_eq!(plan_repairs(&c, &blobs, &assignment, &ready, 1).len(), 1);
    }
}
