"""A peer's data-channel message budget: a token bucket, and when to give up on a flooder.

A real client sends a few messages a second, an LLM token stream about a hundred (one
`append` per token). Past the budget a message is dropped before it is parsed, so a flood
costs a dictionary lookup and a few float operations per message, not a JSON parse and an
`error` event each. A second bucket counts drops and drains at the budget's rate: a client
a little over its budget is only rate limited; one sending far past it fills this bucket
and is disconnected.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Callable


class Verdict(Enum):
    accept = "accept"
    drop = "drop"
    drop_and_tell = "drop_and_tell"  # drop, and send the sender one `rate_limited` error
    disconnect = "disconnect"


TELL_EVERY_S = 1.0  # at most one `rate_limited` error a second per peer


class MessageBudget:
    __slots__ = ("rate", "burst", "flood_limit", "_clock", "_tokens", "_flood", "_at", "_told", "dropped")

    def __init__(self, rate: float, burst: float, flood_limit: float, clock: Callable[[], float] = time.monotonic):
        assert rate > 0 and burst >= 1 and flood_limit >= 1
        self.rate = rate
        self.burst = burst
        self.flood_limit = flood_limit
        self._clock = clock
        self._tokens = float(burst)
        self._flood = 0.0  # drops not yet forgiven
        self._at = clock()
        self._told = float("-inf")
        self.dropped = 0

    def take(self) -> Verdict:
        now = self._clock()
        elapsed = now - self._at
        self._at = now
        refill = elapsed * self.rate
        self._tokens = min(self.burst, self._tokens + refill)
        self._flood = max(0.0, self._flood - refill)
        if self._tokens >= 1:
            self._tokens -= 1
            return Verdict.accept
        self.dropped += 1
        self._flood += 1
        if self._flood >= self.flood_limit:
            return Verdict.disconnect
        if now - self._told >= TELL_EVERY_S:
            self._told = now
            return Verdict.drop_and_tell
        return Verdict.drop

    @property
    def full(self) -> bool:
        """Nothing borrowed: forgetting this budget changes nothing for its peer."""
        refill = (self._clock() - self._at) * self.rate
        return self._tokens + refill >= self.burst and self._flood <= refill
