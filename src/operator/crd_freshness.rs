//! Whether the CustomResourceDefinitions installed are the ones this
//! operator was built with. Helm installs CRDs but never upgrades them: an
//! operator upgraded without `kubectl apply -f crds/` runs beside older
//! schemas, and the API server silently drops the fields they lack (a
//! `gateway.replicas` written by a person, a status field written by the
//! operator). Each generated CRD carries the digest of its own spec; the
//! operator compares the installed one's with its own and says so when
//! they differ.

use std::collections::BTreeSet;
use std::sync::Mutex;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use super::crd::{Blob, StorageCluster};

/// The annotation holding the digest of a generated CRD's spec.
pub const SCHEMA_DIGEST_ANNOTATION: &str = "redstuff.dev/schema-digest";

/// The digest of a CRD's spec (names, versions, schemas, columns): 16
/// hex digits of its BLAKE3 over the JSON (whose maps are ordered).
pub fn schema_digest(crd: &CustomResourceDefinition) -> String {
    let json = serde_json::to_vec(&crd.spec).expect("a CRD spec serializes");
    blake3::hash(&json).to_hex()[..16].to_string()
}

/// `crd` with the digest of its spec in [`SCHEMA_DIGEST_ANNOTATION`].
fn stamped(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let digest = schema_digest(&crd);
    crd.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(SCHEMA_DIGEST_ANNOTATION.into(), digest);
    crd
}

/// The CRDs of this build, stamped with their digests, as crds/ holds them.
pub fn own_crds() -> Vec<CustomResourceDefinition> {
    vec![stamped(StorageCluster::crd()), stamped(Blob::crd())]
}

/// How an installed CRD compares with this build's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Installed with this build's schema.
    Current,
    /// Installed, with another schema: its digest, if it carries one
    /// (CRDs of versions before the digest carry none).
    Differs {
        /// The installed CRD's digest.
        installed: Option<String>,
    },
    /// Not installed.
    Missing,
}

/// How `installed` compares with `own`, this build's stamped CRD (pure).
pub fn freshness(
    installed: Option<&CustomResourceDefinition>,
    own: &CustomResourceDefinition,
) -> Freshness {
    let digest_of = |crd: &CustomResourceDefinition| {
        crd.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SCHEMA_DIGEST_ANNOTATION))
            .cloned()
    };
    match installed {
        None => Freshness::Missing,
        Some(crd) if digest_of(crd).is_some() && digest_of(crd) == digest_of(own) => {
            Freshness::Current
        }
        Some(crd) => Freshness::Differs {
            installed: digest_of(crd),
        },
    }
}

/// What a person should know of a CRD that is not current, and what to do
/// (pure; `None` when it is current).
pub fn problem(name: &str, freshness: &Freshness, own_digest: &str) -> Option<String> {
    let fix = "apply the CRDs of the operator's version: \
               kubectl apply --server-side --force-conflicts -f charts/redstuff/crds/";
    match freshness {
        Freshness::Current => None,
        Freshness::Missing => Some(format!(
            "CustomResourceDefinition {name} is not installed; {fix}"
        )),
        Freshness::Differs { installed } => Some(format!(
            "CustomResourceDefinition {name} is not the one this operator was built with \
             (schema {}, expected {own_digest}): the API server drops the fields either \
             lacks from what people and the operator write; {fix}",
            installed.as_deref().unwrap_or("of an older version")
        )),
    }
}

/// Reads each of this build's CRDs as installed and compares it: per CRD,
/// its problem (`None`: current). A CRD that cannot be read (the operator
/// may not, or the API server does not answer) is an error, not a problem.
pub async fn check_installed(
    client: &kube::Client,
) -> Vec<(String, Result<Option<String>, kube::Error>)> {
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let mut outcomes = Vec::new();
    for own in own_crds() {
        let name = own.metadata.name.clone().unwrap_or_default();
        let outcome = api.get_opt(&name).await.map(|installed| {
            problem(
                &name,
                &freshness(installed.as_ref(), &own),
                &schema_digest(&own),
            )
        });
        outcomes.push((name, outcome));
    }
    outcomes
}

/// The outcome of the latest check of the installed CRDs, and which
/// clusters were told of it: each cluster hears of a problem once (an
/// Event), and again only when it changes.
#[derive(Debug, Default)]
pub struct CrdCheck {
    state: Mutex<CheckState>,
}

