#!/usr/bin/env bash
# Builds the control plane that fedfleet's end-to-end tests run on: kube-apiserver, kube-controller-manager
# and kubectl (from e2e/controlplane/go.mod), etcd (from e2e/etcd/go.mod) and helm (go install), all from the
# Go module proxy. Binaries land in a cache keyed by the Kubernetes version, so only the first build is slow:
#
#   ${FEDFLEET_CACHE:-$HOME/.cache/fedfleet}/controlplane/<k8s-version>/bin/<name>
#
# A binary already in the cache is skipped. Each one is built into a temporary directory beside the cache
# and renamed into place, so an interrupted build never leaves a half-written binary behind.
# Prints the bin directory on stdout (everything else goes to stderr), so: BIN="$(e2e/controlplane/build.sh)".
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
HELM_VERSION=v3.22.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
etcd_mod="$here/../etcd"

# The go.mod files are the source of truth for what gets built; refuse to label a cache with a version
# that the module does not actually pin.
grep -Eq "k8s.io/kubernetes ${K8S_VERSION}( |$)" "$here/go.mod" \
  || { echo "build.sh: K8S_VERSION=$K8S_VERSION does not match $here/go.mod" >&2; exit 2; }
staging="v0.${K8S_VERSION#v1.}"  # k8s.io/api etc. are published as v0.X.Y for Kubernetes v1.X.Y
if grep -E "^\s+k8s\.io/\S+ => k8s\.io/\S+ v" "$here/go.mod" | grep -v " ${staging}\$" >&2; then
  echo "build.sh: the staging replace directives above are not at $staging" >&2; exit 2
fi
grep -Eq "go.etcd.io/etcd/server/v3 ${ETCD_VERSION}( |$)" "$etcd_mod/go.mod" \
  || { echo "build.sh: ETCD_VERSION=$ETCD_VERSION does not match $etcd_mod/go.mod" >&2; exit 2; }

cache="${FEDFLEET_CACHE:-$HOME/.cache/fedfleet}/controlplane/$K8S_VERSION"
bin="$cache/bin"
log="$cache/build.log"
mkdir -p "$bin"

# Two builds at once (make and a test fixture) would compile everything twice on a 2-core machine.
exec 9>"$cache/.lock"
flock 9
rm -rf "$cache"/tmp.*  # left by an interrupted build; nobody else builds while we hold the lock

# CI's environment may not carry the login shell's PATH; Go's standard install location is the fallback.
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null 2>&1 || { echo "build.sh: no Go toolchain found (install Go ≥ 1.24)" >&2; exit 1; }

export GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath"
export CGO_ENABLED=0
# Never fetch a different Go toolchain: the local one is new enough for every module here.
export GOTOOLCHAIN=local

# kubectl, helm and the API server's /version report these; helm compares them with charts' kubeVersion.
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean"
done

note() { echo "[build.sh $(date +%H:%M:%S)] $*" | tee -a "$log" >&2; }

# build NAME CMD...: runs CMD with $out set to a fresh temp dir, expects $out/NAME, renames it into $bin.
build() {
  local name="$1"; shift
  if [[ -x "$bin/$name" ]]; then
    note "$name: cached"
    return
  fi
  out="$(mktemp -d "$cache/tmp.$name.XXXXXX")"
  local start=$SECONDS
  note "$name: building"
  if ! "$@"; then
    rm -rf "$out"
    note "$name: FAILED"
    exit 1
  fi
  mv -f "$out/$name" "$bin/$name"
  rm -rf "$out"
  note "$name: built in $((SECONDS - start))s ($(du -h "$bin/$name" | cut -f1))"
}

k8s_build() { (cd "$here" && nice -n 19 go build -ldflags="$k8s_ldflags" -o "$out/$1" "k8s.io/kubernetes/cmd/$1"); }
etcd_build() { (cd "$etcd_mod" && nice -n 19 go build -ldflags="-s -w" -o "$out/etcd" .); }
helm_build() {
  GOBIN="$out" nice -n 19 go install \
    -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

total_start=$SECONDS
build kube-apiserver k8s_build kube-apiserver
build kube-controller-manager k8s_build kube-controller-manager
build kubectl k8s_build kubectl
build etcd etcd_build
build helm helm_build
note "all binaries ready in $((SECONDS - total_start))s: $bin"
echo "$bin"
