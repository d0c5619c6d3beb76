"""One frame clock for the whole process.

Every room that has something to say subscribes; the clock wakes once per 20 ms slot and
asks each subscribed room for its frame. Slots are numbered from a fixed epoch, so a room
that was idle resumes on the same grid, and RTP timestamps follow wall time. With no
subscriber the clock task ends: an idle process does no per-frame work.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from . import metrics
from .audio import FRAME_MS

log = logging.getLogger(__name__)

LATE_S = 0.005  # a frame sent more than this after its slot counts as late


class ClockedRoom(Protocol):
    def on_tick(self, slot: int) -> None: ...


class FrameClock:
    def __init__(self, frame_ms: int = FRAME_MS):
        self.frame_s = frame_ms / 1000
        self._rooms: dict[ClockedRoom, None] = {}  # insertion-ordered set
        self._task: asyncio.Task | None = None
        self._epoch: float | None = None
        self.ticks = 0
        self.late_ticks = 0
        self.frames_late = 0

    def _loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def slot_now(self) -> int:
        """The slot whose 20 ms window contains now."""
        now = self._loop_time()
        if self._epoch is None:
            self._epoch = now
        return int((now - self._epoch) / self.frame_s)

    def slot_time(self, slot: int) -> float:
        assert self._epoch is not None
        return self._epoch + slot * self.frame_s

    def subscribe(self, room: ClockedRoom) -> None:
        self._rooms[room] = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="frame-clock")

    def unsubscribe(self, room: ClockedRoom) -> None:
        self._rooms.pop(room, None)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def subscribers(self) -> int:
        return len(self._rooms)

    async def _run(self) -> None:
        slot = self.slot_now()
        while self._rooms:
            slot += 1
            delay = self.slot_time(slot) - self._loop_time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -self.frame_s:
                slot = self.slot_now()  # the loop was blocked: skip missed slots, do not burst
            self.ticks += 1
            for room in list(self._rooms):
                try:
                    room.on_tick(slot)
                except Exception:
                    log.exception("room tick failed")
                    self._rooms.pop(room, None)
            if self._loop_time() - self.slot_time(slot) > LATE_S:
                # the whole tick finished late: count every frame it sent as late
                self.late_ticks += 1
                self.frames_late += len(self._rooms)
                metrics.FRAMES_LATE.inc(len(self._rooms))

    async def stop(self) -> None:
        self._rooms.clear()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
