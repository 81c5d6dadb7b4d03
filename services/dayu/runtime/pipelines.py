"""Pipelines declared in YAML, read into dayu.v1.Pipeline messages and validated.

pipelines:
  - name: traffic
    stages:
      - {name: detect, processor: detector, input_type: DATA_TYPE_FRAMES, output_type: DATA_TYPE_BOXES}
      - {name: classify, processor: classifier, parents: [detect],
         input_type: DATA_TYPE_BOXES, output_type: DATA_TYPE_LABELS}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from dayu.runtime.errors import InvalidArgument
from dayu.runtime.validation import validate_pipeline
from dayu.v1 import types_pb2


def pipeline_from_mapping(data: Any, field: str) -> types_pb2.Pipeline:
    if not isinstance(data, dict):
        raise InvalidArgument(field, f"a mapping with name and stages, got {type(data).__name__}")
    try:
        pipeline = json_format.ParseDict(data, types_pb2.Pipeline())
    except json_format.ParseError as error:
        raise InvalidArgument(field, str(error)) from None
    validate_pipeline(pipeline, field)
    return pipeline


def load_pipelines(path: Path) -> dict[str, types_pb2.Pipeline]:
    """The pipelines of a YAML file, by name."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise InvalidArgument(str(path), f"a readable YAML file ({error})") from None
    entries = (data or {}).get("pipelines") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise InvalidArgument(f"{path}: pipelines", "a list of pipelines")
    pipelines: dict[str, types_pb2.Pipeline] = {}
    for i, entry in enumerate(entries):
        pipeline = pipeline_from_mapping(entry, f"{path}: pipelines[{i}]")
        if pipeline.name in pipelines:
            raise InvalidArgument(f"{path}: pipelines[{i}].name", f"a unique name, but {pipeline.name!r} is used twice")
        pipelines[pipeline.name] = pipeline
    return pipelines
