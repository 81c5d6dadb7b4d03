"""Triton Python-backend model of the CPU path: runs the ONNX file of its version directory
(`model.onnx`) with onnxruntime.

The repository assembler copies this file into every model's version directory as `model.py`. The
tritonserver in the nvidia-pytriton wheel has the Python backend only; GPU nodes serve the same
`model.onnx` with the official container's onnxruntime backend (configs/gpu.pbtxt), and since this
model keeps the ONNX model's own input and output names, clients cannot tell the two apart.

Requests that the dynamic batcher hands over together run as one batch when their shapes agree
(frames of one resolution, crops of one padded width), and one by one shape group otherwise.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    return str(config.get("parameters", {}).get(key, {}).get("string_value", default))


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        options = onnxruntime.SessionOptions()
        # Few threads: on a small node the processors and the other instances need the other cores.
        options.intra_op_num_threads = int(_parameter(config, "intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        # onnxruntime's arena, as the processors' sessions in process: the memory of the largest run is
        # kept for the next (glibc's malloc here keeps it anyway); it changes no number, and without it
        # each run costs about a fifth more CPU (docs/inference.md).
        options.enable_cpu_mem_arena = True
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = config["input"][0]["name"]
        self.output_names = [output["name"] for output in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        by_shape: defaultdict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, array in enumerate(arrays):
            by_shape[array.shape[1:]].append(i)
        responses: list[Any] = [None] * len(requests)
        for indices in by_shape.values():
            batch = np.concatenate([arrays[i] for i in indices])
            try:
                outputs = self.session.run(self.output_names, {self.input_name: batch})
            except Exception as error:  # one bad group must not fail the others
                for i in indices:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error)))
                continue
            start = 0
            for i in indices:
                end = start + len(arrays[i])
                tensors = [pb_utils.Tensor(name, out[start:end]) for name, out in zip(self.output_names, outputs)]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start = end
        return responses
