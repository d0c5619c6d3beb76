"""The frame loop's thread asks Linux for a short scheduler slice.

Below saturation, a tick that starts late has almost always waited on the run queue: the
loop's thread, woken for its tick, was runnable while another task on its core finished its
slice (EEVDF's default is ~3 ms, and a running task keeps the core until its slice is used).
Linux 6.12+ lets an ordinary (SCHED_OTHER) thread ask for a shorter slice with
sched_setattr's `sched_runtime`; a task with a shorter slice preempts on wake-up. That is
what a thread that wakes every 2.5 ms for a fraction of a millisecond is. No privilege is
needed, nice and policy are kept, and where the kernel predates custom slices (it ignores
the field) or the call does not exist, nothing changes.

The slice must cover the loop's usual burst (a tick and its GC pass), no more: a task that
runs past its own slice loses its place again, and a longer slice preempts less. On a 2-core
VM shared with other processes (default slice 1.4 ms there), at 25 rooms (~0.3 ms of CPU a
tick) 0.5 ms did best and 1 ms worse than the default; a synthetic 1 ms tick did best at 1 ms.
So `LoopSlice` keeps it at 1.5 times the average CPU time of a tick (not its wall time, which
grows with preemption and would feed on itself), at least 0.5 ms, re-asked about once a
second as the number of speaking rooms changes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
import time

log = logging.getLogger(__name__)

MIN_SLICE_US, MAX_SLICE_US = 500, 3000  # the kernel accepts 100 µs .. 100 ms
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}  # (sched_setattr, sched_getattr)
SCHED_OTHER = 0


class SchedAttr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32), ("sched_flags", ctypes.c_uint64),
                ("sched_nice", ctypes.c_int32), ("sched_priority", ctypes.c_uint32),
                ("sched_runtime", ctypes.c_uint64), ("sched_deadline", ctypes.c_uint64),
                ("sched_period", ctypes.c_uint64), ("sched_util_min", ctypes.c_uint32),
                ("sched_util_max", ctypes.c_uint32)]


def _calls():
    if sys.platform != "linux" or platform.machine() not in _SYSCALLS:
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).syscall, _SYSCALLS[platform.machine()]
    except (OSError, AttributeError):
        return None


def thread_sched_attr() -> SchedAttr | None:
    """The calling thread's scheduling attributes (Linux), or None where they cannot be read."""
    calls = _calls()
    if calls is None:
        return None
    syscall, (_, getattr_nr) = calls
    attr = SchedAttr()
    if syscall(getattr_nr, 0, ctypes.byref(attr), ctypes.sizeof(SchedAttr), 0) != 0:
        return None
    return attr


def request_short_slice(slice_us: int = MIN_SLICE_US) -> bool:
    """Ask for a `slice_us` scheduler slice for the calling thread; True if the kernel took
    the request (a kernel before 6.12 takes it and ignores it)."""
    attr = thread_sched_attr()
    if attr is None or attr.sched_policy != SCHED_OTHER:
        return False  # not Linux, or someone chose another policy for this thread on purpose
    syscall, (setattr_nr, _) = _calls()  # type: ignore[misc]
    attr.size = ctypes.sizeof(SchedAttr)
    attr.sched_flags = 0
    attr.sched_runtime = slice_us * 1000  # the nice value read above goes back unchanged
    if syscall(setattr_nr, 0, ctypes.byref(attr), 0) != 0:
        log.debug("no short scheduler slice for the frame loop: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


class LoopSlice:
    """The frame loop thread's slice: 1.5 times its average tick (with the GC pass after it)."""

    RECHECK_TICKS = 400  # ~1 s at 8 phases
    SMOOTHING = 1 / 64
    FACTOR = 1.5

    def __init__(self) -> None:
        self.enabled: bool | None = None  # None: not asked yet; False: this system has no such slice
        self.slice_us = 0
        self._avg_s = MIN_SLICE_US / 2e6
        self._ticks = 0

    def start(self) -> None:
        """From the loop's thread, when the clock starts."""
        if self.enabled is None:
            self.enabled = request_short_slice(MIN_SLICE_US)
            self.slice_us = MIN_SLICE_US if self.enabled else 0

    def tick_started(self) -> float:
        return time.thread_time() if self.enabled else 0.0

    def tick_ended(self, started: float) -> None:
        """After a tick and its GC pass: `started` is what tick_started returned."""
        if self.enabled:
            self.observe(time.thread_time() - started)

    def observe(self, burst_cpu_s: float) -> None:
        """One tick's CPU time, from its start to the end of its GC pass."""
        if not self.enabled:
            return
        self._avg_s += (burst_cpu_s - self._avg_s) * self.SMOOTHING
        self._ticks += 1
        if self._ticks % self.RECHECK_TICKS:
            return
        want = int(min(max(self.FACTOR * 1e6 * self._avg_s, MIN_SLICE_US), MAX_SLICE_US))
        if abs(want - self.slice_us) > self.slice_us // 5 and request_short_slice(want):
            self.slice_us = want
