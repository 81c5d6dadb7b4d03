"""Configuration sections that more than one component reads."""

from __future__ import annotations

import json
from typing import Any

import pydantic

from dayu.runtime.config import StrictModel
from dayu.v1 import decision_pb2


class PolicySection(StrictModel):
    """A scheduling policy by name, with its parameters (validated by the scheduler's registry)."""

    name: str = "fixed"
    params: dict[str, Any] = pydantic.Field(default_factory=dict)

    def spec(self) -> decision_pb2.PolicySpec:
        # Parameters travel as YAML text in the contract; JSON is YAML.
        return decision_pb2.PolicySpec(name=self.name, params_yaml=json.dumps(self.params))
