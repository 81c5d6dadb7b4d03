"""Bearer tokens of the operator API: who may read and who may change.

The backend's calls and the scheduler's SetPolicy take `authorization: Bearer TOKEN` (gRPC metadata,
or the HTTP header of the console's Connect API). A token is read-only or admin: a read-only token
may call what changes nothing, an admin token anything. Tokens come from a YAML file (`admin:` and
`read:` lists) and/or the environment (DAYU_ADMIN_TOKEN, DAYU_READ_TOKEN); a token presented is
compared with every configured one in constant time. With no token configured every guarded call is
refused: the API is never open by omission.
"""

from __future__ import annotations

import enum
import hmac
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pydantic
import yaml

from dayu.runtime.errors import InvalidArgument, PermissionDenied, Unauthenticated

MIN_TOKEN_CHARS = 16  # a guessable token is no token
ENVIRONMENT = {"admin": "DAYU_ADMIN_TOKEN", "read": "DAYU_READ_TOKEN"}


class Role(enum.IntEnum):
    READ = 1
    ADMIN = 2


class AuthSettings(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    tokens_file: Path | None = pydantic.Field(
        None,
        description="YAML file of `admin:` and `read:` lists of bearer tokens (and DAYU_ADMIN_TOKEN, DAYU_READ_TOKEN)",
    )


class TokensFile(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    admin: list[str] = pydantic.Field(default_factory=list)
    read: list[str] = pydantic.Field(default_factory=list)

    @pydantic.field_validator("admin", "read")
    @classmethod
    def _long_enough(cls, tokens: list[str]) -> list[str]:
        for token in tokens:
            if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token:
                raise ValueError(f"tokens of at least {MIN_TOKEN_CHARS} printable characters without spaces")
        return tokens


def new_tokens_file(path: Path) -> TokensFile:
    """Writes a tokens file with one fresh admin and one read-only token (mode 0600), unless one is
    there already; returns what the file holds."""
    if not path.exists():
        made = TokensFile(admin=[secrets.token_urlsafe(24)], read=[secrets.token_urlsafe(24)])
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            yaml.safe_dump(made.model_dump(), out)
    return read_tokens_file(path)


def read_tokens_file(path: Path) -> TokensFile:
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return TokensFile.model_validate(data)
    except (OSError, yaml.YAMLError, pydantic.ValidationError) as error:
        raise InvalidArgument("auth.tokens_file", f"a readable YAML file of admin and read tokens: {error}") from None


class Tokens:
    def __init__(self, admin: Iterable[str] = (), read: Iterable[str] = ()) -> None:
        self._tokens = [(t.encode(), Role.ADMIN) for t in admin] + [(t.encode(), Role.READ) for t in read]

    @classmethod
    def load(cls, settings: AuthSettings, environ: Mapping[str, str] = os.environ) -> Tokens:
        listed = read_tokens_file(settings.tokens_file) if settings.tokens_file else TokensFile()
        from_env = {role: [environ[name]] if environ.get(name) else [] for role, name in ENVIRONMENT.items()}
        try:
            extra = TokensFile.model_validate(from_env)  # the same rules for tokens from the environment
        except pydantic.ValidationError as error:
            names = " or ".join(ENVIRONMENT.values())
            raise InvalidArgument(
                names, f"tokens of at least {MIN_TOKEN_CHARS} printable characters: {error}"
            ) from None
        return cls(listed.admin + extra.admin, listed.read + extra.read)

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def role(self, authorization: str | None) -> Role | None:
        """The role of an `authorization` value (`Bearer TOKEN`), or None. Every configured token is
        compared, in constant time each, whatever matched first."""
        scheme, _, presented = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return None
        given = presented.strip().encode()
        found: Role | None = None
        for token, role in self._tokens:
            if hmac.compare_digest(token, given) and found is None:
                found = role
        return found

    def admin_token(self) -> str | None:
        """A token to call others' admin methods with (the backend calls the scheduler's SetPolicy)."""
        return next((t.decode() for t, role in self._tokens if role is Role.ADMIN), None)

    def require(self, authorization: str | None, needed: Role, what: str) -> Role:
        if not self._tokens:
            raise Unauthenticated(f"{what}: no tokens are configured here (auth.tokens_file or DAYU_ADMIN_TOKEN)")
        role = self.role(authorization)
        if role is None:
            hint = "a valid token" if authorization else "a bearer token (authorization: Bearer TOKEN)"
            raise Unauthenticated(f"{what} needs {hint}")
        if role < needed:
            raise PermissionDenied(f"{what} needs an admin token; this one is read-only")
        return role


Guard = Callable[[str, str | None], None]  # (method's full name, authorization value) -> raises


def guard(tokens: Tokens, roles: Mapping[str, Role | None], default: Role | None = Role.ADMIN) -> Guard:
    """Checks a call's token against the role its method (full name) needs in `roles`, else `default`;
    None: no token needed."""

    def check(method: str, authorization: str | None) -> None:
        needed = roles.get(method, default)
        if needed is not None:
            tokens.require(authorization, needed, method)

    return check
