# Builds the local cluster's binaries from Go modules (sourced by
# scripts/local-cluster). Every product is built in a small wrapper module
# of its own under $CACHE/src/, and its binaries land in a directory keyed
# by version under $CACHE; a `.complete` file marks a finished build, so a
# warm run builds nothing. Builds run under `nice -n 19` (the machine's two
# cores are shared with other builds).

# go env for every build: static binaries, no VCS stamping, the module
# proxy as configured on the machine.
go_env() {
  env CGO_ENABLED=0 GOFLAGS=-buildvcs=false "$@"
}

# build_in_module DIR OUT LDFLAGS PACKAGE... : go build the packages of a
# wrapper module DIR into OUT (a directory).
build_in_module() {
  local dir=$1 out=$2 ldflags=$3
  shift 3
  ( cd "$dir" && go_env nice -n 19 go build -trimpath -ldflags "-s -w $ldflags" -o "$out/" "$@" )
}

# write_tools FILE PACKAGE... : a tools.go importing main packages so that
# `go mod tidy` keeps their modules (the file is never compiled).
write_tools() {
  local file=$1
  shift
  {
    echo '//go:build tools'
    echo
    echo 'package tools'
    echo
    echo 'import ('
    local p
    for p in "$@"; do echo "	_ \"$p\""; done
    echo ')'
  } > "$file"
}

# product_dir NAME VERSION : where a product's binaries are cached.
product_dir() {
  echo "$CACHE/$1-$2-r$BUILD_REVISION"
}

# finish_product TMP DIR : move a finished build in place atomically.
finish_product() {
  local tmp=$1 dir=$2
  touch "$tmp/.complete"
  rm -rf "$dir"
  mv "$tmp" "$dir"
}

