"""The Kubernetes side of a mesh file: a kustomize Component with each instance's settings file (as
ConfigMaps), one workload and one Service per per-node component and node, which nodes run what, and
which TLS Secret each pod mounts.

The settings come from the plan (dayu.mesh.plan) with Kubernetes wiring: every instance is reached
through a Service of its own, at the plan's fixed ports: the cloud's singletons through theirs
(`dayu-scheduler:50054`), a per-node component through the Service of its node's workload
(`dayu-controller-edge-1:50051`, `dayu-processor-text-detector-edge-1:50063`,
`dayu-triton-edge-1:50101`), which selects that one pod. The per-node workloads are made from the
templates in kustomize/base/node (one kustomization per component and node, see kustomize/README.md),
and the files are where those manifests mount them: the backend's console listens on CONSOLE_PORT
(its Service's `console` port), the backend and the scheduler read the operator's tokens from the
Secret TOKENS_SECRET, the backend keeps its database on its claim. hack/gen_kustomize.py writes the
result into kustomize/base/mesh; the cluster of namespaces renders it for its own mesh file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from dayu.mesh.model import MeshConfig
from dayu.mesh.plan import (
    CLOUD_SERVICES,
    PORTS,
    Instance,
    Wiring,
    certificate_holders,
    health_port,
    instances,
    processor_ports,
    settings,
    triton_arguments,
    triton_nodes,
)
from dayu.runtime.tls import CA_NAME, MESH_NAME, ORGANIZATION, common_name, secret_name

ROOT = Path(__file__).resolve().parents[3]
KUSTOMIZE = ROOT / "kustomize"
CONFIG_DIR = "/etc/dayu"  # where the containers find their settings (the mounts in kustomize/base)
DATABASE = "/var/lib/dayu/dayu-records.sqlite"
# The operator API's bearer tokens (dayu.runtime.auth): the Secret TOKENS_SECRET, which the operator
# creates (`kubectl create secret generic dayu-tokens --from-file=tokens.yaml`), mounted by the backend
# and the scheduler at TOKENS_DIR (kustomize/base/cloud).
TOKENS_SECRET = "dayu-tokens"
TOKENS_DIR = "/etc/dayu-tokens"
TOKENS_FILE = f"{TOKENS_DIR}/tokens.yaml"
CONSOLE_PORT = 8080  # the backend's console (UI and Connect HTTP/JSON): plain HTTP, behind an Ingress
BACKEND_DATABASE = "/var/lib/dayu-backend/backend.sqlite"  # on the backend's claim (kustomize/base/cloud)
NODE_STATE_DIR = "/var/lib/dayu-node"  # a hostPath on each node (kustomize/base/node): kept across pod restarts
NODE_LABEL = "dayu.io/node"  # the node a per-node workload, its pods and its Service are for
TEMPLATES = "../../../node"  # kustomize/base/node, from base/mesh/nodes/NAME
GPU_TEMPLATE = "../../../../components/gpu/triton-gpu"  # from base/mesh/gpu/NAME
MODEL_REPOSITORY = "/opt/dayu/triton_models"  # in the image (Dockerfile)
DEFAULTS = "../../defaults"  # kustomize/base/defaults, from base/mesh/cert-manager
SERVICE_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # an RFC 1035 label, as Service names are


class KubernetesWiring(Wiring):
    """Every instance behind a Service: the cloud singletons' (`dayu-scheduler`), and for a per-node
    component the Service of its workload on that node (`dayu-controller-edge-1`), which selects that
    one pod. No host network, no loopback between pods: each pod has its own network namespace."""

    pipelines_file = f"{CONFIG_DIR}/pipelines.yaml"
    database = DATABASE
    tokens_file = TOKENS_FILE
    console_listen = f"0.0.0.0:{CONSOLE_PORT}"
    backend_database = BACKEND_DATABASE
    emulated_links = False

    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        # The image's assembled repository holds the mesh's own models too, as <name>/<version>/model.onnx.
        self.models_dir = MODEL_REPOSITORY if config.models_dir is not None else None
        self.ports = {
            **PORTS,
            "console": CONSOLE_PORT,
            **{f"processor/{role}": port for role, port in processor_ports(config).items()},
        }

    def port(self, instance: Instance) -> int:
        """An instance's gRPC port (the backend's console is at ports["console"])."""
        return self.ports[f"processor/{instance.role}" if instance.component == "processor" else instance.component]

    def address(self, target: Instance, seen_from: Instance) -> str:
        return f"{workload_name(target)}:{self.port(target)}"

    def triton(self, node: str) -> str:
        """The node's own Triton where the mesh names one, else the Service of the mesh's Triton there."""
        return self.config.nodes[node].triton or f"{workload_name(Instance('triton', node))}:{PORTS['triton']}"

    def state_dir(self, node: str) -> str:
        return NODE_STATE_DIR


def dns_name(role: str) -> str:
    """A processor role as it appears in Kubernetes names (text_detector -> text-detector)."""
    return role.replace("_", "-")


def node_suffix(node: str) -> str:
    """A node name as it appears in the names of its workloads and Services: Kubernetes node names
    are DNS subdomains (they may hold dots), Service names are DNS labels (edge-1.lab -> edge-1-lab)."""
    return node.replace(".", "-")


def workload_name(instance: Instance) -> str:
    """The name of the workload, and of the Service, of an instance: dayu-scheduler for a cloud
    singleton; per node dayu-COMPONENT-NODE, dayu-processor-ROLE-NODE, dayu-triton-NODE."""
    if instance.component in CLOUD_SERVICES:
        return f"dayu-{instance.component}"
    role = f"-{dns_name(instance.role)}" if instance.component == "processor" else ""
    return f"dayu-{instance.component}{role}-{node_suffix(instance.node)}"


def settings_file(instance: Instance, node: str = "") -> str:
    """The file an instance reads from /etc/dayu: one per cloud singleton, per node for the per-node
    components (per role and node for processors: a role on Triton calls its node's), `node` in
    place of the instance's where given ("$(NODE_NAME)": what a container's arguments say)."""
    node = node or instance.node
    if instance.component in CLOUD_SERVICES:
        return f"{instance.component}.yaml"
    if instance.component == "processor":
        return f"processor.{instance.role}.{node}.yaml"
    return f"{instance.component}.{node}.yaml"


class _Dumper(yaml.SafeDumper):
    """Writes a repeated object out each time (no &anchors): kustomize patches read more plainly."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _yaml(data: Any, header: str = "") -> str:
    return header + yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def _name_term(nodes: list[str]) -> dict[str, Any]:
    return {"matchFields": [{"key": "metadata.name", "operator": "In", "values": nodes}]}


