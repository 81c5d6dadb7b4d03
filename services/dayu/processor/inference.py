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
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import onnxruntime
import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException

from dayu.processor.backend_params import InferenceParams, TritonParams
from dayu.processor.kinds import ModelMismatch
from dayu.processor.repository import model_file
from dayu.processor.triton_server import client_arguments, retryable, wait_until_ready
from dayu.processor.triton_shm import Region, SharedInputs
from dayu.runtime.errors import Unavailable
from dayu.runtime.logs import get_logger
from dayu.runtime.metrics import model_called
from dayu.v1 import types_pb2

log = get_logger(__name__)
T = TypeVar("T")
# Tensors of a segment are large (a 960x544 frame is 6 MB as FP32); Triton's own client allows 2 GB.
MAX_MESSAGE_BYTES = 2**31 - 1
# While Triton is away the channel tries to reconnect every half second (gRPC's default backoff grows to
# 2 minutes), so the stages after its return succeed within the retries of one call.
RECONNECT_BACKOFF_MS = 500
UNLOAD_POLL_S = 0.05  # how often an unload reads Triton's repository index until the model has gone


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int = 0  # 0: the latest the server has

    def __str__(self) -> str:
        return f"{self.name} v{self.version}" if self.version else self.name


def model_of(spec: types_pb2.StageSpec, default: str) -> ModelRef:
    """The model a stage names in the pipeline, else the kind's default."""
    return ModelRef(spec.model or default, spec.model_version)


