"""The registry of components that `dayu serve` can run, by name."""

from __future__ import annotations

from dayu.backend.service import BackendComponent
from dayu.controller.service import ControllerComponent
from dayu.datasource.service import DatasourceComponent
from dayu.distributor.service import DistributorComponent
from dayu.generator.service import GeneratorComponent
from dayu.monitor.service import MonitorComponent
from dayu.processor.service import ProcessorComponent
from dayu.runtime.registry import Registry
from dayu.runtime.server import Component
from dayu.scheduler.service import SchedulerComponent

COMPONENTS: Registry[type[Component]] = Registry("component")

for _component in (
    BackendComponent,
    ControllerComponent,
    DatasourceComponent,
    DistributorComponent,
    GeneratorComponent,
    MonitorComponent,
    ProcessorComponent,
    SchedulerComponent,
):
    COMPONENTS.register(_component.name, summary=(_component.__module__.rsplit(".", 2)[-2]))(_component)
