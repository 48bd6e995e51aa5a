//! The Kubernetes adapter: custom resources, and (to come) the controllers
//! that drive node pods with the decisions of `fleet`. The only module that
//! imports kube.

pub mod controller;
pub mod crd;
pub mod desired;
pub mod run;
pub mod status;

use kube::CustomResourceExt;

/// The YAML of every CustomResourceDefinition, as `redstuff crds` prints it
/// and crds/ holds it: one document per resource.
pub fn crds_yaml() -> Vec<(&'static str, String)> {
    vec![
        (
            "storageclusters.redstuff.dev.yaml",
            serde_yaml::to_string(&crd::StorageCluster::crd()).expect("CRD serializes"),
        ),
        (
            "blobs.redstuff.dev.yaml",
            serde_yaml::to_string(&crd::Blob::crd()).expect("CRD serializes"),
        ),
    ]
}
