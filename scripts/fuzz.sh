#!/usr/bin/env bash
# Runs every Fuzz* target in the repository for a bounded time each (default 15s).
# Crashers are written under the package's testdata/fuzz and fail the run.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:-15s}
found=0
while IFS= read -r f; do
  pkg=./$(dirname "$f")
  for fn in $(grep -oE '^func (Fuzz[A-Za-z0-9_]+)' "$f" | awk '{print $2}'); do
    found=1
    echo "== fuzz $pkg $fn ($t)"
    go test -run '^$' -fuzz "^${fn}\$" -fuzztime "$t" "$pkg"
  done
done < <(git ls-files '*_test.go')
[ "$found" = 1 ] || echo "no fuzz targets"
