//! The chart installed and uninstalled with the real helm CLI, and the
//! CRDs' rules evaluated by the real API server.

use std::time::Duration;

use crate::harness::{manifests, wait_for, E2e, NS, RELEASE_NS};

const RELEASE: &str = "redstuff";

/// Leftovers of an interrupted earlier run go first: the storage
/// namespace while an operator may still release its Blobs, then whatever
/// finalizers no operator will remove, then the release.
fn clean_slate(e2e: &E2e) {
    let _ = e2e.kubectl(&[
        "delete",
        "namespace",
        NS,
        "--ignore-not-found",
        "--wait=true",
        "--timeout=90s",
    ]);
    if let Ok(blobs) = e2e.list("blobs", NS, "") {
        for blob in blobs {
            if let Some(name) = blob["metadata"]["name"].as_str() {
                let _ = e2e.merge_patch("blob", name, r#"{"metadata":{"finalizers":null}}"#);
            }
        }
    }
    let _ = e2e.helm(&[
        "uninstall",
        RELEASE,
        "-n",
        RELEASE_NS,
        "--wait",
        "--timeout",
        "2m",
    ]);
    for namespace in [NS, RELEASE_NS, "storage"] {
        let _ = e2e.kubectl(&[
            "delete",
            "namespace",
            namespace,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=180s",
        ]);
    }
}

pub async fn install(e2e: &E2e) -> anyhow::Result<()> {
    clean_slate(e2e);
    let (repository, tag) = e2e
        .image
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("REDSTUFF_E2E_IMAGE {} has no tag", e2e.image))?;
    e2e.helm(&[
        "install",
        RELEASE,
        "charts/redstuff",
        "-n",
        RELEASE_NS,
        "--create-namespace",
        "--set",
        &format!("operator.image.repository={repository}"),
        "--set",
        &format!("operator.image.tag={tag}"),
        "--set",
        "operator.image.pullPolicy=IfNotPresent",
        "--set",
        "operator.logLevel=redstuff=debug",
        "--wait",
        "--timeout",
        "5m",
    ])?;
    for crd in ["storageclusters.redstuff.dev", "blobs.redstuff.dev"] {
        let object = e2e
            .get("crd", crd, "default")?
            .ok_or_else(|| anyhow::anyhow!("CRD {crd} is not installed"))?;
        let established = object["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Established" && c["status"] == "True");
        anyhow::ensure!(established, "CRD {crd} is not Established");
    }
    let pods = e2e.list("pods", RELEASE_NS, "app.kubernetes.io/component=operator")?;
    anyhow::ensure!(pods.len() == 2, "{} operator pods, 2 expected", pods.len());
    for pod in &pods {
        anyhow::ensure!(
            pod["spec"]["serviceAccountName"] == RELEASE,
            "operator pod under ServiceAccount {}",
            pod["spec"]["serviceAccountName"]
        );
    }
    let names: Vec<String> = pods
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    let leader = wait_for("a leader", Duration::from_secs(60), || {
        Ok(e2e.leader().ok().filter(|l| names.contains(l)))
    })
    .await?;
    eprintln!("leader: {leader}");
    e2e.kubectl(&["create", "namespace", NS])?;
    Ok(())
}

pub async fn admission(e2e: &E2e) -> anyhow::Result<()> {
    // The examples name namespace `storage`.
    e2e.kubectl(&["create", "namespace", "storage"])?;
    let result = (|| {
        let mut admitted = 0;
        for (path, _) in manifests(&e2e.path("examples")) {
            let file = path.display().to_string();
            e2e.kubectl(&["apply", "--dry-run=server", "-f", &file])
                .map_err(|e| anyhow::anyhow!("{file} was refused: {e}"))?;
            admitted += 1;
        }
        let mut refused = 0;
        for (path, text) in manifests(&e2e.path("examples/invalid")) {
            let file = path.display().to_string();
            let expected = text
                .lines()
                .find_map(|l| l.strip_prefix("# expect-server: "))
                .or_else(|| text.lines().find_map(|l| l.strip_prefix("# expect: ")))
                .ok_or_else(|| anyhow::anyhow!("{file} says no expected message"))?;
            match e2e.kubectl(&["apply", "--dry-run=server", "-f", &file]) {
                Ok(_) => anyhow::bail!("{file} was admitted"),
                Err(e) => anyhow::ensure!(
                    e.to_string().contains(expected),
                    "{file}: expected {expected:?} in the API server's refusal: {e}"
                ),
            }
            refused += 1;
        }
        eprintln!("{admitted} examples admitted, {refused} invalid ones refused");
        anyhow::ensure!(admitted >= 3 && refused >= 6);
        Ok(())
    })();
    e2e.kubectl(&["delete", "namespace", "storage", "--wait=false"])?;
    result
}

