"""The mesh file: nodes, the components and processor kinds each runs, the links between them, each
node's resources, the streams and the cloud services' settings. Every mode reads this one model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import yaml

from dayu.runtime.config import StrictModel
from dayu.runtime.errors import InvalidArgument, from_validation_error, shown

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
DEFAULT_CONFIG = CONFIGS / "embedded.yaml"
EXPERIMENT_CONFIG = CONFIGS / "experiment.yaml"
CLUSTER_CONFIG = CONFIGS / "cluster.yaml"


class ResourcesSection(StrictModel):
    """What a node may use; the cluster of namespaces enforces it with the node's cgroup, as a
    Kubernetes node's capacity would. Omitted: as much as the machine has."""

    cpus: float | None = pydantic.Field(None, gt=0, description="cores (a CFS quota of cpus x period)")
    memory_mb: int | None = pydantic.Field(None, gt=0, description="memory limit in MiB")
    cpu_trace: Path | None = pydantic.Field(
        None, description="cores over time (time_s cores per line, repeating), replayed on the node's quota"
    )


class NodeSection(StrictModel):
    processors: list[str] = pydantic.Field(
        default_factory=list, description="processors on this node: names of the processors section, or kinds"
    )
    deployable: list[str] = pydantic.Field(
        default_factory=list,
        description="processors this node can host but that start unloaded: the scheduler's deployment plan "
        "loads their models when the node's streams need them, and unloads them when idle",
    )
    triton: str = pydantic.Field("", description="HOST:PORT of a running Triton for this node; empty: the mesh's own")
    resources: ResourcesSection = ResourcesSection()

    @property
    def hosted(self) -> list[str]:
        """Every processor the node runs: those always loaded, then the deployable ones."""
        return [*self.processors, *self.deployable]


class TritonSection(StrictModel):
    """The tritonserver the mesh starts (one, shared by the nodes that name none) on the repository
    assembled from triton_models/ in the workdir."""

    grpc_port: int = pydantic.Field(0, ge=0, le=65535, description="0 picks a free port")
    model_config_name: str = pydantic.Field("", description="--model-config-name; empty: config.pbtxt (CPU path)")
    startup_timeout_s: float = pydantic.Field(120.0, gt=0)


class LinkSection(StrictModel):
    between: tuple[str, str]
    bandwidth_mbps: float = pydantic.Field(0.0, ge=0)
    delay_ms: float = pydantic.Field(0.0, ge=0, description="one-way; emulated mesh only (no netem in the cluster)")
    trace: Path | None = None


class ProcessorSection(StrictModel):
    kind: str = pydantic.Field(
        "", description="the processor kind it runs; empty: its name is the kind (text_detector, model, ...)"
    )
    workers: int = pydantic.Field(1, ge=1)
    queue_capacity: int = pydantic.Field(64, ge=1)
    params: dict[str, Any] = pydantic.Field(default_factory=dict)


class StreamSection(StrictModel):
    """A stream and the edge node its generator runs on; the rest is the generator's stream section."""

    node: str
    model_config = pydantic.ConfigDict(extra="allow")


