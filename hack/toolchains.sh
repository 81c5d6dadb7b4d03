#!/usr/bin/env bash
# Installs what the tests need beyond Python, from Debian (as root; apt runs only when something is
# missing): Go with Debian's gRPC and protobuf sources and the protoc plugins (the Go client builds
# against them: there is no Go module download), Node.js with npm for the TypeScript client when the
# machine has none (Node 20 or newer: Debian 12's is 18), iproute2 and util-linux for the cluster
# of real nodes, and Chromium for the console's browser tests (Playwright drives Debian's; it
# downloads no browser), and Prometheus for the metrics tests. .ci/run and the README's test command
# run it.
set -euo pipefail
packages=()
for tool in tc:iproute2 nsenter:util-linux unshare:util-linux go:golang-go protoc-gen-go:protoc-gen-go \
  protoc-gen-go-grpc:protoc-gen-go-grpc; do
  command -v "${tool%%:*}" >/dev/null || packages+=("${tool#*:}")
done
for dir in google.golang.org/grpc:golang-google-grpc-dev google.golang.org/protobuf:golang-google-protobuf-dev; do
  [ -d "/usr/share/gocode/src/${dir%%:*}" ] || packages+=("${dir#*:}")
done
# grpc's codec needs golang/protobuf 1.5 (apt would pick 1.3 for grpc, and the client panics on its
# first reply).
grep -qs 'google.golang.org/protobuf' /usr/share/gocode/src/github.com/golang/protobuf/go.mod ||
  packages+=(golang-github-golang-protobuf-1-5-dev)
# Screenshots need a font: without recommends, Debian's chromium brings none.
command -v chromium >/dev/null || packages+=(chromium fonts-dejavu-core)
# A real Prometheus scrapes the mesh in the metrics tests (docs/metrics.md).
command -v prometheus >/dev/null || packages+=(prometheus)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  packages+=(nodejs npm)
fi
if [ ${#packages[@]} -gt 0 ]; then
  echo "hack/toolchains.sh: installing ${packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
