#!/usr/bin/env bash
# Builds the Prometheus server and promtool that the local cluster and the rule tests run, from the Go module
# proxy, into a cache keyed by the Prometheus version:
#
#   ${FEDFLEET_CACHE:-$HOME/.cache/fedfleet}/prometheus/<version>/bin/{prometheus,promtool}
#
# Why not Debian's `prometheus` package: Debian builds it without Kubernetes service discovery (its
# NEWS.Debian: "Kubernetes support has been completely removed"; `promtool check config` there answers
# "field kubernetes_sd_configs not found"), and discovering pods through the API server is the point here.
#
# Only the Kubernetes service discovery is compiled in (Prometheus' own build tags remove_all_sd +
# enable_kubernetes_sd), which keeps the cold build to a few minutes. Both binaries are built into
# <version>/bin.part and that directory is renamed to bin only when both are there, so an interrupted build
# never leaves a half-filled cache; a complete cache is reused without touching the network.
# Prints the bin directory on stdout (everything else goes to stderr): BIN="$(e2e/prometheus/build.sh)".
set -euo pipefail

PROMETHEUS_VERSION=v3.16.0
# Prometheus 3.x is published as Go module versions v0.3XX.Y (v3.16.0 -> v0.316.0).
minor="${PROMETHEUS_VERSION#v3.}"
MODULE_VERSION="v0.3$(printf '%02d' "${minor%%.*}").${minor#*.}"
MODULE=github.com/prometheus/prometheus

cache="${FEDFLEET_CACHE:-$HOME/.cache/fedfleet}/prometheus/$PROMETHEUS_VERSION"
bin="$cache/bin"

if [[ -x "$bin/prometheus" && -x "$bin/promtool" ]]; then
  echo "[prometheus/build.sh] cached: $bin" >&2
  echo "$bin"
  exit 0
fi

mkdir -p "$cache"
# make, a test fixture and the rule test may all ask at once: one builds, the others wait and reuse it.
exec 9>"$cache/.lock"
flock 9
if [[ -x "$bin/prometheus" && -x "$bin/promtool" ]]; then
  echo "$bin"
  exit 0
fi

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null 2>&1 || {
  echo "prometheus/build.sh: no Go toolchain found (install Go >= 1.26.7: Prometheus $PROMETHEUS_VERSION needs it)" >&2
  exit 1
}

export GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath"
export CGO_ENABLED=0
export GOTOOLCHAIN=local  # never download a toolchain; a too-old local Go fails with a clear message

part="$bin.part"
rm -rf "$part"
mkdir -p "$part"
ldflags="-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION#v}"
ldflags+=" -X github.com/prometheus/common/version.Branch=fedfleet-e2e"
ldflags+=" -X github.com/prometheus/common/version.Revision=$MODULE_VERSION"
start=$SECONDS
echo "[prometheus/build.sh $(date +%H:%M:%S)] building prometheus and promtool $PROMETHEUS_VERSION ($MODULE@$MODULE_VERSION)" >&2
if ! GOBIN="$part" nice -n 19 go install -tags remove_all_sd,enable_kubernetes_sd -ldflags="$ldflags" \
  "$MODULE/cmd/prometheus@$MODULE_VERSION" "$MODULE/cmd/promtool@$MODULE_VERSION" >&2; then
  rm -rf "$part"
  echo "prometheus/build.sh: building $MODULE@$MODULE_VERSION failed (see above)" >&2
  exit 1
fi
rm -rf "$bin"
mv "$part" "$bin"  # only a complete pair ever gets the final name
echo "[prometheus/build.sh $(date +%H:%M:%S)] built in $((SECONDS - start))s: $bin" >&2
echo "$bin"
