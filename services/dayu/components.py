"""The registry of components that `dayu serve` can run, by name.

Each registers by the module it lives in, imported when it is looked up: a component process loads
its own code and libraries alone (the scheduler no OpenCV, the datasource no model runtime)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dayu.runtime.registry import Registry

if TYPE_CHECKING:
    from dayu.runtime.server import Component

COMPONENTS: Registry[type[Component]] = Registry("component")

for _name, _class in (
    ("backend", "BackendComponent"),
    ("controller", "ControllerComponent"),
    ("datasource", "DatasourceComponent"),
    ("distributor", "DistributorComponent"),
    ("generator", "GeneratorComponent"),
    ("monitor", "MonitorComponent"),
    ("processor", "ProcessorComponent"),
    ("scheduler", "SchedulerComponent"),
):
    COMPONENTS.register_lazy(_name, f"dayu.{_name}.service:{_class}")
