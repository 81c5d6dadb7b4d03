"""Resource sampling of one node, without gRPC."""

from __future__ import annotations

import math

import psutil

from dayu.runtime.cgroup_usage import CgroupUsageReader
from dayu.runtime.clock import timestamp
from dayu.runtime.errors import InvalidArgument
from dayu.runtime.logs import get_logger
from dayu.v1 import resources_pb2

log = get_logger(__name__)

MIN_INTERVAL_S, MAX_INTERVAL_S = 0.1, 3600.0


def _nvml_gpus() -> list[resources_pb2.GpuStats]:
    """GPUs as NVML reports them; none when NVML (nvidia-ml-py) or a driver is absent, or when a GPU
    does not answer (logged), so that the node's other figures are still reported."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                resources_pb2.GpuStats(
                    index=index,
                    name=str(pynvml.nvmlDeviceGetName(handle)),
                    utilization_percent=float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                    memory_used_bytes=int(memory.used),
                    memory_total_bytes=int(memory.total),
                )
            )
        return gpus
    except pynvml.NVMLError as error:
        log.warning("GPUs not measured", error=str(error))
        return []
    finally:
        pynvml.nvmlShutdown()


class ResourceSampler:
    """Samples the node's CPU, memory and GPUs. CPU percent is measured since the previous sample.

    With `cgroup` (a cgroup v1 path, see dayu.runtime.cgroup_usage) the node is that cgroup on a
    shared machine: cpu_count is its CPU limit rounded up, cpu_percent its usage as a share of that
    limit, memory its usage and limit; without a limit, the machine's CPUs or memory stand in."""

    def __init__(self, node: str, cgroup: str = "") -> None:
        self.node = node
        self.cgroup = CgroupUsageReader(cgroup) if cgroup else None  # starts its own measurement window
        if self.cgroup is None:
            psutil.cpu_percent(interval=None)  # starts the measurement window

    def sample(self) -> resources_pb2.NodeResources:
        if self.cgroup is not None:
            return self._sample_cgroup(self.cgroup)
        memory = psutil.virtual_memory()
        return resources_pb2.NodeResources(
            node=self.node,
            measured_at=timestamp(),
            cpu_percent=psutil.cpu_percent(interval=None),
            cpu_count=psutil.cpu_count() or 0,
            memory_used_bytes=memory.total - memory.available,
            memory_total_bytes=memory.total,
            gpus=_nvml_gpus(),
        )

    def _sample_cgroup(self, cgroup: CgroupUsageReader) -> resources_pb2.NodeResources:
        usage = cgroup.read()
        cores = usage.cpu_limit_cores or float(psutil.cpu_count() or 1)
        # A quota is enforced per 100 ms period, so a short window can show a little more than it.
        cpu_percent = min(100.0, 100.0 * usage.cpu_usage_cores / cores)
        return resources_pb2.NodeResources(
            node=self.node,
            measured_at=timestamp(),
            cpu_percent=cpu_percent,
            cpu_count=math.ceil(cores),  # whole CPUs: a fractional limit (0.25) reports 1, and exactly below
            cpu_limit_cores=usage.cpu_limit_cores or 0.0,
            memory_used_bytes=usage.memory_used_bytes,
            memory_total_bytes=usage.memory_limit_bytes or psutil.virtual_memory().total,
            gpus=_nvml_gpus(),
        )


def check_interval(interval_s: float, field: str = "interval_s") -> float:
    if not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
        raise InvalidArgument(field, f"seconds in [{MIN_INTERVAL_S}, {MAX_INTERVAL_S}], got {interval_s}")
    return interval_s
