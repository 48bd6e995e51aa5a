//! What a reconcile reads about node pods, claims and Kubernetes nodes,
//! and what it skips applying. `redstuff operator` keeps watch caches
//! (reflector stores) of the node pods and claims it manages and of the
//! Kubernetes nodes' metadata, so a reconcile reads memory instead of
//! listing them every few seconds; without stores (tests, tools) it lists.
//! Objects applied with the same content a short while ago are not
//! applied again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;

/// How long a store may take to fill after the operator starts before a
/// reconcile lists instead.
const STORE_READY_WAIT: Duration = Duration::from_secs(30);

/// An unchanged object is applied again after this long anyway, so that
/// one deleted by hand (the operator watches only pods and claims) comes
/// back.
pub const REAPPLY_AFTER: Duration = Duration::from_secs(300);

/// The watch caches of one watched scope (a namespace, or all of them).
#[derive(Clone)]
pub struct ScopeStores {
    /// Node pods (label `app.kubernetes.io/component=node`).
    pub pods: Store<Pod>,
    /// Node claims (same label).
    pub claims: Store<PersistentVolumeClaim>,
}

/// The operator's watch caches, by scope ("" for every namespace).
#[derive(Default)]
pub struct Observed {
    scopes: RwLock<BTreeMap<String, ScopeStores>>,
    nodes: RwLock<Option<Store<PartialObjectMeta<Node>>>>,
}

/// Waits (bounded) for a store's first full list; whether it has one.
async fn ready<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    tokio::time::timeout(STORE_READY_WAIT, store.wait_until_ready())
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Whether `object` is a node object of cluster `name` in `namespace`.
fn of_cluster<K: Resource>(object: &K, namespace: &str, name: &str) -> bool {
    let labels = object.labels();
    object.meta().namespace.as_deref() == Some(namespace)
        && labels.get("app.kubernetes.io/instance").map(String::as_str) == Some(name)
        && labels
            .get("app.kubernetes.io/component")
            .map(String::as_str)
            == Some("node")
}

impl Observed {
    /// Registers the caches of a scope (`None`: every namespace).
    pub fn add_scope(&self, namespace: Option<&str>, stores: ScopeStores) {
        self.scopes
            .write()
            .expect("not poisoned")
            .insert(namespace.unwrap_or_default().to_string(), stores);
    }

    /// Registers the cache of Kubernetes nodes' metadata.
    pub fn set_nodes(&self, store: Store<PartialObjectMeta<Node>>) {
        *self.nodes.write().expect("not poisoned") = Some(store);
    }

    fn scope(&self, namespace: &str) -> Option<ScopeStores> {
        let scopes = self.scopes.read().expect("not poisoned");
        scopes.get(namespace).or_else(|| scopes.get("")).cloned()
    }

    /// The node pods of cluster `name`: from the cache, else listed.
    pub async fn node_pods(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Pod>, kube::Error> {
        if let Some(stores) = self.scope(namespace) {
            if ready(&stores.pods).await {
                return Ok(stores
                    .pods
                    .state()
                    .iter()
                    .filter(|p| of_cluster(p.as_ref(), namespace, name))
                    .map(|p| p.as_ref().clone())
                    .collect());
            }
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        Ok(pods.list(&selector(name)).await?.items)
    }

    /// The node claims of cluster `name`: from the cache, else listed.
    pub async fn node_claims(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<PersistentVolumeClaim>, kube::Error> {
        if let Some(stores) = self.scope(namespace) {
            if ready(&stores.claims).await {
                return Ok(stores
                    .claims
                    .state()
                    .iter()
                    .filter(|c| of_cluster(c.as_ref(), namespace, name))
                    .map(|c| c.as_ref().clone())
                    .collect());
            }
        }
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
        Ok(claims.list(&selector(name)).await?.items)
    }

    /// The value of `topology_key` on every Kubernetes node that has it,
    /// by node name: from the cache, else listed (metadata only).
    pub async fn host_domains(
        &self,
        client: &Client,
        topology_key: &str,
    ) -> Result<BTreeMap<String, String>, kube::Error> {
        let domain = |n: &PartialObjectMeta<Node>| {
            let value = n.metadata.labels.as_ref()?.get(topology_key)?.clone();
            Some((n.metadata.name.clone()?, value))
        };
        let store = self.nodes.read().expect("not poisoned").clone();
        if let Some(store) = store {
            if ready(&store).await {
                return Ok(store.state().iter().filter_map(|n| domain(n)).collect());
            }
        }
        let nodes: Api<Node> = Api::all(client.clone());
        let list = nodes.list_metadata(&ListParams::default()).await?;
        Ok(list.items.iter().filter_map(domain).collect())
    }
}

fn selector(name: &str) -> ListParams {
    ListParams::default().labels(&format!(
        "app.kubernetes.io/name=redstuff,app.kubernetes.io/instance={name},app.kubernetes.io/component=node"
    ))
}

/// What was applied, with which content and when, per object: an object
/// whose desired content is what was applied less than [`REAPPLY_AFTER`]
/// ago is not applied again.
#[derive(Debug, Default)]
pub struct AppliedContent {
    applied: Mutex<HashMap<String, (blake3::Hash, Instant)>>,
}

/// The key and content hash of an object to apply.
pub struct Applying {
    key: String,
    hash: blake3::Hash,
}

impl AppliedContent {
    /// Whether `object` must be applied (changed, not applied lately, or
    /// not `present` where the caller knows); the ticket to record it.
    pub fn needs_apply<K>(&self, object: &K, present: bool) -> (bool, Applying)
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let key = format!(
            "{}/{}/{}",
            K::kind(&()),
            object.meta().namespace.as_deref().unwrap_or_default(),
            object.meta().name.as_deref().unwrap_or_default()
        );
        let hash = blake3::hash(&serde_json::to_vec(object).unwrap_or_default());
        let unchanged = present
            && self
                .applied
                .lock()
                .expect("not poisoned")
                .get(&key)
                .is_some_and(|(h, at)| *h == hash && at.elapsed() < REAPPLY_AFTER);
        (!unchanged, Applying { key, hash })
    }

    /// Records a successful apply.
    pub fn record(&self, applying: Applying) {
        self.applied
            .lock()
            .expect("not poisoned")
            .insert(applying.key, (applying.hash, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn config(name: &str, value: &str) -> ConfigMap {
        ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("storage".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("k".to_string(), value.to_string())])),
            ..Default::default()
        }
    }

    #[test]
    fn an_object_is_applied_again_only_when_its_content_changed_or_it_is_missing() {
        let applied = AppliedContent::default();
        let (needed, ticket) = applied.needs_apply(&config("shards", "a"), true);
        assert!(needed, "never applied");
        applied.record(ticket);
        assert!(!applied.needs_apply(&config("shards", "a"), true).0);
        assert!(
            applied.needs_apply(&config("shards", "b"), true).0,
            "changed"
        );
        assert!(
            applied.needs_apply(&config("other", "a"), true).0,
            "another object"
        );
        assert!(
            applied.needs_apply(&config("shards", "a"), false).0,
            "missing"
        );
    }

    #[test]
    fn a_failed_apply_is_not_recorded_so_it_is_tried_again() {
        let applied = AppliedContent::default();
        let (_, ticket) = applied.needs_apply(&config("shards", "a"), true);
        drop(ticket);
        assert!(applied.needs_apply(&config("shards", "a"), true).0);
    }
}
