#!/usr/bin/env bash
# The contracts kept like a public API (docs/contracts.md), with the buf CLI of the dev extras (buf-bin):
#   hack/contracts.sh check     buf lint (STANDARD rules, buf.yaml), then buf breaking against the
#                               released contracts, proto/dayu-v1.binpb: CI runs it
#   hack/contracts.sh release   writes proto/dayu-v1.binpb from proto/ as it is now: run it when a
#                               change to dayu.v1 lands (additions), or, for a deliberate break, with
#                               the break documented in docs/contracts.md
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
buf=$(dirname "$(command -v python)")/buf
[ -x "$buf" ] || buf=$(command -v buf)
released=proto/dayu-v1.binpb

case "${1:-check}" in
  check)
    "$buf" lint
    "$buf" breaking --against "$released"
    echo "dayu.v1: lint clean, nothing breaks the released contracts ($released)"
    ;;
  release)
    "$buf" build -o "$released"
    echo "wrote $released: the contracts later changes are checked against"
    ;;
  *)
    echo "usage: hack/contracts.sh [check|release]" >&2
    exit 2
    ;;
esac
