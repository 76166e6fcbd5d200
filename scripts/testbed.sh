#!/usr/bin/env bash
# testbed.sh: several Docker hosts on one Linux machine, for twill's e2e tests
# and demo. Every host is a network namespace with its own dockerd; they share
# an underlay bridge with a real etcd and a plain-HTTP registry, and twill is
# installed on each from that registry, exactly as a user would.
#
#   scripts/testbed.sh up            build what is missing, start everything
#   scripts/testbed.sh down          remove everything (idempotent, also after a failed up)
#   scripts/testbed.sh status        what runs
#   scripts/testbed.sh restart N     restart dockerd of host N (same mount namespace)
#   scripts/testbed.sh stop N        stop dockerd of host N (and so its plugin)
#   scripts/testbed.sh start N       start dockerd of host N again
#   scripts/testbed.sh docker N ...  docker CLI against host N
#   scripts/testbed.sh exec N ...    run a command in host N's network namespace
#   scripts/testbed.sh etcdctl ...   etcdctl against the testbed's etcd
#
# Layout (all names carry the prefix twe-; addresses exist only inside these namespaces):
#   netns twe-ul:   bridge twe-br0 10.199.0.254/24, one veth port per member
#   netns twe-hN:   twe0 10.199.0.N/24, default via .254; dockerd on /run/twe-hN.sock
#   netns twe-etcd: twe0 10.199.0.250, etcd on :2379
#   netns twe-reg:  twe0 10.199.0.251, docker-registry on :5000
#   netns twe-dns:  twe0 10.199.0.252, tools/dnsstub on :53 (zone twe.): the
#                   upstream twill's resolvers forward to (TWILL_DNS_UPSTREAM),
#                   standing in for the internet's; never the machine's resolvers
# Env: TWE_HOSTS (3), TWE_STATE (/var/lib/twe), TWE_BUNDLE (plugin bundle dir),
# TWE_PLUGIN_SETTINGS (extra KEY=VALUE for `docker plugin install`),
# TWE_UNDERLAY (veth, or nic: the hosts' twe0 with transmit checksum offload
# off, so the kernel datapath runs),
# TWE_LOGS (where `down` keeps the logs, /tmp/twe-logs),
# TWILL_ENGINE (debian: Debian's docker.io 20.10, the default; current: the
# engine scripts/engine.sh builds; `up` records it, later commands use that one).
# A host's dockerd flags beyond the fixed ones are in $TWE_STATE/hN/dockerd.args
# (one a line; default: --bridge=none --iptables=false --ip-masq=false
# --userland-proxy=false), its daemon.json beside it; `restart N` applies both.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib.sh
. "$ROOT/scripts/lib.sh"

STATE=${TWE_STATE:-/var/lib/twe}
# the number of hosts is fixed by `up`; later commands read it back
HOSTS=${TWE_HOSTS:-$(cat "$STATE/hosts" 2>/dev/null || echo 3)}
BUNDLE=${TWE_BUNDLE:-$ROOT/plugin/build/bundle}
LOGS=${TWE_LOGS:-/tmp/twe-logs}
NET=10.199.0
ETCD_IP=$NET.250
REG_IP=$NET.251
REG=$REG_IP:5000
DNS_IP=$NET.252
ETCD_URL=http://$ETCD_IP:2379
IMAGE=twe-busybox:latest
PLUGIN_REF=$REG/twill:latest
D=$(docker_bin 2>/dev/null || echo docker)
ENGINE=$(cat "$STATE/engine" 2>/dev/null || echo "${TWILL_ENGINE:-debian}")
engine() { use_engine "$ENGINE"; D=$DOCKER; }

host_ns() { echo "twe-h$1"; }
sock() { echo "unix:///run/twe-h$1.sock"; }
dk() { local n=$1; shift; "$D" -H "$(sock "$n")" "$@"; }
# alive PID: running and not a zombie (our daemons' parent is gone once `up`
# returns; a dead one stays a zombie until init reaps it, which can take a while)
alive() {
	[ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
	local st
	st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
	[ -n "$st" ] && [ "$st" != Z ]
}
pidof_file() { [ -s "$1" ] && cat "$1" || true; }

# cgroup_mounts prints the commands that re-create the root namespace's cgroup
# mounts: `ip netns exec` remounts /sys, which hides /sys/fs/cgroup (P2).
cgroup_mounts() {
	local mp fstype opts
	while read -r mp fstype opts; do
		case $fstype in
		cgroup2)
			[ "$mp" = /sys/fs/cgroup ] && { echo "mount -t cgroup2 cgroup2 /sys/fs/cgroup"; return; }
			echo "mkdir -p $mp && mount -t cgroup2 cgroup2 $mp" ;;
		cgroup) echo "mkdir -p $mp && mount -t cgroup -o ${opts#rw,} cgroup $mp" ;;
		esac
	done < <(awk '{for(i=7;i<=NF;i++) if($i=="-"){print $5, $(i+1), $(i+3); break}}' /proc/1/mountinfo |
		grep -E '^/sys/fs/cgroup[/ ]' | grep -E ' cgroup2? ') | { echo "mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup"; cat; }
}

