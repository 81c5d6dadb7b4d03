"""Processor kinds of other packages (docs/plugins.md): found by their entry points, loaded on first
use, refused with the entry point and distribution named; the interface they implement
(dayu.processor.api); and the template `dayu processor new` renders.

The distributions here are real ones on sys.path (a .dist-info folder, as pip installs it), so
importlib.metadata finds them as it finds an installed plugin."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dayu import cli
from dayu.mesh.model import MeshConfig, read_mesh_file
from dayu.processor import api
from dayu.processor.kinds import PROCESSORS
from dayu.runtime.errors import InvalidArgument
from dayu.runtime.pipelines import load_pipelines
from dayu.runtime.registry import NoParams, Registry

GROUP = "dayu.test-processors"  # not dayu.processors: nothing installed in this environment answers it


def install(site: Path, distribution: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """Writes a distribution as pip installs it into `site`: its modules and its metadata."""
    info = site / f"{distribution.replace('-', '_')}-1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.2\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n{lines}")
    for module, code in modules.items():
        (site / f"{module}.py").write_text(code)
    return site


GOOD = '''
import pydantic

class Blur:
    """Measures blur, from a plugin."""

    api_version = 1

    class Params(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        size: int = pydantic.Field(3, ge=1)

    def __init__(self, params):
        self.size = params.size

class Plain:
    """Takes no parameters."""

    api_version = 1

    def __init__(self, params):
        self.params = params

class Unversioned:
    def __init__(self, params): ...

class Future:
    api_version = 2

class BadParams:
    api_version = 1
    Params = dict
'''


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    for module in ("plugin_good", "plugin_broken"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    return folder


def test_entry_points_register_lazily_and_load_on_first_use(site: Path) -> None:
    install(site, "dayu-blur", {"blur": "plugin_good:Blur", "plain": "plugin_good:Plain"}, {"plugin_good": GOOD})
    parts: Registry[type] = Registry("processor")
    parts.register("noop")(object)

    assert parts.register_entry_points(GROUP, api_versions=(1,)) == ["blur", "plain"]
    assert parts.names() == ["blur", "noop", "plain"]
    assert "plugin_good" not in sys.modules  # known from the metadata alone

    # The parameters are the class's own, known once it is imported.
    assert parts.params("blur", {"size": 5}).size == 5  # type: ignore[attr-defined]
    assert "plugin_good" in sys.modules
    with pytest.raises(InvalidArgument) as bad:
        parts.params("blur", {"size": 0}, field="processors.blur.params")
    assert bad.value.field == "processors.blur.params.size"
    blur = parts.create("blur", {"size": 7})
    assert blur.size == 7 and type(blur).__name__ == "Blur"
    assert parts.entry("blur").summary == "Measures blur, from a plugin."

    plain = parts.entry("plain")
    assert plain.params is NoParams and plain.summary == "Takes no parameters."
    with pytest.raises(InvalidArgument) as extra:
        parts.create("plain", {"size": 1})
    assert extra.value.field == "params.size"

    # Seen again (the same distribution twice on the path): the same entry points, counted once.
    assert parts.register_entry_points(GROUP, api_versions=(1,)) == []
    assert parts.names() == ["blur", "noop", "plain"]


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        (
            "plugin_good:Unversioned",
            "says no api_version: set `api_version = 1` on Unversioned (the versions of "
            "the interface this Dayu supports: 1)",
        ),
        ("plugin_good:Future", "implements api_version 2, which this Dayu does not support (it supports 1)"),
        ("plugin_good:BadParams", "has a Params that is not a pydantic model: <class 'dict'>"),
        ("plugin_good:Missing", "does not load: AttributeError: module 'plugin_good' has no attribute 'Missing'"),
        ("plugin_broken:Runner", "does not load: ModuleNotFoundError: No module named 'no_such_library'"),
    ],
)
def test_a_plugin_that_cannot_run_is_refused_on_use_naming_its_entry_point(
    site: Path, target: str, problem: str
) -> None:
    broken = "import no_such_library\n"
    install(site, "dayu-odd", {"odd": target}, {"plugin_good": GOOD, "plugin_broken": broken})
    parts: Registry[type] = Registry("processor")
    parts.register_entry_points(GROUP, api_versions=(1,))
    assert parts.names() == ["odd"]

    where = f"processor 'odd' of entry point 'odd = {target}' (group '{GROUP}') of distribution dayu-odd 1.2"
    with pytest.raises(InvalidArgument) as refused:
        parts.create("odd", name_field="processor.kind")
    assert refused.value.field == "processor.kind"
    assert refused.value.expected.startswith(f"{where} {problem}"), refused.value.expected
    # Its parameters cannot be known either; it stays listed, and fails the same way again.
    with pytest.raises(InvalidArgument, match=r"of distribution dayu-odd 1\.2 "):
        parts.params("odd", {}, field="processors.odd.params")
    assert parts.names() == ["odd"]


def test_an_entry_point_that_takes_a_name_or_is_malformed_is_refused_on_use(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = site.parent / "other"
    install(site, "dayu-noop", {"noop": "plugin_good:Blur", "Blur": "plugin_good:Blur"}, {"plugin_good": GOOD})
    install(other, "dayu-blur-a", {"blur": "plugin_good:Blur", "good": "plugin_good:Plain"}, {})
    install(other, "dayu-blur-b", {"blur": "plugin_good:Plain", "bare": "plugin_good"}, {})
    monkeypatch.syspath_prepend(str(other))
    parts: Registry[type] = Registry("processor")
    parts.register("noop")(object)

    # Registering refuses nothing at once: the parts that are fine work, whatever else is installed.
    assert parts.register_entry_points(GROUP) == ["good"]
    assert type(parts.create("good")).__name__ == "Plain"
    assert parts.names() == ["blur", "good", "noop"]  # "blur" is claimed twice: listed, refused on use

    def refusal(name: str) -> str:
        with pytest.raises(InvalidArgument) as refused:
            parts.create(name, name_field="processor.kind")
        assert refused.value.field == "processor.kind"
        with pytest.raises(InvalidArgument):
            parts.params(name, {})
        return refused.value.expected

    assert refusal("noop") == (
        f"processor 'noop' of entry point 'noop = plugin_good:Blur' (group '{GROUP}') of distribution dayu-noop "
        "1.2 clashes with the processor of that name built into Dayu: rename the entry point in its package's "
        "pyproject.toml, or uninstall one of them"
    )
    assert re.fullmatch(
        r"processor 'blur' of entry point 'blur = plugin_good:\w+' .* of distribution dayu-blur-(a|b) 1\.2 clashes "
        r"with the entry point 'blur = plugin_good:\w+' .* of distribution dayu-blur-(a|b) 1\.2: rename .*",
        refusal("blur"),
    )
    assert "its name must be lowercase letters, digits and '_'" in refusal("Blur")
    assert "dayu-blur-b 1.2: its value must be 'package.module:Class'" in refusal("bare")


def test_an_unknown_name_says_where_plugins_come_from() -> None:
    parts: Registry[type] = Registry("processor")
    parts.register_entry_points(GROUP)
    with pytest.raises(InvalidArgument, match=f"entry point in the group '{GROUP}': is that package installed"):
        parts.entry("nowhere", field="processor.kind")


def test_dayu_finds_the_processor_kinds_of_installed_packages(site: Path) -> None:
    """In a fresh interpreter: kinds.py registers the dayu.processors group, without importing it."""
    info = install(site, "dayu-blur", {}, {"plugin_good": GOOD}) / "dayu_blur-1.2.dist-info"
    (info / "entry_points.txt").write_text("[dayu.processors]\nblur = plugin_good:Blur\n")
    code = (
        "import json, sys\n"
        "from dayu.processor.kinds import PROCESSORS\n"
        "names, loaded = PROCESSORS.names(), 'plugin_good' in sys.modules\n"
        "runner = PROCESSORS.create('blur', {'size': 2})\n"
        "print(json.dumps([names, loaded, runner.size]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONPATH": str(site)}
    )
    names, loaded, size = json.loads(done.stdout)
    assert "blur" in names and "noop" in names and not loaded and size == 2


def test_the_interface_names_what_it_promises_and_loads_no_imaging_library() -> None:
    assert api.API_VERSION == 1 and api.API_VERSION in api.SUPPORTED_API_VERSIONS
    assert api.ENTRY_POINT_GROUP == "dayu.processors"
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    code = "import sys, dayu.processor.api\nprint(sorted({'cv2', 'av', 'numpy'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_helpers_decode_write_and_refine() -> None:
    frames = [np.full((6, 8, 3), value, np.uint8) for value in (10, 250)]
    task, stage = api.sample_task("mine", frames)
    assert [s.spec.name for s in task.dag.stages] == ["stage"] and stage.spec.processor == "mine"
    decoded = asyncio.run(api.decode_frames(task))
    assert all(np.array_equal(a, b) for a, b in zip(decoded, frames, strict=True))
    assert (api.frame_box(frames[0]).x2, api.frame_box(frames[0]).y2) == (8, 6)

    half = api.Box(x1=0, y1=0, x2=4, y2=6)
    api.write_results(task, stage, [[api.Detection(box=half, label="a")], []], decoded)
    assert [len(r.detections) for r in stage.results] == [1, 0]
    assert list(stage.scenario.object_counts) == [1, 0]
    assert list(stage.scenario.mean_object_sizes) == [0.5, 0.0]

    class Shade(api.BoxRefiner):
        async def describe(self, objects, spec):  # type: ignore[no-untyped-def]
            return [{"label": "light" if api.crop_box(frame, d.box).mean() > 128 else "dark"} for frame, d in objects]

    found = [[api.Detection(box=half, label="plate")], [api.Detection(box=half), api.Detection(box=half)]]
    task, stage = api.sample_task("shade", frames, found)
    assert [len(parents) for parents in api.parent_results(task, stage)] == [1, 2]
    asyncio.run(Shade().run(task, stage))
    labels = [[(d.label, d.parent_index) for d in result.detections] for result in stage.results]
    assert labels == [[("dark", 0)], [("light", 0), ("light", 1)]]


def test_the_template_renders_into_a_new_folder_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "made"
    assert cli.main(["processor", "new", "sharp_ness", "--directory", str(target)]) == 0
    files = sorted(str(path.relative_to(target)) for path in target.rglob("*") if path.is_file())
    assert files == [
        "README.md",
        "dayu_sharp_ness/__init__.py",
        "dayu_sharp_ness/runner.py",
        "example/mesh.yaml",
        "example/pipelines.yaml",
        "pyproject.toml",
        "tests/test_runner.py",
    ]
    for path in files:
        assert "{{" not in (target / path).read_text(), path
    pyproject = (target / "pyproject.toml").read_text()
    assert 'name = "dayu-sharp-ness"' in pyproject
    assert '[project.entry-points."dayu.processors"]\nsharp_ness = "dayu_sharp_ness.runner:Runner"' in pyproject
    assert 'requires = ["hatchling==1.33.0"]' in pyproject and "dependencies = []" in pyproject
    assert "pip install -e" in capsys.readouterr().out
    compile((target / "dayu_sharp_ness" / "runner.py").read_text(), "runner.py", "exec")
    # Its example mesh is one `dayu up` takes, with the new kind on both nodes and as the stream's stage.
    # (The file's schema: loading it for `dayu up` also checks its kinds, and this one is not installed here.)
    mesh = MeshConfig.model_validate(read_mesh_file(target / "example" / "mesh.yaml"))
    assert all(node.processors == ["sharp_ness"] for node in mesh.nodes.values())
    (pipeline,) = load_pipelines(target / "example" / mesh.pipelines_file).values()
    assert [stage.processor for stage in pipeline.stages] == ["sharp_ness"]

    before = (target / "README.md").read_text()
    for argv, problem in [
        (["sharp_ness", "--directory", str(target)], "--directory: a folder that does not exist yet"),
        (["Sharp"], "NAME: lowercase letters"),
        (["2d"], "NAME: lowercase letters"),
        (["noop"], "NAME: a name no processor kind has yet"),
    ]:
        assert cli.main(["processor", "new", *argv]) == 2
        assert problem in capsys.readouterr().err
    assert (target / "README.md").read_text() == before
    assert "noop" in PROCESSORS.names()
