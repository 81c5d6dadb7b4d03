"""What runs where, with which settings: the one derivation of a mesh file into component instances.

Every mode starts the same instances with the same settings; only how they reach each other differs,
and that is a `Wiring`: the embedded mesh gives every instance its own loopback port, Kubernetes (and
the cluster of namespaces, which runs the manifests) gives fixed ports on each node's network and
Services for the cloud's singletons. A new component or node kind is added here, once."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dayu.mesh.model import MeshConfig, ProcessorSection

# Cloud singletons, reached by name (a Service); the rest run on every node that needs them.
CLOUD_SERVICES = ("scheduler", "distributor", "datasource", "backend")
# Fixed ports (Kubernetes: each pod's, behind its Service; the cluster: each node's namespace).
PORTS = {
    "controller": 50051,
    "monitor": 50052,
    "generator": 50053,
    "scheduler": 50054,
    "distributor": 50055,
    "datasource": 50056,
    "backend": 50057,
    "triton": 50101,
}
FIRST_PROCESSOR_PORT = 50061  # processor roles in name order: 50061, 50062, ...
HEALTH_PORT_OFFSET = 1000  # a component's plaintext health port (server.health_listen): its port + 1000


def health_port(port: int) -> int:
    """The plaintext grpc.health.v1 port beside a component's (mutual TLS) port: controller 50051 -> 51051.
    Kubelet probes speak no TLS; this port serves health alone."""
    return port + HEALTH_PORT_OFFSET


# Generators first (no new tasks), controllers before processors, the cloud services last (the
# scheduler, which receives the others' last spans, the very last).
STOP_ORDER = ("generator", "controller", "processor", "monitor", "datasource", "backend", "distributor", "scheduler")


@dataclass(frozen=True)
class Instance:
    """One component process (or, embedded, one in-process server) on one node."""

    component: str
    node: str
    role: str = ""  # processor: its kind, or golden-KIND for a golden-configuration scorer

    @property
    def key(self) -> str:
        """scheduler, controller@edge-1, processor@cloud/text_detector: how modes and tests name it."""
        if self.component in CLOUD_SERVICES:
            return self.component
        return f"{self.component}@{self.node}" + (f"/{self.role}" if self.role else "")


class Wiring:
    """How instances reach each other, and where their files are. Subclasses say the addresses."""

    pipelines_file: str
    database: str
    models_dir: str | None  # where processors in process find the mesh's own models
    emulated_links: bool  # links emulated by the controllers (bandwidth, delay, traces); else real ones
    tokens_file: str  # the operator API's bearer tokens (dayu.runtime.auth), read by the backend and scheduler
    console_listen: str  # HOST:PORT of the backend's console; empty: none
    backend_database: str  # the backend's SQLite file (pipelines, installed streams): kept across runs

    def address(self, target: Instance, seen_from: Instance) -> str:
        """HOST:PORT at which the instance `seen_from` reaches `target`."""
        raise NotImplementedError

    def triton(self, node: str) -> str:
        """HOST:PORT of the Triton that `node`'s processors use."""
        raise NotImplementedError

    def state_dir(self, node: str) -> str:
        """The folder, kept across restarts, where `node`'s controller journals the tasks it holds
        and its generator keeps its streams' sequence numbers."""
        raise NotImplementedError


GOLDEN = "golden-"  # a golden-configuration scorer's role: GOLDEN + its kind


def golden_role(kind: str) -> str:
    return GOLDEN + kind


def processor_roles(config: MeshConfig) -> list[str]:
    """Every processor role of the mesh, in name order: the kinds its nodes host, then the golden scorers."""
    kinds = sorted({kind for node in config.nodes.values() for kind in node.hosted})
    return kinds + [golden_role(kind) for kind in sorted(config.golden)]


def processor_ports(config: MeshConfig) -> dict[str, int]:
    return {role: FIRST_PROCESSOR_PORT + index for index, role in enumerate(processor_roles(config))}


def on_triton(params: dict[str, Any]) -> bool:
    return params.get("backend") == "triton"


def triton_nodes(config: MeshConfig) -> list[str]:
    """Nodes with a processor on Triton (a golden scorer's counts on the cloud node) and no Triton of
    their own named: the mesh runs one there."""
    golden = [config.golden_section(name).params for name in config.golden]
    return [
        node
        for node, section in config.nodes.items()
        if not section.triton
        and (
            any(on_triton(config.processors.get(kind, ProcessorSection()).params) for kind in section.hosted)
            or (node == config.cloud_node and any(on_triton(params) for params in golden))
        )
    ]


def processor_models(config: MeshConfig, name: str, golden: bool = False) -> list[str]:
    """The Triton model names that the processor `name` runs: its kind's own
    (dayu.processor.deployment.kind_models: the detector's, the recogniser's, a `model` kind's `model`)
    and those the stages of the mesh's pipelines that name it give instead, in that order."""
    from dayu.processor.deployment import kind_models

    params = (config.golden_section(name) if golden else config.processors.get(name, ProcessorSection())).params
    found = kind_models(config.processor_kind(name, golden=golden), params)
    found += _stage_models(config.pipelines_file, config.pipelines_file.stat().st_mtime_ns).get(name, [])
    return list(dict.fromkeys(found))


