"""Where a model-backed kind runs its model: the parameters every such kind takes (see
dayu.processor.inference). Pydantic only, so kinds validate without the inference libraries."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pydantic

from dayu.runtime.config import StrictModel
from dayu.runtime.tls import TlsSettings


class TritonParams(StrictModel):
    address: str = pydantic.Field("127.0.0.1:8001", min_length=1, description="HOST:PORT of Triton's gRPC endpoint")
    timeout_s: float = pydantic.Field(10.0, gt=0, le=600, description="longest wait for one inference call")
    attempts: int = pydantic.Field(3, ge=1, le=10, description="tries of a call before the stage fails")
    backoff_s: float = pydantic.Field(0.25, ge=0, le=30, description="wait before the second try, doubling after")
    start_timeout_s: float = pydantic.Field(
        120.0,
        gt=0,
        le=3600,
        description="at start, how long to wait for Triton to be ready before the model check fails",
    )
    shared_memory: bool = pydantic.Field(
        True,
        description="hand input tensors over in system shared memory (a Triton on this host); one that cannot "
        "map it (another host or pod) is sent them in the requests, as the processor logs",
    )
    tls: TlsSettings = pydantic.Field(
        default_factory=TlsSettings,
        description="mutual TLS to Triton (certificate, key, the mesh's CA); left empty, the processor's own tls",
    )


class InferenceParams(StrictModel):
    """The parameters every model-backed kind takes (see dayu.processor.inference)."""

    backend: Literal["onnxruntime", "triton"] = pydantic.Field(
        "onnxruntime", description="triton: the node's Triton server; onnxruntime: in this process"
    )
    intra_op_threads: int = pydantic.Field(
        1,
        ge=1,
        le=64,
        description="in process: threads of one inference; 1 leaves the other cores to the other components, "
        "more than the machine's cores means all of them (rapidocr's rule)",
    )
    memory_arena: bool = pydantic.Field(
        True,
        description="in process: onnxruntime keeps the memory of its largest run for the next ones (the text "
        "detector at 960 px, two workers: about 0.55 GB held); false gives it back after each run, at nearly "
        "twice the CPU a segment (hack/bench_memory_arena.py)",
    )
    triton: TritonParams = TritonParams()
    model_repository: Path | None = pydantic.Field(
        None,
        description="in process: a folder of your own models (<name>/<version>/model.onnx) looked in before "
        "Dayu's; the mesh fills it in from its models_dir",
    )
