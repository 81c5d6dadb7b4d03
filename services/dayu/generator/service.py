"""gRPC adapter of the generator.

Today it holds the decisions of its streams; capturing frames and making tasks comes with the
data plane, so it runs no stream yet."""

from __future__ import annotations

from collections.abc import Sequence

from dayu.runtime.config import ComponentSettings
from dayu.runtime.errors import NotFound
from dayu.runtime.server import Binding, Component
from dayu.runtime.validation import require_id
from dayu.v1 import generator_pb2, generator_pb2_grpc


class GeneratorSettings(ComponentSettings):
    pass


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    def __init__(self) -> None:
        self.streams: dict[str, generator_pb2.StreamStatus] = {}

    async def ListStreams(
        self, request: generator_pb2.ListStreamsRequest, context: object
    ) -> generator_pb2.ListStreamsResponse:
        return generator_pb2.ListStreamsResponse(streams=list(self.streams.values()))

    async def ApplyDecision(
        self, request: generator_pb2.ApplyDecisionRequest, context: object
    ) -> generator_pb2.ApplyDecisionResponse:
        decision = request.decision
        require_id(decision.stream_id, "decision.stream_id")
        status = self.streams.get(decision.stream_id)
        if status is None:
            raise NotFound(f"stream {decision.stream_id!r} does not run on this generator")
        applied = decision.version > status.decision.version
        if applied:
            status.decision.CopyFrom(decision)
        return generator_pb2.ApplyDecisionResponse(applied=applied, current_version=status.decision.version)


class GeneratorComponent(Component):
    name = "generator"
    settings_class = GeneratorSettings

    def __init__(self, settings: GeneratorSettings) -> None:
        self.servicer = GeneratorServicer()

    def bindings(self) -> Sequence[Binding]:
        return [Binding("dayu.v1.GeneratorService", self.servicer)]
