//! The shards each node's claim holds, written on the claim (pure): claims
//! outlive their StorageCluster (`storage.whenDeleted: Retain`), and a
//! cluster created again under the same name starts from the assignment
//! its claims remember instead of a fresh one, under which most nodes
//! would own shards whose slivers another volume holds.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;

use super::desired::{node_claim_name, node_pod_name};
use crate::fleet::Assignment;

/// The annotation on a node's claim naming the shards its node owns
/// (comma-separated, possibly empty).
pub const SHARDS_ANNOTATION: &str = "redstuff.dev/shards";

/// The annotation value for `shards`.
pub fn annotation(shards: impl IntoIterator<Item = u16>) -> String {
    shards
        .into_iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The assignment the claims of cluster `cluster` (of `shards` shards)
/// remember: every shard named once, each by the claim of one node. None
/// when no claim remembers any, or what they say does not fit `shards`
/// (a claim naming a shard twice, or one the cluster does not have).
pub fn remembered_assignment(
    cluster: &str,
    shards: u16,
    claims: &[&PersistentVolumeClaim],
) -> Option<Assignment> {
    let by_name: BTreeMap<String, &PersistentVolumeClaim> =
        claims.iter().map(|c| (c.name_any(), *c)).collect();
    let mut assignment = Assignment::new();
    for index in 0..usize::from(shards) {
        let Some(claim) = by_name.get(&node_claim_name(cluster, index)) else {
            continue;
        };
        let Some(text) = claim.annotations().get(SHARDS_ANNOTATION) else {
            continue;
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let shard: u16 = part.parse().ok()?;
            if shard >= shards {
                return None;
            }
            if assignment
                .insert(shard, node_pod_name(cluster, index))
                .is_some()
            {
                return None;
            }
        }
    }
    (!assignment.is_empty()).then_some(assignment)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(name: &str, shards: Option<&str>) -> PersistentVolumeClaim {
        let mut claim = PersistentVolumeClaim::default();
        claim.metadata.name = Some(name.into());
        if let Some(shards) = shards {
            claim.metadata.annotations =
                Some(BTreeMap::from([(SHARDS_ANNOTATION.into(), shards.into())]));
        }
        claim
    }

    #[test]
    fn the_claims_remember_which_node_owned_which_shard() {
        let claims = [
            claim("media-data-0", Some("1,3")),
            claim("media-data-1", Some("0")),
            claim("media-data-2", Some("")),
            claim("media-data-3", Some("2")),
        ];
        let claims: Vec<&PersistentVolumeClaim> = claims.iter().collect();
        let remembered = remembered_assignment("media", 4, &claims).unwrap();
        assert_eq!(remembered[&0], "media-node-1");
        assert_eq!(remembered[&1], "media-node-0");
        assert_eq!(remembered[&3], "media-node-0");
        assert_eq!(remembered[&2], "media-node-3");
        assert_eq!(annotation([1, 3]), "1,3");
    }

    #[test]
    fn claims_that_remember_nothing_that_fits_are_ignored() {
        let none = [claim("media-data-0", None)];
        assert_eq!(remembered_assignment("media", 4, &[&none[0]]), None);
        let beyond = [claim("media-data-0", Some("7"))];
        assert_eq!(remembered_assignment("media", 4, &[&beyond[0]]), None);
        let twice = [
            claim("media-data-0", Some("1")),
            claim("media-data-1", Some("1")),
        ];
        assert_eq!(
            remembered_assignment("media", 4, &[&twice[0], &twice[1]]),
            None
        );
        let garbled = [claim("media-data-0", Some("one"))];
        assert_eq!(remembered_assignment("media", 4, &[&garbled[0]]), None);
        let other_cluster = [claim("other-data-0", Some("1"))];
        assert_eq!(
            remembered_assignment("media", 4, &[&other_cluster[0]]),
            None
        );
    }
}
