# Starts and stops the local cluster (sourced by scripts/local-cluster).
#
# Everything lives under $STATE: pki/ (certificates), *.kubeconfig,
# config/, logs/, pids/ ("PID STARTTIME" per process started), etcd/,
# containerd/ (root, state, socket, runc root), kubelet/ (root dir, pod
# logs), cni/ (config, IPAM), baseline/ (the machine as `up` found it, so
# `down` can restore it). Pods' cgroups live under /redstuff-cluster in
# every cgroup v1 hierarchy. Paths outside $STATE that the components
# insist on (the shims' /run/containerd/s, the CNI cache /var/lib/cni,
# /var/log/containers, /run/netns, the host-path provisioner's
# /tmp/hostpath_pv) are recorded when `up` creates them and removed by
# `down`.

NODE_NAME=redstuff-node
NODE_IP=198.18.0.1
BRIDGE=redstuff0
CLUSTER_RANGE=198.18.0.0/15
POD_CIDR=198.18.0.0/16
NODE_POD_CIDR=198.18.0.0/24
SERVICE_CIDR=198.19.0.0/16
API_SERVICE_IP=198.19.0.1
DNS_SERVICE_IP=198.19.0.10
API_PORT=6443
CGROUP_ROOT=redstuff-cluster
OURS_CHAINS='^(KUBE-|CNI-|REDSTUFF-)'
# Machine paths the components create outside $STATE.
OUTSIDE_PATHS="/run/containerd /var/lib/cni /var/log/containers /var/log/pods /run/netns /tmp/hostpath_pv
  /run/xtables.lock /var/lib/kubelet /etc/cni /opt/cni /opt/containerd /var/lib/containerd /etc/kubernetes"
# Kernel settings the kubelet, kube-proxy or CNI may change.
SYSCTLS="net.ipv4.ip_forward net.ipv4.conf.all.forwarding net.ipv4.conf.default.forwarding
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait vm.overcommit_memory vm.panic_on_oom kernel.panic
  kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"

K8S_BIN=""
KUBECTL=""

kubectl_path() {
  local built
  built=$(product_dir kubernetes "$KUBERNETES_VERSION")/bin/kubectl
  if [ -x "$built" ]; then
    echo "$built"
  elif command -v kubectl > /dev/null 2>&1; then
    command -v kubectl
  else
    build_kubernetes >&2
    echo "$built"
  fi
}

kc() { "$KUBECTL" --kubeconfig "$STATE/admin.kubeconfig" --cache-dir "$STATE/kubectl-cache" --request-timeout=20s "$@"; }
ctr_() { ctr --address "$STATE/containerd/containerd.sock" -n k8s.io "$@"; }

ensure_packages() {
  local missing="" need=0 c
  for c in containerd containerd-shim-runc-v2 runc iptables ip6tables conntrack nft openssl curl; do
    command -v "$c" > /dev/null 2>&1 || need=1
  done
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] || need=1
  [ "$need" = 0 ] && return 0
  for c in $DEBIAN_PACKAGES nftables openssl curl; do
    dpkg-query -W -f='${Status}' "$c" 2> /dev/null | grep -q 'install ok installed' || missing="$missing $c"
  done
  log "installing Debian packages:$missing"
  # No service may start on its own (no systemd here; policy-rc.d for
  # machines that have one): the cluster starts its own containerd.
  local policy=/usr/sbin/policy-rc.d added=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && added=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq > /dev/null
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing > /dev/null
  [ "$added" = 1 ] && rm -f "$policy"
  return 0
}

# ---- processes -------------------------------------------------------

proc_start_time() { awk '{print $22}' "/proc/$1/stat" 2> /dev/null; }

# start_daemon NAME COMMAND... : runs COMMAND in its own session, output to
# logs/NAME.log, and records its PID and start time in pids/NAME.pid.
start_daemon() {
  local name=$1
  shift
  setsid "$@" > "$STATE/logs/$name.log" 2>&1 < /dev/null &
  local pid=$!
  echo "$pid $(proc_start_time "$pid")" > "$STATE/pids/$name.pid"
}

# pid_of NAME : the recorded PID if that process still runs (same start
# time, so a reused PID is never taken for ours).
pid_of() {
  local f=$STATE/pids/$1.pid pid start
  [ -f "$f" ] || return 1
  read -r pid start < "$f" || return 1
  alive "$pid" "$start" && echo "$pid"
}