pub async fn uninstall(e2e: &E2e) -> anyhow::Result<()> {
    e2e.helm(&[
        "uninstall",
        RELEASE,
        "-n",
        RELEASE_NS,
        "--wait",
        "--timeout",
        "3m",
    ])?;
    wait_for("the operator pods to go", Duration::from_secs(120), || {
        Ok(e2e
            .list("pods", RELEASE_NS, "app.kubernetes.io/component=operator")?
            .is_empty()
            .then_some(()))
    })
    .await?;
    for (kind, name, namespace) in [
        ("deployment", "redstuff-operator", RELEASE_NS),
        ("serviceaccount", RELEASE, RELEASE_NS),
        ("clusterrole", RELEASE, "default"),
        ("clusterrolebinding", RELEASE, "default"),
        ("role", "redstuff-leader", RELEASE_NS),
    ] {
        anyhow::ensure!(
            e2e.get(kind, name, namespace)?.is_none(),
            "{kind} {name} is left after helm uninstall"
        );
    }
    // Kept, as docs/operations.md says: the CRDs (Helm never deletes them),
    // and the leader Lease the operator made in its namespace.
    for crd in ["storageclusters.redstuff.dev", "blobs.redstuff.dev"] {
        anyhow::ensure!(
            e2e.get("crd", crd, "default")?.is_some(),
            "CRD {crd} was deleted"
        );
    }
    let left: Vec<String> = e2e
        .kubectl(&[
            "-n",
            RELEASE_NS,
            "get",
            "all,configmap,secret,lease,role,rolebinding",
            "-o",
            "name",
        ])?
        .lines()
        .filter(|l| !l.contains("kube-root-ca.crt") && !l.starts_with("serviceaccount/default"))
        .map(str::to_string)
        .collect();
    anyhow::ensure!(
        left.iter()
            .all(|l| l == "lease.coordination.k8s.io/redstuff"),
        "left in {RELEASE_NS}: {left:?}"
    );
    // Leave the machine's cluster as the run found it.
    clean_slate(e2e);
    for crd in ["storageclusters.redstuff.dev", "blobs.redstuff.dev"] {
        e2e.kubectl(&["delete", "crd", crd, "--ignore-not-found"])?;
    }
    Ok(())
}

/// A small StorageCluster `name` in `namespace`: one node pod holding all
/// 4 shards on an emptyDir.
fn small_cluster(name: &str, namespace: &str) -> String {
    format!(
        r#"apiVersion: redstuff.dev/v1alpha1
kind: StorageCluster
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  shards: 4
  nodes: 1
  storage: {{ephemeral: true}}
  resources:
    requests: {{cpu: 10m, memory: 32Mi}}
"#
    )
}

/// With `operator.watchNamespaces`, the operator's role is bound in those
/// namespaces only: a cluster there becomes Ready, one elsewhere is left
/// alone. The release goes back to watching every namespace afterwards.
pub async fn scoped_to_namespaces(e2e: &E2e) -> anyhow::Result<()> {
    const OTHER: &str = "redstuff-e2e-other";
    let upgrade = |extra: &[&str]| -> anyhow::Result<()> {
        let mut args = vec![
            "upgrade",
            RELEASE,
            "charts/redstuff",
            "-n",
            RELEASE_NS,
            "--reuse-values",
            "--wait",
            "--timeout",
            "3m",
        ];
        args.extend(extra);
        e2e.helm(&args)?;
        Ok(())
    };
    upgrade(&["--set", &format!("operator.watchNamespaces={{{NS}}}")])?;
    let result = async {
        e2e.kubectl(&["create", "namespace", OTHER])?;
        e2e.apply(&small_cluster("scoped", NS))?;
        e2e.apply(&small_cluster("elsewhere", OTHER))?;
        wait_for(
            "the cluster in the watched namespace Ready",
            Duration::from_secs(180),
            || {
                Ok(e2e
                    .get("storagecluster", "scoped", NS)?
                    .filter(|c| c["status"]["phase"] == "Ready")
                    .map(|_| ()))
            },
        )
        .await?;
        let elsewhere = e2e
            .get("storagecluster", "elsewhere", OTHER)?
            .ok_or_else(|| anyhow::anyhow!("the other cluster is gone"))?;
        anyhow::ensure!(
            elsewhere["status"].is_null(),
            "a cluster outside the watched namespaces got a status: {}",
            elsewhere["status"]
        );
        let pods = e2e.list("pods", OTHER, "app.kubernetes.io/instance=elsewhere")?;
        anyhow::ensure!(pods.is_empty(), "{} pods made outside", pods.len());
        // The operator cannot even read Secrets there.
        let forbidden = e2e.kubectl(&[
            "auth",
            "can-i",
            "get",
            "secrets",
            "-n",
            OTHER,
            &format!("--as=system:serviceaccount:{RELEASE_NS}:{RELEASE}"),
        ]);
        anyhow::ensure!(
            forbidden.is_err(),
            "the operator may read Secrets outside its namespaces"
        );
        e2e.kubectl(&[
            "-n",
            NS,
            "delete",
            "storagecluster",
            "scoped",
            "--wait=true",
        ])?;
        Ok(())
    }
    .await;
    let _ = e2e.kubectl(&["delete", "namespace", OTHER, "--wait=false"]);
    upgrade(&["--set", "operator.watchNamespaces=null"])?;
    result
}

