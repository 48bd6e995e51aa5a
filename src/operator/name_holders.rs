//! Whether the names a StorageCluster's objects take are free or held by
//! its own objects. The operator applies with force: without this check
//! it would take over, and through its owner reference delete with the
//! cluster, a claim, Secret or Service another application made under
//! such a name (a StatefulSet's claim `pg-data-0` beside a cluster named
//! `pg`, a `loki-s3-credentials` beside one named `loki`), and read a
//! foreign Secret's keys as its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::Resource;

use super::context::Context;
use super::crd::StorageCluster;
use super::desired::{desired_objects, placeholder_credentials, DesiredObjects};
use crate::fleet::Assignment;

/// One object the operator makes for a cluster: its kind and name.
#[derive(Debug, Clone)]
pub struct NamedObject {
    /// Its resource.
    pub resource: ApiResource,
    /// Its name.
    pub name: String,
}

impl NamedObject {
    fn of<K: Resource<DynamicType = ()>>(object: &K) -> Self {
        Self {
            resource: ApiResource::erase::<K>(&()),
            name: object.meta().name.clone().unwrap_or_default(),
        }
    }

    /// `Kind/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.resource.kind, self.name)
    }
}

/// Every object of `desired`, by kind and name (pure).
pub fn named_objects(desired: &DesiredObjects) -> Vec<NamedObject> {
    let mut named = vec![
        NamedObject::of(&desired.node_service),
        NamedObject::of(&desired.shards_config),
        NamedObject::of(&desired.node_token),
        NamedObject::of(&desired.gateway_token),
        NamedObject::of(&desired.node_network_policy),
        NamedObject::of(&desired.gateway),
        NamedObject::of(&desired.gateway_service),
        NamedObject::of(&desired.disruption_budget),
        NamedObject::of(&desired.gateway_disruption_budget),
    ];
    named.extend(desired.node_claims.iter().map(NamedObject::of));
    named.extend(desired.node_pods.iter().map(NamedObject::of));
    named.extend(desired.s3_index_claim.iter().map(NamedObject::of));
    for secret in [
        &desired.s3_credentials,
        &desired.ca_secret,
        &desired.node_tls_secret,
        &desired.gateway_tls_secret,
    ]
    .into_iter()
    .flatten()
    {
        named.push(NamedObject::of(secret));
    }
    named
}

/// Whether an object with `labels` is one the operator made for cluster
/// `cluster` (pure): it carries the name, instance and managed-by labels
/// it gives. The chart's own objects carry the first two as well (its
/// release may be named like a cluster); only managed-by tells them apart.
pub fn is_the_clusters(labels: &BTreeMap<String, String>, cluster: &str) -> bool {
    let label = |key: &str| labels.get(key).map(String::as_str);
    label("app.kubernetes.io/name") == Some("redstuff")
        && label("app.kubernetes.io/instance") == Some(cluster)
        && label("app.kubernetes.io/managed-by") == Some(super::desired::MANAGED_BY)
}

/// What to tell of the objects (`Kind/name`) holding names of cluster
/// `cluster` that it did not make (pure).
pub fn problem(cluster: &str, held: &[String]) -> String {
    format!(
        "{} exist{} and {} not made for StorageCluster {cluster} (no labels \
         app.kubernetes.io/name=redstuff, app.kubernetes.io/instance={cluster} and \
         app.kubernetes.io/managed-by={}): the \
         operator takes over no object it did not make; move {} away, or give the \
         StorageCluster another name",
        held.join(", "),
        if held.len() == 1 { "s" } else { "" },
        if held.len() == 1 { "was" } else { "were" },
        super::desired::MANAGED_BY,
        if held.len() == 1 { "it" } else { "them" },
    )
}

/// Whether an object the operator did not make for `cluster` holds the
/// name `name` of kind `resource` (false when it is free or the cluster's).
async fn held_by_another(
    ctx: &Context,
    namespace: &str,
    (resource, name): (&ApiResource, &str),
    cluster: &str,
) -> Result<bool, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, resource);
    Ok(api.get_metadata_opt(name).await?.is_some_and(|found| {
        !found
            .metadata
            .labels
            .as_ref()
            .is_some_and(|labels| is_the_clusters(labels, cluster))
    }))
}

