#!/usr/bin/env bash
# build.sh: builds twill's managed-plugin bundle (config.json + rootfs) and,
# unless --bundle-only, creates it as a Docker plugin and enables it.
#
#   plugin/build.sh [--bundle-only] [--no-enable] [--name twill:latest] [KEY=VALUE ...]
#
# Env: DOCKER_HOST (which daemon), PLUGIN_NAME (default twill:latest),
# TWILLD_BIN / TWILLCTL_BIN (use prebuilt static binaries instead of building),
# BUNDLE (output dir, default plugin/build/bundle). KEY=VALUE arguments are passed
# to `docker plugin set` before enabling (e.g. ETCD_ENDPOINTS=http://10.0.0.5:2379).
#
# Capabilities in config.json, each proven by trying without it: CAP_NET_ADMIN
# (TUN twill0, links, routes, iptables-nft: EPERM without it) and CAP_NET_RAW
# (iptables-legacy opens a raw socket: "Permission denied (you must be root)"
# without it; needed on hosts whose dockerd uses the legacy backend), and
# CAP_BPF (the kernel datapath's programs and maps, with CAP_NET_ADMIN to
# attach them: datapath/kernel's TestCapabilities opens it without each).
# CAP_SYS_ADMIN and CAP_SYS_MODULE are not needed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../scripts/lib.sh
. "$ROOT/scripts/lib.sh"

NAME=${PLUGIN_NAME:-twill:latest}
BUNDLE=${BUNDLE:-$ROOT/plugin/build/bundle}
CREATE=1 ENABLE=1 SETTINGS=()
while [ $# -gt 0 ]; do
	case $1 in
	--bundle-only) CREATE=0 ;;
	--no-enable) ENABLE=0 ;;
	--name) NAME=$2; shift ;;
	*=*) SETTINGS+=("$1") ;;
	-h | --help) sed -n '2,11p' "$0"; exit 0 ;;
	*) die "unknown argument $1" ;;
	esac
	shift
done

ensure_cmds iptables ldd
command -v go >/dev/null || [ -n "${TWILLD_BIN:-}" ] || die "go is not installed (needs Go 1.26, see go.mod)"

# 1. static binaries
mkdir -p "$ROOT/bin"
if [ -z "${TWILLD_BIN:-}" ]; then
	say "building static twilld and twillctl"
	(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o bin/twilld ./cmd/twilld &&
		CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o bin/twillctl ./cmd/twillctl)
	TWILLD_BIN=$ROOT/bin/twilld TWILLCTL_BIN=$ROOT/bin/twillctl
fi
TWILLCTL_BIN=${TWILLCTL_BIN:-$(dirname "$TWILLD_BIN")/twillctl}
for b in "$TWILLD_BIN" "$TWILLCTL_BIN"; do
	[ -x "$b" ] || die "$b is missing"
	if ldd "$b" >/dev/null 2>&1; then die "$b is dynamically linked: build it with CGO_ENABLED=0"; fi
done

# 2. rootfs
say "assembling rootfs in $BUNDLE"
rm -rf "$BUNDLE"
RFS=$BUNDLE/rootfs
mkdir -p "$RFS"/{bin,sbin,usr/sbin,etc,tmp,proc,sys,dev/net,run/docker/plugins,var/lib/twill,var/run}
chmod 1777 "$RFS/tmp"
install -m 0755 "$TWILLD_BIN" "$RFS/twilld"
install -m 0755 "$TWILLCTL_BIN" "$RFS/twillctl"
ln -s ../twillctl "$RFS/bin/twillctl"

# iptables: both variants (the firewall runs the one holding the host's rules,
# as dockerd's; iptables-nft-save / iptables-legacy-save decide), and the plain
# names pointing at the host's default variant.
multi=$(readlink -f "$(command -v iptables)")
case $(basename "$multi") in
xtables-nft-multi | xtables-legacy-multi) ;;
*) die "iptables resolves to $multi, expected xtables-nft-multi or xtables-legacy-multi" ;;
esac
mkdir -p "$RFS/usr/sbin"
for v in nft legacy; do
	bin=$(dirname "$multi")/xtables-$v-multi
	[ -x "$bin" ] || { [ $v = legacy ] && continue; die "$bin is missing"; }
	copy_with_libs "$RFS" "$bin"
	[ "$(dirname "$bin")" = /usr/sbin ] || ln -sf "$bin" "$RFS/usr/sbin/xtables-$v-multi"
	for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
		ln -sf "xtables-$v-multi" "$RFS/usr/sbin/${t/tables/tables-$v}"
	done
done
for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
	ln -sf "$(basename "$multi")" "$RFS/usr/sbin/$t"
	ln -sf "../usr/sbin/$t" "$RFS/sbin/$t"
done
# match and target extensions are dlopen()ed, ldd cannot see them
# (at the path compiled into libxtables, which is under /usr even on merged-usr)
xtdir=$(ls -d /usr/lib/*/xtables /usr/lib64/xtables /usr/lib/xtables 2>/dev/null | head -1 || true)
[ -n "$xtdir" ] || die "iptables extensions directory not found"
copy_with_libs "$RFS" "$xtdir"/*.so
for f in /etc/protocols /etc/services /etc/ethertypes; do [ -e "$f" ] && cp "$f" "$RFS$f"; done
printf 'root:x:0:0:root:/:/bin/sh\n' >"$RFS/etc/passwd"
printf 'root:x:0:\n' >"$RFS/etc/group"
printf 'hosts: files dns\nprotocols: files\nservices: files\n' >"$RFS/etc/nsswitch.conf"

# busybox, for `docker plugin` debugging (nsenter into the plugin); optional
if command -v busybox >/dev/null && ! ldd "$(command -v busybox)" >/dev/null 2>&1; then
	cp "$(command -v busybox)" "$RFS/bin/busybox"
	for a in sh ls cat ps ip ping wget nc; do ln -sf busybox "$RFS/bin/$a"; done
fi

cp "$ROOT/config.json" "$BUNDLE/config.json"
say "rootfs: $(du -sh "$RFS" | cut -f1), twilld $(du -h "$TWILLD_BIN" | cut -f1)"

[ "$CREATE" = 1 ] || { echo "$BUNDLE"; exit 0; }

# 3. create + enable on the daemon DOCKER_HOST points at
D=$(docker_bin)
if $D plugin inspect "$NAME" >/dev/null 2>&1; then
	say "removing the old $NAME"
	$D plugin rm -f "$NAME" >/dev/null
fi
say "docker plugin create $NAME"
$D plugin create "$NAME" "$BUNDLE" >/dev/null
if [ ${#SETTINGS[@]} -gt 0 ]; then
	$D plugin set "$NAME" "${SETTINGS[@]}"
fi
if [ "$ENABLE" = 1 ]; then
	say "docker plugin enable $NAME"
	$D plugin enable "$NAME" >/dev/null
fi
$D plugin ls
