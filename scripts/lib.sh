# shellcheck shell=bash
# lib.sh: helpers shared by twill's scripts (sourced, not run).

# say prints a progress line with the seconds since the script started.
TWE_T0=${TWE_T0:-$(date +%s%N)}
export TWE_T0
say() {
	local ms=$((($(date +%s%N) - TWE_T0) / 1000000))
	printf '[%4d.%01ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*" >&2
}
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# docker_bin picks the docker CLI that matches Debian's dockerd (20.10, API 1.41)
# when it is installed, else whatever docker is on PATH. use_engine sets DOCKER.
docker_bin() {
	if [ -n "${DOCKER:-}" ]; then echo "$DOCKER"; elif [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker; fi
}

# use_engine ENGINE makes the testbed's Docker that engine, for this script and
# what it starts: `debian` is Debian's docker.io (dockerd 20.10, containerd 1.6,
# runc 1.1) with its docker CLI; `current` is the engine scripts/engine.sh
# builds from the Go module proxy (dockerd, containerd, runc first on PATH) with
# a current docker CLI, which talks to both engines, and its `docker compose`
# plugin (DOCKER_CONFIG points the CLI at it). Exports TWILL_ENGINE and DOCKER.
use_engine() {
	case $1 in
	debian)
		DOCKER=/usr/bin/docker
		;;
	current)
		local bin
		bin=$(bash "$(dirname "${BASH_SOURCE[0]}")/engine.sh") || die "building the current engine failed"
		case ":$PATH:" in *":$bin:"*) ;; *) PATH=$bin:$PATH ;; esac
		DOCKER=$bin/docker
		export DOCKER_CONFIG=$bin/../docker-config
		mkdir -p "$DOCKER_CONFIG"
		ln -sfn ../bin/cli-plugins "$DOCKER_CONFIG/cli-plugins"
		;;
	*) die "TWILL_ENGINE=$1: want debian (Debian's docker.io 20.10) or current (built by scripts/engine.sh)" ;;
	esac
	export TWILL_ENGINE=$1 DOCKER PATH
}

# pkg_for maps a command to the Debian package that ships it.
pkg_for() {
	case $1 in
	docker | dockerd | docker-init) echo docker.io ;;
	containerd) echo containerd ;;
	runc) echo runc ;;
	etcd) echo etcd-server ;;
	etcdctl) echo etcd-client ;;
	docker-registry) echo docker-registry ;;
	busybox) echo busybox-static ;;
	iperf3) echo iperf3 ;;
	docker-compose) echo docker-compose ;;
	iptables | iptables-restore) echo iptables ;;
	ip | bridge) echo iproute2 ;;
	nsenter | unshare | setsid | findmnt) echo util-linux ;;
	sha256sum | timeout) echo coreutils ;;
	*) echo "$1" ;;
	esac
}

# ensure_cmds installs the Debian packages when one of the commands is missing
# (scripts/install-deps.sh: asks first on a terminal, goes ahead in CI or
# without a terminal, and keeps the packages from starting daemons).
ensure_cmds() {
	local missing=() c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || missing+=("$c")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	echo "missing commands: ${missing[*]}" >&2
	local yes=
	if [ "${CI:-}" = true ] || ! [ -t 0 ]; then yes=--yes; fi
	bash "$(dirname "${BASH_SOURCE[0]}")/install-deps.sh" $yes || die "installing packages failed"
	for c in "${missing[@]}"; do
		command -v "$c" >/dev/null 2>&1 || die "$c is still missing (Debian package: $(pkg_for "$c"))"
	done
}

# testbed_lock waits for, then holds until the calling script exits, the one
# lock of the machine's Docker testbed: its namespaces, sockets and state
# directory have fixed names (twe-*), so two runs at once would tear down each
# other's hosts.
testbed_lock() {
	exec 9>/run/twe.lock
	if ! flock -n 9; then
		say "waiting for another run of the testbed to finish (/run/twe.lock)"
		flock 9
	fi
}

# copy_with_libs ROOTFS FILE...: copies each file to the same path under ROOTFS,
# with every shared library ldd names for it (the files the links point to), so
# the file runs in a container or managed plugin made from ROOTFS.
copy_with_libs() {
	local rfs=$1 f lib
	shift
	for f in "$@"; do
		mkdir -p "$rfs$(dirname "$f")"
		cp -L "$f" "$rfs$f"
		for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*' || true); do
			[ -e "$rfs$lib" ] && continue
			mkdir -p "$rfs$(dirname "$lib")"
			cp -L "$lib" "$rfs$lib"
		done
	done
}

need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (network namespaces, dockerd)"; }
