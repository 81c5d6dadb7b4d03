"""Errors raised by the cores, each naming the gRPC status it maps to.

Cores know nothing of gRPC: they raise these, and the server adapter turns `status` into the
matching `grpc.StatusCode` and `str(error)` into the status details.
"""

from __future__ import annotations

import pydantic

SHOWN_CHARS = 64  # at most this much of a caller's value goes back in an error message


def cut(text: str, limit: int = SHOWN_CHARS) -> str:
    """The text, or its first `limit` characters and how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def shown(value: object) -> str:
    """A value as an error message shows it: its repr, cut to SHOWN_CHARS (a caller's 1 MiB id must not
    come back in the status, past the client's metadata limit)."""
    return cut(repr(value))


class RemoteError(Exception):
    """A call to another component failed. `code` names its status (UNAVAILABLE, NOT_FOUND, ...), so
    that a core judges failures without knowing the transport (the adapters translate gRPC's)."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code, self.details = code, details


class DayuError(Exception):
    """Base of the errors a core reports to its caller."""

    status = "INTERNAL"


class InvalidArgument(DayuError):
    """A request field is wrong; the message names the field and what was expected."""

    status = "INVALID_ARGUMENT"

    def __init__(self, field: str, expected: str) -> None:
        super().__init__(f"{field}: {expected}")
        self.field = field
        self.expected = expected


class NotFound(DayuError):
    status = "NOT_FOUND"


class AlreadyExists(DayuError):
    status = "ALREADY_EXISTS"


class FailedPrecondition(DayuError):
    status = "FAILED_PRECONDITION"


class Unauthenticated(DayuError):
    """The call carries no valid bearer token (dayu.runtime.auth)."""

    status = "UNAUTHENTICATED"


class PermissionDenied(DayuError):
    """The caller's certificate does not allow the call (dayu.runtime.tls): the message names the
    field, what it claims and who the certificate says the caller is."""

    status = "PERMISSION_DENIED"


class ResourceExhausted(DayuError):
    status = "RESOURCE_EXHAUSTED"


class Unavailable(DayuError):
    status = "UNAVAILABLE"


class Unimplemented(DayuError):
    status = "UNIMPLEMENTED"


def from_validation_error(error: pydantic.ValidationError, prefix: str = "") -> InvalidArgument:
    """The first problem pydantic found, as an InvalidArgument naming the dotted field path."""
    first = error.errors()[0]
    path = ".".join(str(part) for part in first["loc"])
    field = ".".join(part for part in (prefix, path) if part) or "request"
    # A validator's own message reads better without pydantic's "Value error, " before it.
    return InvalidArgument(field, first["msg"].removeprefix("Value error, "))
