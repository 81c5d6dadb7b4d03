#!/usr/bin/env bash
# Builds the operator's console (console/, docs/console.md) into services/dayu/backend/static/:
# index.html, console.js and console.css, minified, no source maps, the same bytes on every machine
# for the same sources and lock file. The built files are committed, so that `pip install -e .` and
# `dayu up` need no Node at run time.
#   hack/build-console.sh          type-check (tsc --noEmit) and build in place
#   hack/build-console.sh --check  type-check, build into a scratch folder and fail if the committed
#                                  files differ (CI drift check)
# Needs Node.js (>= 20) and npm; installs console/node_modules with `npm ci` from the committed lock
# file (esbuild, Preact, TypeScript, Connect and protobuf-es at the exact versions of
# console/package.json). The messages come from gen/ts/dayu/v1 (hack/gen.sh), bundled from source.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

check=false
[ "${1:-}" = "--check" ] && check=true

command -v node >/dev/null && command -v npm >/dev/null || {
  echo "hack/build-console.sh needs Node.js (>= 20) and npm on PATH" >&2
  exit 1
}

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

(cd console && npm ci --no-audit --no-fund --loglevel=error >&2)
(cd console && npm run --silent check)
(cd console && node build.mjs "$out")

static=services/dayu/backend/static
if $check; then
  if ! diff -r "$out" "$static" >/dev/null 2>&1; then
    echo "$static is out of date with console/: run hack/build-console.sh and commit the result" >&2
    diff -r "$out" "$static" 2>&1 | cut -c1-200 | head -20 >&2 || true
    exit 1
  fi
  echo "$static matches console/"
else
  rm -rf "$static"
  mkdir -p "$static"
  cp "$out"/index.html "$out"/console.js "$out"/console.css "$static"/
  echo "built the console into $static"
fi
