"""Pages of list replies: `page_size` items after the one a `page_token` names, and the token of the next
page. Items are listed in the order of their keys (names, ids); a token is the last key of its page,
encoded so that callers treat it as opaque, so a page goes on where the last one ended even when items
come and go meanwhile (none is returned twice; one added before the token's key is not seen)."""

from __future__ import annotations

import base64
import binascii
import bisect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from dayu.runtime.errors import InvalidArgument

T = TypeVar("T")
Q = TypeVar("Q")
R = TypeVar("R")
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def _encode(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def _decode(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError):
        raise InvalidArgument("page_token", "the next_page_token of an earlier reply of this call") from None


def page_size(requested: int) -> int:
    if requested > MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"at most {MAX_PAGE_SIZE}, got {requested}")
    return requested or DEFAULT_PAGE_SIZE


def page(items: Sequence[T], key: Callable[[T], str], requested_size: int, token: str) -> tuple[list[T], str]:
    """The page of `items` (which must be sorted by `key`) that the request asks for, and the next page's
    token ("" at the end)."""
    size = page_size(requested_size)
    keys = [key(item) for item in items]
    start = bisect.bisect_right(keys, _decode(token)) if token else 0
    chosen = list(items[start : start + size])
    more = start + size < len(items)
    return chosen, _encode(keys[start + size - 1]) if more and chosen else ""


def next_token(last_key: str) -> str:
    """The token of the page after the item of `last_key` (for pages cut short by another limit)."""
    return _encode(last_key)


async def every_page(
    call: Callable[..., Awaitable[R]], request: Q, field: str, timeout_s: float
) -> tuple[list[Any], R]:
    """Calls a listing RPC page after page (following next_page_token) and returns every item of
    `field`, with the last reply (for the reply's other fields)."""
    items: list[Any] = []
    while True:
        reply = await call(request, timeout=timeout_s)
        items.extend(getattr(reply, field))
        token = reply.next_page_token
        if not token:
            return items, reply
        request.page_token = token  # type: ignore[attr-defined]
