#!/usr/bin/env bash
# Installs the Debian packages twill's tests, benchmarks and demo use, when
# missing. Asks first on a terminal unless --yes is given or CI is set.
set -euo pipefail
pkgs=(docker.io etcd-server etcd-client docker-registry busybox-static iperf3 docker-compose
      iptables iproute2 ethtool kmod procps psmisc ca-certificates dnsperf
      gcc libc6-dev  # gcc: flanneld's udp backend is cgo (scripts/flanneld.sh, the interop test)
      clang llvm libbpf-dev bpftool # the kernel datapath's BPF object (scripts/bpf-check.sh); bpftool to inspect it
      libseccomp-dev pkg-config # runc of the current engine (scripts/engine.sh) is cgo with seccomp
      nftables) # nft: the e2e's look at the current engine's nftables firewall backend
need=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
[ ${#need[@]} -eq 0 ] && exit 0

echo "twill needs these Debian packages: ${need[*]}"
if [ "${1:-}" != "--yes" ] && [ -z "${CI:-}" ] && [ -t 0 ]; then
  read -r -p "Install them with apt-get now? [Y/n] " ans
  case "$ans" in [nN]*) echo "not installing; install them and run again" >&2; exit 1 ;; esac
fi
if [ "$(id -u)" != 0 ]; then
  echo "installing packages needs root: run as root or with sudo" >&2
  exit 1
fi
# Keep package scripts from starting dockerd or etcd in the root namespace:
# twill's tests run their own daemons inside network namespaces.
policy=/usr/sbin/policy-rc.d
created=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created=1
fi
trap '[ -n "$created" ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}"