# member NS IP: a namespace on the underlay bridge with twe0 = IP/24.
member() {
	local ns=$1 ip=$2 port=$3
	ip netns add "$ns"
	ip -n "$ns" link set lo up
	ip -n twe-ul link add "$port" type veth peer name twe0 netns "$ns"
	ip -n twe-ul link set "$port" master twe-br0 up
	ip -n "$ns" addr add "$ip/24" dev twe0
	# TWE_UNDERLAY=nic: the veth finishes checksums and segments like a NIC
	# (a veth passes them on unfinished by default), so the kernel datapath
	# is usable with TUN-path peers and TWILL_DATAPATH=auto picks it.
	if [ "${TWE_UNDERLAY:-veth}" = nic ]; then ip netns exec "$ns" ethtool -K twe0 tx off >/dev/null; fi
	ip -n "$ns" link set twe0 up
	ip -n "$ns" route add default via $NET.254
	ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
}

# The daemons are started with fd 9 closed: it is the testbed lock of the
# calling script (lib.sh testbed_lock), which a daemon left running (a demo)
# would otherwise hold until it dies, so `demo-down` under that lock waited forever.
start_dockerd() {
	local n=$1 dir=$STATE/h$1 holder
	holder=$(pidof_file "$dir/holder.pid")
	alive "$holder" || die "host $n: mount-namespace holder is not running"
	rm -f "/run/twe-h$n.sock" "/run/twe-h$n.pid"
	[ -s "$dir/dockerd.args" ] || printf '%s\n' --bridge=none --iptables=false --ip-masq=false --userland-proxy=false >"$dir/dockerd.args"
	local args
	mapfile -t args <"$dir/dockerd.args"
	echo "=== dockerd start ($ENGINE: $(command -v dockerd)) ${args[*]}" >>"$dir/dockerd.log"
	nsenter --mount="/proc/$holder/ns/mnt" --net="/run/netns/twe-h$n" \
		setsid dockerd --config-file "$dir/daemon.json" --data-root "$dir/data" \
		--exec-root "/run/twe-h$n" -H "$(sock "$n")" --pidfile "/run/twe-h$n.pid" \
		"${args[@]}" --insecure-registry "$REG" --cgroup-parent "/twe-h$n" \
		>>"$dir/dockerd.log" 2>&1 </dev/null 9>&- &
	echo $! >"$dir/dockerd.pid"
}

wait_dockerd() {
	local n=$1 i
	for i in $(seq 1 150); do
		dk "$n" version >/dev/null 2>&1 && return 0
		alive "$(pidof_file "$STATE/h$n/dockerd.pid")" || { tail -5 "$STATE/h$n/dockerd.log" >&2; die "dockerd of host $n exited"; }
		sleep 0.2
	done
	die "dockerd of host $n did not answer within 30 s (log: $STATE/h$n/dockerd.log)"
}

stop_dockerd() {
	local n=$1 pid i
	pid=$(pidof_file "$STATE/h$n/dockerd.pid")
	alive "$pid" || return 0
	kill -TERM "$pid"
	for i in $(seq 1 150); do alive "$pid" || return 0; sleep 0.2; done
	echo "dockerd of host $n did not stop in 30 s, killing it" >&2
	kill -KILL "$pid" 2>/dev/null || true
}

