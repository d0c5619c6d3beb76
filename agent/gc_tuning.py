"""Keeping CPython's garbage collector from stopping the frame clock.

A collection stops the event loop for as long as it runs, which grows with the number of
young objects: with 150 rooms speaking, automatic gen-0 passes at a threshold of 20 000 took
about 22 ms each, a burst of late frames every few seconds. So:

- at start, everything alive (engines, app, models) is frozen out of all future passes;
- while the frame clock runs, automatic collection is off and the clock collects young
  objects itself right after a tick, whenever more than `YOUNG_LIMIT` have piled up: a
  small pass that fits in the slack before the next tick. Gen 1 is taken every few passes,
  while it is small, and a full pass happens on CPython's own rule (gen 2 grew by a quarter),
  with allocated memory blocks standing in for gen 2's size;
- with the clock stopped (nothing to say), the collector runs automatically as usual.

Pauses, not total time, are what count: a pass longer than the slack between ticks makes
that tick's frames late, and the few after it while the clock catches up. Total collector
time barely depends on the limits (each young object is visited about once in gen 0
whatever the cadence), so the passes are kept small and frequent.
"""

from __future__ import annotations

import gc
import sys
import time

from . import metrics

GEN0_THRESHOLD = 20_000  # automatic passes while no clock runs: rare, nothing is timed then
# The count CPython keeps is allocations minus deallocations: at 150 rooms a count of 1000
# meant ~4000 live young objects (coroutines, futures, chunks) and gen-0 passes of 1.7-2 ms,
# gen-1 passes of 4.6-5.5 ms. At 200: gen 0 0.2-0.3 ms, gen 1 0.75-1.2 ms (p50), same total.
YOUNG_LIMIT = 200
MIDDLE_EVERY = 4  # every 4th of those passes takes gen 1 too
OLD_EVERY = 20  # every 20th gen-1 pass considers a full one


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, 20, 100)
    if _time_pass not in gc.callbacks:
        gc.callbacks.append(_time_pass)


class SlackCollector:
    """Collection on the clock's schedule instead of the allocator's (see the module doc)."""

    def __init__(self, young_limit: int = YOUNG_LIMIT, middle_every: int = MIDDLE_EVERY,
                 old_every: int = OLD_EVERY):
        self.young_limit = young_limit
        self.middle_every = middle_every
        self.old_every = old_every
        self._young_passes = 0
        self._middle_passes = 0
        # memory blocks in use after the last full pass; measured when first needed
        self._old_size: int | None = None
        self._was_enabled = False

    def __enter__(self) -> "SlackCollector":
        self._was_enabled = gc.isenabled()
        gc.disable()
        return self

    def __exit__(self, *exc) -> None:
        if self._was_enabled:
            gc.enable()

    def after_tick(self) -> None:
        if gc.get_count()[0] <= self.young_limit:
            return
        self._young_passes += 1
        if self._young_passes < self.middle_every:
            gc.collect(0)
            return
        # Gen 1 often, while it is small: survivors reach gen 2 before they pile up into a
        # pass of tens of ms (measured after 150 peers joined: 83 000 objects, 60-70 ms).
        self._young_passes = 0
        self._middle_passes += 1
        if self._middle_passes >= self.old_every:
            self._middle_passes = 0
            # CPython's own rule for full passes: only once gen 2 has grown by a quarter. Its
            # size by pymalloc's block count (~50 µs): listing gen 2 took 7.6 ms at 300 000
            # objects, itself a pause that made frames late
            size = sys.getallocatedblocks()
            if self._old_size is None:
                self._old_size = size
            elif size > self._old_size * 1.25:
                gc.collect(2)
                self._old_size = sys.getallocatedblocks()
                return
        gc.collect(1)


_started = 0.0


def _time_pass(phase: str, info: dict) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
    else:
        metrics.GC_PAUSE.labels(str(info["generation"])).observe(time.perf_counter() - _started)
