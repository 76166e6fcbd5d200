#!/usr/bin/env bash
# Builds a real flanneld (the version tools/flanneld/go.mod pins, udp backend)
# into .cache/flanneld for the flannel interoperability test (cmd/twilld
# TestFlannelInterop); `flanneld --version` prints that version. The udp
# backend is cgo, so this needs gcc. Module hashes are checked against
# tools/flanneld/go.sum. Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
out=$PWD/.cache/flanneld
if [ -x "$out" ] && [ "$out" -nt tools/flanneld/go.sum ]; then
  echo "$out"
  exit 0
fi
command -v gcc >/dev/null || { echo "building flanneld needs gcc (its udp backend is cgo): bash scripts/install-deps.sh" >&2; exit 1; }
mkdir -p .cache
(cd tools/flanneld && export GOFLAGS="${GOFLAGS:-} -mod=readonly" &&
  v=$(go list -m -f '{{.Version}}' github.com/flannel-io/flannel) &&
  CGO_ENABLED=1 go build -trimpath -ldflags "-X github.com/flannel-io/flannel/pkg/version.Version=$v" -o "$out.tmp" github.com/flannel-io/flannel)
mv "$out.tmp" "$out"
echo "$out"
