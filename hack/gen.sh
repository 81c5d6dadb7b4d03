#!/usr/bin/env bash
# Regenerates gen/ from proto/: Python messages, gRPC stubs, .pyi type stubs and a descriptor set.
#   hack/gen.sh          regenerate in place
#   hack/gen.sh --check  regenerate into a scratch folder and fail if gen/ differs (CI drift check)
# Uses the pinned grpcio-tools and mypy-protobuf of the active environment (pip install -e '.[dev]').
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

check=false
[ "${1:-}" = "--check" ] && check=true

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mkdir -p "$out/dayu/v1"

# protoc's plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) live next to the interpreter.
bindir=$(dirname "$(command -v python)")
PATH="$bindir:$PATH" python -m grpc_tools.protoc \
  --proto_path=proto \
  --python_out="$out" \
  --grpc_python_out="$out" \
  --mypy_out=quiet:"$out" \
  --mypy_grpc_out=quiet:"$out" \
  --descriptor_set_out="$out/dayu/v1/dayu.protoset" \
  --include_imports \
  --include_source_info \
  proto/dayu/v1/*.proto
cat > "$out/dayu/v1/__init__.py" <<'PY'
"""Generated from proto/dayu/v1 by hack/gen.sh; do not edit."""
PY
touch "$out/dayu/v1/py.typed"

if $check; then
  if ! diff -r -x __pycache__ "$out/dayu" gen/dayu >/dev/null; then
    echo "gen/ is out of date with proto/: run hack/gen.sh and commit the result" >&2
    diff -r -x __pycache__ "$out/dayu" gen/dayu | head -40 >&2 || true
    exit 1
  fi
  echo "gen/ matches proto/"
else
  rm -rf gen/dayu
  mkdir -p gen
  cp -r "$out/dayu" gen/dayu
  echo "regenerated gen/dayu/v1 from proto/dayu/v1"
fi