# alive PID START : that process runs (not a zombie waiting to be reaped).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2> /dev/null) || return 1
  [ "$(echo "$stat" | awk '{print $22}')" = "$2" ] && [ "$(echo "$stat" | awk '{print $3}')" != Z ]
}

# stop_daemons NAME... : SIGTERM to each recorded process, then wait up to
# 10 s for all, then SIGKILL what is left.
stop_daemons() {
  local name pid start t0 i left targets=""
  t0=$(date +%s%N)
  for name in "$@"; do
    [ -f "$STATE/pids/$name.pid" ] || continue
    read -r pid start < "$STATE/pids/$name.pid" || continue
    alive "$pid" "$start" || continue
    kill -TERM "$pid" 2> /dev/null || true
    targets="$targets $name:$pid:$start"
  done
  [ -n "$targets" ] || return 0
  for i in $(seq 1 100); do
    left=""
    for t in $targets; do
      IFS=: read -r name pid start <<< "$t"
      alive "$pid" "$start" && left="$left $t"
    done
    [ -z "$left" ] && break
    sleep 0.1
  done
  for t in $left; do
    IFS=: read -r name pid start <<< "$t"
    log "$name (PID $pid) did not stop on SIGTERM; SIGKILL"
    kill -KILL "$pid" 2> /dev/null || true
  done
  [ -z "${REDSTUFF_TRACE:-}" ] || log "stopped$(echo " $targets" | sed 's/:[0-9]*:[0-9]*//g') in $((($(date +%s%N) - t0) / 1000000)) ms"
}

# wait_for WHAT SECONDS DAEMON COMMAND... : until COMMAND succeeds; fails
# early when DAEMON (a recorded name, or -) died.
wait_for() {
  local what=$1 timeout=$2 daemon=$3 deadline
  shift 3
  deadline=$(($(date +%s) + timeout))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if "$@" > /dev/null 2>&1; then return 0; fi
    if [ "$daemon" != - ] && ! pid_of "$daemon" > /dev/null; then
      tail -n 30 "$STATE/logs/$daemon.log" >&2 || true
      die "$daemon exited while waiting for $what (log: $STATE/logs/$daemon.log)"
    fi
    sleep 1
  done
  [ "$daemon" = - ] || tail -n 30 "$STATE/logs/$daemon.log" >&2 || true
  die "timed out after ${timeout}s waiting for $what"
}

# ---- baseline --------------------------------------------------------

record_baseline() {
  local b=$STATE/baseline p k
  mkdir -p "$b"
  for p in $OUTSIDE_PATHS; do
    if [ -e "$p" ] || [ -L "$p" ]; then echo "$p"; fi
  done > "$b/paths-existing"
  if [ -d /tmp/hostpath_pv ]; then ls -A /tmp/hostpath_pv; fi > "$b/hostpath_pv"
  for k in $SYSCTLS; do
    if [ -e "/proc/sys/${k//.//}" ]; then echo "$k=$(sysctl -n "$k")"; fi
  done > "$b/sysctl"
  iptables-save > "$b/iptables" 2> /dev/null || true
  ip6tables-save > "$b/ip6tables" 2> /dev/null || true
  nft list tables > "$b/nft-tables" 2> /dev/null || true
  ip netns list > "$b/netns" 2> /dev/null || true
  ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' > "$b/links"
  findmnt -rn -o TARGET > "$b/mounts"
}

# ---- certificates and configs ---------------------------------------

# cert NAME CN O [SANS] : a key and a certificate signed by the cluster CA.
cert() {
  local name=$1 cn=$2 o=$3 sans=${4:-} pki=$STATE/pki subj
  subj="/CN=$cn"
  [ -n "$o" ] && subj="/O=$o$subj"
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/$name.key" 2> /dev/null
  openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2> /dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$sans" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$sans"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } > "$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2> /dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

# kubeconfig NAME CERT : a kubeconfig for client certificate pki/CERT.
kubeconfig() {
  local name=$1 c=$2 pki=$STATE/pki
  cat > "$STATE/$name.kubeconfig" << EOF
apiVersion: v1
kind: Config
clusters:
- name: redstuff-local
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority-data: $(base64 -w0 < "$pki/ca.crt")
users:
- name: $c
  user:
    client-certificate-data: $(base64 -w0 < "$pki/$c.crt")
    client-key-data: $(base64 -w0 < "$pki/$c.key")
contexts:
- name: redstuff-local
  context:
    cluster: redstuff-local
    user: $c
current-context: redstuff-local
EOF
  chmod 600 "$STATE/$name.kubeconfig"
}

