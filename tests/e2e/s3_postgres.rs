//! S3 with its index in PostgreSQL on the real cluster: a StorageCluster
//! whose `s3.postgresSecret` names a database outside the cluster (a real
//! PostgreSQL server the test starts on the cluster's node address, as a
//! managed database would be reached) runs two gateway replicas on it
//! (`spec.gateway.replicas`, one evictable at a time); an
//! object stored through one gateway pod is listed and read back through
//! the other, and the rows are in the database. Then the cluster moves to
//! the embedded index: its gateway Deployment, created rolling, becomes
//! Recreate with one pod on a new index claim.

use std::time::Duration;

use crate::data::shared_bytes;
use crate::harness::{pod_ready, wait_for, E2e, NS};
use crate::pg::{Postgres, Remote};
use crate::s3::{aws, gateway_pods, keys};

/// The second cluster: 4 shards on 4 node pods with throwaway volumes.
const CLUSTER: &str = "e2e-pg";
/// The Secret with the database's URL.
const SECRET: &str = "e2e-pg-index";

/// The cluster's node address, which pods reach and this host holds on
/// the local cluster (a kind node's address is inside a container).
pub fn node_address(e2e: &E2e) -> anyhow::Result<std::net::IpAddr> {
    let address = e2e.kubectl(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={.items[0].status.addresses[?(@.type==\"InternalIP\")].address}",
    ])?;
    let address: std::net::IpAddr = address.trim().parse()?;
    anyhow::ensure!(
        std::net::TcpListener::bind((address, 0)).is_ok(),
        "the node address {address} is not on this machine: the scenario needs the local \
         cluster (scripts/e2e-local)"
    );
    Ok(address)
}

fn manifest() -> String {
    format!(
        r#"apiVersion: redstuff.dev/v1alpha1
kind: StorageCluster
metadata: {{name: {CLUSTER}, namespace: {NS}}}
spec:
  shards: 4
  nodes: 4
  storage: {{ephemeral: true}}
  resources:
    requests: {{cpu: 10m, memory: 32Mi}}
  s3: {{postgresSecret: {SECRET}}}
  gateway: {{replicas: 2}}
"#
    )
}

fn ready_gateway_pods(e2e: &E2e) -> anyhow::Result<Vec<String>> {
    Ok(gateway_pods(e2e, CLUSTER)?
        .iter()
        .filter(|p| pod_ready(p))
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect())
}

pub async fn two_gateways_share_an_index_in_postgres(
    e2e: &E2e,
    address: std::net::IpAddr,
) -> anyhow::Result<()> {
    // The postgres crate blocks on a runtime of its own: off this one.
    let database = std::thread::spawn(move || {
        Postgres::start_with(Some(Remote {
            address,
            network: "198.18.0.0/15",
            password: "e2e pass'word",
        }))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("PostgreSQL did not start (see the panic above)"))?;
    let url = format!(
        "postgresql://redstuff:{}@{address}:{}/postgres",
        "e2e%20pass%27word", database.port
    );
    let result = run(e2e, &url, &database).await;
    // The cluster goes whatever happened: its pods would hold the machine.
    let cleanup = e2e
        .delete_storagecluster(CLUSTER)
        .and_then(|_| e2e.kubectl(&["-n", NS, "delete", "secret", SECRET, "--ignore-not-found"]))
        // Retained with the cluster (storage.whenDeleted: Retain).
        .and_then(|_| {
            e2e.kubectl(&[
                "-n",
                NS,
                "delete",
                "persistentvolumeclaim",
                &format!("{CLUSTER}-s3-index"),
                "--ignore-not-found",
                "--wait=false",
            ])
        });
    result?;
    cleanup?;
    wait_for(
        "the second cluster's pods to go",
        Duration::from_secs(180),
        || {
            let left = e2e.list("pods", NS, &format!("app.kubernetes.io/instance={CLUSTER}"))?;
            Ok(left.is_empty().then_some(()))
        },
    )
    .await
}

async fn run(e2e: &E2e, url: &str, database: &Postgres) -> anyhow::Result<()> {
    e2e.apply(&format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: {SECRET}, namespace: {NS}}}
stringData:
  url: "{url}"
"#
    ))?;
    e2e.apply(&manifest())?;
    let status = wait_for(
        "the PostgreSQL-indexed cluster Ready",
        Duration::from_secs(300),
        || {
            let Some(cluster) = e2e.get("storagecluster", CLUSTER, NS)? else {
                return Ok(None);
            };
            let status = &cluster["status"];
            Ok(
                (status["observedGeneration"] == cluster["metadata"]["generation"]
                    && status["phase"] == "Ready")
                    .then(|| status.clone()),
            )
        },
    )
    .await?;
    anyhow::ensure!(
        status["s3Endpoint"] == format!("http://{CLUSTER}-gateway.{NS}.svc:7780").as_str(),
        "status: {status:#}"
    );
    anyhow::ensure!(
        e2e.get("persistentvolumeclaim", &format!("{CLUSTER}-s3-index"), NS)?
            .is_none(),
        "an index claim, though the index is in PostgreSQL"
    );
    let pods = wait_for("two gateway pods ready", Duration::from_secs(180), || {
        Ok(Some(ready_gateway_pods(e2e)?).filter(|p| p.len() == 2))
    })
    .await?;
    // The disruption controller resolves the gateway budget against the
    // ReplicaSet's scale: one of the two may be evicted at a time.
    wait_for(
        "the gateway budget to allow one eviction",
        Duration::from_secs(60),
        || {
            let budget = e2e.get("poddisruptionbudget", &format!("{CLUSTER}-gateway"), NS)?;
            Ok(budget
                .filter(|b| {
                    b["status"]["expectedPods"] == 2 && b["status"]["disruptionsAllowed"] == 1
                })
                .map(|_| ()))
        },
    )
    .await?;
    let keys = keys(e2e, CLUSTER)?;
    let work = tempfile::tempdir()?;
    let data = shared_bytes();
    std::fs::write(work.path().join("object"), &data)?;
    {
        let first = e2e.port_forward_pod(NS, &pods[0], 7780)?;
        aws(
            &first.url,
            &keys,
            &["s3", "mb", "s3://shared-index"],
            work.path(),
        )?;
        aws(
            &first.url,
            &keys,
            &[
                "s3",
                "cp",
                "--only-show-errors",
                "object",
                "s3://shared-index/written by one gateway",
            ],
            work.path(),
        )?;
    }
    let second = e2e.port_forward_pod(NS, &pods[1], 7780)?;
    let listed = aws(
        &second.url,
        &keys,
        &["s3", "ls", "s3://shared-index/"],
        work.path(),
    )?;
    anyhow::ensure!(listed.contains("written by one gateway"), "{listed}");
    aws(
        &second.url,
        &keys,
        &[
            "s3",
            "cp",
            "--only-show-errors",
            "s3://shared-index/written by one gateway",
            "back",
        ],
        work.path(),
    )?;
    anyhow::ensure!(
        std::fs::read(work.path().join("back"))? == data,
        "the object read through the other gateway differs"
    );
    let rows = std::thread::scope(|scope| scope.spawn(|| database.index_rows()).join())
        .map_err(|_| anyhow::anyhow!("cannot count the index's rows (see the panic above)"))?;
    anyhow::ensure!(
        rows > 0,
        "the index's table in PostgreSQL holds {rows} rows"
    );
    to_the_embedded_index(e2e).await
}