def _name_affinity(nodes: list[str]) -> dict[str, Any]:
    """Pins a pod template to the named nodes (node names, not labels: the mesh names nodes)."""
    terms = [_name_term(nodes)]
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}


def check_registries(config: MeshConfig) -> None:
    """Fails on names and parameters that `dayu serve` would refuse, before anything is written (the
    processors were checked when the mesh file was loaded)."""
    from dayu.datasource.sources import SOURCES
    from dayu.runtime.pipelines import load_pipelines
    from dayu.scheduler.policies import POLICIES

    for index, source in enumerate(config.sources):
        SOURCES.params(source.get("kind", ""), source.get("params"), field=f"sources[{index}].params")
    for index, stream in enumerate(config.streams):
        policy = getattr(stream, "policy", None) or {}
        if policy:
            POLICIES.params(policy.get("name", "fixed"), policy.get("params"), field=f"streams[{index}].policy")
    load_pipelines(config.pipelines_file)


def check_names(config: MeshConfig) -> None:
    """Fails on node names whose workloads or Services Kubernetes would refuse, or that would share one."""
    names: dict[str, str] = {}
    for instance in per_node_instances(config):
        name = workload_name(instance)
        if not SERVICE_NAME.fullmatch(name):
            raise ValueError(
                f"node {instance.node!r}: its Service {name!r} is not a DNS label (lowercase letters, digits "
                "and '-', at most 63 characters): Kubernetes node names are lowercase; use a shorter one"
            )
        if names.setdefault(name, instance.node) != instance.node:
            raise ValueError(f"nodes {names[name]!r} and {instance.node!r} would share the Service {name!r}")


def per_node_instances(config: MeshConfig) -> list[Instance]:
    """What runs as a workload of one node, behind a Service of its own: every instance but the cloud
    singletons, and the mesh's Triton on each node that has processors on it."""
    found = [instance for instance in instances(config) if instance.component not in CLOUD_SERVICES]
    return found + [Instance("triton", node) for node in triton_nodes(config)]


