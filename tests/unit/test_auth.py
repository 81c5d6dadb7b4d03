"""Bearer tokens (dayu.runtime.auth): roles, files, the environment, and refusals that say why."""

from __future__ import annotations

from pathlib import Path

import pytest

from dayu.runtime.auth import AuthSettings, Role, Tokens, guard, new_tokens_file, read_tokens_file
from dayu.runtime.errors import InvalidArgument, PermissionDenied, Unauthenticated

ADMIN, READ = "a" * 24, "r" * 24


def test_a_token_has_its_role_and_nothing_else_has_one() -> None:
    tokens = Tokens([ADMIN], [READ])
    assert tokens.role(f"Bearer {ADMIN}") is Role.ADMIN
    assert tokens.role(f"bearer {READ}") is Role.READ
    for wrong in (None, "", ADMIN, f"Basic {ADMIN}", f"Bearer {ADMIN}x", f"Bearer {ADMIN[:-1]}", "Bearer "):
        assert tokens.role(wrong) is None, wrong


def test_require_refuses_with_the_status_that_fits() -> None:
    tokens = Tokens([ADMIN], [READ])
    assert tokens.require(f"Bearer {ADMIN}", Role.ADMIN, "Put") is Role.ADMIN
    assert tokens.require(f"Bearer {READ}", Role.READ, "List") is Role.READ
    with pytest.raises(PermissionDenied, match="read-only"):
        tokens.require(f"Bearer {READ}", Role.ADMIN, "Put")
    with pytest.raises(Unauthenticated, match="needs a bearer token"):
        tokens.require(None, Role.READ, "List")
    with pytest.raises(Unauthenticated, match="valid token"):
        tokens.require("Bearer nope-nope-nope-nope", Role.READ, "List")
    with pytest.raises(Unauthenticated, match="no tokens are configured"):
        Tokens().require(f"Bearer {ADMIN}", Role.READ, "List")


def test_guard_needs_admin_for_methods_it_does_not_name_and_nothing_for_open_ones() -> None:
    check = guard(Tokens([ADMIN], [READ]), {"s.List": Role.READ, "s.Open": None})
    check("s.List", f"Bearer {READ}")
    check("s.Open", None)
    with pytest.raises(PermissionDenied):
        check("s.Unnamed", f"Bearer {READ}")


def test_tokens_come_from_the_file_and_the_environment(tmp_path: Path) -> None:
    made = new_tokens_file(tmp_path / "tokens.yaml")
    assert (tmp_path / "tokens.yaml").stat().st_mode & 0o777 == 0o600
    assert new_tokens_file(tmp_path / "tokens.yaml") == made  # kept, not made again
    tokens = Tokens.load(AuthSettings(tokens_file=tmp_path / "tokens.yaml"), {"DAYU_READ_TOKEN": READ})
    assert tokens.role(f"Bearer {made.admin[0]}") is Role.ADMIN
    assert tokens.role(f"Bearer {READ}") is Role.READ
    assert tokens.admin_token() == made.admin[0]
    with pytest.raises(InvalidArgument, match="at least 16"):
        Tokens.load(AuthSettings(), {"DAYU_ADMIN_TOKEN": "short"})


def test_a_bad_tokens_file_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text("admin: [short]\n")
    with pytest.raises(InvalidArgument, match=r"auth\.tokens_file"):
        read_tokens_file(path)
    path.write_text("admins: []\n")
    with pytest.raises(InvalidArgument, match=r"auth\.tokens_file"):
        read_tokens_file(path)
