"""A component's process imports what it runs: each check imports in a fresh interpreter, since this
one has loaded everything by now."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dayu.components import COMPONENTS

HEAVY_MODULES = ("cv2", "av", "numpy", "onnxruntime", "rapidocr_onnxruntime", "tritonclient", "matplotlib")
# Frames are decoded and encoded in these (the distributor's golden configuration re-encodes frames).
NEEDS_FRAMES = {"datasource", "distributor", "generator"}
FRAME_MODULES = {"cv2", "av", "numpy"}


def loaded_after(code: str) -> dict[str, list[str]]:
    """The heavy modules and the dayu packages loaded once `code` has run in a fresh interpreter."""
    report = f"""
import json, sys
{code}
print(json.dumps({{
    "heavy": [name for name in {HEAVY_MODULES!r} if name in sys.modules],
    "dayu": sorted({{name.split(".")[1] for name in sys.modules if name.startswith("dayu.")}}),
}}))
"""
    done = subprocess.run([sys.executable, "-c", report], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_the_registry_of_components_imports_none_of_them() -> None:
    loaded = loaded_after("from dayu.components import COMPONENTS\nCOMPONENTS.names()")
    assert loaded == {"heavy": [], "dayu": ["components", "runtime"]}


@pytest.mark.parametrize("component", COMPONENTS.names())
def test_a_component_loads_only_the_libraries_it_runs(component: str) -> None:
    entry = COMPONENTS.entry(component)
    assert entry.factory.name == component  # type: ignore[attr-defined]
    loaded = loaded_after(f"from dayu.components import COMPONENTS\nCOMPONENTS.entry({component!r})")
    allowed = FRAME_MODULES if component in NEEDS_FRAMES else set()
    assert set(loaded["heavy"]) <= allowed
    assert set(loaded["dayu"]) - {"components", "runtime", "media", "v1"} == {component}


def test_a_processor_loads_a_kinds_libraries_only_for_that_kind() -> None:
    listed = loaded_after(
        "from dayu.processor.service import ProcessorSettings\n"
        "from dayu.processor.kinds import PROCESSORS\n"
        "for kind in set(PROCESSORS.names()) - set(PROCESSORS.plugin_names()):\n"
        "    PROCESSORS.params_model(kind).model_json_schema()\n"
        "PROCESSORS.entry('noop')\n"
        "PROCESSORS.entry('merge')"
    )
    assert listed["heavy"] == []
    colour = loaded_after("from dayu.processor.kinds import PROCESSORS\nPROCESSORS.entry('color_classifier')")
    assert set(colour["heavy"]) == FRAME_MODULES
    detector = loaded_after("from dayu.processor.kinds import PROCESSORS\nPROCESSORS.entry('text_detector')")
    assert {"onnxruntime", "rapidocr_onnxruntime"} <= set(detector["heavy"])