@functools.lru_cache(maxsize=8)
def _stage_models(pipelines_file: Path, mtime_ns: int) -> dict[str, list[str]]:
    """processor name -> the models that the stages of the pipelines file naming it name (read once
    per version of the file)."""
    from dayu.runtime.pipelines import load_pipelines

    found: dict[str, list[str]] = {}
    for pipeline in load_pipelines(pipelines_file).values():
        for stage in pipeline.stages:
            if stage.model:
                found.setdefault(stage.processor, []).append(stage.model)
    return found


def triton_models(config: MeshConfig, nodes: list[str]) -> list[str]:
    """What the Triton that the mesh starts for `nodes` (one per node in Kubernetes and the cluster; one
    shared by them all, embedded) loads at start: the models of their always-loaded processors on
    Triton (`processors`, and the golden scorers on the cloud node), in name order. Not those of their
    deployable processors: the deployment plan loads and unloads them through the repository API."""
    names = [(name, False) for node in nodes for name in config.nodes[node].processors]
    if config.cloud_node in nodes:
        names += [(name, True) for name in config.golden]
    models: set[str] = set()
    for name, golden in names:
        section = config.golden_section(name) if golden else config.processors.get(name, ProcessorSection())
        if on_triton(section.params):
            models.update(processor_models(config, name, golden))
    return sorted(models)


def triton_arguments(config: MeshConfig, nodes: list[str]) -> list[str]:
    """tritonserver's model control flags for the Triton the mesh starts for `nodes`, the same in every
    mode: explicit model control (loads and unloads through the repository API), with the models of
    triton_models loaded at start (and no others: Triton loads the rest when a processor asks)."""
    from dayu.processor.triton_server import model_control_arguments

    return model_control_arguments(triton_models(config, nodes))


def instances(config: MeshConfig) -> list[Instance]:
    """Every instance of the mesh, in start order (each after what it calls)."""
    cloud = config.cloud_node
    found = [Instance("scheduler", cloud)]
    found += [Instance("processor", cloud, golden_role(kind)) for kind in sorted(config.golden)]
    found += [Instance("distributor", cloud), Instance("datasource", cloud), Instance("backend", cloud)]
    for node, section in config.nodes.items():
        found += [Instance("processor", node, kind) for kind in section.hosted]
    found += [Instance("controller", node) for node in config.nodes]
    found += [Instance("monitor", node) for node in config.nodes]
    found += [Instance("generator", node) for node in generator_nodes(config)]
    return found


def generator_nodes(config: MeshConfig) -> list[str]:
    """Every edge node has a generator, for the streams of the mesh file and those installed at run time
    (the backend's InstallStream); the cloud node one only when the mesh file puts a stream there."""
    return [node for node in config.nodes if node != config.cloud_node or config.streams_on(node)]


def certificate_holders(config: MeshConfig) -> list[tuple[str, str]]:
    """(component, node) of every certificate a mesh with mutual TLS needs (dayu.runtime.tls), in start
    order: one per instance's component and node (a node's processors, of every role, share
    `processor.NODE`), and Triton's on the nodes where the mesh runs one. Not the operator's."""
    holders = [(instance.component, instance.node) for instance in instances(config)]
    holders += [("triton", node) for node in triton_nodes(config)]
    return list(dict.fromkeys(holders))


def _processor_section(config: MeshConfig, instance: Instance) -> ProcessorSection:
    if instance.role.startswith(GOLDEN):
        return config.golden_section(instance.role.removeprefix(GOLDEN))
    return config.processors.get(instance.role, ProcessorSection())


def _with_triton(params: dict[str, Any], address: str) -> dict[str, Any]:
    """A kind's parameters with its node's Triton address, unless they are not on Triton or name one."""
    if not on_triton(params):
        return params
    return {**params, "triton": {"address": address, **params.get("triton", {})}}


def _releases(config: MeshConfig, node: str, name: str, wiring: Wiring) -> bool:
    """Whether a deployable processor unloads its models from its backend: always in process; on Triton,
    unless another processor on that Triton runs one of the same models (Triton does not count who
    uses a model: an unload would take it from them too). That is a processor another node, or this
    one, always holds, another deployable one, or the cloud's golden scorer, where the nodes share the
    Triton (the embedded mesh's one) or on this node (two processors of one kind)."""
    if not on_triton(config.processors.get(name, ProcessorSection()).params):
        return True
    shared, mine = wiring.triton(node), set(processor_models(config, name))
    others = [
        (other, peer, False)
        for other, section in config.nodes.items()
        for peer in section.hosted
        if (other, peer) != (node, name)
    ]
    others += [(config.cloud_node, peer, True) for peer in config.golden]
    for other, peer, golden in others:
        section = config.golden_section(peer) if golden else config.processors.get(peer, ProcessorSection())
        if on_triton(section.params) and wiring.triton(other) == shared:
            if mine & set(processor_models(config, peer, golden)):
                return False
    return True


