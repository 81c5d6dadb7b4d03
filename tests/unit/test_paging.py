"""Pages of list replies (dayu.runtime.paging): every item once, in key order, tokens opaque, sizes
bounded, a token that is not ours refused."""

from __future__ import annotations

import pytest

from dayu.runtime.errors import InvalidArgument
from dayu.runtime.paging import MAX_PAGE_SIZE, page


def test_pages_go_on_where_the_last_ended_even_when_items_come_and_go() -> None:
    items = [f"s{i:03}" for i in range(250)]
    first, token = page(items, str, 0, "")
    assert first == items[:100] and token and "s099" not in token  # opaque
    second, token = page(items, str, 100, token)
    assert second == items[100:200]
    items.remove("s150")  # gone before the next call: the next page still starts after s199
    third, last = page(items, str, 100, token)
    assert third == items[199:] and last == ""
    assert page([], str, 10, "") == ([], "")


def test_sizes_and_tokens_are_checked() -> None:
    with pytest.raises(InvalidArgument, match="page_size"):
        page(["a"], str, MAX_PAGE_SIZE + 1, "")
    with pytest.raises(InvalidArgument, match="page_token"):
        page(["a"], str, 1, "\udcff")
