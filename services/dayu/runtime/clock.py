"""Timestamps in the contracts' form."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(seconds: float | None = None) -> Timestamp:
    """A protobuf Timestamp for `seconds` since the epoch (now when omitted)."""
    stamp = Timestamp()
    stamp.FromNanoseconds(int((time.time() if seconds is None else seconds) * 1e9))
    return stamp
