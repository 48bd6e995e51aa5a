//! End to end, on a real cluster made for it: the local single-node
//! cluster (`scripts/local-cluster`, what `scripts/test` runs) or kind
//! (`tests/e2e/kind.sh`). Run only when asked: the test is ignored unless
//! run with `--run-ignored`, and then needs REDSTUFF_E2E=1 and a
//! KUBECONFIG whose current context is one of those clusters.
//!
//! The Helm chart is installed with the real helm CLI (the operator in the
//! cluster, under its own ServiceAccount and the chart's RBAC, two
//! replicas behind the Lease), then each scenario runs in turn, timed and
//! reported; the chart is uninstalled at the end. Environment:
//! REDSTUFF_E2E_IMAGE (the redstuff image, default redstuff:e2e),
//! REDSTUFF_E2E_PROBE_IMAGE (the probe test server), REDSTUFF_E2E_HELM,
//! REDSTUFF_E2E_KUBECTL.

mod ca_rotation;
mod cluster;
mod data;
mod disruptions;
mod harness;
mod install;
#[path = "../pg/mod.rs"]
mod pg;
mod s3;
mod s3_postgres;
mod scaling;
mod settled;

use harness::{E2e, Report};

#[tokio::test]
#[ignore = "needs a cluster made for it: scripts/test runs it on the local cluster"]
async fn the_operator_keeps_its_promises_on_a_real_cluster() {
    let e2e = E2e::from_env().unwrap();
    let mut report = Report::new(&e2e);
    let installed = report
        .scenario(
            "the chart installs with helm: CRDs, RBAC, two operator replicas, one leading",
            true,
            install::install(&e2e),
        )
        .await;
    if installed {
        run_scenarios(&e2e, &mut report).await;
        report
            .scenario(
                "helm uninstall leaves only what the docs say it keeps",
                false,
                install::uninstall(&e2e),
            )
            .await;
    }
    report.finish();
}

async fn run_scenarios(e2e: &E2e, report: &mut Report<'_>) {
    report
        .scenario(
            "every example is admitted and every invalid one refused by the API server",
            false,
            install::admission(e2e),
        )
        .await;
    let ready = report
        .scenario(
            "a StorageCluster becomes Ready and kubectl get shows its columns",
            true,
            cluster::becomes_ready(e2e),
        )
        .await;
    if !ready {
        return;
    }
    report
        .scenario(
            "a blob put through the gateway reads back byte for byte and is recorded as a Blob",
            false,
            data::put_and_get(e2e),
        )
        .await;
    report
        .scenario(
            "an outdated CRD is reported on the operator's gauge and as a Warning Event until the CRDs are applied",
            false,
            install::outdated_crds_are_reported(e2e),
        )
        .await;
    report
        .scenario(
            "at rest the operator reads only what changed in the nodes' inventories",
            false,
            disruptions::operator_reads_only_changes_at_rest(e2e),
        )
        .await;
    report
        .scenario(
            "S3 through the gateway: the aws cli stores and lists, a deleted Blob leaves an object its bytes, the index outlives the gateway pod, a key added to the Secret signs in",
            false,
            s3::s3_through_the_gateway(e2e),
        )
        .await;
    // The database runs on this host, at the node's address: the local
    // cluster's node is this host, a kind node is not.
    match s3_postgres::node_address(e2e) {
        Ok(address) => {
            report
                .scenario(
                    "S3 with its index in PostgreSQL: two gateway replicas, an object stored through one is read through the other; then moved to the embedded index, the gateway Recreate",
                    false,
                    s3_postgres::two_gateways_share_an_index_in_postgres(e2e, address),
                )
                .await;
        }
        Err(why) => eprintln!("\n=== NOT RUN: S3 with its index in PostgreSQL: {why}"),
    }
    report
        .scenario(
            "Blobs from a ConfigMap and from a URL served in the cluster are ingested",
            false,
            data::ingest(e2e),
        )
        .await;
    report
        .scenario(
            "a deleted node pod is replaced on its claim and no data moves",
            false,
            disruptions::pod_deleted(e2e),
        )
        .await;
    report
        .scenario(
            "a deleted claim and pod are rebuilt from peers: Degraded, then Healthy",
            false,
            disruptions::claim_deleted(e2e),
        )
        .await;
    report
        .scenario(
            "changed resources roll node pods one at a time while a reader reads without a failure",
            false,
            disruptions::rollout(e2e),
        )
        .await;
    report
        .scenario(
            "the CA rotated on request while a client reads and writes: no call fails, no certificate is rejected, every pod ends on the new CA",
            false,
            ca_rotation::rotates_the_ca_without_a_failed_call(e2e),
        )
        .await;
    report
        .scenario(
            "a hung leader loses the Lease to the standby within its duration and ends when woken; SIGTERM releases it",
            false,
            disruptions::leader_failover(e2e),
        )
        .await;
    report
        .scenario(
            "a node pod kept away past the grace period has its shards moved and rebuilt",
            false,
            disruptions::grace_period(e2e),
        )
        .await;
    report
        .scenario(
            "spec.nodes lowered: the node pod beyond it goes only once its shard is rebuilt elsewhere; raised again, it comes back",
            false,
            scaling::nodes_lowered_then_raised(e2e),
        )
        .await;
    report
        .scenario(
            "kubectl drain evicts at most one node pod at a time",
            false,
            disruptions::drain(e2e),
        )
        .await;
    report
        .scenario(
            "a name another application's object holds is not taken over; the cluster is made once it is free",
            false,
            install::names_of_others_are_not_taken(e2e),
        )
        .await;
    report
        .scenario(
            "with watchNamespaces the operator manages those namespaces only, and may read nothing elsewhere",
            false,
            install::scoped_to_namespaces(e2e),
        )
        .await;
    report
        .scenario(
            "deleting a Blob deletes its blob",
            false,
            data::blob_deleted(e2e),
        )
        .await;
    report
        .scenario(
            "deleting the StorageCluster removes everything it owns but its claims, which a cluster of the same name takes up with its blobs",
            false,
            cluster::deleted(e2e),
        )
        .await;
}
