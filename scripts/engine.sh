#!/usr/bin/env bash
# engine.sh: builds a current Docker Engine from the Go module proxy, once, into
# a cache directory keyed by the versions, and prints that bin directory.
#
#   bash scripts/engine.sh          build when missing, print the bin directory
#   bash scripts/engine.sh --check  print the bin directory if built, else fail
#
# What it builds (everything from the Go module proxy, nothing from elsewhere):
#   dockerd, docker-proxy   github.com/moby/moby/v2 (cmd/dockerd), MOBY_VERSION
#   containerd + shim       github.com/containerd/containerd/v2, CONTAINERD_VERSION
#   runc                    github.com/opencontainers/runc (cgo, seccomp), RUNC_VERSION
#   docker (CLI)            github.com/docker/cli, built against its vendor.mod
#   docker-compose plugin   github.com/docker/compose/v5 (`docker compose`)
# docker-init is not built: Debian's tini (docker.io ships /usr/sbin/docker-init)
# serves both engines. Debian's runc does not work under containerd v2
# ("namespace {time} does not exist"), hence runc is built here.
#
# Env: TWILL_ENGINE_CACHE (default /var/cache/twill-engine), the *_VERSION pins.
# About 10 minutes on 2 cores with a cold Go cache; a no-op once built.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib.sh
. "$ROOT/scripts/lib.sh"

# moby/moby/v2 v2.0.0-beta.25 (the newest the proxy lists) needs a
# github.com/moby/swarmkit/v2 pseudo-version the proxy refuses; beta.24 builds.
MOBY_VERSION=${MOBY_VERSION:-v2.0.0-beta.24}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.2.9}
RUNC_VERSION=${RUNC_VERSION:-v1.4.4}
# docker/cli v29.9.3 and v29.10.0 pin github.com/moby/swarmkit/v2 v2.1.3, which
# the proxy refuses (403); v29.9.2 pins v2.1.2, which it serves.
CLI_VERSION=${CLI_VERSION:-v29.9.2}
# compose v5.7.x needs a newer Go than the one twill builds with (1.26).
COMPOSE_VERSION=${COMPOSE_VERSION:-v5.6.0}
CACHE=${TWILL_ENGINE_CACHE:-/var/cache/twill-engine}
KEY="moby-$MOBY_VERSION.containerd-$CONTAINERD_VERSION.runc-$RUNC_VERSION.cli-$CLI_VERSION.compose-$COMPOSE_VERSION"
OUT=$CACHE/$KEY
BIN=$OUT/bin
TOOLS=(dockerd docker-proxy containerd containerd-shim-runc-v2 runc docker cli-plugins/docker-compose)

built() {
	local t
	for t in "${TOOLS[@]}"; do [ -x "$BIN/$t" ] || return 1; done
}

if built; then
	echo "$BIN"
	exit 0
fi
[ "${1:-}" = --check ] && die "the current engine is not built yet: run bash scripts/engine.sh (about 10 minutes)"
command -v go >/dev/null || die "go is not installed"
command -v pkg-config >/dev/null && pkg-config --exists libseccomp ||
	die "runc needs libseccomp-dev and pkg-config: run bash scripts/install-deps.sh"

mkdir -p "$CACHE"
exec 8>"$CACHE/.lock" # two builds at once would do the work twice
flock 8
if built; then
	echo "$BIN"
	exit 0
fi

tmp=$(mktemp -d "$CACHE/.build.XXXXXX")
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin/cli-plugins" "$BIN/cli-plugins"
t0=$(date +%s)

# src copies module@version out of the module cache (read-only there) into a
# writable directory and prints it; building inside the module's own go.mod
# keeps its pins and replace directives.
src() {
	local dir
	dir=$(go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	[ -n "$dir" ] || die "go mod download $1 failed"
	cp -r "$dir" "$tmp/src-${1//\//_}"
	chmod -R u+w "$tmp/src-${1//\//_}"
	echo "$tmp/src-${1//\//_}"
}

# gobuild DIR OUT PKG [go build args...] builds PKG of the module copy in DIR
# into $BIN/OUT; a tool built by an earlier, interrupted run is kept.
gobuild() {
	local dir=$1 out=$2 pkg=$3
	shift 3
	[ -x "$BIN/$out" ] && return 0
	say "engine: go build $pkg ($out)"
	(cd "$dir" && GOFLAGS=-mod=mod GOWORK=off go build -trimpath -o "$tmp/bin/$out" "$@" "$pkg")
	mv "$tmp/bin/$out" "$BIN/$out"
}

d=$(src "github.com/moby/moby/v2@$MOBY_VERSION")
v=${MOBY_VERSION#v}
CGO_ENABLED=0 gobuild "$d" dockerd ./cmd/dockerd -tags 'exclude_graphdriver_btrfs' \
	-ldflags "-s -w -X github.com/moby/moby/v2/dockerversion.Version=$v -X github.com/moby/moby/v2/dockerversion.GitCommit=gomod"
CGO_ENABLED=0 gobuild "$d" docker-proxy ./cmd/docker-proxy -ldflags "-s -w"

d=$(src "github.com/containerd/containerd/v2@$CONTAINERD_VERSION")
cv="-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
CGO_ENABLED=0 gobuild "$d" containerd ./cmd/containerd -tags 'no_btrfs' -ldflags "-s -w $cv"
CGO_ENABLED=0 gobuild "$d" containerd-shim-runc-v2 ./cmd/containerd-shim-runc-v2 -ldflags "-s -w $cv"

d=$(src "github.com/opencontainers/runc@$RUNC_VERSION")
CGO_ENABLED=1 gobuild "$d" runc . -tags 'seccomp urfave_cli_no_docs' \
	-ldflags "-s -w -X main.version=${RUNC_VERSION#v}"

# docker/cli has no go.mod (+incompatible); its vendor.mod pins what it builds with.
d=$(src "github.com/docker/cli@$CLI_VERSION+incompatible")
cp "$d/vendor.mod" "$d/go.mod"
cp "$d/vendor.sum" "$d/go.sum"
rm -rf "$d/vendor"
CGO_ENABLED=0 gobuild "$d" docker ./cmd/docker \
	-ldflags "-s -w -X github.com/docker/cli/cli/version.Version=${CLI_VERSION#v} -X github.com/docker/cli/cli/version.GitCommit=gomod"

d=$(src "github.com/docker/compose/v5@$COMPOSE_VERSION")
CGO_ENABLED=0 gobuild "$d" cli-plugins/docker-compose ./cmd \
	-ldflags "-s -w -X github.com/docker/compose/v5/internal.Version=$COMPOSE_VERSION"

echo "$(($(date +%s) - t0))" >>"$OUT/build-seconds"
say "engine: built in $(($(date +%s) - t0)) s into $BIN"
echo "$BIN"
