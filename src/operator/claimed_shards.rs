//! The shards each node's claim holds, written on the claim (pure): claims
//! outlive their StorageCluster (`storage.whenDeleted: Retain`), and a
//! cluster created again under the same name starts from the assignment
//! its claims remember instead of a fresh one, under which most nodes
//! would own shards whose slivers another volume holds.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;

use super::desired::node_pod_name;
use crate::fleet::Assignment;

/// The annotation on a node's claim naming the shards its node owns
/// (comma-separated, possibly empty).
pub const SHARDS_ANNOTATION: &str = "redstuff.dev/shards";

/// The annotation on a node's claim giving the shard count of the cluster
/// that wrote it: its blobs are encoded for that many shards.
pub const CLUSTER_SHARDS_ANNOTATION: &str = "redstuff.dev/cluster-shards";

/// The annotation value for `shards`.
pub fn annotation(shards: impl IntoIterator<Item = u16>) -> String {
    shards
        .into_iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Why the claims a cluster finds cannot be taken up: their data was
/// written by a cluster of another shard count (its blobs would be
/// unreadable), or what they remember is garbled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForeignClaims {
    /// The claims hold the blobs of a cluster of another shard count.
    #[error(
        "claim {claim} holds the data of an earlier StorageCluster {cluster} of {earlier} shards \
         (claims outlive their cluster: storage.whenDeleted is Retain); this one has {shards}, \
         and the blobs there would be unreadable: create it with shards: {earlier} to take \
         them up, or delete the claims (kubectl delete pvc -l app.kubernetes.io/name=redstuff,app.kubernetes.io/instance={cluster}) \
         to start empty"
    )]
    ShardCount {
        /// The claim that says so.
        claim: String,
        /// The cluster's name.
        cluster: String,
        /// The shard count the claims were written for.
        earlier: u16,
        /// The shard count of the cluster now.
        shards: u16,
    },
    /// A claim remembers a shard this cluster does not have (a claim
    /// written before [`CLUSTER_SHARDS_ANNOTATION`], by a larger cluster).
    #[error(
        "claim {claim} remembers shard {shard} (annotation {SHARDS_ANNOTATION}) and this \
         StorageCluster {cluster} has {shards} shards: it holds the data of an earlier cluster \
         of more shards, and the blobs there would be unreadable: create it with the shard \
         count it had to take them up, or delete the claims (kubectl delete pvc -l \
         app.kubernetes.io/name=redstuff,app.kubernetes.io/instance={cluster}) to start empty"
    )]
    ShardBeyond {
        /// The claim.
        claim: String,
        /// The cluster's name.
        cluster: String,
        /// The shard it remembers.
        shard: u16,
        /// The shard count of the cluster now.
        shards: u16,
    },
    /// A claim remembers shards in a way no cluster wrote.
    #[error(
        "claim {claim} remembers shards {text:?} (annotation {SHARDS_ANNOTATION}), which no \
         cluster wrote{why}: correct or remove the annotation, or delete the claim to start \
         that node empty"
    )]
    Garbled {
        /// The claim.
        claim: String,
        /// Its annotation.
        text: String,
        /// What is wrong with it.
        why: String,
    },
}

/// The node index of a claim of `cluster` by its name (`<cluster>-data-<i>`).
fn claim_index(cluster: &str, claim: &str) -> Option<usize> {
    claim
        .strip_prefix(cluster)?
        .strip_prefix("-data-")?
        .parse()
        .ok()
}

