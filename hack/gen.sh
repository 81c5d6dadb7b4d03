#!/usr/bin/env bash
# Regenerates gen/ from proto/, every language (docs/contracts.md):
#   gen/dayu        Python: messages, gRPC stubs, .pyi type stubs and a descriptor set (the servers')
#   gen/go          Go: a module of messages and gRPC clients (hack/gen-go.sh)
#   gen/ts/dayu     TypeScript: messages and service descriptors for Connect (hack/gen-ts.sh)
#   gen/betterproto Python dataclasses: a client on grpclib (hack/gen-betterproto.sh)
#   hack/gen.sh          regenerate in place
#   hack/gen.sh --check  regenerate into a scratch folder and fail if gen/ differs (CI drift check)
# Uses the pinned tools of the active environment (pip install -e '.[dev]'), Debian's Go plugins and
# Node with gen/ts's lock file, as .ci/run installs them.
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
  --connect-python_out="$out" \
  --descriptor_set_out="$out/dayu/v1/dayu.protoset" \
  --include_imports \
  --include_source_info \
  proto/dayu/v1/*.proto
cat > "$out/dayu/v1/__init__.py" <<'PY'
"""Generated from proto/dayu/v1 by hack/gen.sh; do not edit."""
PY
touch "$out/dayu/v1/py.typed"
hack/gen-go.sh "$out"
hack/gen-ts.sh "$out"
hack/gen-betterproto.sh "$out"

# Each language's generated folder: where it lands in the scratch folder, and in gen/.
generated=("dayu:gen/dayu" "go:gen/go" "ts/dayu:gen/ts/dayu" "betterproto:gen/betterproto")
if $check; then
  stale=false
  for pair in "${generated[@]}"; do
    made=${pair%%:*} committed=${pair#*:}
    if ! diff -r -x __pycache__ "$out/$made" "$committed" >/dev/null; then
      echo "$committed is out of date with proto/: run hack/gen.sh and commit the result" >&2
      diff -r -x __pycache__ "$out/$made" "$committed" | head -40 >&2 || true
      stale=true
    fi
  done
  $stale && exit 1
  echo "gen/ matches proto/ (Python, Go, TypeScript, Python dataclasses)"
else
  for pair in "${generated[@]}"; do
    made=${pair%%:*} committed=${pair#*:}
    rm -rf "$committed"
    mkdir -p "$(dirname "$committed")"
    cp -r "$out/$made" "$committed"
  done
  echo "regenerated gen/ from proto/dayu/v1 (Python, Go, TypeScript, Python dataclasses)"
fi
