#!/usr/bin/env bash
# Builds the Go example against Debian's Go packages only (no module downloads):
#   examples/go/build.sh OUTPUT     writes the dayu-example binary to OUTPUT
# Needs (Debian bookworm):
#   apt-get install golang-go golang-google-grpc-dev golang-google-protobuf-dev \
#     golang-github-golang-protobuf-1-5-dev
# Go 1.19 in GOPATH mode over /usr/share/gocode/src (Debian ships Go libraries as sources there
# and builds its own Go packages this way), plus a throwaway GOPATH entry that maps the import
# path dayu/gen/go to gen/go. go.mod is for normal module builds (see README.md); here it is
# not used. Set GOCACHE to keep compiled packages between runs (Go's default cache otherwise).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
gocode=${DAYU_GOCODE:-/usr/share/gocode}
install="apt-get install golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev"

if [ $# -ne 1 ]; then
  echo "usage: examples/go/build.sh OUTPUT" >&2
  exit 2
fi
out=$1
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

if ! command -v go >/dev/null; then
  echo "examples/go/build.sh: no go on PATH; install Debian's Go toolchain and libraries: $install" >&2
  exit 1
fi
for dir in google.golang.org/grpc google.golang.org/protobuf github.com/golang/protobuf \
  google.golang.org/genproto golang.org/x/net; do
  if [ ! -d "$gocode/src/$dir" ]; then
    echo "examples/go/build.sh: no $gocode/src/$dir; install: $install" >&2
    exit 1
  fi
done
# golang-github-golang-protobuf-1-3-dev (which apt picks for grpc unless told otherwise) predates
# google.golang.org/protobuf: the example builds, then grpc's codec panics on the first reply
# ("protobuf tag not enough fields in ListPipelinesResponse.state").
if ! grep -q 'google.golang.org/protobuf' "$gocode/src/github.com/golang/protobuf/go.mod" 2>/dev/null; then
  echo "examples/go/build.sh: $gocode/src/github.com/golang/protobuf is golang/protobuf 1.3;" \
    "grpc needs 1.5 for protoc-gen-go v1.28 messages: apt-get install golang-github-golang-protobuf-1-5-dev" >&2
  exit 1
fi

gopath=$(mktemp -d)
trap 'rm -rf "$gopath"' EXIT
mkdir -p "$gopath/src/dayu/gen"
ln -s "$root/gen/go" "$gopath/src/dayu/gen/go"

cd "$here"
GO111MODULE=off GOPATH="$gopath:$gocode" GOPROXY=off GOFLAGS= \
  go build -o "$out" .