make_certs() {
  local pki=$STATE/pki
  mkdir -p "$pki"
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/ca.key" 2> /dev/null
  openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=redstuff-local-ca" -days 30 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$pki/ca.crt" 2> /dev/null
  cert apiserver kube-apiserver "" \
    "IP:$NODE_IP,IP:127.0.0.1,IP:$API_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert admin kubernetes-admin system:masters
  cert controller-manager system:kube-controller-manager ""
  cert scheduler system:kube-scheduler ""
  cert kube-proxy system:kube-proxy ""
  cert kubelet "system:node:$NODE_NAME" system:nodes
  cert kubelet-serving "system:node:$NODE_NAME" system:nodes "IP:$NODE_IP,DNS:$NODE_NAME"
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/sa.key" 2> /dev/null
  openssl ec -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2> /dev/null
  chmod 600 "$pki"/*.key
  kubeconfig admin admin
  kubeconfig controller-manager controller-manager
  kubeconfig scheduler scheduler
  kubeconfig kube-proxy kube-proxy
  kubeconfig kubelet kubelet
}

# render TEMPLATE OUT : @NAME@ placeholders from the shell variables.
render() {
  sed -e "s#@STATE@#$STATE#g" -e "s#@NODE_NAME@#$NODE_NAME#g" -e "s#@NODE_IP@#$NODE_IP#g" \
    -e "s#@BRIDGE@#$BRIDGE#g" -e "s#@POD_CIDR@#$POD_CIDR#g" -e "s#@NODE_POD_CIDR@#$NODE_POD_CIDR#g" \
    -e "s#@SERVICE_CIDR@#$SERVICE_CIDR#g" -e "s#@DNS_SERVICE_IP@#$DNS_SERVICE_IP#g" \
    -e "s#@CGROUP_ROOT@#$CGROUP_ROOT#g" -e "s#@PAUSE_IMAGE@#$PAUSE_IMAGE#g" \
    -e "s#@COREDNS_IMAGE@#$COREDNS_IMAGE#g" "$HELPERS/$1" > "$2"
}

write_configs() {
  mkdir -p "$STATE/config" "$STATE/cni/net.d" "$STATE/cni/ipam" "$STATE/kubelet/pod-logs" "$STATE/containerd"
  render containerd.toml "$STATE/config/containerd.toml"
  render cni.conflist "$STATE/cni/net.d/10-redstuff.conflist"
  render kubelet.yaml "$STATE/config/kubelet.yaml"
  render kube-proxy.yaml "$STATE/config/kube-proxy.yaml"
  render kube-scheduler.yaml "$STATE/config/kube-scheduler.yaml"
  render bootstrap.yaml "$STATE/config/bootstrap.yaml"
  # The nodes' upstream resolver: none (pods resolve cluster.local only).
  echo "# redstuff local cluster: no upstream DNS" > "$STATE/config/resolv.conf"
}

# ---- images ----------------------------------------------------------

# image_tar NAME BINARY PATH USER REF : an image tar cached by content.
image_tar() {
  local name=$1 binary=$2 path=$3 user=$4 ref=$5 key out
  key=$( (sha256sum "$binary" "$SCRIPTS/build-image" | cut -c1-64; echo "$path $user $ref") | sha256sum | cut -c1-12)
  out=$CACHE/images/$name-$key.tar
  if [ ! -f "$out" ]; then
    mkdir -p "$CACHE/images"
    python3 "$SCRIPTS/build-image" --path "$path" --user "$user" "$binary" "$ref" "$out.part" 2> /dev/null
    mv "$out.part" "$out"
  fi
  echo "$out"
}

prepare_images() {
  local pause_bin coredns_bin h
  pause_bin=$(build_helper pause)
  h=$(sha256sum "$pause_bin" | cut -c1-12)
  PAUSE_IMAGE=redstuff.local/pause:$h
  PAUSE_TAR=$(image_tar pause "$pause_bin" /pause 65535:65535 "$PAUSE_IMAGE")
  coredns_bin=$(product_dir coredns "$COREDNS_VERSION")/bin/coredns
  COREDNS_IMAGE=redstuff.local/coredns:$COREDNS_VERSION
  COREDNS_TAR=$(image_tar coredns "$coredns_bin" /coredns 65532:65532 "$COREDNS_IMAGE")
}

load_images() {
  [ -S "$STATE/containerd/containerd.sock" ] || die "no cluster is up (no containerd socket under $STATE)"
  local t
  for t in "$@"; do
    [ -f "$t" ] || die "no image tar $t"
    ctr_ images import --platform linux/amd64 "$t" > "$STATE/logs/import.log" 2>&1 \
      || { cat "$STATE/logs/import.log" >&2; die "ctr images import $t failed"; }
    log "imported $(sed -n 's/^unpacking \([^ ]*\) .*/\1/p' "$STATE/logs/import.log" | tr '\n' ' ')"
  done
}

