"""Capacity: how many rooms can speak at once on one core with >= 99.9 % of frames on time.

The server runs pinned to core 0 (`taskset -c 0`); this process, holding one cheap load
peer per room, pins itself to core 1. Each step adds rooms that speak continuously (a long
text, queued again when it finishes), waits for synthesis to settle, then measures a window:

- at the agent, from its Prometheus counters: frames sent, frames late (> 5 ms after their
  slot), and frames expected (rooms x window / 20 ms: a skipped slot is a frame not on time);
- at the load peers, from RTP arrivals: packets more than 5 ms later than the stream's best
  case, and slots missing from the timestamp grid. This is the only measure a server without
  our counters (the Pipecat peer) can be given, so the peer comparison uses it for both;
- server CPU (% of one core, all threads) and RSS.
"""

from __future__ import annotations

import asyncio
import os
import time
from contextlib import contextmanager

import httpx
import numpy as np

from .common import (ProcessMeter, ServerProcess, our_agent, plot_curves, print_table, room_token, scrape,
                     use_loopback_ice, write_result)
from .listener import Listener, connect_listeners
from .packets import LATE_S, arrival_lateness, missing_packets

ON_TIME_TARGET = 0.999
FRAME_S = 0.020
SENTENCES = (
    "The frame clock wakes once every twenty milliseconds and asks each room for its next frame.",
    "A room encodes its frame to Opus once, and every peer of the room is sent the same packet.",
    "Synthesis runs ahead of playout by a bounded amount, so memory stays flat while it speaks.",
    "When somebody interrupts, the buffered audio is dropped and the voice stops within a frame.",
    "Idle rooms do no work at all, and a process with nothing to say sleeps until it is asked.",
)


def long_text(room: int) -> str:
    """About a minute and a half of speech, different in every room: a PCM cache must not
    turn N rooms into one synthesis (this measures the worst case, every room its own text)."""
    k = room % len(SENTENCES)
    order = SENTENCES[k:] + SENTENCES[:k]
    return f"Room {room} speaking. " + " ".join(order * 4)


@contextmanager
def pinned(cpus: set[int] | None):
    """Run this process on `cpus` for the duration (no-op where there are too few cores)."""
    if not cpus or not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) <= max(cpus):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _client_window(listeners: list[Listener], starts: list[int]) -> dict:
    received = late = missing = 0
    for listener, start in zip(listeners, starts):
        arrivals = np.frombuffer(listener.arrivals, dtype=np.float64)
        stamps = np.frombuffer(listener.timestamps, dtype=np.int64)
        if arrivals.size == 0:
            continue
        lateness = arrival_lateness(arrivals, stamps)[start:]  # baseline: the whole stream so far
        received += lateness.size
        late += int((lateness > LATE_S).sum())
        missing += missing_packets(stamps[start:])
    expected = received + missing
    return {"packets": received, "late": late, "missing": missing,
            "on_time": round((received - late) / expected, 6) if expected else None}


async def ramp(server: ServerProcess, steps: list[int], warmup_s: float, window_s: float, *,
               agent_counters: bool) -> list[dict]:
    use_loopback_ice()
    meter = ProcessMeter(server.pid)
    me = ProcessMeter(os.getpid())
    prev_rss, prev_rooms = meter.rss_mb(), 0  # RSS per room is the slope between steps
    results: list[dict] = []
    listeners: list[Listener] = []
    # no keep-alive: a connection the loaded server closed between steps made httpx fail a WHEP POST
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as http:
        try:
            for rooms in steps:
                t_connect = time.perf_counter()
                names = [f"load-{i}" for i in range(len(listeners), rooms)]
                fresh = await connect_listeners(http, names, lambda r: room_token(r, "load"))
                for i, listener in enumerate(fresh, start=len(listeners)):
                    listener.speak(long_text(i))
                listeners += fresh
                connect_s = time.perf_counter() - t_connect
                await asyncio.sleep(warmup_s)  # let the new rooms' first synthesis burst pass

                before = await asyncio.to_thread(scrape, server.base_url) if agent_counters else {}
                starts = [len(l.arrivals) for l in listeners]
                meter.mark()
                me.mark()
                t0 = time.perf_counter()
                await asyncio.sleep(window_s)  # the measurement window
                elapsed = time.perf_counter() - t0
                cpu, load_cpu, rss = meter.cpu_percent(), me.cpu_percent(), meter.rss_mb()
                after = await asyncio.to_thread(scrape, server.base_url) if agent_counters else {}

                step = {"rooms": rooms, "window_s": round(elapsed, 3), "connect_s": round(connect_s, 2),
                        "server_cpu_pct": round(cpu, 1), "server_rss_mb": round(rss, 1),
                        "rss_per_room_mb": round((rss - prev_rss) / (rooms - prev_rooms), 3),
                        "load_cpu_pct": round(load_cpu, 1),
                        "client": _client_window(listeners, starts)}
                if agent_counters:
                    sent = after.get("tts_frames_sent_total", 0) - before.get("tts_frames_sent_total", 0)
                    late = after.get("tts_frames_late_total", 0) - before.get("tts_frames_late_total", 0)
                    # over the agent's own time between the two reads: the bench's window misses the
                    # time a loaded server takes to answer a scrape (~1 % of frames at 150 rooms)
                    agent_s = _delta(before, after, "tts_monotonic_seconds") or elapsed
                    expected = rooms * agent_s / FRAME_S
                    step["agent"] = {"frames_sent": int(sent), "frames_late": int(late),
                                     "frames_expected": round(expected),
                                     "on_time": round((sent - late) / max(sent, expected), 6) if sent else None}
                    # the collector stops the loop: its passes in the window explain most late frames
                    step["agent"]["gc"] = {
                        gen: {"passes": int(_delta(before, after, f"tts_gc_pause_seconds_count{{generation={gen}}}")),
                              "ms": round(1000 * _delta(before, after, f"tts_gc_pause_seconds_sum{{generation={gen}}}"), 1)}
                        for gen in "012"}
                    step["on_time"] = step["agent"]["on_time"]
                else:
                    step["on_time"] = step["client"]["on_time"]
                results.append(step)
                prev_rss, prev_rooms = rss, rooms
                _print_step(step)
                # On a shared machine a step can miss the target while the server still has
                # headroom; go on until it is saturated (or hopeless) two steps in a row.
                spent = [x for x in results[-2:] if x["server_cpu_pct"] >= 95
                         or (x["on_time"] is not None and x["on_time"] < 0.5)]
                if len(spent) == 2:
                    break
        finally:
            for listener in listeners:
                listener.stop_speaking()
            await asyncio.gather(*(l.close() for l in listeners), return_exceptions=True)
    return results


