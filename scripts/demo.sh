#!/usr/bin/env bash
# demo.sh up|down: `make demo` / `make demo-down`. On a machine with nothing but
# this repository (and Go): installs the Debian packages it needs (asks first
# on a terminal), builds twill and its plugin, starts three Docker hosts with
# etcd and a registry (scripts/testbed.sh), installs twill on each from the
# registry, runs two containers per host and prints a report: hosts and their
# subnets, containers and addresses, a cross-host ping matrix and two iperf3
# throughput figures (container to container, host to host), each labelled
# with what it measured. Everything stays up until `make demo-down`.
# TWILL_ENGINE=current runs the hosts on the current Docker Engine
# (scripts/engine.sh builds it once); the default is Debian's docker.io 20.10.
set -eEuo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=lib.sh
. scripts/lib.sh
TB=scripts/testbed.sh
NET=twill
RESOLVER=10.96.0.53 # twill's resolver on the default overlay 10.96.0.0/16 (network + 53)
HOSTS=3
export TWE_HOSTS=$HOSTS
STATE=${TWE_STATE:-/var/lib/twe}
IPERF_IMAGE=twe-iperf3:latest
SECS=5 # each iperf3 run

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
	# 9>&-: the daemons testbed.sh starts must not inherit the lock's fd, or they
	# would hold /run/twe.lock until demo-down and `flock /run/twe.lock make
	# demo-down` (or an e2e run waiting for the lock) would wait forever.
	bash $TB up 9>&-
	say "5/6 network '$NET' and two containers on every host"
	local n
	for n in $(seq 1 $HOSTS); do
		dk "$n" network inspect $NET >/dev/null 2>&1 ||
			dk "$n" network create -d twill:latest --ipam-driver twill:latest --subnet 10.96.0.0/16 $NET >/dev/null
		for c in a b; do
			dk "$n" inspect "h$n-$c" >/dev/null 2>&1 ||
				dk "$n" run -d --pull=never --init --restart unless-stopped --name "h$n-$c" --hostname "h$n-$c" \
					--network $NET --dns $RESOLVER twe-busybox:latest sleep 1000000 >/dev/null
		done
	done
	say "6/6 report"
	report
	cat <<-EOF

		The demo keeps running. Try:
		  DOCKER_HOST=unix:///run/twe-h1.sock $DOCKER ps
		  DOCKER_HOST=unix:///run/twe-h2.sock $DOCKER exec h2-a ping -c3 $(cip 1 h1-a)
		  DOCKER_HOST=unix:///run/twe-h2.sock $DOCKER exec h2-a nslookup h3-b
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
	ping_matrix "${ips[@]}"
	echo
	echo "PING BY NAME (every container runs with --dns $RESOLVER, twill's resolver: names on"
	echo "other hosts come from it, this host's from Docker's own DNS; ok = reply within 2 s)"
	ping_matrix "${names[@]}"
	echo
	local ver cpus
	ver=$(iperf3 --version | awk 'NR == 1 {print $2}')
	cpus=$(nproc)
	echo "THROUGHPUT, container to container (iperf3 $ver, TCP, 1 stream, $SECS s, one run)"
	container_iperf3
	echo "THROUGHPUT, host to host through twill's tunnel (iperf3 $ver, TCP, 1 stream, $SECS s, one run)"
	host_iperf3
	echo "  (all three hosts share this machine's $cpus CPUs and a veth underlay: the figures"
	echo "   say what twill does here, not what separate machines on a real network get)"
}

# ping_matrix TARGET...: every container in report's names pings every
# TARGET (the containers' addresses or names, in the same order) but its own,
# one exec per container; a row per container.
ping_matrix() {
	local targets=("$@") i src n res j
	printf '  %-7s' ""
	for src in "${names[@]}"; do printf '%-6s' "$src"; done
	echo
	for i in "${!names[@]}"; do
		src=${names[$i]}
		n=${src:1:1}
		res=$(dk "$n" exec "$src" sh -c "for t in ${targets[*]}; do if [ \$t = ${targets[$i]} ]; then echo -; elif ping -c1 -W2 \$t >/dev/null 2>&1 || ping -c1 -W2 \$t >/dev/null 2>&1; then echo ok; else echo FAIL; fi; done" | tr '\n' ' ')
		printf '  %-7s' "$src"
		for j in $res; do printf '%-6s' "$j"; done
		echo
	done
}