# ---- host setup ------------------------------------------------------

# The cgroup hierarchies; with "all", the cgroup v2 one of a hybrid
# mount too (runc makes the pods' cgroups there as well).
cgroup_dirs() {
  local d
  for d in /sys/fs/cgroup/*/; do
    d=${d%/}
    if [ "$d" = /sys/fs/cgroup/unified ] && [ "${1:-}" != all ]; then continue; fi
    if [ -f "$d/cgroup.procs" ]; then echo "$d"; fi
  done
}

setup_host() {
  local d
  # Pod cgroups under /redstuff-cluster in every v1 hierarchy.
  for d in $(cgroup_dirs); do
    mkdir -p "$d/$CGROUP_ROOT"
    if [ -f "$d/cpuset.cpus" ]; then
      cat "$d/cpuset.cpus" > "$d/$CGROUP_ROOT/cpuset.cpus"
      cat "$d/cpuset.mems" > "$d/$CGROUP_ROOT/cpuset.mems"
    fi
  done
  # The node's address lives on the pods' bridge (created here, the CNI
  # bridge plugin reuses it), so nothing of the cluster uses the host's
  # own (maybe private-range) address.
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # The whole test range (Service addresses included, which kube-proxy
  # rewrites to pods) is on the bridge: an address nobody holds goes
  # nowhere, never out through the default route.
  ip route add "$CLUSTER_RANGE" dev "$BRIDGE" proto static
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
  # Pod traffic may only go to the test range or the host itself.
  iptables -N REDSTUFF-EGRESS
  iptables -A REDSTUFF-EGRESS -d "$CLUSTER_RANGE" -j RETURN
  iptables -A REDSTUFF-EGRESS -j REJECT --reject-with icmp-net-prohibited
  iptables -I FORWARD 1 -s "$CLUSTER_RANGE" -m comment --comment "redstuff local cluster: pods stay on the machine" -j REDSTUFF-EGRESS
  iptables -I FORWARD 1 -i "$BRIDGE" ! -o "$BRIDGE" -m comment --comment "redstuff local cluster: pods stay on the machine" -j REDSTUFF-EGRESS
  mkdir -p /tmp/hostpath_pv
}

# The host-path provisioner creates volumes root-owned with mode 0750;
# pods running as a non-root user (fsGroup does not apply to hostPath)
# could not write them. This loop opens each new volume directory.
HOSTPATH_PERMISSIONS_LOOP='while :; do
  find /tmp/hostpath_pv -mindepth 1 -maxdepth 1 -type d ! -perm -0777 -exec chmod 0777 {} + 2>/dev/null
  sleep 0.5
done'

api_ready() { kc get --raw /readyz; }
node_ready() {
  [ "$(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
coredns_ready() {
  [ "$(kc -n kube-system get daemonset coredns -o 'jsonpath={.status.numberReady}')" = 1 ]
}
dns_answers() {
  local probe
  probe=$(build_helper probe)
  [ "$("$probe" dig kubernetes.default.svc.cluster.local "$DNS_SERVICE_IP:53")" = "$API_SERVICE_IP" ]
}

start_components() {
  local b=$K8S_BIN etcd
  etcd=$(product_dir etcd "$ETCD_VERSION")/bin/etcd
  start_daemon etcd "$etcd" --name redstuff --data-dir "$STATE/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster redstuff=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
    --unsafe-no-fsync --log-level warn
  wait_for "etcd" 30 etcd curl -fsS http://127.0.0.1:2381/health

  local pki=$STATE/pki
  start_daemon kube-apiserver "$b/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$API_PORT" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --client-ca-file="$pki/ca.crt" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --allow-privileged=true --profiling=false --event-ttl=1h --v=1
  wait_for "the API server" 90 kube-apiserver api_ready

  start_daemon containerd containerd --config "$STATE/config/containerd.toml"
  wait_for "containerd" 30 containerd ctr_ version
  load_images "$PAUSE_TAR" "$COREDNS_TAR"

  start_daemon kube-controller-manager "$b/kube-controller-manager" \
    --kubeconfig="$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$STATE/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --allocate-node-cidrs=true --cluster-cidr="$POD_CIDR" --node-cidr-mask-size=24 \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --enable-hostpath-provisioner=true --controllers='*,bootstrapsigner,tokencleaner' --v=1
  start_daemon kube-scheduler "$b/kube-scheduler" --config="$STATE/config/kube-scheduler.yaml" \
    --authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE/scheduler.kubeconfig" --bind-address=127.0.0.1 --v=1
  start_daemon hostpath-permissions bash -c "$HOSTPATH_PERMISSIONS_LOOP"

  start_daemon kubelet "$b/kubelet" --config="$STATE/config/kubelet.yaml" \
    --kubeconfig="$STATE/kubelet.kubeconfig" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
    --root-dir="$STATE/kubelet" --cert-dir="$STATE/kubelet/pki" --v=1
  start_daemon kube-proxy "$b/kube-proxy" --config="$STATE/config/kube-proxy.yaml" \
    --hostname-override="$NODE_NAME" --v=1

  # Cluster add-ons: the default StorageClass, CoreDNS.
  wait_for "the default ServiceAccount" 60 kube-controller-manager kc -n default get serviceaccount default
  kc apply -f "$STATE/config/bootstrap.yaml" > "$STATE/logs/bootstrap.log"
}

cluster_running() {
  pid_of kube-apiserver > /dev/null && pid_of kubelet > /dev/null && [ -f "$STATE/up.complete" ] \
    && KUBECTL=$(kubectl_path) && api_ready > /dev/null 2>&1
}

cluster_up() {
  local t0
  t0=$(date +%s)
  if cluster_running; then
    log "already up (scripts/local-cluster down stops it)"
    [ $# -eq 0 ] || load_images "$@"
    echo "$STATE/admin.kubeconfig"
    return 0
  fi
  if [ -e "$STATE" ]; then
    log "$STATE is left from an earlier run: taking it down first"
    cluster_down
  fi

  stage_begin
  ensure_packages
  build_all
  K8S_BIN=$(product_dir kubernetes "$KUBERNETES_VERSION")/bin
  KUBECTL=$(kubectl_path)
  prepare_images
  stage_end build

  stage_begin
  mkdir -p "$STATE/logs" "$STATE/pids"
  record_baseline
  trap 'up_exit $?' EXIT
  make_certs
  write_configs
  stage_end certs

  stage_begin
  setup_host
  start_components
  stage_end start

  stage_begin
  wait_for "node $NODE_NAME Ready" 180 kubelet node_ready
  wait_for "CoreDNS" 180 kubelet coredns_ready
  wait_for "DNS answers for kubernetes.default.svc.cluster.local" 60 kube-proxy dns_answers
  stage_end ready
  [ $# -eq 0 ] || load_images "$@"
  trap - EXIT
  touch "$STATE/up.complete"
  log "up in $(($(date +%s) - t0)) s: node $NODE_NAME ($KUBERNETES_VERSION), kubectl $KUBECTL"
  log "helm: scripts/local-cluster helm-path; images: scripts/local-cluster load-image IMAGE.tar"
  echo "$STATE/admin.kubeconfig"
}

up_exit() {
  trap - EXIT
  [ "$1" = 0 ] && return 0
  log "up failed; logs are in $STATE/logs (kept while REDSTUFF_KEEP_FAILED=1, else taken down now)"
  if [ "${REDSTUFF_KEEP_FAILED:-}" != 1 ]; then
    local f
    for f in "$STATE"/logs/*.log; do
      [ -s "$f" ] || continue
      echo "---- $(basename "$f") (last lines)" >&2
      tail -n 15 "$f" >&2
    done
    cluster_down
  fi
  exit "$1"
}

cluster_status() {
  local n
  [ -d "$STATE/pids" ] || { echo "no cluster (no $STATE)"; return 0; }
  for n in "$STATE"/pids/*.pid; do
    n=$(basename "$n" .pid)
    if pid_of "$n" > /dev/null; then echo "$n: running (PID $(pid_of "$n"))"; else echo "$n: not running"; fi
  done
  [ -f "$STATE/up.complete" ] && echo "kubeconfig: $STATE/admin.kubeconfig"
  return 0
}

# ---- teardown --------------------------------------------------------

# remove_chains IPTABLES : delete the rules jumping to KUBE-*, CNI-*,
# REDSTUFF-* chains that were not there before `up`, then the chains.
remove_chains() {
  local ipt=$1 save=$2 table rules line chain baseline_chains
  command -v "$ipt" > /dev/null 2>&1 || return 0
  baseline_chains=$(sed -n 's/^:\([^ ]*\) .*/\1/p' "$save" 2> /dev/null | grep -E "$OURS_CHAINS" || true)
  for table in filter nat mangle raw security; do
    rules=$("$ipt" -w -t "$table" -S 2> /dev/null) || continue
    ours() { grep -E "$OURS_CHAINS" | grep -vxF -e "${baseline_chains:-/no-such-chain/}" || true; }
    local chains
    chains=$(echo "$rules" | sed -n 's/^-N \([^ ]*\)$/\1/p' | ours)
    [ -z "$chains" ] && continue
    # Rules in other chains that jump to ours.
    echo "$rules" | grep '^-A ' | while read -r line; do
      chain=$(echo "$line" | awk '{print $2}')
      if echo "$chains" | grep -qxF "$chain"; then continue; fi
      local target
      target=$(echo "$line" | sed -n 's/.* -j \([^ ]*\).*/\1/p')
      if [ -n "$target" ] && echo "$chains" | grep -qxF "$target"; then
        eval "$ipt -w -t $table ${line/#-A/-D}" 2> /dev/null || true
      fi
    done
    for chain in $chains; do "$ipt" -w -t "$table" -F "$chain" 2> /dev/null || true; done
    for chain in $chains; do "$ipt" -w -t "$table" -X "$chain" 2> /dev/null || true; done
  done
}