def _with_models(kind: str, params: dict[str, Any], models_dir: str | None) -> dict[str, Any]:
    """A model kind's parameters in process with the folder of the mesh's own models, unless they name one."""
    from dayu.processor.kinds import PROCESSORS

    if models_dir is None or on_triton(params) or "model_repository" in params:
        return params
    if "model_repository" not in PROCESSORS.params_model(kind).model_fields:
        return params
    return {**params, "model_repository": models_dir}


def settings(config: MeshConfig, instance: Instance, wiring: Wiring) -> dict[str, Any]:
    """The settings file of an instance (what `dayu serve COMPONENT --config FILE` reads), less its
    listening address, which the mode gives with --listen."""
    cloud, node = config.cloud_node, instance.node

    def at(component: str, where: str = cloud, role: str = "") -> str:
        return wiring.address(Instance(component, where, role), seen_from=instance)

    local_processors = {kind: at("processor", node, kind) for kind in config.nodes[node].hosted}
    peers = [other for other in config.nodes if other != node]
    section: dict[str, Any]
    match instance.component:
        case "scheduler":
            section = {"cloud_node": cloud, **config.scheduler}
        case "distributor":
            golden = {kind: at("processor", cloud, golden_role(kind)) for kind in sorted(config.golden)}
            section = {
                "database": wiring.database,
                "scheduler": at("scheduler"),
                "golden": {"processors": golden},
                "gap_timeout_s": config.gap_timeout_s,
            }
        case "datasource":
            section = {"sources": config.sources, "media_dirs": [str(folder) for folder in config.media_dirs]}
        case "backend":
            section = _backend_section(config, instance, wiring)
        case "processor":
            processor = _processor_section(config, instance).model_dump(exclude={"kind"})
            name = instance.role.removeprefix(GOLDEN)
            kind = config.processor_kind(name, golden=instance.role.startswith(GOLDEN))
            params = _with_triton(processor["params"], wiring.triton(node))
            processor["params"] = _with_models(kind, params, wiring.models_dir)
            section = {"kind": kind, "name": name, **processor}
            if name in config.nodes[node].deployable and not instance.role.startswith(GOLDEN):
                section["deployable"] = {
                    "scheduler": at("scheduler"),
                    "release_models": _releases(config, node, name, wiring),
                }
        case "controller":
            section = {
                "cloud_node": cloud,
                "peers": {other: at("controller", other) for other in peers},
                "processors": local_processors,
                "distributor": at("distributor"),
                "scheduler": at("scheduler"),
                "join_timeout_s": config.join_timeout_s,
                "late_factor": config.late_factor,
                "journal": f"{wiring.state_dir(node)}/controller-journal.sqlite",
            }
            if wiring.emulated_links:
                section["links"] = dict(_emulated_links(config, node))
        case "monitor":
            section = {
                "controller": at("controller", node),
                "peers": peers,
                "processors": local_processors,
                "scheduler": at("scheduler"),
            }
        case "generator":
            section = {
                "datasource": at("datasource"),
                "controller": at("controller", node),
                "scheduler": at("scheduler"),
                "distributor": at("distributor"),
                "pipelines_file": wiring.pipelines_file,
                "streams": config.streams_on(node),
                "sequences": f"{wiring.state_dir(node)}/generator-sequences.sqlite",
            }
        case other:
            raise ValueError(f"no settings for component {other!r}")
    data: dict[str, Any] = {"node": node, instance.component: section}
    if instance.component in ("backend", "scheduler"):  # the operator API's tokens (dayu.runtime.auth)
        data["auth"] = {"tokens_file": wiring.tokens_file}
    if instance.component != "scheduler":  # every other component sends its spans to the scheduler
        data["tracing"] = {
            "export_to": [at("scheduler"), *config.otlp_collectors],
            "sample_ratio": config.trace_sample_ratio,
        }
    return data


def _backend_section(config: MeshConfig, backend: Instance, wiring: Wiring) -> dict[str, Any]:
    """The backend knows the mesh: every component's address, the processors of each node, the policies."""
    from dayu.scheduler.policies import POLICIES  # names only; the backend does not run them

    members = [
        {"component": i.component, "node": i.node, "role": i.role, "address": wiring.address(i, backend)}
        for i in instances(config)
        if i != backend
    ]
    names = {name for node in config.nodes.values() for name in node.hosted}
    return {
        "pipelines_file": wiring.pipelines_file,
        "database": wiring.backend_database,
        "console_listen": wiring.console_listen,
        "cloud_node": config.cloud_node,
        "nodes": {node: list(section.processors) for node, section in config.nodes.items()},
        "processor_kinds": {name: config.processor_kind(name) for name in sorted(names)},
        "members": members,
        "policies": POLICIES.names(),
    }


def _emulated_links(config: MeshConfig, node: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for link in config.links:
        if node in link.between:
            other = link.between[1] if link.between[0] == node else link.between[0]
            yield other, {"bandwidth_mbps": link.bandwidth_mbps, "delay_ms": link.delay_ms, "trace": link.trace}
