//! Rolling node pods onto a changed spec (image, resources, placement),
//! one at a time. A pod's spec cannot be changed in place (and a changed
//! image applied to every pod at once would restart them all together),
//! so each node pod carries the hash of the spec it was created from; a
//! pod whose hash differs is outdated, and outdated pods are deleted one by
//! one, each only while every other node pod is available. The pod is then
//! created again from the new spec on the same claim: no data moves.
//!
//! Gateways follow nodes: while any node pod is outdated, the gateway
//! keeps the image it runs, so a gateway never speaks a newer node API
//! than the nodes it writes to.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodSpec};

/// Annotation of a node pod: the hash of the spec it was created from.
pub const SPEC_HASH_ANNOTATION: &str = "redstuff.dev/spec-hash";

/// The hash of a node pod's spec (16 hex digits of BLAKE3 over its JSON).
pub fn spec_hash(spec: &PodSpec) -> String {
    let json = serde_json::to_vec(spec).expect("a PodSpec serializes");
    blake3::hash(&json).to_hex()[..16].to_string()
}

/// The spec hash a node pod carries (None: it predates the annotation).
pub fn recorded_spec_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(SPEC_HASH_ANNOTATION)
        .map(String::as_str)
}

/// One node pod, as the rollout sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutNode {
    /// Pod name.
    pub name: String,
    /// The pod exists and was created from another spec.
    pub outdated: bool,
    /// Ready and serving.
    pub available: bool,
}

/// What else must be quiet before a node pod is taken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FleetCalm {
    /// This operator process has looked at the fleet's blobs: before its
    /// first look (a new leader, an operator upgrade) it knows of no
    /// repair and no blob at risk, which is not the same as none.
    pub seen: bool,
    /// Repairs in flight (they read from every peer).
    pub repairs_in_flight: usize,
    /// Blobs Degraded or AtRisk at the last look: taking another pod down
    /// could make an AtRisk blob unreadable. Lost blobs do not hold the
    /// rollout up (no pod coming back changes them).
    pub blobs_to_repair: usize,
    /// Shards are moving between nodes: this reconcile gives some another
    /// owner, or the nodes do not yet own what the assignment gives them.
    /// A moving shard counts as missing until its new owner rebuilt it,
    /// so a pod taken down meanwhile adds its shards to those.
    pub shards_moving: bool,
    /// Node pods keep their data on claims: replacing one that is down
    /// loses nothing (on emptyDir its data goes with the pod).
    pub data_on_claims: bool,
}

/// The outdated node pod to replace now, if any: only while every other
/// node pod is available, no repair is in flight, no shard is moving and
/// every readable blob is Healthy, so at most one pod is down at a time
/// (as the PodDisruptionBudget allows) and only from a whole fleet. An
/// outdated pod that is itself unavailable goes first, while repairs run
/// and blobs wait for them too when its data is on a claim: replacing it
/// takes nothing away (its shards count as missing already), and its new
/// spec may be what it needs to run (a rollback from a bad image).
pub fn next_replacement(nodes: &[RolloutNode], calm: FleetCalm) -> Option<&str> {
    if !calm.seen {
        return None;
    }
    let others_available =
        |me: &RolloutNode| nodes.iter().all(|n| n.name == me.name || n.available);
    let down = nodes
        .iter()
        .find(|n| n.outdated && !n.available && others_available(n));
    if let Some(down) = down.filter(|_| calm.data_on_claims) {
        return Some(down.name.as_str());
    }
    if calm.repairs_in_flight > 0 || calm.blobs_to_repair > 0 || calm.shards_moving {
        return None;
    }
    down.or_else(|| nodes.iter().find(|n| n.outdated && others_available(n)))
        .map(|n| n.name.as_str())
}

