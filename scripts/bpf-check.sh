#!/usr/bin/env bash
# Regenerates the kernel datapath's BPF object and its Go bindings
# (datapath/kernel: bpf2go with Debian's clang, the package's //go:generate
# line) and fails when they differ from the committed ones, which are what
# `go build` embeds. The committed files are left as they were.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
command -v clang >/dev/null || { echo "bpf-check needs clang, llvm and libbpf-dev: bash scripts/install-deps.sh" >&2; exit 1; }
dir=datapath/kernel
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$dir"/twill_bpfel.go "$dir"/twill_bpfel.o "$tmp/"
go generate ./$dir/
status=0
for f in twill_bpfel.go twill_bpfel.o; do
  if ! cmp -s "$tmp/$f" "$dir/$f"; then
    echo "bpf-check: $dir/$f differs from what $(clang --version | head -1) generates from twill.c;" \
         "run 'go generate ./$dir/' and commit the result" >&2
    status=1
  fi
  cp "$tmp/$f" "$dir/$f"
done
[ $status = 0 ] && echo "bpf-check: $dir's generated files match twill.c"
exit $status
