#!/usr/bin/env bash
# e2e.sh: twill's end-to-end run on real Docker (`make e2e`). Builds the plugin
# bundle from bin/twilld and bin/twillctl, then runs the Go tests in e2e/ with
# TWILL_E2E=1; they bring up scripts/testbed.sh (3 Docker hosts, etcd, registry)
# and take it down again. The testbed is removed on every exit, also on failure.
# Env: TWILL_E2E_RUN (go test -run pattern), TWILL_E2E_KEEP=1 (leave the testbed up).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=lib.sh
. scripts/lib.sh
need_root "the e2e run"
testbed_lock
ensure_cmds ip nsenter dockerd containerd runc etcd etcdctl docker-registry busybox docker-compose iptables
command -v go >/dev/null || die "go is not installed"

# TWILLD_BIN / TWILLCTL_BIN: test other binaries than bin/ (make e2e builds bin/ first)
export TWILLD_BIN=${TWILLD_BIN:-$ROOT/bin/twilld} TWILLCTL_BIN=${TWILLCTL_BIN:-$ROOT/bin/twillctl}
if [ ! -x "$TWILLD_BIN" ] || [ ! -x "$TWILLCTL_BIN" ]; then
	say "building bin/twilld and bin/twillctl"
	CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o bin/twilld ./cmd/twilld
	CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o bin/twillctl ./cmd/twillctl
fi
say "plugin bundle"
plugin/build.sh --bundle-only >/dev/null
export TWILLCTL=$TWILLCTL_BIN # the host-side twillctl the tests run

if [ "${TWILL_E2E_KEEP:-}" != 1 ]; then
	trap 'bash scripts/testbed.sh down >/dev/null 2>&1 || true' EXIT
fi
bash scripts/testbed.sh down >/dev/null 2>&1 || true # leftovers of an earlier run

say "go test ./e2e (3 hosts; about 3-5 minutes)"
TWILL_E2E=1 go test -count=1 -v -timeout 12m ${TWILL_E2E_RUN:+-run "$TWILL_E2E_RUN"} ./e2e/
say "e2e passed"
