"""Lints and renders charts/redstuff with Helm (helm-python-sdk: Helm v4's
Go SDK), for every values file in charts/redstuff/ci/, and checks what it
renders: built-in objects against the Kubernetes schemas (by the caller,
with kubernetes-validate --strict, from the files written to OUT; every
rendered object also goes to OUT/../chart-all/ for kubectl), the
example StorageCluster through `redstuff render-cluster`, the
PrometheusRule against files/alerts.rules.yaml, the ServiceMonitor
against the metrics Service, the dashboard ConfigMaps against
dashboards/, the node pods' NetworkPolicy against the one the operator
renders for examples/storagecluster.yaml. Values in tests/chart/invalid/ must be refused with the
message their `# expect:` line names.

Usage: check_chart.py OUT REDSTUFF_BINARY
"""

import copy
import json
import pathlib
import re
import subprocess
import sys

import helm_python
import yaml
from helm_python.chart import Chart

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "redstuff"
# The namespace the chart is rendered into, where its operator runs.
NAMESPACE = "redstuff-system"
BUILTIN_GROUPS = {"v1", "apps/v1", "rbac.authorization.k8s.io/v1", "networking.k8s.io/v1", "policy/v1"}


def fail(message):
    print(f"check-chart: {message}", file=sys.stderr)
    sys.exit(1)


