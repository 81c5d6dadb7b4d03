#!/usr/bin/env bash
# Builds the dayu image (every component, and the CPU Triton of the nvidia-pytriton wheel) from the
# Dockerfile at the repository root.
#
#   hack/build-images.sh REGISTRY/dayu[:TAG]   linux/amd64 and linux/arm64 in one manifest list, pushed
#   hack/build-images.sh --load dayu[:TAG]     this machine's architecture only, into the local docker
#                                              (then e.g. `kind load docker-image dayu:TAG`)
# TAG defaults to the project's version (pyproject.toml), which kustomize/base/defaults sets too.
#
# Needs docker with buildx. A multi-architecture build needs a builder that can produce both
# architectures: either QEMU's binfmt handlers on this machine (Debian: apt-get install
# qemu-user-static binfmt-support) with a docker-container builder
# (docker buildx create --name dayu --driver docker-container --use), or one native builder per
# architecture joined into one (docker buildx create --name dayu --append ssh://arm64-host).
# Every dependency installs from wheels on both architectures (checked with
# `pip install --dry-run --only-binary=:all: --platform manylinux_2_35_aarch64 ...`).
#
# Afterwards pin the manifests to what was pushed, by digest:
#   digest=$(docker buildx imagetools inspect REGISTRY/dayu:TAG --format '{{json .Manifest.Digest}}' | tr -d '"')
#   (cd kustomize/overlays/NAME && kustomize edit set image dayu=REGISTRY/dayu:TAG@$digest)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

load=false
if [ "${1:-}" = "--load" ]; then
  load=true
  shift
fi
if [ $# -ne 1 ]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
image=$1
if [[ "${image##*/}" != *:* && "$image" != *@* ]]; then
  version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$root/pyproject.toml")
  image="$image:$version"
fi

if $load; then
  docker buildx build --load --tag "$image" "$root"
else
  docker buildx build --platform linux/amd64,linux/arm64 --tag "$image" --push "$root"
  docker buildx imagetools inspect "$image"
fi
