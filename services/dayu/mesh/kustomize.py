"""The Kubernetes side of a mesh file: a kustomize Component with each instance's settings file (as
ConfigMaps), one processor DaemonSet per processor role, and which nodes run what.

The settings come from the plan (dayu.mesh.plan) with Kubernetes wiring: per-node components use
their host's network at the plan's fixed ports (a node's controller is at NODE:50051, NODE being its
name unless an address is given for it), the cloud's singletons are reached through their Services,
and the files are where the manifests in kustomize/base mount them. hack/gen_kustomize.py writes the
result into kustomize/base/mesh; the cluster of namespaces renders it for its own mesh file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dayu.mesh.model import MeshConfig
from dayu.mesh.plan import (
    CLOUD_SERVICES,
    PORTS,
    Instance,
    Wiring,
    instances,
    processor_ports,
    settings,
    triton_nodes,
)

ROOT = Path(__file__).resolve().parents[3]
KUSTOMIZE = ROOT / "kustomize"
CONFIG_DIR = "/etc/dayu"  # where the containers find their settings (the mounts in kustomize/base)
DATABASE = "/var/lib/dayu/dayu-records.sqlite"
NODE_STATE_DIR = "/var/lib/dayu-node"  # a hostPath on each node (kustomize/base/node): kept across pod restarts
CLOUD_ONLY = "dayu.io/placement=cloud"  # the label of the Deployments in kustomize/base/cloud


class KubernetesWiring(Wiring):
    """Per-node components on their host's network; cloud singletons behind Services."""

    pipelines_file = f"{CONFIG_DIR}/pipelines.yaml"
    database = DATABASE
    emulated_links = False

    def __init__(self, config: MeshConfig, node_addresses: dict[str, str]) -> None:
        self.ports = {**PORTS, **{f"processor/{role}": port for role, port in processor_ports(config).items()}}
        self.node_addresses = node_addresses

    def port(self, instance: Instance) -> int:
        return self.ports[f"processor/{instance.role}" if instance.component == "processor" else instance.component]

    def address(self, target: Instance, seen_from: Instance) -> str:
        if target.component in CLOUD_SERVICES:
            return f"dayu-{target.component}:{self.port(target)}"
        # A pod on the same host network reaches its node's components on loopback; a cloud
        # singleton (its own pod network) or another node goes to the node's address.
        if seen_from.component not in CLOUD_SERVICES and seen_from.node == target.node:
            return f"127.0.0.1:{self.port(target)}"
        return f"{self.node_addresses.get(target.node, target.node)}:{self.port(target)}"

    def triton(self, node: str) -> str:
        return f"127.0.0.1:{PORTS['triton']}"

    def state_dir(self, node: str) -> str:
        return NODE_STATE_DIR


def dns_name(role: str) -> str:
    """A processor role as it appears in Kubernetes names (text_detector -> text-detector)."""
    return role.replace("_", "-")


def settings_file(instance: Instance) -> str:
    """The file an instance reads from /etc/dayu: one per cloud singleton, per node for the per-node
    components, per role for processors (their settings do not depend on the node)."""
    if instance.component in CLOUD_SERVICES:
        return f"{instance.component}.yaml"
    if instance.component == "processor":
        return f"processor.{instance.role}.yaml"
    return f"{instance.component}.{instance.node}.yaml"


