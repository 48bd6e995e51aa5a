//! The Kubernetes adapter: custom resources, and the controllers that
//! drive node pods and blobs with the decisions of `fleet`. The only module
//! that imports kube.

mod apply_objects;
pub mod blob_controller;
pub mod blob_deletion;
pub mod blob_status;
pub mod ca_rotation;
pub mod claimed_shards;
pub mod cluster_ca;
mod cluster_secrets;
pub mod context;
pub mod controller;
pub mod crd;
pub mod crd_freshness;
pub mod desired;
#[cfg(test)]
mod fixtures;
mod gateway_question;
pub mod ingest;
pub mod lifecycle;
pub mod loss_times;
pub mod lost_objects;
pub mod name_holders;
pub mod observed;
pub mod pod_problem;
mod reconcile_error;
pub mod retiring;
pub mod rollout;
pub mod run;
pub mod source_addresses;
pub mod spool_room;
pub mod status;
pub mod stored_ingests;
mod upload_recorder;
pub mod upload_records;
pub mod uploads_in_flight;
pub mod written_statuses;

/// The YAML of every CustomResourceDefinition, as `redstuff crds` prints it
/// and crds/ holds it: one document per resource, stamped with the digest
/// of its schema (see [`crd_freshness`]).
pub fn crds_yaml() -> Vec<(String, String)> {
    crd_freshness::own_crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or_default());
            (name, serde_yaml::to_string(&crd).expect("CRD serializes"))
        })
        .collect()
}

/// The objects the operator would apply for a StorageCluster manifest, as
/// multi-document YAML (`redstuff render-cluster FILE`), with the
/// assignment of a fresh cluster and a placeholder token, made by an
/// operator with `settings`.
pub fn render_cluster(
    manifest: &str,
    settings: &desired::OperatorSettings,
) -> anyhow::Result<String> {
    let mut cluster: crd::StorageCluster = serde_yaml::from_str(manifest)
        .map_err(|e| anyhow::anyhow!("not a StorageCluster manifest: {e}"))?;
    status::validate_spec(&cluster.spec).map_err(|e| anyhow::anyhow!("invalid spec: {e}"))?;
    cluster
        .metadata
        .uid
        .get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
    cluster
        .metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let nodes: Vec<crate::fleet::NodeSpec> = (0..usize::from(cluster.spec.nodes))
        .map(|i| crate::fleet::NodeSpec {
            name: desired::node_pod_name(&name, i),
            domain: desired::node_pod_name(&name, i),
        })
        .collect();
    let assignment = crate::fleet::assign(cluster.spec.shards, &nodes, &Default::default());
    let credentials = desired::placeholder_credentials(&cluster);
    let objects = desired::desired_objects(
        &cluster,
        &assignment,
        usize::from(cluster.spec.nodes),
        settings,
        &credentials,
    );
    let mut docs: Vec<String> = vec![
        serde_yaml::to_string(&objects.node_service)?,
        serde_yaml::to_string(&objects.shards_config)?,
        serde_yaml::to_string(&objects.node_token)?,
        serde_yaml::to_string(&objects.gateway_token)?,
        serde_yaml::to_string(&objects.node_network_policy)?,
    ];
    for claim in &objects.node_claims {
        docs.push(serde_yaml::to_string(claim)?);
    }
    for pod in &objects.node_pods {
        docs.push(serde_yaml::to_string(pod)?);
    }
    docs.push(serde_yaml::to_string(&objects.gateway)?);
    docs.push(serde_yaml::to_string(&objects.gateway_service)?);
    if let Some(claim) = &objects.s3_index_claim {
        docs.push(serde_yaml::to_string(claim)?);
    }
    for secret in [
        &objects.s3_credentials,
        &objects.ca_secret,
        &objects.node_tls_secret,
        &objects.gateway_tls_secret,
    ]
    .into_iter()
    .flatten()
    {
        docs.push(serde_yaml::to_string(secret)?);
    }
    docs.push(serde_yaml::to_string(&objects.disruption_budget)?);
    docs.push(serde_yaml::to_string(&objects.gateway_disruption_budget)?);
    Ok(docs.into_iter().map(|d| format!("---\n{d}")).collect())
}
