#!/usr/bin/env python3
"""An empty Kubernetes API server for kubectl's client-side dry run.

`kubectl apply --dry-run=client` needs an API server even though it
changes nothing: it maps every kind to its resource through discovery and
asks whether each object exists. This server answers discovery for the
API groups redstuff ships objects of, holds no objects (every object GET
is 404 NotFound), and refuses every write, so kubectl runs its whole
client-side path (decode each document, map its kind, compute the create)
and nothing else.

Usage: empty_apiserver.py KUBECONFIG_OUT
It binds 127.0.0.1 on a port the OS chooses, writes a kubeconfig naming
it to KUBECONFIG_OUT, prints "ready" and serves until it is terminated.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# group -> version -> [(plural, kind, namespaced)]
RESOURCES = {
    "": {
        "v1": [
            ("namespaces", "Namespace", False),
            ("services", "Service", True),
            ("serviceaccounts", "ServiceAccount", True),
            ("configmaps", "ConfigMap", True),
            ("secrets", "Secret", True),
            ("pods", "Pod", True),
            ("persistentvolumeclaims", "PersistentVolumeClaim", True),
        ]
    },
    "apps": {"v1": [("deployments", "Deployment", True)]},
    "policy": {"v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)]},
    "networking.k8s.io": {"v1": [("networkpolicies", "NetworkPolicy", True)]},
    "rbac.authorization.k8s.io": {
        "v1": [
            ("clusterroles", "ClusterRole", False),
            ("clusterrolebindings", "ClusterRoleBinding", False),
            ("roles", "Role", True),
            ("rolebindings", "RoleBinding", True),
        ]
    },
    "apiextensions.k8s.io": {
        "v1": [("customresourcedefinitions", "CustomResourceDefinition", False)]
    },
    # Served once crds/ (and the Prometheus Operator's CRDs) are installed.
    "redstuff.dev": {
        "v1alpha1": [
            ("storageclusters", "StorageCluster", True),
            ("blobs", "Blob", True),
        ]
    },
    "monitoring.coreos.com": {
        "v1": [
            ("servicemonitors", "ServiceMonitor", True),
            ("podmonitors", "PodMonitor", True),
            ("prometheusrules", "PrometheusRule", True),
        ]
    },
}

VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def group_version_path(group, version):
    return f"/api/{version}" if group == "" else f"/apis/{group}/{version}"


def discovery():
    """Every discovery path and its answer."""
    answers = {
        "/version": {"major": "1", "minor": "33", "gitVersion": "v1.33.0"},
        "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
        "/apis": {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": group,
                    "versions": [
                        {"groupVersion": f"{group}/{v}", "version": v} for v in versions
                    ],
                    "preferredVersion": {
                        "groupVersion": f"{group}/{next(iter(versions))}",
                        "version": next(iter(versions)),
                    },
                }
                for group, versions in RESOURCES.items()
                if group
            ],
        },
    }
    for group, versions in RESOURCES.items():
        for version, resources in versions.items():
            answers[group_version_path(group, version)] = {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": [
                    {
                        "name": plural,
                        "singularName": kind.lower(),
                        "namespaced": namespaced,
                        "kind": kind,
                        "verbs": VERBS,
                    }
                    for plural, kind, namespaced in resources
                ],
            }
    return answers


ANSWERS = discovery()


def status(code, reason, message):
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "code": code,
        "message": message,
    }


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path in ANSWERS:
            self.answer(200, ANSWERS[path])
        else:
            self.answer(404, status(404, "NotFound", f"{path} not found: this server holds no objects"))

    def refuse(self):
        self.answer(405, status(405, "MethodNotAllowed", "this server is read-only: use --dry-run=client"))

    do_POST = do_PUT = do_PATCH = do_DELETE = refuse


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    with open(sys.argv[1], "w") as out:
        out.write(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: empty, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
            "users: [{name: empty, user: {}}]\n"
            "contexts: [{name: empty, context: {cluster: empty, user: empty, namespace: default}}]\n"
            "current-context: empty\n"
        )
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
