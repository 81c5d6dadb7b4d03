"""A cluster of real nodes on this machine: each node of a mesh file is a network namespace joined to
the others by veth pairs on a bridge, with link bandwidth set in the kernel (tc htb), its processes in
a cgroup with the node's CPU and memory limits, and each pod of the mesh's manifests one process,
restarted when it exits, as a kubelet would. For tests and experiments on one machine; across
machines Dayu runs on Kubernetes from the same manifests, and this stays small.

Delay: this kernel has no netem, so links have bandwidth and no added delay (a mesh file's delay_ms
holds for the embedded mesh only).

Mutual TLS: at start the cluster makes a CA and a certificate per component and node of the mesh
(dayu.runtime.certs) in WORKDIR/tls, and gives them as the Secrets the manifests mount
(`dayu-tls-COMPONENT-NODE`). When the manifests turn TLS on (DAYU_TLS__* in a container's
environment), this machine's own clients (the run loop, the faults harness, tests) show the
operator's certificate (`tls`).

The operator's bearer tokens (dayu.runtime.auth): WORKDIR/tokens.yaml, made once and kept across runs,
given as the Secret the backend and the scheduler mount (`dayu-tokens`). The backend serves the
console on the cloud node's address (`console_url`), which this machine reaches over the bridge."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dayu.cluster.cgroups import NodeCgroup
from dayu.cluster.manifests import Pod, build, image_paths, pods, service_nodes
from dayu.cluster.netproc import NetworkProcess
from dayu.cluster.network import UNLIMITED_BYTES_S
from dayu.controller.links import BandwidthTrace
from dayu.mesh.kustomize import TOKENS_SECRET, KubernetesWiring
from dayu.mesh.model import MeshConfig
from dayu.mesh.plan import CLOUD_SERVICES, PORTS, STOP_ORDER, Instance, certificate_holders, instances
from dayu.runtime.auth import TokensFile, new_tokens_file
from dayu.runtime.certs import issue, make_ca
from dayu.runtime.logs import get_logger
from dayu.runtime.tls import OPERATOR, TlsSettings, secret_name

log = get_logger(__name__)
STATE_DIR = Path("/run/dayu-cluster")
NETNS_DIR = Path("/run/netns")  # where `ip netns` (and pyroute2) keep named namespaces
HOSTS_DIR = Path("/etc/netns")  # /etc/netns/NS/hosts: the node's names, as cluster DNS would give them
SETSID = shutil.which("setsid") or "/usr/bin/setsid"  # util-linux
# Pods start in waves, each once the one before answers: what the others call first.
WAVES = (("scheduler", "triton", "processor", "distributor", "datasource", "backend"), ("controller", "monitor"))
READY_TIMEOUT_S = 180.0
STOP_GRACE_S = 20.0
IMAGE_ENV = {"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}  # the Dockerfile's ENV
OPERATOR_NAME = "cluster"  # this machine's clients of the mesh: CN operator.cluster
TLS_ENV = "DAYU_TLS__"  # a container whose environment sets these serves and calls with mutual TLS


@dataclass
class Running:
    """A pod's process and what the supervisor knows of it."""

    pod: Pod
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    stopping: bool = False


@dataclass(frozen=True)
class Killed:
    """A pod's process killed by Cluster.kill: which pod, the pid that died, and when (time.time())."""

    pod: str
    pid: int
    at: float


