#!/usr/bin/env bash
# make bench: every benchmark twill has, as root (the datapath one builds
# network namespaces). Results go to stdout and bench/ (markdown + raw).
#  1. datapath: iperf3 TCP container to container across two namespace hosts,
#     direct underlay vs kernel VXLAN vs twill plain vs twill offload vs an
#     encrypted overlay (wireguard; wireguardcopying: on wireguard-go's own TUN
#     and UDP bind; wireguard1p: with GOMAXPROCS=1), in
#     alternating rounds, medians, ratios to VXLAN, ping RTT, forwarder CPU;
#  2. the forwarder's per-packet work (-benchmem: allocations per packet);
#  3. the lease manager with 1000 existing leases;
#  4. the plugin API through its socket (RequestAddress, CreateEndpoint+Join);
#  5. the names resolver: per query without sockets (allocations), a table of
#     10,000 names, and a forwarded query end to end on loopback. (Its load
#     figures under dnsperf come from the e2e step NamesLoad.)
# Env: TWILL_BENCH_ROUNDS (3), TWILL_BENCH_SECONDS (5), TWILL_BENCH_MODES.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
if [ "$(id -u)" != 0 ]; then
  echo "make bench needs root (network namespaces, TUN); run it with sudo" >&2
  exit 1
fi
for c in iperf3 busybox ip; do
  command -v "$c" >/dev/null || { echo "make bench needs $c: bash scripts/install-deps.sh" >&2; exit 1; }
done
mkdir -p bench
{
  echo "# twill benchmarks, $(date -u +%Y-%m-%d), $(nproc) cores, kernel $(uname -r)"
  echo
} > bench/results.md

echo "== datapath (a few minutes)"
TWILL_BENCH_OUT=$PWD/bench/datapath.md go test -run '^$' -bench '^BenchmarkDatapath$' -benchtime 1x -timeout 30m ./datapath/overlay/ | tee bench/datapath.txt
cat bench/datapath.md >> bench/results.md

echo "== datapath on underlay veths that segment like a NIC (kernel VXLAN, fast TUN path, kernel datapath)"
TWILL_BENCH_UNDERLAY=segmenting TWILL_BENCH_MODES=vxlan,offload,kernel,kernelnogro TWILL_BENCH_OUT=$PWD/bench/datapath-segmenting.md \
  go test -run '^$' -bench '^BenchmarkDatapath$' -benchtime 1x -timeout 30m ./datapath/overlay/ | tee bench/datapath-segmenting.txt
{ echo; cat bench/datapath-segmenting.md; } >> bench/results.md

echo "== forwarder hot path (allocations per packet)"
go test -run '^$' -bench '^BenchmarkForward' -benchmem -count 3 ./datapath/overlay/ | tee bench/hotpath.txt
echo "== lease manager (1000 existing leases)"
go test -run '^$' -bench . -benchtime 200x ./internal/subnet/ | tee bench/leases.txt
echo "== plugin API through the socket"
go test -run '^$' -bench . ./plugin/ | tee bench/plugin.txt
echo "== names resolver"
go test -run '^$' -bench . -benchmem ./names/ | tee bench/names.txt
{
  for f in hotpath leases plugin names; do
    echo; echo "## $f"; echo; echo '```'; grep -E '^(Benchmark|goos|cpu)' "bench/$f.txt"; echo '```'
  done
} >> bench/results.md
echo "== written to bench/results.md"
