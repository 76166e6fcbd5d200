#!/usr/bin/env bash
# demo.sh up|down: `make demo` / `make demo-down`. On a machine with nothing but
# this repository (and Go): installs the Debian packages it needs (asks first
# on a terminal), builds twill and its plugin, starts three Docker hosts with
# etcd and a registry (scripts/testbed.sh), installs twill on each from the
# registry, runs two containers per host and prints a report: hosts and their
# subnets, containers and addresses, a cross-host ping matrix and a throughput
# line. Everything stays up until `make demo-down`.
set -eEuo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=lib.sh
. scripts/lib.sh
TB=scripts/testbed.sh
NET=twill
HOSTS=3
export TWE_HOSTS=$HOSTS

dk() { local n=$1; shift; "$(docker_bin)" -H "unix:///run/twe-h$n.sock" "$@"; }
cip() { dk "$1" inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$2"; }

up() {
	need_root "the demo"
	say "1/6 packages"
	ensure_cmds ip nsenter dockerd containerd runc docker etcd etcdctl docker-registry busybox iptables iperf3
	command -v go >/dev/null || die "go is not installed (Go $(sed -n 's/^go //p' go.mod) from https://go.dev/dl)"
	if [ -n "${TWE_BUNDLE:-}" ]; then
		say "2-3/6 using the plugin bundle in $TWE_BUNDLE"
	else
		say "2/6 building twilld and twillctl (a cold build takes a few minutes on 2 cores)"
		CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o bin/twilld ./cmd/twilld
		CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o bin/twillctl ./cmd/twillctl
		say "3/6 plugin bundle"
		TWILLD_BIN=$ROOT/bin/twilld TWILLCTL_BIN=$ROOT/bin/twillctl plugin/build.sh --bundle-only >/dev/null
	fi
	say "4/6 three Docker hosts, etcd, registry; twill installed from the registry"
	bash $TB up
	say "5/6 network '$NET' and two containers on every host"
	local n
	for n in $(seq 1 $HOSTS); do
		dk "$n" network inspect $NET >/dev/null 2>&1 ||
			dk "$n" network create -d twill:latest --ipam-driver twill:latest --subnet 10.96.0.0/16 $NET >/dev/null
		for c in a b; do
			dk "$n" inspect "h$n-$c" >/dev/null 2>&1 ||
				dk "$n" run -d --pull=never --init --restart unless-stopped --name "h$n-$c" --hostname "h$n-$c" \
					--network $NET twe-busybox:latest sleep 1000000 >/dev/null
		done
	done
	say "6/6 report"
	report
	cat <<-EOF

		The demo keeps running. Try:
		  DOCKER_HOST=unix:///run/twe-h1.sock docker ps
		  DOCKER_HOST=unix:///run/twe-h2.sock docker exec h2-a ping -c3 $(cip 1 h1-a)
		  bin/twillctl --socket /var/lib/twe/h1/twill/twill-ctl.sock peers
		  scripts/testbed.sh etcdctl get --prefix /coreos.com/network/subnets/
		Remove it with: make demo-down
	EOF
}

report() {
	local n c
	echo
	echo "HOSTS (netns, underlay address, subnet leased in etcd)"
	for n in $(seq 1 $HOSTS); do
		local sub
		sub=$(bash $TB etcdctl get --prefix /coreos.com/network/subnets/ 2>/dev/null |
			paste - - | grep "\"10.199.0.$n\"" | awk '{print $1}' | sed 's|.*/||; s|-|/|')
		printf '  h%d  twe-h%d  10.199.0.%d  %s\n' "$n" "$n" "$n" "${sub:-?}"
	done
	echo
	echo "CONTAINERS"
	local names=() ips=()
	for n in $(seq 1 $HOSTS); do
		for c in a b; do
			names+=("h$n-$c")
			ips+=("$(cip "$n" "h$n-$c")")
			printf '  %-6s on h%d  %s\n' "h$n-$c" "$n" "${ips[-1]}"
		done
	done
	echo
	echo "PING MATRIX (row pings column; ok = reply within 2 s)"
	printf '  %-7s' ""
	for c in "${names[@]}"; do printf '%-6s' "$c"; done
	echo
	local i j src
	for i in "${!names[@]}"; do
		src=${names[$i]}
		n=${src:1:1}
		# one exec per source: ping every other container
		local res
		res=$(dk "$n" exec "$src" sh -c "for ip in ${ips[*]}; do if [ \$ip = ${ips[$i]} ]; then echo -; elif ping -c1 -W2 \$ip >/dev/null 2>&1 || ping -c1 -W2 \$ip >/dev/null 2>&1; then echo ok; else echo FAIL; fi; done" | tr '\n' ' ')
		printf '  %-7s' "$src"
		for j in $res; do printf '%-6s' "$j"; done
		echo
	done
	echo
	echo "THROUGHPUT (iperf3, host h2 -> host h1 over the overlay, 3 s)"
	local dst
	dst=$(ip -n twe-h1 -4 -o addr show dev twill0 2>/dev/null | awk '{print $4}' | cut -d/ -f1)
	if [ -z "$dst" ]; then
		echo "  twill0 has no address on h1"
		return
	fi
	ip netns exec twe-h1 iperf3 -s -1 -B "$dst" >/dev/null 2>&1 &
	local srv=$!
	sleep 0.5
	ip netns exec twe-h2 iperf3 -c "$dst" -t 3 -f m 2>&1 | grep -E 'sender|receiver' | sed 's/^/  /' || echo "  iperf3 failed"
	kill "$srv" 2>/dev/null || true
	wait "$srv" 2>/dev/null || true
	echo "  (h1's twill0 $dst; the UDP tunnel runs in userspace, in twilld)"
	echo "THROUGHPUT (busybox nc, container h2-a -> container h1-a, 200 MiB, time of the sending docker exec)"
	local to t0 t1 got
	to=$(cip 1 h1-a)
	dk 1 exec -d h1-a sh -c "nc -l -p 5201 -e sh -c 'wc -c > /tmp/got'"
	sleep 0.5
	t0=$(date +%s%N)
	dk 2 exec h2-a sh -c "dd if=/dev/zero bs=1048576 count=200 2>/dev/null | nc $to 5201" || true
	t1=$(date +%s%N)
	sleep 0.3
	got=$(dk 1 exec h1-a sh -c 'cat /tmp/got; rm -f /tmp/got' 2>/dev/null || echo 0)
	echo "  $got bytes arrived in $(((t1 - t0) / 1000000)) ms = $((got * 8 / ((t1 - t0) / 1000))) Mbit/s"
}

case ${1:-up} in
up)
	testbed_lock
	trap 'trap - ERR; echo "demo failed; what is up stays up for a look (scripts/testbed.sh status, logs in /var/lib/twe/hN/dockerd.log); make demo-down removes it" >&2' ERR
	up
	;;
report) report ;;
down) need_root "demo-down"; bash $TB down ;;
*) echo "usage: $0 up|report|down" >&2; exit 2 ;;
esac