def rbac_rules(docs):
    """Every (API group, resource, verb, names) the Roles and ClusterRoles
    grant (names: the resourceNames a rule is limited to, () for all)."""
    return {(group, resource, verb, tuple(rule.get("resourceNames") or ()))
            for d in docs if d["kind"] in ("ClusterRole", "Role")
            for rule in d["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]}


def check_watched_namespaces(name, values, docs, args):
    """With operator.watchNamespaces the operator's role is bound in those
    namespaces only (Nodes and its CRDs cluster-wide); without, everywhere."""
    watched = values.get("operator", {}).get("watchNamespaces") or []
    bound_everywhere = {d["roleRef"]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"}
    bound_in = {d["metadata"]["namespace"] for d in docs
                if d["kind"] == "RoleBinding" and d["roleRef"]["kind"] == "ClusterRole"}
    flags = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--namespace"]
    if watched:
        if bound_everywhere != {"redstuff-cluster-scoped"} or bound_in != set(watched) or flags != watched:
            fail(f"{name}: watchNamespaces {watched} must bind the role only there "
                 f"(ClusterRoleBindings {bound_everywhere}, RoleBindings in {bound_in}, flags {flags})")
    elif bound_everywhere != {"redstuff", "redstuff-cluster-scoped"} or bound_in or flags:
        fail(f"{name}: without watchNamespaces the role is bound cluster-wide "
             f"(ClusterRoleBindings {bound_everywhere}, RoleBindings in {bound_in}, flags {flags})")


def check_operator_flags(name, args, operator_help):
    """Every flag the chart passes the operator is one `redstuff operator`
    takes (a misspelt one would crash-loop the operator after install)."""
    known = set(re.findall(r"(--[a-z][a-z0-9-]*)", operator_help))
    unknown = [a for a in args if a.startswith("--") and a not in known]
    if unknown:
        fail(f"{name}: the chart passes the operator flags it does not take: {unknown}")


def check_image_pulls(name, values, args):
    """The operator gives node and gateway pods the chart's pull secrets
    and policy, passed as flags."""
    secrets = [s["name"] for s in values.get("imagePullSecrets") or []]
    flags = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--image-pull-secret"]
    policy = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--image-pull-policy"]
    wanted = values.get("operator", {}).get("image", {}).get("pullPolicy", "IfNotPresent")
    if flags != secrets or policy != [wanted]:
        fail(f"{name}: the operator must pass imagePullSecrets {secrets} and pullPolicy {wanted} "
             f"to node and gateway pods (flags {flags}, policy {policy})")


def selects(selector, labels):
    """Whether a label selector (matchLabels only) selects `labels`."""
    if selector.get("matchExpressions"):
        fail(f"selector {selector} uses matchExpressions, which this check does not read")
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def namespace_wide(spec, cluster):
    """The operator's node NetworkPolicy of `cluster` as the chart writes it
    for every cluster of its namespace: each selector of the cluster's pods
    (its instance label) selects the redstuff pods of that component."""
    spec = copy.deepcopy(spec)
    selectors = [spec["podSelector"]] + [peer["podSelector"]
                                         for rule in spec["ingress"] for peer in rule.get("from", [])
                                         if "podSelector" in peer]
    for selector in selectors:
        labels = selector["matchLabels"]
        if labels.get("app.kubernetes.io/instance") == cluster:
            del labels["app.kubernetes.io/instance"]
            labels["app.kubernetes.io/name"] = "redstuff"
    return spec


def check_node_policy(name, values, docs, operator_objects):
    """With networkPolicy.enabled the chart has a NetworkPolicy for node pods
    with the operator's rules (its ports and peers, namespace-wide), which
    selects the node pods the operator creates and admits to their API port
    its gateway and node pods and the chart's operator pods; without, none."""
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"
                and d["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == "node"]
    if not values.get("networkPolicy", {}).get("enabled"):
        if policies:
            fail(f"{name}: networkPolicy.enabled is off, yet the chart renders {policies[0]['metadata']['name']}")
        return
    if len(policies) != 1:
        fail(f"{name}: networkPolicy.enabled renders {len(policies)} NetworkPolicies for node pods, not 1")
    chart_spec = policies[0]["spec"]
    operator_policy = next(d for d in operator_objects if d["kind"] == "NetworkPolicy")
    cluster = operator_policy["metadata"]["labels"]["app.kubernetes.io/instance"]
    expected = namespace_wide(operator_policy["spec"], cluster)
    if chart_spec != expected:
        fail(f"{name}: the chart's node NetworkPolicy differs from the operator's ({operator_policy['metadata']['name']} "
             f"of examples/storagecluster.yaml, made namespace-wide):\n"
             f"chart:    {json.dumps(chart_spec, sort_keys=True)}\nexpected: {json.dumps(expected, sort_keys=True)}")
    nodes = [d["metadata"]["labels"] for d in operator_objects if d["kind"] == "Pod"]
    gateways = [d["spec"]["template"]["metadata"]["labels"] for d in operator_objects
                if d["kind"] == "Deployment" and d["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"]
    operator = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["metadata"]["labels"]
    if not nodes or not gateways or not all(selects(chart_spec["podSelector"], n) for n in nodes):
        fail(f"{name}: the node NetworkPolicy does not select the operator's node pods")
    node_ports = {p["containerPort"] for p in next(d for d in operator_objects if d["kind"] == "Pod")
                  ["spec"]["containers"][0]["ports"]}
    api_rule = next((r for r in chart_spec["ingress"] if r.get("from")), None)
    if api_rule is None or {p["port"] for p in api_rule["ports"]} - node_ports:
        fail(f"{name}: the node NetworkPolicy's API rule names no port of the node pods ({node_ports})")
    same_namespace = [p["podSelector"] for p in api_rule["from"] if "namespaceSelector" not in p]
    if any(p.get("namespaceSelector") == {} for p in api_rule["from"]):
        fail(f"{name}: the node NetworkPolicy admits pods of every namespace to the API port")
    operator_namespace = [p["podSelector"] for p in api_rule["from"] if "namespaceSelector" in p
                          and selects(p["namespaceSelector"], {"kubernetes.io/metadata.name": NAMESPACE})]
    for what, labels, peers in [("gateway pods", gateways[0], same_namespace),
                                ("node pods", nodes[0], same_namespace),
                                ("the chart's operator pods", operator, operator_namespace)]:
        if not any(selects(peer, labels) for peer in peers):
            fail(f"{name}: the node NetworkPolicy does not admit {what} ({labels}) to the API port")


def render(chart, values):
    chart.validate_schema(values)
    return chart.render(values, name="redstuff", namespace=NAMESPACE, is_install=True)


def main(out, redstuff):
    out = pathlib.Path(out)
    chart = Chart.load(str(CHART))
    crds = sorted(p.name for p in (CHART / "crds").iterdir())
    if crds != sorted(p.name for p in (ROOT / "crds").iterdir()):
        fail(f"charts/redstuff/crds holds {crds}, not the generated CRDs")
    rules = yaml.safe_load((CHART / "files" / "alerts.rules.yaml").read_text())
    dashboards = {p.name: json.loads(p.read_text()) for p in (CHART / "dashboards").glob("*.json")}
    deploy_docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "10-rbac.yaml").read_text()) if d]
    operator_objects = subprocess.run([redstuff, "render-cluster", str(ROOT / "examples" / "storagecluster.yaml"),
                                       "--operator-namespace", NAMESPACE],
                                      capture_output=True, text=True, check=True).stdout
    operator_objects = [d for d in yaml.safe_load_all(operator_objects) if d]
    operator_help = subprocess.run([redstuff, "operator", "--help"],
                                   capture_output=True, text=True, check=True).stdout

    for values_file in sorted((CHART / "ci").glob("*.yaml")):
        values = yaml.safe_load(values_file.read_text()) or {}
        lint = helm_python.lint(str(CHART), values, strict=True)
        serious = [m for m in lint["messages"] if m["severity"] > 1] + lint["errors"]
        if serious:
            fail(f"helm lint with {values_file.name}: {serious}")
        rendered = render(chart, values)
        notes = rendered.pop("redstuff/templates/NOTES.txt", "")
        if "StorageCluster" not in notes:
            fail(f"NOTES.txt with {values_file.name} does not say what to do next")
        docs = [d for text in rendered.values() for d in yaml.safe_load_all(text) if d]
        builtin = [d for d in docs if d["apiVersion"] in BUILTIN_GROUPS]
        target = out / values_file.stem
        target.mkdir(parents=True)
        (target / "builtin.yaml").write_text(yaml.safe_dump_all(builtin))
        # Every rendered object, for kubectl's client dry run (by the caller).
        (out.parent / "chart-all").mkdir(exist_ok=True)
        (out.parent / "chart-all" / values_file.name).write_text(yaml.safe_dump_all(docs))
        kinds = {d["kind"] for d in docs}
        for d in docs:
            labels = d["metadata"].get("labels", {})
            if labels.get("app.kubernetes.io/instance") != "redstuff":
                fail(f"{d['kind']}/{d['metadata']['name']} lacks the release labels")
        expected = rbac_rules(deploy_docs)
        if values.get("operator", {}).get("leaderElection") is False:
            expected = {rule for rule in expected if rule[1] != "leases"}
        if rbac_rules(docs) != expected:
            fail(f"the chart's RBAC with {values_file.name} grants other rights than deploy/10-rbac.yaml: "
                 f"{sorted(rbac_rules(docs) ^ expected)}")
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        if values.get("operator", {}).get("leaderElection") is False \
                and deployment["spec"].get("strategy", {}).get("type") != "Recreate":
            fail(f"{values_file.name}: without leader election the operator must update by Recreate")
        pod = deployment["spec"]["template"]["spec"]
        budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
        replicas = values.get("operator", {}).get("replicas", 2)
        if (replicas > 1) != bool(budgets) or (replicas > 1) != ("topologySpreadConstraints" in pod):
            fail(f"{values_file.name}: {replicas} operator replicas need a disruption budget and a spread "
                 "exactly when there are more than one")
        container = pod["containers"][0]
        check_watched_namespaces(values_file.name, values, docs, container["args"])
        check_image_pulls(values_file.name, values, container["args"])
        check_operator_flags(values_file.name, container["args"], operator_help)
        check_node_policy(values_file.name, values, docs, operator_objects)
        security = container["securityContext"]
        if not (pod["securityContext"]["runAsNonRoot"] and security["readOnlyRootFilesystem"]
                and security["capabilities"]["drop"] == ["ALL"]
                and security["allowPrivilegeEscalation"] is False):
            fail("the operator must run non-root, read-only, without capabilities")
        for d in docs:
            if d["kind"] == "PrometheusRule" and d["spec"] != rules:
                fail("the PrometheusRule differs from files/alerts.rules.yaml")
            if d["kind"] == "ServiceMonitor":
                service = next(s for s in docs if s["kind"] == "Service")
                wanted = d["spec"]["selector"]["matchLabels"]
                if any(service["metadata"]["labels"].get(k) != v for k, v in wanted.items()):
                    fail("the ServiceMonitor does not select the metrics Service")
                if d["spec"]["endpoints"][0]["port"] not in {p["name"] for p in service["spec"]["ports"]}:
                    fail("the ServiceMonitor names a port the Service lacks")
            if d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"]:
                for name, text in d["data"].items():
                    if json.loads(text) != dashboards[name]:
                        fail(f"dashboard ConfigMap {name} differs from dashboards/{name}")
            if d["kind"] == "StorageCluster":
                (target / "cluster").mkdir(exist_ok=True)
                manifest = target / "cluster" / "storagecluster.yaml"
                manifest.write_text(yaml.safe_dump(d))
                objects = subprocess.run([redstuff, "render-cluster", str(manifest),
                                          "--operator-namespace", NAMESPACE],
                                         capture_output=True, text=True)
                if objects.returncode != 0:
                    fail(f"the example StorageCluster is refused: {objects.stderr}")
                (target / "storagecluster-objects.yaml").write_text(objects.stdout)
        print(f"check-chart: {values_file.name}: lint clean, rendered {sorted(kinds)}")

    for invalid in sorted((ROOT / "tests" / "chart" / "invalid").glob("*.yaml")):
        text = invalid.read_text()
        expected = next(l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("# expect:"))
        try:
            render(chart, yaml.safe_load(text) or {})
        except helm_python.HelmError as error:
            if expected not in str(error):
                fail(f"{invalid.name} was refused, but not with {expected!r}: {error}")
            print(f"check-chart: {invalid.name}: refused ({expected})")
            continue
        fail(f"{invalid.name} should have been refused ({expected})")


if __name__ == "__main__":
    main(*sys.argv[1:])
