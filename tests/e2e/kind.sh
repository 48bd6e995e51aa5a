#!/usr/bin/env bash
# End-to-end on kind, for hosted runners with Docker: create a cluster,
# build the images the way scripts/e2e-local does (scripts/build-image
# around the static binary and the probe test server; no Dockerfile
# build), load them, run tests/e2e (which installs the chart with helm
# itself), delete the cluster. The same tests run on the local cluster
# (scripts/e2e-local).
# Needs docker, kind, helm, kubectl, go and cargo, and root (the
# hung-leader scenario signals the operator's process from this host).
# Usage: sudo -E tests/e2e/kind.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

name=${KIND_CLUSTER_NAME:-redstuff-e2e}
work=$(mktemp -d)
cleanup() {
  kind delete cluster --name "$name" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

target=x86_64-unknown-linux-gnu
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" --bin redstuff
strip -o "$work/redstuff" "${CARGO_TARGET_DIR:-target}/$target/release/redstuff"
tag=e2e-$(sha256sum "$work/redstuff" | cut -c1-12)
python3 scripts/build-image --passwd "$work/redstuff" "redstuff:$tag" "$work/redstuff.tar"
read -r probe_ref probe_tar < <(scripts/local-cluster probe-image | tail -n 1)

kind create cluster --name "$name" --kubeconfig "$work/kubeconfig" --wait 120s
export KUBECONFIG=$work/kubeconfig
kind load image-archive "$work/redstuff.tar" --name "$name"
kind load image-archive "$probe_tar" --name "$name"

# The S3 scenario drives the aws cli of scripts/s3-clients' venv.
scripts/s3-clients

# The suite refuses any context but the ones made for it: kind's is
# kind-$name (kind-redstuff-e2e by default).
[ "$name" = redstuff-e2e ] || export REDSTUFF_E2E_CONTEXT="kind-$name"
REDSTUFF_E2E=1 REDSTUFF_E2E_IMAGE="redstuff:$tag" REDSTUFF_E2E_PROBE_IMAGE="$probe_ref" \
  cargo nextest run --locked --test e2e --run-ignored ignored-only --no-capture