class Cluster:
    """Builds, runs and tears down one cluster from a mesh file (see the module); a RunningMesh."""

    def __init__(
        self,
        config: MeshConfig,
        workdir: Path,
        name: str = "dayu",
        overlay: str = "cpu-demo",
        progress: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.workdir = workdir.resolve()
        self.name = name
        self.overlay = overlay
        self.progress = progress
        # Cameras are on their edge node's LAN: the datasource's frames cross no shaped link.
        self.network = NetworkProcess(name, subnet_of(name), unshaped_ports=(PORTS["datasource"],))
        self.cgroups = {node: NodeCgroup(name, node) for node in config.nodes}
        self.instances = instances(config)
        self.wiring = KubernetesWiring(config)
        self.records = self.workdir / "volumes" / "records" / "dayu-records.sqlite"
        self.triton_statistics: dict[str, dict[str, dict[str, float | int]]] = {}
        self.pods: dict[str, Running] = {}
        self._background: list[asyncio.Task[None]] = []
        self.timings: dict[str, float] = {}
        self.traces_started_at: float | None = None  # wall clock, when the trace replays start
        self.kernel_link_bytes: dict[str, int] = {}  # at teardown
        self._torn_down = False
        # The certificate this machine's clients show the mesh: the operator's, once the manifests
        # turn TLS on (see _prepare); plaintext until then.
        self.tls = TlsSettings()
        # The operator's tokens, made once, then kept (the Secret dayu-tokens; read again at each start).
        self.tokens_path = self.workdir / "tokens.yaml"
        self.tokens: TokensFile = new_tokens_file(self.tokens_path)

    # -- addresses ------------------------------------------------------------------------------

    def node_address(self, node: str) -> str:
        return self.network.interfaces[node].address

    def address(self, instance: Instance) -> str:
        node = self.config.cloud_node if instance.component in CLOUD_SERVICES else instance.node
        return f"{self.node_address(node)}:{self.wiring.port(instance)}"

    @property
    def console_url(self) -> str:
        """http://ADDRESS:PORT/ of the backend's console (its pod's `console` port, on its node's
        address, which this machine reaches over the bridge) once the cluster runs; else empty."""
        if "start_s" not in self.timings or self._torn_down:
            return ""
        for running in self.pods.values():
            pod = running.pod
            if pod.component == "backend" and "console" in pod.ports:
                return f"http://{self.node_address(pod.node)}:{pod.ports['console']}/"
        return ""

    # -- start ----------------------------------------------------------------------------------

    async def start(self) -> None:
        started = time.monotonic()
        # Blocking work (netlink calls in the network's worker process, kubectl): in a thread.
        await asyncio.to_thread(self._prepare)
        self.timings["network_s"] = time.monotonic() - started
        for wave in (*WAVES, ("generator",)):
            members = [r for r in self.pods.values() if r.pod.component in wave]
            for running in members:
                self._spawn(running)
            await asyncio.gather(*(self._ready(running) for running in members))
        self.timings["start_s"] = time.monotonic() - started
        self._write_state()
        self.traces_started_at = time.time()
        self._background = [
            asyncio.create_task(self._supervise()),
            *(asyncio.create_task(task) for task in self._replays()),
        ]
        self.progress(
            f"dayu cluster {self.name}: {len(self.pods)} pods on nodes "
            + ", ".join(f"{node} {self.node_address(node)}" for node in self.config.nodes)
            + f" in {self.timings['start_s']:.1f} s"
        )

    def _prepare(self) -> None:
        """Cleans what an earlier run of this name left, renders the manifests, makes the network,
        the cgroups and the pods' processes to be."""
        cleaned = cleanup(self.name)
        if cleaned:
            self.progress(f"dayu cluster: removed what an earlier run left: {', '.join(cleaned)}")
        documents = build(self.config, self.overlay)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_state()
        self.network.create(list(self.config.nodes))
        for node, section in self.config.nodes.items():
            memory = section.resources.memory_mb * 1024 * 1024 if section.resources.memory_mb else None
            self.cgroups[node].create(section.resources.cpus, memory)
        self._write_hosts(documents)
        self._shape_links()
        secrets, operator = self._certificates()
        self.tokens = new_tokens_file(self.tokens_path)  # as the operator left it (or made anew)
        secrets[TOKENS_SECRET] = {"tokens.yaml": self.tokens_path.read_text()}
        for pod in pods(documents, list(self.config.nodes), self._image(), secrets):
            if pod.component == "monitor":  # what the node is: its cgroup, not the whole machine
                pod.env["DAYU_MONITOR__NODE_CGROUP"] = self.cgroups[pod.node].spec
            self.pods[pod.name] = Running(pod)
        if any(key.startswith(TLS_ENV) for running in self.pods.values() for key in running.pod.env):
            self.tls = operator
        self._write_state()

    def _certificates(self) -> tuple[dict[str, dict[str, str]], TlsSettings]:
        """A new CA and a certificate per component and node of the mesh (and Triton's), in
        WORKDIR/tls/SECRET-NAME, as the Secrets the manifests mount (name -> file -> text); and the
        operator's certificate, for this machine's clients."""
        folder = self.workdir / "tls"
        shutil.rmtree(folder, ignore_errors=True)  # a new CA each start: no certificate outlives its cluster
        ca = make_ca()
        ca.write(folder / "ca")
        secrets = {}
        for component, node in certificate_holders(self.config):
            issued = issue(ca, component, node)
            issued.write(folder / secret_name(component, node))
            secrets[secret_name(component, node)] = {name: data.decode() for name, data in issued.files().items()}
        operator = issue(ca, OPERATOR, OPERATOR_NAME).write(folder / secret_name(OPERATOR, OPERATOR_NAME))
        return secrets, operator

    def _image(self) -> dict[str, str]:
        """What the image's build stage makes, made here: the model repository assembled, and the
        wheel's Triton backends with the Python-backend stub for this interpreter; mapped from the
        image's paths."""
        from dayu.processor.repository import assemble
        from dayu.processor.triton_server import backend_directory

        image = self.workdir / "image"
        return image_paths(assemble(image / "triton_models", own=self.config.models_dir), backend_directory(image))

    def _write_hosts(self, documents: list[dict[str, Any]]) -> None:
        """Each node's hosts file, as the cluster's DNS: the nodes' names, and every Service of the
        manifests (dayu-scheduler, dayu-controller-edge-1, ...) at the address of the node where
        its pods run."""
        names = {node: self.node_address(node) for node in self.config.nodes}
        nodes = service_nodes(documents, list(self.config.nodes))
        names.update({service: self.node_address(node) for service, node in nodes.items()})
        for node in self.config.nodes:
            self.network.write_hosts(node, names)

    def _set_link(self, a: str, b: str, mbps: float) -> None:
        """Both directions of a link, as a mesh file's link means."""
        self.network.set_bandwidth(a, b, mbps)
        self.network.set_bandwidth(b, a, mbps)

    def _shape_links(self) -> None:
        for link in self.config.links:
            if link.delay_ms:
                log.warning(
                    "no delay on kernel links (no netem here)", link="<->".join(link.between), delay_ms=link.delay_ms
                )
            if link.bandwidth_mbps and link.trace is None:
                self._set_link(*link.between, link.bandwidth_mbps)

    def _replays(self) -> list[Any]:
        """Bandwidth traces on the links' classes, CPU traces on the nodes' quotas, over time."""
        replays = [
            _replay(BandwidthTrace.load(link.trace), functools.partial(self._set_link, *link.between))
            for link in self.config.links
            if link.trace is not None
        ]
        for node, section in self.config.nodes.items():
            if section.resources.cpu_trace is not None:
                replays.append(_replay(BandwidthTrace.load(section.resources.cpu_trace), self.cgroups[node].set_cpus))
        return replays

    def _spawn(self, running: Running) -> None:
        pod = running.pod
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        mounts = []
        for volume_name, mount_path in pod.mounts:
            volume = pod.volumes[volume_name]
            if self._would_hide_installation(mount_path):
                continue  # e.g. the tmp emptyDir on /tmp, where a checkout may live: the pod shares it
            if volume.memory_mb:
                mounts.append(f"mount -t tmpfs -o size={volume.memory_mb}m {volume_name} {shlex.quote(mount_path)}")
                continue
            source = self._volume_dir(pod, volume_name)
            mounts.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(mount_path)}")
            os.makedirs(mount_path, exist_ok=True)  # the mount point (the image has it)
        # The node's network, and a mount namespace of the pod's own where its volumes are mounted and
        # the node's hosts file is /etc/hosts (what `ip netns exec` does, without its fresh /sys, which
        # would hide the cgroups that the node's monitor reads).
        netns = self.network.netns(pod.node)
        hosts = f"mount --bind {shlex.quote(str(HOSTS_DIR / netns / 'hosts'))} /etc/hosts"
        script = " && ".join([hosts, *mounts, 'exec "$0" "$@"'])
        enter = ["unshare", "--mount", "--propagation", "slave", "nsenter", f"--net={NETNS_DIR / netns}"]
        argv = self.cgroups[pod.node].wrap_command([*enter, "sh", "-c", script, *pod.argv])  # in the cgroup first
        # The image's ENV: PATH=/opt/venv/bin:$PATH (Triton's Python-backend stub finds the environment
        # with numpy and onnxruntime through it), and the rest of IMAGE_ENV.
        path = f"{Path(sys.prefix) / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        env = {"PATH": path, **IMAGE_ENV, **pod.env}
        with open(logs / f"{pod.name}.log", "ab") as out:
            # A session of its own (Ctrl-C here does not reach the pods: they stop in order), by
            # setsid rather than start_new_session, so that Popen can posix_spawn: a fork would run
            # gRPC's fork handlers in this process, which has gRPC threads (and says so on stderr).
            # Python opens its files and sockets non-inheritable, so close_fds=False leaks none.
            running.process = subprocess.Popen(
                [SETSID, *argv], env=env, stdout=out, stderr=subprocess.STDOUT, close_fds=False
            )

    def _would_hide_installation(self, mount_path: str) -> bool:
        """A mount over a folder holding this installation or the cluster's files: in an image the
        volume covers an empty folder; here it would hide the program itself."""
        ours = [Path(sys.prefix).resolve(), self.workdir, Path(__file__).resolve()]
        return any(path.is_relative_to(mount_path) for path in ours)

    def _volume_dir(self, pod: Pod, name: str) -> Path:
        volume = pod.volumes[name]
        if volume.host_path:  # the node's disk: every pod of the node sees the same folder
            folder = self.workdir / "nodes" / pod.node / volume.host_path.strip("/")
        elif volume.persistent:
            folder = self.workdir / "volumes" / name
        else:
            folder = self.workdir / "pods" / pod.name / name
        folder.mkdir(parents=True, exist_ok=True)
        for file, text in volume.files.items():
            (folder / file).write_text(text)
            if volume.mode is not None:  # as the kubelet sets them (the Secrets' 0440)
                (folder / file).chmod(volume.mode)
        return folder

    async def _ready(self, running: Running) -> None:
        """Waits until the pod's port accepts connections (its gRPC server is up)."""
        address = (self.node_address(running.pod.node), running.pod.port)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if await _accepts(address):
                return
            if running.process is not None and running.process.poll() is not None:
                raise RuntimeError(
                    f"pod {running.pod.name} exited with {running.process.returncode}: {self.tail(running)}"
                )
            await asyncio.sleep(0.2)
        raise RuntimeError(f"pod {running.pod.name} not listening on {address} after {READY_TIMEOUT_S:g} s")

    def tail(self, running: Running, lines: int = 15) -> str:
        path = self.workdir / "logs" / f"{running.pod.name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    async def _supervise(self) -> None:
        """Restarts a pod whose process exited, with a growing back-off, and says so."""
        while True:
            await asyncio.sleep(0.5)
            for running in self.pods.values():
                process = running.process
                if running.stopping or process is None or process.poll() is None:
                    continue
                running.restarts += 1
                backoff = min(10.0, 0.5 * 2 ** min(running.restarts - 1, 5))
                self.progress(
                    f"dayu cluster: pod {running.pod.name} exited with {process.returncode}; "
                    f"restart {running.restarts} in {backoff:g} s"
                )
                running.process = None
                asyncio.get_running_loop().call_later(backoff, self._restart, running)

    def _restart(self, running: Running) -> None:
        if not running.stopping and running.process is None:
            self._spawn(running)
            self._write_state()

    # -- faults (dayu.cluster.faults) ------------------------------------------------------------

    def pod(self, component: str, node: str | None = None) -> Running:
        """The pod of a component ("controller") or workload ("dayu-processor-text-detector") on a
        node, or a pod by its name ("dayu-controller@edge-1"); the node may be left out where one pod
        matches (the cloud's services)."""
        found = [
            r
            for r in self.pods.values()
            if component in (r.pod.component, r.pod.workload, r.pod.name) and (node is None or r.pod.node == node)
        ]
        if len(found) != 1:
            where = f" on {node}" if node else ""
            known = sorted(r.pod.name for r in found) or sorted({r.pod.workload for r in self.pods.values()})
            raise KeyError(f"cluster {self.name}: {len(found)} pods are {component!r}{where}; {known}")
        return found[0]

    async def kill(self, component: str, node: str | None = None) -> Killed:
        """SIGKILLs a pod (see `pod`): its process and what it started (the process group its setsid
        made: all of the container's processes, as when a container dies; Triton's backend stubs) and
        returns once the process is dead. The supervisor restarts it as a kubelet would, after its
        back-off (0.5 s for a pod's first restart); `wait_restarted` says when it listens again."""
        running = self.pod(component, node)
        process = running.process
        if running.stopping or process is None or process.poll() is not None:
            raise RuntimeError(f"pod {running.pod.name} is not running")
        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        except ProcessLookupError:
            pass  # died meanwhile
        await asyncio.to_thread(process.wait)  # reaped here or by the supervisor, whichever comes first
        return Killed(running.pod.name, process.pid, time.time())

    async def wait_restarted(self, killed: Killed, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Waits until the supervisor restarted a killed pod and its port accepts connections again;
        returns that moment (time.time()). Raises TimeoutError after timeout_s."""
        running = self.pods[killed.pod]
        address = (self.node_address(running.pod.node), running.pod.port)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            process = running.process
            if process is not None and process.pid != killed.pid and process.poll() is None:
                if not running.pod.port or await _accepts(address):
                    return time.time()
            await asyncio.sleep(0.05)
        raise TimeoutError(f"pod {killed.pod} not restarted and listening {timeout_s:g} s after it was killed")

    async def set_link(self, a: str, b: str, mbps: float) -> None:
        """Both directions of the link between nodes a and b, now; 0 is down. (A link with a trace is
        set again at the trace's next step.)"""
        await asyncio.to_thread(self._set_link, a, b, mbps)

    def link_mbps(self, a: str, b: str) -> float:
        """The rate the mesh file gives the link between a and b: its bandwidth_mbps, else unlimited."""
        for link in self.config.links:
            if set(link.between) == {a, b} and link.bandwidth_mbps:
                return link.bandwidth_mbps
        return UNLIMITED_BYTES_S * 8 / 1_000_000

    async def partition(self, node: str) -> None:
        """Every link between the node and the others down. What the links do not carry still passes:
        the cameras' feeds (on the edge's LAN) and this machine's calls to the node (the bridge)."""
        for other in self.config.nodes:
            if other != node:
                await self.set_link(node, other, 0)

    async def heal(self, node: str) -> None:
        """Every link of the node back to the mesh file's rate (`link_mbps`)."""
        for other in self.config.nodes:
            if other != node:
                await self.set_link(node, other, self.link_mbps(node, other))

    async def set_cpus(self, node: str, cpus: float | None) -> None:
        """The node's CPU quota, now (None: no limit); the mesh file's is config.nodes[node].resources.cpus."""
        await asyncio.to_thread(self.cgroups[node].set_cpus, cpus)

    # -- stop -----------------------------------------------------------------------------------

    async def _stop(self, component: str) -> None:
        group = [r for r in self.pods.values() if r.pod.component == component]
        for running in group:
            running.stopping = True
            if running.process is not None and running.process.poll() is None:
                running.process.send_signal(signal.SIGTERM)
        await asyncio.gather(*(_wait(r.process) for r in group if r.process is not None))

    async def stop_generators(self) -> None:
        await self._stop("generator")

    async def stop(self) -> None:
        """Stops the pods in STOP_ORDER (Triton once its processors are gone, after reading its
        statistics), then tears the cluster down."""
        for component in STOP_ORDER[1:]:
            await self._stop(component)
            if component == "processor":
                await self._read_triton_statistics()
                await self._stop("triton")
        await self.abort()

    async def _read_triton_statistics(self) -> None:
        from dayu.processor.triton_server import statistics_of

        tritons = [r.pod for r in self.pods.values() if r.pod.component == "triton"]
        addresses = [f"{self.node_address(p.node)}:{p.port}" for p in tritons]
        self.triton_statistics = await statistics_of(addresses, self.tls)

    async def abort(self) -> None:
        """Kills what still runs and removes the namespaces, links and cgroups; idempotent."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        started = time.monotonic()
        for pod in self.pods.values():
            pod.stopping = True
        if not self._torn_down:
            await asyncio.to_thread(self._teardown)
            self.timings["teardown_s"] = time.monotonic() - started
            self.progress(f"dayu cluster {self.name}: torn down in {self.timings['teardown_s']:.1f} s")

    def _teardown(self) -> None:
        if self.network.interfaces and not self.kernel_link_bytes:
            self.kernel_link_bytes = self._link_bytes()  # what the links carried, kept for the summary
        for cgroup in self.cgroups.values():
            cgroup.destroy()  # kills every process of the node, children included
        for pod in self.pods.values():
            if pod.process is not None:
                pod.process.wait()
        self.network.destroy()
        self._torn_down = True
        _state_file(self.name).unlink(missing_ok=True)

    # -- state ----------------------------------------------------------------------------------

    def reset(self) -> None:
        self.records.unlink(missing_ok=True)
        shutil.rmtree(self.workdir / "nodes", ignore_errors=True)  # the nodes' hostPath volumes

    def _write_state(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = {
            "name": self.name,
            "workdir": str(self.workdir),
            "started_at": time.time(),
            "nodes": {
                node: self.network.interfaces[node].address if node in self.network.interfaces else ""
                for node in self.config.nodes
            },
            "pods": {
                name: {"pid": r.process.pid if r.process else None, "restarts": r.restarts, "argv": r.pod.argv}
                for name, r in self.pods.items()
            },
        }
        _state_file(self.name).write_text(json.dumps(state, indent=2))

    async def link_bytes(self) -> dict[str, int]:
        """Bytes each link direction carried, as the kernel counted them."""
        return await asyncio.to_thread(self._link_bytes)

    def _link_bytes(self) -> dict[str, int]:
        nodes = self.config.nodes
        return {f"{a}->{b}": self.network.link_bytes(a, b) for a in nodes for b in nodes if a != b}


async def _wait(process: subprocess.Popen[bytes]) -> None:
    """Waits for a process told to stop; kills it after STOP_GRACE_S."""
    try:
        await asyncio.to_thread(process.wait, STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.wait)


async def _accepts(address: tuple[str, int]) -> bool:
    """Whether a TCP connection to the address opens (within a second)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(*address), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def _replay(trace: BandwidthTrace, apply: Any) -> None:
    """Applies a trace's values at their times, repeating, until cancelled."""
    started = time.monotonic()
    while True:
        value, remaining_s = trace.segment(time.monotonic() - started)
        await asyncio.to_thread(apply, value)
        await asyncio.sleep(max(remaining_s, 0.05))


def subnet_of(name: str) -> str:
    """A /24 of the benchmarking range 198.18.0.0/15 chosen by the name, so that clusters of other
    names (a test's beside an operator's) rarely share one; `status` shows the addresses."""
    return f"198.{18 + (zlib.crc32(name.encode()) >> 8) % 2}.{zlib.crc32(name.encode()) % 256}.0/24"


def _state_file(name: str) -> Path:
    return STATE_DIR / f"{name}.json"


def cleanup(name: str) -> list[str]:
    """Removes what a cluster of that name left (a crashed run): its processes (by cgroup), cgroups,
    namespaces, links and state. Only things named from `name`."""
    removed = NodeCgroup.cleanup(name) + NetworkProcess.cleanup(name)
    if _state_file(name).exists():
        _state_file(name).unlink()
        removed.append(str(_state_file(name)))
    return removed


def running(pid: int) -> bool:
    """Alive and not a zombie (a crashed `up` no longer reaps its pods; init does, in time)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def status(name: str) -> dict[str, Any] | None:
    """What the state file of a running cluster says, with whether each pod's process is alive."""
    path = _state_file(name)
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    for pod in state["pods"].values():
        pod["alive"] = bool(pod["pid"]) and running(pod["pid"])
    return state
