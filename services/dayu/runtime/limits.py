"""How big a request may be, checked at the door of every RPC (runtime/server.py) before a core sees
it. One table for the whole mesh, so clients in any language can read what they may send
(docs/security.md lists it and says why each number is what it is).

Two levels:
- a whole request, in serialized bytes (RESOURCE_EXHAUSTED past it): checked before the bytes are
  parsed, so an oversized request costs nothing but its transfer;
- each field (INVALID_ARGUMENT naming it): characters of a string, bytes of a bytes value (each item
  of a repeated one), items of a repeated field or a map. A field not named here gets the default of
  its kind.
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB

# -- whole requests ---------------------------------------------------------------------------------

REQUEST_BYTES = 1 * MIB  # any request not named below: ids, filters, small specs
REQUEST_BYTES_BY_METHOD: dict[str, int | None] = {  # None: the server's message limit (64 MiB by default)
    # Tasks with their encoded frames travel between controllers and to processors.
    "dayu.v1.ControllerService.SubmitTask": None,
    "dayu.v1.ProcessorService.Process": None,
    # Bandwidth probes: their payload is held to 4 MiB below (MeasureLinkRequest.probe_bytes).
    "dayu.v1.ControllerService.Probe": None,
    # Finished and dropped tasks reach the distributor without their frames (results, hops, timings:
    # a few KiB to a few hundred KiB); a record is stored whole, so this bounds what one record costs.
    "dayu.v1.DistributorService.Deliver": 4 * MIB,
    "dayu.v1.DistributorService.RecordDrop": 4 * MIB,
    "dayu.v1.SchedulerService.ReportFeedback": 4 * MIB,
    # A batch of spans from the OpenTelemetry exporter (512 spans at most, about 1 KiB each).
    "opentelemetry.proto.collector.trace.v1.TraceService.Export": 8 * MIB,
    # Specs an operator writes: a pipeline is a few stages, a policy a few parameters.
    "dayu.v1.BackendService.PutPipeline": 64 * KIB,
    "dayu.v1.SchedulerService.SetPolicy": 64 * KIB,
}

# -- fields ---------------------------------------------------------------------------------------

STRING_CHARS = 1024  # ids and names are held to 128 by validation.require_id / require_name
BYTES = 32 * MIB  # one raw 4K BGR frame is 24.9 MB
ITEMS = 4096  # frames of a segment, records of a batch
FIELD_SIZES: dict[str, int] = {  # characters of a string, bytes of a bytes value
    # Words a component writes for people.
    "dayu.v1.TaskStage.error": 4 * KIB,
    "dayu.v1.TaskRecord.reason": 4 * KIB,
    "dayu.v1.RecordDropRequest.reason": 4 * KIB,
    "dayu.v1.Decision.reason": 4 * KIB,
    # A bandwidth probe: MeasureLinkRequest.probe_bytes is at most 4 MiB (a larger one costs the
    # receiver's event loop a copy of its payload, and measures no better).
    "dayu.v1.ProbeRequest.payload": 4 * MIB,
    # An encoded H.264 segment (a 4K segment of a few seconds at high quality stays under it).
    "dayu.v1.Segment.stream": 48 * MIB,
}
FIELD_ITEMS: dict[str, int] = {  # items of a repeated field or a map
    # The shape of a DAG: a pipeline has a handful of stages, each a handful of parents.
    "dayu.v1.Pipeline.stages": 64,
    "dayu.v1.Dag.stages": 64,
    "dayu.v1.StageSpec.parents": 64,
    "dayu.v1.Task.branch": 64,
    # A task's path: a hop per controller, processor and transfer it passed (a fork-join of 64 stages
    # with retries stays far below).
    "dayu.v1.Task.hops": 1024,
    # Objects found in one frame.
    "dayu.v1.FrameDetections.detections": 1024,
    # Placement and deployment name stages and nodes.
    "dayu.v1.Decision.placement": 64,
    "dayu.v1.Decision.deployment": 64,
    "dayu.v1.NodeList.nodes": 1024,
}


def request_bytes(method: str, server_limit: int) -> int:
    """The most serialized bytes a request of `method` (its full name) may have."""
    limit = REQUEST_BYTES_BY_METHOD.get(method, REQUEST_BYTES)
    return server_limit if limit is None else min(limit, server_limit)
