"""One frame clock for the whole process.

Every room that has something to say subscribes; the clock asks each subscribed room for
its frame once per 20 ms slot. Slots are numbered from a fixed epoch, so a room that was
idle resumes on the same grid and RTP timestamps follow wall time. With no subscriber the
clock stops scheduling itself: an idle process does no per-frame work.

Rooms are spread over `phases` evenly spaced offsets inside the 20 ms slot (8 phases: a
wake-up every 2.5 ms, each serving an eighth of the rooms), so the work of one tick stays
short (about 1 ms with 150 rooms speaking) and every room's frame leaves close to its own
deadline; other work on the loop never waits behind more than one short tick either.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from . import metrics
from .audio import FRAME_MS
from .gc_tuning import SlackCollector
from .sched import LoopSlice

log = logging.getLogger(__name__)

LATE_S = 0.005  # a frame sent more than this after its slot (plus phase) counts as late


class ClockedRoom(Protocol):
    phase: int

    def on_tick(self, slot: int) -> bool:
        """Send the frame of `slot`; True if one was sent."""


class FrameClock:
    def __init__(self, frame_ms: int = FRAME_MS, phases: int = 8):
        assert phases >= 1 and (frame_ms * 1000) % phases == 0, "phases must divide the frame evenly (in µs)"
        self.frame_s = frame_ms / 1000
        self.phases = phases
        self.phase_s = self.frame_s / phases
        self._rooms: list[dict[ClockedRoom, None]] = [{} for _ in range(phases)]  # insertion-ordered sets
        self._order: list[tuple[ClockedRoom, ...] | None] = [None] * phases  # each phase's rooms, as ticked
        # A timer callback per tick, not a task sleeping in a loop: no coroutine, future or
        # sleep per tick (and far fewer young objects for the collector)
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._collector = SlackCollector()  # entered while the clock runs
        self._collecting = False
        self._slice = LoopSlice()  # the loop thread's scheduler slice (agent/sched.py)
        self._epoch: float | None = None
        self._tick = 0
        self.ticks = 0
        self.frames_late = 0

    def _loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def _ensure_epoch(self) -> float:
        if self._epoch is None:
            self._epoch = self._loop_time()
        return self._epoch

    def slot_now(self, phase: int = 0) -> int:
        """The slot whose 20 ms window (shifted by the phase) contains now."""
        epoch = self._ensure_epoch()
        return int((self._loop_time() - epoch - phase * self.phase_s) // self.frame_s)

    def slot_time(self, slot: int, phase: int = 0) -> float:
        return self._ensure_epoch() + slot * self.frame_s + phase * self.phase_s

    def subscribe(self, room: ClockedRoom) -> None:
        """Put the room on the least busy phase and make sure the clock runs."""
        phase = min(range(self.phases), key=lambda p: len(self._rooms[p]))
        room.phase = phase
        self._rooms[phase][room] = None
        self._order[phase] = None
        if not self.running:
            self._start()

    def unsubscribe(self, room: ClockedRoom) -> None:
        rooms = self._rooms[room.phase]
        if room in rooms:
            del rooms[room]
            self._order[room.phase] = None

    @property
    def running(self) -> bool:
        return self._handle is not None and not self._handle.cancelled()

    @property
    def subscribers(self) -> int:
        return sum(len(r) for r in self._rooms)

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._slice.start()  # this is the loop's thread: its wake-ups must not queue behind others' slices
        if not self._collecting:
            self._collector.__enter__()
            self._collecting = True
        # tick index i: slot i // phases, phase i % phases
        self._tick = int((loop.time() - self._ensure_epoch()) // self.phase_s)
        self._schedule()

    def _schedule(self) -> None:
        self._tick += 1
        deadline = self._epoch + self._tick * self.phase_s  # type: ignore[operator]
        self._handle = self._loop.call_at(deadline, self._on_tick, deadline)  # type: ignore[union-attr]

    def _stop(self) -> None:
        self._handle = None
        if self._collecting:
            self._collector.__exit__(None, None, None)
            self._collecting = False

    def _on_tick(self, deadline: float) -> None:
        if not self.subscribers:
            self._stop()  # nothing to say anywhere: no more wake-ups until a room subscribes
            return
        now = self._loop.time  # type: ignore[union-attr]
        start = now()
        burst = self._slice.tick_started()
        if start - deadline > self.frame_s:
            # the loop was blocked: skip the missed ticks rather than burst through them
            self._tick = int((start - self._epoch) // self.phase_s)  # type: ignore[operator]
            self._schedule()
            return
        slot, phase = divmod(self._tick, self.phases)
        self._schedule()  # first: a failing room cannot stop the clock
        rooms = self._order[phase]
        if rooms is None:
            rooms = self._order[phase] = tuple(self._rooms[phase])
        if not rooms:
            return
        self.ticks += 1
        late_after = deadline + LATE_S
        late = sent = 0
        for room in rooms:
            try:
                sent += room.on_tick(slot)
            except Exception:
                log.exception("room tick failed")
                self.unsubscribe(room)
            if now() > late_after:  # each room's frame is judged when it has been sent
                late += 1
        end = now()
        metrics.FRAMES_SENT.inc(sent)  # once per tick, not per frame
        metrics.TICK_LAG.observe(start - deadline)
        metrics.TICK_WORK.observe(end - start)
        if late:
            self.frames_late += late
            metrics.FRAMES_LATE.inc(late)
        self._collector.after_tick()
        self._slice.tick_ended(burst)

    async def stop(self) -> None:
        for rooms in self._rooms:
            rooms.clear()
        self._order = [None] * self.phases
        if self._handle is not None:
            self._handle.cancel()
        self._stop()
