"""Synthesis threads give way to the frame loop: SCHED_IDLE on Linux, the loop untouched."""

import os
import sys

import pytest

from engines.base import synthesis_executor
from tests.conftest import shared_engines

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread scheduling is Linux's")


def _policy() -> int:
    return os.sched_getscheduler(0)


def test_synthesis_threads_run_at_idle_policy_and_leave_the_caller_alone():
    before = _policy()
    executor = synthesis_executor(2, "test-synth")
    try:
        policies = {executor.submit(_policy).result(timeout=10) for _ in range(4)}
    finally:
        executor.shutdown(wait=True)
    assert policies == {os.SCHED_IDLE}
    assert _policy() == before != os.SCHED_IDLE  # the event loop's thread keeps its class


def test_the_espeak_engine_synthesizes_on_an_idle_thread():
    engine = next(e for e in shared_engines() if e.name == "espeak")
    while hasattr(engine, "inner"):  # the bare engine under the cache
        engine = engine.inner
    assert engine._executor.submit(_policy).result(timeout=10) == os.SCHED_IDLE
