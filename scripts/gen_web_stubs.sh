#!/usr/bin/env bash
# Generates the dashboard's TypeScript stubs (protoc-gen-es v2) from protos/ into the folder
# given (default clients/web/src/gen). One script, used by `make protos` and by
# `make check-protos` (into a temp dir), like scripts/gen_protos.sh for the Python stubs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/clients/web/src/gen}"
cd "$root"
rm -rf "$out"
mkdir -p "$out"
clients/web/node_modules/.bin/buf generate --template clients/web/buf.gen.yaml -o "$out" .
