"""The one registry for pluggable parts: a name plus typed parameters selects an implementation.

Components, policies, frame filters, encoders, sources and processors all plug in the same way:

    PROCESSORS = Registry[ProcessorFactory]("processor")

    @PROCESSORS.register("noop", params=NoopParams)
    def make_noop(params: NoopParams) -> Processor: ...

    processor = PROCESSORS.create("noop", {"delay_s": 0.1})

A part whose module is costly to import (models, codecs) registers by where it lives instead, so its
module loads only when the part is used; its name and parameters are known without it:

    PROCESSORS.register_lazy("text_detector", "dayu.processor.models:TextDetectorRunner", params=TextDetectorParams)

Parts may also come from other installed packages, through an entry-point group (see
docs/plugins.md): each entry point's name is the part's name, its value "package.module:Class". They
register lazily as well, their names known from the packages' metadata alone; their parameters are
the class's own `Params`, known once the class is imported (on its first use):

    PROCESSORS.register_entry_points("dayu.processors", api_versions=(1,))

Parameters are validated by their pydantic model, so a typo in YAML is an error that names the
field, never a silent default. No eval, no environment mini-languages.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pydantic

from dayu.runtime.errors import InvalidArgument, cut, from_validation_error, shown

T = TypeVar("T")
# The name of a part from an entry point: what a pipeline's stage and a node's list say, and part of
# the names of its Kubernetes workloads.
PLUGIN_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


class NoParams(pydantic.BaseModel):
    """Parameters of a part that takes none."""

    model_config = pydantic.ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: T
    params: type[pydantic.BaseModel]
    summary: str


@dataclass(frozen=True)
class _Plugin:
    """Where a part of another package comes from: an entry point of an installed distribution."""

    group: str
    entry_point: str  # as its metadata says it: "name = package.module:Class"
    distribution: str  # "name version", or "an unknown distribution"
    api_versions: tuple[int, ...]  # what its factory's `api_version` may be; empty: any, or none

    def __str__(self) -> str:
        return f"entry point {self.entry_point!r} (group {self.group!r}) of distribution {self.distribution}"


@dataclass(frozen=True)
class _Pending:
    """A part registered by where its factory lives, not imported yet."""

    module: str
    attribute: str
    params: type[pydantic.BaseModel] | None  # None: the factory's own `Params` (a plugin's), known once imported
    summary: str
    plugin: _Plugin | None = None


def _distribution(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "an unknown distribution"
    return f"{dist.name} {dist.version}"


def _first_line(factory: object) -> str:
    return (getattr(factory, "__doc__", None) or "").strip().split("\n")[0]


class Registry(Generic[T]):
    """Named factories of one kind of part, each with its parameter model."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._pending: dict[str, _Pending] = {}
        self._plugins: dict[str, _Plugin] = {}  # the parts registered from entry points
        self._groups: list[str] = []  # the entry-point groups they come from
        self._refused: dict[str, str] = {}  # name -> why an entry point of that name cannot be used

    def _claim(self, name: str) -> None:
        if name in self._entries or name in self._pending:
            raise ValueError(f"{self.kind} {name!r} is registered twice")

    def register(
        self, name: str, *, params: type[pydantic.BaseModel] = NoParams, summary: str = ""
    ) -> Callable[[T], T]:
        def add(factory: T) -> T:
            self._claim(name)
            self._entries[name] = Entry(name, factory, params, summary or _first_line(factory))
            return factory

        return add

    def register_lazy(
        self, name: str, target: str, *, params: type[pydantic.BaseModel] = NoParams, summary: str = ""
    ) -> None:
        """Registers the factory at `target` ("package.module:attribute"), imported on the first entry()
        or create() of `name`; names() and params() never import it. The summary defaults to the first
        line of the factory's docstring, once imported."""
        module, _, attribute = target.partition(":")
        if not module or not attribute:
            raise ValueError(f"{self.kind} {name!r}: target must be 'package.module:attribute', got {target!r}")
        self._claim(name)
        self._pending[name] = _Pending(module, attribute, params, summary)

    def register_entry_points(self, group: str, *, api_versions: Collection[int] = ()) -> list[str]:
        """Registers every entry point of `group` that the installed distributions declare (name: the part's
        name; value: "package.module:Class"), lazily: nothing is imported here, and names() lists them at
        once. A factory's parameters are its `Params` attribute (a pydantic model; none: NoParams), known
        when it is first used. With `api_versions`, the factory must say which version of the interface it
        implements (`api_version`), one of them. Returns the names it registered (and did not refuse).

        An entry point whose name is taken already (by a part of Dayu's own, or of another distribution),
        or that is no part's name, or whose value is no class, is refused: using that name is an
        InvalidArgument that names the entry point and its distribution (and the other claimant), while the
        other parts work on. The same entry point seen twice (a distribution on sys.path twice) counts once."""
        registered, versions = [], tuple(sorted(api_versions))
        self._groups.append(group)
        for entry_point in importlib.metadata.entry_points(group=group):
            plugin = _Plugin(group, f"{entry_point.name} = {entry_point.value}", _distribution(entry_point), versions)
            name, (module, _, attribute) = entry_point.name, entry_point.value.partition(":")
            known = self._plugins.get(name)
            if known == plugin:
                continue
            if name in self._entries or name in self._pending:
                taken = f"the {known}" if known else f"the {self.kind} of that name built into Dayu"
                self._refused[name] = (
                    f"{self.kind} {name!r} of {plugin} clashes with {taken}: rename the entry point in its "
                    "package's pyproject.toml, or uninstall one of them"
                )
            elif not PLUGIN_NAME.fullmatch(name):
                self._refused[name] = (
                    f"{self.kind} {name!r} of {plugin}: its name must be lowercase letters, digits and '_', "
                    "starting with a letter, at most 32 characters"
                )
            elif not module.strip() or not attribute.strip() or entry_point.extras:
                self._refused[name] = f"{self.kind} {name!r} of {plugin}: its value must be 'package.module:Class'"
            else:
                self._pending[name] = _Pending(module.strip(), attribute.strip(), None, "", plugin)
                self._plugins[name] = plugin
                registered.append(name)
        return [name for name in registered if name not in self._refused]

    def plugin_names(self) -> list[str]:
        """The parts that installed distributions registered through entry points."""
        return sorted(self._plugins)

    def names(self) -> list[str]:
        return sorted(self._entries.keys() | self._pending.keys())

    def _unknown(self, name: str, field: str) -> InvalidArgument:
        expected = f"one of the registered {self.kind}s {self.names()}, got {shown(name)}"
        if self._groups:
            groups = " or ".join(repr(group) for group in self._groups)
            expected += (
                f" (a {self.kind} of another package is found by its entry point in the group {groups}: is that "
                "package installed in the Python environment that runs this?)"
            )
        return InvalidArgument(field, expected)

    def entry(self, name: str, field: str = "name") -> Entry[T]:
        if name in self._refused:
            raise InvalidArgument(field, self._refused[name])
        pending = self._pending.get(name)
        if pending is not None:
            self._load(name, pending, field)
        try:
            return self._entries[name]
        except KeyError:
            raise self._unknown(name, field) from None

    def _load(self, name: str, pending: _Pending, field: str) -> None:
        if pending.plugin is None:
            factory = getattr(importlib.import_module(pending.module), pending.attribute)
            params = pending.params or NoParams
        else:
            factory, params = self._load_plugin(name, pending.module, pending.attribute, pending.plugin, field)
        # Entered before it leaves _pending, so a lookup meanwhile finds it in one or the other; another
        # thread loading it at the same time finds the same factory.
        self._entries.setdefault(name, Entry(name, factory, params, pending.summary or _first_line(factory)))
        self._pending.pop(name, None)

    def _load_plugin(
        self, name: str, module: str, attribute: str, plugin: _Plugin, field: str
    ) -> tuple[Any, type[pydantic.BaseModel]]:
        """A plugin's factory and parameter model, or an InvalidArgument on `field` that names the entry
        point, its distribution and what is wrong with it."""

        def refuse(problem: str) -> InvalidArgument:
            return InvalidArgument(field, f"{self.kind} {name!r} of {plugin} {problem}")

        try:
            factory: Any = importlib.import_module(module)
            for part in attribute.split("."):
                factory = getattr(factory, part)
        except Exception as error:  # anything its module raises: the plugin is broken, not Dayu
            raise refuse(f"does not load: {type(error).__name__}: {cut(str(error), 512)}") from error
        if plugin.api_versions:
            supported = ", ".join(str(version) for version in plugin.api_versions)
            version = getattr(factory, "api_version", None)
            if version is None:
                raise refuse(
                    f"says no api_version: set `api_version = {plugin.api_versions[-1]}` on {attribute} "
                    f"(the versions of the interface this Dayu supports: {supported})"
                )
            if isinstance(version, bool) or version not in plugin.api_versions:
                raise refuse(
                    f"implements api_version {shown(version)}, which this Dayu does not support (it supports "
                    f"{supported}): install a version of the plugin for one of them, or a Dayu that supports it"
                )
        params = getattr(factory, "Params", NoParams)
        if not (isinstance(params, type) and issubclass(params, pydantic.BaseModel)):
            raise refuse(f"has a Params that is not a pydantic model: {shown(params)}")
        return factory, params

    def params(self, name: str, values: Mapping[str, Any] | None, field: str = "params") -> pydantic.BaseModel:
        """Validates `values` against the parameter model of `name` (without importing a lazy part of
        Dayu's own; a plugin's class is imported, as it holds its model)."""
        model = self._params_model(name, field)
        try:
            return model.model_validate(dict(values or {}))
        except pydantic.ValidationError as error:
            problem = from_validation_error(error, field)
            # The path may hold the caller's keys (policy parameters are the caller's YAML): cut, as values are.
            raise InvalidArgument(
                cut(problem.field, 128), f"{cut(problem.expected, 512)} ({self.kind} {shown(name)})"
            ) from None

    def params_model(self, name: str, field: str = "name") -> type[pydantic.BaseModel]:
        """The parameter model of `name` (a lazy built-in part is not imported; a plugin is)."""
        return self._params_model(name, field)

    def _params_model(self, name: str, field: str) -> type[pydantic.BaseModel]:
        if name in self._refused:
            raise InvalidArgument(field, self._refused[name])
        # _pending first: a part being loaded is entered in _entries before it leaves _pending.
        found = self._pending.get(name) or self._entries.get(name)
        if found is None:
            raise self._unknown(name, "name")
        if found.params is None:  # a plugin's: its class says them, so it is imported now
            return self.entry(name, field).params
        return found.params

    def create(
        self,
        name: str,
        values: Mapping[str, Any] | None = None,
        *,
        name_field: str = "name",
        params_field: str = "params",
        **context: Any,
    ) -> Any:
        """Builds the part: factory(validated params, **context). Errors name the given fields."""
        factory: Callable[..., Any] = self.entry(name, name_field).factory  # type: ignore[assignment]
        return factory(self.params(name, values, params_field), **context)
