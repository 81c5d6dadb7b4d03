"""Configuration sections that more than one component reads."""

from __future__ import annotations

from typing import Any

import pydantic

from dayu.runtime.config import StrictModel
from dayu.v1 import decision_pb2


class PolicySection(StrictModel):
    """A scheduling policy by name, with its parameters (validated by the scheduler's registry)."""

    name: str = "fixed"
    params: dict[str, Any] = pydantic.Field(default_factory=dict)

    def spec(self) -> decision_pb2.PolicySpec:
        spec = decision_pb2.PolicySpec(name=self.name)
        spec.params.update(self.params)  # a Struct: what YAML and JSON hold (mappings, lists, scalars)
        return spec
