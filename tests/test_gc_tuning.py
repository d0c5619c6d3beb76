"""The frame clock's garbage collection: off while ticking, young objects taken after a tick."""

from __future__ import annotations

import gc

from agent.gc_tuning import SlackCollector


class Node:
    def __init__(self):
        self.me = self  # a cycle: only the collector frees it


def test_young_garbage_is_collected_after_a_tick_and_automatic_collection_resumes():
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        collector = SlackCollector(young_limit=100, middle_every=2, old_every=2)
        with collector:
            assert not gc.isenabled()
            gc.collect()
            for _ in range(500):
                Node()
            assert gc.get_count()[0] > 100  # nothing collected them on its own
            collected = gc.get_stats()[0]["collected"]
            collector.after_tick()
            assert gc.get_count()[0] < 100 and gc.get_stats()[0]["collected"] >= collected + 500
            collector.after_tick()  # under the limit: nothing to do
        assert gc.isenabled()
    finally:
        if not was_enabled:
            gc.disable()
