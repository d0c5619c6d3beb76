"""Keeping CPython's garbage collector from stopping the frame clock.

A collection stops the event loop for as long as it runs, which grows with the number of
young objects: with 150 rooms speaking, automatic gen-0 passes at a threshold of 20 000 took
about 22 ms each, a burst of late frames every few seconds. So:

- at start, everything alive (engines, app, models) is frozen out of all future passes;
- while the frame clock runs, automatic collection is off and the clock collects young
  objects itself right after a tick, whenever more than `YOUNG_LIMIT` have piled up: a
  small pass that fits in the slack before the next tick. The older generations follow on
  the collector's own thresholds, from the same place;
- with the clock stopped (nothing to say), the collector runs automatically as usual.
"""

from __future__ import annotations

import gc
import time

from . import metrics

GEN0_THRESHOLD = 20_000  # automatic passes while no clock runs: rare, nothing is timed then
YOUNG_LIMIT = 1_000  # young objects collected after a tick: about a millisecond


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, 20, 100)
    if _time_pass not in gc.callbacks:
        gc.callbacks.append(_time_pass)


class SlackCollector:
    """Collection on the clock's schedule instead of the allocator's (see the module doc)."""

    def __init__(self, young_limit: int = YOUNG_LIMIT):
        self.young_limit = young_limit
        self._was_enabled = False

    def __enter__(self) -> "SlackCollector":
        self._was_enabled = gc.isenabled()
        gc.disable()
        return self

    def __exit__(self, *exc) -> None:
        if self._was_enabled:
            gc.enable()

    def after_tick(self) -> None:
        young, middle, old = gc.get_count()
        if young <= self.young_limit:
            return
        _, middle_limit, old_limit = gc.get_threshold()
        generation = 0
        if middle >= middle_limit:
            generation = 2 if old >= old_limit else 1
        gc.collect(generation)


_started = 0.0


def _time_pass(phase: str, info: dict) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
    else:
        metrics.GC_PAUSE.labels(str(info["generation"])).observe(time.perf_counter() - _started)