def _delta(before: dict, after: dict, key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def _print_step(s: dict) -> None:
    agent = s.get("agent", {})
    gc = agent.get("gc")
    gc_text = ", GC " + " ".join(f"gen{g} {v['passes']}x/{v['ms']:.0f} ms" for g, v in gc.items()) if gc else ""
    print(f"  rooms {s['rooms']:4d}: on time {_pct(s['on_time'])} (agent {_pct(agent.get('on_time'))}, "
          f"client {_pct(s['client']['on_time'])}), server CPU {s['server_cpu_pct']:.0f} %, "
          f"RSS {s['server_rss_mb']:.0f} MB, load CPU {s['load_cpu_pct']:.0f} %{gc_text}", flush=True)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def capacity_of(steps: list[dict]) -> int:
    """The largest step at >= 99.9 % on time (0 if none)."""
    ok = [s["rooms"] for s in steps if s["on_time"] is not None and s["on_time"] >= ON_TIME_TARGET]
    return max(ok, default=0)


def plan(quick: bool) -> dict:
    if quick:
        return {"steps": [1, 2], "warmup_s": 0.5, "window_s": 1.5}
    return {"steps": [5, 10, 25, 50, 75, 100, 125, 150, 175, 200], "warmup_s": 2.0, "window_s": 6.0}


def run_pinned(server: ServerProcess, quick: bool, *, agent_counters: bool) -> list[dict]:
    p = plan(quick)
    with server, pinned({1}):
        return asyncio.run(ramp(server, p["steps"], p["warmup_s"], p["window_s"], agent_counters=agent_counters))


def main(quick: bool = False) -> dict:
    print("Capacity: agent on core 0, load peers on core 1", flush=True)
    steps = run_pinned(our_agent(cpus="0"), quick, agent_counters=True)
    cap = capacity_of(steps)
    rows = [[s["rooms"], _pct(s["on_time"]), _pct(s["client"]["on_time"]), s["agent"]["frames_late"],
             s["agent"]["frames_expected"] - s["agent"]["frames_sent"], s["server_cpu_pct"], s["server_rss_mb"],
             s["rss_per_room_mb"], s["load_cpu_pct"]] for s in steps]
    print_table("Capacity (agent pinned to one core)",
                ["rooms", "on time (agent)", "on time (client)", "late", "unsent", "CPU %", "RSS MB",
                 "MB/room", "load CPU %"], rows)
    print(f"capacity: {cap} rooms speaking at >= {100 * ON_TIME_TARGET:.1f} % of frames on time")
    plot = plot_curves("capacity", {"ours": [s["rooms"] for s in steps]}, {
        "on time %": {"ours": [100 * (s["on_time"] or 0) for s in steps]},
        "agent CPU %": {"ours": [s["server_cpu_pct"] for s in steps]},
        "RSS MB": {"ours": [s["server_rss_mb"] for s in steps]},
    }, "rooms speaking")
    result = {"capacity_rooms": cap, "on_time_target": ON_TIME_TARGET, "plan": plan(quick), "steps": steps,
              "plot": str(plot) if plot else None}
    print(f"-> {write_result('capacity', result)}")
    return result
