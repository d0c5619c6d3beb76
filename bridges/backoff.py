"""Exponential backoff with jitter, for reconnecting to a chat server or the agent."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial_s: float = 1.0, max_s: float = 60.0, factor: float = 2.0, jitter: float = 0.2):
        assert 0 < initial_s <= max_s and factor >= 1 and 0 <= jitter < 1
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self.jitter = jitter
        self.attempts = 0

    def next_delay(self) -> float:
        """The wait before the next attempt; each call doubles it, up to max_s."""
        base = min(self.max_s, self.initial_s * self.factor ** self.attempts)
        self.attempts += 1
        # jitter spreads the reconnects of many bridges after one server restart
        return base * (1 + random.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        """Connected again: the next failure starts from the initial delay."""
        self.attempts = 0
