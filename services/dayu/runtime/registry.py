"""The one registry for pluggable parts: a name plus typed parameters selects an implementation.

Components, policies, frame filters, encoders, sources and processors all plug in the same way:

    PROCESSORS = Registry[ProcessorFactory]("processor")

    @PROCESSORS.register("noop", params=NoopParams)
    def make_noop(params: NoopParams) -> Processor: ...

    processor = PROCESSORS.create("noop", {"delay_s": 0.1})

Parameters are validated by their pydantic model, so a typo in YAML is an error that names the
field, never a silent default. No eval, no environment mini-languages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pydantic

from dayu.runtime.errors import InvalidArgument, from_validation_error

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


class Registry(Generic[T]):
    """Named factories of one kind of part, each with its parameter model."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, *, params: type[pydantic.BaseModel] = NoParams, summary: str = ""
    ) -> Callable[[T], T]:
        def add(factory: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = summary or (getattr(factory, "__doc__", None) or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, factory, params, doc)
            return factory

        return add

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str, field: str = "name") -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise InvalidArgument(field, f"one of the registered {self.kind}s {self.names()}, got {name!r}") from None

    def params(self, name: str, values: Mapping[str, Any] | None, field: str = "params") -> pydantic.BaseModel:
        """Validates `values` against the parameter model of `name`."""
        model = self.entry(name).params
        try:
            return model.model_validate(dict(values or {}))
        except pydantic.ValidationError as error:
            problem = from_validation_error(error, field)
            raise InvalidArgument(problem.field, f"{problem.expected} ({self.kind} {name!r})") from None

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
