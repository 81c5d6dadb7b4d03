#!/usr/bin/env bash
# Generates the Python dataclass client (betterproto2: messages as dataclasses, async stubs on
# grpclib) from proto/dayu/v1/*.proto into OUT/betterproto/dayu_client:
#   dayu_client.dayu.v1          the messages, enums and stubs (BackendServiceStub, SchedulerServiceStub, ...)
#   dayu_client.google.protobuf  the well-known types the contracts use (Struct, Value, Timestamp)
#
#   hack/gen-betterproto.sh gen      regenerate gen/betterproto in place (hack/gen.sh does this)
#   hack/gen-betterproto.sh OUT      write OUT/betterproto only (hack/gen.sh --check diffs it against gen/)
#
# Tools, pinned: betterproto2-compiler (the protoc plugin), ruff (the plugin formats its output with
# the `ruff` on PATH) and grpcio-tools (protoc). The active `python` is used when it has exactly these
# versions (the project's .venv with '.[dev]'); otherwise a venv of their own is made once and reused,
# $DAYU_BETTERPROTO_GEN_VENV (default .venv-betterproto-gen at the repository root).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

if [ $# -ne 1 ]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
mkdir -p "$1"
dest=$(cd "$1" && pwd)/betterproto

compiler_version=0.10.1
ruff_version=0.17.5
grpcio_tools_version=1.81.1
pins=(
  "betterproto2-compiler==$compiler_version"
  "betterproto2==0.10.0"
  "jinja2==3.1.6"
  "markupsafe==3.0.4"
  "ruff==$ruff_version"
  "grpcio-tools==$grpcio_tools_version"
  "grpcio==1.85.1"
  "protobuf==6.33.6"
)

has_pins() {
  "$1" - "$compiler_version" "$ruff_version" "$grpcio_tools_version" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version

want = dict(zip(("betterproto2-compiler", "ruff", "grpcio-tools"), sys.argv[1:], strict=True))
sys.exit(0 if all(version(name) == v for name, v in want.items()) else 1)
PY
}

python=$(command -v python || true)
if [ -z "$python" ] || ! has_pins "$python"; then
  venv=${DAYU_BETTERPROTO_GEN_VENV:-$root/.venv-betterproto-gen}
  if [ ! -x "$venv/bin/python" ] || ! has_pins "$venv/bin/python"; then
    echo "gen-betterproto: installing ${pins[*]} into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
  fi
  python=$venv/bin/python
fi
bindir=$(dirname "$python")
# The plugin runs the `ruff` it finds on PATH: put the pinned one first.
ruffdir=$(dirname "$("$python" -c 'from ruff.__main__ import find_ruff_bin; print(find_ruff_bin())')")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/out" "$work/cwd"
# The plugin runs `ruff check --fix` and `ruff format` on its output from the current directory:
# give ruff a fixed configuration of its own, not the one of whatever directory this runs from.
printf 'line-length = 120\ntarget-version = "py311"\n' >"$work/cwd/ruff.toml"

cd "$root"
export LC_ALL=C
protos=(proto/dayu/v1/*.proto)
(
  cd "$work/cwd"
  PATH="$ruffdir:$bindir:$PATH" "$python" -m grpc_tools.protoc \
    --proto_path="$root/proto" \
    --plugin=protoc-gen-python_betterproto2="$bindir/protoc-gen-python_betterproto2" \
    --python_betterproto2_out=client_generation=async:"$work/out" \
    "${protos[@]/#/$root/}" 2>"$work/protoc.log"
) || { cat "$work/protoc.log" >&2; exit 1; }
cat >"$work/out/__init__.py" <<'PY'
"""Dayu's Python dataclass client (betterproto2 + grpclib), generated from proto/dayu/v1 by
hack/gen-betterproto.sh; do not edit. Messages and stubs: dayu_client.dayu.v1."""
PY

rm -rf "$dest"
mkdir -p "$dest"
cp -r "$work/out" "$dest/dayu_client"
echo "generated ${dest#"$root"/}/dayu_client from proto/dayu/v1 (betterproto2-compiler $compiler_version)"
