//! Test-only builders of operator objects.

use super::crd::{StorageCluster, StorageClusterSpec, StorageSpec};

/// A StorageCluster "media" in namespace "storage", as read from the API
/// (uid, generation 3), with a claim of `size` per node (none: no size).
pub fn cluster(shards: u16, nodes: u16, size: Option<&str>) -> StorageCluster {
    let mut c = StorageCluster::new(
        "media",
        StorageClusterSpec {
            shards,
            nodes,
            image: None,
            storage: StorageSpec {
                size: size.map(str::to_string),
                storage_class_name: Some("fast".into()),
                ephemeral: None,
                when_deleted: None,
            },
            resources: None,
            placement: None,
            repair: None,
            s3: None,
            record_uploads: None,
            tls: None,
            gateway: None,
            scrub: None,
        },
    );
    c.metadata.namespace = Some("storage".into());
    c.metadata.uid = Some("uid-1".into());
    c.metadata.generation = Some(3);
    c
}