class _Dumper(yaml.SafeDumper):
    """Writes a repeated object out each time (no &anchors): kustomize patches read more plainly."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _yaml(data: Any, header: str = "") -> str:
    return header + yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def _name_affinity(nodes: list[str]) -> dict[str, Any]:
    """Pins a pod template to the named nodes (node names, not labels: the mesh names nodes)."""
    term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": nodes}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


def _placement(kind: str, name: str, nodes: list[str]) -> dict[str, Any]:
    if not nodes:  # runs nowhere: leave it out rather than pin it to no node
        return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "$patch": "delete"}
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"affinity": _name_affinity(nodes)}}},
    }


def check_registries(config: MeshConfig) -> None:
    """Fails on names and parameters that `dayu serve` would refuse, before anything is written."""
    from dayu.datasource.sources import SOURCES
    from dayu.processor.kinds import PROCESSORS
    from dayu.runtime.pipelines import load_pipelines
    from dayu.scheduler.policies import POLICIES

    for kind, section in {**config.processors, **config.golden}.items():
        PROCESSORS.params(kind, section.params, field=f"processors.{kind}.params")
    for node in config.nodes.values():
        for kind in node.processors:
            PROCESSORS.entry(kind, field="nodes.processors")
    for index, source in enumerate(config.sources):
        SOURCES.params(source.get("kind", ""), source.get("params"), field=f"sources[{index}].params")
    for index, stream in enumerate(config.streams):
        policy = getattr(stream, "policy", None) or {}
        if policy:
            POLICIES.params(policy.get("name", "fixed"), policy.get("params"), field=f"streams[{index}].policy")
    load_pipelines(config.pipelines_file)


def render(config: MeshConfig, node_addresses: dict[str, str], header: str) -> dict[str, str]:
    """The Component's files, by path relative to the mesh folder of a kustomize/base tree (where
    they are written); every file starts with `header`."""
    from dayu.components import COMPONENTS  # the settings classes check each file

    check_registries(config)
    unknown = sorted(set(node_addresses) - set(config.nodes))
    if unknown:
        raise ValueError(f"node addresses name nodes that are not in the mesh: {unknown}")
    wiring = KubernetesWiring(config, node_addresses)
    files: dict[str, str] = {"pipelines.yaml": config.pipelines_file.read_text()}
    generated: dict[str, list[str]] = {}  # ConfigMap -> its files
    hosts: dict[str, list[str]] = {}  # processor role -> its nodes
    for instance in instances(config):
        name = settings_file(instance)
        data = settings(config, instance, wiring)
        if instance.component == "processor":
            hosts.setdefault(instance.role, []).append(instance.node)
            del data["node"]  # a role's one file serves every node; --node says which
        text = _yaml(data, header)
        if name in files:
            if files[name] != text:
                raise ValueError(f"{name} would differ between nodes")
            continue
        component = COMPONENTS.entry(instance.component).factory
        component.settings_class(**data)  # type: ignore[attr-defined]  # what `dayu serve` would refuse fails here
        files[name] = text
        generated.setdefault(f"dayu-{instance.component}", []).append(name)

    nodes = list(config.nodes)
    placements = [
        _placement("DaemonSet", "dayu-controller", nodes),
        _placement("DaemonSet", "dayu-monitor", nodes),
        _placement("DaemonSet", "dayu-triton", triton_nodes(config)),
        _placement("DaemonSet", "dayu-generator", [node for node in nodes if config.streams_on(node)]),
    ]
    files["placement.yaml"] = header + "---\n".join(_yaml(placement) for placement in placements)
    # The cloud-only Deployments (kustomize/base/cloud) run on the mesh's cloud node.
    files["cloud-placement.yaml"] = header + _yaml(_placement("Deployment", "cloud-only", [config.cloud_node]))

    for role, port in processor_ports(config).items():
        folder = f"processors/{dns_name(role)}"
        template = "../../../processor"  # kustomize/base/processor, from base/mesh/processors/ROLE
        files[f"{folder}/kustomization.yaml"] = _yaml(_processor_kustomization(role, template), header)
        files[f"{folder}/patch.yaml"] = _yaml(_processor_patch(role, port, hosts[role]), header)

    component = {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "resources": [f"processors/{dns_name(role)}" for role in processor_ports(config)],
        "configMapGenerator": [
            {"name": "dayu-pipelines", "files": ["pipelines.yaml"]},
            *({"name": name, "files": names} for name, names in generated.items()),
        ],
        "patches": [
            {"path": "placement.yaml"},
            {"path": "cloud-placement.yaml", "target": {"kind": "Deployment", "labelSelector": CLOUD_ONLY}},
        ],
    }
    files["kustomization.yaml"] = _yaml(component, header)
    return files


def _processor_kustomization(role: str, template: str) -> dict[str, Any]:
    """One processor role's DaemonSet: the template in kustomize/base/processor, named for the role."""
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [template],
        "nameSuffix": f"-{dns_name(role)}",
        "labels": [{"pairs": {"dayu.io/processor": role}, "includeSelectors": True}],
        "patches": [{"path": "patch.yaml"}],
    }


def _processor_patch(role: str, port: int, nodes: list[str]) -> dict[str, Any]:
    """The role's nodes, port (its probes too) and settings file."""
    probe = {"grpc": {"port": port}}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "dayu-processor"},
        "spec": {
            "template": {
                "spec": {
                    "affinity": _name_affinity(nodes),
                    "containers": [
                        {
                            "name": "processor",
                            "args": [
                                "serve",
                                "processor",
                                f"--listen=0.0.0.0:{port}",
                                f"--config={CONFIG_DIR}/processor.{role}.yaml",
                                "--node=$(NODE_NAME)",
                            ],
                            "ports": [{"name": "grpc", "containerPort": port}],
                            "startupProbe": probe,
                            "livenessProbe": probe,
                            "readinessProbe": probe,
                        }
                    ],
                }
            }
        },
    }