/// The first node ordinal in `ordinals` (node pods a cluster grows to)
/// whose pod or claim name an object the operator did not make holds,
/// with those objects (`Kind/name`); None when every name is free or the
/// cluster's. `observed` says which the watches show as the cluster's (by
/// kind and name): those are not asked about.
pub async fn first_node_taken(
    ctx: &Context,
    cluster: &str,
    namespace: &str,
    ordinals: std::ops::Range<usize>,
    ephemeral: bool,
    observed: impl Fn(&str, &str) -> bool,
) -> Result<Option<(usize, Vec<String>)>, kube::Error> {
    use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
    for ordinal in ordinals {
        let mut names = vec![(
            ApiResource::erase::<Pod>(&()),
            super::desired::node_pod_name(cluster, ordinal),
        )];
        if !ephemeral {
            names.push((
                ApiResource::erase::<PersistentVolumeClaim>(&()),
                super::desired::node_claim_name(cluster, ordinal),
            ));
        }
        let mut held = Vec::new();
        for (resource, name) in names {
            if observed(&resource.kind, &name) {
                continue;
            }
            if held_by_another(ctx, namespace, (&resource, &name), cluster).await? {
                held.push(format!("{}/{name}", resource.kind));
            }
        }
        if !held.is_empty() {
            return Ok(Some((ordinal, held)));
        }
    }
    Ok(None)
}

/// What to tell when a cluster running `running` node pods stops growing
/// toward `spec_nodes` because objects it did not make (`held`) hold the
/// names of node pod `running` (pure).
pub fn growth_held(cluster: &str, spec_nodes: usize, running: usize, held: &[String]) -> String {
    format!(
        "spec.nodes {spec_nodes} is not reached: the cluster runs {running} node pods, and no \
         more until the names of node pod {running} are free (everything else is applied): {}",
        problem(cluster, held)
    )
}

