from __future__ import annotations

import pydantic
import pytest

from dayu.runtime.errors import InvalidArgument
from dayu.runtime.registry import Registry


class Params(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    size: int = pydantic.Field(1, ge=1)


def test_create_validates_params_and_names_fields() -> None:
    parts: Registry[type] = Registry("widget")

    @parts.register("box", params=Params)
    class Box:
        """A box."""

        def __init__(self, params: Params, colour: str) -> None:
            self.size, self.colour = params.size, colour

    box = parts.create("box", {"size": 3}, colour="red")
    assert (box.size, box.colour) == (3, "red")
    assert parts.entry("box").summary == "A box."

    with pytest.raises(InvalidArgument) as unknown:
        parts.create("crate", name_field="widget.kind")
    assert unknown.value.field == "widget.kind" and "['box']" in unknown.value.expected

    with pytest.raises(InvalidArgument) as bad:
        parts.create("box", {"size": 0}, params_field="widget.params")
    assert bad.value.field == "widget.params.size"

    with pytest.raises(InvalidArgument) as extra:
        parts.create("box", {"colour": "blue"})
    assert extra.value.field == "params.colour"

    with pytest.raises(ValueError, match="twice"):
        parts.register("box")(Box)
