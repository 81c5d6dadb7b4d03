"""Where a stage's model runs: on the node's Triton server (over gRPC, async) or in process
(onnxruntime), chosen by the kind's `backend` parameter. Both take the model's input tensor and give
back its output tensor, so the pre- and post-processing around them is written once, in the kinds.

The model and its version come from the stage (the `model` and `model_version` of the pipeline's
stage), else the kind's default. Triton being down or slow is met with bounded retries, then
TritonUnavailable, which the processor records as the stage's failure; the client reconnects on
its own, so the stages after Triton's return succeed again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import tritonclient.grpc.aio as triton_grpc
from rapidocr_onnxruntime.utils import OrtInferSession
from tritonclient.utils import InferenceServerException

from dayu.processor.kinds import InferenceParams, TritonParams
from dayu.processor.repository import packaged_model_file
from dayu.processor.triton_server import client_arguments
from dayu.runtime.client import RETRYABLE
from dayu.runtime.errors import Unavailable
from dayu.runtime.logs import get_logger
from dayu.v1 import types_pb2

log = get_logger(__name__)
T = TypeVar("T")
# Statuses worth another try (Triton is down, restarting, overloaded or slow), as tritonclient names them.
RETRYABLE_STATUSES = frozenset(code.name for code in RETRYABLE)
# Tensors of a segment are large (a 960x544 frame is 6 MB as FP32); Triton's own client allows 2 GB.
MAX_MESSAGE_BYTES = 2**31 - 1
# While Triton is away the channel tries to reconnect every half second (gRPC's default backoff grows to
# 2 minutes), so the stages after its return succeed within the retries of one call.
RECONNECT_BACKOFF_MS = 500


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int = 0  # 0: the latest the server has

    def __str__(self) -> str:
        return f"{self.name} v{self.version}" if self.version else self.name


def model_of(spec: types_pb2.StageSpec, default: str) -> ModelRef:
    """The model a stage names in the pipeline, else the kind's default."""
    return ModelRef(spec.model or default, spec.model_version)


class InferenceBackend(Protocol):
    async def infer(self, model: ModelRef, batch: np.ndarray) -> np.ndarray:
        """The model's (only) output for a batch of its (only) input."""

    async def aclose(self) -> None:
        """Releases connections."""


class TritonUnavailable(Unavailable):
    """Triton did not answer within the retries: down, restarting or too slow."""


class TritonError(RuntimeError):
    """Triton answered with an error that another try would not change (unknown model, bad input)."""


class TritonBackend:
    """Triton over gRPC with tritonclient's asyncio client, opened on first use (in the serving loop)."""

    def __init__(self, params: TritonParams) -> None:
        self.params = params
        self._client: triton_grpc.InferenceServerClient | None = None
        self._names: dict[ModelRef, tuple[str, str]] = {}  # input and output names, from the model's metadata

    @property
    def client(self) -> triton_grpc.InferenceServerClient:
        if self._client is None:
            channel_args = [
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
                ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
                ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
            ]
            self._client = triton_grpc.InferenceServerClient(
                self.params.address, **client_arguments(self.params.tls, channel_args)
            )
        return self._client

    async def _with_retries(self, model: ModelRef, what: str, call: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(1, self.params.attempts + 1):
            try:
                return await call()
            except InferenceServerException as error:
                status = (error.status() or "").removeprefix("StatusCode.")
                # A stopping or starting Triton names no model: only a ready one means the model is not there.
                if status not in RETRYABLE_STATUSES and await self._ready():
                    raise TritonError(
                        f"Triton at {self.params.address}: {what} of {model}: {status}: {error.message()}"
                    ) from None
                if attempt == self.params.attempts:
                    raise TritonUnavailable(
                        f"Triton at {self.params.address}: {what} of {model} failed {attempt} times, "
                        f"last {status}: {error.message()}"
                    ) from None
                log.debug("triton retry", model=str(model), what=what, attempt=attempt, status=status)
                await asyncio.sleep(self.params.backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    async def _ready(self) -> bool:
        try:
            return bool(await self.client.is_server_ready(client_timeout=min(1.0, self.params.timeout_s)))
        except InferenceServerException:
            return False

    async def _tensor_names(self, model: ModelRef) -> tuple[str, str]:
        if model not in self._names:
            metadata = await self._with_retries(
                model,
                "metadata",
                lambda: self.client.get_model_metadata(
                    model.name, str(model.version or ""), client_timeout=self.params.timeout_s
                ),
            )
            if len(metadata.inputs) != 1 or len(metadata.outputs) != 1:
                raise TritonError(
                    f"model {model} on Triton at {self.params.address} has {len(metadata.inputs)} inputs and "
                    f"{len(metadata.outputs)} outputs; the kinds expect one of each"
                )
            self._names[model] = (metadata.inputs[0].name, metadata.outputs[0].name)
        return self._names[model]

    async def infer(self, model: ModelRef, batch: np.ndarray) -> np.ndarray:
        input_name, output_name = await self._tensor_names(model)
        tensor = await asyncio.to_thread(_input_tensor, input_name, batch)  # megabytes copied: off the loop
        output = triton_grpc.InferRequestedOutput(output_name)
        result = await self._with_retries(
            model,
            "inference",
            lambda: self.client.infer(
                model.name,
                [tensor],
                model_version=str(model.version or ""),
                outputs=[output],
                client_timeout=self.params.timeout_s,
            ),
        )
        return await asyncio.to_thread(result.as_numpy, output_name)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()


class OnnxRuntimeBackend:
    """onnxruntime in this process, on the packaged ONNX files Triton serves too, with rapidocr's session
    settings; the call runs in a worker thread so the processor's event loop keeps answering."""

    def __init__(self, intra_op_threads: int) -> None:
        self.intra_op_threads = intra_op_threads
        self._sessions: dict[str, OrtInferSession] = {}

    def session(self, model: ModelRef) -> OrtInferSession:
        """The model's session, loaded on first use (the kinds load their default model at start)."""
        if model.name not in self._sessions:
            with packaged_model_file(model.name, model.version) as path:
                self._sessions[model.name] = OrtInferSession(
                    {"model_path": str(path), "intra_op_num_threads": self.intra_op_threads, "inter_op_num_threads": 1}
                )
        return self._sessions[model.name]

    async def infer(self, model: ModelRef, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outputs = await asyncio.to_thread(lambda: self.session(model)(batch))
        return outputs[0]

    async def aclose(self) -> None:
        self._sessions.clear()


def make_backend(params: InferenceParams, default_model: str) -> InferenceBackend:
    """The backend the parameters choose; in process, the default model loads now, not on the first task."""
    if params.backend == "triton":
        return TritonBackend(params.triton)
    backend = OnnxRuntimeBackend(params.intra_op_threads)
    backend.session(ModelRef(default_model))
    return backend


def _input_tensor(name: str, batch: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput(name, list(batch.shape), "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    return tensor
