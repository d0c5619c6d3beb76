"""The frame loop's short scheduler slice (agent/sched.py), asked of this machine's real kernel,
in a thread of its own so the test process keeps its own attributes."""

from __future__ import annotations

import os
import platform
import re
import sys
import threading

import pytest

from agent.sched import MIN_SLICE_US, LoopSlice, request_short_slice, thread_sched_attr

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux scheduling attributes")


def in_thread(fn):
    out = {}
    thread = threading.Thread(target=lambda: out.update(fn()))
    thread.start()
    thread.join()
    return out


def custom_slices() -> bool:  # EEVDF custom slices: Linux 6.12
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", platform.release()).groups())
    return (major, minor) >= (6, 12)


def test_the_slice_is_set_and_nice_and_policy_are_kept():
    def run():
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 3)  # a nicer thread: unprivileged
        ok = request_short_slice(300)
        attr = thread_sched_attr()
        return {"ok": ok, "policy": attr.sched_policy, "nice": attr.sched_nice, "runtime": attr.sched_runtime}

    got = in_thread(run)
    assert got["ok"] and got["policy"] == os.SCHED_OTHER and got["nice"] == 3
    if custom_slices():
        assert got["runtime"] == 300_000


def test_a_thread_with_another_policy_is_left_alone():
    def run():
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # as synthesis threads are
        before = thread_sched_attr().sched_runtime
        return {"ok": request_short_slice(300), "policy": thread_sched_attr().sched_policy,
                "unchanged": thread_sched_attr().sched_runtime == before}

    got = in_thread(run)
    assert got == {"ok": False, "policy": os.SCHED_IDLE, "unchanged": True}


def test_the_loop_slice_follows_the_ticks():
    def run():
        loop_slice = LoopSlice()
        loop_slice.start()
        first = loop_slice.slice_us
        for _ in range(4 * LoopSlice.RECHECK_TICKS):
            loop_slice.observe(0.0012)  # ticks of 1.2 ms of CPU: about 1.8 ms
        grown = loop_slice.slice_us
        for _ in range(8 * LoopSlice.RECHECK_TICKS):
            loop_slice.observe(0.00001)  # nearly idle: back to the floor
        return {"enabled": loop_slice.enabled, "first": first, "grown": grown, "floor": loop_slice.slice_us,
                "kernel": thread_sched_attr().sched_runtime}

    got = in_thread(run)
    assert got["enabled"] and got["first"] == MIN_SLICE_US
    assert 1500 <= got["grown"] <= 2000 and got["floor"] == MIN_SLICE_US
    if custom_slices():
        assert got["kernel"] == MIN_SLICE_US * 1000
