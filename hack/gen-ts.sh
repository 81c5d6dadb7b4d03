#!/usr/bin/env bash
# Generates the TypeScript messages and service descriptors of proto/dayu/v1/*.proto into
# OUT/ts/dayu/v1/*_pb.ts (committed as gen/ts/dayu/v1; the rest of gen/ts, the npm package
# @dayu/client around them, is written by hand).
#   hack/gen-ts.sh OUT
# Tools: protoc from the active environment's pinned grpcio-tools (python -m grpc_tools.protoc, which
# bundles the well-known types) and protoc-gen-es at the exact version of gen/ts/package.json, run
# from gen/ts/node_modules (installed here with `npm ci` from the committed lock file if missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -eq 1 ] || { echo "usage: hack/gen-ts.sh OUT" >&2; exit 2; }
mkdir -p "$1"
out=$(cd "$1" && pwd)
cd "$root"

command -v node >/dev/null && command -v npm >/dev/null || {
  echo "hack/gen-ts.sh needs Node.js (>= 20) and npm on PATH" >&2
  exit 1
}
python=${PYTHON:-python}
command -v "$python" >/dev/null || python="$root/.venv/bin/python"

plugin=gen/ts/node_modules/.bin/protoc-gen-es
want=$(node -p 'require("./gen/ts/package.json").devDependencies["@bufbuild/protoc-gen-es"]')
if [ ! -x "$plugin" ] || [ "$("$plugin" --version)" != "protoc-gen-es v$want" ]; then
  (cd gen/ts && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

rm -rf "$out/ts/dayu"
mkdir -p "$out/ts"
"$python" -m grpc_tools.protoc \
  --proto_path=proto \
  --plugin=protoc-gen-es="$root/$plugin" \
  --es_out="$out/ts" \
  --es_opt=target=ts,import_extension=js \
  proto/dayu/v1/*.proto