# Tables that iptables-nft created and that hold no rule any more.
remove_empty_nft_tables() {
  command -v nft > /dev/null 2>&1 || return 0
  local t
  nft list tables 2> /dev/null | while read -r t; do
    grep -qxF "$t" "$STATE/baseline/nft-tables" 2> /dev/null && continue
    # shellcheck disable=SC2086
    if ! nft list $t 2> /dev/null | grep -vqE '^\s*(table |chain |type |policy |\}|$)'; then
      # shellcheck disable=SC2086
      nft delete $t 2> /dev/null || true
    fi
  done
}

kill_cgroup_processes() {
  local d i pids
  for i in 1 2 3 4 5 6 7 8 9 10; do
    pids=""
    for d in $(cgroup_dirs all); do
      [ -d "$d/$CGROUP_ROOT" ] || continue
      pids="$pids $(find "$d/$CGROUP_ROOT" -name cgroup.procs -exec cat {} + 2> /dev/null | tr '\n' ' ')"
    done
    pids=$(echo "$pids" | tr ' ' '\n' | { grep -E '^[0-9]+$' || true; } | sort -u | tr '\n' ' ')
    [ -z "${pids// /}" ] && return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2> /dev/null || true
    sleep 0.5
  done
  log "warning: processes left in the pod cgroups: $pids"
}