/// The operator's gauge of `crd`, if it has one yet.
fn crd_current(metrics: &str, crd: &str) -> Option<u8> {
    let series = format!("redstuff_operator_crd_current{{crd=\"{crd}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
}

/// The operator finds the CRDs the chart installed current; a CRD of an
/// earlier version (one carrying no schema digest) is reported on the
/// gauge and to the StorageCluster as a Warning Event, until the CRDs are
/// applied again as docs/operations.md says.
pub async fn outdated_crds_are_reported(e2e: &E2e) -> anyhow::Result<()> {
    const CRD: &str = "storageclusters.redstuff.dev";
    let gauges = |want: u8| {
        move || -> anyhow::Result<Option<()>> {
            let metrics = e2e.operator_metrics()?;
            let both = [CRD, "blobs.redstuff.dev"].map(|crd| crd_current(&metrics, crd));
            anyhow::ensure!(both == [Some(want), Some(1)], "gauges {both:?}");
            Ok(Some(()))
        }
    };
    wait_for("both CRDs current", Duration::from_secs(90), gauges(1)).await?;
    anyhow::ensure!(
        !crate::disruptions::event_reasons(e2e)?.contains(&"CRDOutdated".to_string()),
        "a CRDOutdated Event while the CRDs are current"
    );
    // What every installation of a version before the digest holds.
    e2e.kubectl(&["annotate", "crd", CRD, "redstuff.dev/schema-digest-"])?;
    let result = async {
        wait_for(
            "the StorageCluster CRD reported outdated",
            Duration::from_secs(90),
            gauges(0),
        )
        .await?;
        wait_for(
            "a CRDOutdated Warning Event on the cluster",
            Duration::from_secs(90),
            || {
                let events = e2e.list("events.events.k8s.io", NS, "")?;
                Ok(events
                    .iter()
                    .find(|e| {
                        e["reason"] == "CRDOutdated"
                            && e["type"] == "Warning"
                            && e["regarding"]["kind"] == "StorageCluster"
                            && e["note"]
                                .as_str()
                                .is_some_and(|n| n.contains(CRD) && n.contains("kubectl apply"))
                    })
                    .map(|_| ()))
            },
        )
        .await
    }
    .await;
    // The remedy the docs give.
    e2e.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "charts/redstuff/crds/",
    ])?;
    result?;
    wait_for(
        "both CRDs current again",
        Duration::from_secs(90),
        gauges(1),
    )
    .await?;
    Ok(())
}

/// A name the operator would give an object, held by something another
/// application made, is not taken over: the cluster waits (Synced False,
/// NameTaken) with the object untouched, and is made once the name is free.
pub async fn names_of_others_are_not_taken(e2e: &E2e) -> anyhow::Result<()> {
    const CLUSTER: &str = "taken";
    e2e.kubectl(&[
        "-n",
        NS,
        "create",
        "configmap",
        "taken-shards",
        "--from-literal=owner=someone-else",
    ])?;
    let result = async {
        e2e.apply(&small_cluster(CLUSTER, NS))?;
        let synced = wait_for(
            "Synced False with reason NameTaken",
            Duration::from_secs(120),
            || {
                let Some(cluster) = e2e.get("storagecluster", CLUSTER, NS)? else {
                    return Ok(None);
                };
                Ok(cluster["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "Synced" && c["reason"] == "NameTaken")
                    .cloned())
            },
        )
        .await?;
        anyhow::ensure!(
            synced["message"]
                .as_str()
                .is_some_and(|m| m.contains("ConfigMap/taken-shards")),
            "{synced:#}"
        );
        let pods = e2e.list("pods", NS, &format!("app.kubernetes.io/instance={CLUSTER}"))?;
        anyhow::ensure!(pods.is_empty(), "{} pods made on a taken name", pods.len());
        let theirs = e2e
            .get("configmap", "taken-shards", NS)?
            .ok_or_else(|| anyhow::anyhow!("the other ConfigMap is gone"))?;
        anyhow::ensure!(
            theirs["data"]["owner"] == "someone-else"
                && theirs["metadata"]["ownerReferences"].is_null(),
            "the other ConfigMap was changed: {theirs:#}"
        );
        e2e.kubectl(&["-n", NS, "delete", "configmap", "taken-shards"])?;
        wait_for(
            "the cluster Ready once the name is free",
            Duration::from_secs(180),
            || {
                Ok(e2e
                    .get("storagecluster", CLUSTER, NS)?
                    .filter(|c| c["status"]["phase"] == "Ready")
                    .map(|_| ()))
            },
        )
        .await
    }
    .await;
    let _ = e2e.kubectl(&[
        "-n",
        NS,
        "delete",
        "configmap",
        "taken-shards",
        "--ignore-not-found",
    ]);
    let _ = e2e.delete_storagecluster(CLUSTER);
    result
}
