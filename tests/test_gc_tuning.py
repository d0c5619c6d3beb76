"""The frame clock's garbage collection: off while ticking, young objects taken after a tick."""

from __future__ import annotations

import gc
import sys

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


def test_a_full_pass_comes_only_once_memory_grew_by_a_quarter():
    was_enabled = gc.isenabled()
    try:
        collector = SlackCollector(young_limit=10, middle_every=1, old_every=1)
        with collector:
            gc.collect()
            full_passes = gc.get_stats()[2]["collections"]
            kept = [Node() for _ in range(1000)]
            collector.after_tick()  # a gen-1 pass: the nodes, still alive, move to gen 2
            del kept  # now cyclic garbage in gen 2, which only a full pass frees
            for _ in range(50):
                [Node() for _ in range(20)]
                collector.after_tick()
            assert gc.get_stats()[2]["collections"] == full_passes  # no growth, no full pass

            ballast = [str(i) for i in range(sys.getallocatedblocks() // 2)]  # memory grows by half
            collected = gc.get_stats()[2]["collected"]
            [Node() for _ in range(20)]
            collector.after_tick()
            assert gc.get_stats()[2]["collections"] == full_passes + 1
            assert gc.get_stats()[2]["collected"] >= collected + 1000
            del ballast
    finally:
        if was_enabled:
            gc.enable()
