#!/usr/bin/env bash
# plugin.sh: `make plugin`. Builds the managed-plugin bundle from bin/twilld and
# bin/twillctl and creates + enables twill:latest on the Docker daemon that
# DOCKER_HOST points at (default: the local one). KEY=VALUE arguments are
# plugin settings, e.g. `scripts/plugin.sh ETCD_ENDPOINTS=http://10.0.0.5:2379`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib.sh
. "$ROOT/scripts/lib.sh"
export TWILLD_BIN=${TWILLD_BIN:-$ROOT/bin/twilld} TWILLCTL_BIN=${TWILLCTL_BIN:-$ROOT/bin/twillctl}
[ -x "$TWILLD_BIN" ] || die "$TWILLD_BIN is missing: run make build first"
D=$(docker_bin)
if ! $D version >/dev/null 2>&1; then
	"$ROOT/plugin/build.sh" --bundle-only >/dev/null
	die "no Docker daemon at ${DOCKER_HOST:-the default socket}: the bundle is in plugin/build/bundle; set DOCKER_HOST and run again, or: docker plugin create twill:latest plugin/build/bundle"
fi
case ${DOCKER_HOST:-unix:///var/run/docker.sock} in
unix://*) mkdir -p /var/lib/twill ;; # the state mount's source must exist on the host
*) echo "note: create /var/lib/twill on the daemon's host before enabling (the state mount)" >&2 ;;
esac
exec "$ROOT/plugin/build.sh" "$@"