/// Checks the names of the objects cluster `cluster` takes (with
/// `assignment` over `nodes` node pods) that are not known to be its own
/// yet: `observed` says which the watches show as the cluster's (by kind
/// and name), `owned` remembers the rest once checked, and that every
/// name of this spec generation and node count was. The problem, if
/// any name is held by an object the operator did not make.
#[allow(clippy::too_many_arguments)]
pub async fn check(
    ctx: &Context,
    cluster: &StorageCluster,
    namespace: &str,
    assignment: &Assignment,
    nodes: usize,
    owned: &Mutex<BTreeSet<String>>,
    observed: impl Fn(&str, &str) -> bool,
) -> Result<Option<String>, kube::Error> {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    // The names follow from the spec and the node count only: once all of
    // them were found free or the cluster's, they are not listed again
    // until either changes.
    let round = format!(
        "checked@{}/{nodes}",
        cluster.metadata.generation.unwrap_or_default()
    );
    if owned.lock().expect("not poisoned").contains(&round) {
        return Ok(None);
    }
    let desired = desired_objects(
        cluster,
        assignment,
        nodes,
        &ctx.operator,
        &placeholder_credentials(cluster),
    );
    let unchecked: Vec<NamedObject> = {
        let owned = owned.lock().expect("not poisoned");
        named_objects(&desired)
            .into_iter()
            .filter(|o| !owned.contains(&o.key()) && !observed(&o.resource.kind, &o.name))
            .collect()
    };
    let mut held = Vec::new();
    let mut free = Vec::new();
    for object in unchecked {
        if held_by_another(ctx, namespace, (&object.resource, &object.name), &name).await? {
            held.push(object.key());
        } else {
            free.push(object.key());
        }
    }
    let mut owned = owned.lock().expect("not poisoned");
    owned.extend(free);
    if held.is_empty() {
        owned.insert(round);
        return Ok(None);
    }
    Ok(Some(problem(&name, &held)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_object_is_the_clusters_only_with_the_labels_the_operator_gives_naming_it() {
        let ours = labels(&[
            ("app.kubernetes.io/name", "redstuff"),
            ("app.kubernetes.io/instance", "pg"),
            ("app.kubernetes.io/managed-by", "redstuff-operator"),
        ]);
        assert!(is_the_clusters(&ours, "pg"));
        assert!(!is_the_clusters(&ours, "media"), "another cluster's");
        // The chart's objects, of a release named like the cluster.
        let chart = labels(&[
            ("app.kubernetes.io/name", "redstuff"),
            ("app.kubernetes.io/instance", "pg"),
            ("app.kubernetes.io/managed-by", "Helm"),
        ]);
        assert!(!is_the_clusters(&chart, "pg"));
        // What Helm gives every object of a release named like the cluster.
        let helm = labels(&[
            ("app.kubernetes.io/name", "postgresql"),
            ("app.kubernetes.io/instance", "pg"),
        ]);
        assert!(!is_the_clusters(&helm, "pg"));
        assert!(!is_the_clusters(&BTreeMap::new(), "pg"));
    }

    #[test]
    fn a_growth_held_says_how_far_the_cluster_got_and_who_holds_the_next_name() {
        let told = growth_held(
            "media",
            5,
            3,
            &["PersistentVolumeClaim/media-data-3".into()],
        );
        assert!(
            told.starts_with("spec.nodes 5 is not reached: the cluster runs 3 node pods"),
            "{told}"
        );
        assert!(
            told.contains("PersistentVolumeClaim/media-data-3 exists and was not made for StorageCluster media"),
            "{told}"
        );
    }

    #[test]
    fn the_problem_names_every_holder_and_what_to_do() {
        let one = problem("pg", &["PersistentVolumeClaim/pg-data-0".into()]);
        assert!(
            one.contains(
                "PersistentVolumeClaim/pg-data-0 exists and was not made for StorageCluster pg"
            ),
            "{one}"
        );
        assert!(one.contains("another name"), "{one}");
        let two = problem("pg", &["Secret/pg-ca".into(), "Service/pg-gateway".into()]);
        assert!(
            two.contains("Secret/pg-ca, Service/pg-gateway exist and were not made"),
            "{two}"
        );
    }

    #[test]
    fn every_object_a_cluster_takes_is_named_once() {
        let cluster: StorageCluster = serde_yaml::from_str(
            "apiVersion: redstuff.dev/v1alpha1
kind: StorageCluster
metadata: {name: pg, namespace: storage, uid: u}
spec: {shards: 4, nodes: 4, storage: {size: 1Gi}, tls: {enabled: true}, s3: {}}
",
        )
        .unwrap();
        let nodes: Vec<crate::fleet::NodeSpec> = (0..4)
            .map(|i| crate::fleet::NodeSpec {
                name: format!("pg-node-{i}"),
                domain: format!("pg-node-{i}"),
            })
            .collect();
        let assignment = crate::fleet::assign(4, &nodes, &Default::default());
        let desired = desired_objects(
            &cluster,
            &assignment,
            4,
            &super::super::desired::OperatorSettings::new("image", "ns"),
            &placeholder_credentials(&cluster),
        );
        let keys: Vec<String> = named_objects(&desired)
            .iter()
            .map(NamedObject::key)
            .collect();
        let unique: BTreeSet<&String> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "{keys:?}");
        for expected in [
            "PersistentVolumeClaim/pg-data-3",
            "PersistentVolumeClaim/pg-s3-index",
            "Pod/pg-node-0",
            "Secret/pg-ca",
            "Secret/pg-s3-credentials",
            "Secret/pg-node-token",
            "Service/pg-gateway",
            "Deployment/pg-gateway",
            "PodDisruptionBudget/pg-nodes",
            "NetworkPolicy/pg-nodes",
            "ConfigMap/pg-shards",
        ] {
            assert!(keys.iter().any(|k| k == expected), "{expected} in {keys:?}");
        }
    }
}