/// What the rollout waits for, for people, when outdated pods remain but
/// none may go now.
pub fn waiting_for(nodes: &[RolloutNode], calm: FleetCalm) -> Option<String> {
    if !nodes.iter().any(|n| n.outdated) || next_replacement(nodes, calm).is_some() {
        return None;
    }
    Some(if !calm.seen {
        "the operator's first look at the fleet's blobs".to_string()
    } else if calm.repairs_in_flight > 0 {
        format!("{} repairs in flight", calm.repairs_in_flight)
    } else if calm.blobs_to_repair > 0 {
        format!("{} blobs to be repaired", calm.blobs_to_repair)
    } else if calm.shards_moving {
        "shards moving between nodes".to_string()
    } else {
        let down: Vec<&str> = nodes
            .iter()
            .filter(|n| !n.available)
            .map(|n| n.name.as_str())
            .collect();
        format!("node pods to be ready: {}", down.join(", "))
    })
}

/// The gateway Deployment to apply while node pods are outdated: the
/// desired one, with each container's image the one `running` (the
/// Deployment as it is) has for the container of that name. Everything
/// else of the desired spec applies at once.
pub fn gateway_keeping_its_image(desired: &Deployment, running: &Deployment) -> Deployment {
    let images = |d: &Deployment| -> Vec<(String, Option<String>)> {
        d.spec
            .template
            .spec
            .as_ref()
            .map(|s| {
                s.containers
                    .iter()
                    .map(|c| (c.name.clone(), c.image.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let running = images(running);
    let mut kept = desired.clone();
    let containers = kept
        .spec
        .template
        .spec
        .as_mut()
        .map(|s| s.containers.iter_mut());
    for container in containers.into_iter().flatten() {
        if let Some((_, Some(image))) = running.iter().find(|(name, _)| *name == container.name) {
            container.image = Some(image.clone());
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(states: &[(bool, bool)]) -> Vec<RolloutNode> {
        states
            .iter()
            .enumerate()
            .map(|(i, (outdated, available))| RolloutNode {
                name: format!("media-node-{i}"),
                outdated: *outdated,
                available: *available,
            })
            .collect()
    }

    #[test]
    fn outdated_pods_are_replaced_one_at_a_time_while_the_others_serve() {
        // (outdated, available) per node; repairs in flight; the pod to replace.
        type Row = (&'static [(bool, bool)], usize, Option<&'static str>);
        let table: [Row; 7] = [
            // Nothing outdated: nothing to do.
            (&[(false, true), (false, true), (false, true)], 0, None),
            // All outdated and serving: the first goes.
            (
                &[(true, true), (true, true), (true, true)],
                0,
                Some("media-node-0"),
            ),
            // One is down (being replaced, or lost): the others wait.
            (&[(true, true), (false, false), (true, true)], 0, None),
            // The outdated pod that is down goes first, alone.
            (
                &[(true, true), (true, false), (true, true)],
                0,
                Some("media-node-1"),
            ),
            // Two down: nothing more is taken away.
            (&[(true, false), (true, false), (true, true)], 0, None),
            // Repairs in flight read from every peer: wait for them.
            (&[(true, true), (true, true), (true, true)], 2, None),
            // The last outdated one.
            (
                &[(false, true), (false, true), (true, true)],
                0,
                Some("media-node-2"),
            ),
        ];
        for (states, repairs, want) in table {
            let calm = FleetCalm {
                seen: true,
                repairs_in_flight: repairs,
                ..FleetCalm::default()
            };
            assert_eq!(
                next_replacement(&nodes(states), calm),
                want,
                "{states:?} {repairs}"
            );
        }
    }

    #[test]
    fn blobs_waiting_for_repair_hold_the_rollout() {
        let all_outdated = nodes(&[(true, true), (true, true), (true, true)]);
        let seen = FleetCalm {
            seen: true,
            ..FleetCalm::default()
        };
        let calm = FleetCalm {
            blobs_to_repair: 1,
            ..seen
        };
        assert_eq!(next_replacement(&all_outdated, calm), None);
        assert_eq!(
            waiting_for(&all_outdated, calm).as_deref(),
            Some("1 blobs to be repaired")
        );
        let one_down = nodes(&[(true, true), (false, false), (true, true)]);
        assert_eq!(
            waiting_for(&one_down, seen).as_deref(),
            Some("node pods to be ready: media-node-1")
        );
        assert_eq!(next_replacement(&all_outdated, seen), Some("media-node-0"));
    }

    #[test]
    fn an_outdated_pod_that_is_down_on_a_claim_is_replaced_while_blobs_wait_for_repair() {
        // A rollback from an image that crash-loops: the pod is down, so
        // every blob is Degraded, and its new spec is what it needs.
        let one_down = nodes(&[(true, true), (true, false), (true, true)]);
        let degraded = FleetCalm {
            seen: true,
            repairs_in_flight: 3,
            blobs_to_repair: 5,
            shards_moving: true,
            data_on_claims: true,
        };
        assert_eq!(next_replacement(&one_down, degraded), Some("media-node-1"));
        assert_eq!(waiting_for(&one_down, degraded), None);
        // Its data on emptyDir goes with the pod: it waits like the others.
        let ephemeral = FleetCalm {
            data_on_claims: false,
            ..degraded
        };
        assert_eq!(next_replacement(&one_down, ephemeral), None);
        // A pod that serves is not taken down while blobs wait, and one
        // down is not replaced while another is down too.
        let serving = nodes(&[(true, true), (true, true), (true, true)]);
        assert_eq!(next_replacement(&serving, degraded), None);
        let two_down = nodes(&[(true, false), (true, false), (true, true)]);
        assert_eq!(next_replacement(&two_down, degraded), None);
    }

    #[test]
    fn no_pod_is_taken_down_while_shards_move_between_nodes() {
        let serving = nodes(&[(true, true), (true, true), (true, true)]);
        let moving = FleetCalm {
            seen: true,
            shards_moving: true,
            data_on_claims: true,
            ..FleetCalm::default()
        };
        assert_eq!(next_replacement(&serving, moving), None);
        assert_eq!(
            waiting_for(&serving, moving).as_deref(),
            Some("shards moving between nodes")
        );
    }

    #[test]
    fn no_pod_is_replaced_before_the_operator_has_looked_at_the_fleet() {
        // A new leader knows of no repair and no blob at risk yet.
        let all_outdated = nodes(&[(true, true), (true, true), (true, true)]);
        assert_eq!(next_replacement(&all_outdated, FleetCalm::default()), None);
        assert_eq!(
            waiting_for(&all_outdated, FleetCalm::default()).as_deref(),
            Some("the operator's first look at the fleet's blobs")
        );
    }

    #[test]
    fn the_hash_follows_the_spec() {
        let mut spec = PodSpec::default();
        let before = spec_hash(&spec);
        assert_eq!(before.len(), 16);
        assert_eq!(spec_hash(&spec), before, "stable");
        spec.hostname = Some("media-node-0".into());
        assert_ne!(spec_hash(&spec), before);
    }

    fn gateway(image: &str, args: &[&str]) -> Deployment {
        use k8s_openapi::api::apps::v1::DeploymentSpec;
        use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
        Deployment {
            spec: DeploymentSpec {
                template: PodTemplateSpec {
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "gateway".into(),
                            image: Some(image.into()),
                            args: Some(args.iter().map(|a| a.to_string()).collect()),
                            ..Container::default()
                        }],
                        ..PodSpec::default()
                    }),
                    ..PodTemplateSpec::default()
                },
                ..DeploymentSpec::default()
            },
            ..Deployment::default()
        }
    }

    #[test]
    fn a_gateway_keeps_its_running_image_and_takes_the_rest_of_its_new_spec() {
        let desired = gateway("redstuff:new", &["gateway", "--max-uploads", "4"]);
        let running = gateway("redstuff:old", &["gateway"]);
        let kept = gateway_keeping_its_image(&desired, &running);
        assert_eq!(
            kept,
            gateway("redstuff:old", &["gateway", "--max-uploads", "4"])
        );
        // A Deployment without that container keeps the desired image.
        let empty = Deployment::default();
        assert_eq!(gateway_keeping_its_image(&desired, &empty), desired);
    }
}