#[derive(Debug, Default)]
struct CheckState {
    problems: Vec<String>,
    told: BTreeSet<String>,
}

impl CrdCheck {
    /// Records the problems the latest check found (empty: every CRD
    /// current); returns whether they changed.
    pub fn record(&self, problems: Vec<String>) -> bool {
        let mut state = self.state.lock().expect("not poisoned");
        if state.problems == problems {
            return false;
        }
        state.problems = problems;
        state.told.clear();
        true
    }

    /// The problems `cluster` has not been told of yet (empty: none, or
    /// told already); from now on it counts as told.
    pub fn untold(&self, cluster: &str) -> Vec<String> {
        let mut state = self.state.lock().expect("not poisoned");
        if state.problems.is_empty() || !state.told.insert(cluster.to_string()) {
            return Vec::new();
        }
        state.problems.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage_cluster_crd() -> CustomResourceDefinition {
        own_crds().remove(0)
    }

    #[test]
    fn every_generated_crd_carries_the_digest_of_its_spec() {
        for crd in own_crds() {
            let annotated =
                crd.metadata.annotations.as_ref().unwrap()[SCHEMA_DIGEST_ANNOTATION].clone();
            assert_eq!(annotated, schema_digest(&crd));
            assert_eq!(annotated.len(), 16);
        }
    }

    #[test]
    fn a_changed_schema_has_another_digest() {
        let own = storage_cluster_crd();
        let mut older = own.clone();
        let schema = older.spec.versions[0].schema.as_mut().unwrap();
        let spec = schema.open_api_v3_schema.as_mut().unwrap();
        spec.properties.as_mut().unwrap().remove("spec");
        assert_ne!(schema_digest(&older), schema_digest(&own));
    }

    #[test]
    fn an_installed_crd_is_current_only_with_this_builds_digest() {
        let own = storage_cluster_crd();
        assert_eq!(freshness(Some(&own), &own), Freshness::Current);
        assert_eq!(freshness(None, &own), Freshness::Missing);
        let mut unstamped = own.clone();
        unstamped.metadata.annotations = None;
        assert_eq!(
            freshness(Some(&unstamped), &own),
            Freshness::Differs { installed: None }
        );
        let mut other = own.clone();
        other
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(SCHEMA_DIGEST_ANNOTATION.into(), "0123456789abcdef".into());
        assert_eq!(
            freshness(Some(&other), &own),
            Freshness::Differs {
                installed: Some("0123456789abcdef".into())
            }
        );
        // Neither carrying a digest is not "the same".
        assert_ne!(freshness(Some(&unstamped), &unstamped), Freshness::Current);
    }

    #[test]
    fn a_problem_names_the_crd_both_digests_and_the_command_that_fixes_it() {
        let message = problem(
            "storageclusters.redstuff.dev",
            &Freshness::Differs {
                installed: Some("aaaa".into()),
            },
            "bbbb",
        )
        .unwrap();
        for part in [
            "storageclusters.redstuff.dev",
            "aaaa",
            "bbbb",
            "kubectl apply --server-side --force-conflicts -f charts/redstuff/crds/",
        ] {
            assert!(message.contains(part), "{message}");
        }
        assert!(problem("x", &Freshness::Current, "bbbb").is_none());
        assert!(problem("x", &Freshness::Missing, "bbbb")
            .unwrap()
            .contains("not installed"));
    }

    #[test]
    fn each_cluster_is_told_of_a_problem_once_and_again_when_it_changes() {
        let check = CrdCheck::default();
        assert!(check.untold("default/a").is_empty(), "nothing to tell");
        assert!(check.record(vec!["old".into()]));
        assert!(!check.record(vec!["old".into()]), "unchanged");
        assert_eq!(check.untold("default/a"), vec!["old".to_string()]);
        assert!(check.untold("default/a").is_empty(), "told already");
        assert_eq!(check.untold("default/b"), vec!["old".to_string()]);
        assert!(check.record(vec!["older".into()]));
        assert_eq!(check.untold("default/a"), vec!["older".to_string()]);
        assert!(check.record(Vec::new()));
        assert!(
            check.untold("default/b").is_empty(),
            "fixed: nothing to tell"
        );
    }
}