build_image() {
	local img=$STATE/img
	[ -s "$STATE/busybox.tar" ] && return 0
	rm -rf "$img" && mkdir -p "$img"/{bin,etc,tmp,root}
	cp "$(command -v busybox)" "$img/bin/busybox"
	local a
	for a in $(busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$img/bin/$a"; done
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$img/etc/passwd"
	printf 'root:x:0:\n' >"$img/etc/group"
	tar -C "$img" -cf "$STATE/busybox-rootfs.tar" .
	dk 1 import -c 'CMD ["/bin/sh"]' "$STATE/busybox-rootfs.tar" "$IMAGE" >/dev/null
	dk 1 save -o "$STATE/busybox.tar" "$IMAGE"
}

up() {
	need_root "testbed"
	ensure_cmds ip nsenter setsid dockerd containerd runc docker etcd etcdctl docker-registry busybox iptables
	ENGINE=${TWILL_ENGINE:-$ENGINE}
	engine
	if status >/dev/null 2>&1; then
		[ "$(cat "$STATE/engine" 2>/dev/null)" = "$ENGINE" ] && { say "testbed already up"; return 0; }
		say "testbed is up on engine $(cat "$STATE/engine" 2>/dev/null), $ENGINE wanted: taking it down"
		down
	fi
	if ip netns list | grep -q '^twe-' || [ -d "$STATE" ]; then say "partial testbed found: removing it first"; down; fi
	# a new process, so that `set -e` holds everywhere inside and any failure cleans up
	bash "$0" up-inner || { echo "testbed up failed: cleaning up" >&2; down; exit 1; }
}

up_inner() {
	[ -S /run/containerd/containerd.sock ] &&
		die "/run/containerd/containerd.sock exists: every test dockerd would share that containerd; stop it first"
	[ -f "$BUNDLE/config.json" ] || { say "no plugin bundle yet: building it"; "$ROOT/plugin/build.sh" --bundle-only >/dev/null; }
	mkdir -p "$STATE"
	echo "$HOSTS" >"$STATE/hosts"
	echo "$ENGINE" >"$STATE/engine"
	say "engine $ENGINE: $(dockerd --version) ($(command -v dockerd)); CLI $D"

	say "underlay: netns twe-ul, bridge twe-br0 $NET.0/24"
	ip netns add twe-ul
	ip -n twe-ul link set lo up
	ip -n twe-ul link add twe-br0 type bridge
	ip -n twe-ul addr add $NET.254/24 dev twe-br0
	ip -n twe-ul link set twe-br0 up
	# bridged frames must not meet iptables in this namespace (P4)
	ip netns exec twe-ul sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
	local n
	for n in $(seq 1 "$HOSTS"); do member "twe-h$n" "$NET.$n" "twe-h${n}u"; done
	member twe-etcd $ETCD_IP twe-etcdu
	member twe-reg $REG_IP twe-regu
	member twe-dns $DNS_IP twe-dnsu

	say "etcd on $ETCD_URL, registry on $REG"
	mkdir -p "$STATE/etcd" "$STATE/registry"
	ip netns exec twe-etcd setsid etcd --name twe --data-dir "$STATE/etcd/data" \
		--listen-client-urls "$ETCD_URL,http://127.0.0.1:2379" --advertise-client-urls "$ETCD_URL" \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster twe=http://127.0.0.1:2380 >>"$STATE/etcd/etcd.log" 2>&1 </dev/null 9>&- &
	echo $! >"$STATE/etcd/pid"
	cat >"$STATE/registry/config.yml" <<-EOF
		version: 0.1
		log: {level: warn}
		storage: {filesystem: {rootdirectory: $STATE/registry/data}, delete: {enabled: true}}
		http: {addr: 0.0.0.0:5000}
	EOF
	ip netns exec twe-reg setsid docker-registry serve "$STATE/registry/config.yml" \
		>>"$STATE/registry/registry.log" 2>&1 </dev/null 9>&- &
	echo $! >"$STATE/registry/pid"
	say "upstream resolver on $DNS_IP:53 (tools/dnsstub, zone twe.)"
	mkdir -p "$STATE/dns"
	(cd "$ROOT" && CGO_ENABLED=0 go build -o "$STATE/dns/dnsstub" ./tools/dnsstub)
	ip netns exec twe-dns setsid "$STATE/dns/dnsstub" serve -listen "$DNS_IP:53" -zone twe. \
		>>"$STATE/dns/dnsstub.log" 2>&1 </dev/null &
	echo $! >"$STATE/dns/pid"

	say "starting $HOSTS dockerd (own netns, mount namespace, data-root, socket)"
	local cg
	cg=$(cgroup_mounts | paste -sd';')
	for n in $(seq 1 "$HOSTS"); do
		mkdir -p "$STATE/h$n/twill"
		echo '{}' >"$STATE/h$n/daemon.json"
		# one long-lived process per host holds the mount namespace every dockerd
		# of that host runs in, so a restarted dockerd finds its sandboxes (P15)
		# and its own bpf filesystem (ip netns exec remounted /sys): the kernel
		# datapath pins its links there and a restarted plugin takes them over
		setsid ip netns exec "twe-h$n" sh -c "set -e; $cg; mount -t bpf bpf /sys/fs/bpf || echo 'no bpf filesystem: the kernel datapath will stop with twilld' >&2; echo \$\$ >$STATE/h$n/holder.pid; exec sleep infinity" \
			>>"$STATE/h$n/holder.log" 2>&1 </dev/null 9>&- &
	done
	for n in $(seq 1 "$HOSTS"); do
		local i
		for i in $(seq 1 50); do [ -s "$STATE/h$n/holder.pid" ] && break; sleep 0.1; done
		start_dockerd "$n"
	done
	for n in $(seq 1 "$HOSTS"); do wait_dockerd "$n"; done
	local i
	for i in $(seq 1 100); do
		ip netns exec twe-etcd etcdctl --endpoints "$ETCD_URL" endpoint health >/dev/null 2>&1 && break
		[ "$i" = 100 ] && die "etcd did not become healthy (log: $STATE/etcd/etcd.log)"
		sleep 0.2
	done

	say "test image $IMAGE on every host (docker import of busybox-static)"
	build_image
	local pids=()
	for n in $(seq 2 "$HOSTS"); do dk "$n" load -q -i "$STATE/busybox.tar" >/dev/null & pids+=($!); done
	for i in "${pids[@]}"; do wait "$i"; done

	say "plugin: create on host 1, push to $REG"
	dk 1 plugin rm -f "$PLUGIN_REF" >/dev/null 2>&1 || true
	dk 1 plugin create "$PLUGIN_REF" "$BUNDLE" >/dev/null
	dk 1 plugin push "$PLUGIN_REF" >/dev/null
	dk 1 plugin rm -f "$PLUGIN_REF" >/dev/null

	say "plugin: install --alias twill on $HOSTS hosts (ETCD_ENDPOINTS=$ETCD_URL)"
	pids=()
	for n in $(seq 1 "$HOSTS"); do
		# shellcheck disable=SC2086
		dk "$n" plugin install --grant-all-permissions --alias twill "$PLUGIN_REF" \
			ETCD_ENDPOINTS=$ETCD_URL TWILL_IFACE=twe0 TWILL_LOG_LEVEL=debug TWILL_DNS_UPSTREAM=$DNS_IP \
			state.source="$STATE/h$n/twill" docker-run.source=/run TWILL_DOCKER_SOCKET="/host-run/twe-h$n.sock" \
			${TWE_PLUGIN_SETTINGS:-} >"$STATE/h$n/install.log" 2>&1 & pids+=($!)
	done
	local failed=0
	for n in $(seq 1 "$HOSTS"); do
		wait "${pids[$((n - 1))]}" || {
			failed=1
			echo "host $n: plugin install failed: $(tail -1 "$STATE/h$n/install.log")" >&2
			echo "host $n: the plugin's last errors (whole log after the cleanup: grep plugin= $LOGS/h$n-dockerd.log):" >&2
			grep 'plugin=' "$STATE/h$n/dockerd.log" | grep -E 'level=(ERROR|WARN)|panic|fatal|bad settings|  [A-Z_]+ ' |
				tail -6 | sed 's/^.*msg="//; s/" plugin=.*$//; s/^/    /' >&2 || true
		}
	done
	[ $failed = 0 ] || die "plugin install failed (the logs stay in $LOGS after the cleanup)"
	say "testbed up: $HOSTS hosts, etcd $ETCD_URL, registry $REG"
}

# kill_pids SIGNAL PID...: signals only live processes.
kill_pids() {
	local sig=$1 p
	shift
	for p in "$@"; do kill "-$sig" "$p" 2>/dev/null || true; done
}

# host_pids N: every process that belongs to host N: its namespace's processes,
# the shims and containers of its dockerd (containers have their own netns, P7).
host_pids() {
	local n=$1 f
	ip netns pids "twe-h$n" 2>/dev/null || true
	for f in /proc/[0-9]*/cmdline; do
		tr '\0' ' ' 2>/dev/null <"$f" | grep -q "/run/twe-h$n/" && { f=${f#/proc/}; echo "${f%/cmdline}"; }
	done
	cat /sys/fs/cgroup/pids/twe-h"$n"/*/cgroup.procs /sys/fs/cgroup/twe-h"$n"/*/cgroup.procs 2>/dev/null || true
}

plugin_ids() { ls "$STATE/h$1/data/plugins" 2>/dev/null | grep -E '^[0-9a-f]{64}$' || true; }

down() {
	need_root "testbed"
	local n pids=()
	for n in $(seq 1 9); do
		[ -e "/run/netns/twe-h$n" ] || [ -d "$STATE/h$n" ] || continue
		(stop_dockerd "$n") & pids+=($!)
	done
	local p
	for p in "${pids[@]}"; do wait "$p" || true; done
	for n in $(seq 1 9); do
		[ -e "/run/netns/twe-h$n" ] || [ -d "$STATE/h$n" ] || continue
		# shellcheck disable=SC2046
		kill_pids KILL $(host_pids "$n") $(pidof_file "$STATE/h$n/holder.pid") $(pidof_file "$STATE/h$n/dockerd.pid")
	done
	local ns
	for ns in twe-etcd twe-reg twe-dns; do
		# shellcheck disable=SC2046
		kill_pids KILL $(ip netns pids $ns 2>/dev/null || true)
	done
	kill_pids KILL "$(pidof_file "$STATE/etcd/pid")" "$(pidof_file "$STATE/registry/pid")"
	sleep 0.3
	for n in $(seq 1 9); do
		local id
		for id in $(plugin_ids "$n"); do
			rm -rf "/run/docker/plugins/$id"
			find /sys/fs/cgroup -maxdepth 3 -type d -name "$id" 2>/dev/null | while read -r d; do
				find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
			done
		done
		find /sys/fs/cgroup/*/twe-h"$n" /sys/fs/cgroup/twe-h"$n" -depth -type d -exec rmdir {} + 2>/dev/null || true
		rm -rf "/run/twe-h$n" "/run/twe-h$n.sock" "/run/twe-h$n.pid"
	done
	for ns in $(ip netns list | awk '{print $1}' | grep '^twe-' || true); do
		# shellcheck disable=SC2046
		kill_pids KILL $(ip netns pids "$ns" 2>/dev/null || true)
		ip netns del "$ns" 2>/dev/null || true
	done
	if [ -d "$STATE" ]; then
		# keep the logs of the last testbed for a post-mortem
		rm -rf "$LOGS" && mkdir -p "$LOGS"
		(cd "$STATE" && find . -maxdepth 2 -name '*.log' | while read -r f; do
			cp "$f" "$LOGS/$(echo "${f#./}" | tr / -)"
		done) || true
		# dockerd's mounts lived in the holders' mount namespaces (gone now);
		# anything still mounted under STATE in this namespace is released first
		findmnt -rno TARGET | grep "^$STATE/" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
		rm -rf "$STATE"
	fi
	say "testbed down"
}

status() {
	local n ok=0 ns
	for ns in twe-ul twe-etcd twe-reg twe-dns; do
		[ -e "/run/netns/$ns" ] || { echo "$ns: missing"; ok=1; }
	done
	alive "$(pidof_file "$STATE/etcd/pid")" && echo "etcd: $ETCD_URL" || { echo "etcd: not running"; ok=1; }
	alive "$(pidof_file "$STATE/registry/pid")" && echo "registry: $REG" || { echo "registry: not running"; ok=1; }
	for n in $(seq 1 "$HOSTS"); do
		if dk "$n" version >/dev/null 2>&1; then
			echo "host $n: twe-h$n $NET.$n DOCKER_HOST=$(sock "$n") plugin: $(dk "$n" plugin ls --format '{{.Name}} enabled={{.Enabled}}' | tr '\n' ' ')"
			dk "$n" plugin inspect twill:latest >/dev/null 2>&1 || ok=1
		else
			echo "host $n: dockerd not answering"
			ok=1
		fi
	done
	return $ok
}

cmd=${1:-}
shift || true
case $cmd in
up) up ;;
up-inner) engine; up_inner ;;
down) down ;;
status) engine; echo "engine: $ENGINE"; status ;;
restart) engine; stop_dockerd "$1"; start_dockerd "$1"; wait_dockerd "$1" ;;
stop) stop_dockerd "$1" ;;
start) engine; start_dockerd "$1"; wait_dockerd "$1" ;;
docker) engine; n=$1; shift; dk "$n" "$@" ;;
exec) n=$1; shift; ip netns exec "twe-h$n" "$@" ;;
etcdctl) ETCDCTL_API=3 ip netns exec twe-etcd etcdctl --endpoints "$ETCD_URL" "$@" ;;
*) sed -n '2,32p' "$0"; exit 2 ;;
esac