remove_cgroups() {
  local d
  for d in $(cgroup_dirs all); do
    [ -d "$d/$CGROUP_ROOT" ] || continue
    find "$d/$CGROUP_ROOT" -depth -type d -exec rmdir {} \; 2> /dev/null || true
    [ -d "$d/$CGROUP_ROOT" ] && log "warning: could not remove $d/$CGROUP_ROOT"
  done
  return 0
}

kill_shims() {
  local f pid
  [ -d "$STATE/containerd/state" ] || return 0
  find "$STATE/containerd/state" -name shim.pid 2> /dev/null | while read -r f; do
    pid=$(cat "$f" 2> /dev/null)
    [ -n "$pid" ] && grep -q containerd-shim "/proc/$pid/cmdline" 2> /dev/null && kill -KILL "$pid" 2> /dev/null
  done
  return 0
}

# Every mount below DIR, deepest first.
unmount_below() {
  local dir=$1 m
  findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d "/") == 1 || $0 == d' | sort -r | while read -r m; do
    m=$(printf '%b' "$m")
    umount "$m" 2> /dev/null || umount -l "$m" 2> /dev/null || log "warning: could not unmount $m"
  done
}

cluster_down() {
  local t0 crictl
  t0=$(date +%s)
  # Best effort from here on: every step runs even when one fails.
  set +e
  if [ ! -d "$STATE" ]; then
    # Only what is unmistakably ours.
    kill_cgroup_processes
    remove_cgroups
    ip link show "$BRIDGE" > /dev/null 2>&1 && ip link delete "$BRIDGE"
    ip route del "$CLUSTER_RANGE" dev "$BRIDGE" 2> /dev/null || true
    log "no cluster state in $STATE: nothing to stop"
    return 0
  fi
  stop_daemons kube-proxy kube-scheduler kube-controller-manager hostpath-permissions kubelet
  # Pods: stopped and removed through the CRI, so the CNI plugins release
  # their addresses and containerd removes the netns and mounts.
  crictl=$(product_dir cri-tools "$CRI_TOOLS_VERSION")/bin/crictl
  if pid_of containerd > /dev/null && [ -x "$crictl" ]; then
    timeout 60 "$crictl" --runtime-endpoint "unix://$STATE/containerd/containerd.sock" --timeout 20s rmp -a -f \
      > "$STATE/logs/crictl-rmp.log" 2>&1 || log "crictl rmp failed (see $STATE/logs/crictl-rmp.log); killing"
  fi
  kill_cgroup_processes
  stop_daemons containerd
  kill_shims
  stop_daemons kube-apiserver
  stop_daemons etcd
  # Anything else we recorded.
  local n
  for n in "$STATE"/pids/*.pid; do
    [ -f "$n" ] && stop_daemons "$(basename "$n" .pid)"
  done

  unmount_below "$STATE"
  unmount_below /run/containerd
  local ns
  for ns in $(ip netns list 2> /dev/null | awk '{print $1}'); do
    grep -q "^$ns\b" "$STATE/baseline/netns" 2> /dev/null && continue
    case "$ns" in cni-*) ip netns delete "$ns" 2> /dev/null || log "warning: could not delete netns $ns" ;; esac
  done
  unmount_below /run/netns

  local l
  for l in $(ip -o link show master "$BRIDGE" 2> /dev/null | awk -F': ' '{print $2}' | sed 's/@.*//'); do
    ip link delete "$l" 2> /dev/null || true
  done
  ip link show "$BRIDGE" > /dev/null 2>&1 && ip link delete "$BRIDGE"
  ip route del "$CLUSTER_RANGE" dev "$BRIDGE" 2> /dev/null || true

  remove_chains iptables "$STATE/baseline/iptables"
  remove_chains ip6tables "$STATE/baseline/ip6tables"
  remove_empty_nft_tables
  if command -v conntrack > /dev/null 2>&1; then
    conntrack -D -s 198.18.0.0/15 > /dev/null 2>&1 || true
    conntrack -D -d 198.18.0.0/15 > /dev/null 2>&1 || true
  fi

  local kv
  if [ -f "$STATE/baseline/sysctl" ]; then
    while read -r kv; do
      [ "$(sysctl -n "${kv%%=*}" 2> /dev/null)" = "${kv#*=}" ] || sysctl -qw "$kv" 2> /dev/null || true
    done < "$STATE/baseline/sysctl"
  fi

  remove_cgroups
  local p
  if [ -f "$STATE/baseline/paths-existing" ]; then
    if grep -qxF /tmp/hostpath_pv "$STATE/baseline/paths-existing"; then
      # Only the volumes this cluster made.
      for p in /tmp/hostpath_pv/*; do
        [ -e "$p" ] || continue
        grep -qxF "$(basename "$p")" "$STATE/baseline/hostpath_pv" || rm -rf "$p"
      done
    fi
    for p in $OUTSIDE_PATHS; do
      grep -qxF "$p" "$STATE/baseline/paths-existing" && continue
      if [ -e "$p" ] || [ -L "$p" ]; then
        unmount_below "$p"
        rm -rf "$p"
      fi
    done
  fi
  rm -rf "$STATE"
  log "down in $(($(date +%s) - t0)) s"
}