class MeshConfig(StrictModel):
    cloud_node: str = "cloud"
    nodes: dict[str, NodeSection]
    links: list[LinkSection] = pydantic.Field(default_factory=list)
    pipelines_file: Path
    processors: dict[str, ProcessorSection] = pydantic.Field(
        default_factory=dict, description="processor name -> its kind, parameters and workers"
    )
    processors_file: Path | None = pydantic.Field(
        None,
        description="a YAML file of more processors (name -> kind, parameters, workers), which this file's "
        "processors section changes (parameters key by key)",
    )
    models_dir: Path | None = pydantic.Field(
        None, description="a folder of your own models (<name>/<version>/model.onnx), served next to Dayu's"
    )
    sources: list[dict[str, Any]] = pydantic.Field(default_factory=list)
    media_dirs: list[Path] = pydantic.Field(
        default_factory=list,
        description="folders whose videos and photos sources added at run time (the console) may read; in "
        "Kubernetes, mounted at the same paths in the datasource's pod",
    )
    streams: list[StreamSection] = pydantic.Field(default_factory=list)
    scheduler: dict[str, Any] = pydantic.Field(default_factory=dict)
    join_timeout_s: float = pydantic.Field(10.0, gt=0)
    gap_timeout_s: float = pydantic.Field(
        30.0, gt=0, description="the distributor records a task as lost once its sequence is missing this long"
    )
    triton: TritonSection = TritonSection()
    late_factor: float = pydantic.Field(4.0, ge=0, description="controllers drop tasks this many budgets late")
    golden: dict[str, ProcessorSection] = pydantic.Field(
        default_factory=dict,
        description="processor name -> how its golden scorer (on the cloud) differs from it, to score tasks "
        "without ground truth (its parameters replace the processor's key by key)",
    )
    otlp_collectors: list[str] = pydantic.Field(
        default_factory=list,
        description="OTLP/gRPC endpoints (Jaeger, Tempo, a collector) also sent the spans (the scheduler always is)",
    )
    trace_sample_ratio: float = pydantic.Field(1.0, ge=0, le=1, description="fraction of tasks traced")

    @pydantic.model_validator(mode="after")
    def _nodes_exist(self) -> MeshConfig:
        names = set(self.nodes)
        if self.cloud_node not in names:
            raise ValueError(f"cloud_node {self.cloud_node!r} is not one of the nodes {sorted(names)}")
        for link in self.links:
            for node in link.between:
                if node not in names:
                    raise ValueError(f"link between {list(link.between)} names unknown node {node!r}")
        for stream in self.streams:
            if stream.node not in names:
                raise ValueError(f"stream on unknown node {stream.node!r}")
        uplinks = self.scheduler.get("shared_uplinks")
        for uplink, behind in uplinks.items() if isinstance(uplinks, dict) else ():
            unknown = sorted(set(behind) - names) if isinstance(behind, list) else []
            if unknown:  # the section's own rules are the scheduler's (SchedulerSection)
                raise ValueError(f"scheduler.shared_uplinks.{uplink} names unknown nodes {unknown}")
        for name, node in self.nodes.items():
            both = sorted(set(node.processors) & set(node.deployable))
            if both:
                raise ValueError(
                    f"nodes.{name}.deployable: processors not in nodes.{name}.processors (those are always "
                    f"loaded), got {both} in both"
                )
            if len(set(node.deployable)) != len(node.deployable):
                raise ValueError(f"nodes.{name}.deployable: each processor once, got {node.deployable}")
        return self

    def processor_kind(self, name: str, golden: bool = False) -> str:
        """The kind that the processor `name` (of the processors section, or golden) runs."""
        for section in ([self.golden.get(name)] if golden else []) + [self.processors.get(name)]:
            if section is not None and section.kind:
                return section.kind
        return name

    def golden_section(self, name: str) -> ProcessorSection:
        """The golden scorer of the processor `name`: that processor (its kind and parameters) with what the
        golden section changes (parameters key by key, workers, queue)."""
        base, golden = self.processors.get(name, ProcessorSection()), self.golden[name]
        changed = golden.model_dump(exclude_unset=True, exclude={"params"})
        return base.model_copy(update={**changed, "params": {**base.params, **golden.params}})

    def check_processors(self) -> None:
        """Fails on a processor whose kind or parameters `dayu serve` would refuse, naming the field of
        this file, before any process starts."""
        from dayu.processor.kinds import PROCESSORS  # pydantic only; a plugin kind is imported for its Params

        kinds = PROCESSORS.names()
        for node_name, node in self.nodes.items():
            for field, name in [("processors", n) for n in node.processors] + [
                ("deployable", n) for n in node.deployable
            ]:
                if name in self.processors:
                    continue
                if name not in kinds:
                    raise InvalidArgument(
                        f"nodes.{node_name}.{field}",
                        f"processors of the processors section {sorted(self.processors)} or kinds {kinds}, "
                        f"got {shown(name)}",
                    )
                PROCESSORS.params(name, {}, field=f"nodes.{node_name}.{field}.{name}")  # a kind's defaults
        for name, section in self.processors.items():
            kind = self.processor_kind(name)
            if kind not in kinds:
                raise InvalidArgument(f"processors.{name}.kind", f"one of the kinds {kinds}, got {shown(kind)}")
            PROCESSORS.params(kind, section.params, field=f"processors.{name}.params")
        for name in self.golden:
            params = self.golden_section(name).params
            PROCESSORS.params(self.processor_kind(name, golden=True), params, field=f"golden.{name}.params")

    def streams_on(self, node: str) -> list[dict[str, Any]]:
        """The generator's stream sections of the streams whose camera is at `node`."""
        return [stream.model_dump(exclude={"node"}) for stream in self.streams if stream.node == node]


def read_mesh_file(path: Path, field: str = "--config") -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise InvalidArgument(field, f"a readable YAML file ({error})") from None
    if not isinstance(data, dict):
        raise InvalidArgument(field, f"a YAML mapping in {path}")
    return data


def _with_processors_file(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """The mesh file's data with the processors of its processors_file added. A processor of both is the
    file's, changed by the mesh file's entry: its parameters key by key, the rest as given."""
    reference = data.get("processors_file")
    if not isinstance(reference, str):
        return data
    found = read_mesh_file(base / reference, field="processors_file")
    own = data.get("processors") or {}
    if not isinstance(own, dict):
        return data  # the model's validation says what is wrong
    merged = dict(found)
    for name, section in own.items():
        before = found.get(name)
        if isinstance(before, dict) and isinstance(section, dict):
            params = {**(before.get("params") or {}), **(section.get("params") or {})}
            section = {**before, **section, "params": params}
        merged[name] = section
    return {**data, "processors": merged}


def load_mesh_config(path: Path, data: dict[str, Any] | None = None) -> MeshConfig:
    """Reads the mesh file (or `data` read from it); relative paths in it are relative to the file."""
    base = path.resolve().parent
    try:
        data = _with_processors_file(read_mesh_file(path) if data is None else data, base)
        config = MeshConfig.model_validate(data)
    except pydantic.ValidationError as error:
        raise from_validation_error(error, str(path)) from None
    config.pipelines_file = base / config.pipelines_file
    if config.processors_file is not None:
        config.processors_file = base / config.processors_file
    if config.models_dir is not None:
        config.models_dir = base / config.models_dir
    config.media_dirs = [base / folder for folder in config.media_dirs]
    for link in config.links:
        if link.trace is not None:
            link.trace = base / link.trace
    for node in config.nodes.values():
        if node.resources.cpu_trace is not None:
            node.resources.cpu_trace = base / node.resources.cpu_trace
    config.check_processors()
    return config