def render(config: MeshConfig, header: str) -> dict[str, str]:
    """The Component's files, by path relative to the mesh folder of a kustomize/base tree (where
    they are written); every file starts with `header`."""
    from dayu.components import COMPONENTS  # the settings classes check each file

    check_registries(config)
    check_names(config)
    wiring = KubernetesWiring(config)
    files: dict[str, str] = {"pipelines.yaml": config.pipelines_file.read_text()}
    generated: dict[str, list[str]] = {}  # ConfigMap -> its files
    for instance in instances(config):
        name = settings_file(instance)
        data = settings(config, instance, wiring)
        text = _yaml(data, header)
        component = COMPONENTS.entry(instance.component).factory
        component.settings_class(**data)  # type: ignore[attr-defined]  # what `dayu serve` would refuse fails here
        files[name] = text
        generated.setdefault(f"dayu-{instance.component}", []).append(name)

    # One workload and Service per per-node component and node: the template in base/node/COMPONENT,
    # named for the node (and role), pinned to it, with its node's TLS Secret.
    folders = []
    for instance in sorted(per_node_instances(config), key=workload_name):
        folder = f"nodes/{workload_name(instance).removeprefix('dayu-')}"
        folders.append(folder)
        files[f"{folder}/kustomization.yaml"] = _yaml(_node_kustomization(instance), header)
        files[f"{folder}/patch.yaml"] = header + "---\n".join(_yaml(doc) for doc in _node_patch(instance, wiring))
        if instance.component == "triton":
            files[f"{folder}/{TRITON_MODELS_PATCH}"] = _yaml(_triton_models(config, instance.node), header)
    # The cloud-only Deployments (kustomize/base/cloud) run on the mesh's cloud node, with its Secrets.
    files["cloud.yaml"] = header + "---\n".join(_yaml(_cloud_patch(config, service)) for service in CLOUD_SERVICES)
    files.update(_gpu_tritons(config, header))
    files.update(_certificates(config, header))

    component = {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "resources": folders,
        "configMapGenerator": [
            {"name": "dayu-pipelines", "files": ["pipelines.yaml"]},
            *({"name": name, "files": names} for name, names in generated.items()),
        ],
        "patches": [{"path": "cloud.yaml"}],
    }
    files["kustomization.yaml"] = _yaml(component, header)
    return files


def _node_labels(instance: Instance) -> dict[str, str]:
    labels = {NODE_LABEL: instance.node}
    if instance.component == "processor":
        labels["dayu.io/processor"] = instance.role
    return labels


def _node_kustomization(instance: Instance) -> dict[str, Any]:
    """One per-node workload and its Service: the component's template, named dayu-COMPONENT[-ROLE]-NODE,
    its pods and the Service's selector labelled with the node (and role)."""
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [f"{TEMPLATES}/{instance.component}"],
        "nameSuffix": workload_name(instance).removeprefix(f"dayu-{instance.component}"),
        "labels": [{"pairs": _node_labels(instance), "includeSelectors": True}],
        "patches": [
            {"path": "patch.yaml"},
            *([_TRITON_MODELS_ENTRY] if instance.component == "triton" else []),
        ],
    }


TRITON_MODELS_PATCH = "models.yaml"  # beside a node's Triton patch.yaml: its model control arguments
_TRITON_MODELS_ENTRY = {"path": TRITON_MODELS_PATCH, "target": {"kind": "DaemonSet"}}


def _triton_models(config: MeshConfig, node: str) -> list[dict[str, Any]]:
    """A JSON patch that appends to the node's tritonserver (the template's only container, CPU or GPU)
    the plan's model control arguments: explicit mode, loading at start the models of the node's
    always-loaded processors, so that its deployable ones load and unload through the repository API
    (the same arguments as the embedded mesh's Triton, dayu.mesh.plan.triton_arguments)."""
    args = "/spec/template/spec/containers/0/args/-"
    return [{"op": "add", "path": args, "value": argument} for argument in triton_arguments(config, [node])]


def _tls_volume(component: str, node: str) -> dict[str, Any]:
    return {"name": "tls", "secret": {"secretName": secret_name(component, node)}}


