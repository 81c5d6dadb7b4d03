"""The embedded mesh: every instance of a mesh file in one process on loopback, each with its own
gRPC server and port, talking to the others only through the contracts, exactly as they would across
machines. Links between logical nodes go through the controllers' link emulators. Their Prometheus
metrics share the process's registry, served once (metrics_port). `dayu up` runs it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from dayu.components import COMPONENTS
from dayu.mesh.model import MeshConfig
from dayu.mesh.plan import STOP_ORDER, Instance, Wiring, instances, settings, triton_models, triton_nodes
from dayu.runtime.auth import new_tokens_file
from dayu.runtime.logs import get_logger
from dayu.runtime.metrics import MetricsServer
from dayu.runtime.server import ComponentServer, free_ports
from dayu.runtime.tls import TlsSettings

log = get_logger(__name__)


class LoopbackWiring(Wiring):
    """Every instance on 127.0.0.1 at a port of its own, chosen before any starts, so that each one's
    settings can name the others (controllers name each other: no start order would do)."""

    emulated_links = True

    def __init__(self, config: MeshConfig, workdir: Path, tritons: dict[str, str], console_port: int | None) -> None:
        self.pipelines_file = str(config.pipelines_file)
        self.workdir = workdir
        self.database = str(workdir / "dayu-records.sqlite")
        # What the operator installed stays across runs (records and sequence numbers do not: reset()).
        self.backend_database = str(workdir / "backend.sqlite")
        self.tokens_file = str(workdir / "tokens.yaml")  # Mesh made it
        self.console_listen = "" if console_port is None else f"127.0.0.1:{console_port}"
        self.models_dir = str(config.models_dir) if config.models_dir is not None else None
        keys = [instance.key for instance in instances(config)]
        self.ports = dict(zip(keys, free_ports(len(keys)), strict=True))
        self.tritons = tritons

    def address(self, target: Instance, seen_from: Instance) -> str:
        return f"127.0.0.1:{self.ports[target.key]}"

    def triton(self, node: str) -> str:
        return self.tritons.get(node, "")

    def state_dir(self, node: str) -> str:
        return str(self.workdir / "state" / node)


class Mesh:
    """Starts and stops the instances of a MeshConfig in this process, and the mesh's tritonserver."""

    def __init__(
        self, config: MeshConfig, workdir: Path, console_port: int | None = 0, metrics_port: int | None = 0
    ) -> None:
        """`console_port`: where the backend serves the console on 127.0.0.1 (0: a free port; None: no
        console). `metrics_port`: where every component's Prometheus metrics are served on 127.0.0.1,
        at /metrics (0: a free port, as is one that is taken; None: none)."""
        self.config = config
        self.workdir = workdir
        self.console_port = console_port
        self.metrics_port = metrics_port
        self.metrics: MetricsServer | None = None
        self.tokens_path = workdir / "tokens.yaml"
        self.tokens = new_tokens_file(self.tokens_path)  # made once, then kept: the operator's tokens
        self.servers: dict[str, ComponentServer] = {}  # instance key -> server
        self.addresses: dict[str, str] = {}
        self.instances = instances(config)
        self.records = workdir / "dayu-records.sqlite"  # where LoopbackWiring puts them
        self.triton = None  # a TritonServer when the mesh runs its own
        self.traces_started_at: float | None = None
        self.triton_addresses: list[str] = []
        self.triton_statistics: dict[str, dict[str, dict[str, float | int]]] = {}  # address -> model -> counters
        self.kernel_link_bytes: dict[str, int] = {}  # emulated links only
        self.tls = TlsSettings()  # plaintext on loopback

    def address(self, instance: Instance) -> str:
        return self.addresses[instance.key]

    def reset(self) -> None:
        self.records.unlink(missing_ok=True)
        shutil.rmtree(self.workdir / "state", ignore_errors=True)  # LoopbackWiring.state_dir

    async def start(self) -> None:
        self._serve_metrics()
        wiring = LoopbackWiring(self.config, self.workdir, await self._start_triton(), self.console_port)
        for instance in self.instances:
            if instance.component == "controller" and self.traces_started_at is None:
                self.traces_started_at = time.time()  # the controllers' emulated links start their traces
            component_class = COMPONENTS.entry(instance.component).factory
            data = settings(self.config, instance, wiring)
            listen = wiring.address(instance, instance)
            loaded = component_class.settings_class(  # type: ignore[attr-defined]
                server={"listen": listen, "shutdown_grace_s": 10}, **data
            )
            server = ComponentServer(component_class(loaded), loaded)  # type: ignore[call-arg]
            self.servers[instance.key] = server
            self.addresses[instance.key] = await server.start()

    def _serve_metrics(self) -> None:
        """/metrics of the process (every component's series, told apart by their component and node
        labels) on 127.0.0.1:metrics_port; a free port when that one is taken (`dayu up` prints where)."""
        if self.metrics_port is None or self.metrics is not None:
            return
        self.metrics = MetricsServer(f"127.0.0.1:{self.metrics_port}")
        try:
            self.metrics.start()
        except OSError as error:
            log.warning("metrics port taken: serving on a free one", port=self.metrics_port, error=str(error))
            self.metrics = MetricsServer("127.0.0.1:0")
            self.metrics.start()

    @property
    def metrics_url(self) -> str:
        """Where the mesh's metrics are served (empty without)."""
        return self.metrics.url if self.metrics is not None else ""

    @property
    def triton_metrics_url(self) -> str:
        """Where the mesh's own tritonserver serves its metrics (empty without one)."""
        return self.triton.metrics_url if self.triton is not None else ""

    def _stop_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None

    async def _start_triton(self) -> dict[str, str]:
        """The Triton address of each node with a processor on Triton: its own when it names one, else
        that of the tritonserver started here, before any processor, once ready: in explicit model
        control mode, with the models of those nodes' always-loaded processors loaded (the plan's
        triton_models; their deployable processors' models load when the deployment plan says)."""
        from dayu.processor.repository import assemble  # only a mesh on Triton loads the client
        from dayu.processor.triton_server import TritonServer

        config = self.config
        addresses = {node: section.triton for node, section in config.nodes.items() if section.triton}
        needing = triton_nodes(config)
        if needing:
            settings_ = config.triton
            self.triton = TritonServer(
                assemble(self.workdir / "triton_models", own=config.models_dir),
                self.workdir,
                grpc_port=settings_.grpc_port,
                model_config_name=settings_.model_config_name,
                startup_timeout_s=settings_.startup_timeout_s,
                metrics_port=0,  # its own metrics, on a free port of loopback (`dayu up` prints where)
                load_models=triton_models(config, needing),
            )
            local = await self.triton.start()
            addresses.update(dict.fromkeys(needing, local))
        self.triton_addresses = sorted(set(addresses.values()))
        return addresses

    async def _stop_triton(self) -> None:
        """Reads each Triton's own statistics once the processors are done with it, then stops the one
        started here."""
        from dayu.processor.triton_server import statistics_of

        self.triton_statistics = await statistics_of(self.triton_addresses)
        if self.triton is not None:
            await self.triton.stop()
            self.triton = None

    @property
    def console_url(self) -> str:
        """The console's URL once the mesh runs (empty without a console)."""
        server = self.servers.get("backend")
        return getattr(server.component, "console_url", "") if server else ""

    def keys(self, component: str) -> list[str]:
        return [instance.key for instance in self.instances if instance.component == component]

    async def stop_generators(self) -> None:
        for key in self.keys("generator"):
            await self.servers[key].stop()

    async def stop(self) -> None:
        """Stops the rest once the generators have stopped and tasks in flight settled: controllers
        before processors, the cloud services last."""
        for component in STOP_ORDER[1:]:
            for key in self.keys(component):
                if key in self.servers:
                    await self.servers[key].stop()
        await self._stop_triton()
        self._stop_metrics()

    async def abort(self) -> None:
        """Stops whatever still runs, without waiting for in-flight calls (in the same order)."""
        for component in STOP_ORDER:
            for key in self.keys(component):
                if key in self.servers:
                    await self.servers[key].stop(grace=0)
        if self.triton is not None:
            await self.triton.stop()
            self.triton = None
        self._stop_metrics()
