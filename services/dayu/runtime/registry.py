"""The one registry for pluggable parts: a name plus typed parameters selects an implementation.

Components, policies, frame filters, encoders, sources and processors all plug in the same way:

    PROCESSORS = Registry[ProcessorFactory]("processor")

    @PROCESSORS.register("noop", params=NoopParams)
    def make_noop(params: NoopParams) -> Processor: ...

    processor = PROCESSORS.create("noop", {"delay_s": 0.1})

A part whose module is costly to import (models, codecs) registers by where it lives instead, so its
module loads only when the part is used; its name and parameters are known without it:

    PROCESSORS.register_lazy("text_detector", "dayu.processor.models:TextDetectorRunner", params=TextDetectorParams)

Parameters are validated by their pydantic model, so a typo in YAML is an error that names the
field, never a silent default. No eval, no environment mini-languages.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pydantic

from dayu.runtime.errors import InvalidArgument, cut, from_validation_error, shown

T = TypeVar("T")


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
class _Pending:
    """A part registered by where its factory lives, not imported yet."""

    module: str
    attribute: str
    params: type[pydantic.BaseModel]
    summary: str


def _first_line(factory: object) -> str:
    return (getattr(factory, "__doc__", None) or "").strip().split("\n")[0]


class Registry(Generic[T]):
    """Named factories of one kind of part, each with its parameter model."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._pending: dict[str, _Pending] = {}

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

    def names(self) -> list[str]:
        return sorted(self._entries.keys() | self._pending.keys())

    def _unknown(self, name: str, field: str) -> InvalidArgument:
        return InvalidArgument(field, f"one of the registered {self.kind}s {self.names()}, got {shown(name)}")

    def entry(self, name: str, field: str = "name") -> Entry[T]:
        pending = self._pending.get(name)
        if pending is not None:
            self._load(name, pending)
        try:
            return self._entries[name]
        except KeyError:
            raise self._unknown(name, field) from None

    def _load(self, name: str, pending: _Pending) -> None:
        factory = getattr(importlib.import_module(pending.module), pending.attribute)
        # Entered before it leaves _pending, so a lookup meanwhile finds it in one or the other; another
        # thread loading it at the same time finds the same factory.
        self._entries.setdefault(name, Entry(name, factory, pending.params, pending.summary or _first_line(factory)))
        self._pending.pop(name, None)

    def params(self, name: str, values: Mapping[str, Any] | None, field: str = "params") -> pydantic.BaseModel:
        """Validates `values` against the parameter model of `name` (without importing a lazy part)."""
        model = self._params_model(name)
        try:
            return model.model_validate(dict(values or {}))
        except pydantic.ValidationError as error:
            problem = from_validation_error(error, field)
            # The path may hold the caller's keys (policy parameters are the caller's YAML): cut, as values are.
            raise InvalidArgument(
                cut(problem.field, 128), f"{cut(problem.expected, 512)} ({self.kind} {shown(name)})"
            ) from None

    def _params_model(self, name: str) -> type[pydantic.BaseModel]:
        # _pending first: a part being loaded is entered in _entries before it leaves _pending.
        found = self._pending.get(name) or self._entries.get(name)
        if found is None:
            raise self._unknown(name, "name")
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