def _node_patch(instance: Instance, wiring: KubernetesWiring) -> list[dict[str, Any]]:
    """The workload's node and Secret; a processor's port, settings file and probes too (its template
    is every role's)."""
    pod: dict[str, Any] = {
        "affinity": _name_affinity([instance.node]),
        "volumes": [_tls_volume(instance.component, instance.node)],
    }
    patch: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": f"dayu-{instance.component}"},
        "spec": {"template": {"spec": pod}},
    }
    if instance.component != "processor":
        return [patch]
    port = wiring.port(instance)
    probe = {"grpc": {"port": health_port(port)}}
    pod["containers"] = [
        {
            "name": "processor",
            "args": [
                "serve",
                "processor",
                f"--listen=0.0.0.0:{port}",
                f"--config={CONFIG_DIR}/{settings_file(instance, '$(NODE_NAME)')}",
                "--node=$(NODE_NAME)",
            ],
            "env": [{"name": "DAYU_SERVER__HEALTH_LISTEN", "value": f"0.0.0.0:{health_port(port)}"}],
            "ports": [
                {"name": "grpc", "containerPort": port},
                {"name": "health", "containerPort": health_port(port)},
            ],
            "startupProbe": probe,
            "livenessProbe": probe,
            "readinessProbe": probe,
        }
    ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "dayu-processor"},
        "spec": {"ports": [{"name": "grpc", "port": port, "targetPort": "grpc"}]},
    }
    return [patch, service]


def _cloud_patch(config: MeshConfig, service: str) -> dict[str, Any]:
    """A cloud singleton's Deployment: on the cloud node, with its certificate of that node."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"dayu-{service}"},
        "spec": {
            "template": {
                "spec": {
                    "affinity": _name_affinity([config.cloud_node]),
                    "volumes": [_tls_volume(service, config.cloud_node)],
                }
            }
        },
    }


def _gpu_tritons(config: MeshConfig, header: str) -> dict[str, str]:
    """gpu/: the GPU Triton of components/gpu per node, as the CPU one (same Secret, same node label,
    so the node's dayu-triton-NODE Service selects whichever of the two runs there). Not part of this
    Component: components/gpu adds it."""
    files: dict[str, str] = {}
    folders = []
    for node in triton_nodes(config):
        folder = f"triton-gpu-{node_suffix(node)}"
        folders.append(folder)
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [GPU_TEMPLATE],
            "nameSuffix": f"-{node_suffix(node)}",
            "labels": [{"pairs": {NODE_LABEL: node}, "includeSelectors": True}],
            "patches": [
                {"path": "patch.yaml"},
                {"path": "node.yaml", "target": {"kind": "DaemonSet"}},
                _TRITON_MODELS_ENTRY,
            ],
        }
        secret = {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "dayu-triton-gpu"},
            "spec": {"template": {"spec": {"volumes": [_tls_volume("triton", node)]}}},
        }
        # The template's node affinity asks for a GPU; this node's name joins that term.
        terms = (
            "/spec/template/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms"
        )
        pinned = [{"op": "add", "path": f"{terms}/0/matchFields", "value": _name_term([node])["matchFields"]}]
        files[f"gpu/{folder}/kustomization.yaml"] = _yaml(kustomization, header)
        files[f"gpu/{folder}/patch.yaml"] = _yaml(secret, header)
        files[f"gpu/{folder}/node.yaml"] = _yaml(pinned, header)
        files[f"gpu/{folder}/{TRITON_MODELS_PATCH}"] = _yaml(_triton_models(config, node), header)
    aggregate = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": folders}
    files["gpu/kustomization.yaml"] = _yaml(aggregate, header)
    return files


def _certificates(config: MeshConfig, header: str) -> dict[str, str]:
    """cert-manager/: a Certificate per Secret that the pods mount (components/cert-manager adds them,
    with the CA that issues them). Not part of this Component."""
    certificates = [
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": {"name": secret_name(component, node)},
            "spec": {
                "secretName": secret_name(component, node),
                "secretTemplate": {"labels": {"app.kubernetes.io/part-of": "dayu"}},
                "commonName": common_name(component, node),
                "dnsNames": [MESH_NAME],
                "subject": {"organizations": [ORGANIZATION]},
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                "usages": ["digital signature", "server auth", "client auth"],
                "issuerRef": {"group": "cert-manager.io", "kind": "Issuer", "name": CA_NAME},
            },
        }
        for component, node in certificate_holders(config)
    ]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["certificates.yaml"],
        "components": [DEFAULTS],  # the namespace and labels of every Dayu object
    }
    return {
        "cert-manager/kustomization.yaml": _yaml(kustomization, header),
        "cert-manager/certificates.yaml": header + "---\n".join(_yaml(c) for c in certificates),
    }
