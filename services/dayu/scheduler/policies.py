"""Scheduling policies, selected per stream by name with typed parameters.

A policy sees the stream and what the scheduler knows, and proposes the next configuration and
placement; the scheduler versions, records and pushes what it proposes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import pydantic

from dayu.runtime.registry import Registry
from dayu.v1 import decision_pb2, resources_pb2, task_pb2, types_pb2


@dataclass
class StreamView:
    """What a policy may look at: the stream, its latest feedback and node resources."""

    spec: decision_pb2.StreamSpec
    current: decision_pb2.Decision | None
    recent: list[task_pb2.TaskRecord] = field(default_factory=list)
    resources: dict[str, resources_pb2.NodeResources] = field(default_factory=dict)


@dataclass
class Proposal:
    configuration: types_pb2.Configuration
    placement: dict[str, str]
    reason: str


class Policy(Protocol):
    def decide(self, view: StreamView) -> Proposal: ...


POLICIES: Registry[type[Policy]] = Registry("policy")


class FixedParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    width: int | None = pydantic.Field(None, gt=0, description="resolution width; the source's when unset")
    height: int | None = pydantic.Field(None, gt=0, description="resolution height; the source's when unset")
    fps: float | None = pydantic.Field(None, gt=0, description="frame rate; the source's when unset")
    quality: int | None = pydantic.Field(None, ge=1, le=100)
    frames_per_segment: int | None = pydantic.Field(None, ge=1)
    placement: dict[str, str] = pydantic.Field(
        default_factory=dict, description="stage -> node; stages not named run on the stream's node"
    )


@POLICIES.register("fixed", params=FixedParams)
class FixedPolicy:
    """Always the same configuration and placement (the baseline the adaptive policies beat)."""

    def __init__(self, params: FixedParams) -> None:
        self.params = params

    def decide(self, view: StreamView) -> Proposal:
        p, best = self.params, view.spec.max_configuration
        config = types_pb2.Configuration()
        config.CopyFrom(best)
        if p.width and p.height:
            config.resolution.width, config.resolution.height = p.width, p.height
        if p.fps:
            config.fps = min(p.fps, best.fps)
        if p.quality:
            config.quality = p.quality
        if p.frames_per_segment:
            config.frames_per_segment = p.frames_per_segment
        placement = {s.name: p.placement.get(s.name, view.spec.node) for s in view.spec.pipeline.stages}
        return Proposal(config, placement, "fixed configuration and placement")
