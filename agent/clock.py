"""One frame clock for the whole process.

Every room that has something to say subscribes; the clock asks each subscribed room for
its frame once per 20 ms slot. Slots are numbered from a fixed epoch, so a room that was
idle resumes on the same grid and RTP timestamps follow wall time. With no subscriber the
clock task ends: an idle process does no per-frame work.

Rooms are spread over `phases` evenly spaced offsets inside the 20 ms slot (4 phases: a
wake-up every 5 ms, each serving a quarter of the rooms), so the work of one tick stays
short and every room's frame leaves close to its own deadline even with hundreds of rooms.
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
    phase: int

    def on_tick(self, slot: int) -> None: ...


class FrameClock:
    def __init__(self, frame_ms: int = FRAME_MS, phases: int = 4):
        assert phases >= 1 and (frame_ms * 1000) % phases == 0, "phases must divide the frame evenly (in µs)"
        self.frame_s = frame_ms / 1000
        self.phases = phases
        self.phase_s = self.frame_s / phases
        self._rooms: list[dict[ClockedRoom, None]] = [{} for _ in range(phases)]  # insertion-ordered sets
        self._task: asyncio.Task | None = None
        self._epoch: float | None = None
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
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="frame-clock")

    def unsubscribe(self, room: ClockedRoom) -> None:
        self._rooms[room.phase].pop(room, None)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def subscribers(self) -> int:
        return sum(len(r) for r in self._rooms)

    async def _run(self) -> None:
        # tick index i: slot i // phases, phase i % phases
        tick = int((self._loop_time() - self._ensure_epoch()) // self.phase_s)
        while self.subscribers:
            tick += 1
            deadline = self._epoch + tick * self.phase_s  # type: ignore[operator]
            delay = deadline - self._loop_time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -self.frame_s:
                # the loop was blocked: skip the missed ticks rather than burst through them
                tick = int((self._loop_time() - self._epoch) // self.phase_s)  # type: ignore[operator]
                continue
            slot, phase = divmod(tick, self.phases)
            rooms = self._rooms[phase]
            if not rooms:
                continue
            self.ticks += 1
            for room in list(rooms):
                try:
                    room.on_tick(slot)
                except Exception:
                    log.exception("room tick failed")
                    rooms.pop(room, None)
            if self._loop_time() - deadline > LATE_S:
                # this tick finished late: count every frame it sent as late
                self.frames_late += len(rooms)
                metrics.FRAMES_LATE.inc(len(rooms))

    async def stop(self) -> None:
        for rooms in self._rooms:
            rooms.clear()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