/// The assignment the claims of cluster `cluster` (of `shards` shards)
/// remember: every shard named once, each by the claim of one node (pure).
/// `Ok(None)` when no claim remembers any; refused when they were written
/// for another shard count (said by [`CLUSTER_SHARDS_ANNOTATION`], or on
/// claims older than it by a shard beyond `shards`) or are garbled.
pub fn remembered_assignment(
    cluster: &str,
    shards: u16,
    claims: &[&PersistentVolumeClaim],
) -> Result<Option<Assignment>, ForeignClaims> {
    let mut ours: Vec<(usize, &PersistentVolumeClaim)> = claims
        .iter()
        .filter_map(|c| Some((claim_index(cluster, &c.name_any())?, *c)))
        .collect();
    ours.sort_by_key(|(index, _)| *index);
    let shard_count = |claim: &str, earlier: u16| ForeignClaims::ShardCount {
        claim: claim.to_string(),
        cluster: cluster.to_string(),
        earlier,
        shards,
    };
    let mut assignment = Assignment::new();
    for (index, claim) in ours {
        let name = claim.name_any();
        if let Some(text) = claim.annotations().get(CLUSTER_SHARDS_ANNOTATION) {
            let garbled = || ForeignClaims::Garbled {
                claim: name.clone(),
                text: text.clone(),
                why: format!(" (annotation {CLUSTER_SHARDS_ANNOTATION} is not a number)"),
            };
            let earlier: u16 = text.trim().parse().map_err(|_| garbled())?;
            if earlier != shards {
                return Err(shard_count(&name, earlier));
            }
        }
        let Some(text) = claim.annotations().get(SHARDS_ANNOTATION) else {
            continue;
        };
        let garbled = |why: &str| ForeignClaims::Garbled {
            claim: name.clone(),
            text: text.clone(),
            why: why.to_string(),
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let shard: u16 = part.parse().map_err(|_| garbled(" (not a number)"))?;
            if shard >= shards {
                return Err(ForeignClaims::ShardBeyond {
                    claim: name.clone(),
                    cluster: cluster.to_string(),
                    shard,
                    shards,
                });
            }
            if assignment
                .insert(shard, node_pod_name(cluster, index))
                .is_some()
            {
                return Err(garbled(" (a shard another claim also names)"));
            }
        }
    }
    Ok((!assignment.is_empty()).then_some(assignment))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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

    fn counted(name: &str, shards: &str, count: &str) -> PersistentVolumeClaim {
        let mut claim = claim(name, Some(shards));
        claim
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(CLUSTER_SHARDS_ANNOTATION.into(), count.into());
        claim
    }

    fn remembered(
        shards: u16,
        claims: &[PersistentVolumeClaim],
    ) -> Result<Option<Assignment>, ForeignClaims> {
        let claims: Vec<&PersistentVolumeClaim> = claims.iter().collect();
        remembered_assignment("media", shards, &claims)
    }

    #[test]
    fn the_claims_remember_which_node_owned_which_shard() {
        let claims = [
            counted("media-data-0", "1,3", "4"),
            claim("media-data-1", Some("0")),
            counted("media-data-2", "", "4"),
            claim("media-data-3", Some("2")),
        ];
        let remembered = remembered(4, &claims).unwrap().unwrap();
        assert_eq!(remembered[&0], "media-node-1");
        assert_eq!(remembered[&1], "media-node-0");
        assert_eq!(remembered[&3], "media-node-0");
        assert_eq!(remembered[&2], "media-node-3");
        assert_eq!(annotation([1, 3]), "1,3");
    }

    #[test]
    fn claims_that_remember_nothing_are_no_assignment() {
        assert_eq!(remembered(4, &[claim("media-data-0", None)]), Ok(None));
        assert_eq!(remembered(4, &[]), Ok(None));
        assert_eq!(
            remembered(4, &[claim("other-data-0", Some("1"))]),
            Ok(None),
            "another cluster's claim is not looked at"
        );
        assert_eq!(
            remembered(4, &[claim("media-s3-index", Some("1"))]),
            Ok(None),
            "nor a claim that is no node's"
        );
    }

    #[test]
    fn claims_written_for_another_shard_count_are_refused_naming_both_counts() {
        let fewer = [counted("media-data-0", "0", "4")];
        let refused = remembered(7, &fewer).unwrap_err();
        assert!(
            matches!(
                refused,
                ForeignClaims::ShardCount {
                    earlier: 4,
                    shards: 7,
                    ..
                }
            ),
            "{refused:?}"
        );
        let message = refused.to_string();
        for part in [
            "media-data-0",
            "4 shards",
            "has 7",
            "shards: 4",
            "kubectl delete pvc",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        // Beyond a node the spec keeps: still the cluster's claim.
        let more = [counted("media-data-9", "9", "10")];
        assert!(matches!(
            remembered(7, &more),
            Err(ForeignClaims::ShardCount { earlier: 10, .. })
        ));
        // Older claims, without the count: a shard beyond the cluster's.
        let beyond = [claim("media-data-0", Some("7"))];
        let refused = remembered(4, &beyond).unwrap_err();
        assert!(
            matches!(
                refused,
                ForeignClaims::ShardBeyond {
                    shard: 7,
                    shards: 4,
                    ..
                }
            ),
            "{refused:?}"
        );
    }

    #[test]
    fn garbled_memories_are_refused_not_guessed_at() {
        let twice = [
            claim("media-data-0", Some("1")),
            claim("media-data-1", Some("1")),
        ];
        assert!(matches!(
            remembered(4, &twice),
            Err(ForeignClaims::Garbled { .. })
        ));
        let word = [claim("media-data-0", Some("one"))];
        assert!(matches!(
            remembered(4, &word),
            Err(ForeignClaims::Garbled { .. })
        ));
        let count = [counted("media-data-0", "1", "four")];
        assert!(matches!(
            remembered(4, &count),
            Err(ForeignClaims::Garbled { .. })
        ));
    }
}
