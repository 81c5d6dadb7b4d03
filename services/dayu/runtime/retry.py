"""Trying a call again while its failure is transient, for as long as what it carries can wait: the
one rule generators and controllers follow toward a peer that is restarting, overloaded or cut off."""

from __future__ import annotations

import asyncio
import time

# gRPC statuses worth waiting out: the other end is restarting, overloaded, slow or unreachable.
TRANSIENT = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})
RETRY_S = (0.25, 2.0)  # first and longest wait between two tries


class Backoff:
    """Waits between tries, doubling from RETRY_S[0] to RETRY_S[1], for up to `patience_s` in all."""

    def __init__(self, patience_s: float) -> None:
        self.patience_s = patience_s
        self.give_up_at = time.monotonic() + patience_s
        self.wait, self.longest = RETRY_S

    def exhausted(self) -> bool:
        """Whether another wait would go past the patience."""
        return time.monotonic() + self.wait > self.give_up_at

    async def sleep(self) -> None:
        await asyncio.sleep(self.wait)
        self.wait = min(self.wait * 2, self.longest)
