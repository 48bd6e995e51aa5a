# `scripts/local-cluster selftest` (sourced by scripts/local-cluster): proves
# the running cluster end to end with the probe program
# (local-cluster.d/probe) in an image built by scripts/build-image:
# image import, a non-root pod writing a claim of the default
# StorageClass, Service names resolved and reached from other pods, the
# API through the kubernetes Service, and pod traffic to addresses off the
# machine refused.

ST_NS=redstuff-selftest
ST_PASSED=0
ST_FAILED=0

st_check() {
  local what=$1
  shift
  if "$@"; then
    log "selftest ok: $what"
    ST_PASSED=$((ST_PASSED + 1))
  else
    log "selftest FAILED: $what"
    ST_FAILED=$((ST_FAILED + 1))
  fi
}

# client NAME ARG... : a one-shot probe pod; prints its log, fails unless
# it succeeded.
client() {
  local name=$1 i phase
  shift
  local args="" a
  for a in "$@"; do args="$args\"$a\", "; done
  kc apply -f - > /dev/null << EOF
apiVersion: v1
kind: Pod
metadata:
  name: $name
  namespace: $ST_NS
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true}
  containers:
  - name: probe
    image: $PROBE_IMAGE
    imagePullPolicy: Never
    args: [${args%, }]
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
EOF
  for i in $(seq 1 60); do
    phase=$(kc -n "$ST_NS" get pod "$name" -o 'jsonpath={.status.phase}')
    case "$phase" in Succeeded | Failed) break ;; esac
    sleep 1
  done
  { kc -n "$ST_NS" logs "$name" 2>&1; echo; } | sed -e "/^$/d" -e "s/^/  $name: /" >&2
  if [ "$phase" != Succeeded ]; then
    log "  $name: phase ${phase:-unknown}; its events:"
    kc -n "$ST_NS" get events --field-selector "involvedObject.name=$name" 2>&1 | tail -n 8 >&2
    return 1
  fi
}

# client_out NAME PATTERN ARG... : the client succeeded and printed PATTERN.
client_out() {
  local name=$1 pattern=$2
  shift 2
  client "$name" "$@" && kc -n "$ST_NS" logs "$name" | grep -q -- "$pattern"
}

egress_refused() {
  # 203.0.113.1 (TEST-NET-3): a DROP in mangle POSTROUTING (after the
  # filter FORWARD chain) keeps the packet on the machine even if the
  # rule under test failed; it must never see one.
  local before after ok=1 net
  iptables -t mangle -I POSTROUTING -d 203.0.113.1/32 -j DROP
  before=$(iptables -L REDSTUFF-EGRESS -v -x -n | awk '/REJECT/ {print $1}')
  if client egress get http://203.0.113.1:80/; then ok=0; fi
  after=$(iptables -L REDSTUFF-EGRESS -v -x -n | awk '/REJECT/ {print $1}')
  net=$(iptables -t mangle -L POSTROUTING -v -x -n | awk '/DROP/ && /203.0.113.1/ {print $1}')
  iptables -t mangle -D POSTROUTING -d 203.0.113.1/32 -j DROP
  log "  egress: REDSTUFF-EGRESS rejected $((after - before)) packet(s), the safety net saw ${net:-?}"
  [ "$ok" = 1 ] && [ "$after" -gt "$before" ] && [ "$net" = 0 ]
}

port_forward_answers() {
  local pf ok=1 i
  "$KUBECTL" --kubeconfig "$STATE/admin.kubeconfig" --cache-dir "$STATE/kubectl-cache" -n "$ST_NS" port-forward service/probe 18080:8080 \
    > "$STATE/logs/selftest-port-forward.log" 2>&1 &
  pf=$!
  for i in $(seq 1 20); do
    if curl -fsS --max-time 5 http://127.0.0.1:18080/ 2> /dev/null | grep -q '^ok probe-'; then ok=0; break; fi
    sleep 0.5
  done
  kill "$pf" 2> /dev/null
  wait "$pf" 2> /dev/null
  return "$ok"
}

volume_written() {
  local pv path
  pv=$(kc -n "$ST_NS" get pvc data -o 'jsonpath={.spec.volumeName}')
  path=$(kc get pv "$pv" -o 'jsonpath={.spec.hostPath.path}')
  log "  volume $pv at $path: $(stat -c '%U:%G %a' "$path/probe.txt" 2> /dev/null)"
  [ "$(stat -c %u "$path/probe.txt" 2> /dev/null)" = 65532 ]
}

cluster_selftest() {
  cluster_running || die "no cluster is up: scripts/local-cluster up first"
  local probe_bin tar
  probe_bin=$(build_helper probe)
  PROBE_IMAGE=redstuff.local/probe:$(sha256sum "$probe_bin" | cut -c1-12)
  tar=$(image_tar probe "$probe_bin" /usr/local/bin/probe 65532:65532 "$PROBE_IMAGE")
  load_images "$tar"
  kc delete namespace "$ST_NS" --ignore-not-found --wait=true > /dev/null
  sed "s#@PROBE_IMAGE@#$PROBE_IMAGE#g" "$HELPERS/selftest.yaml" | kc apply -f - > /dev/null

  st_check "claim bound by the default StorageClass" \
    kc -n "$ST_NS" wait --for=jsonpath='{.status.phase}'=Bound pvc/data --timeout=60s
  st_check "non-root pod with the claim ready behind a Service" \
    kc -n "$ST_NS" rollout status deployment/probe --timeout=120s
  st_check "Service reached by its short name" client_out http "ok probe-" get http://probe:8080/
  st_check "Service reached by its full name" \
    client_out http-fqdn "ok probe-" get http://probe.$ST_NS.svc.cluster.local:8080/
  st_check "the pod resolves kubernetes.default.svc.cluster.local" \
    client_out resolve "198.19.0.1" get "http://probe:8080/resolve?name=kubernetes.default.svc.cluster.local"
  st_check "the pod resolved its own Service name at start" \
    bash -c "$(printf '%q ' "$KUBECTL" --kubeconfig "$STATE/admin.kubeconfig" --cache-dir "$STATE/kubectl-cache" -n "$ST_NS" logs deployment/probe) | grep -q 'resolve probe.$ST_NS.svc.cluster.local: 198.19'"
  st_check "kubectl port-forward to the Service answers on 127.0.0.1" port_forward_answers
  st_check "the pod writes its claim as UID 65532" client_out write "uid 65532" get http://probe:8080/write
  st_check "the claim's directory holds the file, owned 65532" volume_written
  st_check "the API answers through the kubernetes Service from a pod" \
    client_out api '"gitVersion": "v1' get https://kubernetes.default.svc/version
  st_check "RBAC is enforced: a pod's ServiceAccount may not list Secrets" \
    bash -c "! $(printf '%q ' "$KUBECTL" --kubeconfig "$STATE/admin.kubeconfig" --cache-dir "$STATE/kubectl-cache") auth can-i list secrets --as=system:serviceaccount:$ST_NS:default -A > /dev/null"
  st_check "pod traffic to an address off the machine is refused" egress_refused
  kc delete namespace "$ST_NS" --wait=true --timeout=120s > /dev/null
  st_check "the namespace's volume is deleted with its claim" bash -c '! ls /tmp/hostpath_pv/* > /dev/null 2>&1'
  echo "local-cluster selftest: $ST_PASSED passed, $ST_FAILED failed"
  [ "$ST_FAILED" = 0 ]
}