# iperf3_image builds $IPERF_IMAGE on hosts 1 and 2 unless they have it: iperf3
# and every shared library ldd names for it (as plugin/build.sh builds the
# plugin's rootfs), imported with docker import; nothing comes from a registry.
iperf3_image() {
	local tar=$STATE/iperf3-rootfs.tar bin n
	bin=$(command -v iperf3)
	if [ ! -s "$tar" ]; then
		local rfs
		rfs=$(mktemp -d)
		mkdir -m 1777 "$rfs/tmp" # iperf3 keeps its send buffer in a file under /tmp
		copy_with_libs "$rfs" "$bin"
		tar -C "$rfs" -cf "$tar.tmp" .
		rm -rf "$rfs"
		mv "$tar.tmp" "$tar"
	fi
	for n in 1 2; do
		dk "$n" image inspect $IPERF_IMAGE >/dev/null 2>&1 ||
			dk "$n" import -c "ENTRYPOINT [\"$bin\"]" "$tar" $IPERF_IMAGE >/dev/null
	done
}

# iperf3_result reads iperf3's text report (-f m) and prints the receiver's
# rate, the sender's and its retransmissions; it fails if there is no rate.
iperf3_result() {
	awk '/ sender$/ {for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") {s = $(i - 1); r = $(i + 1)}}
	     / receiver$/ {for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") v = $(i - 1)}
	     END {if (v == "") exit 1; printf "  %s Mbit/s received (sender %s Mbit/s, %s TCP retransmissions)\n", v, s, r}'
}

# container_iperf3: an iperf3 server in a container on h1, the client in a
# container on h2, both on network $NET: the client's data crosses h2's veth and
# bridge, twill's tunnel and h1's bridge and veth, as between any two containers.
container_iperf3() {
	local srv=iperf3-server cli=iperf3-client ip out try
	iperf3_image
	dk 1 rm -f $srv >/dev/null 2>&1 || true
	dk 2 rm -f $cli >/dev/null 2>&1 || true
	dk 1 run -d --rm --pull=never --name $srv --network $NET $IPERF_IMAGE -s -1 >/dev/null
	ip=$(cip 1 $srv)
	echo "  container $cli on h2 sends to container $srv ($ip) on h1"
	for try in 1 2 3; do # the server may still be starting
		out=$(dk 2 run --rm --pull=never --name $cli --network $NET $IPERF_IMAGE -c "$ip" -t $SECS -f m 2>&1) && break
		dk 2 rm -f $cli >/dev/null 2>&1 || true
		sleep 1
	done
	dk 1 rm -f $srv >/dev/null 2>&1 || true
	iperf3_result <<<"$out" || echo "  iperf3 failed: $(tail -1 <<<"$out")"
}

# host_iperf3: iperf3 in h2's network namespace to h1's twill0 address: the
# tunnel alone, without bridges and veths.
host_iperf3() {
	local dst srv out
	dst=$(ip -n twe-h1 -4 -o addr show dev twill0 2>/dev/null | awk '{print $4}' | cut -d/ -f1)
	if [ -z "$dst" ]; then
		echo "  twill0 has no address on h1"
		return
	fi
	echo "  host h2 (netns twe-h2) sends to h1's twill0 address $dst"
	ip netns exec twe-h1 iperf3 -s -1 -B "$dst" >/dev/null 2>&1 &
	srv=$!
	sleep 0.5
	out=$(ip netns exec twe-h2 iperf3 -c "$dst" -t $SECS -f m 2>&1) || true
	kill "$srv" 2>/dev/null || true
	wait "$srv" 2>/dev/null || true
	iperf3_result <<<"$out" || echo "  iperf3 failed: $(tail -1 <<<"$out")"
}

# the engine `up` was given, or the one the running testbed has
engine() { use_engine "${TWILL_ENGINE:-$(cat "${TWE_STATE:-/var/lib/twe}/engine" 2>/dev/null || echo debian)}"; }
case ${1:-up} in
up)
	testbed_lock
	engine
	trap 'trap - ERR; echo "demo failed; what is up stays up for a look (scripts/testbed.sh status, logs in /var/lib/twe/hN/dockerd.log); make demo-down removes it" >&2' ERR
	up
	;;
report) engine; report ;;
down) need_root "demo-down"; bash $TB down ;;
*) echo "usage: $0 up|report|down" >&2; exit 2 ;;
esac