kubernetes_commands() {
  echo kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy
  if [ "${REDSTUFF_BUILD_KUBECTL:-}" = 1 ] || ! command -v kubectl > /dev/null 2>&1; then
    echo kubectl
  fi
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION dir
  dir=$(product_dir kubernetes "$v")
  local wanted missing="" c
  wanted=$(kubernetes_commands)
  if [ -f "$dir/.complete" ]; then
    for c in $wanted; do [ -x "$dir/bin/$c" ] || missing="$missing $c"; done
    [ -z "$missing" ] && return 0
  fi
  log "building Kubernetes $v ($wanted) into $dir"
  local src=$CACHE/src/kubernetes-$v
  mkdir -p "$src"
  local gomod minor
  gomod=$(cd "$src" && go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
  [ -f "$gomod" ] || die "could not download k8s.io/kubernetes@$v"
  minor=${v#v1.}
  {
    echo "module local/redstuff-cluster/kubernetes"
    echo
    echo "go 1.24.0"
    echo
    echo "require k8s.io/kubernetes $v"
    echo
    echo "replace ("
    # Every staging module of that version, at its published v0.Y.Z.
    sed -n 's#^\s*\(k8s\.io/[^ ]*\) => \./staging/src/.*#\t\1 => \1 v0.'"$minor"'#p' "$gomod"
    echo ")"
  } > "$src/go.mod"
  local pkgs="" c
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    pkgs="$pkgs k8s.io/kubernetes/cmd/$c"
  done
  # shellcheck disable=SC2086
  write_tools "$src/tools.go" $pkgs
  (cd "$src" && go_env go mod tidy) || die "go mod tidy failed for Kubernetes $v"
  local major=${v#v}
  major=${major%%.*}
  local mnr=${v#v*.}
  mnr=${mnr%%.*}
  local date
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld="" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$v -X $p.gitMajor=$major -X $p.gitMinor=$mnr"
    ld="$ld -X $p.gitTreeState=clean -X $p.buildDate=$date -X $p.gitCommit=module-$v"
  done
  local tmp=$dir.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp/bin"
  if [ -f "$dir/.complete" ]; then cp -a "$dir/bin/." "$tmp/bin/"; fi
  local build=""
  for c in $wanted; do [ -x "$tmp/bin/$c" ] || build="$build k8s.io/kubernetes/cmd/$c"; done
  # shellcheck disable=SC2086
  build_in_module "$src" "$tmp/bin" "$ld" $build || die "building Kubernetes $v failed"
  finish_product "$tmp" "$dir"
}

build_etcd() {
  local v=$ETCD_VERSION dir
  dir=$(product_dir etcd "$v")
  [ -f "$dir/.complete" ] && return 0
  log "building etcd $v into $dir"
  local src=$CACHE/src/etcd-$v
  mkdir -p "$src"
  printf 'module local/redstuff-cluster/etcd\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$v" > "$src/go.mod"
  write_tools "$src/tools.go" go.etcd.io/etcd/server/v3
  (cd "$src" && go_env go mod tidy) || die "go mod tidy failed for etcd $v"
  local tmp=$dir.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp/bin"
  build_in_module "$src" "$tmp/bin" "" go.etcd.io/etcd/server/v3 || die "building etcd $v failed"
  # go names the binary of module path .../server/v3 "server".
  mv "$tmp/bin/server" "$tmp/bin/etcd"
  finish_product "$tmp" "$dir"
}

# CoreDNS with only the plugins the cluster's Corefile uses (the full
# plugin set pulls in every cloud SDK).
build_coredns() {
  local v=$COREDNS_VERSION dir
  dir=$(product_dir coredns "$v")
  [ -f "$dir/.complete" ] && return 0
  log "building CoreDNS $v into $dir"
  local src=$CACHE/src/coredns-$v
  mkdir -p "$src"
  printf 'module local/redstuff-cluster/coredns\n\ngo 1.24.0\n\nrequire github.com/coredns/coredns %s\n' "$v" > "$src/go.mod"
  cp "$HELPERS/coredns/main.go" "$src/main.go"
  (cd "$src" && go_env go mod tidy) || die "go mod tidy failed for CoreDNS $v"
  local tmp=$dir.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp/bin"
  build_in_module "$src" "$tmp/bin" "-X github.com/coredns/coredns/coremain.GitCommit=module-$v" . \
    || die "building CoreDNS $v failed"
  [ -x "$tmp/bin/coredns" ] || die "CoreDNS build left no binary coredns"
  finish_product "$tmp" "$dir"
}

build_helm() {
  local v=$HELM_VERSION dir
  dir=$(product_dir helm "$v")
  [ -f "$dir/.complete" ] && return 0
  log "building helm $v into $dir"
  local src=$CACHE/src/helm-$v
  local mod=helm.sh/helm/v${v:1:1}
  mkdir -p "$src"
  printf 'module local/redstuff-cluster/helm\n\ngo 1.24.0\n\nrequire %s %s\n' "$mod" "$v" > "$src/go.mod"
  write_tools "$src/tools.go" "$mod/cmd/helm"
  (cd "$src" && go_env go mod tidy) || die "go mod tidy failed for helm $v"
  local tmp=$dir.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp/bin"
  build_in_module "$src" "$tmp/bin" "-X $mod/internal/version.version=$v" "$mod/cmd/helm" \
    || die "building helm $v failed"
  finish_product "$tmp" "$dir"
}

build_crictl() {
  local v=$CRI_TOOLS_VERSION dir
  dir=$(product_dir cri-tools "$v")
  [ -f "$dir/.complete" ] && return 0
  log "building crictl $v into $dir"
  local src=$CACHE/src/cri-tools-$v
  mkdir -p "$src"
  printf 'module local/redstuff-cluster/cri-tools\n\ngo 1.24.0\n\nrequire sigs.k8s.io/cri-tools %s\n' "$v" > "$src/go.mod"
  write_tools "$src/tools.go" sigs.k8s.io/cri-tools/cmd/crictl
  (cd "$src" && go_env go mod tidy) || die "go mod tidy failed for cri-tools $v"
  local tmp=$dir.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp/bin"
  build_in_module "$src" "$tmp/bin" "-X sigs.k8s.io/cri-tools/pkg/version.Version=$v" sigs.k8s.io/cri-tools/cmd/crictl \
    || die "building crictl $v failed"
  finish_product "$tmp" "$dir"
}

# Small static helper programs of our own (scripts/local-cluster.d/NAME/
# main.go, standard library only): pause (the sandbox program: waits for
# signals, reaps children) and probe (DNS query, HTTP test server). Keyed
# by the source's hash; prints the binary's path.
build_helper() {
  local name=$1 dir
  dir=$(product_dir "$name" "$(sha256sum "$HELPERS/$name/main.go" | cut -c1-12)")
  if [ ! -f "$dir/.complete" ]; then
    local src=$CACHE/src/$name
    mkdir -p "$src"
    printf 'module local/redstuff-cluster/%s\n\ngo 1.24.0\n' "$name" > "$src/go.mod"
    cp "$HELPERS/$name/main.go" "$src/main.go"
    local tmp=$dir.tmp
    rm -rf "$tmp"
    mkdir -p "$tmp/bin"
    (cd "$src" && go_env nice -n 19 go build -trimpath -ldflags "-s -w" -o "$tmp/bin/$name" .) >&2 \
      || die "building $name failed"
    finish_product "$tmp" "$dir"
  fi
  echo "$dir/bin/$name"
}

build_all() {
  build_helper pause > /dev/null
  build_helper probe > /dev/null
  build_etcd
  build_coredns
  build_kubernetes
  build_helm
  build_crictl
}
