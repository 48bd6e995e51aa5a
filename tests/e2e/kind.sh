#!/usr/bin/env bash
# End-to-end on kind: create a cluster, build the image, load it, install
# the Helm chart, run tests/e2e against it, delete the cluster.
# Needs docker, kind, helm, kubectl and cargo. Usage: tests/e2e/kind.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

name=${KIND_CLUSTER_NAME:-redstuff-e2e}
image=redstuff:e2e
kubeconfig=$(mktemp)
cleanup() {
  kind delete cluster --name "$name" >/dev/null 2>&1 || true
  rm -f "$kubeconfig"
}
trap cleanup EXIT

kind create cluster --name "$name" --kubeconfig "$kubeconfig" --wait 120s
export KUBECONFIG=$kubeconfig

docker build -t "$image" .
kind load docker-image "$image" --name "$name"

helm install redstuff charts/redstuff \
  --namespace redstuff-system --create-namespace \
  --set operator.image.repository=redstuff --set operator.image.tag=e2e \
  --set operator.image.pullPolicy=Never \
  --wait --timeout 5m

# The test runs against whatever KUBECONFIG names; the chart installed
# the CRDs and the operator already.
REDSTUFF_E2E_OPERATOR_INSTALLED=1 REDSTUFF_E2E_IMAGE=$image \
  cargo nextest run --locked --test e2e --no-capture