/// The cluster switched to the embedded index (one gateway): the gateway
/// Deployment, created rolling, becomes Recreate (the API server refuses a
/// Recreate strategy that keeps a rollingUpdate nobody owns), its index
/// claim is made and its pod serves.
async fn to_the_embedded_index(e2e: &E2e) -> anyhow::Result<()> {
    e2e.kubectl(&[
        "-n",
        NS,
        "patch",
        "storagecluster",
        CLUSTER,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"s3":{"postgresSecret":null},"gateway":{"replicas":1}}}"#,
    ])?;
    let deployment = format!("{CLUSTER}-gateway");
    wait_for(
        "the gateway Deployment to recreate its pod on the embedded index",
        Duration::from_secs(300),
        || {
            let Some(cluster) = e2e.get("storagecluster", CLUSTER, NS)? else {
                return Ok(None);
            };
            let synced = cluster["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Synced" && c["status"] == "True");
            let observed =
                cluster["status"]["observedGeneration"] == cluster["metadata"]["generation"];
            let Some(gateway) = e2e.get("deployment", &deployment, NS)? else {
                return Ok(None);
            };
            let recreate = gateway["spec"]["strategy"]["type"] == "Recreate"
                && gateway["spec"]["strategy"]["rollingUpdate"].is_null();
            let args = gateway["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
            let rolled = gateway["status"]["updatedReplicas"] == 1
                && gateway["status"]["readyReplicas"] == 1
                && gateway["status"]["replicas"] == 1;
            Ok(
                (synced && observed && recreate && args.contains("\"--s3-index\"") && rolled)
                    .then_some(()),
            )
        },
    )
    .await?;
    anyhow::ensure!(
        e2e.get("persistentvolumeclaim", &format!("{CLUSTER}-s3-index"), NS)?
            .is_some(),
        "no index claim for the embedded index"
    );
    Ok(())
}