@dataclass(frozen=True)
class Tensor:
    """A model's input or output as its server describes it: name, element type ("FP32", "UINT8", as
    Triton names them) and shape, batch axis first; -1 where any size goes."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs, to check before the first task what a kind will send and read."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    def only_input(self, model: ModelRef) -> Tensor:
        if len(self.inputs) != 1:
            raise ModelMismatch(f"model {model} has {len(self.inputs)} inputs {self.input_names}; the kinds feed one")
        return self.inputs[0]

    def output(self, model: ModelRef, name: str = "") -> Tensor:
        """The output of that name; "" is the model's only output."""
        if not name:
            if len(self.outputs) != 1:
                raise ModelMismatch(f"model {model} has outputs {self.output_names}: name the one to read")
            return self.outputs[0]
        for tensor in self.outputs:
            if tensor.name == name:
                return tensor
        raise ModelMismatch(f"model {model} has no output {name!r}; its outputs are {self.output_names}")

    @property
    def input_names(self) -> list[str]:
        return [tensor.name for tensor in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [tensor.name for tensor in self.outputs]


def check_shape(model: ModelRef, tensor: Tensor, expected: tuple[int | None, ...], what: str) -> None:
    """Fails unless the tensor has the expected rank and, on every axis both fix, the same size
    (None in `expected`, -1 in the model: any size)."""
    shape = tensor.shape
    fits = len(shape) == len(expected) and all(
        want is None or have < 0 or have == want for have, want in zip(shape, expected, strict=True)
    )
    if not fits:
        shown = ", ".join("?" if want is None else str(want) for want in expected)
        raise ModelMismatch(f"{tensor.name!r} of model {model} has shape {list(shape)}; {what} needs [{shown}]")


class InferenceBackend(Protocol):
    async def infer(self, model: ModelRef, batch: np.ndarray) -> np.ndarray:
        """The model's (only) output for a batch of its (only) input."""

    async def infer_outputs(
        self, model: ModelRef, batch: np.ndarray, names: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        """The outputs of those names (none named: all), for a batch of the model's (only) input."""

    async def signature(self, model: ModelRef) -> Signature:
        """The model's inputs and outputs; ModelMismatch when the model is not there."""

    async def ready(self) -> None:
        """Returns once the backend answers (a processor starting before its Triton waits for it)."""

    async def load_model(self, model: ModelRef) -> None:
        """Loads the model (a deployable processor's, when the deployment plan loads it)."""

    async def unload_model(self, model: ModelRef) -> None:
        """Releases the model's memory (when the deployment plan unloads it)."""

    async def aclose(self) -> None:
        """Releases connections."""


class TritonUnavailable(Unavailable):
    """Triton did not answer within the retries: down, restarting or too slow."""


class TritonError(RuntimeError):
    """Triton answered with an error that another try would not change (unknown model, bad input)."""


class _Backend:
    """What every backend does the same way on top of its signature and infer_outputs."""

    async def signature(self, model: ModelRef) -> Signature:
        raise NotImplementedError

    async def infer_outputs(
        self, model: ModelRef, batch: np.ndarray, names: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    async def infer(self, model: ModelRef, batch: np.ndarray) -> np.ndarray:
        """The model's only output."""
        output = (await self.signature(model)).output(model).name
        return (await self.infer_outputs(model, batch, [output]))[output]


class TritonBackend(_Backend):
    """Triton over gRPC with tritonclient's asyncio client, opened on first use (in the serving loop)."""

    def __init__(self, params: TritonParams) -> None:
        self.params = params
        self._client: triton_grpc.InferenceServerClient | None = None
        self._signatures: dict[ModelRef, Signature] = {}  # from the model's metadata
        self._shared = (
            SharedInputs(lambda: self.client, params.address, params.timeout_s) if params.shared_memory else None
        )

    @property
    def shared_memory_refused(self) -> str:
        """Why the input tensors go in the requests although shared memory was asked for ("": they do not)."""
        return self._shared.refused if self._shared is not None else ""

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
                if not retryable(error) and await self._ready():
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

    async def ready(self) -> None:
        try:
            await wait_until_ready(self.params.address, self.params.start_timeout_s, tls=self.params.tls)
        except TimeoutError as error:
            raise TritonUnavailable(f"{error} (triton.start_timeout_s)") from None

    async def _metadata(self, model: ModelRef) -> Any:
        return await self._with_retries(
            model,
            "metadata",
            lambda: self.client.get_model_metadata(
                model.name, str(model.version or ""), client_timeout=self.params.timeout_s
            ),
        )

    async def signature(self, model: ModelRef) -> Signature:
        if model not in self._signatures:
            try:
                metadata = await self._metadata(model)
            except TritonError as error:
                loaded, why = await self._load_on_first_use(model)
                if not loaded:
                    raise ModelMismatch(f"{error}; it serves {await self._served()}{why}") from None
                try:
                    metadata = await self._metadata(model)
                except TritonError as again:
                    raise ModelMismatch(f"{again}; it serves {await self._served()}") from None
            self._signatures[model] = Signature(
                tuple(Tensor(t.name, t.datatype, tuple(t.shape)) for t in metadata.inputs),
                tuple(Tensor(t.name, t.datatype, tuple(t.shape)) for t in metadata.outputs),
            )
        return self._signatures[model]

    async def load_model(self, model: ModelRef) -> None:
        """Triton's repository API (explicit model control): loads the model unless it is ready."""
        client, timeout = self.client, self.params.timeout_s
        try:
            if not await client.is_model_ready(model.name, client_timeout=timeout):
                await client.load_model(model.name, client_timeout=max(timeout, self.params.start_timeout_s))
        except InferenceServerException as error:
            raise TritonUnavailable(f"Triton at {self.params.address}: load of {model}: {error.message()}") from None

    async def _load_on_first_use(self, model: ModelRef) -> tuple[bool, str]:
        """A model of the repository that Triton (in explicit model control mode, as the mesh starts it)
        has not loaded, such as one that a pipeline installed at run time names: loaded now, its first
        use. (False, why) when it is loaded already (its version is what is missing) or Triton cannot
        load it (not in its repository; a Triton in its default mode refuses loads)."""
        client, timeout = self.client, self.params.timeout_s
        try:
            if await client.is_model_ready(model.name, client_timeout=timeout):
                return False, ""
            await client.load_model(model.name, client_timeout=max(timeout, self.params.start_timeout_s))
        except InferenceServerException as error:
            return False, f"; loading it failed: {error.message()}"
        log.info("model loaded on first use", model=model.name, address=self.params.address)
        return True, ""

    async def unload_model(self, model: ModelRef) -> None:
        """Triton's repository API: unloads the model (Triton lets its in-flight requests finish), and
        returns once Triton's repository index no longer shows it loaded or unloading: its memory freed
        (the unload call itself returns while Triton is still at it)."""
        self._signatures = {ref: sig for ref, sig in self._signatures.items() if ref.name != model.name}
        deadline = asyncio.get_running_loop().time() + max(self.params.timeout_s, self.params.start_timeout_s)
        try:
            await self.client.unload_model(model.name, client_timeout=self.params.timeout_s)
            while True:
                index = await self.client.get_model_repository_index(client_timeout=self.params.timeout_s)
                states = {entry.state for entry in index.models if entry.name == model.name}
                if not states & {"READY", "UNLOADING"}:
                    return
                if asyncio.get_running_loop().time() > deadline:
                    raise TritonUnavailable(f"Triton at {self.params.address}: {model} still {sorted(states)}")
                await asyncio.sleep(UNLOAD_POLL_S)
        except InferenceServerException as error:
            raise TritonUnavailable(f"Triton at {self.params.address}: unload of {model}: {error.message()}") from None

    async def _served(self) -> list[str]:
        """ "name:version" of the models Triton has ready (for an error that says what is there)."""
        try:
            index = await self.client.get_model_repository_index(client_timeout=self.params.timeout_s)
        except InferenceServerException:
            return []
        return sorted(f"{m.name}:{m.version}" if m.version else m.name for m in index.models if m.state == "READY")

    async def infer_outputs(
        self, model: ModelRef, batch: np.ndarray, names: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        signature = await self.signature(model)
        return await self._infer(model, signature.only_input(model), list(names or signature.output_names), batch)

    async def _infer(
        self, model: ModelRef, input_tensor: Tensor, output_names: list[str], batch: np.ndarray
    ) -> dict[str, np.ndarray]:
        model_called(model.name, len(batch))
        outputs = [triton_grpc.InferRequestedOutput(name) for name in output_names]
        for recovered in range(3):
            try:
                result = await self._infer_once(model, input_tensor, outputs, batch)
                break
            except TritonError as error:
                # A Triton restarted since holds only its models of the start and none of the shared
                # memory: each is set right once (it names one at a time), then the call is made again.
                lost = self._shared is not None and self._shared.lost(error)
                if recovered == 2 or (not lost and not (await self._load_on_first_use(model))[0]):
                    raise
        return await asyncio.to_thread(lambda: {name: result.as_numpy(name) for name in output_names})

    async def _infer_once(
        self, model: ModelRef, spec: Tensor, outputs: list[triton_grpc.InferRequestedOutput], batch: np.ndarray
    ) -> Any:
        shared = self._shared
        region = await shared.take(_nbytes(spec, batch)) if shared is not None else None
        try:
            tensor = await asyncio.to_thread(_input_tensor, spec, batch, region)  # megabytes copied: off the loop
            return await self._with_retries(
                model,
                "inference",
                lambda: self.client.infer(
                    model.name,
                    [tensor],
                    model_version=str(model.version or ""),
                    outputs=outputs,
                    client_timeout=self.params.timeout_s,
                ),
            )
        finally:
            if shared is not None and region is not None:
                shared.give(region)

    async def aclose(self) -> None:
        if self._shared is not None and self._client is not None:
            await self._shared.aclose()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()


# onnxruntime's element types as Triton names them.
_ONNX_TYPES = {"tensor(float)": "FP32", "tensor(uint8)": "UINT8", "tensor(int32)": "INT32", "tensor(int64)": "INT64"}


def onnx_session(path: Path, intra_op_threads: int, memory_arena: bool) -> onnxruntime.InferenceSession:
    """A CPU session with the settings Triton's Python-backend model uses too (triton_models/onnx_model.py),
    so both paths compute the same numbers; the memory arena changes where tensors live, not their values.

    Without the arena each run maps its tensors afresh: every component caps glibc's mmap threshold
    (dayu.runtime.memory), so each buffer of 1 MiB or more is a new mapping whose pages fault in
    zeroed, and the first run of an input shape, before onnxruntime has planned one block for it,
    maps every tensor on its own (docs/inference.md has the measurements)."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    options.enable_cpu_mem_arena = memory_arena
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = min(intra_op_threads, os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _shape(dims: list[int | str | None]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in dims)


class OnnxRuntimeBackend(_Backend):
    """onnxruntime in this process, on the ONNX files Triton serves too (dayu.processor.repository); the
    call runs in a worker thread so the processor's event loop keeps answering."""

    def __init__(self, intra_op_threads: int, model_repository: Path | None = None, memory_arena: bool = True) -> None:
        self.intra_op_threads = intra_op_threads
        self.memory_arena = memory_arena
        self.model_repository = model_repository
        self._sessions: dict[ModelRef, onnxruntime.InferenceSession] = {}
        self._signatures: dict[ModelRef, Signature] = {}  # read once per model, not per call

    def session(self, model: ModelRef) -> onnxruntime.InferenceSession:
        """The model's session, loaded on first use (the kinds load theirs when they are checked at start)."""
        if model not in self._sessions:
            try:
                with model_file(model.name, model.version, self.model_repository) as path:
                    self._sessions[model] = onnx_session(path, self.intra_op_threads, self.memory_arena)
            except (ValueError, FileNotFoundError) as error:
                raise ModelMismatch(str(error)) from None
        return self._sessions[model]

    async def ready(self) -> None:
        """In process: always."""

    async def load_model(self, model: ModelRef) -> None:
        await asyncio.to_thread(self.session, model)

    async def unload_model(self, model: ModelRef) -> None:
        self._sessions.pop(model, None)
        self._signatures.pop(model, None)

    async def signature(self, model: ModelRef) -> Signature:
        if model not in self._signatures:
            session = await asyncio.to_thread(self.session, model)
            self._signatures[model] = Signature(
                tuple(Tensor(t.name, _ONNX_TYPES.get(t.type, t.type), _shape(t.shape)) for t in session.get_inputs()),
                tuple(Tensor(t.name, _ONNX_TYPES.get(t.type, t.type), _shape(t.shape)) for t in session.get_outputs()),
            )
        return self._signatures[model]

    async def infer_outputs(
        self, model: ModelRef, batch: np.ndarray, names: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        signature = await self.signature(model)
        feed = {signature.only_input(model).name: np.ascontiguousarray(batch)}
        model_called(model.name, len(batch))
        names = list(names or signature.output_names)
        outputs = await asyncio.to_thread(self.session(model).run, names, feed)
        return dict(zip(names, outputs, strict=True))

    async def aclose(self) -> None:
        self._sessions.clear()
        self._signatures.clear()


def make_backend(params: InferenceParams) -> InferenceBackend:
    """The backend the parameters choose (models load when a kind checks them at start)."""
    if params.backend == "triton":
        return TritonBackend(params.triton)
    return OnnxRuntimeBackend(params.intra_op_threads, params.model_repository, params.memory_arena)


def _dtype(spec: Tensor) -> tuple[type[np.generic], str]:
    return (np.uint8, "UINT8") if spec.dtype == "UINT8" else (np.float32, "FP32")


def _nbytes(spec: Tensor, batch: np.ndarray) -> int:
    return batch.size * np.dtype(_dtype(spec)[0]).itemsize


def _input_tensor(spec: Tensor, batch: np.ndarray, region: Region | None) -> triton_grpc.InferInput:
    """The input in the request, or written into the shared memory region (converted as it is copied)."""
    dtype, name = _dtype(spec)
    tensor = triton_grpc.InferInput(spec.name, list(batch.shape), name)
    if region is None:
        tensor.set_data_from_numpy(np.ascontiguousarray(batch, dtype=dtype))
    else:
        region.array(batch.shape, dtype)[...] = batch
        tensor.set_shared_memory(region.name, _nbytes(spec, batch))
    return tensor
