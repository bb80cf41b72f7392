#!/usr/bin/env bash
# Re-creates every case's expected.json with the headalign binary (run from anywhere; builds nothing).
# usage: conformance/make-expected.sh [path/to/headalign]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/.build/debug/headalign}"
cd "$root"
for dir in conformance/cases/*/; do
    mapfile -t args < "$dir/args.txt"
    "$bin" "${args[@]}" --out "${dir%/}/expected.json"
done
