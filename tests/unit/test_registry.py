from __future__ import annotations

import sys
from pathlib import Path

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


LAZY_MODULE = '''
import pydantic

class Crate:
    """A crate, from a module imported on first use."""

    def __init__(self, params: pydantic.BaseModel) -> None:
        self.size = params.size
'''


def test_lazy_entries_import_their_module_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lazy_crates.py").write_text(LAZY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lazy_crates", raising=False)
    parts: Registry[type] = Registry("widget")
    parts.register_lazy("crate", "lazy_crates:Crate", params=Params)

    # Names and parameters are known without the module.
    assert parts.names() == ["crate"]
    assert parts.params("crate", {"size": 2}) == Params(size=2)
    with pytest.raises(InvalidArgument) as bad:
        parts.params("crate", {"size": 0})
    assert bad.value.field == "params.size"
    assert "lazy_crates" not in sys.modules

    crate = parts.create("crate", {"size": 4})
    assert crate.size == 4 and type(crate).__module__ == "lazy_crates"
    entry = parts.entry("crate")
    assert entry.factory is sys.modules["lazy_crates"].Crate
    assert (entry.params, entry.summary) == (Params, "A crate, from a module imported on first use.")
    assert parts.names() == ["crate"]

    with pytest.raises(ValueError, match="twice"):
        parts.register_lazy("crate", "lazy_crates:Crate")
    with pytest.raises(ValueError, match="twice"):
        parts.register("crate")(object)
    with pytest.raises(ValueError, match=r"package\.module:attribute"):
        parts.register_lazy("box", "lazy_crates.Crate")


def test_a_lazy_entry_that_does_not_import_fails_on_use_and_stays_listed() -> None:
    parts: Registry[type] = Registry("widget")
    parts.register_lazy("ghost", "dayu.no_such_module:Ghost", summary="never there")
    assert parts.names() == ["ghost"]
    with pytest.raises(ModuleNotFoundError):
        parts.entry("ghost")
    assert parts.names() == ["ghost"]
    with pytest.raises(InvalidArgument) as unknown:
        parts.entry("spectre", field="widget.kind")
    assert unknown.value.field == "widget.kind" and "['ghost']" in unknown.value.expected
