#!/usr/bin/env bash
# e2e.sh: twill's end-to-end run on real Docker (`make e2e`). Builds the plugin
# bundle from bin/twilld and bin/twillctl, then runs the Go tests in e2e/ with
# TWILL_E2E=1; they bring up scripts/testbed.sh (3 Docker hosts, etcd, registry)
# and take it down again. The testbed is removed on every exit, also on failure.
# It runs once per Docker engine, one after the other: Debian's docker.io 20.10
# and the current engine scripts/engine.sh builds from the Go module proxy
# (built on first use, about 10 minutes); TWILL_ENGINE=debian or =current picks one.
# Each engine runs a different datapath, both chosen by TWILL_DATAPATH=auto as
# on a user's host: Debian's on plain veths (checksum offload on, so auto takes
# the TUN path), the current engine's with NIC-like veths (TWE_UNDERLAY=nic:
# auto takes the kernel datapath). The HostView step checks which one runs.
# Env: TWILL_E2E_RUN (go test -run pattern), TWILL_E2E_KEEP=1 (leave the testbed up),
# TWILL_ENGINE (both when unset), TWE_UNDERLAY (veth or nic, for every engine).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=lib.sh
. scripts/lib.sh
need_root "the e2e run"
testbed_lock
ensure_cmds ip nsenter dockerd containerd runc etcd etcdctl docker-registry busybox docker-compose iptables pkg-config dnsperf
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

engines=${TWILL_ENGINE:-debian current}
for e in $engines; do
	(use_engine "$e" >/dev/null) || die "engine $e is not usable"
done
summary=() failed=()
for e in $engines; do
	t0=$(date +%s)
	underlay=${TWE_UNDERLAY:-$([ "$e" = current ] && echo nic || echo veth)}
	say "go test ./e2e on engine $e, underlay $underlay (3 hosts; about 3-5 minutes)"
	if (use_engine "$e" && export TWE_UNDERLAY=$underlay && say "engine $e: $(dockerd --version), CLI $("$DOCKER" --version)" &&
		TWILL_E2E=1 go test -count=1 -v -timeout 15m ${TWILL_E2E_RUN:+-run "$TWILL_E2E_RUN"} ./e2e/); then
		summary+=("$e ($underlay underlay): passed in $(($(date +%s) - t0)) s")
	else
		summary+=("$e ($underlay underlay): FAILED after $(($(date +%s) - t0)) s")
		failed+=("$e")
	fi
	[ "${TWILL_E2E_KEEP:-}" = 1 ] || bash scripts/testbed.sh down >/dev/null 2>&1 || true
done
for l in "${summary[@]}"; do say "e2e $l"; done
[ ${#failed[@]} -eq 0 ] || die "e2e failed on: ${failed[*]}"
say "e2e passed on: $engines"
